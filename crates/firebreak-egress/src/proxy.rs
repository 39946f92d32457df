//! One connection through the proxy. [`Proxy::proxy`] is the ordered hot path; the order of
//! its steps is the security argument (STYLE.md §6): parse → authenticate → admit → limit →
//! decide on the name → resolve once → decide on every address → audit → connect to the
//! checked address → splice → audit the close.
//!
//! INVARIANT (connect-to-the-checked-address): the only addresses `connect` sees are those in
//! `checked`, each of which passed `check_address`; a name is resolved exactly once per
//! request, so a resolver that changes its answer (DNS rebinding) cannot swap the address
//! between the check and the connect.
//!
//! INVARIANT (open-before-connect): `TcpStream::connect` runs only after `append_audit` of the
//! `egress_open` record returned within `audit_deadline`.
//!
//! Explicit permits: an address that is not public (see [`crate::host::is_public`]) is reached
//! only when the decision on `Host::"<ip>:<port>"` is an `Allow` and one of its determining
//! permits scopes `resource == Host::"<ip>:<port>"` exactly ([`firebreak_policy::Pdp::names_resource`]).
//! A broad `permit(principal, action == Action::"egress_connect", resource)` or a
//! `resource is Host` permit is a statement about the internet, not about our own network, so
//! it never opens an internal address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use firebreak_core::clock::Stopwatch;
use firebreak_core::{Reason, SessionId};
use firebreak_enforce::{Bundle, Enforcer, Verified, denial_reason};
use firebreak_policy::{Action, Decision, NO_MATCHING_PERMIT, ReasonRef, Resource};
use firebreak_store::{AuditDraft, Store};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::error::render;
use crate::head::{Head, read_head};
use crate::host::{
    AuthorityError, Destination, canonical_ip, is_public, parse_absolute, parse_authority,
};
use crate::tunnel::{End, Limits, splice};
use crate::{EgressConfig, EgressError, Resolve, metrics};

/// Most addresses one name may resolve to; more is refused rather than checked at length.
const MAX_ADDRESSES: usize = 64;

pub(crate) struct Proxy {
    cfg: EgressConfig,
    enforcer: Arc<Enforcer>,
    audit: Arc<dyn Store>,
    resolver: Arc<dyn Resolve>,
    closing: watch::Receiver<bool>,
    conns: Mutex<HashMap<String, usize>>,
}

/// One request's mode.
enum Mode {
    Connect,
    /// Absolute-form: the origin-form path to send, and the body length.
    Http {
        path: String,
        body: u64,
    },
}

/// An agent's slot under `max_conns_per_agent`, released on drop.
struct Slot<'a> {
    proxy: &'a Proxy,
    agent: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut conns = self
            .proxy
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = conns.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                conns.remove(&self.agent);
            }
        }
    }
}

/// What an allowed request was allowed on.
struct Allowed {
    reasons: Vec<ReasonRef>,
    policy_version: String,
    checked: Vec<IpAddr>,
}

