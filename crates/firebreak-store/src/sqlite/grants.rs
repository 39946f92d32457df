//! Elevations, approvals and break-glass windows in SQLite. Every status change is a
//! compare-and-set on the current status inside one transaction.

use firebreak_core::{AgentId, SessionId, UnixTime};
use rusqlite::{Connection, params};

use super::{corrupt, db_err, opt_time};
use crate::{
    ApprovalRow, ApprovalStatus, BreakGlassRow, ElevationRow, ElevationStatus, StoreError,
};

const ELEVATION_COLS: &str = "id, agent, session, action, target, resource, reason_code, justification, \
     duration_ms, single_use, status, requested_by, created_at, expires_at, decided_by, decided_at, \
     decision_reason, used_at, approval_id";

fn elevation_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ElevationRow, StoreError>> {
    let agent: String = r.get(1)?;
    let session: Option<String> = r.get(2)?;
    let duration: i64 = r.get(8)?;
    let single: i64 = r.get(9)?;
    let status: String = r.get(10)?;
    let created: i64 = r.get(12)?;
    let row = (|| -> Result<ElevationRow, StoreError> {
        Ok(ElevationRow {
            id: r.get(0).map_err(db_err)?,
            agent: AgentId::try_from(agent).map_err(|e| corrupt("elevations", e))?,
            session: session
                .map(SessionId::try_from)
                .transpose()
                .map_err(|e| corrupt("elevations", e))?,
            action: r.get(3).map_err(db_err)?,
            target: r.get(4).map_err(db_err)?,
            resource: r.get(5).map_err(db_err)?,
            reason_code: r.get(6).map_err(db_err)?,
            justification: r.get(7).map_err(db_err)?,
            duration_ms: u64::try_from(duration).map_err(|e| corrupt("elevations", e))?,
            single_use: single != 0,
            status: ElevationStatus::parse(&status)
                .ok_or_else(|| corrupt("elevations", &status))?,
            requested_by: r.get(11).map_err(db_err)?,
            created_at: UnixTime::from_millis(created),
            expires_at: opt_time(r.get(13).map_err(db_err)?),
            decided_by: r.get(14).map_err(db_err)?,
            decided_at: opt_time(r.get(15).map_err(db_err)?),
            decision_reason: r.get(16).map_err(db_err)?,
            used_at: opt_time(r.get(17).map_err(db_err)?),
            approval_id: r.get(18).map_err(db_err)?,
        })
    })();
    Ok(row)
}

fn collect<T>(
    stmt: &mut rusqlite::Statement<'_>,
    p: impl rusqlite::Params,
    f: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
) -> Result<Vec<T>, StoreError> {
    let rows = stmt.query_map(p, f).map_err(db_err)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r.map_err(db_err)??);
    }
    Ok(out)
}

pub(super) fn elevation(conn: &Connection, id: &str) -> Result<Option<ElevationRow>, StoreError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {ELEVATION_COLS} FROM elevations WHERE id = ?1"
        ))
        .map_err(db_err)?;
    Ok(collect(&mut st, params![id], elevation_from)?
        .into_iter()
        .next())
}

pub(super) fn elevations(
    conn: &Connection,
    agent: Option<&AgentId>,
    limit: u32,
) -> Result<Vec<ElevationRow>, StoreError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {ELEVATION_COLS} FROM elevations WHERE (?1 IS NULL OR agent = ?1) ORDER BY created_at DESC, id LIMIT ?2"
        ))
        .map_err(db_err)?;
    collect(
        &mut st,
        params![agent.map(AgentId::as_str), limit],
        elevation_from,
    )
}

pub(super) fn active_elevations(
    conn: &Connection,
    agent: &AgentId,
    session: Option<&SessionId>,
    now: UnixTime,
) -> Result<Vec<ElevationRow>, StoreError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {ELEVATION_COLS} FROM elevations
              WHERE agent = ?1 AND status = 'approved' AND expires_at > ?2
                AND (session IS NULL OR session = ?3)
              ORDER BY created_at"
        ))
        .map_err(db_err)?;
    collect(
        &mut st,
        params![
            agent.as_str(),
            now.as_millis(),
            session.map(SessionId::as_str)
        ],
        elevation_from,
    )
}

