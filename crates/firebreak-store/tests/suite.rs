//! One behaviour suite, two backends: every test below runs as `sqlite::<name>` and `pg::<name>`
//! (real PostgreSQL from `FIREBREAK_TEST_PG`, default `postgres://postgres@127.0.0.1:5432/test`,
//! one fresh schema per test, dropped afterwards). An unreachable server FAILS the pg tests.
//! `replicas::*` are PostgreSQL-only: two stores on one schema, as two broker replicas.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: a failed step should stop the test loudly"
)]

use std::sync::Arc;
use std::time::Duration;

use firebreak_audit::{AuditKey, VerifyOptions, verify_items};
use firebreak_core::{AgentId, Jti, ManualClock, SessionId, TargetId, UnixTime};
use firebreak_store::{
    ApprovalRow, ApprovalStatus, AuditDraft, AuditSettings, BROKER_CHAIN, BreakGlassRow,
    ElevationRow, ElevationStatus, EventKind, KeyRow, KeyState, NewEvent, NewExchange,
    PgPoolSettings, PgStore, ReplayGuard, SessionRow, SqliteStore, Store, StoreError, TokenRow,
    TokenStatus,
};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Backends

fn pg_url() -> String {
    std::env::var("FIREBREAK_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of its own for one test, dropped when the test ends (also when it fails).
struct PgSchema {
    name: String,
}

impl PgSchema {
    async fn create() -> Self {
        let n: u64 = rand_u64();
        let name = format!("fb_{n:016x}");
        let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL at {} is required for the pg tests: {e}",
                    pg_url()
                )
            });
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        Self { name }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Best effort, on a thread of its own: Drop cannot await, and the test's runtime may be
        // the current-thread one that is running this very drop.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok((client, conn)) =
                    tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(conn);
                // Sessions of this test's stores that outlived it (a task still running at a
                // panic) would hold locks the DROP waits for: end them first.
                let _ = client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                          WHERE application_name LIKE '%' || $1",
                        &[&name],
                    )
                    .await;
                let _ = client
                    .batch_execute(&format!(
                        "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                    ))
                    .await;
            });
        })
        .join();
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

enum Kind {
    Sqlite(tempfile::TempDir),
    Pg(PgSchema),
}

/// One database and how to open stores on it (all with the same audit key and clock, as
/// replicas of one broker would have).
struct Db {
    kind: Kind,
    key: Vec<u8>,
    clock: Arc<ManualClock>,
    /// The chain its stores' writers append to.
    chain: String,
}

impl Db {
    fn sqlite() -> Self {
        Self::with(Kind::Sqlite(tempfile::tempdir().unwrap()))
    }

    async fn pg() -> Self {
        Self::with(Kind::Pg(PgSchema::create().await))
    }

    fn with(kind: Kind) -> Self {
        Self {
            kind,
            key: AuditKey::generate().unwrap().pkcs8().to_vec(),
            clock: Arc::new(ManualClock::new(UnixTime::from_secs(1_800_000_000))),
            chain: BROKER_CHAIN.to_owned(),
        }
    }

    /// Stores opened from now on write `chain` (a standalone gateway's store).
    fn writing(mut self, chain: &str) -> Self {
        chain.clone_into(&mut self.chain);
        self
    }

    fn settings(&self) -> AuditSettings {
        AuditSettings {
            chain: self.chain.clone(),
            key: AuditKey::from_pkcs8(&self.key).unwrap(),
            checkpoint_every: 10,
            checkpoint_interval_ms: 60_000,
            clock: Arc::clone(&self.clock) as Arc<dyn firebreak_core::Clock>,
            queue: 1024,
        }
    }

    fn public_key(&self) -> firebreak_audit::AuditPublicKey {
        AuditKey::from_pkcs8(&self.key).unwrap().public()
    }

    fn schema(&self) -> &str {
        match &self.kind {
            Kind::Pg(s) => &s.name,
            Kind::Sqlite(_) => panic!("not a pg database"),
        }
    }

    async fn pg_store(&self) -> PgStore {
        let base = pg_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        PgStore::connect(
            &format!("{base}{sep}application_name=test_{}", self.schema()),
            self.settings(),
            PgPoolSettings {
                size: 4,
                schema: Some(self.schema().to_owned()),
                ..PgPoolSettings::default()
            },
        )
        .await
        .unwrap()
    }

    /// A new store on this database (a reopen, or another replica).
    async fn open(&self) -> Arc<dyn Store> {
        match &self.kind {
            Kind::Sqlite(dir) => {
                Arc::new(SqliteStore::open(&dir.path().join("fb.db"), self.settings()).unwrap())
            }
            Kind::Pg(_) => Arc::new(self.pg_store().await),
        }
    }
}

