use super::*;

const BASE: &str = r#"
[server]
public_url = "https://fb.acme.example"
data_dir = "/tmp/fb"

[[issuer]]
id = "github"
url = "https://token.actions.githubusercontent.com"
audience = "https://fb.acme.example"
profile = "github-actions"
algorithms = ["RS256"]

[[issuer]]
id = "gitlab"
url = "https://gitlab.example"
audience = "https://fb.acme.example"
profile = "gitlab"
algorithms = ["RS256"]

[[issuer]]
id = "k8s"
url = "https://k8s.example"
audience = "https://fb.acme.example"
profile = "kubernetes"
algorithms = ["ES256"]

[[issuer]]
id = "idp"
url = "https://idp.example"
audience = "https://fb.acme.example"
algorithms = ["EdDSA"]

[[target]]
id = "tools"
audience = "https://gw.acme.example/tools"
kind = "mcp"
tenant = "acme"
environment = "production"
tier = "write"
max_ttl = "10m"
"#;

fn agent(id: &str, identity: &str) -> String {
    format!(
        "\n[[agent]]\nid = \"{id}\"\nowner = \"o@acme.example\"\npurpose = \"p\"\nexpires = 2099-01-01\ntenant = \"acme\"\nenvironment = \"production\"\ntier = \"write\"\nidentity = {identity}\n"
    )
}

fn load(extra: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("firebreak.toml"), &format!("{BASE}{extra}"))
}

const GOOD_GH: &str = r#"{ issuer = "github", claims = { repository = "acme/api", repository_id = "1", ref = "refs/heads/main" }, events = ["push"] }"#;

#[test]
fn a_good_config_loads() {
    let c = load(&agent("bot", GOOD_GH)).unwrap();
    assert_eq!(c.agents.len(), 1);
    assert_eq!(c.targets.len(), 2, "the broker target is built in");
    assert!(c.warnings.is_empty());
}

/// SECURITY-TESTS.md X01: every too-broad trust rule is refused at load, naming the rule.
#[test]
fn x01_too_broad_trust_rules_refused() {
    let cases = [
        (
            r#"{ issuer = "github", claims = { sub = "repo:org/*" }, events = ["push"] }"#,
            "wildcards",
        ),
        (
            r#"{ issuer = "github", claims = { repository = "org/*" }, events = ["push"] }"#,
            "wildcards",
        ),
        (
            r#"{ issuer = "github", claims = { repository = "*" }, events = ["push"] }"#,
            "wildcards",
        ),
        (
            r#"{ issuer = "github", claims = { repository = ".*" }, events = ["push"] }"#,
            "wildcards",
        ),
        (
            r#"{ issuer = "github", claims = { }, events = ["push"] }"#,
            "audience alone",
        ),
        (
            r#"{ issuer = "github", claims = { aud = "https://fb.acme.example" }, events = ["push"] }"#,
            "checked by the issuer",
        ),
        (
            r#"{ issuer = "github", claims = { repository_owner = "acme" }, events = ["push"] }"#,
            "pin repository",
        ),
        (
            r#"{ issuer = "github", claims = { repository = "acme/api" } }"#,
            "events",
        ),
        (
            r#"{ issuer = "gitlab", claims = { project_path = "group/*" } }"#,
            "wildcards",
        ),
        (
            r#"{ issuer = "gitlab", claims = { ref = "main" } }"#,
            "project_path",
        ),
        (
            r#"{ issuer = "k8s", claims = { aud = "x" } }"#,
            "checked by the issuer",
        ),
        (
            r#"{ issuer = "k8s", claims = { sub = "system:serviceaccount:ns" } }"#,
            "serviceaccount",
        ),
        (
            r#"{ issuer = "idp", claims = { email = "a@b" } }"#,
            "pin sub",
        ),
    ];
    for (identity, why) in cases {
        let e = load(&agent("bot", identity)).unwrap_err();
        assert!(e.reason.contains(why), "{identity}: {e}");
        assert!(e.rule.contains("agent \"bot\""), "{e}");
        assert_eq!(e.line, Some(43), "{e}");
    }
    // Two agents whose rules could both match one token.
    let a = agent(
        "a",
        r#"{ issuer = "github", claims = { repository = "acme/api", repository_id = "1" }, events = ["push"] }"#,
    );
    let b = agent(
        "b",
        r#"{ issuer = "github", claims = { repository = "acme/api", ref = "refs/heads/main" }, events = ["push", "workflow_dispatch"] }"#,
    );
    let e = load(&format!("{a}{b}")).unwrap_err();
    assert!(
        e.reason.contains("could match the same token as agent"),
        "{e}"
    );
    // Positive twins: the same pair told apart by ref; and a name-only pin loads with a warning.
    let b2 = agent(
        "b",
        r#"{ issuer = "github", claims = { repository = "acme/api", repository_id = "1", ref = "refs/heads/release" }, events = ["push"] }"#,
    );
    let a2 = agent(
        "a",
        r#"{ issuer = "github", claims = { repository = "acme/api", repository_id = "1", ref = "refs/heads/main" }, events = ["push"] }"#,
    );
    assert!(load(&format!("{a2}{b2}")).is_ok());
    let c = load(&agent(
        "n",
        r#"{ issuer = "github", claims = { repository = "acme/api" }, events = ["push"] }"#,
    ))
    .unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("repository_id")));
    assert!(
        load(&agent(
            "k",
            r#"{ issuer = "k8s", claims = { sub = "system:serviceaccount:ns:sa" } }"#
        ))
        .is_ok()
    );
}

