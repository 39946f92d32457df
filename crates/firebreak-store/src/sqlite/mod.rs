//! The embedded SQLite backend: one file, WAL, `synchronous=FULL` so a committed exchange survives
//! a crash. Exchanges and audit records go through the group-committing writer thread
//! (`writer.rs`) on its own connection; everything else uses a second connection behind a mutex
//! on tokio's blocking pool, so the async runtime never waits on a disk flush. Both take the
//! write lock up front (`BEGIN IMMEDIATE`), so SQLite serialises them.

mod events;
mod grants;
mod migrations;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use firebreak_core::{AgentId, Jti, SessionId, TargetId, UnixTime};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    ApprovalRow, AuditDraft, AuditLine, AuditReceipt, AuditSettings, BreakGlassRow, ElevationRow,
    EventRow, IngestRecord, KeyRow, KeyState, NewEvent, NewExchange, SessionRow, Store, StoreError,
    StoreFuture, TokenRow, TokenStatus,
};

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    writer: writer::WriterHandle,
    /// The chain the writer appends to (`AuditSettings::chain`); never written by ingest.
    chain: Arc<str>,
    path: PathBuf,
    /// The event head after each commit that wrote events (`Store::event_watch`).
    events: Arc<tokio::sync::watch::Sender<u64>>,
    /// `claim_once` claims. In memory: one process owns a SQLite store (several replicas
    /// need PostgreSQL, DESIGN.md §8), so this is exactly as shared as the store, and a
    /// DPoP-proof claim costs no fsync. It does not survive a restart, which re-admits at most
    /// a proof still inside its 60 s window.
    claims: Arc<Mutex<OnceClaims>>,
}

/// Claims in memory, bounded: once full, expired claims are dropped; if none has expired the
/// new claim is refused (fail closed: a refused proof is retried with a fresh one).
#[derive(Debug, Default)]
struct OnceClaims {
    by_key: std::collections::HashMap<(String, String), i64>,
}

/// Live claims kept before new ones are refused.
const MAX_CLAIMS: usize = 1 << 20;

impl OnceClaims {
    fn claim(&mut self, scope: &str, key: &str, expires_ms: i64, now_ms: i64) -> bool {
        if self.by_key.len() >= MAX_CLAIMS {
            self.by_key.retain(|_, e| *e > now_ms);
        }
        let k = (scope.to_owned(), key.to_owned());
        match self.by_key.get(&k) {
            Some(e) if *e > now_ms => false,
            _ if self.by_key.len() >= MAX_CLAIMS => false,
            _ => {
                self.by_key.insert(k, expires_ms);
                true
            }
        }
    }
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the database at `path` and runs migrations.
    ///
    /// # Errors
    /// `StoreError::Open` when the file cannot be created or opened or a migration fails.
    pub fn open(path: &Path, audit: AuditSettings) -> Result<Self, StoreError> {
        if audit.chain.is_empty() {
            return Err(StoreError::Open("the audit chain needs a name".into()));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Open(format!("{}: {e}", dir.display())))?;
        }
        create_private_file(path)?;
        let conn = Self::connect(path)?;
        migrations::run(&conn).map_err(|e| StoreError::Open(format!("migration: {e}")))?;
        let chain: Arc<str> = Arc::from(audit.chain.as_str());
        let writer = writer::start(Self::connect(path)?, Self::connect(path)?, audit)?;
        let head = events::head_tx(&conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            writer,
            chain,
            path: path.to_owned(),
            events: Arc::new(tokio::sync::watch::channel(head).0),
            claims: Arc::new(Mutex::new(OnceClaims::default())),
        })
    }

    fn connect(path: &Path) -> Result<Connection, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 1000;",
        )
        .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        Ok(conn)
    }

    /// Reads the audit log of an existing database without starting a writer (for offline
    /// `audit verify`, `export`, `replay` while a broker may be running).
    ///
    /// # Errors
    /// `StoreError::Open` when the file is missing or not a Firebreak database.
    pub fn open_reader(path: &Path) -> Result<AuditReader, StoreError> {
        if !path.exists() {
            return Err(StoreError::Open(format!(
                "{}: no such database",
                path.display()
            )));
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        Ok(AuditReader { conn })
    }

    /// Parses a `[store] url` of the form `sqlite:///abs/path`, `sqlite://rel/path` or
    /// `sqlite:path` into a file path.
    pub fn path_from_url(url: &str) -> Option<PathBuf> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?;
        (!rest.is_empty()).then(|| PathBuf::from(rest))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking pool.
    fn with<T, F>(&self, f: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // A panic while holding the lock poisons it; the connection itself is still
                // consistent (SQLite rolled back), so keep serving.
                let mut guard = conn
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                f(&mut guard)
            })
            .await
            .map_err(|e| StoreError::Database(format!("store task failed: {e}")))?
        })
    }
}

