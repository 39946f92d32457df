//! A cache of one trusted issuer's JWKS, fetched over HTTPS (plain HTTP only when allowed, for
//! loopback test issuers).
//!
//! Fetching is bounded three ways, so a flood of tokens with random `kid`s cannot turn us into an
//! amplifier against the issuer (T07): one fetch in flight at a time (concurrent callers wait for
//! it), at most one fetch per `min_refetch_interval_secs`, and each fetch cut off by a timeout and
//! a body limit. A failed fetch keeps the last good set until `last_known_good_secs` after it was
//! fetched; after that the issuer's tokens are refused (fail closed). A successful fetch replaces
//! the set, so a key the issuer removed stops being trusted at once.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use firebreak_core::Clock;
use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use hyper_rustls::ConfigBuilderExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::error::{FetchError, Segment};
use crate::jwt::kid_is_acceptable;
use crate::{KeySet, PublicKey, TokenError, json};

/// Bounds for fetching and keeping an issuer's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksCacheConfig {
    /// Longest a whole fetch (discovery plus JWKS) may take.
    pub fetch_timeout: Duration,
    /// At most one fetch per this many seconds, whatever triggers it.
    pub min_refetch_interval_secs: i64,
    /// How long after its successful fetch a set keeps serving while fetches fail.
    pub last_known_good_secs: i64,
    /// Largest response body accepted; a larger one is an error, never truncated.
    pub max_body_bytes: usize,
    /// Age after which a lookup triggers a refresh (no background task: the next lookup does it).
    pub refresh_interval_secs: i64,
}

impl Default for JwksCacheConfig {
    fn default() -> Self {
        JwksCacheConfig {
            fetch_timeout: Duration::from_secs(2),
            min_refetch_interval_secs: 30,
            last_known_good_secs: 3600,
            max_body_bytes: 1024 * 1024,
            refresh_interval_secs: 300,
        }
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// OpenID discovery: `GET {issuer_url}/.well-known/openid-configuration`, whose `issuer` must
    /// equal `issuer_url` byte-exactly, then its `jwks_uri`.
    Discovery {
        /// The issuer identifier, exactly as tokens carry it in `iss`.
        issuer_url: String,
    },
    /// A JWKS URL used directly.
    Uri(String),
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

#[derive(Clone, Copy)]
enum Freshness {
    /// Younger than `refresh_interval_secs`: serve without fetching.
    Fresh,
    /// Younger than `last_known_good_secs`: serve, but a fetch may be due.
    Usable,
}

#[derive(Clone)]
struct Snapshot {
    keys: Arc<KeySet>,
    fetched_at: i64,
}

struct FetchState {
    last_attempt: Option<i64>,
}

struct Inner {
    source: JwksSource,
    allow_http: bool,
    config: JwksCacheConfig,
    clock: Arc<dyn Clock>,
    client: Option<HttpClient>,
    // INVARIANT (fresh-set-only): replaced whole by a successful fetch and never merged, so a key
    // removed by the issuer is gone from the first lookup after that fetch.
    current: RwLock<Option<Snapshot>>,
    // INVARIANT (single-flight): held across the decide-and-fetch step, so at most one fetch is in
    // flight and callers queued behind it see its result before deciding to fetch again.
    gate: tokio::sync::Mutex<FetchState>,
    fetch_count: AtomicU64,
}

/// The cached JWKS of one trusted issuer. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct JwksCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksCache")
            .field("source", &self.inner.source)
            .field("allow_http", &self.inner.allow_http)
            .field("fetch_count", &self.fetch_count())
            .finish()
    }
}

fn build_client(allow_http: bool) -> Option<HttpClient> {
    // An explicit provider, so no process-wide rustls default has to be installed.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_webpki_roots()
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let connector = if allow_http {
        builder.https_or_http().enable_http1().build()
    } else {
        builder.https_only().enable_http1().build()
    };
    // No idle pool: fetches are rare, and a pooled connection the server already closed would
    // turn into a spurious failure. The legacy client never follows redirects.
    Some(
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector),
    )
}

