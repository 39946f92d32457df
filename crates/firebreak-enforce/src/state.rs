//! What the event stream tells an enforcement point, kept in memory: revoked sessions, agents,
//! jtis and keys (each until the latest `exp` it covers), approved elevations and open
//! break-glass windows, the last seq applied and when the last heartbeat arrived.
//!
//! INVARIANT (fail-closed-when-stale): [`FeedState::fresh`] is false until a snapshot has been
//! applied, and again whenever no heartbeat arrived for `stale_after`; callers deny everything
//! while it is false.

use std::collections::HashMap;

use firebreak_core::UnixTime;
use serde_json::{Map, Value};

/// An approved elevation as the stream announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveElevation {
    /// Elevation id.
    pub id: String,
    /// The agent it is for.
    pub agent: String,
    /// The session it is bound to, if any.
    pub session: Option<String>,
    /// The Cedar action.
    pub action: String,
    /// The target id.
    pub target: String,
    /// The resource it names (e.g. `target/tool`), if any.
    pub resource: Option<String>,
    /// Whether one use consumes it.
    pub single_use: bool,
    /// Its end (Unix seconds).
    pub until: i64,
}

/// The feed's state.
#[derive(Debug, Default)]
pub struct FeedState {
    sessions: HashMap<String, i64>,
    agents: HashMap<String, i64>,
    jtis: HashMap<String, i64>,
    keys: HashMap<String, i64>,
    elevations: HashMap<String, ActiveElevation>,
    /// Elevation ids announced as pending (for held calls waiting on an approval).
    decided: HashMap<String, String>,
    break_glass: HashMap<String, (String, i64)>,
    /// Last seq applied (the `Last-Event-ID` to resume from).
    pub last_seq: u64,
    /// Local time of the last heartbeat or snapshot; `None` before the first snapshot.
    pub last_beat: Option<UnixTime>,
    /// The broker's policy version as last announced.
    pub policy_version: Option<String>,
}

fn num(d: &Map<String, Value>, k: &str) -> Option<i64> {
    d.get(k).and_then(Value::as_i64)
}

fn text(d: &Map<String, Value>, k: &str) -> Option<String> {
    d.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// Why an identity is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The session (or one of its ancestors: the broker emits an event per descendant).
    Session,
    /// The agent.
    Agent,
    /// The token.
    Jti,
    /// The signing key.
    Key,
}

impl FeedState {
    /// Whether decisions may be made: a snapshot was applied and a heartbeat arrived within
    /// `stale_after_ms` of `now`.
    pub fn fresh(&self, now: UnixTime, stale_after_ms: i64) -> bool {
        self.last_beat
            .is_some_and(|t| now.as_millis().saturating_sub(t.as_millis()) <= stale_after_ms)
    }

    /// Replaces everything with a snapshot (DESIGN.md §9).
    pub fn apply_snapshot(&mut self, data: &Map<String, Value>, now: UnixTime) {
        let last_beat = self.last_beat;
        *self = FeedState::default();
        self.last_beat = last_beat;
        if let Some(events) = data.get("events").and_then(Value::as_array) {
            for e in events {
                let (Some(kind), Some(d)) = (
                    e.get("event").and_then(Value::as_str),
                    e.get("data").and_then(Value::as_object),
                ) else {
                    continue;
                };
                self.apply(kind, d);
            }
        }
        self.last_seq = data
            .get("head_seq")
            .and_then(Value::as_u64)
            .unwrap_or(self.last_seq);
        self.policy_version = text(data, "policy_version");
        self.last_beat = Some(now);
    }

