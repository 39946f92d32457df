//! Elevations, approvals and break-glass windows in PostgreSQL. Every status change is a
//! compare-and-set on the current status (`UPDATE … WHERE status = …`): under READ COMMITTED a
//! second updater waits for the first, re-checks the condition on the new row and matches
//! nothing, so two approvers or two replicas cannot both win.

use firebreak_core::{AgentId, SessionId, UnixTime};
use tokio_postgres::{Client, GenericClient, Row};

use super::{corrupt, db_err, opt_time};
use crate::{
    ApprovalRow, ApprovalStatus, BreakGlassRow, ElevationRow, ElevationStatus, StoreError,
};

const ELEVATION_COLS: &str = "id, agent, session, action, target, resource, reason_code, justification, \
     duration_ms, single_use, status, requested_by, created_at, expires_at, decided_by, decided_at, \
     decision_reason, used_at, approval_id";

fn elevation_from(r: &Row) -> Result<ElevationRow, StoreError> {
    let t = "elevations";
    let c = |e: tokio_postgres::Error| corrupt(t, e);
    let agent: String = r.try_get(1).map_err(c)?;
    let session: Option<String> = r.try_get(2).map_err(c)?;
    let duration: i64 = r.try_get(8).map_err(c)?;
    let status: String = r.try_get(10).map_err(c)?;
    Ok(ElevationRow {
        id: r.try_get(0).map_err(c)?,
        agent: AgentId::try_from(agent).map_err(|e| corrupt(t, e))?,
        session: session
            .map(SessionId::try_from)
            .transpose()
            .map_err(|e| corrupt(t, e))?,
        action: r.try_get(3).map_err(c)?,
        target: r.try_get(4).map_err(c)?,
        resource: r.try_get(5).map_err(c)?,
        reason_code: r.try_get(6).map_err(c)?,
        justification: r.try_get(7).map_err(c)?,
        duration_ms: u64::try_from(duration).map_err(|e| corrupt(t, e))?,
        single_use: r.try_get(9).map_err(c)?,
        status: ElevationStatus::parse(&status).ok_or_else(|| corrupt(t, &status))?,
        requested_by: r.try_get(11).map_err(c)?,
        created_at: UnixTime::from_millis(r.try_get(12).map_err(c)?),
        expires_at: opt_time(r.try_get(13).map_err(c)?),
        decided_by: r.try_get(14).map_err(c)?,
        decided_at: opt_time(r.try_get(15).map_err(c)?),
        decision_reason: r.try_get(16).map_err(c)?,
        used_at: opt_time(r.try_get(17).map_err(c)?),
        approval_id: r.try_get(18).map_err(c)?,
    })
}