/// Creates the database file with mode 0600 before SQLite opens it, so keys and sessions are
/// never readable by other users, even for an instant.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
    Ok(())
}

fn ms(t: UnixTime) -> i64 {
    t.as_millis()
}

fn opt_time(v: Option<i64>) -> Option<UnixTime> {
    v.map(UnixTime::from_millis)
}

fn corrupt(table: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.to_string(),
    }
}

const SESSION_COLS: &str = "id, agent, parent, depth, target, audience, scope, act, \
                            subject_issuer, created_at, expires_at, revoked_at";

fn session_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SessionRow, StoreError>> {
    let id: String = row.get(0)?;
    let agent: String = row.get(1)?;
    let parent: Option<String> = row.get(2)?;
    let depth: i64 = row.get(3)?;
    let target: String = row.get(4)?;
    let act: String = row.get(7)?;
    Ok((|| {
        Ok(SessionRow {
            id: SessionId::try_from(id).map_err(|e| corrupt("sessions", e))?,
            agent: AgentId::try_from(agent).map_err(|e| corrupt("sessions", e))?,
            parent: parent
                .map(SessionId::try_from)
                .transpose()
                .map_err(|e| corrupt("sessions", e))?,
            depth: u32::try_from(depth).map_err(|e| corrupt("sessions", e))?,
            target: TargetId::try_from(target).map_err(|e| corrupt("sessions", e))?,
            audience: row.get(5).map_err(db_err)?,
            scope: row.get(6).map_err(db_err)?,
            act: serde_json::from_str(&act).map_err(|e| corrupt("sessions", e))?,
            subject_issuer: row.get(8).map_err(db_err)?,
            created_at: UnixTime::from_millis(row.get(9).map_err(db_err)?),
            expires_at: UnixTime::from_millis(row.get(10).map_err(db_err)?),
            revoked_at: opt_time(row.get(11).map_err(db_err)?),
        })
    })())
}

fn collect_sessions(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<SessionRow>, StoreError> {
    let rows = stmt.query_map(params, session_from_row).map_err(db_err)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r.map_err(db_err)??);
    }
    Ok(out)
}

/// Live = the session exists and neither it, an ancestor, nor its agent is revoked.
fn session_status_tx(conn: &Connection, id: &str) -> Result<TokenStatus, StoreError> {
    let row: Option<(i64, Option<i64>)> = conn
        .query_row(
            "WITH RECURSIVE chain(id, parent, revoked_at, agent) AS (
                 SELECT id, parent, revoked_at, agent FROM sessions WHERE id = ?1
                 UNION ALL
                 SELECT s.id, s.parent, s.revoked_at, s.agent
                   FROM sessions s JOIN chain c ON s.id = c.parent)
             SELECT COUNT(*),
                    MAX(COALESCE(c.revoked_at, a.revoked_at))
               FROM chain c LEFT JOIN agent_state a ON a.id = c.agent",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err)?;
    Ok(match row {
        None | Some((0, _)) => TokenStatus::Unknown,
        Some((_, Some(_))) => TokenStatus::Revoked,
        Some((_, None)) => TokenStatus::Live,
    })
}

fn revoke_tree_tx(
    tx: &rusqlite::Transaction<'_>,
    root: &str,
    at: i64,
) -> Result<Vec<SessionId>, StoreError> {
    let mut stmt = tx
        .prepare(
            "WITH RECURSIVE tree(id) AS (
                 SELECT id FROM sessions WHERE id = ?1
                 UNION ALL
                 SELECT s.id FROM sessions s JOIN tree t ON s.parent = t.id)
             UPDATE sessions SET revoked_at = ?2
              WHERE id IN (SELECT id FROM tree) AND revoked_at IS NULL
             RETURNING id, expires_at",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![root, at], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, expires) = row.map_err(db_err)?;
        let id = SessionId::try_from(id).map_err(|e| corrupt("sessions", e))?;
        // INVARIANT (revocation-has-event): one `revoke` event per newly revoked session, in
        // the revoking transaction, so an enforcement point can never miss a committed
        // revocation (DESIGN.md §9: a session revoke emits one event per descendant).
        events::insert_tx(
            tx,
            &NewEvent::revoke(
                "session",
                id.as_str(),
                UnixTime::from_millis(expires),
                UnixTime::from_millis(at),
            ),
        )?;
        out.push(id);
    }
    Ok(out)
}

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<KeyRow, StoreError>> {
    let state: String = row.get(2)?;
    let sealed: i64 = row.get(4)?;
    Ok((|| {
        Ok(KeyRow {
            kid: row.get(0).map_err(db_err)?,
            alg: row.get(1).map_err(db_err)?,
            state: KeyState::parse(&state).ok_or_else(|| corrupt("signing_keys", &state))?,
            secret: row.get(3).map_err(db_err)?,
            sealed: sealed != 0,
            public_jwk: row.get(5).map_err(db_err)?,
            created_at: UnixTime::from_millis(row.get(6).map_err(db_err)?),
            activated_at: opt_time(row.get(7).map_err(db_err)?),
            retiring_at: opt_time(row.get(8).map_err(db_err)?),
            retire_after: opt_time(row.get(9).map_err(db_err)?),
        })
    })())
}

