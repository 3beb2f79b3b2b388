//! The HTTP API's JWT authorizer as API Gateway plays it, and the emulator's own
//! development issuer.
//!
//! API Gateway (HTTP API, JWT authorizer) takes the token from `Authorization` (with or
//! without `Bearer `), accepts RSA signatures only, finds the key by `kid` in the issuer's
//! JWKS, checks `iss`, `aud` (or `client_id`), `exp`, `nbf` and `iat`, and for a route with
//! authorization scopes requires one of them in the token's `scope`/`scp`. It answers 401
//! `{"message":"Unauthorized"}` or 403 `{"message":"Forbidden"}` itself; the function then
//! sees the claims under `requestContext.authorizer.jwt`.
//!
//! The development issuer keeps an RSA key under `.handoff/` (created on first use), signs
//! tokens for `urn:handoff:emulator` and serves its JWKS; an external issuer (Cognito,
//! Entra ID, Keycloak, Auth0) is read through OpenID discovery instead.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `iss` of development tokens (the emulator's `JwtIssuer` unless one is configured).
pub const DEV_ISSUER: &str = "urn:handoff:emulator";
/// The template's default `JwtAudience`.
pub const DEV_AUDIENCE: &str = "handoff";
/// Every Handoff scope: what the development token carries.
pub const ALL_SCOPES: [&str; 4] = ["handoff:admin", "handoff:invoke", "handoff:operate", "handoff:read"];
/// How long the development token written at start stays valid.
pub const DEV_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// An external issuer's keys are read again after this (and at once for an unknown `kid`).
const JWKS_TTL: Duration = Duration::from_secs(300);
/// Tokens larger than this are refused before parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("development issuer key {path}: {problem}")]
    Key { path: PathBuf, problem: String },
    #[error("signing a token: {0}")]
    Sign(String),
}

/// The emulator's own issuer: one RSA key, persisted so tokens survive a restart.
pub struct DevIssuer {
    encoding: EncodingKey,
    jwk: Jwk,
    kid: String,
}

impl DevIssuer {
    /// The key in `dir/dev-issuer-key.der` (PKCS#8), created if missing.
    pub fn load_or_create(dir: &Path) -> Result<Self, AuthError> {
        let path = dir.join("dev-issuer-key.der");
        let fail = |problem: String| AuthError::Key { path: path.clone(), problem };
        let der = match std::fs::read(&path) {
            Ok(der) => der,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use aws_lc_rs::encoding::AsDer;
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(|e| fail(format!("generating: {e}")))?;
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'_> =
                    pair.as_der().map_err(|e| fail(format!("encoding: {e}")))?;
                let der = der.as_ref().to_vec();
                std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
                // Written aside and linked in: of two emulators starting at once, one key wins
                // and both use it.
                let aside = dir.join(format!(".dev-issuer-key.{}", uuid::Uuid::new_v4()));
                write_private(&aside, &der).map_err(|e| fail(e.to_string()))?;
                let linked = std::fs::hard_link(&aside, &path);
                let _ = std::fs::remove_file(&aside);
                match linked {
                    Ok(()) => der,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        std::fs::read(&path).map_err(|e| fail(e.to_string()))?
                    }
                    Err(e) => return Err(fail(e.to_string())),
                }
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        Self::from_pkcs8(&der).map_err(fail)
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        use aws_lc_rs::signature::KeyPair as _;
        let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(der).map_err(|e| format!("not an RSA PKCS#8 key: {e}"))?;
        let public = pair.public_key();
        let components = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(public);
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(public.as_ref())[..12]);
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&components.n), "e": URL_SAFE_NO_PAD.encode(&components.e),
        }))
        .map_err(|e| e.to_string())?;
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        Ok(Self { encoding, jwk, kid })
    }

    /// The issuer's public keys, as `/.well-known/jwks.json` serves them.
    pub fn jwks(&self) -> JwkSet {
        JwkSet { keys: vec![self.jwk.clone()] }
    }

    /// A token for `subject` with `scopes`, valid for `ttl`.
    pub fn mint(&self, subject: &str, scopes: &[&str], audience: &str, ttl: Duration) -> Result<String, AuthError> {
        let now = chrono::Utc::now().timestamp();
        self.sign(&json!({
            "iss": DEV_ISSUER, "sub": subject, "aud": audience,
            "iat": now, "nbf": now, "exp": now + ttl.as_secs() as i64,
            "scope": scopes.join(" "), "jti": uuid::Uuid::new_v4().to_string(),
        }))
    }

    /// Signs `claims` as they are (tests use it for expired or foreign tokens).
    pub fn sign(&self, claims: &Value) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| AuthError::Sign(e.to_string()))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)
}

/// Writes `token` where the README tells users to find it (readable by the user only).
pub fn write_token(path: &Path, token: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, token)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Why a request was refused before reaching its function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401: no token, or one that does not validate (the reason goes to the
    /// `WWW-Authenticate` header, as RFC 6750 has it).
    Unauthorized(String),
    /// 403: a valid token without any of the route's scopes.
    Forbidden { required: Vec<String> },
}