impl Proxy {
    pub(crate) fn new(
        cfg: EgressConfig,
        enforcer: Arc<Enforcer>,
        audit: Arc<dyn Store>,
        resolver: Arc<dyn Resolve>,
        closing: watch::Receiver<bool>,
    ) -> Self {
        Self {
            cfg,
            enforcer,
            audit,
            resolver,
            closing,
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) async fn handle(self: Arc<Self>, mut client: TcpStream) {
        let _ = client.set_nodelay(true);
        let request_id = request_id();
        let head = match tokio::time::timeout(
            self.cfg.header_timeout,
            read_head(&mut client, self.cfg.max_header_bytes),
        )
        .await
        {
            Ok(head) => head,
            Err(_) => Err(EgressError::HeadTimeout),
        };
        let outcome = match head {
            Ok(head) => self.proxy(&mut client, head, &request_id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            metrics::count(e.label());
            tracing::info!(request_id, error = %e, "egress: refused");
            if let Some(answer) = e.answer() {
                let bytes = render(&answer);
                let linger = self
                    .cfg
                    .header_timeout
                    .min(std::time::Duration::from_secs(1));
                let _ = tokio::time::timeout(linger, async {
                    let _ = client.write_all(&bytes).await;
                    let _ = client.shutdown().await;
                    // Read what the peer still sends (the rest of an oversized head) before
                    // closing: closing with unread input resets the connection, and the peer
                    // could lose the answer.
                    let mut sink = [0u8; 4096];
                    let mut left: usize = 64 * 1024;
                    while left > 0 {
                        match client.read(&mut sink).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => left = left.saturating_sub(n),
                        }
                    }
                })
                .await;
            }
        }
    }

    /// One request, in order. Returns `Err` only before anything was sent to the agent.
    async fn proxy(
        &self,
        client: &mut TcpStream,
        head: Head,
        request_id: &str,
    ) -> Result<(), EgressError> {
        // Parse: the request line names one destination. A malformed line is answered before
        // authentication (it says nothing about anyone); a host we will not reach is refused
        // only after, so an anonymous caller learns nothing but 407.
        let (mode, dest) = parse_target(&head)?;
        // Authenticate: the only verification of this request's token.
        let v = self.authenticate(&head).await?;
        // Admit: revoked identities and a stale feed stop here, before the PDP.
        let bundle = self.enforcer.admit(&v).map_err(EgressError::Refused)?;
        let result = self
            .authorised(client, &head, mode, dest, &v, &bundle, request_id)
            .await;
        if let Err(e) = &result {
            self.audit_refusal(&v, &bundle, &head, e, request_id).await;
        }
        result
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the hot path's steps share these"
    )]
    async fn authorised(
        &self,
        client: &mut TcpStream,
        head: &Head,
        mode: Mode,
        dest: Result<Destination, AuthorityError>,
        v: &Verified,
        bundle: &Bundle,
        request_id: &str,
    ) -> Result<(), EgressError> {
        // Limit: a slot for this agent, held until the tunnel closes.
        let _slot = self.acquire(&v.agent)?;
        let dest = dest.map_err(|_| EgressError::Destination("not a valid host"))?;
        // Decide on the name, then resolve it once and decide on every address.
        let allowed = self.decide(bundle, v, &dest).await?;
        let Some(&ip) = allowed.checked.first() else {
            return Err(EgressError::Resolve(std::io::ErrorKind::NotFound.into()));
        };
        // Audit: durable before a single byte leaves for the destination.
        let fields = self.open_fields(v, &dest, ip, &allowed, &mode, request_id);
        self.append(fields, v).await.map_err(EgressError::Audit)?;
        metrics::count("allow");
        let clock = Stopwatch::start();
        // Act: connect to the address that was checked, never to the name.
        // INVARIANT (connect-to-the-checked-address), INVARIANT (open-before-connect).
        let connected = tokio::time::timeout(
            self.cfg.connect_timeout,
            TcpStream::connect(SocketAddr::new(ip, dest.port)),
        )
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        let mut origin = match connected {
            Ok(o) => o,
            Err(e) => {
                self.close_record(v, &dest, request_id, 0, 0, &clock, "connect_failed")
                    .await;
                return Err(EgressError::Connect(e));
            }
        };
        let _ = origin.set_nodelay(true);
        let _open = metrics::OpenTunnel::new();
        let (limits, first_up) = match &mode {
            Mode::Connect => {
                let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";
                if let Err(e) = client.write_all(ok).await {
                    self.close_record(v, &dest, request_id, 0, 0, &clock, "reset")
                        .await;
                    return Err(EgressError::Io(e));
                }
                (
                    Limits {
                        idle: self.cfg.idle_timeout,
                        total: self.cfg.total_timeout,
                        up_budget: None,
                        half_close_up: true,
                    },
                    head.rest.clone(),
                )
            }
            Mode::Http { path, body } => {
                let mut bytes = origin_head(head, path, &dest);
                let early = usize::try_from(*body)
                    .unwrap_or(usize::MAX)
                    .min(head.rest.len());
                bytes.extend_from_slice(head.rest.get(..early).unwrap_or_default());
                let remaining = body.saturating_sub(early as u64);
                (
                    Limits {
                        idle: self.cfg.idle_timeout,
                        total: self.cfg.total_timeout,
                        up_budget: Some(remaining),
                        half_close_up: false,
                    },
                    bytes,
                )
            }
        };
        let mut up = first_up.len() as u64;
        let totals = if origin.write_all(&first_up).await.is_err() {
            None
        } else {
            let enforcer = Arc::clone(&self.enforcer);
            let agent = v.clone();
            Some(
                splice(
                    client,
                    &mut origin,
                    limits,
                    move || enforcer.admit(&agent).is_ok(),
                    self.enforcer.beats(),
                    self.closing.clone(),
                )
                .await,
            )
        };
        let (down, end) = match totals {
            Some(t) => {
                up = up.saturating_add(t.up);
                (t.down, t.end)
            }
            None => (0, End::Error),
        };
        metrics::bytes(up, down);
        self.close_record(v, &dest, request_id, up, down, &clock, end.as_str())
            .await;
        Ok(())
    }

