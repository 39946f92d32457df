//! Rows as the broker reads and writes them.

use std::sync::Arc;

use firebreak_audit::AuditKey;
use firebreak_core::{AgentId, Clock, Jti, SessionId, TargetId, UnixTime};
use serde::Serialize;

/// The broker's own audit chain id (DESIGN.md §7).
pub const BROKER_CHAIN: &str = "broker";

/// An audit record before the store gives it its place in the chain (`seq`, `prev_hash`).
#[derive(Debug, Clone)]
pub struct AuditDraft {
    /// Kind-specific fields: `kind`, `agent`, `session`, `decision`, `reasons`, `jti`, …
    /// Never a token or secret (DESIGN.md §7).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The record's time.
    pub time: UnixTime,
    /// The session it concerns, indexed for `audit replay`.
    pub session: Option<SessionId>,
}

/// Where a record landed: durable once this is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReceipt {
    /// Its sequence number in the store's own chain.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// How the store keeps the audit chain.
pub struct AuditSettings {
    /// The chain this store's writer appends to, records and checkpoints alike: [`BROKER_CHAIN`]
    /// for a broker, the client id for a standalone gateway (DESIGN.md §8). Other chains in the
    /// same store arrive only through `ingest_audit`.
    pub chain: String,
    /// The dedicated checkpoint key (never a token key).
    pub key: AuditKey,
    /// A signed checkpoint after this many records …
    pub checkpoint_every: u64,
    /// … or after this many milliseconds with new records, whichever comes first.
    pub checkpoint_interval_ms: u64,
    /// Time for checkpoints.
    pub clock: Arc<dyn Clock>,
    /// Writes waiting for the writer beyond this are refused at once (no pile-up).
    pub queue: usize,
}

impl std::fmt::Debug for AuditSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSettings")
            .field("chain", &self.chain)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("checkpoint_interval_ms", &self.checkpoint_interval_ms)
            .finish_non_exhaustive()
    }
}

/// A record of another chain (a standalone gateway's), already verified by the caller.
#[derive(Debug, Clone)]
pub struct IngestRecord {
    /// Its seq.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
    /// Its RFC 9162 leaf hash.
    pub leaf_hash: [u8; 32],
    /// The record's JSON text, as received.
    pub json: String,
    /// The session it concerns.
    pub session: Option<String>,
    /// Its time (Unix ms), for ordering replays.
    pub time_ms: i64,
}

/// Status of an elevation (DESIGN.md §6): pending → approved | denied → expired | used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ElevationStatus {
    /// Waiting for an approver.
    Pending,
    /// Granted; active until `expires_at`.
    Approved,
    /// Refused.
    Denied,
    /// Past its end.
    Expired,
    /// A single-use elevation that was used.
    Used,
}

impl ElevationStatus {
    /// Stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Used => "used",
        }
    }
    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "approved" => Some(Self::Approved),
            "denied" => Some(Self::Denied),
            "expired" => Some(Self::Expired),
            "used" => Some(Self::Used),
            _ => None,
        }
    }
}

/// A just-in-time elevation: bound to (agent, optional session, action, target[, resource]).
#[derive(Debug, Clone, Serialize)]
pub struct ElevationRow {
    /// Id (`el_…`).
    pub id: String,
    /// The agent it elevates.
    pub agent: AgentId,
    /// The session it is bound to, if any.
    pub session: Option<SessionId>,
    /// The action (`exchange`, `call_tool`, …).
    pub action: String,
    /// The target id.
    pub target: String,
    /// For an approval of a held action: exactly that resource (tool name, path, host).
    pub resource: Option<String>,
    /// From `[elevation] reason_codes`.
    pub reason_code: String,
    /// Free text from the requester.
    pub justification: String,
    /// How long it lasts once approved.
    pub duration_ms: u64,
    /// Consumed by its first use.
    pub single_use: bool,
    /// Current status (as stored; an approved row past `expires_at` is effectively expired).
    pub status: ElevationStatus,
    /// Who asked (`agent:<id>` or `admin`).
    pub requested_by: String,
    /// When it was asked for.
    pub created_at: UnixTime,
    /// When it ends (set on approval).
    pub expires_at: Option<UnixTime>,
    /// Who decided (`policy`, `approver:<id>`).
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<UnixTime>,
    /// Why (reason codes or the approver's note).
    pub decision_reason: Option<String>,
    /// When a single-use elevation was used.
    pub used_at: Option<UnixTime>,
    /// Its approval, when one was queued.
    pub approval_id: Option<String>,
}