/// Instantiates each behaviour test for both backends.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $name() { super::$name(super::Db::sqlite()).await } )*
        }
        mod pg {
            $( #[tokio::test] async fn $name() { super::$name(super::Db::pg().await).await } )*
        }
    };
}

both!(
    x04_replay_key_accepted_once,
    x17_no_child_after_parent_revoked,
    revoking_an_agent_revokes_its_sessions_and_blocks_new_ones,
    keys_rotate_next_active_retiring_retired_and_survive_restart,
    init_keys_agrees_on_one_set,
    concurrent_appends_form_one_gap_free_chain_with_checkpoints,
    elevations_approve_once_use_once_and_expire,
    breakglass_windows_open_close_and_end,
    revocations_write_one_event_per_session_in_their_transaction,
    agent_revocation_event_covers_its_latest_token,
    event_snapshot_holds_unexpired_events_and_seqs_survive_purge_and_restart,
    audit_reads_and_ingest_of_another_chain,
    a_store_writes_the_chain_its_settings_name,
    sessions_children_tokens_and_last_use,
    g12_one_time_claims_are_granted_once_until_they_expire,
);

// ---------------------------------------------------------------------------------------------
// Fixtures

fn sid(s: &str) -> SessionId {
    SessionId::try_from(s).unwrap()
}

fn agent(s: &str) -> AgentId {
    AgentId::try_from(s).unwrap()
}

fn exchange(id: &str, parent: Option<&str>, agent_id: &str, replay: Option<&str>) -> NewExchange {
    let now = UnixTime::from_secs(1_800_000_000);
    NewExchange {
        replay: replay.map(|k| ReplayGuard {
            issuer: "github".into(),
            key: k.into(),
            expires_at: now.plus_secs(600),
        }),
        session: SessionRow {
            id: sid(id),
            agent: agent(agent_id),
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
            agent: agent(agent_id),
            audience: "https://gw/tools".into(),
            kid: "k1".into(),
            issued_at: now,
            expires_at: now.plus_secs(300),
            revoked_at: None,
        },
    }
}

fn draft(kind: &str) -> AuditDraft {
    let mut fields = serde_json::Map::new();
    fields.insert("kind".into(), json!(kind));
    AuditDraft {
        fields,
        time: UnixTime::from_secs(1_800_000_000),
        session: None,
    }
}

async fn commit(
    store: &dyn Store,
    ex: NewExchange,
) -> Result<firebreak_store::AuditReceipt, StoreError> {
    store.commit_exchange(ex, draft("exchange")).await
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

fn elevation_row(id: &str, status: ElevationStatus, single_use: bool) -> ElevationRow {
    ElevationRow {
        id: id.into(),
        agent: agent("bot"),
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

fn approval_row(id: &str) -> ApprovalRow {
    ApprovalRow {
        id: format!("ap-{id}"),
        elevation: id.into(),
        requested_by: "agent:bot".into(),
        involved: vec!["agent:bot".into(), "o@acme.example".into()],
        status: ApprovalStatus::Pending,
        created_at: UnixTime::from_secs(1000),
        expires_at: UnixTime::from_secs(2000),
        decided_by: None,
        decided_at: None,
        why: None,
    }
}

/// Every line of the broker chain, verified under the database's audit key; returns the record
/// seqs and the number of checkpoints.
async fn verified_chain(db: &Db, store: &dyn Store) -> (Vec<u64>, usize) {
    verified_chain_of(db, store, BROKER_CHAIN).await
}

async fn verified_chain_of(db: &Db, store: &dyn Store, chain: &str) -> (Vec<u64>, usize) {
    let lines = store.audit_lines(chain, 0, u32::MAX).await.unwrap();
    let items: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(&l.json).unwrap())
        .collect();
    let keys = [db.public_key()];
    let report = verify_items(
        &items,
        &VerifyOptions {
            keys: &keys,
            strict: false,
        },
    )
    .unwrap();
    let records: Vec<u64> = lines
        .iter()
        .filter(|l| !l.checkpoint)
        .map(|l| l.seq)
        .collect();
    assert_eq!(report.records, records.len() as u64);
    (records, lines.iter().filter(|l| l.checkpoint).count())
}

// ---------------------------------------------------------------------------------------------
// Behaviour, both backends

/// SECURITY-TESTS.md X04 (single node): a replay key is accepted once, sequentially.
async fn x04_replay_key_accepted_once(db: Db) {
    let store = db.open().await;
    commit(&*store, exchange("s1", None, "bot", Some("jti-a")))
        .await
        .unwrap();
    let again = commit(&*store, exchange("s2", None, "bot", Some("jti-a"))).await;
    assert!(matches!(again, Err(StoreError::Replay)), "{again:?}");
    // Positive twin: another key passes, and the refused attempt left nothing behind.
    commit(&*store, exchange("s3", None, "bot", Some("jti-b")))
        .await
        .unwrap();
    assert!(store.session(&sid("s2")).await.unwrap().is_none());
    assert!(
        store
            .token(&Jti::try_from("jti-s2").unwrap())
            .await
            .unwrap()
            .is_none()
    );
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

/// SECURITY-TESTS.md G12 (store part): a DPoP proof's jti is claimed once, also under
/// concurrent claims; on PostgreSQL the claim is shared by every replica on the database.
async fn g12_one_time_claims_are_granted_once_until_they_expire(db: Db) {
    let store = db.open().await;
    let now = UnixTime::from_secs(1_800_000_000);
    let until = now.plus_secs(120);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            s.claim_once("dpop", "jkt:jti-1", until, now).await.unwrap()
        }));
    }
    let mut claims = Vec::new();
    for t in tasks {
        claims.push(t.await.unwrap());
    }
    assert_eq!(claims.iter().filter(|c| **c).count(), 1, "{claims:?}");
    assert!(
        !store
            .claim_once("dpop", "jkt:jti-1", until, now.plus_secs(119))
            .await
            .unwrap()
    );
    // Another key, or the same key in another scope, is its own claim.
    assert!(
        store
            .claim_once("dpop", "jkt:jti-2", until, now)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_once("other", "jkt:jti-1", until, now)
            .await
            .unwrap()
    );
    if let Kind::Pg(_) = db.kind {
        let replica = db.open().await;
        assert!(
            !replica
                .claim_once("dpop", "jkt:jti-1", until, now)
                .await
                .unwrap()
        );
        assert!(
            replica
                .claim_once("dpop", "jkt:jti-3", until, now)
                .await
                .unwrap()
        );
        assert!(
            !store
                .claim_once("dpop", "jkt:jti-3", until, now)
                .await
                .unwrap()
        );
    }
    // Once expired, the key may be claimed again (the proof itself is then too old anyway).
    assert!(
        store
            .claim_once("dpop", "jkt:jti-1", until.plus_secs(60), until)
            .await
            .unwrap()
    );
    store.purge_replay(until.plus_secs(61)).await.unwrap();
    assert!(
        store
            .claim_once(
                "dpop",
                "jkt:jti-1",
                until.plus_secs(200),
                until.plus_secs(61)
            )
            .await
            .unwrap()
    );
}