    async fn authenticate(&self, head: &Head) -> Result<Arc<Verified>, EgressError> {
        let mut values = head.values("proxy-authorization");
        let value = values.next().ok_or(EgressError::NoToken)?;
        if values.next().is_some() {
            return Err(EgressError::Malformed("repeated Proxy-Authorization"));
        }
        let value = std::str::from_utf8(value).map_err(|_| {
            EgressError::Token(firebreak_enforce::TokenRefusal::Invalid("not UTF-8".into()))
        })?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            // Basic or another scheme: not a credential we know; challenge for Bearer.
            _ => return Err(EgressError::NoToken),
        };
        if token.is_empty() {
            return Err(EgressError::NoToken);
        }
        // F8: on a clock this far off the broker's, every time check below would be wrong.
        self.enforcer.check_clock().map_err(EgressError::Refused)?;
        let tokens = self.enforcer.tokens().ok_or(EgressError::NotReady)?;
        let bundle = self.enforcer.bundle().ok_or(EgressError::NotReady)?;
        let audience = bundle
            .targets
            .get(&self.cfg.target)
            .filter(|t| t.kind == "egress")
            .map(|t| t.audience.clone())
            .ok_or(EgressError::TargetUnknown)?;
        tokens
            .verify(token, &audience)
            .await
            .map_err(EgressError::Token)
    }

    fn acquire(&self, agent: &str) -> Result<Slot<'_>, EgressError> {
        let mut conns = self
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = conns.entry(agent.to_owned()).or_insert(0);
        if *n >= self.cfg.max_conns_per_agent {
            return Err(EgressError::ConnectionLimit);
        }
        *n = n.saturating_add(1);
        Ok(Slot {
            proxy: self,
            agent: agent.to_owned(),
        })
    }

    /// The name's decision, one resolution, and every address's decision.
    async fn decide(
        &self,
        bundle: &Bundle,
        v: &Verified,
        dest: &Destination,
    ) -> Result<Allowed, EgressError> {
        let decide = |host: &str| {
            self.enforcer.decide(
                bundle,
                v,
                Action::EgressConnect,
                Resource::Host {
                    host,
                    port: dest.port,
                },
                self.enforcer.context(v, None, false),
            )
        };
        let named = decide(&dest.host);
        let mut reasons = match &named {
            Decision::Allow(p) => p.reasons().to_vec(),
            Decision::Deny(_) => return Err(denied(&named)),
            Decision::RequireApproval(p) => {
                return Err(EgressError::ApprovalRequired {
                    reasons: p.reasons().to_vec(),
                });
            }
        };
        let policy_version = named.policy_version().to_owned();
        // Resolve once (an IP literal is its own answer: no lookup).
        let resolved = match dest.ip {
            Some(ip) => vec![ip],
            None => tokio::time::timeout(
                self.cfg.connect_timeout,
                self.resolver.resolve(&dest.host, dest.port),
            )
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            .map_err(EgressError::Resolve)?,
        };
        if resolved.is_empty() || resolved.len() > MAX_ADDRESSES {
            return Err(EgressError::Resolve(std::io::ErrorKind::NotFound.into()));
        }
        let mut checked = Vec::with_capacity(resolved.len());
        for raw in resolved {
            let (host, ip) = canonical_ip(raw);
            let d = decide(&host);
            reasons.extend(check_address(bundle, &d, &host, ip, dest.port)?);
            checked.push(ip);
        }
        reasons.sort();
        reasons.dedup();
        Ok(Allowed {
            reasons,
            policy_version,
            checked,
        })
    }

    fn open_fields(
        &self,
        v: &Verified,
        dest: &Destination,
        ip: IpAddr,
        allowed: &Allowed,
        mode: &Mode,
        request_id: &str,
    ) -> Map<String, Value> {
        let mut f = self.base_fields("egress_open", v, request_id);
        f.insert("destination".into(), json!(dest.id()));
        f.insert(
            "resolved_ip".into(),
            json!(canonical_ip(ip).0.trim_matches(['[', ']'])),
        );
        f.insert(
            "addresses".into(),
            json!(
                allowed
                    .checked
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            ),
        );
        f.insert("mode".into(), json!(mode_name(mode)));
        f.insert("decision".into(), json!("allow"));
        f.insert("reasons".into(), json!(allowed.reasons));
        f.insert("policy_version".into(), json!(allowed.policy_version));
        f
    }

    fn base_fields(&self, kind: &str, v: &Verified, request_id: &str) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("kind".into(), json!(kind));
        f.insert("action".into(), json!(Action::EgressConnect.as_str()));
        f.insert("agent".into(), json!(v.agent));
        if let Some(s) = &v.session {
            f.insert("session".into(), json!(s));
        }
        // The token's id, never the token (DESIGN.md §7).
        f.insert("jti".into(), json!(v.jti));
        f.insert("target".into(), json!(self.cfg.target));
        f.insert("request_id".into(), json!(request_id));
        f
    }

    async fn append(&self, fields: Map<String, Value>, v: &Verified) -> Result<(), String> {
        let draft = AuditDraft {
            fields,
            time: self.enforcer.clock().now(),
            session: v
                .session
                .as_deref()
                .and_then(|s| SessionId::try_from(s).ok()),
        };
        match tokio::time::timeout(self.cfg.audit_deadline, self.audit.append_audit(draft)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("not durable within audit_deadline".into()),
        }
    }

    /// A refused request after authentication is recorded too (kind `egress_open`, decision
    /// `deny`/`require_approval`); a failure to record it changes nothing: it is refused anyway.
    async fn audit_refusal(
        &self,
        v: &Verified,
        bundle: &Bundle,
        head: &Head,
        e: &EgressError,
        request_id: &str,
    ) {
        let (decision, mut reasons) = match e {
            EgressError::Denied { reasons, .. } => ("deny", reasons.clone()),
            EgressError::ApprovalRequired { reasons } => ("require_approval", reasons.clone()),
            // An allowed name that did not resolve is refused like a denied one, with its code.
            EgressError::Destination(_)
            | EgressError::ConnectionLimit
            | EgressError::Resolve(_) => ("deny", Vec::new()),
            // Allowed and recorded already (egress_open, then egress_close), or not recordable.
            EgressError::Connect(_)
            | EgressError::Io(_)
            | EgressError::Audit(_)
            | EgressError::Config { .. }
            | EgressError::Malformed(_)
            | EgressError::HeadTooLarge
            | EgressError::HeadTimeout
            | EgressError::NoToken
            | EgressError::Token(_)
            | EgressError::NotReady
            | EgressError::TargetUnknown
            | EgressError::Refused(_) => return,
        };
        if let Some(a) = e.answer() {
            reasons.insert(
                0,
                ReasonRef::Code {
                    code: a.reason.as_str().to_owned(),
                },
            );
        }
        reasons.dedup();
        let mut f = self.base_fields("egress_open", v, request_id);
        // The normalised destination when it parsed; else the raw target, bounded.
        let destination = match parse_target(head) {
            Ok((_, Ok(d))) => d.id(),
            Ok((_, Err(_))) | Err(_) => head.target.chars().take(256).collect(),
        };
        f.insert("destination".into(), json!(destination));
        f.insert("decision".into(), json!(decision));
        f.insert("reasons".into(), json!(reasons));
        f.insert("policy_version".into(), json!(bundle.pdp.version()));
        if let Err(err) = self.append(f, v).await {
            tracing::warn!(request_id, error = %err, "egress: refusal not recorded");
        }
    }

    #[allow(clippy::too_many_arguments, reason = "one record's fields")]
    async fn close_record(
        &self,
        v: &Verified,
        dest: &Destination,
        request_id: &str,
        up: u64,
        down: u64,
        clock: &Stopwatch,
        end: &str,
    ) {
        let mut f = self.base_fields("egress_close", v, request_id);
        f.insert("destination".into(), json!(dest.id()));
        f.insert("bytes_up".into(), json!(up));
        f.insert("bytes_down".into(), json!(down));
        let ms = (clock.elapsed_secs() * 1000.0).round();
        f.insert("duration_ms".into(), json!(ms.clamp(0.0, 1e15) as u64));
        f.insert("end".into(), json!(end));
        if let Err(err) = self.append(f, v).await {
            // The tunnel already happened; its open record stands. Log loudly.
            tracing::error!(request_id, error = %err, "egress: egress_close not recorded");
        }
    }
}