/// A validated token: its claims as API Gateway hands them on, and its scopes.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub claims: Map<String, Value>,
    pub scopes: Vec<String>,
}

impl Authorized {
    /// `requestContext.authorizer` of the payload 2.0 event: claims rendered as strings.
    pub fn event_context(&self) -> Value {
        let claims: Map<String, Value> = self
            .claims
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Array(items) => format!(
                        "[{}]",
                        items
                            .iter()
                            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    other => other.to_string(),
                };
                (k.clone(), Value::String(text))
            })
            .collect();
        json!({"jwt": {"claims": claims, "scopes": self.scopes}})
    }
}

/// Where an authorizer finds its issuer's keys.
enum Keys {
    /// The development issuer's own key.
    Local(JwkSet),
    /// OpenID discovery of an external issuer, cached.
    Discovered { http: reqwest::Client, cached: Mutex<Option<(Instant, JwkSet)>> },
}

/// A JWT authorizer of the template (`JwtConfiguration` issuer and audience).
pub struct JwtAuthorizer {
    issuer: String,
    audience: Vec<String>,
    keys: Keys,
}

impl JwtAuthorizer {
    /// An authorizer whose keys are the development issuer's.
    pub fn local(issuer: &str, audience: Vec<String>, dev: &DevIssuer) -> Self {
        Self { issuer: issuer.to_string(), audience, keys: Keys::Local(dev.jwks()) }
    }

    /// An authorizer reading `issuer`'s keys through OpenID discovery.
    pub fn discovered(issuer: &str, audience: Vec<String>) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        Self { issuer: issuer.to_string(), audience, keys: Keys::Discovered { http, cached: Mutex::new(None) } }
    }

    /// Validates the `Authorization` header against this authorizer and `required` scopes
    /// (any one of them; none means any valid token).
    pub async fn authorize(&self, authorization: Option<&str>, required: &[String]) -> Result<Authorized, Denied> {
        let unauthorized = |why: &str| Denied::Unauthorized(why.to_string());
        let raw = authorization.map(str::trim).filter(|v| !v.is_empty()).ok_or_else(|| unauthorized("no token"))?;
        let token = raw.strip_prefix("Bearer ").or_else(|| raw.strip_prefix("bearer ")).unwrap_or(raw).trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(unauthorized("the token is too large"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| unauthorized("the token is malformed"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512) {
            return Err(unauthorized("only RSA-signed tokens are accepted"));
        }
        let kid = header.kid.ok_or_else(|| unauthorized("the token names no key (kid)"))?;
        let jwk = self.key(&kid).await.ok_or_else(|| unauthorized("the token's key is not the issuer's"))?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| unauthorized("the issuer's key is unusable"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[self.issuer.as_str()]);
        // aud or client_id is checked below, as API Gateway does.
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            unauthorized(match e.kind() {
                K::ExpiredSignature => "the token has expired",
                K::ImmatureSignature => "the token is not valid yet",
                K::InvalidIssuer => "the token is from another issuer",
                K::InvalidSignature => "the token's signature does not verify",
                K::MissingRequiredClaim(_) => "the token lacks exp or iss",
                _ => "the token does not validate",
            })
        })?;
        let claims = data.claims;
        if claims.get("iat").and_then(Value::as_i64).is_some_and(|iat| iat > chrono::Utc::now().timestamp()) {
            return Err(unauthorized("the token was issued in the future"));
        }
        let audiences: Vec<&str> = match claims.get("aud").or_else(|| claims.get("client_id")) {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences.iter().any(|a| self.audience.iter().any(|expected| expected == a)) {
            return Err(unauthorized("the token is for another audience"));
        }
        let scopes: Vec<String> = match claims.get("scope").or_else(|| claims.get("scp")) {
            Some(Value::String(list)) => list.split_whitespace().map(str::to_string).collect(),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            _ => Vec::new(),
        };
        if !required.is_empty() && !required.iter().any(|r| scopes.contains(r)) {
            return Err(Denied::Forbidden { required: required.to_vec() });
        }
        Ok(Authorized { claims, scopes })
    }

    async fn key(&self, kid: &str) -> Option<Jwk> {
        let find = |set: &JwkSet| set.keys.iter().find(|k| k.common.key_id.as_deref() == Some(kid)).cloned();
        match &self.keys {
            Keys::Local(set) => find(set),
            Keys::Discovered { http, cached } => {
                let fresh = cached
                    .lock()
                    .ok()
                    .and_then(|c| c.as_ref().filter(|(at, _)| at.elapsed() < JWKS_TTL).and_then(|(_, set)| find(set)));
                if fresh.is_some() {
                    return fresh;
                }
                let set = discover(http, &self.issuer).await?;
                let found = find(&set);
                if let Ok(mut c) = cached.lock() {
                    *c = Some((Instant::now(), set));
                }
                found
            }
        }
    }
}

