//! The PostgreSQL backend: the same trait, the same semantics and invariants as `SqliteStore`,
//! for several broker replicas on one database (DESIGN.md §8).
//!
//! Three kinds of connection per store: a small pool ([`pool`]) for every method that is one
//! plain transaction, one connection for the group-committing audit writer ([`writer`]), and one
//! LISTEN connection that feeds `event_watch` ([`events`]). All are `NoTls` for now.
//!
//! Concurrency between replicas is kept with READ COMMITTED plus explicit locks, not
//! SERIALIZABLE: a serialization failure would have to be retried per item inside the writer's
//! batch (and would abort the batch's other savepoints' work on retry), while the places that
//! need ordering are few and known. They are:
//! - the broker chain: a transaction-scoped advisory lock per chain (`writer.rs`);
//! - the replay guard: a primary key, so the second insert of a key waits for the first
//!   transaction and then conflicts (X04);
//! - no child of a revoked session: row locks on the agent and the parent chain, see
//!   [`apply_exchange`] and [`revoke_tree_tx`];
//! - event seqs: the one-row `event_head` counter (`events.rs`);
//! - keys: a self-conflicting table lock around `init_keys` and `rotate_keys`;
//! - grants: compare-and-set updates, re-checked by PostgreSQL after a concurrent update.

mod events;
mod grants;
mod migrations;
mod pool;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use firebreak_core::{AgentId, Jti, SessionId, TargetId, UnixTime};
use tokio::sync::{oneshot, watch};
use tokio_postgres::{GenericClient, Row, Transaction};

use self::pool::{Pool, StmtCache};
use crate::{
    ApprovalRow, AuditDraft, AuditLine, AuditReceipt, AuditSettings, BreakGlassRow, ElevationRow,
    EventRow, IngestRecord, KeyRow, KeyState, NewEvent, NewExchange, SessionRow, Store, StoreError,
    StoreFuture, TokenRow, TokenStatus,
};

/// Connection pool and timeouts of a [`PgStore`] (`[store]` in the config).
#[derive(Debug, Clone)]
pub struct PgPoolSettings {
    /// Connections in the pool (the writer and the listener have one each besides).
    pub size: usize,
    /// Opening one connection (TCP + startup) may take this long.
    pub connect_timeout: Duration,
    /// The server's `statement_timeout`; an operation is abandoned a little after it.
    pub statement_timeout: Duration,
    /// Waiting for a free pooled connection may take this long before `Database` is returned.
    pub acquire_timeout: Duration,
    /// Use this schema (created if missing) instead of the URL's or the server's search path.
    /// Letters, digits and `_` only.
    pub schema: Option<String>,
}

impl Default for PgPoolSettings {
    fn default() -> Self {
        Self {
            size: 8,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(2),
            schema: None,
        }
    }
}

/// PostgreSQL-backed [`Store`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: Pool,
    /// `None` for a reader ([`PgStore::connect_reader`]).
    writer: Option<writer::WriterHandle>,
    /// The event head as last seen: after own commits and from the LISTEN task.
    events: Arc<watch::Sender<u64>>,
    /// Dropped with the last clone of the store, which stops the LISTEN task.
    _stop: Arc<oneshot::Sender<()>>,
}

fn db_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(d) = e.as_db_error() {
        return StoreError::Database(format!(
            "{} {}: {}",
            d.severity(),
            d.code().code(),
            d.message()
        ));
    }
    match std::error::Error::source(&e) {
        Some(s) => StoreError::Database(format!("{e}: {s}")),
        None => StoreError::Database(e.to_string()),
    }
}

fn open_err(e: StoreError) -> StoreError {
    match e {
        StoreError::Open(m) => StoreError::Open(m),
        e => StoreError::Open(e.to_string()),
    }
}

fn corrupt(table: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.to_string(),
    }
}

fn to_u64(v: i64, table: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(table, format!("negative value {v}")))
}

fn ms(t: UnixTime) -> i64 {
    t.as_millis()
}

fn opt_time(v: Option<i64>) -> Option<UnixTime> {
    v.map(UnixTime::from_millis)
}

fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The advisory lock of one audit chain (`$1`), scoped to this schema so that stores in other
/// schemas of the same database never wait on each other.
const fn chain_lock() -> &'static str {
    "SELECT pg_advisory_xact_lock(hashtext(coalesce(current_schema(), '')), \
     hashtext('firebreak:chain:' || $1::TEXT))"
}

impl PgStore {
    /// Connects, runs migrations (safe with several brokers starting at once), and starts the
    /// audit writer and the event listener on the current tokio runtime.
    ///
    /// # Errors
    /// `StoreError::Open` when the URL is bad, the server unreachable, or a migration fails.
    pub async fn connect(
        url: &str,
        settings: AuditSettings,
        pool: PgPoolSettings,
    ) -> Result<PgStore, StoreError> {
        if settings.chain.is_empty() {
            return Err(StoreError::Open("the audit chain needs a name".into()));
        }
        let config = Self::config(url, &pool)?;
        let mut client = pool::connect(&config, pool.connect_timeout)
            .await
            .map_err(open_err)?;
        if let Some(schema) = &pool.schema {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .await
                .map_err(|e| open_err(db_err(e)))?;
        }
        migrations::run(&mut client)
            .await
            .map_err(|e| StoreError::Open(format!("migration: {e}")))?;
        writer::init_head(&client, &settings.chain, settings.clock.now())
            .await
            .map_err(open_err)?;
        let head = events::head_tx(&client).await.map_err(open_err)?;
        drop(client);
        let writer_pool = Pool::new(
            config.clone(),
            PgPoolSettings {
                size: 1,
                ..pool.clone()
            },
        );
        let writer = writer::start(writer_pool, settings);
        let events = Arc::new(watch::channel(head).0);
        let (stop, stopped) = oneshot::channel();
        events::spawn_listener(
            config.clone(),
            pool.connect_timeout,
            pool.statement_timeout,
            Arc::clone(&events),
            stopped,
        );
        Ok(PgStore {
            pool: Pool::new(config, pool),
            writer: Some(writer),
            events,
            _stop: Arc::new(stop),
        })
    }