/// The request line's mode and destination. `Err` for a malformed request (400); the inner
/// `Err` for a host we will not reach (403 once the caller is authenticated).
fn parse_target(head: &Head) -> Result<(Mode, Result<Destination, AuthorityError>), EgressError> {
    let split = |r: Result<Destination, AuthorityError>| match r {
        Err(AuthorityError::Malformed) => Err(EgressError::Malformed("target")),
        other => Ok(other),
    };
    if head.method == "CONNECT" {
        let dest = split(parse_authority(&head.target))?;
        return Ok((Mode::Connect, dest));
    }
    if !head
        .target
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
    {
        // Origin-form (`GET /`), `https://` absolute-form or `*`: not a request to proxy.
        return Err(EgressError::Malformed(
            "not an http:// absolute-form target",
        ));
    }
    // Request bodies are forwarded by Content-Length only; chunked uploads are refused rather
    // than re-framed (a framing disagreement with the origin is a smuggling risk).
    if head.values("transfer-encoding").next().is_some() {
        return Err(EgressError::Malformed("Transfer-Encoding"));
    }
    let mut lengths = head.values("content-length");
    let body = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some(l), None) if !l.is_empty() && l.len() <= 15 && l.iter().all(u8::is_ascii_digit) => {
            std::str::from_utf8(l)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(EgressError::Malformed("Content-Length"))?
        }
        _ => return Err(EgressError::Malformed("Content-Length")),
    };
    match parse_absolute(&head.target) {
        Err(AuthorityError::Malformed) => Err(EgressError::Malformed("target")),
        Err(AuthorityError::BadHost) => Ok((
            Mode::Http {
                path: "/".into(),
                body,
            },
            Err(AuthorityError::BadHost),
        )),
        Ok((d, path)) => Ok((Mode::Http { path, body }, Ok(d))),
    }
}

