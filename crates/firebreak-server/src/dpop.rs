//! DPoP (RFC 9449) at the token endpoint: the `DPoP` header read once, its proof verified against
//! this broker's public token endpoint, proof `jti`s kept in a bounded replay cache, and the
//! binding (`cnf.jkt`) of a subject or actor token enforced. The JOSE work is
//! `firebreak_token::verify_dpop_proof`; this module only supplies the request's side.

use std::sync::{Mutex, PoisonError};

use firebreak_token::{
    Algorithm, DpopExpect, DpopProof, DpopReplayCache, TokenError, verify_dpop_proof,
};
use serde_json::{Map, Value};

use crate::broker::Broker;
use crate::error::{BrokerError, SubjectError};

/// The proof algorithms we accept and advertise (`dpop_signing_alg_values_supported`).
pub const DPOP_ALGORITHMS: [Algorithm; 2] = [Algorithm::Es256, Algorithm::EdDsa];

/// Live proofs remembered per broker node. At ~400 bytes an entry this caps the cache near 25 MiB;
/// only requests that passed the policy decision add to it (see `exchange_inner`), so filling it
/// takes an authorised agent sending tens of thousands of exchanges a minute.
pub const DPOP_REPLAY_CAPACITY: usize = 65_536;

/// The store scope of proofs spent at the token endpoint (apart from the gateways' scope: a
/// proof names its `htu`, so the two never meet, and keeping them apart keeps that obvious).
const DPOP_TOKEN_SCOPE: &str = "dpop-token";

/// The replay cache behind a lock: check-and-insert is one short critical section.
#[derive(Debug)]
pub struct DpopReplay(Mutex<DpopReplayCache>);

impl Default for DpopReplay {
    fn default() -> Self {
        Self(Mutex::new(DpopReplayCache::new(DPOP_REPLAY_CAPACITY)))
    }
}

/// The `jkt` a token is bound to: `None` for a bearer token, an error for a `cnf` that is not
/// `{"jkt": "<string>"}` (we never issue one, so it is refused rather than read as unbound).
pub fn bound_jkt(claims: &Map<String, Value>) -> Result<Option<&str>, SubjectError> {
    match claims.get("cnf") {
        None => Ok(None),
        Some(cnf) => cnf
            .get("jkt")
            .and_then(Value::as_str)
            .map(Some)
            .ok_or(SubjectError::DpopBindingMismatch),
    }
}

impl Broker {
    /// The request side of a token-endpoint proof (RFC 9449 §5): `POST` to our public token
    /// endpoint, within `[limits] dpop_max_age` plus the leeway.
    fn dpop_expect(&self, now: u64) -> DpopExpect<'_> {
        DpopExpect {
            method: "POST",
            uri: &self.token_endpoint,
            access_token: None,
            now,
            max_age_secs: self.config.limits.dpop_max_age.as_millis() / 1000,
            leeway_secs: self.config.limits.leeway.as_secs(),
            algorithms: &DPOP_ALGORITHMS,
            nonce: None,
        }
    }

    fn now_u64(&self) -> u64 {
        u64::try_from(self.clock.now().as_secs()).unwrap_or(0)
    }

    /// The request's proof, verified, or `None` without a `DPoP` header. Replay is checked
    /// separately ([`Broker::dpop_seen`]).
    pub(crate) fn dpop_proof(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<DpopProof>, BrokerError> {
        let mut values = headers.get_all("dpop").iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        // RFC 9449 §4.3 step 1: exactly one `DPoP` header; two would leave us choosing.
        if values.next().is_some() {
            return Err(BrokerError::DpopProof(TokenError::Malformed));
        }
        let proof = first
            .to_str()
            .map_err(|_| BrokerError::DpopProof(TokenError::Malformed))?;
        verify_dpop_proof(proof, &self.dpop_expect(self.now_u64()))
            .map(Some)
            .map_err(BrokerError::DpopProof)
    }

    /// Records `proof` as used, or refuses it as a replay (RFC 9449 §11.1): first in this
    /// node's cache (a replay here costs no store round trip), then as a claim in the store,
    /// which every replica shares, so a proof is good for one request to this endpoint
    /// whichever replica it reaches.
    pub(crate) async fn dpop_seen(&self, proof: &DpopProof) -> Result<(), BrokerError> {
        self.dpop_seen_here(proof)?;
        let expect = self.dpop_expect(self.now_u64());
        let until = proof
            .iat
            .saturating_add(expect.max_age_secs)
            .saturating_add(expect.leeway_secs);
        let fresh = self
            .store
            .claim_once(
                DPOP_TOKEN_SCOPE,
                &firebreak_token::dpop_claim_key(&proof.jkt, &proof.jti),
                firebreak_core::UnixTime::from_secs(i64::try_from(until).unwrap_or(i64::MAX)),
                self.clock.now(),
            )
            .await?;
        if fresh {
            Ok(())
        } else {
            Err(BrokerError::DpopProof(TokenError::DpopReplayed))
        }
    }

    fn dpop_seen_here(&self, proof: &DpopProof) -> Result<(), BrokerError> {
        let expect = self.dpop_expect(self.now_u64());
        // A panic elsewhere while holding the lock leaves at worst an extra entry (refusing
        // more, never less), so the poisoned cache is still safe to use.
        let mut cache = self
            .dpop_replay
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match cache.check_and_insert(proof, &expect) {
            Ok(()) => Ok(()),
            Err(TokenError::DpopReplayCacheFull) => Err(BrokerError::DpopCacheFull),
            Err(e) => Err(BrokerError::DpopProof(e)),
        }
    }

    /// A DPoP-bound token (`cnf.jkt`) is usable only with a proof by that key. For the subject
    /// token the proof must also name it in `ath` (RFC 9449 §4.3 step 11), so a proof made for
    /// one bound token cannot carry another.
    /// `refuse` says whose token it was (`BrokerError::subject` or `BrokerError::actor`).
    pub(crate) fn dpop_binding(
        claims: &Map<String, Value>,
        proof: Option<&DpopProof>,
        token_for_ath: Option<&str>,
        refuse: fn(SubjectError) -> BrokerError,
    ) -> Result<(), BrokerError> {
        let Some(jkt) = bound_jkt(claims).map_err(refuse)? else {
            return Ok(());
        };
        let proof = proof
            .filter(|p| p.jkt == jkt)
            .ok_or_else(|| refuse(SubjectError::DpopBindingMismatch))?;
        match token_for_ath {
            Some(t) => proof.check_ath(t).map_err(BrokerError::DpopProof),
            None => Ok(()),
        }
    }
}
