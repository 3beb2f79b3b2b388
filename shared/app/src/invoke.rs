//! Starting an exchange — one piece of code for the HTTP API and for scheduled triggers.

use crate::context::AppContext;
use crate::definitions::LoadedIntegration;
use crate::payloads::{PayloadCodec, PayloadError};
use crate::worker::{arm_timer, send_follow_ups, WorkerError};
use bytes::Bytes;
use chrono::Utc;
use handoff_core::commit::{CommitOutcome, ErrorRecord, ExchangeChange, StepChange, StepCommit};
use handoff_core::definition::IntegrationDefinition;
use handoff_core::exchange::{Exchange, ExchangeError, ExchangeStatus, ExchangeStep, ParentLink, Payload, StepStatus};
use handoff_core::handoff::{HandoffMessage, Timer, TimerKind};
use handoff_core::ids::{ExchangeId, IntegrationCode, IntegrationVersion, StepId};
use handoff_core::plan::PlannedSubStep;
use handoff_core::retry::{ErrorClassification, RetryPolicy};
use handoff_core::version::{select_version, VersionAvailability, VersionSelectionError};
use handoff_ports::PortError;
use serde_json::Value;
use std::sync::Arc;

pub struct InvokeRequest {
    pub integration_code: IntegrationCode,
    pub integration_version: Option<IntegrationVersion>,
    pub parameters: Value,
    /// The invocation payload and its content type.
    pub payload: Option<(Bytes, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("integration {code}: {reason}")]
    NotFound { code: IntegrationCode, reason: String },
    #[error("integration {code}: {reason}")]
    Disabled { code: IntegrationCode, reason: String },
    #[error("{0}")]
    Unusable(String),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The retry policy of a planned sub-step (bookkeeping sub-steps use the default).
pub fn retry_policy(definition: &IntegrationDefinition, planned: &PlannedSubStep) -> RetryPolicy {
    planned.step_index.and_then(|i| definition.steps.get(i)).map(|s| s.retry).unwrap_or_default()
}

pub async fn invoke_exchange(ctx: &AppContext, request: InvokeRequest) -> Result<Exchange, InvokeError> {
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
    let stored = versions
        .into_iter()
        .find(|v| v.version == version)
        .ok_or_else(|| InvokeError::NotFound { code: code.clone(), reason: format!("version {version} vanished") })?;
    let loaded = Arc::new(LoadedIntegration::from_stored(stored).map_err(|e| InvokeError::Unusable(e.to_string()))?);
    ctx.definitions.remember(loaded.clone());

    let codec = PayloadCodec::new(ctx.files.clone(), ctx.settings.inline_payload_limit);
    let input = match request.payload {
        Some((bytes, content_type)) => Some(codec.store(bytes, &content_type).await?),
        None => None,
    };
    let now = Utc::now();
    let created =
        materialize(&loaded, ExchangeId::new(uuid::Uuid::now_v7().to_string()), request.parameters, input, None, now);
    let (exchange, steps, message) = (created.exchange, created.steps, created.first);
    ctx.exchanges.create(&exchange, &steps).await?;

    // The SLA first: an exchange still `New` is started again by the regular job (see
    // [`start_again`]), which arms the SLA again; one already `Started` is not.
    let family = message.sub_step.family();
    let sent = async {
        arm_sla(ctx, &exchange, loaded.definition.sla_seconds, now).await?;
        ctx.queue.send(family, &message, 0).await
    };
    if let Err(send_error) = sent.await {
        // The exchange exists but nothing will pick it up: record that, so it is visible and recoverable.
        mark_not_handed_off(ctx, &exchange, &send_error).await;
        return Err(send_error.into());
    }
    Ok(exchange)
}

/// A new exchange with all its steps (status `Initial`) and the message that starts it.
pub struct NewExchange {
    pub exchange: Exchange,
    pub steps: Vec<ExchangeStep>,
    pub first: HandoffMessage,
}

/// Materialises the whole plan of an exchange at once, so it is visible from the start.
pub fn materialize(
    loaded: &LoadedIntegration,
    exchange_id: ExchangeId,
    parameters: Value,
    input: Option<Payload>,
    parent: Option<ParentLink>,
    now: chrono::DateTime<Utc>,
) -> NewExchange {
    let exchange = Exchange {
        exchange_id,
        integration_code: loaded.stored.code.clone(),
        integration_version: loaded.stored.version,
        status: ExchangeStatus::New,
        parameters,
        created_at: now,
        updated_at: now,
        completed_at: None,
        error: None,
        recoveries: 0,
        parent,
        result: None,
    };
    let steps = loaded
        .plan
        .iter()
        .map(|planned| ExchangeStep {
            step_id: StepId::from_sequence(planned.sequence),
            sequence: planned.sequence,
            integration_step: planned.integration_step.clone(),
            sub_step: planned.sub_step,
            destination: planned.destination,
            status: StepStatus::Initial,
            payload: if planned.sequence == 0 { input.clone() } else { None },
            attempts: 0,
            max_attempts: retry_policy(&loaded.definition, planned).max_attempts,
            last_error: None,
            next_retry_at: None,
            completed_at: None,
            sub_exchanges: None,
        })
        .collect();
    let first = first_message(loaded, &exchange, input);
    NewExchange { exchange, steps, first }
}

/// The message that starts `exchange`: its first sub-step, on the invocation's payload.
fn first_message(loaded: &LoadedIntegration, exchange: &Exchange, input: Option<Payload>) -> HandoffMessage {
    let first = &loaded.plan[0];
    HandoffMessage {
        exchange_id: exchange.exchange_id.clone(),
        integration_code: exchange.integration_code.clone(),
        integration_version: exchange.integration_version,
        step_id: StepId::from_sequence(first.sequence),
        sub_step: first.sub_step,
        attempt: 1,
        input,
        parameters: exchange.parameters.clone(),
        not_before: None,
        recovery: exchange.recoveries,
        parent: exchange.parent.clone(),
    }
}

/// Starts again an exchange still `New` long after its creation: whoever created it stopped
/// before its first handoff (or before knowing it was sent). The same first message goes
/// out (on the payload kept on its first step) and its SLA is armed again from its creation;
/// if the first ones did go out after all, the duplicates change nothing.
pub async fn start_again(ctx: &AppContext, exchange: &Exchange) -> Result<(), PortError> {
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
        .exchanges
        .get(&exchange.exchange_id)
        .await?
        .and_then(|detail| detail.steps.into_iter().next())
        .and_then(|s| s.payload);
    let message = first_message(&loaded, exchange, input);
    arm_sla(ctx, exchange, loaded.definition.sla_seconds, exchange.created_at).await?;
    ctx.queue.send(message.sub_step.family(), &message, 0).await
}

/// Starts the SLA clock of an exchange (at creation and again at each recovery).
pub async fn arm_sla(
    ctx: &AppContext,
    exchange: &Exchange,
    sla_seconds: Option<u64>,
    now: chrono::DateTime<Utc>,
) -> Result<(), PortError> {
    let Some(timer) = sla_timer(exchange, sla_seconds, now) else {
        return Ok(());
    };
    let mut commit =
        StepCommit::new(exchange.exchange_id.clone(), exchange.recoveries, ExchangeChange::RequireNotFinal, now);
    let mut follow_ups = Vec::new();
    arm_timer(timer, now, &mut commit, &mut follow_ups);
    if !commit.timers.is_empty() && ctx.exchanges.commit(&commit).await? == CommitOutcome::Conflict {
        return Ok(()); // already final: nothing to time out
    }
    send_follow_ups(ctx, follow_ups).await.map_err(|e| match e {
        WorkerError::Port(p) => p,
        other => PortError::Fault { service: "queue", message: other.to_string() },
    })
}

/// The SLA timer of `exchange` (at its current generation) started at `now`, if it has one.
pub fn sla_timer(exchange: &Exchange, sla_seconds: Option<u64>, now: chrono::DateTime<Utc>) -> Option<Timer> {
    sla_seconds.map(|seconds| Timer {
        exchange_id: exchange.exchange_id.clone(),
        recovery: exchange.recoveries,
        due: now + chrono::Duration::seconds(seconds as i64),
        kind: TimerKind::Sla,
    })
}

async fn mark_not_handed_off(ctx: &AppContext, exchange: &Exchange, error: &PortError) {
    let now = Utc::now();
    let failure = ExchangeError {
        classification: ErrorClassification::System,
        message: format!("could not hand off the exchange: {error}"),
        retryable: true,
        step_id: Some(StepId::from_sequence(0)),
        sub_step: None,
        at: now,
    };
    let mut commit = StepCommit::new(
        exchange.exchange_id.clone(),
        0,
        ExchangeChange::SetStatus {
            from: vec![ExchangeStatus::New],
            to: ExchangeStatus::Failed,
            error: Some(failure.clone()),
            completed_at: None,
        },
        now,
    );
    commit.errors.push(ErrorRecord {
        exchange_id: exchange.exchange_id.clone(),
        integration_code: exchange.integration_code.clone(),
        step_id: failure.step_id,
        sub_step: None,
        classification: failure.classification,
        message: failure.message.clone(),
        retryable: true,
        exchange_failed: true,
        at: now,
    });
    commit.step = Some(StepChange {
        step_id: StepId::from_sequence(0),
        attempt: 1,
        claimed: false,
        status: StepStatus::Failed,
        payload: None,
        max_attempts: RetryPolicy::default().max_attempts,
        last_error: Some(handoff_core::exchange::StepError {
            classification: ErrorClassification::System,
            message: format!("could not hand off the exchange: {error}"),
            at: now,
        }),
        next_retry_at: None,
        completed_at: None,
        logs: Vec::new(),
    });
    match ctx.exchanges.commit(&commit).await {
        Ok(CommitOutcome::Applied) => {}
        Ok(CommitOutcome::Conflict) => {
            tracing::warn!(exchangeId = %exchange.exchange_id, "exchange moved on before its hand-off failure was recorded")
        }
        Err(e) => {
            tracing::error!(exchangeId = %exchange.exchange_id, error = %e, "exchange could not be handed off nor marked failed")
        }
    }
}
