//! Policy tests: `*.test.toml` files beside the policies, each a list of requests with the
//! decision (and optionally the reasons) they must get. The format is documented at the crate
//! root; `firebreak policy test [DIR]` prints [`TestReport::render_table`].

use std::path::Path;

use serde::Deserialize;

use crate::load::{line_of, read_text};
use crate::{Action, Context, Pdp, PolicyError, Principal, Request, Resource, SessionCtx};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    case: Vec<toml::Spanned<RawCase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    principal: RawPrincipal,
    action: String,
    resource: RawResource,
    #[serde(default)]
    context: RawContext,
    expect: String,
    #[serde(default)]
    reasons: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawPrincipal {
    Agent(String),
    Approver(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawResource {
    Target(String),
    /// `"<target>/<tool>"`.
    Tool(String),
    /// `"<host>:<port>"`.
    Host(String),
    Agent(String),
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContext {
    #[serde(default)]
    scope: Vec<String>,
    #[serde(default)]
    http: Option<RawHttp>,
    #[serde(default)]
    session: Option<RawSession>,
    #[serde(default)]
    elevations: Vec<String>,
    #[serde(default)]
    break_glass: bool,
    #[serde(default)]
    env: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    dpop_bound: bool,
    #[serde(default)]
    time: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    method: String,
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    id: String,
    #[serde(default)]
    depth: i64,
    #[serde(default)]
    age_seconds: i64,
}

/// One case's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseResult {
    /// The test file's name.
    pub file: String,
    /// 1-based line where the `[[case]]` table starts.
    pub line: usize,
    /// The case's `name`.
    pub name: String,
    /// The expected decision (`allow`, `deny`, `require_approval`).
    pub expected: String,
    /// The decision the PDP gave.
    pub got: String,
    /// The reasons the PDP gave, in test notation (`<@id>` or `code:<code>`).
    pub reasons: Vec<String>,
    /// The expected reasons, if the case lists them.
    pub expected_reasons: Option<Vec<String>>,
    /// Whether the decision (and the reasons, when listed) matched.
    pub pass: bool,
}

/// Every case of a test directory, in file-name then file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestReport {
    /// The cases.
    pub cases: Vec<CaseResult>,
}

impl TestReport {
    /// How many cases failed.
    #[must_use]
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.pass).count()
    }

    /// How many cases passed.
    #[must_use]
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.pass).count()
    }

    /// A plain-text table, one row per case, closed by `N passed, M failed`.
    #[must_use]
    pub fn render_table(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .cases
            .iter()
            .map(|c| {
                let got = if c.pass || c.expected == c.got {
                    c.got.clone()
                } else {
                    format!("{} (expected {})", c.got, c.expected)
                };
                let reasons = match &c.expected_reasons {
                    Some(want) if !c.pass && c.expected == c.got => {
                        format!("{} (expected {})", c.reasons.join(","), want.join(","))
                    }
                    Some(_) | None => c.reasons.join(","),
                };
                [
                    if c.pass { "PASS" } else { "FAIL" }.to_owned(),
                    format!("{}:{}", c.file, c.line),
                    c.name.clone(),
                    got,
                    reasons,
                ]
            })
            .collect();
        let header = ["RESULT", "CASE", "NAME", "DECISION", "REASONS"].map(str::to_owned);
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row.iter()) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(rows.iter()) {
            let mut line = String::new();
            for (cell, w) in row.iter().zip(widths.iter()) {
                line.push_str(&format!("{cell:<w$}  "));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push_str(&format!(
            "{} passed, {} failed\n",
            self.passed(),
            self.failed()
        ));
        out
    }
}

