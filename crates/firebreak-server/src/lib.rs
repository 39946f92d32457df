//! The Firebreak broker: configuration, the RFC 8693 token exchange, introspection (RFC 7662),
//! revocation (RFC 7009), discovery (OIDC, RFC 8414), JWKS and the admin API.
//!
//! Entry points: [`config::Config::load`] checks a config; [`Broker::new`] opens the broker on a
//! store; [`serve`] runs it on a listener until shutdown. It leaves JOSE to `firebreak-token`
//! and persistence to `firebreak-store`.
#![forbid(unsafe_code)]

pub mod audit;
pub mod authzen;
pub mod broker;
pub mod config;
pub mod decider;
pub mod dpop;
pub mod error;
pub mod events;
pub mod exchange;
pub mod form;
pub mod grants;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod scope;
pub mod subject;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

pub use broker::{Broker, StartError, admin_token, router};
pub use config::{Config, ConfigError};

/// Serves the broker on `listener` until `shutdown` resolves, with background upkeep (key
/// retirement, replay-guard purge) every 30 s.
///
/// # Errors
/// The I/O error that ended the accept loop.
pub async fn serve(
    broker: Arc<Broker>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let upkeep = {
        let b = Arc::clone(&broker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
            loop {
                tick.tick().await;
                if let Err(e) = b.maintain().await {
                    tracing::warn!(error = %e, "upkeep failed");
                }
            }
        })
    };
    let tls = broker.config().server.tls.clone();
    let closer = Arc::clone(&broker);
    let shutdown = async move {
        shutdown.await;
        closer.close_streams();
    };
    let app = router(broker);
    let result = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some((cert, key)) => match tls::acceptor(&cert, &key) {
            Ok(acceptor) => tls::serve(listener, acceptor, app, shutdown).await,
            Err(e) => Err(std::io::Error::other(e)),
        },
    };
    upkeep.abort();
    result
}