fn is_json_content_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl JwksCache {
    /// A cache for `source`. `allow_http` permits `http://` URLs (loopback test issuers only).
    pub fn new(
        source: JwksSource,
        allow_http: bool,
        config: JwksCacheConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        JwksCache {
            inner: Arc::new(Inner {
                source,
                allow_http,
                config,
                clock,
                client: build_client(allow_http),
                current: RwLock::new(None),
                gate: tokio::sync::Mutex::new(FetchState { last_attempt: None }),
                fetch_count: AtomicU64::new(0),
            }),
        }
    }

    /// How many fetches have been started (for tests).
    pub fn fetch_count(&self) -> u64 {
        self.inner.fetch_count.load(Ordering::SeqCst)
    }

    fn now(&self) -> i64 {
        self.inner.clock.now().as_secs()
    }

    fn snapshot(&self) -> Option<Snapshot> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn age(now: i64, snap: &Snapshot) -> i64 {
        now.saturating_sub(snap.fetched_at)
    }

    fn is_fresh(&self, now: i64, snap: &Snapshot) -> bool {
        Self::age(now, snap) < self.inner.config.refresh_interval_secs
    }

    fn is_usable(&self, now: i64, snap: &Snapshot) -> bool {
        Self::age(now, snap) <= self.inner.config.last_known_good_secs
    }

    /// The cached key for `kid` if the set is fresh (or merely usable, per `need`).
    fn cached(&self, kid: &str, now: i64, need: Freshness) -> Option<PublicKey> {
        let snap = self.snapshot()?;
        let ok = match need {
            Freshness::Fresh => self.is_fresh(now, &snap),
            Freshness::Usable => self.is_usable(now, &snap),
        };
        if ok {
            snap.keys.get(kid).cloned()
        } else {
            None
        }
    }

    /// The trusted key for `kid`.
    ///
    /// Fetches when nothing is cached, when the cache is older than `refresh_interval_secs`, or
    /// on an unknown kid, but never more than one fetch at a time (concurrent callers await the
    /// same fetch) and never more than one per `min_refetch_interval_secs` (an unknown kid
    /// inside that window is refused without fetching).
    ///
    /// # Errors
    /// [`TokenError::BadKid`] for a kid that is not 1..=256 printable ASCII (no fetch);
    /// [`TokenError::UnknownKey`] when the usable set has no such kid;
    /// [`TokenError::IssuerKeysUnavailable`] when there is no set young enough to use.
    pub async fn key(&self, kid: &str) -> Result<PublicKey, TokenError> {
        // A kid no JWKS member could have is refused before it can trigger a fetch.
        if !kid_is_acceptable(kid) {
            return Err(TokenError::BadKid);
        }
        let now = self.now();
        // Fast path without waiting on anyone: a fresh set that knows the kid.
        if let Some(k) = self.cached(kid, now, Freshness::Fresh) {
            return Ok(k);
        }
        let mut gate = match self.inner.gate.try_lock() {
            Ok(gate) => gate,
            Err(_) => {
                // A fetch is in flight. A kid the usable set knows need not wait for it, so a
                // valid token is not held up by a flood of unknown kids or a slow issuer.
                if let Some(k) = self.cached(kid, now, Freshness::Usable) {
                    return Ok(k);
                }
                self.inner.gate.lock().await
            }
        };
        // Decide again under the gate: the fetch we may have waited for has changed things.
        let now = self.now();
        if let Some(k) = self.cached(kid, now, Freshness::Fresh) {
            return Ok(k);
        }
        let may_fetch = gate.last_attempt.is_none_or(|t| {
            now.checked_sub(t)
                .is_some_and(|d| d >= self.inner.config.min_refetch_interval_secs)
        });
        if may_fetch {
            gate.last_attempt = Some(now);
            self.inner.fetch_count.fetch_add(1, Ordering::SeqCst);
            match tokio::time::timeout(self.inner.config.fetch_timeout, self.fetch()).await {
                Ok(Ok((keys, warnings))) => {
                    for w in &warnings {
                        tracing::warn!(source = ?self.inner.source, warning = %w, "JWKS key dropped");
                    }
                    let snap = Snapshot {
                        keys: Arc::new(keys),
                        fetched_at: self.now(),
                    };
                    *self
                        .inner
                        .current
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Some(snap);
                }
                Ok(Err(e)) => {
                    tracing::warn!(source = ?self.inner.source, error = %e, "JWKS fetch failed");
                }
                Err(_) => {
                    tracing::warn!(source = ?self.inner.source, error = %FetchError::Timeout, "JWKS fetch failed");
                }
            }
        }
        drop(gate);
        let now = self.now();
        match self.snapshot() {
            // INVARIANT (bounded-LKG): a set is used only up to last_known_good_secs after the
            // fetch that produced it; then the issuer is refused.
            Some(snap) if self.is_usable(now, &snap) => {
                snap.keys.get(kid).cloned().ok_or(TokenError::UnknownKey)
            }
            _ => Err(TokenError::IssuerKeysUnavailable),
        }
    }

    async fn fetch(&self) -> Result<(KeySet, Vec<String>), FetchError> {
        let jwks_uri = match &self.inner.source {
            JwksSource::Uri(u) => u.clone(),
            JwksSource::Discovery { issuer_url } => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer_url.strip_suffix('/').unwrap_or(issuer_url)
                );
                let body = self.get(&url).await?;
                let doc = json::parse_object(&body, 16, Segment::KeyDocument)
                    .map_err(|e| FetchError::BadDocument(Box::new(e)))?;
                // OIDC Discovery §4.3: the document must name exactly the issuer we asked for.
                if doc.get("issuer").and_then(Value::as_str) != Some(issuer_url.as_str()) {
                    return Err(FetchError::IssuerMismatch);
                }
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or(FetchError::MissingJwksUri)?
                    .to_owned()
            }
        };
        let body = self.get(&jwks_uri).await?;
        KeySet::from_jwks_json(&body).map_err(|e| FetchError::BadDocument(Box::new(e)))
    }

    async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        let uri: http::Uri = url.parse().map_err(|_| FetchError::BadUrl)?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.inner.allow_http => {}
            Some("http") => return Err(FetchError::HttpNotAllowed),
            _ => return Err(FetchError::BadUrl),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(FetchError::BadUrl);
        }
        let client = self.inner.client.as_ref().ok_or(FetchError::TlsSetup)?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|_| FetchError::BadUrl)?;
        let response = client
            .request(request)
            .await
            .map_err(|e| FetchError::Request(e.to_string()))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(FetchError::Redirect(status.as_u16()));
        }
        if status != http::StatusCode::OK {
            return Err(FetchError::Status(status.as_u16()));
        }
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !is_json_content_type(content_type) {
            return Err(FetchError::NotJson);
        }
        let max = self.inner.config.max_body_bytes;
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| usize::try_from(len).map_or(true, |len| len > max)) {
            return Err(FetchError::BodyTooLarge { max });
        }
        // Limited stops reading at `max` and errors, so memory stays bounded whatever is declared.
        let collected = Limited::new(response.into_body(), max)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    FetchError::BodyTooLarge { max }
                } else {
                    FetchError::Body
                }
            })?;
        Ok(collected.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TLS client builds with the explicit aws-lc-rs provider and no process default, for
    /// both the https-only and the loopback-http configuration.
    #[test]
    fn tls_client_builds_without_a_process_default_provider() {
        assert!(build_client(false).is_some());
        assert!(build_client(true).is_some());
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("application/jwk-set+json"));
        assert!(!is_json_content_type("text/html"));
        assert!(!is_json_content_type("text/json+json"));
    }
}
