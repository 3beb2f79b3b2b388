//! Starting an exchange — one piece of code for the HTTP API and for scheduled triggers.

use crate::context::AppContext;
use crate::definitions::{DefinitionCache, LoadedIntegration};
use crate::effects::{run_effects, EffectPorts};
use crate::payloads::{PayloadCodec, PayloadError};
use crate::use_cases::events::{take_events, EventsRefusal};
use bytes::Bytes;
use chrono::Utc;
use handoff_core::commit::{CommitOutcome, ExchangeChange, StepCommit};
use handoff_core::endpoint::{EndpointEvent, EndpointLogEntry, EndpointStatus};
use handoff_core::exchange::{Exchange, ParentLink, Payload};
use handoff_core::exchange::{Trigger, TriggerKind};
use handoff_core::handoff::{sla_timer, HandoffMessage};
use handoff_core::ids::{ExchangeId, IntegrationCode, IntegrationVersion};
use handoff_core::machine::start::{new_exchange, NewExchange};
use handoff_core::machine::{failures, Decision};
use handoff_core::version::{select_version, VersionAvailability, VersionSelectionError};
use handoff_ports::{EndpointStore, EventQueue, ExchangeWrites, IntegrationRepository, PortError};
use serde_json::Value;
use std::sync::Arc;

pub struct InvokeRequest {
    pub integration_code: IntegrationCode,
    pub integration_version: Option<IntegrationVersion>,
    pub parameters: Value,
    pub payload: Option<InvokeInput>,
    /// What asks for it (the API on behalf of a caller, the schedule, a replay).
    pub trigger: Trigger,
    /// The id its exchange gets when one was promised before (a replay's); else a new one.
    pub exchange_id: Option<ExchangeId>,
}

/// An invocation's payload.
#[derive(Debug, Clone)]
pub enum InvokeInput {
    /// As sent, with its content type: stored when the exchange is created.
    Sent(Bytes, String),
    /// Stored already (a kept request's).
    Stored(Payload),
}

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("integration {code}: {reason}")]
    NotFound { code: IntegrationCode, reason: String },
    #[error("integration {code}: {reason}")]
    Disabled { code: IntegrationCode, reason: String },
    /// The endpoint is held (Disabled or Failed): the refusal says how to go on.
    #[error("{refusal}")]
    EndpointHeld { status: EndpointStatus, refusal: String },
    #[error("{0}")]
    Unusable(String),
    /// An event-based integration runs on its queued events, not on a payload.
    #[error(
        "integration {0} is event-based: it runs on its queued events; send them with POST /integrations/{0}/events"
    )]
    EventBased(IntegrationCode),
    /// An event-based run with nothing to run on, or whose events another exchange holds.
    #[error("integration {code}: {refusal}")]
    Events { code: IntegrationCode, refusal: EventsRefusal },
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The ports starting an exchange uses.
pub struct Starting<'a> {
    pub integrations: &'a dyn IntegrationRepository,
    pub endpoints: &'a dyn EndpointStore,
    pub events: &'a dyn EventQueue,
    pub definitions: &'a DefinitionCache,
    pub writes: &'a dyn ExchangeWrites,
    pub retention: Option<chrono::Duration>,
    /// Reading the stored input back (a restart) and sending the first handoff.
    pub effects: EffectPorts<'a>,
    pub codec: PayloadCodec,
}

impl<'a> Starting<'a> {
    pub fn of(ctx: &'a AppContext) -> Self {
        Self {
            integrations: ctx.ports.integrations.as_ref(),
            endpoints: ctx.ports.endpoints.as_ref(),
            events: ctx.ports.events.as_ref(),
            definitions: &ctx.definitions,
            writes: ctx.ports.exchanges.as_ref(),
            retention: ctx.settings.exchange_retention,
            effects: ctx.effects(),
            codec: ctx.codec(),
        }
    }
}

impl InvokeError {
    /// A request that could not be routed — unknown code, unknown or disabled version,
    /// endpoint Disabled or Failed — as the API refuses it (its error code and message) and
    /// keeps it ([`crate::use_cases::unrouted`]); `None` for every other error.
    pub fn routing_refusal(&self) -> Option<(&'static str, String)> {
        match self {
            InvokeError::NotFound { .. } => Some(("NotFound", self.to_string())),
            InvokeError::Disabled { .. } => Some(("VersionDisabled", self.to_string())),
            InvokeError::EndpointHeld { status: EndpointStatus::Failed, refusal } => {
                Some(("EndpointFailed", refusal.clone()))
            }
            InvokeError::EndpointHeld { refusal, .. } => Some(("EndpointDisabled", refusal.clone())),
            _ => None,
        }
    }
}