    /// Connects without the audit writer, the event listener or migrations, in read-only
    /// transactions (`default_transaction_read_only`): for `firebreak audit …` against a shared
    /// database while brokers run. Writing through the writer is `ApiMisuse`; other writes are
    /// refused by the server.
    ///
    /// # Errors
    /// `StoreError::Open` when the URL is bad or the server unreachable.
    pub async fn connect_reader(url: &str, pool: PgPoolSettings) -> Result<PgStore, StoreError> {
        let mut config = Self::config(url, &pool)?;
        let opts = format!(
            "{} -c default_transaction_read_only=on",
            config.get_options().unwrap_or("")
        );
        config.options(opts);
        let client = pool::connect(&config, pool.connect_timeout)
            .await
            .map_err(open_err)?;
        let head = events::head_tx(&client).await.map_err(open_err)?;
        drop(client);
        let (stop, _) = oneshot::channel();
        Ok(PgStore {
            pool: Pool::new(config, pool),
            writer: None,
            events: Arc::new(watch::channel(head).0),
            _stop: Arc::new(stop),
        })
    }

    /// Whether a `[store] url` names PostgreSQL.
    pub fn is_postgres_url(url: &str) -> bool {
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }

    fn config(url: &str, pool: &PgPoolSettings) -> Result<tokio_postgres::Config, StoreError> {
        if !Self::is_postgres_url(url) {
            return Err(StoreError::Open(
                "not a postgres:// or postgresql:// URL".into(),
            ));
        }
        if let Some(s) = &pool.schema
            && (s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(StoreError::Open(format!(
                "schema {s:?}: letters, digits and _ only"
            )));
        }
        pool::session_config(url, pool)
    }

    fn writer(&self) -> Result<&writer::WriterHandle, StoreError> {
        self.writer
            .as_ref()
            .ok_or(StoreError::ApiMisuse("a reader store has no audit writer"))
    }
}

const SESSION_COLS: &str = "id, agent, parent, depth, target, audience, scope, act, \
                            subject_issuer, created_at, expires_at, revoked_at";

fn session_from(r: &Row) -> Result<SessionRow, StoreError> {
    let t = "sessions";
    let c = |e: tokio_postgres::Error| corrupt(t, e);
    let id: String = r.try_get(0).map_err(c)?;
    let agent: String = r.try_get(1).map_err(c)?;
    let parent: Option<String> = r.try_get(2).map_err(c)?;
    let depth: i64 = r.try_get(3).map_err(c)?;
    let target: String = r.try_get(4).map_err(c)?;
    let act: String = r.try_get(7).map_err(c)?;
    Ok(SessionRow {
        id: SessionId::try_from(id).map_err(|e| corrupt(t, e))?,
        agent: AgentId::try_from(agent).map_err(|e| corrupt(t, e))?,
        parent: parent
            .map(SessionId::try_from)
            .transpose()
            .map_err(|e| corrupt(t, e))?,
        depth: u32::try_from(depth).map_err(|e| corrupt(t, e))?,
        target: TargetId::try_from(target).map_err(|e| corrupt(t, e))?,
        audience: r.try_get(5).map_err(c)?,
        scope: r.try_get(6).map_err(c)?,
        act: serde_json::from_str(&act).map_err(|e| corrupt(t, e))?,
        subject_issuer: r.try_get(8).map_err(c)?,
        created_at: UnixTime::from_millis(r.try_get(9).map_err(c)?),
        expires_at: UnixTime::from_millis(r.try_get(10).map_err(c)?),
        revoked_at: opt_time(r.try_get(11).map_err(c)?),
    })
}

const STATUS_SQL: &str = "WITH RECURSIVE chain(id, parent, revoked_at, agent) AS (
         SELECT id, parent, revoked_at, agent FROM sessions WHERE id = $1
         UNION ALL
         SELECT s.id, s.parent, s.revoked_at, s.agent
           FROM sessions s JOIN chain c ON s.id = c.parent)
     SELECT COUNT(*), MAX(COALESCE(c.revoked_at, a.revoked_at))
       FROM chain c LEFT JOIN agent_state a ON a.id = c.agent";

/// Live = the session exists and neither it, an ancestor, nor its agent is revoked.
async fn session_status_tx<C: GenericClient + Sync>(
    c: &C,
    cache: &mut StmtCache,
    id: &str,
) -> Result<TokenStatus, StoreError> {
    let st = cache.get(c, STATUS_SQL).await?;
    let row = c.query_one(&st, &[&id]).await.map_err(db_err)?;
    let n: i64 = row.try_get(0).map_err(|e| corrupt("sessions", e))?;
    let revoked: Option<i64> = row.try_get(1).map_err(|e| corrupt("sessions", e))?;
    Ok(match (n, revoked) {
        (0, _) => TokenStatus::Unknown,
        (_, Some(_)) => TokenStatus::Revoked,
        (_, None) => TokenStatus::Live,
    })
}

