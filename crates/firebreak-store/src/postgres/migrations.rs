//! Schema migrations for PostgreSQL, with the semantics of `sqlite/migrations.rs`: applied in
//! order, each exactly once, each in its own transaction, recorded in `schema_migrations`. A
//! migration is never edited after it ships: a change is a new entry.
//!
//! Several brokers may start at once on one database: every migration transaction first takes a
//! transaction-scoped advisory lock (keyed by the schema), so one applies and the others wait and
//! then find it recorded.

use tokio_postgres::Client;

use super::db_err;
use crate::StoreError;

/// (version, SQL). Times are Unix milliseconds in BIGINT; JSON is stored as TEXT, exactly as
/// written (the audit `json` is the hashed text and must come back byte for byte).
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE replay (
             issuer TEXT NOT NULL,
             key TEXT NOT NULL,
             expires_at BIGINT NOT NULL,
             PRIMARY KEY (issuer, key)
         );
         CREATE INDEX replay_expiry ON replay(expires_at);
         CREATE TABLE sessions (
             id TEXT PRIMARY KEY,
             agent TEXT NOT NULL,
             parent TEXT REFERENCES sessions(id),
             depth BIGINT NOT NULL,
             target TEXT NOT NULL,
             audience TEXT NOT NULL,
             scope TEXT NOT NULL,
             act TEXT NOT NULL,
             subject_issuer TEXT NOT NULL,
             created_at BIGINT NOT NULL,
             expires_at BIGINT NOT NULL,
             revoked_at BIGINT
         );
         CREATE INDEX sessions_parent ON sessions(parent);
         CREATE INDEX sessions_agent ON sessions(agent, created_at);
         CREATE TABLE tokens (
             jti TEXT PRIMARY KEY,
             session TEXT NOT NULL REFERENCES sessions(id),
             agent TEXT NOT NULL,
             audience TEXT NOT NULL,
             kid TEXT NOT NULL,
             issued_at BIGINT NOT NULL,
             expires_at BIGINT NOT NULL,
             revoked_at BIGINT
         );
         CREATE TABLE agent_state (
             id TEXT PRIMARY KEY,
             last_used BIGINT,
             revoked_at BIGINT
         );
         CREATE TABLE signing_keys (
             kid TEXT PRIMARY KEY,
             alg TEXT NOT NULL,
             state TEXT NOT NULL CHECK (state IN ('next', 'active', 'retiring', 'retired')),
             secret BYTEA NOT NULL,
             sealed BOOLEAN NOT NULL,
             public_jwk TEXT NOT NULL,
             created_at BIGINT NOT NULL,
             activated_at BIGINT,
             retiring_at BIGINT,
             retire_after BIGINT
         );
         CREATE UNIQUE INDEX one_active_key ON signing_keys(state) WHERE state IN ('active', 'next');",
    ),
    (
        2,
        // The audit log. Rows are only ever inserted: the store has no update or delete for
        // them. `audit_chain_heads` is the writers' shared view of the broker chain's end (seq,
        // hash, Merkle frontier, last checkpoint), updated under the chain's advisory lock in the
        // same transaction as the records it describes, so any replica can continue the chain
        // without re-reading its leaves.
        "CREATE TABLE audit_records (
             chain TEXT NOT NULL,
             seq BIGINT NOT NULL,
             hash TEXT NOT NULL,
             leaf_hash BYTEA NOT NULL,
             json TEXT NOT NULL,
             session TEXT,
             time BIGINT NOT NULL,
             PRIMARY KEY (chain, seq)
         );
         CREATE INDEX audit_session ON audit_records(session);
         CREATE TABLE audit_checkpoints (
             chain TEXT NOT NULL,
             tree_size BIGINT NOT NULL,
             json TEXT NOT NULL,
             PRIMARY KEY (chain, tree_size)
         );
         CREATE TABLE audit_chain_heads (
             chain TEXT PRIMARY KEY,
             seq BIGINT NOT NULL,
             hash TEXT NOT NULL,
             frontier BYTEA NOT NULL,
             last_checkpoint_size BIGINT NOT NULL,
             last_checkpoint_at BIGINT NOT NULL
         );",
    ),
    (
        3,
        // Just-in-time elevation, the approval queue and break-glass (DESIGN.md §6). Status
        // changes are compare-and-set on the current status.
        "CREATE TABLE elevations (
             id TEXT PRIMARY KEY,
             agent TEXT NOT NULL,
             session TEXT,
             action TEXT NOT NULL,
             target TEXT NOT NULL,
             resource TEXT,
             reason_code TEXT NOT NULL,
             justification TEXT NOT NULL,
             duration_ms BIGINT NOT NULL,
             single_use BOOLEAN NOT NULL,
             status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'used')),
             requested_by TEXT NOT NULL,
             created_at BIGINT NOT NULL,
             expires_at BIGINT,
             decided_by TEXT,
             decided_at BIGINT,
             decision_reason TEXT,
             used_at BIGINT,
             approval_id TEXT
         );
         CREATE INDEX elevations_agent ON elevations(agent, status);
         CREATE TABLE approvals (
             id TEXT PRIMARY KEY,
             elevation TEXT NOT NULL REFERENCES elevations(id),
             requested_by TEXT NOT NULL,
             involved TEXT NOT NULL,
             status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
             created_at BIGINT NOT NULL,
             expires_at BIGINT NOT NULL,
             decided_by TEXT,
             decided_at BIGINT,
             why TEXT
         );
         CREATE INDEX approvals_status ON approvals(status, created_at);
         CREATE TABLE breakglass (
             id TEXT PRIMARY KEY,
             agent TEXT NOT NULL,
             reason_code TEXT NOT NULL,
             justification TEXT NOT NULL,
             opened_by TEXT NOT NULL,
             opened_at BIGINT NOT NULL,
             ends_at BIGINT NOT NULL,
             closed_at BIGINT,
             closed_by TEXT
         );
         CREATE INDEX breakglass_agent ON breakglass(agent, ends_at);",
    ),
    (
        4,
        // The event stream. `seq` comes from the one-row `event_head` counter, bumped inside the
        // writing transaction: its row lock orders event writers and a rollback undoes the bump,
        // so committed seqs are gap-free across replicas (a SEQUENCE is not: it never rolls
        // back). The counter keeps the high-water mark after a purge.
        "CREATE TABLE events (
             seq BIGINT PRIMARY KEY,
             kind TEXT NOT NULL,
             data TEXT NOT NULL,
             until BIGINT NOT NULL
         );
         CREATE INDEX events_until ON events(until);
         CREATE TABLE event_head (
             one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
             seq BIGINT NOT NULL
         );
         INSERT INTO event_head (one, seq) VALUES (TRUE, 0);",
    ),
];

/// The advisory lock pair of this schema's migrations.
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext(coalesce(current_schema(), '')), \
                    hashtext('firebreak:migrations'))";

/// Applies every migration newer than the database's version.
pub(super) async fn run(client: &mut Client) -> Result<(), StoreError> {
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await.map_err(db_err)?;
        tx.execute(LOCK, &[]).await.map_err(db_err)?;
        // Created under the lock too: a concurrent CREATE TABLE IF NOT EXISTS can still fail
        // on the catalog's unique index.
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT PRIMARY KEY,
                 applied_at BIGINT NOT NULL
                     DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT
             )",
        )
        .await
        .map_err(db_err)?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await
            .map_err(db_err)?
            .is_some();
        if !done {
            tx.batch_execute(sql).await.map_err(db_err)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
    }
    Ok(())
}
