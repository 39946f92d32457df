//! The store-wide event stream in PostgreSQL, and the LISTEN task that feeds `event_watch`.
//!
//! Seqs come from the one-row `event_head` counter, bumped in the writing transaction
//! (`UPDATE … RETURNING`): the row lock orders concurrent writers on every replica until commit,
//! and a rollback takes the bump back, so committed seqs are gap-free. The same transaction
//! calls `pg_notify`, which PostgreSQL delivers at commit and only on commit.

use std::sync::Arc;
use std::time::Duration;

use firebreak_core::UnixTime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, Config, GenericClient, Row};

use super::{corrupt, db_err, ms, to_u64};
use crate::{EventKind, EventRow, NewEvent, StoreError};

/// The notification channel (database-wide; the payload is the new head). Listeners treat a
/// notification as a wake-up and read their own schema's head, so two schemas on one database
/// never confuse each other's watch.
pub(super) const CHANNEL: &str = "firebreak_events";

/// Appends `events` inside the caller's transaction and queues the notification; returns the
/// head. With no events it writes nothing and returns the current head.
pub(super) async fn insert_tx<C: GenericClient + Sync>(
    tx: &C,
    events: &[NewEvent],
) -> Result<u64, StoreError> {
    if events.is_empty() {
        return head_tx(tx).await;
    }
    let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
    // INVARIANT (gap-free-seq): the counter row is locked until this transaction ends, so no
    // other writer can commit a higher seq before ours commit or roll back.
    let head: i64 = tx
        .query_one("UPDATE event_head SET seq = seq + $1 RETURNING seq", &[&n])
        .await
        .map_err(db_err)?
        .try_get(0)
        .map_err(|e| corrupt("event_head", e))?;
    let mut seq = head.saturating_sub(n);
    let st = tx
        .prepare("INSERT INTO events (seq, kind, data, until) VALUES ($1, $2, $3, $4)")
        .await
        .map_err(db_err)?;
    for e in events {
        seq = seq.saturating_add(1);
        let data = serde_json::Value::Object(e.data.clone()).to_string();
        tx.execute(&st, &[&seq, &e.kind.as_str(), &data, &ms(e.until)])
            .await
            .map_err(db_err)?;
    }
    let head = to_u64(head, "event_head")?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &head.to_string()])
        .await
        .map_err(db_err)?;
    Ok(head)
}

fn decode(r: &Row) -> Result<EventRow, StoreError> {
    let t = "events";
    let seq = to_u64(r.try_get(0).map_err(|e| corrupt(t, e))?, t)?;
    let kind: String = r.try_get(1).map_err(|e| corrupt(t, e))?;
    let kind = EventKind::parse(&kind).ok_or_else(|| corrupt(t, "unknown kind"))?;
    let data: String = r.try_get(2).map_err(|e| corrupt(t, e))?;
    let mut data = match serde_json::from_str(&data) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return Err(corrupt(t, "data is not a JSON object")),
    };
    data.insert("seq".into(), seq.into());
    Ok(EventRow {
        seq,
        kind,
        data,
        until: UnixTime::from_millis(r.try_get(3).map_err(|e| corrupt(t, e))?),
    })
}

pub(super) async fn after<C: GenericClient + Sync>(
    c: &C,
    after: u64,
    limit: u32,
) -> Result<Vec<EventRow>, StoreError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    c.query(
        "SELECT seq, kind, data, until FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
        &[&after, &i64::from(limit)],
    )
    .await
    .map_err(db_err)?
    .iter()
    .map(decode)
    .collect()
}

pub(super) async fn head_tx<C: GenericClient + Sync>(c: &C) -> Result<u64, StoreError> {
    let head: i64 = c
        .query_one("SELECT seq FROM event_head", &[])
        .await
        .map_err(db_err)?
        .try_get(0)
        .map_err(|e| corrupt("event_head", e))?;
    to_u64(head, "event_head")
}

/// Head and unexpired events from one snapshot (the caller's REPEATABLE READ transaction).
pub(super) async fn snapshot_tx<C: GenericClient + Sync>(
    c: &C,
    now: UnixTime,
) -> Result<(u64, Vec<EventRow>), StoreError> {
    let head = head_tx(c).await?;
    let rows = c
        .query(
            "SELECT seq, kind, data, until FROM events WHERE until > $1 AND seq <= $2 ORDER BY seq",
            &[&ms(now), &i64::try_from(head).unwrap_or(i64::MAX)],
        )
        .await
        .map_err(db_err)?;
    let events = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    Ok((head, events))
}

/// Raises the watch to `head` (never lowers it: notifications may arrive out of order).
pub(super) fn bump(watch: &watch::Sender<u64>, head: u64) {
    watch.send_if_modified(|v| {
        if head > *v {
            *v = head;
            true
        } else {
            false
        }
    });
}

/// Spawns the listener: one dedicated connection that LISTENs, runs a catch-up read of the
/// head on every (re)connect so that nothing committed while it was away is missed, re-reads
/// the head on each notification (and every few seconds, which also notices a dead socket), and
/// reconnects with capped backoff forever. It ends when `stop`'s sender is dropped.
pub(super) fn spawn_listener(
    config: Config,
    connect_timeout: Duration,
    query_timeout: Duration,
    watch: Arc<watch::Sender<u64>>,
    mut stop: oneshot::Receiver<()>,
) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            match listen_once(
                &config,
                connect_timeout,
                query_timeout,
                &watch,
                &mut stop,
                &mut backoff,
            )
            .await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "event listener lost its connection; reconnecting")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = &mut stop => return,
            }
            backoff = backoff.saturating_mul(2).min(Duration::from_secs(5));
        }
    });
}

/// One connection's life. `Ok` only when the store is gone.
async fn listen_once(
    config: &Config,
    connect_timeout: Duration,
    query_timeout: Duration,
    watch: &watch::Sender<u64>,
    stop: &mut oneshot::Receiver<()>,
    backoff: &mut Duration,
) -> Result<(), StoreError> {
    let (client, mut connection) =
        tokio::time::timeout(connect_timeout, config.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| StoreError::Database("listener connect timed out".into()))?
            .map_err(db_err)?;
    let (wake_tx, mut wake) = mpsc::unbounded_channel::<()>();
    // tokio-postgres hands notifications out only through `poll_message`; this task drives the
    // connection and turns each notification into a wake-up. It ends with the connection.
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    if wake_tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "event listener connection failed");
                    return;
                }
            }
        }
    });
    let read_head = async || -> Result<u64, StoreError> {
        tokio::time::timeout(query_timeout, head_tx(&client))
            .await
            .map_err(|_| StoreError::Database("listener query timed out".into()))?
    };
    tokio::time::timeout(
        query_timeout,
        client.batch_execute(&format!("LISTEN {CHANNEL}")),
    )
    .await
    .map_err(|_| StoreError::Database("LISTEN timed out".into()))?
    .map_err(db_err)?;
    // Catch-up: events committed while no listener was attached notified nobody.
    bump(watch, read_head().await?);
    *backoff = Duration::from_millis(50);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            w = wake.recv() => {
                if w.is_none() {
                    return Err(StoreError::Database("listener connection closed".into()));
                }
                // Coalesce a burst into one read.
                while wake.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
            _ = &mut *stop => return Ok(()),
        }
        bump(watch, read_head().await?);
    }
}
