use super::*;
use crate::{AuditReceipt, EventKind, NewEvent, ReplayGuard};
use serde_json::json;

fn sid(s: &str) -> SessionId {
    SessionId::try_from(s).unwrap()
}

fn exchange(id: &str, parent: Option<&str>, agent: &str, replay: Option<&str>) -> NewExchange {
    let now = UnixTime::from_secs(1_800_000_000);
    NewExchange {
        replay: replay.map(|k| ReplayGuard {
            issuer: "github".into(),
            key: k.into(),
            expires_at: now.plus_secs(600),
        }),
        session: SessionRow {
            id: sid(id),
            agent: AgentId::try_from(agent).unwrap(),
            parent: parent.map(sid),
            depth: u32::from(parent.is_some()),
            target: TargetId::try_from("tools").unwrap(),
            audience: "https://gw/tools".into(),
            scope: "read".into(),
            act: serde_json::Value::Null,
            subject_issuer: "github".into(),
            created_at: now,
            expires_at: now.plus_secs(300),
            revoked_at: None,
        },
        token: TokenRow {
            jti: Jti::try_from(format!("jti-{id}")).unwrap(),
            session: sid(id),
            agent: AgentId::try_from(agent).unwrap(),
            audience: "https://gw/tools".into(),
            kid: "k1".into(),
            issued_at: now,
            expires_at: now.plus_secs(300),
            revoked_at: None,
        },
    }
}

fn settings() -> crate::AuditSettings {
    crate::AuditSettings {
        key: firebreak_audit::AuditKey::generate().unwrap(),
        checkpoint_every: 10,
        checkpoint_interval_ms: 60_000,
        clock: std::sync::Arc::new(firebreak_core::ManualClock::new(UnixTime::from_secs(
            1_800_000_000,
        ))),
        queue: 1024,
    }
}

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("fb.db"), settings()).unwrap();
    (dir, store)
}

fn draft(kind: &str) -> crate::AuditDraft {
    let mut fields = serde_json::Map::new();
    fields.insert("kind".into(), serde_json::json!(kind));
    crate::AuditDraft {
        fields,
        time: UnixTime::from_secs(1_800_000_000),
        session: None,
    }
}

/// SECURITY-TESTS.md X04 (SQLite twin): a replay key is accepted once, on one node, sequentially.
#[tokio::test]
async fn x04_replay_key_accepted_once() {
    let (_d, store) = open();
    store
        .commit_exchange_t(exchange("s1", None, "bot", Some("jti-a")))
        .await
        .unwrap();
    let again = store
        .commit_exchange_t(exchange("s2", None, "bot", Some("jti-a")))
        .await;
    assert!(matches!(again, Err(StoreError::Replay)));
    // Positive twin: another key passes, and the refused attempt left nothing behind.
    store
        .commit_exchange_t(exchange("s3", None, "bot", Some("jti-b")))
        .await
        .unwrap();
    assert!(store.session(&sid("s2")).await.unwrap().is_none());
    // Purging only removes expired guards.
    let later = UnixTime::from_secs(1_800_000_000 + 601);
    assert_eq!(
        store
            .purge_replay(UnixTime::from_secs(1_800_000_000))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.purge_replay(later).await.unwrap(), 2);
}

