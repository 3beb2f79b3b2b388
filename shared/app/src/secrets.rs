//! Credentials for deliveries. Definitions only name a secret (`secretRef`, SPEC §2a); the
//! value lives in a secret store (AWS Secrets Manager; locally the emulator's). A warm
//! function keeps what it read for a short while, so a burst of deliveries costs one read,
//! and a rotated secret is picked up within that while.

use crate::ttl::TtlMap;
use async_trait::async_trait;
use handoff_ports::{PortResult, SecretStore, SecretText};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// A store in front of another that remembers values for `ttl` (per warm function).
pub struct CachedSecrets {
    inner: Arc<dyn SecretStore>,
    cache: TtlMap<String, SecretText>,
}

impl CachedSecrets {
    pub fn new(inner: Arc<dyn SecretStore>, ttl: Duration) -> Self {
        Self { inner, cache: TtlMap::new(ttl) }
    }
}

#[async_trait]
impl SecretStore for CachedSecrets {
    async fn get(&self, name: &str) -> PortResult<Option<SecretText>> {
        if let Some(hit) = self.cache.get(name) {
            return Ok(Some(hit));
        }
        let value = self.inner.get(name).await?;
        if let Some(v) = &value {
            self.cache.insert(name.to_string(), v.clone());
        }
        Ok(value)
    }
}

/// How a delivery logs in: the secret's JSON is `{"username", "password"}` or
/// `{"username", "privateKey"[, "passphrase"]}` (an OpenSSH/PEM private key).
#[derive(Clone, PartialEq, Eq)]
pub enum LoginCredentials {
    Password { username: String, password: String },
    PrivateKey { username: String, private_key: String, passphrase: Option<String> },
}

impl LoginCredentials {
    pub fn username(&self) -> &str {
        match self {
            Self::Password { username, .. } | Self::PrivateKey { username, .. } => username,
        }
    }
}

impl std::fmt::Debug for LoginCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Password { .. } => "password",
            Self::PrivateKey { .. } => "private key",
        };
        write!(f, "LoginCredentials({} with {kind})", self.username())
    }
}

/// What is wrong with a secret's content. Messages name the secret and the field, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("secret '{secret}' is not a JSON object: {problem}")]
    NotJson { secret: String, problem: String },
    #[error("secret '{secret}' has no non-empty 'username'")]
    MissingUsername { secret: String },
    #[error("secret '{secret}' holds neither 'password' nor 'privateKey'")]
    MissingSecret { secret: String },
    #[error("secret '{secret}' holds both 'password' and 'privateKey'; keep one")]
    Ambiguous { secret: String },
}

/// Parses login credentials out of a secret's text.
pub fn parse_login_credentials(secret: &str, text: &SecretText) -> Result<LoginCredentials, CredentialsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Raw {
        username: Option<String>,
        password: Option<String>,
        private_key: Option<String>,
        passphrase: Option<String>,
    }
    let raw: Raw = serde_json::from_str(text.expose()).map_err(|e| CredentialsError::NotJson {
        secret: secret.to_string(),
        // serde_json's message gives line/column and the kind of problem, not the content.
        problem: json_problem(&e),
    })?;
    let username = raw
        .username
        .filter(|u| !u.is_empty())
        .ok_or_else(|| CredentialsError::MissingUsername { secret: secret.to_string() })?;
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    match (nonempty(raw.password), nonempty(raw.private_key)) {
        (Some(password), None) => Ok(LoginCredentials::Password { username, password }),
        (None, Some(private_key)) => {
            Ok(LoginCredentials::PrivateKey { username, private_key, passphrase: nonempty(raw.passphrase) })
        }
        (Some(_), Some(_)) => Err(CredentialsError::Ambiguous { secret: secret.to_string() }),
        (None, None) => Err(CredentialsError::MissingSecret { secret: secret.to_string() }),
    }
}

/// Where and what kind of JSON problem, without quoting the (secret) text.
fn json_problem(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "wrong shape",
        serde_json::error::Category::Eof => "truncated",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn parse(text: &str) -> Result<LoginCredentials, CredentialsError> {
        parse_login_credentials("s", &SecretText::new(text))
    }

    #[test]
    fn parses_both_forms_and_names_what_is_missing() {
        assert_eq!(
            parse(r#"{"username": "u", "password": "p"}"#),
            Ok(LoginCredentials::Password { username: "u".into(), password: "p".into() })
        );
        assert!(matches!(
            parse(r#"{"username": "u", "privateKey": "k"}"#),
            Ok(LoginCredentials::PrivateKey { passphrase: None, .. })
        ));
        assert_eq!(parse(r#"{"password": "p"}"#), Err(CredentialsError::MissingUsername { secret: "s".into() }));
        assert_eq!(parse(r#"{"username": "u"}"#), Err(CredentialsError::MissingSecret { secret: "s".into() }));
        assert_eq!(
            parse(r#"{"username": "u", "password": "p", "privateKey": "k"}"#),
            Err(CredentialsError::Ambiguous { secret: "s".into() })
        );
        let e = parse("hunter2").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "the secret's content never shows: {e}");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = parse(r#"{"username": "u", "password": "hunter2"}"#).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", SecretText::new("hunter2")).contains("hunter2"));
    }

    struct Counting(AtomicU32);

    #[async_trait]
    impl SecretStore for Counting {
        async fn get(&self, _: &str) -> PortResult<Option<SecretText>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Some(SecretText::new("v")))
        }
    }

    #[tokio::test]
    async fn a_warm_function_reads_a_secret_once_within_the_ttl() {
        let inner = Arc::new(Counting(AtomicU32::new(0)));
        let cached = CachedSecrets::new(inner.clone(), Duration::from_secs(60));
        assert_eq!(cached.get("a").await.unwrap(), Some(SecretText::new("v")));
        cached.get("a").await.unwrap();
        assert_eq!(inner.0.load(Ordering::SeqCst), 1);
        let expired = CachedSecrets::new(inner.clone(), Duration::ZERO);
        expired.get("a").await.unwrap();
        expired.get("a").await.unwrap();
        assert_eq!(inner.0.load(Ordering::SeqCst), 3);
    }
}