/// The issuer's JWKS through `{issuer}/.well-known/openid-configuration`.
async fn discover(http: &reqwest::Client, issuer: &str) -> Option<JwkSet> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let config: Value = match http.get(&url).send().await.and_then(|r| r.error_for_status()) {
        Ok(response) => response.json().await.ok()?,
        Err(e) => {
            tracing::warn!(%url, error = %e, "OpenID discovery of the JWT issuer failed");
            return None;
        }
    };
    let jwks_uri = config.get("jwks_uri").and_then(Value::as_str)?;
    match http.get(jwks_uri).send().await.and_then(|r| r.error_for_status()) {
        Ok(response) => response.json().await.ok(),
        Err(e) => {
            tracing::warn!(%jwks_uri, error = %e, "reading the JWT issuer's keys failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> (tempdir::Dir, DevIssuer) {
        let dir = tempdir::Dir::new();
        let issuer = DevIssuer::load_or_create(&dir.0).expect("issuer");
        (dir, issuer)
    }

    mod tempdir {
        pub(super) struct Dir(pub(super) std::path::PathBuf);
        impl Dir {
            pub(super) fn new() -> Self {
                let path = std::env::temp_dir().join(format!("handoff-auth-{}", uuid::Uuid::new_v4()));
                Self(path)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn authorizer(dev: &DevIssuer) -> JwtAuthorizer {
        JwtAuthorizer::local(DEV_ISSUER, vec![DEV_AUDIENCE.into()], dev)
    }

    #[tokio::test]
    async fn a_minted_token_validates_and_carries_its_scopes() {
        let (_dir, dev) = issuer();
        let token = dev.mint("alice", &["handoff:read"], DEV_AUDIENCE, Duration::from_secs(60)).expect("token");
        let ok = authorizer(&dev).authorize(Some(&format!("Bearer {token}")), &["handoff:read".into()]).await;
        let ok = ok.expect("valid");
        assert_eq!(ok.claims["sub"], json!("alice"));
        assert_eq!(ok.scopes, vec!["handoff:read".to_string()]);
        let context = ok.event_context();
        assert_eq!(context["jwt"]["claims"]["sub"], json!("alice"));
        assert!(context["jwt"]["claims"]["exp"].is_string(), "claims are strings, as API Gateway passes them");
        // Without the Bearer prefix, as API Gateway also accepts.
        assert!(authorizer(&dev).authorize(Some(&token), &[]).await.is_ok());
    }

    #[tokio::test]
    async fn bad_tokens_are_401_and_a_missing_scope_is_403() {
        let (_dir, dev) = issuer();
        let auth = authorizer(&dev);
        let read = dev.mint("bob", &["handoff:read"], DEV_AUDIENCE, Duration::from_secs(60)).expect("token");
        assert_eq!(
            auth.authorize(Some(&read), &["handoff:admin".into()]).await.err(),
            Some(Denied::Forbidden { required: vec!["handoff:admin".into()] })
        );
        let unauthorized = |r: Result<Authorized, Denied>| matches!(r, Err(Denied::Unauthorized(_)));
        assert!(unauthorized(auth.authorize(None, &[]).await));
        assert!(unauthorized(auth.authorize(Some("Bearer not.a.jwt"), &[]).await));
        let other_audience = dev.mint("bob", &ALL_SCOPES, "someone-else", Duration::from_secs(60)).expect("token");
        assert!(unauthorized(auth.authorize(Some(&other_audience), &[]).await));
        // Signed by another key with the same kid: the signature does not verify.
        let (_other_dir, other) = issuer();
        let forged = other.mint("mallory", &ALL_SCOPES, DEV_AUDIENCE, Duration::from_secs(60)).expect("token");
        let forged_kid = {
            let mut parts: Vec<String> = forged.split('.').map(str::to_string).collect();
            let mut header: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[0]).expect("b64")).expect("json");
            header["kid"] = json!(dev.kid);
            parts[0] = URL_SAFE_NO_PAD.encode(header.to_string());
            parts.join(".")
        };
        assert_eq!(
            auth.authorize(Some(&forged_kid), &[]).await.err(),
            Some(Denied::Unauthorized("the token's signature does not verify".into()))
        );
        assert!(unauthorized(auth.authorize(Some(&forged), &[]).await), "an unknown kid");
    }

    #[tokio::test]
    async fn an_expired_token_is_401_and_the_key_survives_a_restart() {
        let dir = tempdir::Dir::new();
        let dev = DevIssuer::load_or_create(&dir.0).expect("issuer");
        let past = chrono::Utc::now().timestamp() - 3600;
        let claims = json!({"iss": DEV_ISSUER, "sub": "x", "aud": DEV_AUDIENCE, "iat": past, "exp": past + 60});
        let expired = dev.sign(&claims).expect("token");
        assert_eq!(
            authorizer(&dev).authorize(Some(&expired), &[]).await.err(),
            Some(Denied::Unauthorized("the token has expired".into()))
        );
        let again = DevIssuer::load_or_create(&dir.0).expect("reloaded");
        assert_eq!(again.kid, dev.kid);
        let token = dev.mint("x", &[], DEV_AUDIENCE, Duration::from_secs(60)).expect("token");
        assert!(authorizer(&again).authorize(Some(&token), &[]).await.is_ok());
    }
}