/// Status of an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Waiting.
    Pending,
    /// Approved.
    Approved,
    /// Denied.
    Denied,
    /// Nobody decided in time.
    Expired,
}

impl ApprovalStatus {
    /// Stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
        }
    }
    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "approved" => Some(Self::Approved),
            "denied" => Some(Self::Denied),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// One entry of the approval queue, always for an elevation.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalRow {
    /// Id (`ap_…`).
    pub id: String,
    /// The elevation it decides.
    pub elevation: String,
    /// Who asked.
    pub requested_by: String,
    /// Every identity involved (requester, the agent's owner, the `act` chain): none of them
    /// may approve.
    pub involved: Vec<String>,
    /// Status.
    pub status: ApprovalStatus,
    /// When queued.
    pub created_at: UnixTime,
    /// When it lapses undecided.
    pub expires_at: UnixTime,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<UnixTime>,
    /// The approver's note.
    pub why: Option<String>,
}

/// A break-glass window for one agent.
#[derive(Debug, Clone, Serialize)]
pub struct BreakGlassRow {
    /// Id (`bg_…`).
    pub id: String,
    /// The agent.
    pub agent: AgentId,
    /// From the configured reason codes.
    pub reason_code: String,
    /// Free text.
    pub justification: String,
    /// The approver who opened it.
    pub opened_by: String,
    /// When.
    pub opened_at: UnixTime,
    /// When it ends by itself.
    pub ends_at: UnixTime,
    /// When it was closed early, if it was.
    pub closed_at: Option<UnixTime>,
    /// By whom.
    pub closed_by: Option<String>,
}

/// One line of an audit export: a record or a checkpoint, as stored (JCS JSON text).
#[derive(Debug, Clone)]
pub struct AuditLine {
    /// The chain.
    pub chain: String,
    /// For a record its seq; for a checkpoint its tree size.
    pub seq: u64,
    /// Whether this is a checkpoint.
    pub checkpoint: bool,
    /// The JSON text.
    pub json: String,
}

/// The replay guard of one subject token: unique per (issuer, key) until `expires_at`.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    /// The issuer id (config `[[issuer]] id`).
    pub issuer: String,
    /// The token's `jti`, or the SHA-256 of the token when the issuer sets none.
    pub key: String,
    /// When the row may be forgotten: the token's `exp` plus leeway.
    pub expires_at: UnixTime,
}

/// Everything one successful exchange records.
#[derive(Debug, Clone)]
pub struct NewExchange {
    /// Replay guard for external subject tokens; `None` for a Firebreak parent token.
    pub replay: Option<ReplayGuard>,
    /// The session opened by this exchange.
    pub session: SessionRow,
    /// The token issued in it.
    pub token: TokenRow,
}

/// One session: opened by an exchange, with its lineage.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    /// Session id (`sid`).
    pub id: SessionId,
    /// The agent it belongs to.
    pub agent: AgentId,
    /// The session whose token was the subject token, for a child exchange.
    pub parent: Option<SessionId>,
    /// 0 for a root session, parent's depth + 1 for a child.
    pub depth: u32,
    /// The target the session's token is for.
    pub target: TargetId,
    /// That target's audience.
    pub audience: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The actor chain (`act`) as JSON, `null` when none.
    pub act: serde_json::Value,
    /// The subject token's issuer id (`firebreak` for a child exchange).
    pub subject_issuer: String,
    /// When the session started.
    pub created_at: UnixTime,
    /// When its token expires.
    pub expires_at: UnixTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixTime>,
}

/// One issued access token (its claims live in the JWT; this row is what revocation and
/// introspection consult).
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    /// The token's `jti`.
    pub jti: Jti,
    /// Its session.
    pub session: SessionId,
    /// Its agent (`sub`).
    pub agent: AgentId,
    /// Its audience.
    pub audience: String,
    /// The key that signed it.
    pub kid: String,
    /// `iat`.
    pub issued_at: UnixTime,
    /// `exp`.
    pub expires_at: UnixTime,
    /// When it was revoked directly, if it was.
    pub revoked_at: Option<UnixTime>,
}