/// Revokes `root` and its descendants inside the caller's transaction, queueing one `revoke`
/// event per newly revoked session onto `events`.
async fn revoke_tree_tx(
    tx: &Transaction<'_>,
    root: &str,
    at: i64,
    events: &mut Vec<NewEvent>,
) -> Result<Vec<SessionId>, StoreError> {
    // INVARIANT (no-child-of-revoked): the root row is locked FOR UPDATE before the tree is
    // read. A child exchange share-locks its whole ancestor chain, root first, in the writer's
    // transaction (`apply_exchange`), so this waits for every child insert in flight under
    // `root` and holds off new ones until we commit (they then read the revocation). The UPDATE
    // is a later statement, so READ COMMITTED gives it a fresh snapshot holding every child
    // that committed before the lock was granted.
    tx.query("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", &[&root])
        .await
        .map_err(db_err)?;
    let rows = tx
        .query(
            "WITH RECURSIVE tree(id, lvl) AS (
                 SELECT id, 0 FROM sessions WHERE id = $1
                 UNION ALL
                 SELECT s.id, t.lvl + 1 FROM sessions s JOIN tree t ON s.parent = t.id)
             UPDATE sessions SET revoked_at = $2
               FROM tree
              WHERE sessions.id = tree.id AND sessions.revoked_at IS NULL
             RETURNING sessions.id, sessions.expires_at, tree.lvl",
            &[&root, &at],
        )
        .await
        .map_err(db_err)?;
    let mut revoked = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get(0).map_err(|e| corrupt("sessions", e))?;
        let expires: i64 = r.try_get(1).map_err(|e| corrupt("sessions", e))?;
        let lvl: i32 = r.try_get(2).map_err(|e| corrupt("sessions", e))?;
        revoked.push((lvl, id, expires));
    }
    // RETURNING has no order; the events go out root first, level by level, like SQLite's.
    revoked.sort();
    let mut out = Vec::with_capacity(revoked.len());
    for (_, id, expires) in revoked {
        let id = SessionId::try_from(id).map_err(|e| corrupt("sessions", e))?;
        // INVARIANT (revocation-has-event): one `revoke` event per newly revoked session, in
        // the revoking transaction.
        events.push(NewEvent::revoke(
            "session",
            id.as_str(),
            UnixTime::from_millis(expires),
            UnixTime::from_millis(at),
        ));
        out.push(id);
    }
    Ok(out)
}

fn key_from(r: &Row) -> Result<KeyRow, StoreError> {
    let t = "signing_keys";
    let c = |e: tokio_postgres::Error| corrupt(t, e);
    let state: String = r.try_get(2).map_err(c)?;
    Ok(KeyRow {
        kid: r.try_get(0).map_err(c)?,
        alg: r.try_get(1).map_err(c)?,
        state: KeyState::parse(&state).ok_or_else(|| corrupt(t, &state))?,
        secret: r.try_get(3).map_err(c)?,
        sealed: r.try_get(4).map_err(c)?,
        public_jwk: r.try_get(5).map_err(c)?,
        created_at: UnixTime::from_millis(r.try_get(6).map_err(c)?),
        activated_at: opt_time(r.try_get(7).map_err(c)?),
        retiring_at: opt_time(r.try_get(8).map_err(c)?),
        retire_after: opt_time(r.try_get(9).map_err(c)?),
    })
}