fn insert_key(tx: &Connection, k: &KeyRow) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO signing_keys (kid, alg, state, secret, sealed, public_jwk, created_at,
                                   activated_at, retiring_at, retire_after)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            k.kid,
            k.alg,
            k.state.as_str(),
            k.secret,
            i64::from(k.sealed),
            k.public_jwk,
            ms(k.created_at),
            k.activated_at.map(ms),
            k.retiring_at.map(ms),
            k.retire_after.map(ms),
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Applies one exchange's rows inside the caller's transaction (the writer's savepoint).
pub(super) fn apply_exchange(tx: &Connection, ex: &NewExchange) -> Result<(), StoreError> {
    // Cached statements: this runs once per exchange, on the hot path.
    if let Some(r) = &ex.replay {
        let inserted = tx
            .prepare_cached(
                "INSERT INTO replay (issuer, key, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut st| st.execute(params![r.issuer, r.key, ms(r.expires_at)]))
            .map_err(db_err)?;
        if inserted == 0 {
            return Err(StoreError::Replay);
        }
    }
    let s = &ex.session;
    // INVARIANT (no-child-of-revoked): the parent's status is read inside the same
    // write transaction that inserts the child, and SQLite serialises writers, so a
    // revocation that committed first is always seen here.
    if let Some(parent) = &s.parent {
        match session_status_tx(tx, parent.as_str())? {
            TokenStatus::Live => {}
            TokenStatus::Revoked => return Err(StoreError::ParentRevoked(parent.clone())),
            TokenStatus::Unknown => return Err(StoreError::ParentMissing(parent.clone())),
        }
    }
    // The agent's revocation is checked here, in the transaction, for the same reason.
    let agent_revoked: Option<i64> = tx
        .prepare_cached("SELECT revoked_at FROM agent_state WHERE id = ?1")
        .and_then(|mut st| {
            st.query_row(params![s.agent.as_str()], |r| r.get(0))
                .optional()
        })
        .map_err(db_err)?
        .flatten();
    if agent_revoked.is_some() {
        return Err(StoreError::ParentRevoked(s.id.clone()));
    }
    tx.prepare_cached(&format!(
        "INSERT INTO sessions ({SESSION_COLS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL)"
    ))
    .and_then(|mut st| {
        st.execute(params![
            s.id.as_str(),
            s.agent.as_str(),
            s.parent.as_ref().map(SessionId::as_str),
            i64::from(s.depth),
            s.target.as_str(),
            s.audience,
            s.scope,
            s.act.to_string(),
            s.subject_issuer,
            ms(s.created_at),
            ms(s.expires_at),
        ])
    })
    .map_err(db_err)?;
    let t = &ex.token;
    tx.prepare_cached(
        "INSERT INTO tokens (jti, session, agent, audience, kid, issued_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut st| {
        st.execute(params![
            t.jti.as_str(),
            t.session.as_str(),
            t.agent.as_str(),
            t.audience,
            t.kid,
            ms(t.issued_at),
            ms(t.expires_at),
        ])
    })
    .map_err(db_err)?;
    // No per-exchange write of the agent's last use: it is the newest session's start, read
    // through the (agent, created_at) index when asked for (`agent_last_used`).
    Ok(())
}

/// Read-only access to the audit tables of a database file.
#[derive(Debug)]
pub struct AuditReader {
    conn: Connection,
}

impl AuditReader {
    /// As [`Store::audit_lines`].
    ///
    /// # Errors
    /// On database errors.
    pub fn lines(&self, chain: &str, after: u64, limit: u32) -> Result<Vec<AuditLine>, StoreError> {
        audit_lines_tx(&self.conn, chain, after, limit)
    }

    /// As [`Store::audit_chains`].
    ///
    /// # Errors
    /// On database errors.
    pub fn chains(&self) -> Result<Vec<String>, StoreError> {
        audit_chains_tx(&self.conn)
    }

    /// As [`Store::audit_for_sessions`].
    ///
    /// # Errors
    /// On database errors.
    pub fn for_sessions(&self, sessions: &[SessionId]) -> Result<Vec<AuditLine>, StoreError> {
        audit_for_sessions_tx(&self.conn, sessions)
    }

    /// A session row (for replay lineage).
    ///
    /// # Errors
    /// On database errors.
    pub fn session(&self, id: &SessionId) -> Result<Option<SessionRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {SESSION_COLS} FROM sessions WHERE id = ?1"
            ))
            .map_err(db_err)?;
        Ok(collect_sessions(&mut stmt, params![id.as_str()])?
            .into_iter()
            .next())
    }

    /// Direct children of a session.
    ///
    /// # Errors
    /// On database errors.
    pub fn children(&self, id: &SessionId) -> Result<Vec<SessionRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {SESSION_COLS} FROM sessions WHERE parent = ?1 ORDER BY created_at, id"
            ))
            .map_err(db_err)?;
        collect_sessions(&mut stmt, params![id.as_str()])
    }
}

