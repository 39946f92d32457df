//! Elevations, approvals and break-glass at the broker (DESIGN.md §6): the HTTP API, and the
//! in-memory snapshot of what is in force that every decision reads. The store is the truth;
//! the snapshot is reloaded from it after every change this broker makes and on each upkeep
//! tick, and expiry is judged against the clock at use, so a stale snapshot can only be
//! stricter than the store, never looser: a use still goes through `Store::use_elevation`.

use firebreak_core::{AgentId, SessionId, UnixTime};
use firebreak_store::{BreakGlassRow, ElevationRow, ElevationStatus, Store, StoreError};

/// What is in force: approved elevations and open break-glass windows.
#[derive(Debug, Default)]
pub struct GrantSnapshot {
    elevations: Vec<ElevationRow>,
    break_glass: Vec<BreakGlassRow>,
}

fn applies(e: &ElevationRow, agent: &AgentId, session: Option<&SessionId>, now: UnixTime) -> bool {
    e.status == ElevationStatus::Approved
        && &e.agent == agent
        && e.expires_at.is_some_and(|x| x > now)
        && (e.session.is_none() || e.session.as_ref() == session)
}

impl GrantSnapshot {
    /// Loads it.
    ///
    /// # Errors
    /// The store's.
    pub async fn load(store: &dyn Store, now: UnixTime) -> Result<Self, StoreError> {
        let elevations = store
            .elevations(None, 100_000)
            .await?
            .into_iter()
            .filter(|e| {
                e.status == ElevationStatus::Approved && e.expires_at.is_some_and(|x| x > now)
            })
            .collect();
        let break_glass = store
            .breakglass_list(10_000)
            .await?
            .into_iter()
            .filter(|b| b.closed_at.is_none() && b.ends_at > now)
            .collect();
        Ok(Self {
            elevations,
            break_glass,
        })
    }

    /// `context.elevations` for a decision about `agent` (in `session`): `"<action>:<target>"`.
    pub fn elevation_strings(
        &self,
        agent: &AgentId,
        session: Option<&SessionId>,
        now: UnixTime,
    ) -> Vec<String> {
        let mut v: Vec<String> = self
            .elevations
            .iter()
            .filter(|e| applies(e, agent, session, now))
            .map(|e| format!("{}:{}", e.action, e.target))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The elevation `id` if it is usable now by `agent` in `session`.
    pub fn usable_elevation(
        &self,
        id: &str,
        agent: &AgentId,
        session: Option<&SessionId>,
        now: UnixTime,
    ) -> Option<ElevationRow> {
        self.elevations
            .iter()
            .find(|e| e.id == id && applies(e, agent, session, now))
            .cloned()
    }

    /// The open break-glass window of `agent`.
    pub fn break_glass(&self, agent: &AgentId, now: UnixTime) -> Option<BreakGlassRow> {
        self.break_glass
            .iter()
            .find(|b| &b.agent == agent && b.closed_at.is_none() && b.ends_at > now)
            .cloned()
    }

    /// Windows that were open in this snapshot but have ended by `now` (for the close alert).
    pub fn ended(&self, now: UnixTime) -> Vec<BreakGlassRow> {
        self.break_glass
            .iter()
            .filter(|b| b.ends_at <= now)
            .cloned()
            .collect()
    }
}