fn mode_name(m: &Mode) -> &'static str {
    match m {
        Mode::Connect => "connect",
        Mode::Http { .. } => "http",
    }
}

/// One resolved address against its decision; the permits that admit it.
fn check_address(
    bundle: &Bundle,
    d: &Decision,
    host: &str,
    ip: IpAddr,
    port: u16,
) -> Result<Vec<ReasonRef>, EgressError> {
    let no_permit = d
        .reasons()
        .iter()
        .all(|r| matches!(r, ReasonRef::Code { code } if code == NO_MATCHING_PERMIT));
    match (d, is_public(ip)) {
        // A public address the name's permit covers; only a forbid or an error stops it.
        (Decision::Allow(p), true) => Ok(p.reasons().to_vec()),
        (Decision::Deny(_), true) if no_permit => Ok(Vec::new()),
        (Decision::Deny(_), _) if !no_permit => Err(denied(d)),
        (Decision::Allow(p), false) => {
            let named = p.reasons().iter().any(|r| match r {
                ReasonRef::Policy { policy } => bundle
                    .pdp
                    .names_resource(policy, Resource::Host { host, port }),
                ReasonRef::Code { .. } => false,
            });
            if named {
                Ok(p.reasons().to_vec())
            } else {
                Err(EgressError::Destination(
                    "internal address not named by a permit",
                ))
            }
        }
        (Decision::Deny(_), _) => Err(EgressError::Destination("internal address")),
        (Decision::RequireApproval(p), _) => Err(EgressError::ApprovalRequired {
            reasons: p.reasons().to_vec(),
        }),
    }
}

fn denied(d: &Decision) -> EgressError {
    match denial_reason(d) {
        Reason::ApprovalRequired => EgressError::ApprovalRequired {
            reasons: d.reasons().to_vec(),
        },
        reason => EgressError::Denied {
            reason,
            reasons: d.reasons().to_vec(),
        },
    }
}

/// The request as the origin gets it: origin-form target, `Host` from the target URI (RFC 9112
/// §3.2.2), no `Proxy-Authorization`, no hop-by-hop headers (RFC 9110 §7.6.1) nor any the
/// `Connection` header names, and `Connection: close`.
fn origin_head(head: &Head, path: &str, dest: &Destination) -> Vec<u8> {
    const HOP: [&str; 9] = [
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    let named: Vec<String> = head
        .values("connection")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = format!("{} {path} HTTP/1.1\r\n", head.method).into_bytes();
    let host = if dest.port == 80 {
        dest.host.clone()
    } else {
        dest.id()
    };
    out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        if lower == "host" || HOP.contains(&lower.as_str()) || named.contains(&lower) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// 96 random bits, hex: names this request in logs and both audit records.
fn request_id() -> String {
    let mut b = [0u8; 12];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // No randomness means no unique id; a fixed marker still correlates open and close
        // within this connection's records via their order.
        return "egress-norand".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