/// Runs every `*.test.toml` case in `dir` (sorted by file name) against `pdp`.
///
/// # Errors
/// [`PolicyError::ReadDir`]/[`ReadFile`](PolicyError::ReadFile)/[`NotUtf8`](PolicyError::NotUtf8),
/// [`TestFile`](PolicyError::TestFile) for a file that is not valid TOML of the documented shape
/// (unknown keys included), [`TestCase`](PolicyError::TestCase) for a case that cannot be a
/// request, and [`NoTestCases`](PolicyError::NoTestCases) when the directory has none.
pub fn run_tests(dir: &Path, pdp: &Pdp) -> Result<TestReport, PolicyError> {
    let read_dir_err = |source| PolicyError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir_err)? {
        let entry = entry.map_err(read_dir_err)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(PolicyError::NotUtf8 { path: entry.path() });
        };
        if name.ends_with(".test.toml") && entry.path().is_file() {
            files.push((name, entry.path()));
        }
    }
    files.sort();
    let mut report = TestReport::default();
    for (name, path) in files {
        let text = read_text(&path)?;
        run_file(&name, &text, pdp, &mut report)?;
    }
    if report.cases.is_empty() {
        return Err(PolicyError::NoTestCases {
            dir: dir.to_path_buf(),
        });
    }
    Ok(report)
}

fn run_file(file: &str, text: &str, pdp: &Pdp, report: &mut TestReport) -> Result<(), PolicyError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| PolicyError::TestFile {
        file: file.to_owned(),
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        message: e.message().to_owned(),
    })?;
    for spanned in raw.case {
        let line = line_of(text, spanned.span().start);
        let case = spanned.into_inner();
        let bad = |problem: String| PolicyError::TestCase {
            file: file.to_owned(),
            line,
            case: case.name.clone(),
            problem,
        };
        let action: Action = case
            .action
            .parse()
            .map_err(|_| bad(format!("unknown action {:?}", case.action)))?;
        if !matches!(case.expect.as_str(), "allow" | "deny" | "require_approval") {
            return Err(bad(format!(
                "expect = {:?}: must be allow, deny or require_approval",
                case.expect
            )));
        }
        let principal = match &case.principal {
            RawPrincipal::Agent(id) => Principal::Agent(id),
            RawPrincipal::Approver(id) => Principal::Approver(id),
        };
        let resource = match &case.resource {
            RawResource::Target(id) => Resource::Target(id),
            RawResource::Agent(id) => Resource::Agent(id),
            RawResource::Tool(spec) => {
                let (target, tool) = spec
                    .split_once('/')
                    .ok_or_else(|| bad(format!("tool {spec:?}: want \"<target>/<tool>\"")))?;
                Resource::Tool { target, tool }
            }
            RawResource::Host(spec) => {
                let (host, port) = spec
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                    .ok_or_else(|| bad(format!("host {spec:?}: want \"<host>:<port>\"")))?;
                Resource::Host { host, port }
            }
        };
        let c = case.context;
        let context = Context {
            scope: c.scope,
            http: c.http.map(|h| (h.method, h.path)),
            session: c.session.map(|s| SessionCtx {
                id: s.id,
                depth: s.depth,
                age_seconds: s.age_seconds,
            }),
            elevations: c.elevations,
            break_glass: c.break_glass,
            env: c.env,
            tenant: c.tenant,
            purpose: c.purpose,
            dpop_bound: c.dpop_bound,
            time: c.time,
        };
        let decision = pdp.decide(&Request {
            principal,
            action,
            resource,
            context,
        });
        let got = decision.wire().to_owned();
        let reasons: Vec<String> = decision.reasons().iter().map(ToString::to_string).collect();
        let reasons_ok = case.reasons.as_ref().is_none_or(|want| {
            let mut want = want.clone();
            let mut have = reasons.clone();
            want.sort();
            have.sort();
            want == have
        });
        report.cases.push(CaseResult {
            file: file.to_owned(),
            line,
            pass: got == case.expect && reasons_ok,
            name: case.name,
            expected: case.expect,
            got,
            reasons,
            expected_reasons: case.reasons,
        });
    }
    Ok(())
}
