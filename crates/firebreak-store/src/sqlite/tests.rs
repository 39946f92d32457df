//! SQLite-only tests. Every behaviour test runs against both backends in `tests/suite.rs`.

use super::*;

fn settings() -> crate::AuditSettings {
    crate::AuditSettings {
        chain: crate::BROKER_CHAIN.into(),
        key: firebreak_audit::AuditKey::generate().unwrap(),
        checkpoint_every: 10,
        checkpoint_interval_ms: 60_000,
        clock: std::sync::Arc::new(firebreak_core::ManualClock::new(UnixTime::from_secs(
            1_800_000_000,
        ))),
        queue: 1024,
    }
}

#[tokio::test]
async fn database_file_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("fb.db"), settings()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }
    store.ping().await.unwrap();
}

#[test]
fn sqlite_urls() {
    assert_eq!(
        SqliteStore::path_from_url("sqlite:///var/x.db"),
        Some("/var/x.db".into())
    );
    assert_eq!(
        SqliteStore::path_from_url("sqlite://x.db"),
        Some("x.db".into())
    );
    assert_eq!(
        SqliteStore::path_from_url("sqlite:x.db"),
        Some("x.db".into())
    );
    assert_eq!(SqliteStore::path_from_url("postgres://h/db"), None);
    assert_eq!(SqliteStore::path_from_url("sqlite://"), None);
}
