//! Who is told what once a commit has applied (issue 11): its figures ([`crate::metrics`]);
//! its system failures, to the error tracker; and when it ended an exchange, the heartbeat
//! of a scheduled run and the integration's `notify` targets
//! ([`handoff_core::notice`] decides what each is told). Also the start ping of a scheduled
//! run and the notice that an endpoint halted.
//!
//! Telling never fails the work it tells of, and never runs it twice: the state change is
//! written before, so what cannot be sent after brief retries is logged (targets redacted)
//! and dropped.

use crate::context::EffectPorts;
use crate::outbound::OutboundClient;
use handoff_core::commit::StepCommit;
use handoff_core::definition::IntegrationDefinition;
use handoff_core::exchange::TriggerKind;
use handoff_core::heartbeat::{HeartbeatUrl, Ping};
use handoff_core::ids::{ExchangeId, IntegrationCode, IntegrationVersion};
use handoff_core::notice::{ErrorReport, ExchangeEnd, Notice, NotifyTarget};
use std::time::Duration;

/// How often one message (a ping, a webhook call) is tried, and how long each try may take.
const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF: Duration = Duration::from_millis(200);

/// Everything a commit that applied tells. `code` and `version` are its exchange's.
pub async fn commit_applied(
    ports: EffectPorts<'_>,
    code: &IntegrationCode,
    version: IntegrationVersion,
    commit: &StepCommit,
) {
    crate::metrics::commit_applied(code, commit);
    for report in ErrorReport::system_failures(commit, ports.settings.public_base_url.as_deref()) {
        ports.tracker.report(&report).await;
    }
    if let Some(end) = ExchangeEnd::of(commit) {
        exchange_ended(ports, code, version, &end).await;
    }
}

async fn exchange_ended(
    ports: EffectPorts<'_>,
    code: &IntegrationCode,
    version: IntegrationVersion,
    end: &ExchangeEnd,
) {
    let Some(loaded) = definition(ports, code, version).await else { return };
    let definition = &loaded.definition;
    if let Some(url) = heartbeat_of(ports, definition) {
        if was_scheduled(ports, &end.exchange_id).await {
            ping(ports.http, &url, &end.ping()).await;
        }
    }
    let base_url = ports.settings.public_base_url.as_deref();
    if let Some(notice) = end.notice(code, ports.settings.auto_recovery_limit, base_url, ports.clock.now()) {
        notify(ports, definition, &notice).await;
    }
}

/// A scheduled run of `definition` was created as exchange `exchange_id` (and is about to
/// be handed on, so this start comes before its end): its heartbeat hears `/start`.
pub async fn scheduled_run_started(
    ports: EffectPorts<'_>,
    definition: &IntegrationDefinition,
    exchange_id: &ExchangeId,
) {
    if let Some(url) = heartbeat_of(ports, definition) {
        tracing::info!(exchangeId = %exchange_id, heartbeat = %url.redacted(), "scheduled run: heartbeat start");
        ping(ports.http, &url, &Ping::Start).await;
    }
}

/// A system failure of `exchange_id` halted the endpoint of `code`: its `notify` targets
/// are told.
pub async fn endpoint_halted(
    ports: EffectPorts<'_>,
    code: &IntegrationCode,
    version: IntegrationVersion,
    exchange_id: &ExchangeId,
    error_code: handoff_core::error_code::ErrorCode,
) {
    let Some(loaded) = definition(ports, code, version).await else { return };
    let definition = &loaded.definition;
    let notice = handoff_core::notice::endpoint_halted(
        code,
        exchange_id,
        error_code,
        ports.settings.public_base_url.as_deref(),
        ports.clock.now(),
    );
    notify(ports, definition, &notice).await;
}

/// The check a scheduled integration pings: its own `heartbeatUrl`, else the deployment's
/// pattern (for an integration with a schedule).
fn heartbeat_of(ports: EffectPorts<'_>, definition: &IntegrationDefinition) -> Option<HeartbeatUrl> {
    definition.heartbeat_url.clone().or_else(|| {
        let pattern = ports.settings.integration_heartbeats.as_ref()?;
        definition.schedule.as_ref().and_then(|_| pattern.url_for(&definition.code))
    })
}

async fn definition(
    ports: EffectPorts<'_>,
    code: &IntegrationCode,
    version: IntegrationVersion,
) -> Option<std::sync::Arc<crate::definitions::LoadedIntegration>> {
    match ports.definitions.get(code, version).await {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::warn!(integrationCode = %code, error = %e, "nobody told: the definition could not be read");
            None
        }
    }
}

/// Only a run its schedule started pings the schedule's heartbeat (not one an operator
/// or a caller started).
async fn was_scheduled(ports: EffectPorts<'_>, exchange_id: &ExchangeId) -> bool {
    match ports.exchanges.get(exchange_id).await {
        Ok(Some(detail)) => detail.exchange.trigger.is_some_and(|t| t.kind == TriggerKind::Schedule),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(exchangeId = %exchange_id, error = %e, "heartbeat not pinged: the exchange could not be read");
            false
        }
    }
}

/// Sends `notice` to each target of `definition` that wants its event.
async fn notify(ports: EffectPorts<'_>, definition: &IntegrationDefinition, notice: &Notice) {
    for entry in definition.notify.iter().filter(|n| n.on.contains(&notice.event)) {
        let shown = entry.target.redacted();
        match &entry.target {
            NotifyTarget::Webhook(url) => {
                let body = match serde_json::to_string(notice) {
                    Ok(body) => body,
                    Err(e) => {
                        tracing::error!(error = %e, "notice not encoded");
                        continue;
                    }
                };
                post_briefly(ports.http, url.as_str(), &shown, "application/json", body, "notice").await;
            }
            NotifyTarget::SnsTopic(arn) => match ports.topics.publish(arn, &notice.subject(), &notice.text()).await {
                Ok(()) => tracing::info!(target = %shown, event = notice.event.name(), "notice published"),
                Err(e) => {
                    tracing::warn!(target = %shown, event = notice.event.name(), error = %e, "notice not published")
                }
            },
        }
    }
}

/// Sends one heartbeat ping.
pub async fn ping(http: &OutboundClient, url: &HeartbeatUrl, ping: &Ping) {
    post_briefly(
        http,
        &url.url_for(ping),
        &url.redacted(),
        "text/plain; charset=utf-8",
        ping.body().to_string(),
        ping.name(),
    )
    .await;
}

/// POSTs `body` to `url`, tried [`ATTEMPTS`] times; whether it was accepted (2xx). Logs show
/// `shown` (the redacted target) and `what`, never the URL, which may be a credential.
async fn post_briefly(
    http: &OutboundClient,
    url: &str,
    shown: &str,
    content_type: &str,
    body: String,
    what: &str,
) -> bool {
    let client = match http.http() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(target = %shown, what, error = %e, "not sent");
            return false;
        }
    };
    for attempt in 1..=ATTEMPTS {
        // Content-Length is known: reqwest sends it for a byte body.
        let sent =
            client.post(url).timeout(TIMEOUT).header("content-type", content_type).body(body.clone()).send().await;
        match sent {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) => {
                tracing::warn!(target = %shown, what, status = response.status().as_u16(), attempt, "refused")
            }
            Err(e) => {
                // The error may name the URL: only its kind is logged.
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                tracing::warn!(target = %shown, what, error = kind, attempt, "not sent")
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(BACKOFF * attempt).await;
        }
    }
    false
}
