//! The error tracker of a deployment (issue 11, point 4): system failures and panics
//! reported to a Sentry-protocol endpoint — Sentry, self-hosted Sentry or GlitchTip — with
//! the `sentry` crate's events, envelopes and reqwest transport.
//!
//! The DSN is a credential, so it is read from Secrets Manager (the secret
//! `HANDOFF_ERROR_TRACKER_DSN_SECRET` names, when `HANDOFF_ERROR_TRACKER` is `on`) at the
//! first report rather than at start-up: a function that never fails never reads it, and
//! cold starts do not wait for it. Each report is flushed before the invocation goes on (a
//! Lambda instance may be frozen right after), bounded by [`FLUSH_TIMEOUT`]; one that
//! cannot be sent is logged and dropped — reporting never fails the work.

use async_trait::async_trait;
use handoff_core::notice::ErrorReport;
use handoff_ports::{ErrorTracker, SecretStore};
use sentry::protocol::{Event, Exception, Level, Value as SentryValue};
use sentry::{ClientOptions, Transport, TransportFactory, TransportOptions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The longest a report waits to be sent.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Reports to the DSN stored in a secret, read once per warm instance.
pub struct SentryTracker {
    secrets: Arc<dyn SecretStore>,
    secret_name: String,
    /// This function's name, shown on every report (`server_name` and the `function` tag).
    function: String,
    /// The client, once the DSN was read (`None`: no valid DSN in the secret).
    client: OnceCell<Option<Arc<sentry::Client>>>,
}

impl SentryTracker {
    pub fn new(secrets: Arc<dyn SecretStore>, secret_name: String, function: String) -> Self {
        Self { secrets, secret_name, function, client: OnceCell::new() }
    }

    /// The client; a secret that cannot be read now is tried again at the next report.
    async fn client(&self) -> Option<Arc<sentry::Client>> {
        let read = self
            .client
            .get_or_try_init(|| async {
                let Some(text) = self.secrets.get(&self.secret_name).await? else {
                    tracing::error!(secret = %self.secret_name, "error tracker on, but its DSN secret does not exist");
                    return Ok(None);
                };
                Ok::<_, handoff_ports::PortError>(self.connect(text.expose().trim()))
            })
            .await;
        match read {
            Ok(client) => client.clone(),
            Err(e) => {
                tracing::warn!(secret = %self.secret_name, error = %e, "error tracker DSN not read; report dropped");
                None
            }
        }
    }

    fn connect(&self, dsn: &str) -> Option<Arc<sentry::Client>> {
        let dsn = match dsn.parse::<sentry::types::Dsn>() {
            Ok(dsn) => dsn,
            // The DSN's text is a credential: only that it is invalid is logged.
            Err(_) => {
                tracing::error!(secret = %self.secret_name, "error tracker DSN is not a valid DSN");
                return None;
            }
        };
        let mut options = ClientOptions::default();
        options.dsn = Some(dsn);
        options.release = Some(concat!("handoff@", env!("CARGO_PKG_VERSION")).into());
        options.server_name = Some(self.function.clone().into());
        options.default_integrations = false;
        options.send_default_pii = false;
        options.transport = Some(Arc::new(ReqwestWithOurClient(reqwest::Client::new())));
        Some(Arc::new(sentry::Client::from_config(options)))
    }
}

/// The crate's reqwest transport, with a client of this process (the rustls set-up the rest
/// of the gateway uses).
struct ReqwestWithOurClient(reqwest::Client);

impl TransportFactory for ReqwestWithOurClient {
    fn create_transport_with_options(&self, options: TransportOptions) -> Arc<dyn Transport> {
        Arc::new(sentry::transports::ReqwestHttpTransportOptions::from(options).with_client(self.0.clone()).build())
    }
}

/// The event of `report`: the failure's kind as the exception type, its text as the value;
/// where it happened as tags (searchable), the link to the exchange as extra data. Reports
/// of one kind, integration and sub-step group as one issue.
pub fn event_of(report: &ErrorReport, function: &str) -> Event<'static> {
    let mut tags = BTreeMap::new();
    tags.insert("function".to_string(), function.to_string());
    if let Some(id) = &report.exchange_id {
        tags.insert("exchange_id".into(), id.to_string());
    }
    if let Some(code) = &report.integration_code {
        tags.insert("integration_code".into(), code.to_string());
    }
    if let Some(step) = report.step_id {
        tags.insert("step".into(), step.to_string());
    }
    if let Some(sub_step) = report.sub_step {
        tags.insert("sub_step".into(), format!("{sub_step:?}"));
    }
    if let Some(attempt) = report.attempt {
        tags.insert("attempt".into(), attempt.to_string());
    }
    let mut extra = BTreeMap::new();
    if let Some(link) = &report.link {
        extra.insert("link".to_string(), SentryValue::String(link.clone()));
    }
    let fingerprint = [
        report.kind.clone(),
        report.integration_code.as_ref().map_or_else(String::new, ToString::to_string),
        tags.get("sub_step").cloned().unwrap_or_default(),
    ];
    Event {
        level: Level::Error,
        exception: vec![Exception {
            ty: report.kind.clone(),
            value: Some(report.message.clone()),
            ..Default::default()
        }]
        .into(),
        tags,
        extra,
        fingerprint: fingerprint.into_iter().map(Into::into).collect::<Vec<_>>().into(),
        ..Default::default()
    }
}