pub(super) fn insert_elevation(
    conn: &mut Connection,
    e: &ElevationRow,
    a: Option<&ApprovalRow>,
) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)?;
    tx.execute(
        &format!(
            "INSERT INTO elevations ({ELEVATION_COLS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
        ),
        params![
            e.id,
            e.agent.as_str(),
            e.session.as_ref().map(SessionId::as_str),
            e.action,
            e.target,
            e.resource,
            e.reason_code,
            e.justification,
            i64::try_from(e.duration_ms).unwrap_or(i64::MAX),
            i64::from(e.single_use),
            e.status.as_str(),
            e.requested_by,
            e.created_at.as_millis(),
            e.expires_at.map(UnixTime::as_millis),
            e.decided_by,
            e.decided_at.map(UnixTime::as_millis),
            e.decision_reason,
            e.used_at.map(UnixTime::as_millis),
            e.approval_id,
        ],
    )
    .map_err(db_err)?;
    if let Some(a) = a {
        tx.execute(
            "INSERT INTO approvals (id, elevation, requested_by, involved, status, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                a.id,
                a.elevation,
                a.requested_by,
                serde_json::to_string(&a.involved).unwrap_or_else(|_| "[]".into()),
                a.status.as_str(),
                a.created_at.as_millis(),
                a.expires_at.as_millis(),
            ],
        )
        .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)
}

pub(super) fn use_elevation(
    conn: &mut Connection,
    id: &str,
    agent: &AgentId,
    session: Option<&SessionId>,
    now: UnixTime,
) -> Result<Option<ElevationRow>, StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let Some(e) = elevation(&tx, id)? else {
        return Ok(None);
    };
    let usable = e.status == ElevationStatus::Approved
        && e.agent == *agent
        && e.expires_at.is_some_and(|x| x > now)
        && (e.session.is_none() || e.session.as_ref() == session);
    if !usable {
        return Ok(None);
    }
    if e.single_use {
        tx.execute(
            "UPDATE elevations SET status = 'used', used_at = ?2 WHERE id = ?1 AND status = 'approved'",
            params![id, now.as_millis()],
        )
        .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)?;
    Ok(Some(e))
}

pub(super) fn expire(conn: &mut Connection, now: UnixTime) -> Result<Vec<String>, StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let ids: Vec<String> = {
        let mut st = tx
            .prepare("UPDATE elevations SET status = 'expired' WHERE status = 'approved' AND expires_at <= ?1 RETURNING id")
            .map_err(db_err)?;
        let rows = st
            .query_map(params![now.as_millis()], |r| r.get(0))
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    // A pending approval nobody decided in time lapses, and its elevation with it.
    tx.execute(
        "UPDATE elevations SET status = 'expired'
          WHERE status = 'pending' AND id IN (SELECT elevation FROM approvals WHERE status = 'pending' AND expires_at <= ?1)",
        params![now.as_millis()],
    )
    .map_err(db_err)?;
    tx.execute(
        "UPDATE approvals SET status = 'expired' WHERE status = 'pending' AND expires_at <= ?1",
        params![now.as_millis()],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(ids)
}

const APPROVAL_COLS: &str = "id, elevation, requested_by, involved, status, created_at, expires_at, decided_by, decided_at, why";

fn approval_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ApprovalRow, StoreError>> {
    let involved: String = r.get(3)?;
    let status: String = r.get(4)?;
    let created: i64 = r.get(5)?;
    let expires: i64 = r.get(6)?;
    Ok((|| -> Result<ApprovalRow, StoreError> {
        Ok(ApprovalRow {
            id: r.get(0).map_err(db_err)?,
            elevation: r.get(1).map_err(db_err)?,
            requested_by: r.get(2).map_err(db_err)?,
            involved: serde_json::from_str(&involved).map_err(|e| corrupt("approvals", e))?,
            status: ApprovalStatus::parse(&status).ok_or_else(|| corrupt("approvals", &status))?,
            created_at: UnixTime::from_millis(created),
            expires_at: UnixTime::from_millis(expires),
            decided_by: r.get(7).map_err(db_err)?,
            decided_at: opt_time(r.get(8).map_err(db_err)?),
            why: r.get(9).map_err(db_err)?,
        })
    })())
}

pub(super) fn approval(conn: &Connection, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {APPROVAL_COLS} FROM approvals WHERE id = ?1"
        ))
        .map_err(db_err)?;
    Ok(collect(&mut st, params![id], approval_from)?
        .into_iter()
        .next())
}

pub(super) fn approvals(
    conn: &Connection,
    pending_only: bool,
    limit: u32,
) -> Result<Vec<ApprovalRow>, StoreError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {APPROVAL_COLS} FROM approvals WHERE (?1 = 0 OR status = 'pending') ORDER BY created_at, id LIMIT ?2"
        ))
        .map_err(db_err)?;
    collect(
        &mut st,
        params![i64::from(pending_only), limit],
        approval_from,
    )
}

