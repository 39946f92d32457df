//! Persistence behind one small trait. Everything the broker must not forget across a restart
//! lives here: sessions with their lineage, issued tokens, the subject-token replay guard,
//! revocations and signing keys. The SQLite backend (WAL, `synchronous=FULL`) is the embedded
//! default; a PostgreSQL backend implements the same trait (DESIGN.md §8).
//!
//! The store knows nothing of JOSE or HTTP: it keeps rows and enforces the invariants that need a
//! transaction (a replayed subject token, a child of a revoked session).
#![forbid(unsafe_code)]

mod model;
pub mod postgres;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;

use firebreak_core::{AgentId, Jti, SessionId, UnixTime};

pub use model::{
    ApprovalRow, ApprovalStatus, AuditDraft, AuditLine, AuditReceipt, AuditSettings, BROKER_CHAIN,
    BreakGlassRow, ElevationRow, ElevationStatus, EventKind, EventRow, IngestRecord, KeyRow,
    KeyState, NewEvent, NewExchange, ReplayGuard, SessionRow, TokenRow, TokenStatus,
};
pub use postgres::{PgPoolSettings, PgStore};
pub use sqlite::SqliteStore;

/// A boxed future, so that `Store` can be used as `Arc<dyn Store>`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The subject token's replay key is already recorded (RFC 7519 §4.1.7).
    #[error("subject token already used")]
    Replay,
    /// The parent session was revoked before the child could be recorded.
    #[error("parent session {0} is revoked")]
    ParentRevoked(SessionId),
    /// The parent session does not exist.
    #[error("parent session {0} not found")]
    ParentMissing(SessionId),
    /// A row that must exist does not.
    #[error("{0} not found")]
    NotFound(String),
    /// The database failed (unreachable, disk full, locked past the busy timeout, …).
    #[error("database error: {0}")]
    Database(String),
    /// A stored value no longer parses: the database was edited by hand or corrupted.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt {
        /// The table holding the row.
        table: &'static str,
        /// What did not parse.
        detail: String,
    },
    /// Opening the store failed (bad URL, unreadable file, failed migration).
    #[error("cannot open store: {0}")]
    Open(String),
    /// The audit writer's queue is full: refused at once rather than piling up.
    #[error("audit writer busy")]
    Busy,
    /// Another writer moved the chain's head first (concurrent ingest of the same chain).
    #[error("audit chain head moved")]
    HeadMoved,
    /// The audit writer has stopped.
    #[error("audit writer stopped")]
    WriterGone,
    /// Sealing or signing an audit record failed.
    #[error("audit: {0}")]
    Audit(String),
    /// Caller bug: an operation was used in a way its contract forbids.
    #[error("store API misuse: {0}")]
    ApiMisuse(&'static str),
}

