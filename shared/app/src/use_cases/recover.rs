//! Operator actions on an exchange: recover a Failed/TimedOut exchange (optionally onto
//! another version), and retry a retrying step now. One piece of code for the API and
//! the error-processing job.

use crate::context::AppContext;
use crate::definitions::{DefinitionCache, DefinitionLoadError};
use crate::effects::{run_effects, EffectPorts};
use crate::sub_exchanges::failed_children;
use crate::use_cases::invoke::log_on_endpoint;
use handoff_core::commit::CommitOutcome;
use handoff_core::endpoint::EndpointEvent;
use handoff_core::exchange::{ExchangeDetail, ExchangeStatus, Trigger};
use handoff_core::ids::{ExchangeId, IntegrationVersion, StepId};
use handoff_core::machine::operator::{self, ManualRetryError};
use handoff_core::machine::{delay_until, Effect};
use handoff_core::recovery::ResumeFrom;
use handoff_ports::{ExchangeWrites, PortError, TimerStore};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("exchange {0} does not exist")]
    UnknownExchange(ExchangeId),
    #[error("exchange has no step {0}")]
    UnknownStep(StepId),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnknownVersion(String),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The ports operator actions use.
pub struct Recovering<'a> {
    pub definitions: &'a DefinitionCache,
    pub writes: &'a dyn ExchangeWrites,
    /// Taking back the outbox entry once the resuming handoff is sent.
    pub timers: &'a dyn TimerStore,
    /// Reading the exchange and its children; sending the resuming handoff.
    pub effects: EffectPorts<'a>,
    pub outbox_delay: Duration,
    /// How long endpoint log lines are kept.
    pub retention: Option<chrono::Duration>,
}

impl<'a> Recovering<'a> {
    pub fn of(ctx: &'a AppContext) -> Self {
        Self {
            definitions: &ctx.definitions,
            writes: ctx.ports.exchanges.as_ref(),
            timers: ctx.ports.exchanges.as_ref(),
            effects: ctx.effects(),
            outbox_delay: ctx.settings.outbox_delay,
            retention: ctx.settings.exchange_retention,
        }
    }
}

async fn load(ctx: &Recovering<'_>, id: &ExchangeId) -> Result<ExchangeDetail, ActionError> {
    ctx.effects.exchanges.get(id).await?.ok_or_else(|| ActionError::UnknownExchange(id.clone()))
}

/// What a recovery did.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub resumed_at: StepId,
    pub integration_version: IntegrationVersion,
    pub recoveries: u32,
}

/// Recovers `id` (onto `onto_version` if given) from where `from` says; `requested_by`
/// (an operator's `sub`, or the job that re-drives failures) is logged on the step it
/// resumes at.
pub async fn recover_exchange(
    ctx: &Recovering<'_>,
    id: &ExchangeId,
    onto_version: Option<IntegrationVersion>,
    from: ResumeFrom,
    requested_by: &str,
) -> Result<Recovered, ActionError> {
    let detail = load(ctx, id).await?;
    let exchange = &detail.exchange;
    let unavailable = |e: DefinitionLoadError| match e {
        DefinitionLoadError::Port(port) => ActionError::Port(port),
        corrupt => ActionError::Conflict(corrupt.to_string()),
    };
    let current = ctx
        .definitions
        .get(&exchange.integration_code, exchange.integration_version)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            ActionError::Conflict(format!(
                "version {} of the integration no longer exists",
                exchange.integration_version
            ))
        })?;
    let target = match onto_version.filter(|v| *v != exchange.integration_version) {
        None => current.clone(),
        Some(version) => {
            ctx.definitions.get(&exchange.integration_code, version).await.map_err(unavailable)?.ok_or_else(|| {
                ActionError::UnknownVersion(format!(
                    "integration {} has no version {version}",
                    exchange.integration_code
                ))
            })?
        }
    };
    let now = ctx.effects.clock.now();
    let decided = operator::recovery(
        &detail,
        current.pipeline(),
        target.pipeline(),
        target.stored.version,
        from,
        ctx.outbox_delay,
        now,
    )
    .map_err(|e| ActionError::Conflict(e.to_string()))?
    .requested_by(requested_by);
    // A subflow that failed because sub-exchanges failed re-drives only those.
    let redrive = if decided.redrive_children {
        failed_children(ctx.effects.exchanges, id, decided.resumed_at()).await?
    } else {
        Vec::new()
    };
    if ctx.writes.recover(&decided.commit).await? == CommitOutcome::Conflict {
        return Err(ActionError::Conflict("the exchange changed while it was being recovered; read it again".into()));
    }
    for child in &redrive {
        // Boxed: sub-exchanges may themselves be subflows.
        if let Err(e) = Box::pin(recover_exchange(ctx, child, None, ResumeFrom::FailedStep, requested_by)).await {
            tracing::warn!(exchangeId = %id, child = %child, error = %e, "a failed sub-exchange could not be re-driven");
        }
    }
    match run_effects(ctx.effects, vec![Effect::send(decided.resume.clone())]).await {
        Ok(()) => {
            if let Err(e) = ctx.timers.take_timer(&decided.outbox).await {
                tracing::warn!(exchangeId = %id, error = %e, "recovery handed on; its outbox entry stays and will send a harmless duplicate");
            }
        }
        Err(e) => {
            tracing::warn!(exchangeId = %id, error = %e, "recovery committed; the regular job hands it on from the outbox")
        }
    }
    // The stored SLA timer is swept when due; one due soon also goes now, for precision.
    if let Some(sla) = decided.sla_due_soon() {
        if let Err(e) = ctx.effects.queue.send_timer(sla, delay_until(now, sla.due)).await {
            tracing::warn!(exchangeId = %id, error = %e, "the SLA timer waits for the regular job");
        }
    }
    let recoveries = decided.recoveries();
    tracing::info!(exchangeId = %id, resumedAt = %decided.resumed_at(), recoveries, requestedBy = requested_by, "exchange recovered");
    let invoked =
        EndpointEvent::Invoked { exchange_id: id.clone(), trigger: Trigger::recovery(requested_by), events: None };
    log_on_endpoint(ctx.effects.endpoints, ctx.retention, &exchange.integration_code, invoked, now).await;
    Ok(Recovered { resumed_at: decided.resumed_at(), integration_version: target.stored.version, recoveries })
}

