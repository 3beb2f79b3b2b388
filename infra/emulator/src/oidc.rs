//! The development issuer's sign-in, as an OpenID Connect provider does it for a public
//! client: `GET /oauth2/authorize` (authorization code, PKCE S256 only) and
//! `POST /oauth2/token`. Two identities stand in for a directory: `developer` (every scope)
//! and `viewer` (`handoff:read`); with `login_hint` naming one the code is issued at once
//! (one click from the console), otherwise a page offers both. Codes are single use, live
//! a minute, and redirect only to this API's own `/console`.

use crate::auth::{DevIssuer, ALL_SCOPES};
use crate::http::HttpState;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, Response, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const AUTHORIZE_PATH: &str = "/oauth2/authorize";
pub const TOKEN_PATH: &str = "/oauth2/token";

/// How long a code may wait for its exchange.
const CODE_VALIDITY: Duration = Duration::from_secs(60);
/// How long a console session's token lasts.
const SESSION_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The identities the development issuer signs in, with their scopes.
const IDENTITIES: [(&str, &[&str], &str); 2] =
    [("developer", &ALL_SCOPES, "every scope"), ("viewer", &["handoff:read"], "read only")];

struct Grant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    subject: &'static str,
    scopes: &'static [&'static str],
    issued: Instant,
}

/// What the sign-in needs: the issuer's key, the audience its tokens carry, and the codes
/// issued and not yet exchanged.
pub struct DevSignIn {
    issuer: DevIssuer,
    audience: String,
    /// Redirects go only under this (`<api>/console`).
    console_url: String,
    codes: Mutex<HashMap<String, Grant>>,
}

impl DevSignIn {
    pub fn new(issuer: DevIssuer, audience: String, api_url: &str) -> Self {
        Self { issuer, audience, console_url: format!("{api_url}/console"), codes: Mutex::new(HashMap::new()) }
    }
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn redirect(to: url::Url) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(location) = HeaderValue::from_str(to.as_str()) {
        r.headers_mut().insert(header::LOCATION, location);
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /oauth2/authorize`: a code for the chosen identity, sent back to the console.
pub async fn authorize(State(state): State<HttpState>, Query(query): Query<HashMap<String, String>>) -> Response<Body> {
    let Some(sign_in) = state.sign_in else {
        return html(StatusCode::NOT_FOUND, "<p>No development issuer: sign-in is the configured issuer's.</p>".into());
    };
    let param = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
    // A redirect URI we do not know is never redirected to (RFC 6749 §4.1.2.1).
    let Ok(mut back) = url::Url::parse(param("redirect_uri")) else {
        return html(StatusCode::BAD_REQUEST, "<p>redirect_uri is missing or not a URL.</p>".into());
    };
    if !back.as_str().starts_with(&sign_in.console_url) {
        return html(
            StatusCode::BAD_REQUEST,
            format!("<p>redirect_uri must be under {}.</p>", escape(&sign_in.console_url)),
        );
    }
    let refuse = |mut back: url::Url, error: &str, description: &str| {
        back.query_pairs_mut().append_pair("error", error).append_pair("error_description", description);
        if !param("state").is_empty() {
            back.query_pairs_mut().append_pair("state", param("state"));
        }
        redirect(back)
    };
    if param("response_type") != "code" {
        return refuse(back, "unsupported_response_type", "response_type must be code");
    }
    if param("client_id").is_empty() {
        return refuse(back, "invalid_request", "client_id is required");
    }
    if param("code_challenge_method") != "S256" || param("code_challenge").len() < 43 {
        return refuse(back, "invalid_request", "PKCE is required: code_challenge with code_challenge_method S256");
    }
    let Some((subject, scopes, _)) = IDENTITIES.iter().find(|(name, _, _)| *name == param("login_hint")) else {
        let links: String = IDENTITIES
            .iter()
            .map(|(name, _, what)| {
                let mut choice: Vec<(String, String)> = query.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                choice.retain(|(k, _)| k != "login_hint");
                choice.push(("login_hint".into(), (*name).into()));
                let href = format!(
                    "{AUTHORIZE_PATH}?{}",
                    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(choice).finish()
                );
                format!("<p><a id=\"as-{name}\" href=\"{}\">Sign in as {name}</a> ({what})</p>", escape(&href))
            })
            .collect();
        return html(
            StatusCode::OK,
            format!(
                "<!doctype html><title>Handoff development sign-in</title><h1>Handoff development issuer</h1>{links}"
            ),
        );
    };
    let code = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
        + &URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    let grant = Grant {
        client_id: param("client_id").into(),
        redirect_uri: param("redirect_uri").into(),
        challenge: param("code_challenge").into(),
        subject,
        scopes,
        issued: Instant::now(),
    };
    if let Ok(mut codes) = sign_in.codes.lock() {
        codes.retain(|_, g| g.issued.elapsed() < CODE_VALIDITY);
        codes.insert(code.clone(), grant);
    }
    back.query_pairs_mut().append_pair("code", &code);
    if !param("state").is_empty() {
        back.query_pairs_mut().append_pair("state", param("state"));
    }
    redirect(back)
}

fn token_error(error: &str, description: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(json!({"error": error, "error_description": description}).to_string()));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /oauth2/token` (form): the code and its PKCE verifier for an access token.
pub async fn token(State(state): State<HttpState>, body: axum::body::Bytes) -> Response<Body> {
    let Some(sign_in) = state.sign_in else { return token_error("invalid_request", "no development issuer") };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    if field("grant_type") != "authorization_code" {
        return token_error("unsupported_grant_type", "grant_type must be authorization_code");
    }
    let grant = sign_in.codes.lock().ok().and_then(|mut codes| codes.remove(field("code")));
    let Some(grant) = grant.filter(|g| g.issued.elapsed() < CODE_VALIDITY) else {
        return token_error("invalid_grant", "unknown, used or expired code");
    };
    if grant.client_id != field("client_id") || grant.redirect_uri != field("redirect_uri") {
        return token_error("invalid_grant", "client_id or redirect_uri differ from the authorization request");
    }
    let proof = URL_SAFE_NO_PAD.encode(Sha256::digest(field("code_verifier").as_bytes()));
    if field("code_verifier").len() < 43 || proof != grant.challenge {
        return token_error("invalid_grant", "code_verifier does not match the code_challenge");
    }
    let access_token = match sign_in.issuer.mint(grant.subject, grant.scopes, &sign_in.audience, SESSION_TOKEN_TTL) {
        Ok(token) => token,
        Err(e) => return token_error("server_error", &e.to_string()),
    };
    let body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": SESSION_TOKEN_TTL.as_secs(),
        "scope": grant.scopes.join(" "),
    });
    let mut r = Response::new(Body::from(body.to_string()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
