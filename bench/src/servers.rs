//! The servers the harness runs beside the broker: the axum hello-world route (`hello_rps`), the
//! crypto+HTTP limit route (one subject-token verify + one Ed25519 sign per request, no store,
//! no audit), and the bench issuer (OIDC discovery + JWKS, in the harness process).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use firebreak_server::form::Form;
use firebreak_token::{
    Algorithm, KeySet, Limits, SigningKey, UnverifiedJwt, random_b64url, verify_signature,
};
use serde_json::{Value, json};

fn runtime() -> tokio::runtime::Runtime {
    // The same runtime the broker's binary builds: multi-thread, sized by the allowed CPUs (one,
    // under `taskset -c 0`).
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn serve(port: u16, app: Router) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("bind");
    axum::serve(listener, app).await.expect("serve");
}

/// `serve-hello PORT`: `GET /` → `200 hello`.
pub fn hello_cmd(port: u16) {
    let app = Router::new().route("/", get(|| async { "hello" }));
    runtime().block_on(serve(port, app));
}

struct LimitState {
    keys: KeySet,
    signer: SigningKey,
    limits: Limits,
}

async fn limit_token(State(st): State<Arc<LimitState>>, body: Bytes) -> Response {
    let refuse = |what: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": "invalid_request", "error_description": what })),
        )
            .into_response()
    };
    // The same strict form parser as the broker.
    let Ok(form) = Form::parse(&body, &["audience", "resource"]) else {
        return refuse("form");
    };
    let Some(token) = form.get("subject_token") else {
        return refuse("subject_token");
    };
    let Some(&audience) = form.all("audience").first() else {
        return refuse("audience");
    };
    let Ok(jwt) = UnverifiedJwt::parse(token, &st.limits) else {
        return refuse("parse");
    };
    let Some(key) = jwt.header().kid.as_deref().and_then(|k| st.keys.get(k)) else {
        return refuse("kid");
    };
    if verify_signature(&jwt, key, &[key.alg()]).is_err() {
        return refuse("signature");
    }
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
    .unwrap_or(0);
    // Claims of the broker's shape and size, signed with Ed25519 (the broker's default).
    let claims = json!({
        "iss": "http://127.0.0.1",
        "sub": "deploy-bot",
        "aud": audience,
        "exp": now + 300,
        "iat": now,
        "nbf": now,
        "jti": format!("t_{}", random_b64url(18)),
        "client_id": "deploy-bot",
        "sid": format!("s_{}", random_b64url(18)),
        "tenant": "acme",
        "env": "production",
        "tier": "write",
        "purpose": "deploy acme/api",
        "fb_pv": "bench",
        "scope": form.get("scope").unwrap_or(""),
    });
    let Ok(access_token) = st.signer.sign_jwt("at+jwt", &claims) else {
        return refuse("sign");
    };
    let body: Value = json!({
        "access_token": access_token,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": form.get("scope").unwrap_or(""),
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// `serve-limit PORT JWKS_FILE`: `POST /oauth2/token` doing one verify + one sign per request.
pub fn limit_cmd(port: u16, jwks: &Path) {
    let bytes = std::fs::read(jwks).expect("read JWKS file");
    let (keys, warnings) = KeySet::from_jwks_json(&bytes).expect("JWKS");
    assert!(warnings.is_empty(), "JWKS warnings: {warnings:?}");
    let signer = SigningKey::generate(Algorithm::EdDsa).expect("Ed25519 key");
    let st = Arc::new(LimitState {
        keys,
        signer,
        limits: Limits::default(),
    });
    let app = Router::new()
        .route("/oauth2/token", post(limit_token))
        .with_state(st);
    runtime().block_on(serve(port, app));
}

/// Starts the bench issuer on an ephemeral loopback port inside the current runtime; returns
/// its URL.
pub async fn start_issuer(jwks: Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind issuer");
    let url = format!("http://{}", listener.local_addr().expect("issuer addr"));
    let discovery = json!({
        "issuer": url,
        "jwks_uri": format!("{url}/jwks.json"),
        "id_token_signing_alg_values_supported": ["RS256", "EdDSA"],
    });
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(discovery) }),
        )
        .route("/jwks.json", get(move || async move { axum::Json(jwks) }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}
