//! The identity-aware egress proxy (DESIGN.md §3): HTTP `CONNECT host:port` tunnels (TLS passes
//! through untouched) and plain `http://` absolute-form requests, each authorised for one agent
//! and one destination by the shared PDP (`firebreak-enforce`), refused for private, loopback,
//! link-local and other internal addresses unless a policy names the address exactly, and
//! recorded (`egress_open` durable before connecting, `egress_close` at the end).
//!
//! Entry: [`serve`]. What it leaves to others: the listener's TLS (none: agents speak plain
//! HTTP to the proxy, TLS to the destination through it), the config file (the binary reads
//! `[egress]` into [`EgressSection`]), and the broker link ([`firebreak_enforce::Enforcer`]).
#![forbid(unsafe_code)]

mod config;
mod error;
mod head;
pub mod host;
mod metrics;
mod proxy;
mod tunnel;

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

pub use config::{EgressConfig, EgressSection};
pub use error::{Answer, EgressError};
pub use metrics::render_metrics;

/// A boxed, sendable future (the [`Resolve`] trait's return type).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Name resolution, injectable so tests can answer with a fake map (and count lookups). The
/// proxy calls it once per request and connects only to an address it returned and checked.
pub trait Resolve: Send + Sync {
    /// The addresses of `host` (a lower-case DNS name, never an IP literal).
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'_, io::Result<Vec<IpAddr>>>;
}

/// The system resolver (`getaddrinfo` through `tokio::net::lookup_host`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'_, io::Result<Vec<IpAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
            let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            ips.dedup();
            Ok(ips)
        })
    }
}

/// Serves the proxy on `listener` until `shutdown` completes; then stops accepting, ends open
/// tunnels and returns once every connection task has finished.
///
/// # Errors
/// None today: accept errors (e.g. out of file descriptors) are logged and retried.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: EgressConfig,
    enforcer: Arc<firebreak_enforce::Enforcer>,
    audit: Arc<dyn firebreak_store::Store>,
    resolver: Arc<dyn Resolve>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    let proxy = Arc::new(proxy::Proxy::new(cfg, enforcer, audit, resolver, close_rx));
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tasks.spawn(Arc::clone(&proxy).handle(stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "egress: accept failed");
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let _ = close_tx.send(true);
    // Tunnels end on `closing`; a head still being read is bounded by `header_timeout`, and
    // every later step by its own deadline.
    while tasks.join_next().await.is_some() {}
    Ok(())
}