pub async fn invoke_exchange(ctx: &Starting<'_>, request: InvokeRequest) -> Result<Exchange, InvokeError> {
    let code = request.integration_code;
    let versions = ctx.integrations.versions(&code).await?;
    let available: Vec<VersionAvailability> =
        versions.iter().map(|v| VersionAvailability { version: v.version, enabled: v.enabled }).collect();
    let version = select_version(&available, request.integration_version).map_err(|e| match e {
        VersionSelectionError::VersionDisabled(_) => {
            InvokeError::Disabled { code: code.clone(), reason: e.to_string() }
        }
        VersionSelectionError::VersionNotFound(_) | VersionSelectionError::NoEnabledVersion => {
            InvokeError::NotFound { code: code.clone(), reason: e.to_string() }
        }
    })?;
    // A held endpoint starts nothing (no endpoint stored: a code from before endpoints runs).
    if let Some(endpoint) = ctx.endpoints.endpoint(&code).await? {
        if let Some(refusal) = endpoint.refusal() {
            if request.trigger.kind == TriggerKind::Schedule {
                let skipped = EndpointEvent::Skipped { trigger: request.trigger.clone(), reason: refusal.clone() };
                log_endpoint(ctx, &code, skipped, ctx.effects.clock.now()).await;
            }
            return Err(InvokeError::EndpointHeld { status: endpoint.status, refusal });
        }
    }
    let stored = versions
        .into_iter()
        .find(|v| v.version == version)
        .ok_or_else(|| InvokeError::NotFound { code: code.clone(), reason: format!("version {version} vanished") })?;
    let loaded = Arc::new(LoadedIntegration::from_stored(stored).map_err(|e| InvokeError::Unusable(e.to_string()))?);
    ctx.definitions.remember(loaded.clone());

    let now = ctx.effects.clock.now();
    let exchange_id = request.exchange_id.unwrap_or_else(|| ExchangeId::new(uuid::Uuid::now_v7().to_string()));
    // An event-based integration runs on the events it takes (under a claim that a failed
    // exchange keeps for its recovery, and one that completes consumes).
    let (payload, events) = match loaded.definition.events {
        None => (request.payload, None),
        Some(_) if request.payload.is_some() => return Err(InvokeError::EventBased(code)),
        Some(spec) => match take_events(ctx.events, ctx.effects.exchanges, &code, spec, &exchange_id, now).await? {
            Ok(taken) => (Some(InvokeInput::Sent(taken.input, "application/json".to_string())), Some(taken.count)),
            Err(refusal) => {
                if request.trigger.kind == TriggerKind::Schedule {
                    let skipped =
                        EndpointEvent::Skipped { trigger: request.trigger.clone(), reason: refusal.to_string() };
                    log_endpoint(ctx, &code, skipped, now).await;
                }
                return Err(InvokeError::Events { code, refusal });
            }
        },
    };
    let input = match payload {
        Some(InvokeInput::Sent(bytes, content_type)) => Some(ctx.codec.store(bytes, &content_type).await?),
        Some(InvokeInput::Stored(payload)) => Some(payload),
        None => None,
    };
    let created = materialize(&loaded, exchange_id, request.parameters, input, None, now);
    let (mut exchange, steps, message) = (created.exchange, created.steps, created.first);
    exchange.trigger = Some(request.trigger.clone());
    ctx.writes.create(&exchange, &steps).await?;
    if request.trigger.kind == TriggerKind::Schedule {
        crate::telling::scheduled_run_started(ctx.effects, &loaded.definition, &exchange.exchange_id).await;
    }

    // The SLA first: an exchange still `New` is started again by the regular job (see
    // [`start_again`]), which arms the SLA again; one already `Started` is not.
    let family = message.sub_step.family();
    let sent = async {
        arm_sla(ctx, &exchange, loaded.definition.sla_seconds, now).await?;
        ctx.effects.queue.send(family, &message, 0).await
    };
    if let Err(send_error) = sent.await {
        // The exchange exists but nothing will pick it up: record that, so it is visible and recoverable.
        mark_not_handed_off(ctx, &exchange, &send_error).await;
        return Err(send_error.into());
    }
    crate::metrics::exchange_started(&code, Some(request.trigger.kind));
    let invoked =
        EndpointEvent::Invoked { exchange_id: exchange.exchange_id.clone(), trigger: request.trigger, events };
    log_endpoint(ctx, &code, invoked, now).await;
    Ok(exchange)
}