pub(super) async fn elevation<C: GenericClient + Sync>(
    c: &C,
    id: &str,
    lock: bool,
) -> Result<Option<ElevationRow>, StoreError> {
    let sql = format!(
        "SELECT {ELEVATION_COLS} FROM elevations WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    c.query_opt(&sql, &[&id])
        .await
        .map_err(db_err)?
        .as_ref()
        .map(elevation_from)
        .transpose()
}

pub(super) async fn elevations(
    c: &Client,
    agent: Option<&AgentId>,
    limit: u32,
) -> Result<Vec<ElevationRow>, StoreError> {
    c.query(
        &format!(
            "SELECT {ELEVATION_COLS} FROM elevations WHERE ($1::TEXT IS NULL OR agent = $1)
              ORDER BY created_at DESC, id LIMIT $2"
        ),
        &[&agent.map(AgentId::as_str), &i64::from(limit)],
    )
    .await
    .map_err(db_err)?
    .iter()
    .map(elevation_from)
    .collect()
}

pub(super) async fn active_elevations(
    c: &Client,
    agent: &AgentId,
    session: Option<&SessionId>,
    now: UnixTime,
) -> Result<Vec<ElevationRow>, StoreError> {
    c.query(
        &format!(
            "SELECT {ELEVATION_COLS} FROM elevations
              WHERE agent = $1 AND status = 'approved' AND expires_at > $2
                AND (session IS NULL OR session = $3)
              ORDER BY created_at"
        ),
        &[
            &agent.as_str(),
            &now.as_millis(),
            &session.map(SessionId::as_str),
        ],
    )
    .await
    .map_err(db_err)?
    .iter()
    .map(elevation_from)
    .collect()
}

pub(super) async fn insert_elevation(
    c: &mut Client,
    e: &ElevationRow,
    a: Option<&ApprovalRow>,
) -> Result<(), StoreError> {
    let tx = c.transaction().await.map_err(db_err)?;
    tx.execute(
        &format!(
            "INSERT INTO elevations ({ELEVATION_COLS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        ),
        &[
            &e.id,
            &e.agent.as_str(),
            &e.session.as_ref().map(SessionId::as_str),
            &e.action,
            &e.target,
            &e.resource,
            &e.reason_code,
            &e.justification,
            &i64::try_from(e.duration_ms).unwrap_or(i64::MAX),
            &e.single_use,
            &e.status.as_str(),
            &e.requested_by,
            &e.created_at.as_millis(),
            &e.expires_at.map(UnixTime::as_millis),
            &e.decided_by,
            &e.decided_at.map(UnixTime::as_millis),
            &e.decision_reason,
            &e.used_at.map(UnixTime::as_millis),
            &e.approval_id,
        ],
    )
    .await
    .map_err(db_err)?;
    if let Some(a) = a {
        tx.execute(
            "INSERT INTO approvals (id, elevation, requested_by, involved, status, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &a.id,
                &a.elevation,
                &a.requested_by,
                &serde_json::to_string(&a.involved).unwrap_or_else(|_| "[]".into()),
                &a.status.as_str(),
                &a.created_at.as_millis(),
                &a.expires_at.as_millis(),
            ],
        )
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

pub(super) async fn use_elevation(
    c: &mut Client,
    id: &str,
    agent: &AgentId,
    session: Option<&SessionId>,
    now: UnixTime,
) -> Result<Option<ElevationRow>, StoreError> {
    let tx = c.transaction().await.map_err(db_err)?;
    // The row is locked before it is checked: two replicas using one single-use elevation at
    // once see it one after the other, and the second finds it `used`.
    let Some(e) = elevation(&tx, id, true).await? else {
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
            "UPDATE elevations SET status = 'used', used_at = $2 WHERE id = $1 AND status = 'approved'",
            &[&id, &now.as_millis()],
        )
        .await
        .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(Some(e))
}

pub(super) async fn expire(c: &mut Client, now: UnixTime) -> Result<Vec<String>, StoreError> {
    let tx = c.transaction().await.map_err(db_err)?;
    let ids = tx
        .query(
            "UPDATE elevations SET status = 'expired' WHERE status = 'approved' AND expires_at <= $1 RETURNING id",
            &[&now.as_millis()],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| r.try_get(0).map_err(|e| corrupt("elevations", e)))
        .collect::<Result<Vec<String>, _>>()?;
    // A pending approval nobody decided in time lapses, and its elevation with it.
    tx.execute(
        "UPDATE elevations SET status = 'expired'
          WHERE status = 'pending' AND id IN (SELECT elevation FROM approvals WHERE status = 'pending' AND expires_at <= $1)",
        &[&now.as_millis()],
    )
    .await
    .map_err(db_err)?;
    tx.execute(
        "UPDATE approvals SET status = 'expired' WHERE status = 'pending' AND expires_at <= $1",
        &[&now.as_millis()],
    )
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(ids)
}

const APPROVAL_COLS: &str = "id, elevation, requested_by, involved, status, created_at, expires_at, decided_by, decided_at, why";

fn approval_from(r: &Row) -> Result<ApprovalRow, StoreError> {
    let t = "approvals";
    let c = |e: tokio_postgres::Error| corrupt(t, e);
    let involved: String = r.try_get(3).map_err(c)?;
    let status: String = r.try_get(4).map_err(c)?;
    Ok(ApprovalRow {
        id: r.try_get(0).map_err(c)?,
        elevation: r.try_get(1).map_err(c)?,
        requested_by: r.try_get(2).map_err(c)?,
        involved: serde_json::from_str(&involved).map_err(|e| corrupt(t, e))?,
        status: ApprovalStatus::parse(&status).ok_or_else(|| corrupt(t, &status))?,
        created_at: UnixTime::from_millis(r.try_get(5).map_err(c)?),
        expires_at: UnixTime::from_millis(r.try_get(6).map_err(c)?),
        decided_by: r.try_get(7).map_err(c)?,
        decided_at: opt_time(r.try_get(8).map_err(c)?),
        why: r.try_get(9).map_err(c)?,
    })
}

pub(super) async fn approval(c: &Client, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
    c.query_opt(
        &format!("SELECT {APPROVAL_COLS} FROM approvals WHERE id = $1"),
        &[&id],
    )
    .await
    .map_err(db_err)?
    .as_ref()
    .map(approval_from)
    .transpose()
}

pub(super) async fn approvals(
    c: &Client,
    pending_only: bool,
    limit: u32,
) -> Result<Vec<ApprovalRow>, StoreError> {
    c.query(
        &format!(
            "SELECT {APPROVAL_COLS} FROM approvals WHERE (NOT $1 OR status = 'pending')
              ORDER BY created_at, id LIMIT $2"
        ),
        &[&pending_only, &i64::from(limit)],
    )
    .await
    .map_err(db_err)?
    .iter()
    .map(approval_from)
    .collect()
}

pub(super) async fn decide_approval(
    c: &mut Client,
    id: &str,
    approve: bool,
    by: &str,
    why: &str,
    now: UnixTime,
) -> Result<Option<ElevationRow>, StoreError> {
    let tx = c.transaction().await.map_err(db_err)?;
    let status = if approve { "approved" } else { "denied" };
    // The compare-and-set: only a pending, unexpired approval moves, and RETURNING names its
    // elevation from the same row version.
    let row = tx
        .query_opt(
            "UPDATE approvals SET status = $2, decided_by = $3, decided_at = $4, why = $5
              WHERE id = $1 AND status = 'pending' AND expires_at > $4
              RETURNING elevation",
            &[&id, &status, &by, &now.as_millis(), &why],
        )
        .await
        .map_err(db_err)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let elevation_id: String = row.try_get(0).map_err(|e| corrupt("approvals", e))?;
    let n = if approve {
        tx.execute(
            "UPDATE elevations SET status = 'approved', expires_at = $2 + duration_ms, decided_by = $3,
                    decided_at = $2, decision_reason = $4
              WHERE id = $1 AND status = 'pending'",
            &[&elevation_id, &now.as_millis(), &by, &why],
        )
        .await
    } else {
        tx.execute(
            "UPDATE elevations SET status = 'denied', decided_by = $3, decided_at = $2, decision_reason = $4
              WHERE id = $1 AND status = 'pending'",
            &[&elevation_id, &now.as_millis(), &by, &why],
        )
        .await
    }
    .map_err(db_err)?;
    if n == 0 {
        return Err(StoreError::Corrupt {
            table: "elevations",
            detail: format!("{elevation_id} not pending under a pending approval"),
        });
    }
    let e = elevation(&tx, &elevation_id, false).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(e)
}

const BG_COLS: &str =
    "id, agent, reason_code, justification, opened_by, opened_at, ends_at, closed_at, closed_by";

fn bg_from(r: &Row) -> Result<BreakGlassRow, StoreError> {
    let t = "breakglass";
    let c = |e: tokio_postgres::Error| corrupt(t, e);
    let agent: String = r.try_get(1).map_err(c)?;
    Ok(BreakGlassRow {
        id: r.try_get(0).map_err(c)?,
        agent: AgentId::try_from(agent).map_err(|e| corrupt(t, e))?,
        reason_code: r.try_get(2).map_err(c)?,
        justification: r.try_get(3).map_err(c)?,
        opened_by: r.try_get(4).map_err(c)?,
        opened_at: UnixTime::from_millis(r.try_get(5).map_err(c)?),
        ends_at: UnixTime::from_millis(r.try_get(6).map_err(c)?),
        closed_at: opt_time(r.try_get(7).map_err(c)?),
        closed_by: r.try_get(8).map_err(c)?,
    })
}

pub(super) async fn open_breakglass(c: &Client, b: &BreakGlassRow) -> Result<(), StoreError> {
    c.execute(
        &format!(
            "INSERT INTO breakglass ({BG_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)"
        ),
        &[
            &b.id,
            &b.agent.as_str(),
            &b.reason_code,
            &b.justification,
            &b.opened_by,
            &b.opened_at.as_millis(),
            &b.ends_at.as_millis(),
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(super) async fn active_breakglass(
    c: &Client,
    agent: &AgentId,
    now: UnixTime,
) -> Result<Option<BreakGlassRow>, StoreError> {
    c.query_opt(
        &format!(
            "SELECT {BG_COLS} FROM breakglass WHERE agent = $1 AND closed_at IS NULL AND ends_at > $2
              ORDER BY ends_at DESC LIMIT 1"
        ),
        &[&agent.as_str(), &now.as_millis()],
    )
    .await
    .map_err(db_err)?
    .as_ref()
    .map(bg_from)
    .transpose()
}

pub(super) async fn close_breakglass(
    c: &Client,
    id: &str,
    by: &str,
    now: UnixTime,
) -> Result<Option<BreakGlassRow>, StoreError> {
    // One statement: the compare-and-set and the row it changed.
    c.query_opt(
        &format!(
            "UPDATE breakglass SET closed_at = $2, closed_by = $3
              WHERE id = $1 AND closed_at IS NULL AND ends_at > $2 RETURNING {BG_COLS}"
        ),
        &[&id, &now.as_millis(), &by],
    )
    .await
    .map_err(db_err)?
    .as_ref()
    .map(bg_from)
    .transpose()
}

pub(super) async fn breakglass_list(
    c: &Client,
    limit: u32,
) -> Result<Vec<BreakGlassRow>, StoreError> {
    c.query(
        &format!("SELECT {BG_COLS} FROM breakglass ORDER BY opened_at DESC, id LIMIT $1"),
        &[&i64::from(limit)],
    )
    .await
    .map_err(db_err)?
    .iter()
    .map(bg_from)
    .collect()
}
