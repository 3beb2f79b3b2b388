//! The Handoff API as the CLI calls it: where it is and which token to send (flags, then
//! `HANDOFF_URL` / `HANDOFF_TOKEN`, then in a checkout the emulator's `.handoff/api-url` and
//! `.handoff/dev-token`), and what each answer means for the exit code.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the CLI ends, for scripts: each failure has its own exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The gateway refused the request (4xx but 404): its code and message.
    #[error("{message}")]
    Refused { message: String },
    /// What was asked for does not exist (404).
    #[error("{message}")]
    NotFound { message: String },
    /// The gateway failed (5xx) or could not be reached: trying again may help.
    #[error("{message}")]
    Unavailable { message: String },
    /// The command was used wrongly (beyond what the argument parser checks).
    #[error("{0}")]
    Usage(String),
    /// A watched exchange ended, but not Completed.
    #[error("exchange {id} ended {status}")]
    EndedUnsuccessfully { id: String, status: String },
    /// Some items of a bulk action were refused.
    #[error("{refused} of {total} were not recovered")]
    PartlyRefused { refused: usize, total: usize },
}

impl CliError {
    /// 1 refused, 2 usage, 3 unavailable, 4 not found, 5 ended unsuccessfully.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Refused { .. } | Self::PartlyRefused { .. } => 1,
            Self::Usage(_) => 2,
            Self::Unavailable { .. } => 3,
            Self::NotFound { .. } => 4,
            Self::EndedUnsuccessfully { .. } => 5,
        }
    }
}

pub(crate) type CliResult<T> = Result<T, CliError>;

/// The emulator's state directory in a checkout: `.handoff` in this or a parent directory.
fn checkout_file(name: &str) -> Option<PathBuf> {
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let candidate = dir.join(".handoff").join(name);
        if candidate.is_file() {
            return Some(candidate);
        }
        if !dir.pop() {
            return None;
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The API's base URL: the flag or `HANDOFF_URL`, else the running emulator's.
pub(crate) fn resolve_url(given: Option<String>) -> String {
    given
        .or_else(|| checkout_file("api-url").and_then(|p| read_trimmed(&p)))
        .unwrap_or_else(|| "http://127.0.0.1:3000".to_string())
        .trim_end_matches('/')
        .to_string()
}

/// The bearer token: the flag or `HANDOFF_TOKEN`, else the emulator's development token.
pub(crate) fn resolve_token(given: Option<String>) -> Option<String> {
    given.or_else(|| checkout_file("dev-token").and_then(|p| read_trimmed(&p)))
}

pub(crate) struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(base: String, token: Option<String>) -> CliResult<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("handoff-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Unavailable { message: format!("cannot make an HTTP client: {e}") })?;
        Ok(Self { base, token, http })
    }

    pub(crate) async fn get(&self, path: &str) -> CliResult<Value> {
        self.send(Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> CliResult<Value> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub(crate) async fn put(&self, path: &str, body: &Value) -> CliResult<Value> {
        self.send(Method::PUT, path, Some(body)).await
    }

    /// Sends a request; a 2xx answer's JSON, or the error it means.
    pub(crate) async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> CliResult<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            // Serialised here so the request carries its Content-Length.
            let bytes = serde_json::to_vec(body).unwrap_or_default();
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(bytes);
        }
        let response = request.send().await.map_err(|e| CliError::Unavailable {
            message: format!("cannot reach the Handoff API at {} ({})", self.base, describe(&e)),
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(json);
        }
        let message = answer_message(method.as_str(), path, status, &json, &text);
        Err(match status {
            StatusCode::NOT_FOUND => CliError::NotFound { message },
            s if s.is_server_error() => CliError::Unavailable { message },
            _ => CliError::Refused { message },
        })
    }
}

fn describe(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "connection refused: is the gateway running?"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "the request failed"
    }
}

/// An error answer in one line: `403 Forbidden: this route needs the handoff:operate scope`.
fn answer_message(method: &str, path: &str, status: StatusCode, json: &Value, text: &str) -> String {
    let code = json["error"].as_str().unwrap_or_else(|| status.canonical_reason().unwrap_or("error"));
    let message = json["message"].as_str().map(str::to_string).unwrap_or_else(|| text.chars().take(200).collect());
    let mut line = format!("{method} {path}: {} {code}: {message}", status.as_u16());
    if let Some(field) = json["field"].as_str() {
        line.push_str(&format!(" (field {field})"));
    }
    if status == StatusCode::FORBIDDEN {
        line.push_str(" — the token lacks the scope this needs (handoff:read, :invoke, :operate or :admin)");
    }
    if status == StatusCode::UNAUTHORIZED {
        line.push_str(" — set --token or HANDOFF_TOKEN (in a checkout, the emulator writes .handoff/dev-token)");
    }
    line
}

/// Percent-encodes one path segment or query value.
pub(crate) fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect::<String>().replace('+', "%20")
}