    /// Applies one event; unknown kinds and malformed members are ignored (a newer broker
    /// may send more than this build knows; what it does not understand it cannot enforce
    /// more loosely than before).
    pub fn apply(&mut self, kind: &str, d: &Map<String, Value>) {
        match kind {
            "revoke" => {
                let (Some(k), Some(id)) = (text(d, "kind"), text(d, "id")) else {
                    return;
                };
                let until = num(d, "until").unwrap_or(i64::MAX);
                let map = match k.as_str() {
                    "session" => &mut self.sessions,
                    "agent" => &mut self.agents,
                    "jti" => &mut self.jtis,
                    "key" => &mut self.keys,
                    _ => return,
                };
                let slot = map.entry(id).or_insert(until);
                *slot = (*slot).max(until);
            }
            "elevation" => {
                let Some(id) = text(d, "id") else { return };
                let status = text(d, "status").unwrap_or_default();
                if status == "approved" {
                    let (Some(agent), Some(action), Some(target), Some(until)) = (
                        text(d, "agent"),
                        text(d, "action"),
                        text(d, "target"),
                        num(d, "until"),
                    ) else {
                        return;
                    };
                    self.elevations.insert(
                        id.clone(),
                        ActiveElevation {
                            id: id.clone(),
                            agent,
                            session: text(d, "session"),
                            action,
                            target,
                            resource: text(d, "resource"),
                            single_use: d
                                .get("single_use")
                                .and_then(Value::as_bool)
                                .unwrap_or(true),
                            until,
                        },
                    );
                } else {
                    self.elevations.remove(&id);
                }
                self.decided.insert(id, status);
            }
            "breakglass" => {
                let (Some(id), Some(agent)) = (text(d, "id"), text(d, "agent")) else {
                    return;
                };
                let open = d.get("open").and_then(Value::as_bool).unwrap_or(false);
                match (open, num(d, "until")) {
                    (true, Some(until)) => {
                        self.break_glass.insert(id, (agent, until));
                    }
                    _ => {
                        self.break_glass.remove(&id);
                    }
                }
            }
            "policy" => self.policy_version = text(d, "version"),
            _ => {}
        }
    }

    /// Whether the identity is revoked at `now_s` (Unix seconds).
    pub fn revoked(
        &self,
        session: Option<&str>,
        agent: &str,
        jti: &str,
        kid: &str,
        now_s: i64,
    ) -> Option<Revoked> {
        let hit = |m: &HashMap<String, i64>, k: &str| m.get(k).is_some_and(|u| *u >= now_s);
        if session.is_some_and(|s| hit(&self.sessions, s)) {
            Some(Revoked::Session)
        } else if hit(&self.agents, agent) {
            Some(Revoked::Agent)
        } else if hit(&self.jtis, jti) {
            Some(Revoked::Jti)
        } else if hit(&self.keys, kid) {
            Some(Revoked::Key)
        } else {
            None
        }
    }

    /// `context.elevations` for `agent` in `session` at `now_s`: `"<action>:<target>"`.
    pub fn elevation_strings(&self, agent: &str, session: Option<&str>, now_s: i64) -> Vec<String> {
        let mut v: Vec<String> = self
            .usable(agent, session, now_s)
            .map(|e| format!("{}:{}", e.action, e.target))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn usable<'a>(
        &'a self,
        agent: &'a str,
        session: Option<&'a str>,
        now_s: i64,
    ) -> impl Iterator<Item = &'a ActiveElevation> + 'a {
        self.elevations.values().filter(move |e| {
            e.agent == agent
                && e.until > now_s
                && (e.session.is_none() || e.session.as_deref() == session)
        })
    }

    /// The approved elevation with this id, if it is usable now by `agent` in `session`.
    pub fn elevation(
        &self,
        id: &str,
        agent: &str,
        session: Option<&str>,
        now_s: i64,
    ) -> Option<ActiveElevation> {
        self.usable(agent, session, now_s)
            .find(|e| e.id == id)
            .cloned()
    }

    /// The last status announced for an elevation id.
    pub fn elevation_status(&self, id: &str) -> Option<&str> {
        self.decided.get(id).map(String::as_str)
    }

    /// Whether a break-glass window is open for `agent` at `now_s`.
    pub fn break_glass(&self, agent: &str, now_s: i64) -> bool {
        self.break_glass
            .values()
            .any(|(a, until)| a == agent && *until > now_s)
    }