async fn log_endpoint(ctx: &Starting<'_>, code: &IntegrationCode, event: EndpointEvent, at: chrono::DateTime<Utc>) {
    log_on_endpoint(ctx.endpoints, ctx.retention, code, event, at).await
}

/// Adds a line to the endpoint log, kept as long as finished exchanges (`retention`). The
/// log is for people: a line that cannot be written is logged, never a reason to fail the run.
pub async fn log_on_endpoint(
    endpoints: &dyn EndpointStore,
    retention: Option<chrono::Duration>,
    code: &IntegrationCode,
    event: EndpointEvent,
    at: chrono::DateTime<Utc>,
) {
    let entry = EndpointLogEntry { at, event };
    let expires_at = retention.map(|keep| at + keep);
    if let Err(e) = endpoints.append_log(code, &entry, expires_at).await {
        tracing::warn!(integrationCode = %code, error = %e, "endpoint log line not written");
    }
}

/// A new exchange of `loaded` (see [`new_exchange`]).
pub fn materialize(
    loaded: &LoadedIntegration,
    exchange_id: ExchangeId,
    parameters: Value,
    input: Option<Payload>,
    parent: Option<ParentLink>,
    now: chrono::DateTime<Utc>,
) -> NewExchange {
    new_exchange(loaded.pipeline(), exchange_id, parameters, input, parent, now)
}

/// Starts again an exchange still `New` long after its creation: whoever created it stopped
/// before its first handoff (or before knowing it was sent). The same first message goes
/// out (on the payload kept on its first step) and its SLA is armed again from its creation;
/// if the first ones did go out after all, the duplicates change nothing.
pub async fn start_again(ctx: &Starting<'_>, exchange: &Exchange) -> Result<(), PortError> {
    let unusable = |message: String| PortError::Fault { service: "definitions", message };
    let loaded = ctx
        .definitions
        .get(&exchange.integration_code, exchange.integration_version)
        .await
        .map_err(|e| unusable(e.to_string()))?
        .ok_or_else(|| {
            unusable(format!(
                "integration {} version {} does not exist",
                exchange.integration_code, exchange.integration_version
            ))
        })?;
    let input = ctx
        .effects
        .exchanges
        .get(&exchange.exchange_id)
        .await?
        .and_then(|detail| detail.steps.into_iter().next())
        .and_then(|s| s.payload);
    let message = HandoffMessage::start(exchange, &loaded.plan[0], input);
    arm_sla(ctx, exchange, loaded.definition.sla_seconds, exchange.created_at).await?;
    ctx.effects.queue.send(message.sub_step.family(), &message, 0).await
}

/// Starts the SLA clock of an exchange (at creation, and again when the regular job starts
/// it again): a timer due within a delayed message's reach is sent, a later one stored.
pub async fn arm_sla(
    ctx: &Starting<'_>,
    exchange: &Exchange,
    sla_seconds: Option<u64>,
    now: chrono::DateTime<Utc>,
) -> Result<(), PortError> {
    let Some(timer) = sla_timer(exchange, sla_seconds, now) else {
        return Ok(());
    };
    let mut decision = Decision {
        commit: StepCommit::new(
            exchange.exchange_id.clone(),
            exchange.recoveries,
            ExchangeChange::RequireNotFinal,
            now,
        ),
        effects: Vec::new(),
    };
    decision.arm(timer);
    if !decision.commit.timers.is_empty() && ctx.writes.commit(&decision.commit).await? == CommitOutcome::Conflict {
        return Ok(()); // already final: nothing to time out
    }
    run_effects(ctx.effects, decision.effects).await
}

/// The exchange exists but nothing will pick it up: record that, so it is visible and recoverable.
async fn mark_not_handed_off(ctx: &Starting<'_>, exchange: &Exchange, error: &PortError) {
    let mut decision = failures::handoff_failed(exchange, &error.to_string(), ctx.effects.clock.now());
    decision.commit.keep_finished_for(ctx.retention);
    match ctx.writes.commit(&decision.commit).await {
        Ok(CommitOutcome::Applied) => {
            crate::telling::commit_applied(
                ctx.effects,
                &exchange.integration_code,
                exchange.integration_version,
                &decision.commit,
            )
            .await
        }
        Ok(CommitOutcome::Conflict) => {
            tracing::warn!(exchangeId = %exchange.exchange_id, "exchange moved on before its hand-off failure was recorded")
        }
        Err(e) => {
            tracing::error!(exchangeId = %exchange.exchange_id, error = %e, "exchange could not be handed off nor marked failed")
        }
    }
}