/// SECURITY-TESTS.md X02 (config part): fork-controlled events need an explicit opt-in.
#[test]
fn x02_pull_request_target_needs_opt_in() {
    let e = load(&agent("bot", r#"{ issuer = "github", claims = { repository = "acme/api", repository_id = "1" }, events = ["pull_request_target"] }"#)).unwrap_err();
    assert!(e.reason.contains("allow_pull_request_target"), "{e}");
    assert!(load(&agent("bot", r#"{ issuer = "github", claims = { repository = "acme/api", repository_id = "1" }, events = ["pull_request_target"], allow_pull_request_target = true }"#)).is_ok());
}

/// SECURITY-TESTS.md T12 (config part): a leeway above 60 s is refused at load.
#[test]
fn t12_leeway_above_cap_refused() {
    let e = Config::parse(
        Path::new("f.toml"),
        &format!("{BASE}\n[limits]\nleeway = \"120s\"\n"),
    )
    .unwrap_err();
    assert_eq!(e.rule, "limits.leeway");
    assert!(
        Config::parse(
            Path::new("f.toml"),
            &format!("{BASE}\n[limits]\nleeway = \"60s\"\n")
        )
        .is_ok()
    );
}

/// The DPoP proof window (`[limits] dpop_max_age`) is bounded: 1 s to 300 s, default 60 s.
#[test]
fn dpop_max_age_bounded() {
    let parse = |v: &str| {
        Config::parse(
            Path::new("f.toml"),
            &format!("{BASE}\n[limits]\ndpop_max_age = \"{v}\"\n"),
        )
    };
    for bad in ["301s", "10m", "0s", "500ms"] {
        assert_eq!(parse(bad).unwrap_err().rule, "limits.dpop_max_age", "{bad}");
    }
    for good in ["1s", "60s", "300s"] {
        assert!(parse(good).is_ok(), "{good}");
    }
    let default = Config::parse(Path::new("f.toml"), BASE).unwrap();
    assert_eq!(default.limits.dpop_max_age.as_millis(), 60_000);
}

/// SECURITY-TESTS.md X07 (config part): a target max_ttl above the cap is refused at load.
#[test]
fn x07_max_ttl_above_cap_refused() {
    let text = BASE.replace("max_ttl = \"10m\"", "max_ttl = \"2h\"");
    let e = Config::parse(Path::new("f.toml"), &text).unwrap_err();
    assert!(e.reason.contains("above limits.max_ttl"), "{e}");
}

/// SECURITY-TESTS.md X09 (config part): a target or agent spanning environments or tiers.
#[test]
fn x09_spanning_environments_or_tiers_refused() {
    for (from, to) in [
        (
            "environment = \"production\"",
            "environment = \"production,staging\"",
        ),
        ("tier = \"write\"", "tier = \"read,write\""),
        ("environment = \"production\"", "environment = \"*\""),
    ] {
        let text = BASE.replacen(from, to, 1);
        assert!(Config::parse(Path::new("f.toml"), &text).is_err(), "{to}");
    }
    let a = agent("bot", GOOD_GH).replace(
        "environment = \"production\"",
        "environment = \"prod staging\"",
    );
    assert!(load(&a).is_err());
    // A grant for a target in another environment is refused too.
    let staging = "\n[[target]]\nid = \"st\"\naudience = \"https://gw/st\"\nkind = \"http\"\ntenant = \"acme\"\nenvironment = \"staging\"\ntier = \"write\"\n";
    let a = format!(
        "{staging}{}grants = [{{ target = \"st\", scopes = [\"r\"] }}]\n",
        agent("bot", GOOD_GH)
    );
    let e = load(&a).unwrap_err();
    assert!(e.reason.contains("one token, one environment"), "{e}");
}

#[test]
fn issuer_rules_refused() {
    let no_aud = BASE.replacen(
        "audience = \"https://fb.acme.example\"\nprofile = \"github-actions\"",
        "profile = \"github-actions\"",
        1,
    );
    assert!(
        Config::parse(Path::new("f"), &no_aud)
            .unwrap_err()
            .reason
            .contains("audience is required")
    );
    for alg in ["none", "HS256", "PS256"] {
        let t = BASE.replacen(
            "algorithms = [\"RS256\"]",
            &format!("algorithms = [\"{alg}\"]"),
            1,
        );
        assert!(
            Config::parse(Path::new("f"), &t)
                .unwrap_err()
                .reason
                .contains("not allowed"),
            "{alg}"
        );
    }
    let http = BASE.replacen(
        "https://token.actions.githubusercontent.com",
        "http://token.example",
        1,
    );
    assert!(
        Config::parse(Path::new("f"), &http)
            .unwrap_err()
            .reason
            .contains("https://")
    );
}

#[test]
fn syntax_and_unknown_fields_name_the_line() {
    let e = Config::parse(
        Path::new("f.toml"),
        &format!("{BASE}\n[gatewy]\nlisten = \"127.0.0.1:1\"\n"),
    )
    .unwrap_err();
    assert_eq!(e.rule, "syntax");
    assert!(e.line.is_some());
    // `[gateway]` and `[egress]` are kept raw here and checked by their own crates.
    let c = Config::parse(
        Path::new("f.toml"),
        &format!("{BASE}\n[gateway]\nlisten = \"127.0.0.1:1\"\n"),
    )
    .unwrap();
    assert!(c.gateway.is_some() && c.egress.is_none());
    let e = Config::parse(
        Path::new("f.toml"),
        "[server]\npublic_url = \"https://x\"\ndata_dir = \"d\"\nbogus = 1\n",
    )
    .unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.to_string().starts_with("f.toml:4: syntax:"), "{e}");
}

#[test]
fn store_urls_and_postgres_pool_options() {
    let c = load("").unwrap();
    assert!(c.store.url.starts_with("sqlite://"));
    assert!(!c.store.is_postgres());
    assert_eq!(c.store.pool_size, 8);
    assert_eq!(c.store.connect_timeout, ConfigDuration::from_secs(2));
    assert_eq!(c.store.statement_timeout, ConfigDuration::from_secs(5));
    let c = load(
        "\n[store]\nurl = \"postgres://fb@db.internal/fb\"\npool_size = 16\nconnect_timeout = \"1s\"\nstatement_timeout = \"3s\"\n",
    )
    .unwrap();
    assert!(c.store.is_postgres());
    assert_eq!(c.store.pool_size, 16);
    assert_eq!(c.store.statement_timeout, ConfigDuration::from_secs(3));
    let e = load("\n[store]\nurl = \"mysql://x/y\"\n").unwrap_err();
    assert_eq!(e.rule, "store.url", "{e}");
    let e = load("\n[store]\nurl = \"postgres://x/y\"\npool_size = 0\n").unwrap_err();
    assert_eq!(e.rule, "store.pool_size", "{e}");
    let e = load("\n[store]\nstatement_timeout = \"10ms\"\n").unwrap_err();
    assert_eq!(e.rule, "store.statement_timeout", "{e}");
    let e = load("\n[store]\npool = 3\n").unwrap_err();
    assert_eq!(e.rule, "syntax", "unknown fields are refused: {e}");
}