/// SECURITY-TESTS.md X17 (store part): once a revocation commits, no child can be added under it.
#[tokio::test]
async fn x17_no_child_after_parent_revoked() {
    let (_d, store) = open();
    let at = UnixTime::from_secs(1_800_000_100);
    store
        .commit_exchange_t(exchange("root", None, "bot", Some("r")))
        .await
        .unwrap();
    store
        .commit_exchange_t(exchange("child", Some("root"), "bot", None))
        .await
        .unwrap();
    store
        .commit_exchange_t(exchange("grandchild", Some("child"), "sub", None))
        .await
        .unwrap();
    let mut revoked = store.revoke_session_tree(&sid("root"), at).await.unwrap();
    revoked.sort();
    assert_eq!(revoked, vec![sid("child"), sid("grandchild"), sid("root")]);
    let late = store
        .commit_exchange_t(exchange("late", Some("child"), "sub", None))
        .await;
    assert!(matches!(late, Err(StoreError::ParentRevoked(p)) if p == sid("child")));
    for s in ["root", "child", "grandchild"] {
        assert_eq!(
            store.session_status(&sid(s)).await.unwrap(),
            TokenStatus::Revoked
        );
    }
    let (_, status) = store
        .token(&Jti::try_from("jti-grandchild").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, TokenStatus::Revoked);
    // Revoking again revokes nothing new.
    assert!(
        store
            .revoke_session_tree(&sid("root"), at)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn revoking_an_agent_revokes_its_sessions_and_blocks_new_ones() {
    let (_d, store) = open();
    let bot = AgentId::try_from("bot").unwrap();
    store
        .commit_exchange_t(exchange("a1", None, "bot", Some("1")))
        .await
        .unwrap();
    store
        .commit_exchange_t(exchange("b1", None, "other", Some("2")))
        .await
        .unwrap();
    let revoked = store
        .revoke_agent(&bot, UnixTime::from_secs(1_800_000_050))
        .await
        .unwrap();
    assert_eq!(revoked, vec![sid("a1")]);
    assert_eq!(
        store.session_status(&sid("a1")).await.unwrap(),
        TokenStatus::Revoked
    );
    assert_eq!(
        store.session_status(&sid("b1")).await.unwrap(),
        TokenStatus::Live
    );
    assert!(store.agent_revoked_at(&bot).await.unwrap().is_some());
    let new = store
        .commit_exchange_t(exchange("a2", None, "bot", Some("3")))
        .await;
    assert!(matches!(new, Err(StoreError::ParentRevoked(_))));
}

fn key(kid: &str, state: KeyState) -> KeyRow {
    KeyRow {
        kid: kid.into(),
        alg: "EdDSA".into(),
        state,
        secret: vec![1, 2, 3],
        sealed: false,
        public_jwk: "{}".into(),
        created_at: UnixTime::from_secs(1),
        activated_at: None,
        retiring_at: None,
        retire_after: None,
    }
}

#[tokio::test]
async fn keys_rotate_next_active_retiring_retired_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fb.db");
    {
        let store = SqliteStore::open(&path, settings()).unwrap();
        assert!(
            store
                .init_keys(vec![key("k1", KeyState::Active), key("k2", KeyState::Next)])
                .await
                .unwrap()
        );
        assert!(
            !store
                .init_keys(vec![key("zz", KeyState::Active)])
                .await
                .unwrap()
        );
        let t = UnixTime::from_secs(100);
        store
            .rotate_keys(key("k3", KeyState::Next), t, t.plus_secs(60))
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path, settings()).unwrap();
    let states: Vec<_> = store
        .keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.kid, k.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("k1".into(), KeyState::Retiring),
            ("k2".into(), KeyState::Active),
            ("k3".into(), KeyState::Next)
        ]
    );
    assert!(
        store
            .retire_due_keys(UnixTime::from_secs(159))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .retire_due_keys(UnixTime::from_secs(160))
            .await
            .unwrap(),
        vec!["k1".to_owned()]
    );
    // A rotation needs a published next key.
    let bad = store
        .rotate_keys(
            key("k4", KeyState::Active),
            UnixTime::from_secs(200),
            UnixTime::from_secs(300),
        )
        .await;
    assert!(matches!(bad, Err(StoreError::ApiMisuse(_))));
}