/// Effective status of a token or session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    /// Not revoked by any path.
    Live,
    /// Revoked: the token, its session, an ancestor session or its agent.
    Revoked,
    /// No such row.
    Unknown,
}

/// Lifecycle of a signing key: published before it signs, published after it stops signing
/// until every token it signed has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published in JWKS, not yet signing.
    Next,
    /// Signs new tokens (exactly one key at a time).
    Active,
    /// No longer signs; still published until `retire_after`.
    Retiring,
    /// Unpublished; kept for the record.
    Retired,
}

impl KeyState {
    /// The stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Active => "active",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "next" => Some(Self::Next),
            "active" => Some(Self::Active),
            "retiring" => Some(Self::Retiring),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }
}

/// A signing key as stored. `secret` is the PKCS#8 document, sealed with the key-encryption key
/// when one is configured (`sealed`), else plain inside a 0600 database file.
#[derive(Clone, Serialize)]
pub struct KeyRow {
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// `EdDSA` or `ES256`.
    pub alg: String,
    /// Lifecycle state.
    pub state: KeyState,
    /// PKCS#8, possibly sealed. Never serialised.
    #[serde(skip)]
    pub secret: Vec<u8>,
    /// Whether `secret` is sealed.
    pub sealed: bool,
    /// The public JWK, as JSON text.
    pub public_jwk: String,
    /// Creation time.
    pub created_at: UnixTime,
    /// When it became active.
    pub activated_at: Option<UnixTime>,
    /// When it stopped signing.
    pub retiring_at: Option<UnixTime>,
    /// When a retiring key may be unpublished.
    pub retire_after: Option<UnixTime>,
}

impl std::fmt::Debug for KeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRow")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("state", &self.state)
            .field("secret", &"[redacted]")
            .field("sealed", &self.sealed)
            .finish_non_exhaustive()
    }
}

/// The kinds of event on the store-wide stream (`/v1/events`, DESIGN.md §9). `heartbeat` and
/// `snapshot` are made by the stream itself and never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A session, agent, token or key was revoked.
    Revoke,
    /// An elevation changed state (approved, denied, used, expired).
    Elevation,
    /// A break-glass window opened or closed.
    BreakGlass,
    /// A new policy version is in force.
    Policy,
}

impl EventKind {
    /// The SSE `event:` name and the stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Revoke => "revoke",
            EventKind::Elevation => "elevation",
            EventKind::BreakGlass => "breakglass",
            EventKind::Policy => "policy",
        }
    }

    /// The inverse of [`EventKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            EventKind::Revoke,
            EventKind::Elevation,
            EventKind::BreakGlass,
            EventKind::Policy,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// An event to append. `data` is a JSON object without `seq` (the store assigns it).
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventKind,
    /// The event's JSON object (DESIGN.md §9), without `seq`.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// Until when the event matters: after this no enforcement point needs it (the latest `exp`
    /// it covers, an elevation's or window's end). Snapshots carry only events not yet past it.
    pub until: UnixTime,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// Store-wide, gap-free, 1-based sequence (the SSE `id`).
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// The event's JSON object, with `seq` set.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// See [`NewEvent::until`].
    pub until: UnixTime,
}

impl NewEvent {
    /// A `revoke` event (`kind` is `session`, `agent`, `jti` or `key`); times in Unix seconds on
    /// the wire, `until` rounded up so a token's last second is covered.
    pub fn revoke(kind: &str, id: &str, until: UnixTime, at: UnixTime) -> Self {
        let mut data = serde_json::Map::new();
        data.insert("kind".into(), kind.into());
        data.insert("id".into(), id.into());
        data.insert(
            "until".into(),
            until
                .as_millis()
                .saturating_add(999)
                .div_euclid(1000)
                .into(),
        );
        data.insert("at".into(), at.as_secs().into());
        // Milliseconds too, so an enforcement point can measure propagation lag.
        data.insert("at_ms".into(), at.as_millis().into());
        NewEvent {
            kind: EventKind::Revoke,
            data,
            until,
        }
    }
}