/// What the broker persists. Every method is one transaction.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Records a successful exchange atomically with its audit record: the replay guard (if
    /// any), the new session, the issued token, the agent's last use and the record, in one
    /// transaction (group-committed with concurrent writes). Fails with `Replay` when the replay
    /// key exists and with `ParentRevoked` when the parent session (or its agent) was revoked,
    /// so a child can never be issued under a revocation that committed first.
    fn commit_exchange(
        &self,
        exchange: NewExchange,
        audit: AuditDraft,
    ) -> StoreFuture<'_, AuditReceipt>;

    /// Appends one audit record to the broker chain; durable when it returns.
    fn append_audit(&self, audit: AuditDraft) -> StoreFuture<'_, AuditReceipt>;

    /// A no-op through the audit writer: proves it is alive and committing (for `/readyz`).
    fn audit_probe(&self) -> StoreFuture<'_, ()>;

    /// Records and checkpoints of `chain` in export order (each checkpoint right after the
    /// record it covers up to), records with seq > `after`, at most `limit` records.
    fn audit_lines(&self, chain: &str, after: u64, limit: u32) -> StoreFuture<'_, Vec<AuditLine>>;

    /// The chains present.
    fn audit_chains(&self) -> StoreFuture<'_, Vec<String>>;

    /// Records concerning any of `sessions`, in chain order.
    fn audit_for_sessions(&self, sessions: Vec<SessionId>) -> StoreFuture<'_, Vec<AuditLine>>;

    /// The last record of `chain`: its seq and hash (`None` for an empty chain).
    fn audit_head(&self, chain: &str) -> StoreFuture<'_, Option<(u64, String)>>;

    /// Appends verified records and checkpoints of another chain atomically, if its head is
    /// still at `expected_head` (else `HeadMoved`).
    fn ingest_audit(
        &self,
        chain: &str,
        expected_head: u64,
        records: Vec<IngestRecord>,
        checkpoints: Vec<(u64, String)>,
    ) -> StoreFuture<'_, ()>;

    /// Leaf hashes of `chain` for seq 1..=`upto`, for proofs.
    fn audit_leaf_hashes(&self, chain: &str, upto: u64) -> StoreFuture<'_, Vec<[u8; 32]>>;

    /// One session.
    fn session(&self, id: &SessionId) -> StoreFuture<'_, Option<SessionRow>>;

    /// Sessions, newest first, optionally for one agent, at most `limit`.
    fn sessions(&self, agent: Option<&AgentId>, limit: u32) -> StoreFuture<'_, Vec<SessionRow>>;

    /// The direct children of a session.
    fn children(&self, id: &SessionId) -> StoreFuture<'_, Vec<SessionRow>>;

    /// Revokes a session and every descendant; returns the ids newly revoked (empty when the
    /// session was already revoked or does not exist).
    fn revoke_session_tree(&self, id: &SessionId, at: UnixTime) -> StoreFuture<'_, Vec<SessionId>>;

    /// Revokes an agent and every one of its sessions; returns the sessions newly revoked.
    fn revoke_agent(&self, agent: &AgentId, at: UnixTime) -> StoreFuture<'_, Vec<SessionId>>;

    /// When the agent was revoked, if it was.
    fn agent_revoked_at(&self, agent: &AgentId) -> StoreFuture<'_, Option<UnixTime>>;

    /// When the agent last exchanged a token.
    fn agent_last_used(&self, agent: &AgentId) -> StoreFuture<'_, Option<UnixTime>>;

    /// An issued token with its effective status (revoked directly, through its session or an
    /// ancestor session, or through its agent).
    fn token(&self, jti: &Jti) -> StoreFuture<'_, Option<(TokenRow, TokenStatus)>>;

    /// Whether a session is live: exists, and neither it, an ancestor, nor its agent is revoked.
    fn session_status(&self, id: &SessionId) -> StoreFuture<'_, TokenStatus>;

    /// All signing keys, in creation order.
    fn keys(&self) -> StoreFuture<'_, Vec<KeyRow>>;

    /// Inserts keys when the store has none (first start). Returns false, inserting nothing,
    /// when keys already exist, so that two brokers starting at once agree on one set.
    fn init_keys(&self, keys: Vec<KeyRow>) -> StoreFuture<'_, bool>;

    /// One rotation step in one transaction: `next` → active, active → retiring (retire after
    /// `retire_after`), retiring keys past their time → retired, and `new_next` inserted.
    fn rotate_keys(
        &self,
        new_next: KeyRow,
        now: UnixTime,
        retire_after: UnixTime,
    ) -> StoreFuture<'_, ()>;

    /// Marks retiring keys whose `retire_after` has passed as retired; returns their kids.
    fn retire_due_keys(&self, now: UnixTime) -> StoreFuture<'_, Vec<String>>;

    /// Deletes replay-guard rows whose tokens have expired; returns how many.
    fn purge_replay(&self, now: UnixTime) -> StoreFuture<'_, u64>;

    /// Claims the one-time `key` in `scope` until `expires_at`: `true` the first time, `false`
    /// while an unexpired claim of the same (scope, key) exists. Every process on this store
    /// sees the same claims: DPoP proof `jti`s are claimed here so that a proof replayed at
    /// a second gateway behind the same `htu` is refused (G12).
    fn claim_once(
        &self,
        scope: &str,
        key: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> StoreFuture<'_, bool>;

    /// Stores a new elevation (and its approval, when one is queued) atomically.
    fn insert_elevation(
        &self,
        e: ElevationRow,
        approval: Option<ApprovalRow>,
    ) -> StoreFuture<'_, ()>;

    /// One elevation.
    fn elevation(&self, id: &str) -> StoreFuture<'_, Option<ElevationRow>>;

    /// Elevations, newest first, optionally of one agent.
    fn elevations(&self, agent: Option<&AgentId>, limit: u32)
    -> StoreFuture<'_, Vec<ElevationRow>>;

    /// Approved, unexpired elevations of `agent` usable in `session` (bound to it or to none).
    fn active_elevations(
        &self,
        agent: &AgentId,
        session: Option<&SessionId>,
        now: UnixTime,
    ) -> StoreFuture<'_, Vec<ElevationRow>>;

    /// Consumes an elevation for one use: it must be approved, unexpired at `now`, of `agent`
    /// and bound to `session` or to none; a single-use one becomes `used`. Returns the row as it
    /// was before, or `None` when it is not usable (expired, used, denied, someone else's).
    fn use_elevation(
        &self,
        id: &str,
        agent: &AgentId,
        session: Option<&SessionId>,
        now: UnixTime,
    ) -> StoreFuture<'_, Option<ElevationRow>>;

    /// Marks approved elevations past their end, and pending approvals past theirs, expired;
    /// returns the elevation ids that expired.
    fn expire_elevations(&self, now: UnixTime) -> StoreFuture<'_, Vec<String>>;

    /// One approval.
    fn approval(&self, id: &str) -> StoreFuture<'_, Option<ApprovalRow>>;

    /// Approvals, oldest first, optionally only pending ones.
    fn approvals(&self, pending_only: bool, limit: u32) -> StoreFuture<'_, Vec<ApprovalRow>>;

    /// Decides a pending approval (compare-and-set): approve sets the elevation approved until
    /// `now + duration`; deny sets both denied. Returns the updated elevation, or `None` when the
    /// approval was no longer pending.
    fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        why: &str,
        now: UnixTime,
    ) -> StoreFuture<'_, Option<ElevationRow>>;

    /// Opens a break-glass window.
    fn open_breakglass(&self, b: BreakGlassRow) -> StoreFuture<'_, ()>;

    /// The open window of `agent` at `now`, if any.
    fn active_breakglass(
        &self,
        agent: &AgentId,
        now: UnixTime,
    ) -> StoreFuture<'_, Option<BreakGlassRow>>;

    /// Closes a window early; `None` when it was not open.
    fn close_breakglass(
        &self,
        id: &str,
        by: &str,
        now: UnixTime,
    ) -> StoreFuture<'_, Option<BreakGlassRow>>;

    /// Windows, newest first.
    fn breakglass_list(&self, limit: u32) -> StoreFuture<'_, Vec<BreakGlassRow>>;

    /// A cheap round trip, for `/readyz`.
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// Appends events to the store-wide stream in one transaction; returns the last seq.
    /// Revocations need no call: `revoke_session_tree` and `revoke_agent` write their events in
    /// their own transaction (`INVARIANT (revocation-has-event)`).
    fn append_events(&self, events: Vec<NewEvent>) -> StoreFuture<'_, u64>;

    /// Events with seq > `after`, in order, at most `limit`.
    fn events_after(&self, after: u64, limit: u32) -> StoreFuture<'_, Vec<EventRow>>;

    /// The head seq and, read in the same transaction, every event whose `until` is after
    /// `now`, in order: what a fresh enforcement point needs (DESIGN.md §9 `snapshot`).
    fn event_snapshot(&self, now: UnixTime) -> StoreFuture<'_, (u64, Vec<EventRow>)>;

    /// The last seq (0 when no event was ever written).
    fn event_head(&self) -> StoreFuture<'_, u64>;

    /// Deletes events whose `until` is before `before`; returns how many. Seqs are never reused.
    fn purge_events(&self, before: UnixTime) -> StoreFuture<'_, u64>;

    /// Wakes when the head may have moved (an event committed here or, for a shared database,
    /// on another replica). A hint only: readers still query `events_after`.
    fn event_watch(&self) -> tokio::sync::watch::Receiver<u64>;
}