    /// Forgets entries past their `until` (called now and then; lookups check `until` anyway).
    pub fn prune(&mut self, now_s: i64) {
        for m in [
            &mut self.sessions,
            &mut self.agents,
            &mut self.jtis,
            &mut self.keys,
        ] {
            m.retain(|_, u| *u >= now_s);
        }
        self.elevations.retain(|_, e| e.until > now_s);
        self.break_glass.retain(|_, (_, u)| *u > now_s);
        if self.decided.len() > 100_000 {
            self.decided.clear();
        }
    }

    /// Entries held, for metrics.
    pub fn revoked_len(&self) -> usize {
        self.sessions.len() + self.agents.len() + self.jtis.len() + self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn stale_until_first_snapshot_and_after_silence() {
        let mut s = FeedState::default();
        let t = UnixTime::from_secs(1_000);
        assert!(!s.fresh(t, 5_000), "no snapshot yet: fail closed");
        s.apply_snapshot(&obj(json!({"head_seq": 3, "events": []})), t);
        assert!(s.fresh(t.plus_secs(5), 5_000));
        assert!(!s.fresh(t.plus_secs(6), 5_000));
        assert_eq!(s.last_seq, 3);
    }

    #[test]
    fn revocations_hold_until_their_end() {
        let mut s = FeedState::default();
        s.apply(
            "revoke",
            &obj(json!({"kind": "session", "id": "s1", "until": 100, "at": 1})),
        );
        s.apply(
            "revoke",
            &obj(json!({"kind": "agent", "id": "bot", "until": 50, "at": 1})),
        );
        assert_eq!(
            s.revoked(Some("s1"), "x", "j", "k", 100),
            Some(Revoked::Session)
        );
        assert_eq!(s.revoked(Some("s1"), "x", "j", "k", 101), None);
        assert_eq!(s.revoked(None, "bot", "j", "k", 10), Some(Revoked::Agent));
        assert_eq!(s.revoked(Some("s2"), "other", "j", "k", 10), None);
        s.prune(60);
        assert_eq!(s.revoked_len(), 1);
    }

    #[test]
    fn elevations_and_break_glass_follow_their_events() {
        let mut s = FeedState::default();
        let el = |status: &str| {
            obj(
                json!({"id": "e1", "agent": "bot", "session": null, "action": "call_tool",
                       "target": "tools", "status": status, "until": 200, "single_use": true}),
            )
        };
        s.apply("elevation", &el("pending"));
        assert!(s.elevation_strings("bot", None, 100).is_empty());
        s.apply("elevation", &el("approved"));
        assert_eq!(
            s.elevation_strings("bot", Some("s"), 100),
            vec!["call_tool:tools"]
        );
        assert!(
            s.elevation_strings("bot", None, 200).is_empty(),
            "ends at until"
        );
        s.apply("elevation", &el("used"));
        assert!(s.elevation_strings("bot", None, 100).is_empty());
        assert_eq!(s.elevation_status("e1"), Some("used"));
        s.apply(
            "breakglass",
            &obj(json!({"id": "b1", "agent": "bot", "open": true, "until": 300})),
        );
        assert!(s.break_glass("bot", 299));
        assert!(!s.break_glass("bot", 300));
        s.apply(
            "breakglass",
            &obj(json!({"id": "b1", "agent": "bot", "open": false, "until": 300})),
        );
        assert!(!s.break_glass("bot", 100));
    }

    #[test]
    fn a_snapshot_replaces_state() {
        let mut s = FeedState::default();
        s.apply(
            "revoke",
            &obj(json!({"kind": "jti", "id": "j1", "until": 100})),
        );
        let snap = obj(
            json!({"head_seq": 9, "policy_version": "sha256:x", "events": [
                {"event": "revoke", "data": {"kind": "jti", "id": "j2", "until": 100}}
            ]}),
        );
        s.apply_snapshot(&snap, UnixTime::from_secs(1));
        assert_eq!(s.revoked(None, "a", "j1", "k", 1), None);
        assert_eq!(s.revoked(None, "a", "j2", "k", 1), Some(Revoked::Jti));
        assert_eq!(s.policy_version.as_deref(), Some("sha256:x"));
    }
}
