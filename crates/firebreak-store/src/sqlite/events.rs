//! The store-wide event stream in SQLite: one `events` table whose `AUTOINCREMENT` key is the
//! seq. SQLite serialises writers and rolls `sqlite_sequence` back with a failed transaction, so
//! committed seqs are gap-free, and `AUTOINCREMENT` never hands out a purged seq again.

use firebreak_core::UnixTime;
use rusqlite::{Connection, params};

use super::{corrupt, db_err, ms, to_u64};
use crate::{EventKind, EventRow, NewEvent, StoreError};

/// Appends one event inside the caller's transaction; returns its seq.
pub(super) fn insert_tx(tx: &Connection, e: &NewEvent) -> Result<u64, StoreError> {
    let data = serde_json::Value::Object(e.data.clone()).to_string();
    tx.prepare_cached("INSERT INTO events (kind, data, until) VALUES (?1, ?2, ?3)")
        .and_then(|mut st| st.execute(params![e.kind.as_str(), data, ms(e.until)]))
        .map_err(db_err)?;
    to_u64(tx.last_insert_rowid(), "events")
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn decode((seq, kind, data, until): (i64, String, String, i64)) -> Result<EventRow, StoreError> {
    let seq = to_u64(seq, "events")?;
    let kind = EventKind::parse(&kind).ok_or_else(|| corrupt("events", "unknown kind"))?;
    let mut data = match serde_json::from_str(&data) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return Err(corrupt("events", "data is not a JSON object")),
    };
    data.insert("seq".into(), seq.into());
    Ok(EventRow {
        seq,
        kind,
        data,
        until: UnixTime::from_millis(until),
    })
}

pub(super) fn after_tx(
    conn: &Connection,
    after: u64,
    limit: u32,
) -> Result<Vec<EventRow>, StoreError> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut st = conn
        .prepare_cached(
            "SELECT seq, kind, data, until FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .map_err(db_err)?;
    let rows = st.query_map(params![after, limit], row).map_err(db_err)?;
    rows.map(|r| decode(r.map_err(db_err)?)).collect()
}

pub(super) fn head_tx(conn: &Connection) -> Result<u64, StoreError> {
    // sqlite_sequence keeps the high-water mark even after the newest rows were purged.
    let head: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(db_err)?;
    to_u64(head.unwrap_or(0), "events")
}

pub(super) fn snapshot_tx(
    conn: &Connection,
    now: UnixTime,
) -> Result<(u64, Vec<EventRow>), StoreError> {
    let head = head_tx(conn)?;
    let mut st = conn
        .prepare_cached(
            "SELECT seq, kind, data, until FROM events WHERE until > ?1 AND seq <= ?2 ORDER BY seq",
        )
        .map_err(db_err)?;
    let rows = st
        .query_map(
            params![ms(now), i64::try_from(head).unwrap_or(i64::MAX)],
            row,
        )
        .map_err(db_err)?;
    let events = rows
        .map(|r| decode(r.map_err(db_err)?))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((head, events))
}

pub(super) fn purge_tx(conn: &Connection, before: UnixTime) -> Result<u64, StoreError> {
    let n = conn
        .execute("DELETE FROM events WHERE until < ?1", params![ms(before)])
        .map_err(db_err)?;
    Ok(n as u64)
}