/// SECURITY-TESTS.md X17 (store part): once a revocation commits, no child can be added under it.
async fn x17_no_child_after_parent_revoked(db: Db) {
    let store = db.open().await;
    let at = UnixTime::from_secs(1_800_000_100);
    commit(&*store, exchange("root", None, "bot", Some("r")))
        .await
        .unwrap();
    commit(&*store, exchange("child", Some("root"), "bot", None))
        .await
        .unwrap();
    commit(&*store, exchange("grandchild", Some("child"), "sub", None))
        .await
        .unwrap();
    let missing = commit(&*store, exchange("orphan", Some("nope"), "sub", None)).await;
    assert!(matches!(missing, Err(StoreError::ParentMissing(p)) if p == sid("nope")));
    let mut revoked = store.revoke_session_tree(&sid("root"), at).await.unwrap();
    revoked.sort();
    assert_eq!(revoked, vec![sid("child"), sid("grandchild"), sid("root")]);
    let late = commit(&*store, exchange("late", Some("child"), "sub", None)).await;
    assert!(matches!(late, Err(StoreError::ParentRevoked(p)) if p == sid("child")));
    for s in ["root", "child", "grandchild"] {
        assert_eq!(
            store.session_status(&sid(s)).await.unwrap(),
            TokenStatus::Revoked
        );
    }
    assert_eq!(
        store.session_status(&sid("nope")).await.unwrap(),
        TokenStatus::Unknown
    );
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

async fn revoking_an_agent_revokes_its_sessions_and_blocks_new_ones(db: Db) {
    let store = db.open().await;
    let bot = agent("bot");
    commit(&*store, exchange("a1", None, "bot", Some("1")))
        .await
        .unwrap();
    commit(&*store, exchange("b1", None, "other", Some("2")))
        .await
        .unwrap();
    // A delegated child of bot's session, held by another agent, goes too.
    commit(&*store, exchange("d1", Some("a1"), "other", None))
        .await
        .unwrap();
    let mut revoked = store
        .revoke_agent(&bot, UnixTime::from_secs(1_800_000_050))
        .await
        .unwrap();
    revoked.sort();
    assert_eq!(revoked, vec![sid("a1"), sid("d1")]);
    assert_eq!(
        store.session_status(&sid("a1")).await.unwrap(),
        TokenStatus::Revoked
    );
    assert_eq!(
        store.session_status(&sid("b1")).await.unwrap(),
        TokenStatus::Live
    );
    assert_eq!(
        store.agent_revoked_at(&bot).await.unwrap(),
        Some(UnixTime::from_secs(1_800_000_050))
    );
    assert_eq!(store.agent_revoked_at(&agent("other")).await.unwrap(), None);
    let new = commit(&*store, exchange("a2", None, "bot", Some("3"))).await;
    assert!(matches!(new, Err(StoreError::ParentRevoked(_))), "{new:?}");
}

async fn keys_rotate_next_active_retiring_retired_and_survive_restart(db: Db) {
    {
        let store = db.open().await;
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
    let store = db.open().await;
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
    let k = store.keys().await.unwrap().remove(1);
    assert_eq!(k.secret, vec![1, 2, 3]);
    assert_eq!(k.activated_at, Some(UnixTime::from_secs(100)));
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
    // A rotation needs a published next key, and takes one in state next.
    let bad = store
        .rotate_keys(
            key("k4", KeyState::Active),
            UnixTime::from_secs(200),
            UnixTime::from_secs(300),
        )
        .await;
    assert!(matches!(bad, Err(StoreError::ApiMisuse(_))));
    // A second `active` key is refused by the one_active_key index, and nothing changes.
    let dup = store.init_keys(vec![key("k5", KeyState::Active)]).await;
    assert!(matches!(dup, Ok(false)));
}

/// Two brokers starting at once: both call `init_keys`; exactly one set lands.
async fn init_keys_agrees_on_one_set(db: Db) {
    let a = db.open().await;
    let b = db.open().await;
    let (ra, rb) = tokio::join!(
        a.init_keys(vec![key("a1", KeyState::Active), key("a2", KeyState::Next)]),
        b.init_keys(vec![key("b1", KeyState::Active), key("b2", KeyState::Next)]),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra ^ rb, "exactly one wins: {ra} {rb}");
    let kids: Vec<String> = a.keys().await.unwrap().into_iter().map(|k| k.kid).collect();
    let want = if ra { ["a1", "a2"] } else { ["b1", "b2"] };
    assert_eq!(kids, want);
}

/// Group commit keeps one gap-free chain: concurrent writers, refused items in the middle of a
/// batch (replays) leave no hole, checkpoints land every 10 records, and it verifies.
async fn concurrent_appends_form_one_gap_free_chain_with_checkpoints(db: Db) {
    let store = db.open().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = Arc::clone(&store);
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
                commit(&*s, exchange(&format!("s{i}"), None, "bot", Some(&key)))
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
    assert_eq!(ok, 100 + 50 + 1);
    let (records, cps) = verified_chain(&db, &*store).await;
    assert_eq!(records, (1..=ok as u64).collect::<Vec<_>>(), "gap-free");
    assert_eq!(cps, ok / 10);
    assert!(store.audit_probe().await.is_ok());
    assert_eq!(
        store.audit_head(BROKER_CHAIN).await.unwrap().unwrap().0,
        ok as u64
    );
    // A reopened store continues the same chain.
    drop(store);
    let store = db.open().await;
    let r = store.append_audit(draft("decision")).await.unwrap();
    assert_eq!(r.seq, ok as u64 + 1);
    verified_chain(&db, &*store).await;
}

/// Approval is compare-and-set: the second decision finds nothing pending. A single-use
/// elevation is usable once; an expired one never; they survive a reopen of the store.
async fn elevations_approve_once_use_once_and_expire(db: Db) {
    let bot = agent("bot");
    {
        let store = db.open().await;
        store
            .insert_elevation(
                elevation_row("e1", ElevationStatus::Pending, true),
                Some(approval_row("e1")),
            )
            .await
            .unwrap();
        store
            .insert_elevation(
                elevation_row("e2", ElevationStatus::Pending, false),
                Some(approval_row("e2")),
            )
            .await
            .unwrap();
        assert_eq!(store.approvals(true, 10).await.unwrap().len(), 2);
        let t = UnixTime::from_secs(1100);
        let e = store
            .decide_approval("ap-e1", true, "approver:alice", "ok", t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.status, ElevationStatus::Approved);
        assert_eq!(e.expires_at, Some(t.plus_secs(300)));
        assert!(
            store
                .decide_approval("ap-e1", false, "approver:bob", "no", t)
                .await
                .unwrap()
                .is_none()
        );
        let a = store.approval("ap-e1").await.unwrap().unwrap();
        assert_eq!(a.status, ApprovalStatus::Approved);
        assert_eq!(a.decided_by.as_deref(), Some("approver:alice"));
        assert_eq!(a.involved, vec!["agent:bot", "o@acme.example"]);
        let e2 = store
            .decide_approval("ap-e2", false, "approver:alice", "not now", t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e2.status, ElevationStatus::Denied);
        // A late decision on a lapsed approval does nothing.
        store
            .insert_elevation(
                elevation_row("e3", ElevationStatus::Pending, false),
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
        assert_eq!(store.approvals(true, 10).await.unwrap().len(), 1);
        assert_eq!(store.approvals(false, 10).await.unwrap().len(), 3);
    }
    let store = db.open().await;
    let t = UnixTime::from_secs(1200);
    assert_eq!(
        store.active_elevations(&bot, None, t).await.unwrap().len(),
        1
    );
    assert_eq!(store.elevations(Some(&bot), 10).await.unwrap().len(), 3);
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
    assert_eq!(
        store.elevation("e1").await.unwrap().unwrap().used_at,
        Some(t)
    );
    assert!(
        store
            .use_elevation("e2", &bot, None, t)
            .await
            .unwrap()
            .is_none(),
        "denied"
    );
    let other = agent("other");
    assert!(
        store
            .use_elevation("e1", &other, None, t)
            .await
            .unwrap()
            .is_none()
    );
    store
        .insert_elevation(
            elevation_row("e4", ElevationStatus::Pending, false),
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
        ElevationStatus::Pending
    );
    store
        .expire_elevations(UnixTime::from_secs(2001))
        .await
        .unwrap();
    let e3 = store.elevation("e3").await.unwrap().unwrap();
    assert_eq!(e3.status, ElevationStatus::Expired, "its approval lapsed");
}

async fn breakglass_windows_open_close_and_end(db: Db) {
    let store = db.open().await;
    let bot = agent("bot");
    let row = BreakGlassRow {
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
    let closed = store
        .close_breakglass("bg1", "approver:alice", UnixTime::from_secs(1500))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.closed_at, Some(UnixTime::from_secs(1500)));
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

async fn revocations_write_one_event_per_session_in_their_transaction(db: Db) {
    let store = db.open().await;
    let mut watch = store.event_watch();
    assert_eq!(*watch.borrow_and_update(), 0);
    for (id, parent) in [("r", None), ("c1", Some("r")), ("c2", Some("c1"))] {
        commit(&*store, exchange(id, parent, "bot", None))
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

async fn agent_revocation_event_covers_its_latest_token(db: Db) {
    let store = db.open().await;
    commit(&*store, exchange("s1", None, "bot", None))
        .await
        .unwrap();
    let at = UnixTime::from_secs(1_800_000_001);
    store.revoke_agent(&agent("bot"), at).await.unwrap();
    let events = store.events_after(0, 10).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.data["kind"].clone()).collect();
    assert_eq!(kinds, vec![json!("agent"), json!("session")]);
    assert_eq!(events[0].data["until"], json!(1_800_000_300));
    store.revoke_agent(&agent("bot"), at).await.unwrap();
    assert_eq!(
        store.event_head().await.unwrap(),
        2,
        "a second revoke adds nothing"
    );
}

async fn event_snapshot_holds_unexpired_events_and_seqs_survive_purge_and_restart(db: Db) {
    let store = db.open().await;
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
    assert_eq!(snap[0].data["id"], json!("b"));
    // Purging the newest row must not let its seq be handed out again.
    assert_eq!(store.purge_events(t.plus_secs(1000)).await.unwrap(), 2);
    assert_eq!(store.event_head().await.unwrap(), 2);
    drop(store);
    let store = db.open().await;
    assert_eq!(*store.event_watch().borrow(), 2);
    assert_eq!(store.append_events(vec![ev("c", t)]).await.unwrap(), 3);
    assert_eq!(store.events_after(0, 10).await.unwrap()[0].seq, 3);
}

/// The audit read side: session index, leaf hashes, heads, and the ingest of another chain
/// (compare-and-set on its head; the broker chain is refused).
async fn audit_reads_and_ingest_of_another_chain(db: Db) {
    let store = db.open().await;
    let mut d = draft("exchange");
    d.session = Some(sid("s1"));
    store.append_audit(d).await.unwrap();
    store.append_audit(draft("decision")).await.unwrap();
    let for_s1 = store.audit_for_sessions(vec![sid("s1")]).await.unwrap();
    assert_eq!(for_s1.len(), 1);
    assert_eq!(for_s1[0].seq, 1);
    let leaves = store.audit_leaf_hashes(BROKER_CHAIN, 2).await.unwrap();
    assert_eq!(leaves.len(), 2);
    let rec = firebreak_store::IngestRecord {
        seq: 1,
        hash: "ab".repeat(32),
        leaf_hash: [7; 32],
        json: "{\"seq\":1}".into(),
        session: None,
        time_ms: 5,
    };
    assert!(matches!(
        store
            .ingest_audit("gw1", 1, vec![rec.clone()], vec![])
            .await,
        Err(StoreError::HeadMoved)
    ));
    store
        .ingest_audit("gw1", 0, vec![rec.clone()], vec![(1, "{\"cp\":1}".into())])
        .await
        .unwrap();
    assert!(matches!(
        store
            .ingest_audit("gw1", 0, vec![rec.clone()], vec![])
            .await,
        Err(StoreError::HeadMoved)
    ));
    assert!(matches!(
        store.ingest_audit(BROKER_CHAIN, 2, vec![rec], vec![]).await,
        Err(StoreError::ApiMisuse(_))
    ));
    assert_eq!(
        store.audit_head("gw1").await.unwrap(),
        Some((1, "ab".repeat(32)))
    );
    assert_eq!(store.audit_head("none").await.unwrap(), None);
    assert_eq!(
        store.audit_chains().await.unwrap(),
        vec![BROKER_CHAIN.to_owned(), "gw1".to_owned()]
    );
    let lines = store.audit_lines("gw1", 0, 10).await.unwrap();
    assert_eq!(
        lines.iter().map(|l| l.checkpoint).collect::<Vec<_>>(),
        vec![false, true]
    );
}

/// A standalone gateway's store (DESIGN.md §8): its writer seals records and signs checkpoints
/// on the chain its settings name, not the broker's; a reopened store continues that chain;
/// ingest refuses the store's own chain (its writer holds the head) but not another.
async fn a_store_writes_the_chain_its_settings_name(db: Db) {
    let db = db.writing("gw-1");
    let store = db.open().await;
    for _ in 0..12 {
        store.append_audit(draft("gateway_request")).await.unwrap();
    }
    let (seqs, checkpoints) = verified_chain_of(&db, &*store, "gw-1").await;
    assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
    assert_eq!(checkpoints, 1, "checkpoint_every = 10");
    for l in store.audit_lines("gw-1", 0, u32::MAX).await.unwrap() {
        let v: serde_json::Value = serde_json::from_str(&l.json).unwrap();
        assert_eq!(v["chain"], "gw-1", "{}", l.json);
    }
    assert!(
        store
            .audit_lines(BROKER_CHAIN, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.audit_chains().await.unwrap(), vec!["gw-1".to_owned()]);
    let rec = firebreak_store::IngestRecord {
        seq: 13,
        hash: "ab".repeat(32),
        leaf_hash: [7; 32],
        json: "{\"seq\":13}".into(),
        session: None,
        time_ms: 5,
    };
    assert!(matches!(
        store
            .ingest_audit("gw-1", 12, vec![rec.clone()], vec![])
            .await,
        Err(StoreError::ApiMisuse(_))
    ));
    store
        .ingest_audit(
            "gw-2",
            0,
            vec![firebreak_store::IngestRecord { seq: 1, ..rec }],
            vec![],
        )
        .await
        .unwrap();
    drop(store);
    let store = db.open().await;
    assert_eq!(
        store
            .append_audit(draft("gateway_request"))
            .await
            .unwrap()
            .seq,
        13
    );
    let (seqs, _) = verified_chain_of(&db, &*store, "gw-1").await;
    assert_eq!(seqs.len(), 13);
}

async fn sessions_children_tokens_and_last_use(db: Db) {
    let store = db.open().await;
    store.ping().await.unwrap();
    assert_eq!(store.agent_last_used(&agent("bot")).await.unwrap(), None);
    commit(&*store, exchange("p", None, "bot", None))
        .await
        .unwrap();
    let mut c = exchange("c", Some("p"), "sub", None);
    c.session.act = json!({"sub": "bot"});
    commit(&*store, c).await.unwrap();
    let s = store.session(&sid("c")).await.unwrap().unwrap();
    assert_eq!(s.parent, Some(sid("p")));
    assert_eq!(s.depth, 1);
    assert_eq!(s.act, json!({"sub": "bot"}));
    assert_eq!(store.children(&sid("p")).await.unwrap().len(), 1);
    assert_eq!(store.sessions(None, 10).await.unwrap().len(), 2);
    assert_eq!(
        store.sessions(Some(&agent("sub")), 10).await.unwrap().len(),
        1
    );
    assert_eq!(
        store.agent_last_used(&agent("bot")).await.unwrap(),
        Some(UnixTime::from_secs(1_800_000_000))
    );
    let (t, status) = store
        .token(&Jti::try_from("jti-c").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, TokenStatus::Live);
    assert_eq!(t.session, sid("c"));
    assert_eq!(t.kid, "k1");
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL only: two stores on one schema, as two broker replicas.

mod replicas {
    use super::*;

    /// SECURITY-TESTS.md X04 across replicas: the same subject token at both replicas at the
    /// same instant is accepted exactly once, and again at either one is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn x04_replay_key_refused_across_replicas() {
        let db = Db::pg().await;
        let a = db.open().await;
        let b = db.open().await;
        for round in 0..20 {
            let key = format!("jti-{round}");
            let barrier = Arc::new(tokio::sync::Barrier::new(2));
            let run = |s: Arc<dyn Store>, id: String| {
                let (key, barrier) = (key.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    commit(&*s, exchange(&id, None, "bot", Some(&key))).await
                })
            };
            let ta = run(Arc::clone(&a), format!("a{round}"));
            let tb = run(Arc::clone(&b), format!("b{round}"));
            let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
            let oks = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
            assert_eq!(oks, 1, "round {round}: {ra:?} {rb:?}");
            for r in [&ra, &rb] {
                assert!(r.is_ok() || matches!(r, Err(StoreError::Replay)), "{r:?}");
            }
            let again = commit(&*a, exchange(&format!("x{round}"), None, "bot", Some(&key))).await;
            assert!(matches!(again, Err(StoreError::Replay)), "{again:?}");
        }
    }

    /// Both replicas append to one chain at once: one gap-free chain, exactly one record per
    /// success, checkpoints every 10, verifiable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_append_one_gap_free_verifiable_chain() {
        let db = Db::pg().await;
        let stores = [db.open().await, db.open().await];
        let mut tasks = Vec::new();
        for i in 0..400 {
            let s = Arc::clone(&stores[i % 2]);
            tasks.push(tokio::spawn(async move {
                match i % 4 {
                    0 | 2 => s.append_audit(draft("decision")).await.map(|_| ()),
                    // Every fourth reuses one replay key across both replicas: one succeeds.
                    1 => commit(&*s, exchange(&format!("s{i}"), None, "bot", Some("same")))
                        .await
                        .map(|_| ()),
                    _ => commit(
                        &*s,
                        exchange(&format!("s{i}"), None, "bot", Some(&format!("k{i}"))),
                    )
                    .await
                    .map(|_| ()),
                }
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(StoreError::Replay) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ok, 200 + 100 + 1);
        for s in &stores {
            let (records, cps) = verified_chain(&db, &**s).await;
            assert_eq!(records, (1..=ok as u64).collect::<Vec<_>>(), "gap-free");
            assert_eq!(cps, ok / 10);
        }
    }

    /// An event appended through replica A wakes replica B's watch (LISTEN/NOTIFY), and B
    /// reads it.
    #[tokio::test]
    async fn event_on_one_replica_wakes_the_other() {
        let db = Db::pg().await;
        let a = db.open().await;
        let b = db.open().await;
        let mut watch = b.event_watch();
        assert_eq!(*watch.borrow_and_update(), 0);
        let t = UnixTime::from_secs(1_800_000_000);
        let head = a
            .append_events(vec![NewEvent::revoke("jti", "x", t.plus_secs(60), t)])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch.wait_for(|h| *h >= head))
            .await
            .expect("B's watch woke")
            .unwrap();
        let got = b.events_after(0, 10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data["id"], json!("x"));
    }

    /// Event appends from both replicas at once: seqs are store-wide and gap-free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_event_appends_from_two_replicas_are_gap_free() {
        let db = Db::pg().await;
        let stores = [db.open().await, db.open().await];
        let t = UnixTime::from_secs(1_800_000_000);
        let mut tasks = Vec::new();
        for i in 0..100 {
            let s = Arc::clone(&stores[i % 2]);
            tasks.push(tokio::spawn(async move {
                let n = 1 + i % 3;
                let evs = (0..n)
                    .map(|j| NewEvent::revoke("jti", &format!("{i}-{j}"), t.plus_secs(60), t))
                    .collect();
                s.append_events(evs).await.unwrap();
                n
            }));
        }
        let mut total = 0u64;
        for task in tasks {
            total += task.await.unwrap() as u64;
        }
        let events = stores[1].events_after(0, 10_000).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=total).collect::<Vec<_>>()
        );
        assert_eq!(stores[0].event_head().await.unwrap(), total);
    }

    /// X17 across replicas: a subtree revocation on A racing child exchanges on B never leaves
    /// a committed child unrevoked under the revoked root.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn x17_revocation_racing_child_exchanges_on_another_replica() {
        let db = Db::pg().await;
        let a = db.open().await;
        let b = db.open().await;
        let at = UnixTime::from_secs(1_800_000_100);
        for round in 0..5 {
            let root = format!("root{round}");
            commit(&*a, exchange(&root, None, "bot", None))
                .await
                .unwrap();
            let mut children = Vec::new();
            for i in 0..40 {
                let b = Arc::clone(&b);
                let (root, id) = (root.clone(), format!("r{round}c{i}"));
                children.push(tokio::spawn(async move {
                    // Half are grandchildren through an earlier child of the same round.
                    let parent = if i % 2 == 1 {
                        format!("r{round}c{}", i - 1)
                    } else {
                        root
                    };
                    let r = commit(&*b, exchange(&id, Some(&parent), "sub", None)).await;
                    (id, r)
                }));
            }
            tokio::task::yield_now().await;
            let revoked = a.revoke_session_tree(&sid(&root), at).await.unwrap();
            assert!(revoked.contains(&sid(&root)));
            for c in children {
                let (id, r) = c.await.unwrap();
                match r {
                    Ok(_) => {
                        let row = a.session(&sid(&id)).await.unwrap().unwrap();
                        assert!(
                            row.revoked_at.is_some(),
                            "round {round}: {id} committed and is live under a revoked root"
                        );
                    }
                    Err(StoreError::ParentRevoked(_) | StoreError::ParentMissing(_)) => {}
                    Err(e) => panic!("{id}: {e}"),
                }
                assert_ne!(
                    b.session_status(&sid(&id)).await.unwrap(),
                    TokenStatus::Live
                );
            }
        }
    }

    /// SECURITY-TESTS.md F4 (store part): every backend of a store is killed; calls fail with
    /// `Database` (never hang) and the same store recovers by itself: pool, writer and listener.
    /// Also: the schema given by the URL's `options=-csearch_path=…`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn f4_store_recovers_after_its_backends_are_terminated() {
        let db = Db::pg().await;
        let app = format!("f4_{}", db.schema());
        let base = pg_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!(
            "{base}{sep}application_name={app}&options=-csearch_path%3D{}",
            db.schema()
        );
        let a = PgStore::connect(&url, db.settings(), PgPoolSettings::default())
            .await
            .unwrap();
        let other = db.open().await;
        commit(&a, exchange("s0", None, "bot", None)).await.unwrap();
        a.ping().await.unwrap();
        let (admin, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let killed = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap();
        assert!(
            killed.len() >= 3,
            "pool, writer and listener: {}",
            killed.len()
        );
        // Within a bounded time every kind of call works again on the same store.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut i = 0;
        loop {
            i += 1;
            let started = tokio::time::Instant::now();
            let r = async {
                a.ping().await?;
                commit(&a, exchange(&format!("s{i}"), None, "bot", None)).await?;
                a.session_status(&sid("s0")).await
            }
            .await;
            assert!(started.elapsed() < Duration::from_secs(8), "a call hung");
            match r {
                Ok(s) => {
                    assert_eq!(s, TokenStatus::Live);
                    break;
                }
                Err(StoreError::Database(_)) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(tokio::time::Instant::now() < deadline, "no recovery");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The listener reconnected too: an event from the other replica reaches a's watch.
        let mut watch = a.event_watch();
        let t = UnixTime::from_secs(1_800_000_000);
        let head = other
            .append_events(vec![NewEvent::revoke("jti", "y", t, t)])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(15), watch.wait_for(|h| *h >= head))
            .await
            .expect("a's listener is back")
            .unwrap();
        verified_chain(&db, &a).await;
    }

    /// An unreachable server is an `Open` error within the connect timeout, not a hang.
    #[tokio::test]
    async fn unreachable_server_fails_fast() {
        let started = tokio::time::Instant::now();
        let r = PgStore::connect(
            "postgres://postgres@127.0.0.1:1/test",
            Db::with(Kind::Sqlite(tempfile::tempdir().unwrap())).settings(),
            PgPoolSettings::default(),
        )
        .await;
        assert!(matches!(r, Err(StoreError::Open(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// The reader (for `audit verify|export`) reads the shared chain and cannot write.
    #[tokio::test]
    async fn reader_reads_the_chain_and_writes_nothing() {
        let db = Db::pg().await;
        let a = db.open().await;
        a.append_audit(draft("decision")).await.unwrap();
        let r = PgStore::connect_reader(
            &pg_url(),
            PgPoolSettings {
                schema: Some(db.schema().to_owned()),
                ..PgPoolSettings::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(r.audit_lines(BROKER_CHAIN, 0, 10).await.unwrap().len(), 1);
        assert!(matches!(
            r.append_audit(draft("x")).await,
            Err(StoreError::ApiMisuse(_))
        ));
        assert!(matches!(
            r.purge_replay(UnixTime::from_secs(0)).await,
            Err(StoreError::Database(_))
        ));
    }
}

/// Rough throughput of `commit_exchange` on PostgreSQL, one store vs two replicas on one schema
/// (`cargo test -p firebreak-store --test suite -- --ignored --nocapture throughput`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn throughput_commit_exchange_one_vs_two_stores() {
    for replicas in [1usize, 2] {
        let db = Db::pg().await;
        let mut stores = Vec::new();
        for _ in 0..replicas {
            stores.push(db.open().await);
        }
        let n = 4000usize;
        let started = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for w in 0..64usize {
            let s = Arc::clone(&stores[w % replicas]);
            tasks.push(tokio::spawn(async move {
                for i in (w..n).step_by(64) {
                    let id = format!("s{i}");
                    commit(&*s, exchange(&id, None, "bot", Some(&id)))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{replicas} store(s): {n} exchanges in {secs:.2}s = {:.0}/s",
            n as f64 / secs
        );
        verified_chain(&db, &*stores[0]).await;
    }
}