/// A manual retry of a step waiting for its next automatic attempt: that attempt runs now
/// (and counts); the scheduled one then finds it done and changes nothing.
pub async fn retry_step_now(
    ctx: &Recovering<'_>,
    id: &ExchangeId,
    step_id: StepId,
    requested_by: &str,
) -> Result<u32, ActionError> {
    let detail = load(ctx, id).await?;
    if detail.exchange.status == ExchangeStatus::Completed {
        return reexecute(ctx, &detail, step_id, requested_by).await;
    }
    let message = operator::manual_retry(&detail, step_id, requested_by).map_err(|e| match e {
        ManualRetryError::UnknownStep(step) => ActionError::UnknownStep(step),
        other => ActionError::Conflict(other.to_string()),
    })?;
    ctx.effects.queue.send(message.sub_step.family(), &message, 0).await?;
    tracing::info!(exchangeId = %id, stepId = %step_id, attempt = message.attempt, requestedBy = requested_by, "manual retry requested");
    Ok(message.attempt)
}

/// `POST /exchanges/{id}/signoff`: the requester signs a waiting exchange off; its
/// `ExchangeSignoff` runs and the exchange completes. Signing off twice changes nothing.
pub async fn sign_off(ctx: &Recovering<'_>, id: &ExchangeId, signed_off_by: &str) -> Result<StepId, ActionError> {
    let detail = load(ctx, id).await?;
    let message =
        operator::requester_signoff(&detail, signed_off_by).map_err(|e| ActionError::Conflict(e.to_string()))?;
    ctx.effects.queue.send(message.sub_step.family(), &message, 0).await?;
    tracing::info!(exchangeId = %id, signedOffBy = signed_off_by, "signed off by the requester");
    Ok(message.step_id)
}

/// A failed secondary destination of a Completed exchange runs again (same
/// `Idempotency-Key`, a fresh run under its retry policy); its outcome shows in the
/// exchange's `destinations`.
async fn reexecute(
    ctx: &Recovering<'_>,
    detail: &ExchangeDetail,
    step_id: StepId,
    requested_by: &str,
) -> Result<u32, ActionError> {
    let exchange = &detail.exchange;
    let loaded = ctx
        .definitions
        .get(&exchange.integration_code, exchange.integration_version)
        .await
        .map_err(|e| match e {
            DefinitionLoadError::Port(port) => ActionError::Port(port),
            corrupt => ActionError::Conflict(corrupt.to_string()),
        })?
        .ok_or_else(|| {
            ActionError::Conflict(format!(
                "version {} of the integration no longer exists",
                exchange.integration_version
            ))
        })?;
    let now = ctx.effects.clock.now();
    let (reset, message) = operator::reexecute_secondary(loaded.pipeline(), detail, step_id, requested_by, now)
        .map_err(|e| match e {
            ManualRetryError::UnknownStep(step) => ActionError::UnknownStep(step),
            other => ActionError::Conflict(other.to_string()),
        })?;
    if let Some(reset) = reset {
        if ctx.writes.try_reexecute(&reset).await?.is_err() {
            return Err(ActionError::Conflict(
                "the exchange changed while the step was being reset; read it again".into(),
            ));
        }
    }
    // Sent after the reset; if the send fails, asking again sends it (the step waits, reset).
    ctx.effects.queue.send(message.sub_step.family(), &message, 0).await?;
    tracing::info!(exchangeId = %exchange.exchange_id, stepId = %step_id, requestedBy = requested_by, "secondary destination re-executed");
    Ok(message.attempt)
}
