//! Schema migrations, applied in order, each exactly once, inside a transaction. A migration is
//! never edited after it ships: a change is a new entry.

use rusqlite::{Connection, params};

/// (version, SQL). Times are Unix milliseconds.
const MIGRATIONS: &[(i64, &str)] = &[(
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
)];

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
