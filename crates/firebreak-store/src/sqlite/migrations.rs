//! Schema migrations, applied in order, each exactly once, inside a transaction. A migration is
//! never edited after it ships: a change is a new entry.

use rusqlite::{Connection, params};

/// (version, SQL). Times are Unix milliseconds.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE replay (
         issuer TEXT NOT NULL,
         key TEXT NOT NULL,
         expires_at INTEGER NOT NULL,
         PRIMARY KEY (issuer, key)
     ) WITHOUT ROWID;
     CREATE INDEX replay_expiry ON replay(expires_at);
     CREATE TABLE sessions (
         id TEXT PRIMARY KEY,
         agent TEXT NOT NULL,
         parent TEXT REFERENCES sessions(id),
         depth INTEGER NOT NULL,
         target TEXT NOT NULL,
         audience TEXT NOT NULL,
         scope TEXT NOT NULL,
         act TEXT NOT NULL,
         subject_issuer TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         expires_at INTEGER NOT NULL,
         revoked_at INTEGER
     );
     CREATE INDEX sessions_parent ON sessions(parent);
     CREATE INDEX sessions_agent ON sessions(agent, created_at);
     CREATE TABLE tokens (
         jti TEXT PRIMARY KEY,
         session TEXT NOT NULL REFERENCES sessions(id),
         agent TEXT NOT NULL,
         audience TEXT NOT NULL,
         kid TEXT NOT NULL,
         issued_at INTEGER NOT NULL,
         expires_at INTEGER NOT NULL,
         revoked_at INTEGER
     );
     CREATE TABLE agent_state (
         id TEXT PRIMARY KEY,
         last_used INTEGER,
         revoked_at INTEGER
     );
     CREATE TABLE signing_keys (
         kid TEXT PRIMARY KEY,
         alg TEXT NOT NULL,
         state TEXT NOT NULL CHECK (state IN ('next', 'active', 'retiring', 'retired')),
         secret BLOB NOT NULL,
         sealed INTEGER NOT NULL,
         public_jwk TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         activated_at INTEGER,
         retiring_at INTEGER,
         retire_after INTEGER
     );
     CREATE UNIQUE INDEX one_active_key ON signing_keys(state) WHERE state IN ('active', 'next');",
    ),
    (
        2,
        // The audit log. Rows are only ever inserted: the store has no update or delete for
        // them. `json` is the record as hashed and exported; the other columns are indexes.
        "CREATE TABLE audit_records (
             chain TEXT NOT NULL,
             seq INTEGER NOT NULL,
             hash TEXT NOT NULL,
             leaf_hash BLOB NOT NULL,
             json TEXT NOT NULL,
             session TEXT,
             time INTEGER NOT NULL,
             PRIMARY KEY (chain, seq)
         ) WITHOUT ROWID;
         CREATE INDEX audit_session ON audit_records(session);
         CREATE TABLE audit_checkpoints (
             chain TEXT NOT NULL,
             tree_size INTEGER NOT NULL,
             json TEXT NOT NULL,
             PRIMARY KEY (chain, tree_size)
         ) WITHOUT ROWID;",
    ),
    (
        3,
        // Just-in-time elevation, the approval queue and break-glass (DESIGN.md §6). Status
        // changes are compare-and-set on the current status, so two approvers (or an approval
        // racing an expiry) cannot both win.
        "CREATE TABLE elevations (
             id TEXT PRIMARY KEY,
             agent TEXT NOT NULL,
             session TEXT,
             action TEXT NOT NULL,
             target TEXT NOT NULL,
             resource TEXT,
             reason_code TEXT NOT NULL,
             justification TEXT NOT NULL,
             duration_ms INTEGER NOT NULL,
             single_use INTEGER NOT NULL,
             status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'used')),
             requested_by TEXT NOT NULL,
             created_at INTEGER NOT NULL,
             expires_at INTEGER,
             decided_by TEXT,
             decided_at INTEGER,
             decision_reason TEXT,
             used_at INTEGER,
             approval_id TEXT
         );
         CREATE INDEX elevations_agent ON elevations(agent, status);
         CREATE TABLE approvals (
             id TEXT PRIMARY KEY,
             elevation TEXT NOT NULL REFERENCES elevations(id),
             requested_by TEXT NOT NULL,
             involved TEXT NOT NULL,
             status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
             created_at INTEGER NOT NULL,
             expires_at INTEGER NOT NULL,
             decided_by TEXT,
             decided_at INTEGER,
             why TEXT
         );
         CREATE INDEX approvals_status ON approvals(status, created_at);
         CREATE TABLE breakglass (
             id TEXT PRIMARY KEY,
             agent TEXT NOT NULL,
             reason_code TEXT NOT NULL,
             justification TEXT NOT NULL,
             opened_by TEXT NOT NULL,
             opened_at INTEGER NOT NULL,
             ends_at INTEGER NOT NULL,
             closed_at INTEGER,
             closed_by TEXT
         );
         CREATE INDEX breakglass_agent ON breakglass(agent, ends_at);",
    ),
    (
        4,
        "CREATE TABLE events (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             kind TEXT NOT NULL,
             data TEXT NOT NULL,
             until INTEGER NOT NULL
         );
         CREATE INDEX events_until ON events(until);",
    ),
];

/// Applies every migration newer than the database's version.
pub(super) fn run(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL DEFAULT (unixepoch())
         )",
    )?;
    for (version, sql) in MIGRATIONS {
        let done: i64 = conn.query_row(
            "SELECT COUNT(*) FROM schema_migrations WHERE version = ?1",
            params![version],
            |r| r.get(0),
        )?;
        if done == 0 {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let applied = conn
                .execute_batch(sql)
                .and_then(|()| {
                    conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES (?1)",
                        params![version],
                    )
                })
                .and_then(|_| conn.execute_batch("COMMIT"));
            if let Err(e) = applied {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(())
}
