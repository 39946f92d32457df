//! A small connection pool of our own: a fixed number of connections behind a semaphore, opened
//! on demand, replaced when broken, and every operation bounded in time. A dependency would buy
//! little here, and this keeps the three timeouts (acquire, connect, operation) in one place
//! where the F4 behaviour (503 inside the outage, recovery without a restart) is decided.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, Config, GenericClient, NoTls, Statement};

use super::{PgPoolSettings, db_err};
use crate::StoreError;

/// One connection and the statements prepared on it.
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) cache: StmtCache,
}

/// Prepared statements of one connection: the hot paths (the writer's inserts, status reads)
/// pay one round trip per statement instead of two.
#[derive(Default)]
pub(super) struct StmtCache(HashMap<&'static str, Statement>);

impl StmtCache {
    /// The statement for `sql`, prepared on first use. Prepared statements live in the session,
    /// not the transaction, so one prepared inside a transaction that rolls back stays valid.
    pub(super) async fn get<C: GenericClient + Sync>(
        &mut self,
        c: &C,
        sql: &'static str,
    ) -> Result<Statement, StoreError> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        let s = c.prepare(sql).await.map_err(db_err)?;
        self.0.insert(sql, s.clone());
        Ok(s)
    }
}

/// The pool.
#[derive(Clone)]
pub(super) struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.inner.settings.size)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: Config,
    settings: PgPoolSettings,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
}

/// A connection on loan. Returned to the pool only when the operation that used it ran to its
/// end (`clean`); one abandoned mid-way (timed out, cancelled) may sit inside a transaction or
/// on a dead socket, so it is closed instead.
struct Lease {
    conn: Option<Conn>,
    clean: bool,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.clean
            && !conn.client.is_closed()
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(conn);
        }
    }
}

/// The connection options every session gets: the caller's (e.g. a `search_path` from the URL),
/// the statement timeout, and an idle-in-transaction timeout so that a replica that vanished
/// mid-transaction cannot hold the chain lock for longer than that.
pub(super) fn session_config(url: &str, settings: &PgPoolSettings) -> Result<Config, StoreError> {
    let mut config: Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Open(format!("store url: {e}")))?;
    let ms = settings.statement_timeout.as_millis().max(1);
    let mut opts = config.get_options().unwrap_or("").to_owned();
    opts.push_str(&format!(
        " -c statement_timeout={ms} -c idle_in_transaction_session_timeout={}",
        ms.saturating_mul(2)
    ));
    if let Some(schema) = &settings.schema {
        opts.push_str(&format!(" -c search_path={schema}"));
    }
    config.options(opts.trim_start().to_owned());
    config.connect_timeout(settings.connect_timeout);
    // A peer that vanished without a FIN is noticed in seconds, not after the kernel's 2 h.
    config.keepalives_idle(Duration::from_secs(10));
    if config.get_application_name().is_none() {
        config.application_name("firebreak");
    }
    Ok(config)
}

/// Opens one connection within the connect timeout and spawns its driver.
pub(super) async fn connect(config: &Config, timeout: Duration) -> Result<Client, StoreError> {
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| StoreError::Database(format!("connect timed out after {timeout:?}")))?
        .map_err(db_err)?;
    // The driver ends by itself when the client is dropped or the socket dies.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

impl Pool {
    pub(super) fn new(config: Config, settings: PgPoolSettings) -> Self {
        let size = settings.size.max(1);
        Self {
            inner: Arc::new(Inner {
                config,
                permits: Arc::new(Semaphore::new(size)),
                idle: Mutex::new(Vec::with_capacity(size)),
                settings,
            }),
        }
    }

    pub(super) fn settings(&self) -> &PgPoolSettings {
        &self.inner.settings
    }

    async fn lease(&self) -> Result<Lease, StoreError> {
        let s = &self.inner.settings;
        let permit = tokio::time::timeout(
            s.acquire_timeout,
            Arc::clone(&self.inner.permits).acquire_owned(),
        )
        .await
        .map_err(|_| {
            StoreError::Database(format!(
                "no database connection free within {:?}",
                s.acquire_timeout
            ))
        })?
        .map_err(|_| StoreError::Database("pool closed".into()))?;
        loop {
            let idle = self
                .inner
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            match idle {
                // A connection whose socket died (server restart, pg_terminate_backend) is
                // dropped here and replaced below, so the pool heals without a restart.
                Some(c) if c.client.is_closed() => {}
                Some(c) => {
                    return Ok(Lease {
                        conn: Some(c),
                        clean: false,
                        pool: Arc::clone(&self.inner),
                        _permit: permit,
                    });
                }
                None => break,
            }
        }
        let client = connect(&self.inner.config, s.connect_timeout).await?;
        Ok(Lease {
            conn: Some(Conn {
                client,
                cache: StmtCache::default(),
            }),
            clean: false,
            pool: Arc::clone(&self.inner),
            _permit: permit,
        })
    }

    /// Runs `f` on a pooled connection, within the statement timeout plus a margin (the server's
    /// own `statement_timeout` normally answers first; this bounds a dead network).
    pub(super) async fn run<T>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let limit = self
            .inner
            .settings
            .statement_timeout
            .saturating_add(Duration::from_millis(500));
        self.run_within(limit, f).await
    }

    /// As [`Pool::run`] with an explicit bound for the whole operation.
    pub(super) async fn run_within<T>(
        &self,
        limit: Duration,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut lease = self.lease().await?;
        let Some(conn) = lease.conn.as_mut() else {
            return Err(StoreError::Database("pool lease without connection".into()));
        };
        match tokio::time::timeout(limit, f(conn)).await {
            Ok(r) => {
                // An error inside a transaction rolled it back (tokio-postgres queues the
                // ROLLBACK when the transaction is dropped), so the connection is reusable.
                lease.clean = true;
                r
            }
            Err(_) => Err(StoreError::Database(format!(
                "database operation timed out after {limit:?}"
            ))),
        }
    }
}
