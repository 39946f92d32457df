//! Loading a policy set: per-file parsing, `@id` checks, strict validation, the version hash.
//!
//! Each file is parsed on its own (`PolicySet::from_str`), so every source span Cedar reports is
//! an offset into that file and maps to a line without any concatenation. Policies are then
//! renamed to their `@id` and merged into one set, which is validated against the schema.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Effect, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint,
    ResourceConstraint, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use crate::{PolicyError, SCHEMA};

/// The name the built-in schema goes by in errors.
pub(crate) const BUILTIN_SCHEMA_NAME: &str = "<built-in>";
/// The schema file a policy directory may hold.
pub(crate) const SCHEMA_FILE: &str = "schema.cedarschema";

/// One loaded policy and what slicing needs to know about it.
pub(crate) struct LoadedPolicy {
    pub(crate) id: String,
    pub(crate) policy: Policy,
    pub(crate) approval_required: bool,
    pub(crate) principal: PrincipalConstraint,
    pub(crate) action: ActionConstraint,
    pub(crate) resource: ResourceConstraint,
    /// Entity literals in the policy (scope and conditions), for the per-request entity slice.
    pub(crate) literals: Vec<EntityUid>,
}

/// A parsed, validated policy set with its sources.
pub(crate) struct Loaded {
    pub(crate) sources: Vec<(String, String)>,
    pub(crate) schema_text: String,
    pub(crate) schema: Schema,
    pub(crate) set: PolicySet,
    pub(crate) policies: Vec<LoadedPolicy>,
    pub(crate) version: String,
}

/// Reads `dir`: every `*.cedar` file and `schema.cedarschema` if present.
/// `(file name, text)` pairs sorted by name, and the schema text if the dir has one.
pub(crate) type DirSources = (Vec<(String, String)>, Option<String>);