async fn insert_key(tx: &Transaction<'_>, k: &KeyRow) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO signing_keys (kid, alg, state, secret, sealed, public_jwk, created_at,
                                   activated_at, retiring_at, retire_after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &k.kid,
            &k.alg,
            &k.state.as_str(),
            &k.secret,
            &k.sealed,
            &k.public_jwk,
            &ms(k.created_at),
            &k.activated_at.map(ms),
            &k.retiring_at.map(ms),
            &k.retire_after.map(ms),
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Keys are changed by one broker at a time: a self-conflicting table lock (reads still pass),
/// so two brokers starting at once agree on one set and two rotations never interleave.
const KEYS_LOCK: &str = "LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE";

/// Applies one exchange's rows inside the writer's savepoint.
async fn apply_exchange(
    tx: &Transaction<'_>,
    cache: &mut StmtCache,
    ex: &NewExchange,
) -> Result<(), StoreError> {
    if let Some(r) = &ex.replay {
        // INVARIANT (replay-once, X04): the guard is a primary-key row. A second insert of the
        // same key (on any replica) waits for the first transaction and then conflicts.
        let st = cache
            .get(
                tx,
                "INSERT INTO replay (issuer, key, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        let inserted = tx
            .execute(&st, &[&r.issuer, &r.key, &ms(r.expires_at)])
            .await
            .map_err(db_err)?;
        if inserted == 0 {
            return Err(StoreError::Replay);
        }
    }
    let s = &ex.session;
    // INVARIANT (no-child-of-revoked): the agent's row, then the parent chain's rows root first,
    // are share-locked in this transaction and their revocation read from the locked (newest)
    // versions. A revocation updates (or FOR UPDATE-locks) those rows first, so either it
    // committed before and we read it here, or it waits for our commit and its later statements
    // then see our child (see `revoke_tree_tx` and `revoke_agent`). Locking in one order
    // (agent, then ancestors by depth) keeps writer and revoker from deadlocking; should
    // PostgreSQL still detect one, this item fails closed with `Database`.
    let agent = s.agent.as_str();
    let lock_agent = cache
        .get(
            tx,
            "SELECT revoked_at FROM agent_state WHERE id = $1 FOR SHARE",
        )
        .await?;
    let mut agent_row = tx.query_opt(&lock_agent, &[&agent]).await.map_err(db_err)?;
    if agent_row.is_none() {
        // No row to lock yet: create it (a concurrent revoke_agent then waits on our insert).
        let st = cache
            .get(
                tx,
                "INSERT INTO agent_state (id) VALUES ($1) ON CONFLICT DO NOTHING",
            )
            .await?;
        tx.execute(&st, &[&agent]).await.map_err(db_err)?;
        agent_row = tx.query_opt(&lock_agent, &[&agent]).await.map_err(db_err)?;
    }
    let agent_revoked: Option<i64> = agent_row
        .as_ref()
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(|e| corrupt("agent_state", e))?
        .flatten();
    if let Some(parent) = &s.parent {
        // Parent links never change, so the chain found by the recursive read is the chain; its
        // rows' revocation comes from the locking read.
        let st = cache
            .get(
                tx,
                "WITH RECURSIVE chain(id, parent) AS (
                     SELECT id, parent FROM sessions WHERE id = $1
                     UNION ALL
                     SELECT s.id, s.parent FROM sessions s JOIN chain c ON s.id = c.parent)
                 SELECT s.agent, s.revoked_at FROM sessions s
                  WHERE s.id IN (SELECT id FROM chain)
                  ORDER BY s.depth, s.id
                  FOR SHARE OF s",
            )
            .await?;
        let rows = tx.query(&st, &[&parent.as_str()]).await.map_err(db_err)?;
        if rows.is_empty() {
            return Err(StoreError::ParentMissing(parent.clone()));
        }
        let mut agents = Vec::with_capacity(rows.len());
        for r in &rows {
            let revoked: Option<i64> = r.try_get(1).map_err(|e| corrupt("sessions", e))?;
            if revoked.is_some() {
                return Err(StoreError::ParentRevoked(parent.clone()));
            }
            agents.push(
                r.try_get::<_, String>(0)
                    .map_err(|e| corrupt("sessions", e))?,
            );
        }
        let st = cache
            .get(
                tx,
                "SELECT EXISTS (SELECT 1 FROM agent_state
                                 WHERE id = ANY($1) AND revoked_at IS NOT NULL)",
            )
            .await?;
        let any: bool = tx
            .query_one(&st, &[&agents])
            .await
            .map_err(db_err)?
            .try_get(0)
            .map_err(|e| corrupt("agent_state", e))?;
        if any {
            return Err(StoreError::ParentRevoked(parent.clone()));
        }
    }
    if agent_revoked.is_some() {
        return Err(StoreError::ParentRevoked(s.id.clone()));
    }
    let st = cache
        .get(
            tx,
            "INSERT INTO sessions (id, agent, parent, depth, target, audience, scope, act,
                                   subject_issuer, created_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL)",
        )
        .await?;
    tx.execute(
        &st,
        &[
            &s.id.as_str(),
            &agent,
            &s.parent.as_ref().map(SessionId::as_str),
            &i64::from(s.depth),
            &s.target.as_str(),
            &s.audience,
            &s.scope,
            &s.act.to_string(),
            &s.subject_issuer,
            &ms(s.created_at),
            &ms(s.expires_at),
        ],
    )
    .await
    .map_err(db_err)?;
    let t = &ex.token;
    let st = cache
        .get(
            tx,
            "INSERT INTO tokens (jti, session, agent, audience, kid, issued_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    tx.execute(
        &st,
        &[
            &t.jti.as_str(),
            &t.session.as_str(),
            &t.agent.as_str(),
            &t.audience,
            &t.kid,
            &ms(t.issued_at),
            &ms(t.expires_at),
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn audit_head_tx<C: GenericClient + Sync>(
    c: &C,
    chain: &str,
) -> Result<Option<(u64, String)>, StoreError> {
    let row = c
        .query_opt(
            "SELECT seq, hash FROM audit_records WHERE chain = $1 ORDER BY seq DESC LIMIT 1",
            &[&chain],
        )
        .await
        .map_err(db_err)?;
    row.map(|r| {
        let seq: i64 = r.try_get(0).map_err(|e| corrupt("audit_records", e))?;
        let hash: String = r.try_get(1).map_err(|e| corrupt("audit_records", e))?;
        Ok((to_u64(seq, "audit_records")?, hash))
    })
    .transpose()
}

fn seq_json(rows: &[Row], table: &'static str) -> Result<Vec<(u64, String)>, StoreError> {
    rows.iter()
        .map(|r| {
            let s: i64 = r.try_get(0).map_err(|e| corrupt(table, e))?;
            let j: String = r.try_get(1).map_err(|e| corrupt(table, e))?;
            Ok((to_u64(s, table)?, j))
        })
        .collect()
}

/// Records with seq > `after` (at most `limit`), each followed by the checkpoints whose tree
/// size equals its seq: the order in which they were written (as `sqlite::audit_lines_tx`).
async fn audit_lines_tx(
    c: &tokio_postgres::Client,
    chain: &str,
    after: u64,
    limit: u32,
) -> Result<Vec<AuditLine>, StoreError> {
    let after_i = big(after);
    let rows = c
        .query(
            "SELECT seq, json FROM audit_records WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&chain, &after_i, &i64::from(limit)],
        )
        .await
        .map_err(db_err)?;
    let records = seq_json(&rows, "audit_records")?;
    let last = records.last().map_or(after, |(s, _)| *s);
    let rows = c
        .query(
            "SELECT tree_size, json FROM audit_checkpoints
              WHERE chain = $1 AND tree_size > $2 AND tree_size <= $3 ORDER BY tree_size",
            &[&chain, &after_i, &big(last)],
        )
        .await
        .map_err(db_err)?;
    let mut checkpoints: std::collections::VecDeque<(u64, String)> =
        seq_json(&rows, "audit_checkpoints")?.into();
    // With no records after `after` but checkpoints beyond the records (a truncated log), the
    // checkpoints still belong in the export so that verification can see the truncation.
    let tail = if records.is_empty() || u64::try_from(records.len()).unwrap_or(0) < u64::from(limit)
    {
        let rows = c
            .query(
                "SELECT tree_size, json FROM audit_checkpoints
                  WHERE chain = $1 AND tree_size > $2 ORDER BY tree_size",
                &[&chain, &big(last)],
            )
            .await
            .map_err(db_err)?;
        seq_json(&rows, "audit_checkpoints")?
    } else {
        Vec::new()
    };
    let line = |seq, checkpoint, json| AuditLine {
        chain: chain.to_owned(),
        seq,
        checkpoint,
        json,
    };
    let mut out = Vec::with_capacity(records.len() + checkpoints.len() + tail.len());
    for (seq, json) in records {
        out.push(line(seq, false, json));
        while checkpoints.front().is_some_and(|(size, _)| *size <= seq) {
            if let Some((size, json)) = checkpoints.pop_front() {
                out.push(line(size, true, json));
            }
        }
    }
    for (size, json) in checkpoints.into_iter().chain(tail) {
        out.push(line(size, true, json));
    }
    Ok(out)
}

impl PgStore {
    fn send(&self, item: writer::Item) -> Result<(), StoreError> {
        self.writer()?.send(item)
    }
}

impl Store for PgStore {
    fn commit_exchange(&self, ex: NewExchange, audit: AuditDraft) -> StoreFuture<'_, AuditReceipt> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(writer::Item::Exchange(Box::new(ex), audit, tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StoreError::WriterGone)?
        })
    }

    fn append_audit(&self, audit: AuditDraft) -> StoreFuture<'_, AuditReceipt> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(writer::Item::Audit(audit, tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StoreError::WriterGone)?
        })
    }

    fn audit_probe(&self) -> StoreFuture<'_, ()> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(writer::Item::Probe(tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StoreError::WriterGone)?
        })
    }

    fn audit_lines(&self, chain: &str, after: u64, limit: u32) -> StoreFuture<'_, Vec<AuditLine>> {
        let chain = chain.to_owned();
        Box::pin(
            self.pool
                .run(async move |c| audit_lines_tx(&c.client, &chain, after, limit).await),
        )
    }

    fn audit_chains(&self) -> StoreFuture<'_, Vec<String>> {
        Box::pin(self.pool.run(async |c| {
            c.client
                .query(
                    "SELECT DISTINCT chain FROM audit_records ORDER BY chain",
                    &[],
                )
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| r.try_get(0).map_err(|e| corrupt("audit_records", e)))
                .collect()
        }))
    }

    fn audit_for_sessions(&self, sessions: Vec<SessionId>) -> StoreFuture<'_, Vec<AuditLine>> {
        Box::pin(self.pool.run(async move |c| {
            let mut out = Vec::new();
            for s in &sessions {
                let rows = c
                    .client
                    .query(
                        "SELECT chain, seq, json FROM audit_records WHERE session = $1
                          ORDER BY time, chain, seq",
                        &[&s.as_str()],
                    )
                    .await
                    .map_err(db_err)?;
                for r in &rows {
                    let t = "audit_records";
                    let seq: i64 = r.try_get(1).map_err(|e| corrupt(t, e))?;
                    out.push(AuditLine {
                        chain: r.try_get(0).map_err(|e| corrupt(t, e))?,
                        seq: to_u64(seq, t)?,
                        checkpoint: false,
                        json: r.try_get(2).map_err(|e| corrupt(t, e))?,
                    });
                }
            }
            Ok(out)
        }))
    }

    fn audit_head(&self, chain: &str) -> StoreFuture<'_, Option<(u64, String)>> {
        let chain = chain.to_owned();
        Box::pin(
            self.pool
                .run(async move |c| audit_head_tx(&c.client, &chain).await),
        )
    }

    fn ingest_audit(
        &self,
        chain: &str,
        expected_head: u64,
        records: Vec<IngestRecord>,
        checkpoints: Vec<(u64, String)>,
    ) -> StoreFuture<'_, ()> {
        let chain = chain.to_owned();
        Box::pin(self.pool.run(async move |c| {
            let tx = c.client.transaction().await.map_err(db_err)?;
            // Two replicas ingesting the same gateway's chain take turns; the second then sees
            // the head moved.
            tx.execute(chain_lock(), &[&chain]).await.map_err(db_err)?;
            // A chain with a head row is some writer's own (the broker's, on every replica):
            // its writers keep that row, so rows slipped in beside it would fork the chain.
            let written = tx
                .query_opt(
                    "SELECT 1 FROM audit_chain_heads WHERE chain = $1",
                    &[&chain],
                )
                .await
                .map_err(db_err)?;
            if written.is_some() {
                return Err(StoreError::ApiMisuse(
                    "a writer's own chain is written by its writers only",
                ));
            }
            let head = audit_head_tx(&tx, &chain).await?.map_or(0, |(s, _)| s);
            if head != expected_head {
                return Err(StoreError::HeadMoved);
            }
            let st = tx
                .prepare(
                    "INSERT INTO audit_records (chain, seq, hash, leaf_hash, json, session, time)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .await
                .map_err(db_err)?;
            for r in &records {
                tx.execute(
                    &st,
                    &[
                        &chain,
                        &big(r.seq),
                        &r.hash,
                        &r.leaf_hash.as_slice(),
                        &r.json,
                        &r.session,
                        &r.time_ms,
                    ],
                )
                .await
                .map_err(db_err)?;
            }
            for (size, json) in &checkpoints {
                tx.execute(
                    "INSERT INTO audit_checkpoints (chain, tree_size, json) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[&chain, &big(*size), json],
                )
                .await
                .map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)
        }))
    }

    fn audit_leaf_hashes(&self, chain: &str, upto: u64) -> StoreFuture<'_, Vec<[u8; 32]>> {
        let chain = chain.to_owned();
        Box::pin(self.pool.run(async move |c| {
            let rows = c
                .client
                .query(
                    "SELECT seq, leaf_hash FROM audit_records WHERE chain = $1 AND seq <= $2
                      ORDER BY seq",
                    &[&chain, &big(upto)],
                )
                .await
                .map_err(db_err)?;
            rows.iter()
                .map(|r| {
                    let seq: i64 = r.try_get(0).map_err(|e| corrupt("audit_records", e))?;
                    let leaf: Vec<u8> = r.try_get(1).map_err(|e| corrupt("audit_records", e))?;
                    <[u8; 32]>::try_from(leaf)
                        .map_err(|_| corrupt("audit_records", format!("leaf hash of seq {seq}")))
                })
                .collect()
        }))
    }

    fn session(&self, id: &SessionId) -> StoreFuture<'_, Option<SessionRow>> {
        let id = id.clone();
        Box::pin(self.pool.run(async move |c| {
            let st = c
                .cache
                .get(
                    &c.client,
                    "SELECT id, agent, parent, depth, target, audience, scope, act,
                            subject_issuer, created_at, expires_at, revoked_at
                       FROM sessions WHERE id = $1",
                )
                .await?;
            c.client
                .query_opt(&st, &[&id.as_str()])
                .await
                .map_err(db_err)?
                .as_ref()
                .map(session_from)
                .transpose()
        }))
    }

    fn sessions(&self, agent: Option<&AgentId>, limit: u32) -> StoreFuture<'_, Vec<SessionRow>> {
        let agent = agent.cloned();
        Box::pin(self.pool.run(async move |c| {
            c.client
                .query(
                    &format!(
                        "SELECT {SESSION_COLS} FROM sessions
                          WHERE ($1::TEXT IS NULL OR agent = $1)
                          ORDER BY created_at DESC, id LIMIT $2"
                    ),
                    &[&agent.as_ref().map(AgentId::as_str), &i64::from(limit)],
                )
                .await
                .map_err(db_err)?
                .iter()
                .map(session_from)
                .collect()
        }))
    }

    fn children(&self, id: &SessionId) -> StoreFuture<'_, Vec<SessionRow>> {
        let id = id.clone();
        Box::pin(self.pool.run(async move |c| {
            c.client
                .query(
                    &format!(
                        "SELECT {SESSION_COLS} FROM sessions WHERE parent = $1
                          ORDER BY created_at, id"
                    ),
                    &[&id.as_str()],
                )
                .await
                .map_err(db_err)?
                .iter()
                .map(session_from)
                .collect()
        }))
    }

    fn revoke_session_tree(&self, id: &SessionId, at: UnixTime) -> StoreFuture<'_, Vec<SessionId>> {
        let id = id.clone();
        let notify = Arc::clone(&self.events);
        Box::pin(self.pool.run(async move |c| {
            let tx = c.client.transaction().await.map_err(db_err)?;
            let mut evs = Vec::new();
            let ids = revoke_tree_tx(&tx, id.as_str(), ms(at), &mut evs).await?;
            let head = events::insert_tx(&tx, &evs).await?;
            tx.commit().await.map_err(db_err)?;
            events::bump(&notify, head);
            Ok(ids)
        }))
    }

    fn revoke_agent(&self, agent: &AgentId, at: UnixTime) -> StoreFuture<'_, Vec<SessionId>> {
        let agent = agent.clone();
        let notify = Arc::clone(&self.events);
        Box::pin(self.pool.run(async move |c| {
            let tx = c.client.transaction().await.map_err(db_err)?;
            let a = agent.as_str();
            // INVARIANT (no-child-of-revoked): the agent's row is locked first (created if
            // need be), as the writer locks it first: an exchange for this agent in flight
            // finishes before we read its sessions below, and later ones wait and then read
            // the revocation. Two replicas revoking at once take turns, so one event is written.
            tx.execute(
                "INSERT INTO agent_state (id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&a],
            )
            .await
            .map_err(db_err)?;
            let already: Option<i64> = tx
                .query_one(
                    "SELECT revoked_at FROM agent_state WHERE id = $1 FOR UPDATE",
                    &[&a],
                )
                .await
                .map_err(db_err)?
                .try_get(0)
                .map_err(|e| corrupt("agent_state", e))?;
            let mut evs = Vec::new();
            if already.is_none() {
                tx.execute(
                    "UPDATE agent_state SET revoked_at = $2 WHERE id = $1",
                    &[&a, &ms(at)],
                )
                .await
                .map_err(db_err)?;
                // INVARIANT (revocation-has-event): the agent's own event covers every token it
                // holds, including sessions that expire later than any listed below.
                let until: Option<i64> = tx
                    .query_one(
                        "SELECT MAX(expires_at) FROM sessions WHERE agent = $1",
                        &[&a],
                    )
                    .await
                    .map_err(db_err)?
                    .try_get(0)
                    .map_err(|e| corrupt("sessions", e))?;
                evs.push(NewEvent::revoke(
                    "agent",
                    a,
                    UnixTime::from_millis(until.unwrap_or(ms(at)).max(ms(at))),
                    at,
                ));
            }
            // Locked in (depth, id) order, the order the writer locks ancestor chains in.
            let rows = tx
                .query(
                    "UPDATE sessions SET revoked_at = $2
                      WHERE id IN (SELECT id FROM sessions
                                    WHERE agent = $1 AND revoked_at IS NULL
                                    ORDER BY depth, id FOR UPDATE)
                        AND revoked_at IS NULL
                     RETURNING id, expires_at, depth",
                    &[&a, &ms(at)],
                )
                .await
                .map_err(db_err)?;
            let mut revoked = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: String = r.try_get(0).map_err(|e| corrupt("sessions", e))?;
                let expires: i64 = r.try_get(1).map_err(|e| corrupt("sessions", e))?;
                let depth: i64 = r.try_get(2).map_err(|e| corrupt("sessions", e))?;
                revoked.push((depth, id, expires));
            }
            revoked.sort();
            let mut out = Vec::new();
            for (_, id, expires) in revoked {
                let id = SessionId::try_from(id).map_err(|e| corrupt("sessions", e))?;
                evs.push(NewEvent::revoke(
                    "session",
                    id.as_str(),
                    UnixTime::from_millis(expires),
                    at,
                ));
                out.push(id);
            }
            // Children of this agent's sessions may belong to other agents (delegation); they
            // go too, since their authority came from a revoked session.
            let mut more = Vec::new();
            for id in &out {
                more.extend(revoke_tree_tx(&tx, id.as_str(), ms(at), &mut evs).await?);
            }
            out.extend(more);
            let head = events::insert_tx(&tx, &evs).await?;
            tx.commit().await.map_err(db_err)?;
            events::bump(&notify, head);
            Ok(out)
        }))
    }

    fn agent_revoked_at(&self, agent: &AgentId) -> StoreFuture<'_, Option<UnixTime>> {
        let agent = agent.clone();
        Box::pin(self.pool.run(async move |c| {
            let row = c
                .client
                .query_opt(
                    "SELECT revoked_at FROM agent_state WHERE id = $1",
                    &[&agent.as_str()],
                )
                .await
                .map_err(db_err)?;
            let v: Option<i64> = row
                .map(|r| r.try_get(0))
                .transpose()
                .map_err(|e| corrupt("agent_state", e))?
                .flatten();
            Ok(opt_time(v))
        }))
    }

    fn agent_last_used(&self, agent: &AgentId) -> StoreFuture<'_, Option<UnixTime>> {
        let agent = agent.clone();
        Box::pin(self.pool.run(async move |c| {
            let v: Option<i64> = c
                .client
                .query_one(
                    "SELECT MAX(created_at) FROM sessions WHERE agent = $1",
                    &[&agent.as_str()],
                )
                .await
                .map_err(db_err)?
                .try_get(0)
                .map_err(|e| corrupt("sessions", e))?;
            Ok(opt_time(v))
        }))
    }

    fn token(&self, jti: &Jti) -> StoreFuture<'_, Option<(TokenRow, TokenStatus)>> {
        let jti = jti.clone();
        Box::pin(self.pool.run(async move |c| {
            let st = c
                .cache
                .get(
                    &c.client,
                    "SELECT jti, session, agent, audience, kid, issued_at, expires_at, revoked_at
                       FROM tokens WHERE jti = $1",
                )
                .await?;
            let Some(r) = c
                .client
                .query_opt(&st, &[&jti.as_str()])
                .await
                .map_err(db_err)?
            else {
                return Ok(None);
            };
            let t = "tokens";
            let e = |e: tokio_postgres::Error| corrupt(t, e);
            let session: String = r.try_get(1).map_err(e)?;
            let revoked: Option<i64> = r.try_get(7).map_err(e)?;
            let status = if revoked.is_some() {
                TokenStatus::Revoked
            } else {
                match session_status_tx(&c.client, &mut c.cache, &session).await? {
                    TokenStatus::Unknown => TokenStatus::Revoked,
                    s => s,
                }
            };
            let jti: String = r.try_get(0).map_err(e)?;
            let agent: String = r.try_get(2).map_err(e)?;
            let token = TokenRow {
                jti: Jti::try_from(jti).map_err(|e| corrupt(t, e))?,
                session: SessionId::try_from(session).map_err(|e| corrupt(t, e))?,
                agent: AgentId::try_from(agent).map_err(|e| corrupt(t, e))?,
                audience: r.try_get(3).map_err(e)?,
                kid: r.try_get(4).map_err(e)?,
                issued_at: UnixTime::from_millis(r.try_get(5).map_err(e)?),
                expires_at: UnixTime::from_millis(r.try_get(6).map_err(e)?),
                revoked_at: opt_time(revoked),
            };
            Ok(Some((token, status)))
        }))
    }

    fn session_status(&self, id: &SessionId) -> StoreFuture<'_, TokenStatus> {
        let id = id.clone();
        Box::pin(
            self.pool
                .run(async move |c| session_status_tx(&c.client, &mut c.cache, id.as_str()).await),
        )
    }

    fn keys(&self) -> StoreFuture<'_, Vec<KeyRow>> {
        Box::pin(self.pool.run(async |c| {
            c.client
                .query(
                    "SELECT kid, alg, state, secret, sealed, public_jwk, created_at, activated_at,
                            retiring_at, retire_after
                       FROM signing_keys ORDER BY created_at, kid",
                    &[],
                )
                .await
                .map_err(db_err)?
                .iter()
                .map(key_from)
                .collect()
        }))
    }

    fn init_keys(&self, keys: Vec<KeyRow>) -> StoreFuture<'_, bool> {
        Box::pin(self.pool.run(async move |c| {
            let tx = c.client.transaction().await.map_err(db_err)?;
            tx.batch_execute(KEYS_LOCK).await.map_err(db_err)?;
            let n: i64 = tx
                .query_one("SELECT COUNT(*) FROM signing_keys", &[])
                .await
                .map_err(db_err)?
                .try_get(0)
                .map_err(|e| corrupt("signing_keys", e))?;
            if n > 0 {
                return Ok(false);
            }
            for k in &keys {
                insert_key(&tx, k).await?;
            }
            tx.commit().await.map_err(db_err)?;
            Ok(true)
        }))
    }

    fn rotate_keys(
        &self,
        new_next: KeyRow,
        now: UnixTime,
        retire_after: UnixTime,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.pool.run(async move |c| {
            if new_next.state != KeyState::Next {
                return Err(StoreError::ApiMisuse(
                    "rotate_keys takes a key in state next",
                ));
            }
            let tx = c.client.transaction().await.map_err(db_err)?;
            tx.batch_execute(KEYS_LOCK).await.map_err(db_err)?;
            let next: Option<String> = tx
                .query_opt("SELECT kid FROM signing_keys WHERE state = 'next'", &[])
                .await
                .map_err(db_err)?
                .map(|r| r.try_get(0))
                .transpose()
                .map_err(|e| corrupt("signing_keys", e))?;
            let Some(next) = next else {
                return Err(StoreError::NotFound("signing key in state next".into()));
            };
            // The same order as SQLite, so `one_active_key` (checked per row) holds at each step.
            tx.execute(
                "UPDATE signing_keys SET state = 'retired'
                  WHERE state = 'retiring' AND retire_after <= $1",
                &[&ms(now)],
            )
            .await
            .map_err(db_err)?;
            tx.execute(
                "UPDATE signing_keys SET state = 'retiring', retiring_at = $1, retire_after = $2
                  WHERE state = 'active'",
                &[&ms(now), &ms(retire_after)],
            )
            .await
            .map_err(db_err)?;
            tx.execute(
                "UPDATE signing_keys SET state = 'active', activated_at = $1 WHERE kid = $2",
                &[&ms(now), &next],
            )
            .await
            .map_err(db_err)?;
            insert_key(&tx, &new_next).await?;
            tx.commit().await.map_err(db_err)
        }))
    }

    fn retire_due_keys(&self, now: UnixTime) -> StoreFuture<'_, Vec<String>> {
        Box::pin(self.pool.run(async move |c| {
            c.client
                .query(
                    "UPDATE signing_keys SET state = 'retired'
                      WHERE state = 'retiring' AND retire_after <= $1 RETURNING kid",
                    &[&ms(now)],
                )
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| r.try_get(0).map_err(|e| corrupt("signing_keys", e)))
                .collect()
        }))
    }

    fn purge_replay(&self, now: UnixTime) -> StoreFuture<'_, u64> {
        Box::pin(self.pool.run(async move |c| {
            c.client
                .execute("DELETE FROM replay WHERE expires_at <= $1", &[&ms(now)])
                .await
                .map_err(db_err)
        }))
    }

    fn claim_once(
        &self,
        scope: &str,
        key: &str,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> StoreFuture<'_, bool> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        Box::pin(self.pool.run(async move |c| {
            // A claim outlives its window by nothing: losing the last few claims in a crash
            // re-admits at most proofs already inside their 60 s window, so the commit need not
            // wait for the WAL flush.
            let tx = c.client.transaction().await.map_err(db_err)?;
            tx.batch_execute("SET LOCAL synchronous_commit TO OFF")
                .await
                .map_err(db_err)?;
            // The primary key decides between concurrent claims on every replica; an expired
            // row not yet purged is taken over.
            let n = tx
                .execute(
                    "INSERT INTO replay (issuer, key, expires_at) VALUES ($1, $2, $3)
                     ON CONFLICT (issuer, key) DO UPDATE SET expires_at = EXCLUDED.expires_at
                     WHERE replay.expires_at <= $4",
                    &[&scope, &key, &ms(expires_at), &ms(now)],
                )
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            Ok(n == 1)
        }))
    }

    fn insert_elevation(
        &self,
        e: ElevationRow,
        approval: Option<ApprovalRow>,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.pool.run(async move |c| {
            grants::insert_elevation(&mut c.client, &e, approval.as_ref()).await
        }))
    }

    fn elevation(&self, id: &str) -> StoreFuture<'_, Option<ElevationRow>> {
        let id = id.to_owned();
        Box::pin(
            self.pool
                .run(async move |c| grants::elevation(&c.client, &id, false).await),
        )
    }

    fn elevations(
        &self,
        agent: Option<&AgentId>,
        limit: u32,
    ) -> StoreFuture<'_, Vec<ElevationRow>> {
        let agent = agent.cloned();
        Box::pin(
            self.pool
                .run(async move |c| grants::elevations(&c.client, agent.as_ref(), limit).await),
        )
    }

    fn active_elevations(
        &self,
        agent: &AgentId,
        session: Option<&SessionId>,
        now: UnixTime,
    ) -> StoreFuture<'_, Vec<ElevationRow>> {
        let (agent, session) = (agent.clone(), session.cloned());
        Box::pin(self.pool.run(async move |c| {
            grants::active_elevations(&c.client, &agent, session.as_ref(), now).await
        }))
    }

    fn use_elevation(
        &self,
        id: &str,
        agent: &AgentId,
        session: Option<&SessionId>,
        now: UnixTime,
    ) -> StoreFuture<'_, Option<ElevationRow>> {
        let (id, agent, session) = (id.to_owned(), agent.clone(), session.cloned());
        Box::pin(self.pool.run(async move |c| {
            grants::use_elevation(&mut c.client, &id, &agent, session.as_ref(), now).await
        }))
    }

    fn expire_elevations(&self, now: UnixTime) -> StoreFuture<'_, Vec<String>> {
        Box::pin(
            self.pool
                .run(async move |c| grants::expire(&mut c.client, now).await),
        )
    }

    fn approval(&self, id: &str) -> StoreFuture<'_, Option<ApprovalRow>> {
        let id = id.to_owned();
        Box::pin(
            self.pool
                .run(async move |c| grants::approval(&c.client, &id).await),
        )
    }

    fn approvals(&self, pending_only: bool, limit: u32) -> StoreFuture<'_, Vec<ApprovalRow>> {
        Box::pin(
            self.pool
                .run(async move |c| grants::approvals(&c.client, pending_only, limit).await),
        )
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
        Box::pin(self.pool.run(async move |c| {
            grants::decide_approval(&mut c.client, &id, approve, &by, &why, now).await
        }))
    }

    fn open_breakglass(&self, b: BreakGlassRow) -> StoreFuture<'_, ()> {
        Box::pin(
            self.pool
                .run(async move |c| grants::open_breakglass(&c.client, &b).await),
        )
    }

    fn active_breakglass(
        &self,
        agent: &AgentId,
        now: UnixTime,
    ) -> StoreFuture<'_, Option<BreakGlassRow>> {
        let agent = agent.clone();
        Box::pin(
            self.pool
                .run(async move |c| grants::active_breakglass(&c.client, &agent, now).await),
        )
    }

    fn close_breakglass(
        &self,
        id: &str,
        by: &str,
        now: UnixTime,
    ) -> StoreFuture<'_, Option<BreakGlassRow>> {
        let (id, by) = (id.to_owned(), by.to_owned());
        Box::pin(
            self.pool
                .run(async move |c| grants::close_breakglass(&c.client, &id, &by, now).await),
        )
    }

    fn breakglass_list(&self, limit: u32) -> StoreFuture<'_, Vec<BreakGlassRow>> {
        Box::pin(
            self.pool
                .run(async move |c| grants::breakglass_list(&c.client, limit).await),
        )
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.pool.run(async |c| {
            c.client.simple_query("SELECT 1").await.map_err(db_err)?;
            Ok(())
        }))
    }

    fn append_events(&self, batch: Vec<NewEvent>) -> StoreFuture<'_, u64> {
        let notify = Arc::clone(&self.events);
        Box::pin(self.pool.run(async move |c| {
            let tx = c.client.transaction().await.map_err(db_err)?;
            let head = events::insert_tx(&tx, &batch).await?;
            tx.commit().await.map_err(db_err)?;
            events::bump(&notify, head);
            Ok(head)
        }))
    }

    fn events_after(&self, after: u64, limit: u32) -> StoreFuture<'_, Vec<EventRow>> {
        Box::pin(
            self.pool
                .run(async move |c| events::after(&c.client, after, limit).await),
        )
    }

    fn event_snapshot(&self, now: UnixTime) -> StoreFuture<'_, (u64, Vec<EventRow>)> {
        Box::pin(self.pool.run(async move |c| {
            // One snapshot for the head and the rows, so an event committed between the two
            // reads is neither half in nor counted twice.
            let tx = c
                .client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(db_err)?;
            let out = events::snapshot_tx(&tx, now).await?;
            tx.commit().await.map_err(db_err)?;
            Ok(out)
        }))
    }

    fn event_head(&self) -> StoreFuture<'_, u64> {
        Box::pin(self.pool.run(async |c| events::head_tx(&c.client).await))
    }

    fn purge_events(&self, before: UnixTime) -> StoreFuture<'_, u64> {
        Box::pin(self.pool.run(async move |c| {
            c.client
                .execute("DELETE FROM events WHERE until < $1", &[&ms(before)])
                .await
                .map_err(db_err)
        }))
    }

    fn event_watch(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }
}