#[tokio::test]
async fn database_file_is_private() {
    let (_d, store) = open();
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

trait CommitT {
    async fn commit_exchange_t(&self, ex: NewExchange) -> Result<AuditReceipt, StoreError>;
}

impl CommitT for SqliteStore {
    async fn commit_exchange_t(&self, ex: NewExchange) -> Result<AuditReceipt, StoreError> {
        self.commit_exchange(ex, draft("exchange")).await
    }
}

/// Group commit keeps one gap-free chain: concurrent writers, refused items in the middle of a
/// batch (replays) leave no hole, and checkpoints land every 10 records.
#[tokio::test]
async fn concurrent_appends_form_one_gap_free_chain_with_checkpoints() {
    let (_d, store) = open();
    let store = std::sync::Arc::new(store);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = std::sync::Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                s.append_audit(draft("decision")).await.map(|_| ())
            } else {
                // Half of the exchanges reuse replay key "same": only the first of them succeeds.
                let key = if i % 4 == 1 {
                    "same".to_owned()
                } else {
                    format!("k{i}")
                };
                s.commit_exchange_t(exchange(&format!("s{i}"), None, "bot", Some(&key)))
                    .await
                    .map(|_| ())
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    let lines = store
        .audit_lines(crate::BROKER_CHAIN, 0, 100_000)
        .await
        .unwrap();
    let records: Vec<u64> = lines
        .iter()
        .filter(|l| !l.checkpoint)
        .map(|l| l.seq)
        .collect();
    assert_eq!(records.len(), ok);
    assert_eq!(records, (1..=ok as u64).collect::<Vec<_>>(), "gap-free");
    let cps = lines.iter().filter(|l| l.checkpoint).count();
    assert_eq!(cps, ok / 10);
    assert!(store.audit_probe().await.is_ok());
}

fn elevation_row(
    id: &str,
    status: crate::ElevationStatus,
    single_use: bool,
) -> crate::ElevationRow {
    crate::ElevationRow {
        id: id.into(),
        agent: AgentId::try_from("bot").unwrap(),
        session: None,
        action: "exchange".into(),
        target: "tools".into(),
        resource: None,
        reason_code: "incident".into(),
        justification: "fix prod".into(),
        duration_ms: 300_000,
        single_use,
        status,
        requested_by: "agent:bot".into(),
        created_at: UnixTime::from_secs(1000),
        expires_at: None,
        decided_by: None,
        decided_at: None,
        decision_reason: None,
        used_at: None,
        approval_id: Some(format!("ap-{id}")),
    }
}

fn approval_row(id: &str) -> crate::ApprovalRow {
    crate::ApprovalRow {
        id: format!("ap-{id}"),
        elevation: id.into(),
        requested_by: "agent:bot".into(),
        involved: vec!["agent:bot".into(), "o@acme.example".into()],
        status: crate::ApprovalStatus::Pending,
        created_at: UnixTime::from_secs(1000),
        expires_at: UnixTime::from_secs(2000),
        decided_by: None,
        decided_at: None,
        why: None,
    }
}

/// Approval is compare-and-set: the second decision finds nothing pending. A single-use
/// elevation is usable once; an expired one never; they survive a reopen of the store.
#[tokio::test]
async fn elevations_approve_once_use_once_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fb.db");
    let bot = AgentId::try_from("bot").unwrap();
    {
        let store = SqliteStore::open(&path, settings()).unwrap();
        store
            .insert_elevation(
                elevation_row("e1", crate::ElevationStatus::Pending, true),
                Some(approval_row("e1")),
            )
            .await
            .unwrap();
        store
            .insert_elevation(
                elevation_row("e2", crate::ElevationStatus::Pending, false),
                Some(approval_row("e2")),
            )
            .await
            .unwrap();
        let t = UnixTime::from_secs(1100);
        let e = store
            .decide_approval("ap-e1", true, "approver:alice", "ok", t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.status, crate::ElevationStatus::Approved);
        assert_eq!(e.expires_at, Some(t.plus_secs(300)));
        assert!(
            store
                .decide_approval("ap-e1", false, "approver:bob", "no", t)
                .await
                .unwrap()
                .is_none()
        );
        let e2 = store
            .decide_approval("ap-e2", false, "approver:alice", "not now", t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e2.status, crate::ElevationStatus::Denied);
        // A late decision on a lapsed approval does nothing.
        store
            .insert_elevation(
                elevation_row("e3", crate::ElevationStatus::Pending, false),
                Some(approval_row("e3")),
            )
            .await
            .unwrap();
        assert!(
            store
                .decide_approval(
                    "ap-e3",
                    true,
                    "approver:alice",
                    "",
                    UnixTime::from_secs(2000)
                )
                .await
                .unwrap()
                .is_none()
        );
    }
    let store = SqliteStore::open(&path, settings()).unwrap();
    let t = UnixTime::from_secs(1200);
    assert_eq!(
        store.active_elevations(&bot, None, t).await.unwrap().len(),
        1
    );
    assert!(
        store
            .use_elevation("e1", &bot, None, t)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .use_elevation("e1", &bot, None, t)
            .await
            .unwrap()
            .is_none(),
        "single use"
    );
    assert!(
        store
            .use_elevation("e2", &bot, None, t)
            .await
            .unwrap()
            .is_none(),
        "denied"
    );
    let other = AgentId::try_from("other").unwrap();
    assert!(
        store
            .use_elevation("e1", &other, None, t)
            .await
            .unwrap()
            .is_none()
    );
    store
        .insert_elevation(
            elevation_row("e4", crate::ElevationStatus::Pending, false),
            Some(approval_row("e4")),
        )
        .await
        .unwrap();
    store
        .decide_approval("ap-e4", true, "approver:alice", "", t)
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .use_elevation("e4", &bot, None, t.plus_secs(299))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .use_elevation("e4", &bot, None, t.plus_secs(300))
            .await
            .unwrap()
            .is_none(),
        "hard expiry"
    );
    assert_eq!(
        store.expire_elevations(t.plus_secs(301)).await.unwrap(),
        vec!["e4".to_owned()]
    );
    assert_eq!(
        store.elevation("e3").await.unwrap().unwrap().status,
        crate::ElevationStatus::Pending
    );
    store
        .expire_elevations(UnixTime::from_secs(2001))
        .await
        .unwrap();
    let e3 = store.elevation("e3").await.unwrap().unwrap();
    assert_eq!(
        e3.status,
        crate::ElevationStatus::Expired,
        "its approval lapsed"
    );
}