fn to_u64(v: i64, table: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(table, format!("negative value {v}")))
}

fn audit_chains_tx(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT DISTINCT chain FROM audit_records ORDER BY chain")
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

/// Records with seq > `after` (at most `limit`), each followed by the checkpoints whose tree
/// size equals its seq: the order in which they were written.
fn audit_lines_tx(
    conn: &Connection,
    chain: &str,
    after: u64,
    limit: u32,
) -> Result<Vec<AuditLine>, StoreError> {
    let after_i = i64::try_from(after).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached("SELECT seq, json FROM audit_records WHERE chain = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![chain, after_i, limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(db_err)?;
    let mut records = Vec::new();
    for r in rows {
        let (seq, json) = r.map_err(db_err)?;
        records.push((to_u64(seq, "audit_records")?, json));
    }
    let last = records.last().map_or(after, |(s, _)| *s);
    let mut cps = conn
        .prepare_cached(
            "SELECT tree_size, json FROM audit_checkpoints WHERE chain = ?1 AND tree_size > ?2 AND tree_size <= ?3 ORDER BY tree_size",
        )
        .map_err(db_err)?;
    let cp_rows = cps
        .query_map(
            params![chain, after_i, i64::try_from(last).unwrap_or(i64::MAX)],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )
        .map_err(db_err)?;
    let mut checkpoints = std::collections::VecDeque::new();
    for r in cp_rows {
        let (size, json) = r.map_err(db_err)?;
        checkpoints.push_back((to_u64(size, "audit_checkpoints")?, json));
    }
    // With no records after `after` but checkpoints beyond the records (a truncated log),
    // the checkpoints still belong in the export so that verification can see the truncation.
    let tail: Vec<(u64, String)> = if records.is_empty()
        || u64::try_from(records.len()).unwrap_or(0) < u64::from(limit)
    {
        let mut t = conn
            .prepare_cached("SELECT tree_size, json FROM audit_checkpoints WHERE chain = ?1 AND tree_size > ?2 ORDER BY tree_size")
            .map_err(db_err)?;
        let rows = t
            .query_map(
                params![chain, i64::try_from(last).unwrap_or(i64::MAX)],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .map_err(db_err)?;
        let mut v = Vec::new();
        for r in rows {
            let (size, json) = r.map_err(db_err)?;
            v.push((to_u64(size, "audit_checkpoints")?, json));
        }
        v
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(records.len() + checkpoints.len() + tail.len());
    for (seq, json) in records {
        out.push(AuditLine {
            chain: chain.to_owned(),
            seq,
            checkpoint: false,
            json,
        });
        while checkpoints.front().is_some_and(|(size, _)| *size <= seq) {
            if let Some((size, json)) = checkpoints.pop_front() {
                out.push(AuditLine {
                    chain: chain.to_owned(),
                    seq: size,
                    checkpoint: true,
                    json,
                });
            }
        }
    }
    for (size, json) in checkpoints.into_iter().chain(tail) {
        out.push(AuditLine {
            chain: chain.to_owned(),
            seq: size,
            checkpoint: true,
            json,
        });
    }
    Ok(out)
}

fn audit_for_sessions_tx(
    conn: &Connection,
    sessions: &[SessionId],
) -> Result<Vec<AuditLine>, StoreError> {
    let mut out = Vec::new();
    let mut stmt = conn
        .prepare_cached("SELECT chain, seq, json FROM audit_records WHERE session = ?1 ORDER BY time, chain, seq")
        .map_err(db_err)?;
    for s in sessions {
        let rows = stmt
            .query_map(params![s.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(db_err)?;
        for r in rows {
            let (chain, seq, json) = r.map_err(db_err)?;
            out.push(AuditLine {
                chain,
                seq: to_u64(seq, "audit_records")?,
                checkpoint: false,
                json,
            });
        }
    }
    Ok(out)
}

fn audit_head_tx(conn: &Connection, chain: &str) -> Result<Option<(u64, String)>, StoreError> {
    let row: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_records WHERE chain = ?1 ORDER BY seq DESC LIMIT 1",
            params![chain],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err)?;
    row.map(|(s, h)| Ok((to_u64(s, "audit_records")?, h)))
        .transpose()
}

fn leaf_hashes_tx(conn: &Connection, chain: &str, upto: u64) -> Result<Vec<[u8; 32]>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, leaf_hash FROM audit_records WHERE chain = ?1 AND seq <= ?2 ORDER BY seq",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(
            params![chain, i64::try_from(upto).unwrap_or(i64::MAX)],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .map_err(db_err)?;
    let mut out = Vec::new();
    for r in rows {
        let (seq, leaf) = r.map_err(db_err)?;
        let leaf: [u8; 32] = leaf
            .try_into()
            .map_err(|_| corrupt("audit_records", format!("leaf hash of seq {seq}")))?;
        out.push(leaf);
    }
    Ok(out)
}

impl Store for SqliteStore {
    fn commit_exchange(&self, ex: NewExchange, audit: AuditDraft) -> StoreFuture<'_, AuditReceipt> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .writer
            .send(writer::Item::Exchange(Box::new(ex), audit, tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StoreError::WriterGone)?
        })
    }

    fn append_audit(&self, audit: AuditDraft) -> StoreFuture<'_, AuditReceipt> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.writer.send(writer::Item::Audit(audit, tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StoreError::WriterGone)?
        })
    }

    fn audit_probe(&self) -> StoreFuture<'_, ()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.writer.send(writer::Item::Probe(tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StoreError::WriterGone)?
        })
    }

    fn audit_lines(&self, chain: &str, after: u64, limit: u32) -> StoreFuture<'_, Vec<AuditLine>> {
        let chain = chain.to_owned();
        self.with(move |conn| audit_lines_tx(conn, &chain, after, limit))
    }

    fn audit_chains(&self) -> StoreFuture<'_, Vec<String>> {
        self.with(|conn| audit_chains_tx(conn))
    }

    fn audit_for_sessions(&self, sessions: Vec<SessionId>) -> StoreFuture<'_, Vec<AuditLine>> {
        self.with(move |conn| audit_for_sessions_tx(conn, &sessions))
    }

    fn insert_elevation(
        &self,
        e: ElevationRow,
        approval: Option<ApprovalRow>,
    ) -> StoreFuture<'_, ()> {
        self.with(move |c| grants::insert_elevation(c, &e, approval.as_ref()))
    }

    fn elevation(&self, id: &str) -> StoreFuture<'_, Option<ElevationRow>> {
        let id = id.to_owned();
        self.with(move |c| grants::elevation(c, &id))
    }

    fn elevations(
        &self,
        agent: Option<&AgentId>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<ElevationRow>> {
        let agent = agent.cloned();
        self.with(move |c| grants::elevations(c, agent.as_ref(), limit))
    }

    fn active_elevations(
        &self,
        agent: &AgentId,
        session: Option<&SessionId>,
        now: UnixTime,
    ) -> StoreFuture<'_, Vec<ElevationRow>> {
        let (agent, session) = (agent.clone(), session.cloned());
        self.with(move |c| grants::active_elevations(c, &agent, session.as_ref(), now))
    }

    fn use_elevation(
        &self,
        id: &str,
        agent: &AgentId,
        session: Option<&SessionId>,
        now: UnixTime,
    ) -> StoreFuture<'_, Option<ElevationRow>> {
        let (id, agent, session) = (id.to_owned(), agent.clone(), session.cloned());
        self.with(move |c| grants::use_elevation(c, &id, &agent, session.as_ref(), now))
    }

    fn expire_elevations(&self, now: UnixTime) -> StoreFuture<'_, Vec<String>> {
        self.with(move |c| grants::expire(c, now))
    }

    fn approval(&self, id: &str) -> StoreFuture<'_, Option<ApprovalRow>> {
        let id = id.to_owned();
        self.with(move |c| grants::approval(c, &id))
    }

    fn approvals(&self, pending_only: bool, limit: u32) -> StoreFuture<'_, Vec<ApprovalRow>> {
        self.with(move |c| grants::approvals(c, pending_only, limit))
    }

    fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        why: &str,
        now: UnixTime,
    ) -> StoreFuture<'_, Option<ElevationRow>> {
        let (id, by, why) = (id.to_owned(), by.to_owned(), why.to_owned());
        self.with(move |c| grants::decide_approval(c, &id, approve, &by, &why, now))
    }

    fn open_breakglass(&self, b: BreakGlassRow) -> StoreFuture<'_, ()> {
        self.with(move |c| grants::open_breakglass(c, &b))
    }

    fn active_breakglass(
        &self,
        agent: &AgentId,
        now: UnixTime,
    ) -> StoreFuture<'_, Option<BreakGlassRow>> {
        let agent = agent.clone();
        self.with(move |c| grants::active_breakglass(c, &agent, now))
    }

    fn close_breakglass(
        &self,
        id: &str,
        by: &str,
        now: UnixTime,
    ) -> StoreFuture<'_, Option<BreakGlassRow>> {
        let (id, by) = (id.to_owned(), by.to_owned());
        self.with(move |c| grants::close_breakglass(c, &id, &by, now))
    }

    fn breakglass_list(&self, limit: u32) -> StoreFuture<'_, Vec<BreakGlassRow>> {
        self.with(move |c| grants::breakglass_list(c, limit))
    }

    fn audit_head(&self, chain: &str) -> StoreFuture<'_, Option<(u64, String)>> {
        let chain = chain.to_owned();
        self.with(move |conn| audit_head_tx(conn, &chain))
    }

    fn ingest_audit(
        &self,
        chain: &str,
        expected_head: u64,
        records: Vec<IngestRecord>,
        checkpoints: Vec<(u64, String)>,
    ) -> StoreFuture<'_, ()> {
        let chain = chain.to_owned();
        let own = Arc::clone(&self.chain);
        self.with(move |conn| {
            // The writer keeps this chain's head in memory; rows slipped in beside it would
            // fork the chain at its next append.
            if *chain == *own {
                return Err(StoreError::ApiMisuse(
                    "the store's own chain is written by its writer only",
                ));
            }
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let head = audit_head_tx(&tx, &chain)?.map_or(0, |(s, _)| s);
            if head != expected_head {
                return Err(StoreError::HeadMoved);
            }
            for r in &records {
                tx.prepare_cached(
                    "INSERT INTO audit_records (chain, seq, hash, leaf_hash, json, session, time)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        chain,
                        i64::try_from(r.seq).unwrap_or(i64::MAX),
                        r.hash,
                        r.leaf_hash.to_vec(),
                        r.json,
                        r.session,
                        r.time_ms,
                    ])
                })
                .map_err(db_err)?;
            }
            for (size, json) in &checkpoints {
                tx.execute(
                    "INSERT INTO audit_checkpoints (chain, tree_size, json) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                    params![chain, i64::try_from(*size).unwrap_or(i64::MAX), json],
                )
                .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
    }

    fn audit_leaf_hashes(&self, chain: &str, upto: u64) -> StoreFuture<'_, Vec<[u8; 32]>> {
        let chain = chain.to_owned();
        self.with(move |conn| leaf_hashes_tx(conn, &chain, upto))
    }

    fn session(&self, id: &SessionId) -> StoreFuture<'_, Option<SessionRow>> {
        let id = id.clone();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLS} FROM sessions WHERE id = ?1"
                ))
                .map_err(db_err)?;
            Ok(collect_sessions(&mut stmt, params![id.as_str()])?
                .into_iter()
                .next())
        })
    }

    fn sessions(&self, agent: Option<&AgentId>, limit: u32) -> StoreFuture<'_, Vec<SessionRow>> {
        let agent = agent.cloned();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLS} FROM sessions
                      WHERE (?1 IS NULL OR agent = ?1)
                      ORDER BY created_at DESC, id LIMIT ?2"
                ))
                .map_err(db_err)?;
            collect_sessions(
                &mut stmt,
                params![agent.as_ref().map(AgentId::as_str), limit],
            )
        })
    }

    fn children(&self, id: &SessionId) -> StoreFuture<'_, Vec<SessionRow>> {
        let id = id.clone();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLS} FROM sessions WHERE parent = ?1 ORDER BY created_at, id"
                ))
                .map_err(db_err)?;
            collect_sessions(&mut stmt, params![id.as_str()])
        })
    }

    fn revoke_session_tree(&self, id: &SessionId, at: UnixTime) -> StoreFuture<'_, Vec<SessionId>> {
        let id = id.clone();
        let notify = Arc::clone(&self.events);
        self.with(move |conn| {
            let tx = conn.transaction().map_err(db_err)?;
            let ids = revoke_tree_tx(&tx, id.as_str(), ms(at))?;
            let head = events::head_tx(&tx)?;
            tx.commit().map_err(db_err)?;
            notify.send_replace(head);
            Ok(ids)
        })
    }

    fn revoke_agent(&self, agent: &AgentId, at: UnixTime) -> StoreFuture<'_, Vec<SessionId>> {
        let agent = agent.clone();
        let notify = Arc::clone(&self.events);
        self.with(move |conn| {
            let tx = conn.transaction().map_err(db_err)?;
            let already: Option<i64> = tx
                .query_row(
                    "SELECT revoked_at FROM agent_state WHERE id = ?1",
                    params![agent.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?
                .flatten();
            tx.execute(
                "INSERT INTO agent_state (id, revoked_at) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET revoked_at = COALESCE(revoked_at, excluded.revoked_at)",
                params![agent.as_str(), ms(at)],
            )
            .map_err(db_err)?;
            if already.is_none() {
                // INVARIANT (revocation-has-event): the agent's own event covers every token it
                // holds, including sessions that expire later than any listed below.
                let until: Option<i64> = tx
                    .query_row(
                        "SELECT MAX(expires_at) FROM sessions WHERE agent = ?1",
                        params![agent.as_str()],
                        |r| r.get(0),
                    )
                    .map_err(db_err)?;
                events::insert_tx(
                    &tx,
                    &NewEvent::revoke(
                        "agent",
                        agent.as_str(),
                        UnixTime::from_millis(until.unwrap_or(ms(at)).max(ms(at))),
                        at,
                    ),
                )?;
            }
            let mut out = Vec::new();
            let mut revoked = Vec::new();
            {
                let mut stmt = tx
                    .prepare(
                        "UPDATE sessions SET revoked_at = ?2
                          WHERE agent = ?1 AND revoked_at IS NULL RETURNING id, expires_at",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![agent.as_str(), ms(at)], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })
                    .map_err(db_err)?;
                for row in rows {
                    revoked.push(row.map_err(db_err)?);
                }
            }
            for (id, expires) in revoked {
                let id = SessionId::try_from(id).map_err(|e| corrupt("sessions", e))?;
                events::insert_tx(
                    &tx,
                    &NewEvent::revoke("session", id.as_str(), UnixTime::from_millis(expires), at),
                )?;
                out.push(id);
            }
            // Children of this agent's sessions may belong to other agents (delegation); they
            // go too, since their authority came from a revoked session.
            let mut more = Vec::new();
            for id in &out {
                more.extend(revoke_tree_tx(&tx, id.as_str(), ms(at))?);
            }
            out.extend(more);
            let head = events::head_tx(&tx)?;
            tx.commit().map_err(db_err)?;
            notify.send_replace(head);
            Ok(out)
        })
    }

    fn agent_revoked_at(&self, agent: &AgentId) -> StoreFuture<'_, Option<UnixTime>> {
        let agent = agent.clone();
        self.with(move |conn| {
            let v: Option<Option<i64>> = conn
                .query_row(
                    "SELECT revoked_at FROM agent_state WHERE id = ?1",
                    params![agent.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            Ok(opt_time(v.flatten()))
        })
    }

    fn agent_last_used(&self, agent: &AgentId) -> StoreFuture<'_, Option<UnixTime>> {
        let agent = agent.clone();
        self.with(move |conn| {
            let v: Option<Option<i64>> = conn
                .query_row(
                    "SELECT MAX(created_at) FROM sessions WHERE agent = ?1",
                    params![agent.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            Ok(opt_time(v.flatten()))
        })
    }

    fn token(&self, jti: &Jti) -> StoreFuture<'_, Option<(TokenRow, TokenStatus)>> {
        let jti = jti.clone();
        self.with(move |conn| {
            let row = conn
                .query_row(
                    "SELECT jti, session, agent, audience, kid, issued_at, expires_at, revoked_at
                       FROM tokens WHERE jti = ?1",
                    params![jti.as_str()],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, i64>(6)?,
                            r.get::<_, Option<i64>>(7)?,
                        ))
                    },
                )
                .optional()
                .map_err(db_err)?;
            let Some((jti, session, agent, audience, kid, iat, exp, revoked)) = row else {
                return Ok(None);
            };
            let status = if revoked.is_some() {
                TokenStatus::Revoked
            } else {
                match session_status_tx(conn, &session)? {
                    TokenStatus::Unknown => TokenStatus::Revoked,
                    s => s,
                }
            };
            let token = TokenRow {
                jti: Jti::try_from(jti).map_err(|e| corrupt("tokens", e))?,
                session: SessionId::try_from(session).map_err(|e| corrupt("tokens", e))?,
                agent: AgentId::try_from(agent).map_err(|e| corrupt("tokens", e))?,
                audience,
                kid,
                issued_at: UnixTime::from_millis(iat),
                expires_at: UnixTime::from_millis(exp),
                revoked_at: opt_time(revoked),
            };
            Ok(Some((token, status)))
        })
    }

    fn session_status(&self, id: &SessionId) -> StoreFuture<'_, TokenStatus> {
        let id = id.clone();
        self.with(move |conn| session_status_tx(conn, id.as_str()))
    }

    fn keys(&self) -> StoreFuture<'_, Vec<KeyRow>> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT kid, alg, state, secret, sealed, public_jwk, created_at, activated_at,
                            retiring_at, retire_after
                       FROM signing_keys ORDER BY created_at, kid",
                )
                .map_err(db_err)?;
            let rows = stmt.query_map([], key_from_row).map_err(db_err)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r.map_err(db_err)??);
            }
            Ok(out)
        })
    }

    fn init_keys(&self, keys: Vec<KeyRow>) -> StoreFuture<'_, bool> {
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let n: i64 = tx
                .query_row("SELECT COUNT(*) FROM signing_keys", [], |r| r.get(0))
                .map_err(db_err)?;
            if n > 0 {
                return Ok(false);
            }
            for k in &keys {
                insert_key(&tx, k)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(true)
        })
    }

    fn rotate_keys(
        &self,
        new_next: KeyRow,
        now: UnixTime,
        retire_after: UnixTime,
    ) -> StoreFuture<'_, ()> {
        self.with(move |conn| {
            if new_next.state != KeyState::Next {
                return Err(StoreError::ApiMisuse(
                    "rotate_keys takes a key in state next",
                ));
            }
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let next: Option<String> = tx
                .query_row(
                    "SELECT kid FROM signing_keys WHERE state = 'next'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let Some(next) = next else {
                return Err(StoreError::NotFound("signing key in state next".into()));
            };
            tx.execute(
                "UPDATE signing_keys SET state = 'retired'
                  WHERE state = 'retiring' AND retire_after <= ?1",
                params![ms(now)],
            )
            .map_err(db_err)?;
            tx.execute(
                "UPDATE signing_keys SET state = 'retiring', retiring_at = ?1, retire_after = ?2
                  WHERE state = 'active'",
                params![ms(now), ms(retire_after)],
            )
            .map_err(db_err)?;
            tx.execute(
                "UPDATE signing_keys SET state = 'active', activated_at = ?1 WHERE kid = ?2",
                params![ms(now), next],
            )
            .map_err(db_err)?;
            insert_key(&tx, &new_next)?;
            tx.commit().map_err(db_err)
        })
    }

    fn retire_due_keys(&self, now: UnixTime) -> StoreFuture<'_, Vec<String>> {
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE signing_keys SET state = 'retired'
                      WHERE state = 'retiring' AND retire_after <= ?1 RETURNING kid",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![ms(now)], |r| r.get(0))
                .map_err(db_err)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(db_err)
        })
    }

    fn purge_replay(&self, now: UnixTime) -> StoreFuture<'_, u64> {
        self.claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_key
            .retain(|_, e| *e > ms(now));
        self.with(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM replay WHERE expires_at <= ?1",
                    params![ms(now)],
                )
                .map_err(db_err)?;
            Ok(n as u64)
        })
    }

    fn claim_once(
        &self,
        scope: &str,
        key: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> StoreFuture<'_, bool> {
        let fresh = self
            .claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .claim(scope, key, ms(expires_at), ms(now));
        Box::pin(std::future::ready(Ok(fresh)))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.with(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err)?;
            Ok(())
        })
    }

    fn append_events(&self, batch: Vec<NewEvent>) -> StoreFuture<'_, u64> {
        let notify = Arc::clone(&self.events);
        self.with(move |conn| {
            let tx = conn.transaction().map_err(db_err)?;
            for e in &batch {
                events::insert_tx(&tx, e)?;
            }
            let head = events::head_tx(&tx)?;
            tx.commit().map_err(db_err)?;
            notify.send_replace(head);
            Ok(head)
        })
    }

    fn events_after(&self, after: u64, limit: u32) -> StoreFuture<'_, Vec<EventRow>> {
        self.with(move |conn| events::after_tx(conn, after, limit))
    }

    fn event_snapshot(&self, now: UnixTime) -> StoreFuture<'_, (u64, Vec<EventRow>)> {
        self.with(move |conn| {
            let tx = conn.transaction().map_err(db_err)?;
            let out = events::snapshot_tx(&tx, now)?;
            tx.commit().map_err(db_err)?;
            Ok(out)
        })
    }

    fn event_head(&self) -> StoreFuture<'_, u64> {
        self.with(|conn| events::head_tx(conn))
    }

    fn purge_events(&self, before: UnixTime) -> StoreFuture<'_, u64> {
        self.with(move |conn| events::purge_tx(conn, before))
    }

    fn event_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests;