pub(super) fn decide_approval(
    conn: &mut Connection,
    id: &str,
    approve: bool,
    by: &str,
    why: &str,
    now: UnixTime,
) -> Result<Option<ElevationRow>, StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let status = if approve { "approved" } else { "denied" };
    let n = tx
        .execute(
            "UPDATE approvals SET status = ?2, decided_by = ?3, decided_at = ?4, why = ?5
              WHERE id = ?1 AND status = 'pending' AND expires_at > ?4",
            params![id, status, by, now.as_millis(), why],
        )
        .map_err(db_err)?;
    if n == 0 {
        return Ok(None);
    }
    let elevation_id: String = tx
        .query_row(
            "SELECT elevation FROM approvals WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    let n = if approve {
        tx.execute(
            "UPDATE elevations SET status = 'approved', expires_at = ?2 + duration_ms, decided_by = ?3,
                    decided_at = ?2, decision_reason = ?4
              WHERE id = ?1 AND status = 'pending'",
            params![elevation_id, now.as_millis(), by, why],
        )
    } else {
        tx.execute(
            "UPDATE elevations SET status = 'denied', decided_by = ?3, decided_at = ?2, decision_reason = ?4
              WHERE id = ?1 AND status = 'pending'",
            params![elevation_id, now.as_millis(), by, why],
        )
    }
    .map_err(db_err)?;
    if n == 0 {
        return Err(StoreError::Corrupt {
            table: "elevations",
            detail: format!("{elevation_id} not pending under a pending approval"),
        });
    }
    let e = elevation(&tx, &elevation_id)?;
    tx.commit().map_err(db_err)?;
    Ok(e)
}

const BG_COLS: &str =
    "id, agent, reason_code, justification, opened_by, opened_at, ends_at, closed_at, closed_by";

fn bg_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<BreakGlassRow, StoreError>> {
    let agent: String = r.get(1)?;
    let opened: i64 = r.get(5)?;
    let ends: i64 = r.get(6)?;
    Ok((|| -> Result<BreakGlassRow, StoreError> {
        Ok(BreakGlassRow {
            id: r.get(0).map_err(db_err)?,
            agent: AgentId::try_from(agent).map_err(|e| corrupt("breakglass", e))?,
            reason_code: r.get(2).map_err(db_err)?,
            justification: r.get(3).map_err(db_err)?,
            opened_by: r.get(4).map_err(db_err)?,
            opened_at: UnixTime::from_millis(opened),
            ends_at: UnixTime::from_millis(ends),
            closed_at: opt_time(r.get(7).map_err(db_err)?),
            closed_by: r.get(8).map_err(db_err)?,
        })
    })())
}

pub(super) fn open_breakglass(conn: &Connection, b: &BreakGlassRow) -> Result<(), StoreError> {
    conn.execute(
        &format!(
            "INSERT INTO breakglass ({BG_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL)"
        ),
        params![
            b.id,
            b.agent.as_str(),
            b.reason_code,
            b.justification,
            b.opened_by,
            b.opened_at.as_millis(),
            b.ends_at.as_millis()
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

pub(super) fn active_breakglass(
    conn: &Connection,
    agent: &AgentId,
    now: UnixTime,
) -> Result<Option<BreakGlassRow>, StoreError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {BG_COLS} FROM breakglass WHERE agent = ?1 AND closed_at IS NULL AND ends_at > ?2 ORDER BY ends_at DESC LIMIT 1"
        ))
        .map_err(db_err)?;
    Ok(
        collect(&mut st, params![agent.as_str(), now.as_millis()], bg_from)?
            .into_iter()
            .next(),
    )
}

pub(super) fn close_breakglass(
    conn: &mut Connection,
    id: &str,
    by: &str,
    now: UnixTime,
) -> Result<Option<BreakGlassRow>, StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let n = tx
        .execute(
            "UPDATE breakglass SET closed_at = ?2, closed_by = ?3 WHERE id = ?1 AND closed_at IS NULL AND ends_at > ?2",
            params![id, now.as_millis(), by],
        )
        .map_err(db_err)?;
    let row = if n == 0 {
        None
    } else {
        let mut st = tx
            .prepare(&format!("SELECT {BG_COLS} FROM breakglass WHERE id = ?1"))
            .map_err(db_err)?;
        collect(&mut st, params![id], bg_from)?.into_iter().next()
    };
    tx.commit().map_err(db_err)?;
    Ok(row)
}

pub(super) fn breakglass_list(
    conn: &Connection,
    limit: u32,
) -> Result<Vec<BreakGlassRow>, StoreError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {BG_COLS} FROM breakglass ORDER BY opened_at DESC, id LIMIT ?1"
        ))
        .map_err(db_err)?;
    collect(&mut st, params![limit], bg_from)
}