#[tokio::test]
async fn breakglass_windows_open_close_and_end() {
    let (_d, store) = open();
    let bot = AgentId::try_from("bot").unwrap();
    let row = crate::BreakGlassRow {
        id: "bg1".into(),
        agent: bot.clone(),
        reason_code: "incident".into(),
        justification: "outage".into(),
        opened_by: "approver:alice".into(),
        opened_at: UnixTime::from_secs(1000),
        ends_at: UnixTime::from_secs(1900),
        closed_at: None,
        closed_by: None,
    };
    store.open_breakglass(row).await.unwrap();
    assert!(
        store
            .active_breakglass(&bot, UnixTime::from_secs(1899))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .active_breakglass(&bot, UnixTime::from_secs(1900))
            .await
            .unwrap()
            .is_none(),
        "ends by itself"
    );
    assert!(
        store
            .close_breakglass("bg1", "approver:alice", UnixTime::from_secs(1500))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .active_breakglass(&bot, UnixTime::from_secs(1501))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .close_breakglass("bg1", "approver:alice", UnixTime::from_secs(1600))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.breakglass_list(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn revocations_write_one_event_per_session_in_their_transaction() {
    let (_d, store) = open();
    let mut watch = store.event_watch();
    assert_eq!(*watch.borrow_and_update(), 0);
    for (id, parent) in [("r", None), ("c1", Some("r")), ("c2", Some("c1"))] {
        store
            .commit_exchange(exchange(id, parent, "bot", None), draft("exchange"))
            .await
            .unwrap();
    }
    assert_eq!(store.event_head().await.unwrap(), 0);
    let at = UnixTime::from_secs(1_800_000_010);
    let ids = store.revoke_session_tree(&sid("r"), at).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), 3);
    let events = store.events_after(0, 100).await.unwrap();
    let got: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.seq,
                e.data["kind"].as_str().unwrap().to_owned(),
                e.data["id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "session".to_owned(), json!("r")),
            (2, "session".to_owned(), json!("c1")),
            (3, "session".to_owned(), json!("c2")),
        ]
    );
    let e = &events[0];
    assert_eq!(e.kind, EventKind::Revoke);
    assert_eq!(e.data["seq"], json!(1));
    assert_eq!(e.data["until"], json!(1_800_000_300));
    assert_eq!(e.data["at"], json!(1_800_000_010));
    // Revoking again writes nothing: nothing new was revoked.
    assert!(
        store
            .revoke_session_tree(&sid("r"), at)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.event_head().await.unwrap(), 3);
    assert_eq!(store.events_after(1, 1).await.unwrap()[0].seq, 2);
}

#[tokio::test]
async fn agent_revocation_event_covers_its_latest_token() {
    let (_d, store) = open();
    store
        .commit_exchange(exchange("s1", None, "bot", None), draft("exchange"))
        .await
        .unwrap();
    let at = UnixTime::from_secs(1_800_000_001);
    store
        .revoke_agent(&AgentId::try_from("bot").unwrap(), at)
        .await
        .unwrap();
    let events = store.events_after(0, 10).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.data["kind"].clone()).collect();
    assert_eq!(kinds, vec![json!("agent"), json!("session")]);
    assert_eq!(events[0].data["until"], json!(1_800_000_300));
    store
        .revoke_agent(&AgentId::try_from("bot").unwrap(), at)
        .await
        .unwrap();
    assert_eq!(
        store.event_head().await.unwrap(),
        2,
        "a second revoke adds nothing"
    );
}

#[tokio::test]
async fn event_snapshot_holds_unexpired_events_and_seqs_survive_purge_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fb.db");
    let store = SqliteStore::open(&path, settings()).unwrap();
    let t = UnixTime::from_secs(1_800_000_000);
    let ev = |id: &str, until: UnixTime| NewEvent::revoke("jti", id, until, t);
    let head = store
        .append_events(vec![ev("a", t.plus_secs(10)), ev("b", t.plus_secs(100))])
        .await
        .unwrap();
    assert_eq!(head, 2);
    let (head, snap) = store.event_snapshot(t.plus_secs(50)).await.unwrap();
    assert_eq!(head, 2);
    assert_eq!(snap.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    // Purging the newest row must not let its seq be handed out again.
    assert_eq!(store.purge_events(t.plus_secs(1000)).await.unwrap(), 2);
    assert_eq!(store.event_head().await.unwrap(), 2);
    drop(store);
    let store = SqliteStore::open(&path, settings()).unwrap();
    assert_eq!(*store.event_watch().borrow(), 2);
    assert_eq!(store.append_events(vec![ev("c", t)]).await.unwrap(), 3);
    assert_eq!(store.events_after(0, 10).await.unwrap()[0].seq, 3);
}