#[async_trait]
impl ErrorTracker for SentryTracker {
    async fn report(&self, report: &ErrorReport) {
        let Some(client) = self.client().await else { return };
        let id = client.capture_event(event_of(report, &self.function), None);
        // The transport sends from its own thread; wait for it without blocking this one.
        let flushed = tokio::task::spawn_blocking(move || client.flush(Some(FLUSH_TIMEOUT))).await.unwrap_or(false);
        if flushed {
            tracing::info!(event = %id, kind = %report.kind, "reported to the error tracker");
        } else {
            tracing::warn!(event = %id, kind = %report.kind, "error tracker report not confirmed sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_core::ids::{ExchangeId, IntegrationCode, StepId};
    use handoff_core::plan::SubStep;

    #[test]
    fn an_event_names_where_the_failure_happened_and_groups_by_kind_integration_and_sub_step() {
        let report = ErrorReport {
            kind: "Unavailable".into(),
            message: "POST http://t/in: connection refused".into(),
            exchange_id: Some(ExchangeId::new("01J-X")),
            integration_code: Some(IntegrationCode::parse("ORDERS").expect("code")),
            step_id: Some(StepId::from_sequence(2)),
            sub_step: Some(SubStep::DeliverRest),
            attempt: Some(3),
            link: Some("https://gw/exchanges/01J-X".into()),
        };
        let event = event_of(&report, "handoff-worker-deliver-rest");
        assert_eq!(event.exception.values[0].ty, "Unavailable");
        assert_eq!(event.tags["exchange_id"], "01J-X");
        assert_eq!(event.tags["sub_step"], "DeliverRest");
        assert_eq!(event.tags["attempt"], "3");
        assert_eq!(event.tags["function"], "handoff-worker-deliver-rest");
        assert_eq!(event.extra["link"], SentryValue::String("https://gw/exchanges/01J-X".into()));
        let fingerprint: Vec<&str> = event.fingerprint.iter().map(|f| f.as_ref()).collect();
        assert_eq!(fingerprint, ["Unavailable", "ORDERS", "DeliverRest"]);
    }

    /// A report reaches a Sentry endpoint on loopback as one envelope, authenticated with
    /// the DSN's key, before `report` returns.
    #[tokio::test]
    async fn a_report_is_sent_as_an_envelope_before_report_returns() {
        use handoff_ports::memory::MemorySecrets;
        use std::sync::Mutex;
        let received: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
        let kept = received.clone();
        let app =
            axum::Router::new().fallback(move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
                let kept = kept.clone();
                async move {
                    let auth =
                        headers.get("x-sentry-auth").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                    kept.lock().expect("lock").push((uri.path().to_string(), auth, body));
                    "{}"
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let secrets = Arc::new(MemorySecrets::default());
        secrets.put("dsn", &format!("http://key-1@127.0.0.1:{port}/7"));
        let tracker = SentryTracker::new(secrets, "dsn".into(), "handoff-dlq".into());
        tracker.report(&ErrorReport::panic("index out of bounds")).await;
        let received = received.lock().expect("lock").clone();
        assert_eq!(received.len(), 1, "{received:?}");
        let (path, auth, body) = &received[0];
        assert_eq!(path, "/api/7/envelope/");
        assert!(auth.contains("sentry_key=key-1"), "{auth}");
        assert!(body.contains("\"type\":\"Panic\"") && body.contains("index out of bounds"), "{body}");

        // No such secret: nothing is sent, and reporting goes on without failing.
        let missing = SentryTracker::new(Arc::new(MemorySecrets::default()), "dsn".into(), "handoff-dlq".into());
        missing.report(&ErrorReport::panic("x")).await;
    }
}
