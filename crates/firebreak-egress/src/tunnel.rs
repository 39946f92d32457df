//! Splicing bytes between the agent and the destination, both ways, untouched (TLS passes
//! through): an idle bound, a total bound, clean half-close (one side's EOF shuts the other
//! side's write half) and a re-check of the agent's admission, so a revoked session or a stale
//! feed ends a live tunnel too, not only new ones.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides finished.
    Done,
    /// No byte either way for `idle`.
    Idle,
    /// `total` ran out.
    Total,
    /// The agent is no longer admitted (revoked, or the feed went stale).
    Revoked,
    /// The proxy is shutting down.
    Shutdown,
    /// A side reset or a write failed.
    Error,
}

impl End {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            End::Done => "closed",
            End::Idle => "idle_timeout",
            End::Total => "total_timeout",
            End::Revoked => "revoked",
            End::Shutdown => "shutdown",
            End::Error => "reset",
        }
    }
}

pub(crate) struct Limits {
    pub(crate) idle: Duration,
    pub(crate) total: Duration,
    /// `Some(n)`: forward at most n more bytes upstream, then stop reading the agent without
    /// half-closing (a plain HTTP request body of `Content-Length` n).
    pub(crate) up_budget: Option<u64>,
    /// Half-close the destination when the agent's side ends (CONNECT), or not (plain HTTP:
    /// some origins drop a request whose client half-closed).
    pub(crate) half_close_up: bool,
}

/// How often a live tunnel re-checks that its agent is still admitted, besides every event.
const RECHECK: Duration = Duration::from_millis(250);

pub(crate) struct Totals {
    pub(crate) up: u64,
    pub(crate) down: u64,
    pub(crate) end: End,
}

pub(crate) async fn splice(
    client: &mut TcpStream,
    origin: &mut TcpStream,
    limits: Limits,
    admitted: impl Fn() -> bool,
    mut beats: watch::Receiver<u64>,
    mut closing: watch::Receiver<bool>,
) -> Totals {
    let (mut cr, mut cw) = client.split();
    let (mut or, mut ow) = origin.split();
    let mut ub = vec![0u8; 16 * 1024];
    let mut db = vec![0u8; 16 * 1024];
    let (mut up, mut down) = (0u64, 0u64);
    let mut budget = limits.up_budget;
    let mut up_open = budget != Some(0);
    let mut down_open = true;
    let total = tokio::time::sleep(limits.total);
    tokio::pin!(total);
    let mut recheck = tokio::time::interval(RECHECK);
    let mut idle_at = Instant::now() + limits.idle;
    let end = loop {
        if !up_open && !down_open {
            break End::Done;
        }
        let want = budget.map_or(ub.len(), |b| {
            usize::try_from(b).unwrap_or(usize::MAX).min(ub.len())
        });
        tokio::select! {
            r = cr.read(ub.get_mut(..want).unwrap_or_default()), if up_open => match r {
                Ok(0) => {
                    up_open = false;
                    if limits.half_close_up {
                        let _ = ow.shutdown().await;
                    }
                }
                Ok(n) => {
                    if ow.write_all(ub.get(..n).unwrap_or_default()).await.is_err() {
                        break End::Error;
                    }
                    up = up.saturating_add(n as u64);
                    idle_at = Instant::now() + limits.idle;
                    if let Some(b) = budget.as_mut() {
                        *b = b.saturating_sub(n as u64);
                        if *b == 0 {
                            up_open = false;
                            budget = Some(0);
                        }
                    }
                }
                Err(_) => break End::Error,
            },
            r = or.read(&mut db), if down_open => match r {
                Ok(0) => {
                    down_open = false;
                    let _ = cw.shutdown().await;
                    // Plain HTTP: the response is complete; what the agent still sends is
                    // not part of this one request.
                    if !limits.half_close_up {
                        up_open = false;
                    }
                }
                Ok(n) => {
                    if cw.write_all(db.get(..n).unwrap_or_default()).await.is_err() {
                        break End::Error;
                    }
                    down = down.saturating_add(n as u64);
                    idle_at = Instant::now() + limits.idle;
                }
                Err(_) => break End::Error,
            },
            () = tokio::time::sleep_until(idle_at) => break End::Idle,
            () = &mut total => break End::Total,
            _ = recheck.tick() => if !admitted() { break End::Revoked },
            r = beats.changed() => match r {
                Ok(()) if !admitted() => break End::Revoked,
                Ok(()) => {}
                // The enforcer is gone: nothing can admit this agent any more.
                Err(_) => break End::Revoked,
            },
            _ = closing.changed() => break End::Shutdown,
        }
    };
    Totals { up, down, end }
}