pub(crate) fn read_dir(dir: &Path) -> Result<DirSources, PolicyError> {
    let read_dir_err = |source| PolicyError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    let mut schema = None;
    for entry in std::fs::read_dir(dir).map_err(read_dir_err)? {
        let entry = entry.map_err(read_dir_err)?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(PolicyError::NotUtf8 { path });
        };
        let is_policy = name.ends_with(".cedar");
        if !is_policy && name != SCHEMA_FILE {
            continue;
        }
        // Follows symlinks: a policy dir managed by a config tool is often a link farm.
        let meta = std::fs::metadata(&path).map_err(|source| PolicyError::ReadFile {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            continue;
        }
        let text = read_text(&path)?;
        if is_policy {
            files.push((name, text));
        } else {
            schema = Some(text);
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((files, schema))
}

pub(crate) fn read_text(path: &Path) -> Result<String, PolicyError> {
    let bytes = std::fs::read(path).map_err(|source| PolicyError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| PolicyError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

/// Parses and validates; see [`crate::Pdp::from_sources`].
pub(crate) fn load(
    files: &[(String, String)],
    schema_text: Option<&str>,
) -> Result<Loaded, PolicyError> {
    let mut sources = files.to_vec();
    sources.sort_by(|a, b| a.0.cmp(&b.0));
    for pair in sources.windows(2) {
        if let [a, b] = pair
            && a.0 == b.0
        {
            return Err(PolicyError::DuplicateFile { file: a.0.clone() });
        }
    }

    let (schema_name, schema_text) = match schema_text {
        Some(text) => (SCHEMA_FILE, text),
        None => (BUILTIN_SCHEMA_NAME, SCHEMA),
    };
    let schema = match Schema::from_cedarschema_str(schema_text) {
        Ok((schema, _warnings)) => schema,
        Err(err) => {
            return Err(PolicyError::Schema {
                file: schema_name.to_owned(),
                line: first_label_offset(&err).map_or(1, |o| line_of(schema_text, o)),
                message: cedar_message(&err),
            });
        }
    };

    let mut set = PolicySet::new();
    let mut policies = Vec::new();
    // @id → (file index, line), to name both places of a duplicate.
    let mut seen: HashMap<String, (usize, usize)> = HashMap::new();
    // @id → (file index, policy start offset), to place validation errors without a span.
    let mut origin: HashMap<String, (usize, usize)> = HashMap::new();
    for (file_ix, (file, text)) in sources.iter().enumerate() {
        let parsed = PolicySet::from_str(text).map_err(|errs| parse_error(file, text, &errs))?;
        let starts = policy_starts(text);
        let start_of = |cedar_id: &PolicyId| -> usize {
            // `PolicySet::from_str` names the n-th policy or template of a file `policy<n>`.
            cedar_id
                .to_string()
                .strip_prefix("policy")
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| starts.get(n).copied())
                .unwrap_or(0)
        };
        if let Some(template) = parsed.templates().next() {
            return Err(PolicyError::Template {
                file: file.clone(),
                line: line_of(text, start_of(template.id())),
            });
        }
        let mut in_file: Vec<&Policy> = parsed.policies().collect();
        in_file.sort_by_key(|p| start_of(p.id()));
        for policy in in_file {
            let start = start_of(policy.id());
            let line = line_of(text, start);
            let id = match policy.annotation("id") {
                Some(id) if !id.is_empty() => id.to_owned(),
                _ => {
                    return Err(PolicyError::MissingId {
                        file: file.clone(),
                        line,
                    });
                }
            };
            if let Some(&(first_ix, first_line)) = seen.get(&id) {
                return Err(PolicyError::DuplicateId {
                    id,
                    first_file: sources
                        .get(first_ix)
                        .map(|s| s.0.clone())
                        .unwrap_or_default(),
                    first_line,
                    second_file: file.clone(),
                    second_line: line,
                });
            }
            let effect = policy.effect();
            let approval_required = match policy.annotation("approval") {
                None => false,
                Some("required") if effect == Effect::Permit => true,
                Some(value) => {
                    return Err(PolicyError::ApprovalAnnotation {
                        file: file.clone(),
                        line,
                        policy: id,
                        value: value.to_owned(),
                    });
                }
            };
            seen.insert(id.clone(), (file_ix, line));
            origin.insert(id.clone(), (file_ix, start));
            let renamed = policy.new_id(PolicyId::new(&id));
            policies.push(LoadedPolicy {
                id: id.clone(),
                approval_required,
                principal: renamed.principal_constraint(),
                action: renamed.action_constraint(),
                resource: renamed.resource_constraint(),
                literals: renamed.entity_literals(),
                policy: renamed.clone(),
            });
            // Ids were checked unique above, so `add` cannot refuse; map it anyway.
            set.add(renamed).map_err(|e| PolicyError::DuplicateId {
                id: format!("{id} ({e})"),
                first_file: file.clone(),
                first_line: line,
                second_file: file.clone(),
                second_line: line,
            })?;
        }
    }

    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    let mut errors: Vec<(usize, usize, String, String)> = result
        .validation_errors()
        .map(|err| {
            let policy = err.policy_id().to_string();
            let (file_ix, start) = origin.get(&policy).copied().unwrap_or((0, 0));
            let offset = first_label_offset(err).unwrap_or(start);
            (file_ix, offset, policy, cedar_message(err))
        })
        .collect();
    errors.sort();
    if let Some((file_ix, offset, policy, message)) = errors.first() {
        let (file, text) = sources.get(*file_ix).cloned().unwrap_or_default();
        return Err(PolicyError::Validation {
            line: line_of(&text, *offset),
            file,
            policy: policy.clone(),
            message: message.clone(),
            more: errors.len().saturating_sub(1),
        });
    }

    let version = version_of(&sources, schema_text);
    Ok(Loaded {
        sources,
        schema_text: schema_text.to_owned(),
        schema,
        set,
        policies,
        version,
    })
}

fn parse_error(file: &str, text: &str, errs: &cedar_policy::ParseErrors) -> PolicyError {
    let offset = errs.iter().find_map(|e| first_label_offset(e)).unwrap_or(0);
    let message = errs
        .iter()
        .map(|e| cedar_message(e))
        .collect::<Vec<_>>()
        .join("; ");
    PolicyError::Parse {
        file: file.to_owned(),
        line: line_of(text, offset),
        message,
    }
}

fn first_label_offset(diag: &dyn Diagnostic) -> Option<usize> {
    diag.labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset())
}

/// Cedar's message, with its help text when it has one.
fn cedar_message(diag: &dyn Diagnostic) -> String {
    match diag.help() {
        Some(help) => format!("{diag} (help: {help})"),
        None => diag.to_string(),
    }
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        .saturating_add(1)
}

/// Byte offsets where each policy of a (parseable) Cedar file starts, annotations included.
///
/// Cedar has no statement separator but the `;` that ends a policy, and `;` appears elsewhere
/// only inside string literals and comments, so a scan that skips those two finds every end.
pub(crate) fn policy_starts(text: &str) -> Vec<usize> {
    #[derive(PartialEq)]
    enum State {
        Between,
        Code,
        Str,
        StrEscape,
        Comment { resume_code: bool },
    }
    let bytes = text.as_bytes();
    let mut starts = Vec::new();
    let mut state = State::Between;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let next = bytes.get(i.saturating_add(1)).copied();
        state = match state {
            State::Between | State::Code if b == b'/' && next == Some(b'/') => {
                let resume_code = state == State::Code;
                i = i.saturating_add(1);
                State::Comment { resume_code }
            }
            State::Between if b.is_ascii_whitespace() => State::Between,
            State::Between => {
                starts.push(i);
                if b == b'"' { State::Str } else { State::Code }
            }
            State::Code if b == b';' => State::Between,
            State::Code if b == b'"' => State::Str,
            State::Code => State::Code,
            State::Str if b == b'\\' => State::StrEscape,
            State::Str if b == b'"' => State::Code,
            State::Str | State::StrEscape => State::Str,
            State::Comment { resume_code } if b == b'\n' => {
                if resume_code {
                    State::Code
                } else {
                    State::Between
                }
            }
            State::Comment { resume_code } => State::Comment { resume_code },
        };
        i = i.saturating_add(1);
    }
    starts
}

/// `sha256:<hex>` over the sorted `(file name, text)` pairs and the schema text.
///
/// Encoding: the tag `firebreak-policy-v1`, then per file its name and text, then `schema` and
/// the schema text; every string is preceded by its byte length as a big-endian u64, so no two
/// different inputs hash the same bytes.
pub(crate) fn version_of(sources: &[(String, String)], schema_text: &str) -> String {
    use aws_lc_rs::digest::{Context, SHA256};
    fn put(ctx: &mut Context, s: &str) {
        ctx.update(&(s.len() as u64).to_be_bytes());
        ctx.update(s.as_bytes());
    }
    let mut ctx = Context::new(&SHA256);
    put(&mut ctx, "firebreak-policy-v1");
    for (name, text) in sources {
        put(&mut ctx, name);
        put(&mut ctx, text);
    }
    put(&mut ctx, "schema");
    put(&mut ctx, schema_text);
    let digest = ctx.finish();
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for byte in digest.as_ref() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_starts_skip_strings_and_comments() {
        let text = "// header; with a semicolon\n@id(\"a;b\")\npermit(principal, action, resource)\n  when { context.env == \"x;\\\"y\" }; // trailing;\n\n  forbid(principal, action, resource);\n";
        let starts = policy_starts(text);
        assert_eq!(starts.len(), 2);
        assert_eq!(line_of(text, starts[0]), 2);
        assert_eq!(line_of(text, starts[1]), 6);
    }

    #[test]
    fn version_is_length_prefixed() {
        let a = version_of(&[("ab".into(), "c".into())], "");
        let b = version_of(&[("a".into(), "bc".into())], "");
        assert_ne!(a, b);
        assert!(a.starts_with("sha256:") && a.len() == 71);
    }
}
