//! Operator actions on an exchange: recover a Failed/TimedOut exchange (optionally onto
//! another version), and retry a retrying step now. One piece of code for the API and
//! the error-processing job.

use crate::context::AppContext;
use crate::invoke::sla_timer;
use crate::subflow::failed_children;
use crate::worker::{delay_until, MAX_SQS_DELAY_SECONDS};
use chrono::Utc;
use handoff_core::commit::{CommitOutcome, RecoveryCommit};
use handoff_core::exchange::ExchangeDetail;
use handoff_core::exchange::StepStatus;
use handoff_core::handoff::{outbox_entry, HandoffMessage};
use handoff_core::ids::{ExchangeId, IntegrationVersion, StepId};
use handoff_core::plan::SubStep;
use handoff_core::recovery::{check_compatible, input_before, resume_point, RecoveryError};
use handoff_ports::PortError;

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

async fn load(ctx: &AppContext, id: &ExchangeId) -> Result<ExchangeDetail, ActionError> {
    ctx.exchanges.get(id).await?.ok_or_else(|| ActionError::UnknownExchange(id.clone()))
}

/// What a recovery did.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub resumed_at: StepId,
    pub integration_version: IntegrationVersion,
    pub recoveries: u32,
}

pub async fn recover_exchange(
    ctx: &AppContext,
    id: &ExchangeId,
    onto_version: Option<IntegrationVersion>,
) -> Result<Recovered, ActionError> {
    let detail = load(ctx, id).await?;
    let exchange = &detail.exchange;
    let point = resume_point(exchange.status, exchange.error.as_ref().and_then(|e| e.step_id), &detail.steps)
        .map_err(|e| ActionError::Conflict(e.to_string()))?;
    let current = ctx
        .definitions
        .get(&exchange.integration_code, exchange.integration_version)
        .await
        .map_err(|e| ActionError::Conflict(e.to_string()))?
        .ok_or_else(|| {
            ActionError::Conflict(format!(
                "version {} of the integration no longer exists",
                exchange.integration_version
            ))
        })?;
    let target = match onto_version.filter(|v| *v != exchange.integration_version) {
        None => current.clone(),
        Some(version) => {
            let candidate = ctx
                .definitions
                .get(&exchange.integration_code, version)
                .await
                .map_err(|e| ActionError::Conflict(e.to_string()))?
                .ok_or_else(|| {
                    ActionError::UnknownVersion(format!(
                        "integration {} has no version {version}",
                        exchange.integration_code
                    ))
                })?;
            check_compatible(&current.plan, &candidate.plan).map_err(|problem| {
                ActionError::Conflict(
                    RecoveryError::IncompatibleVersion { version: version.to_string(), problem }.to_string(),
                )
            })?;
            candidate
        }
    };
    let now = Utc::now();
    // A subflow that failed because sub-exchanges failed re-drives only those.
    let resume_sub_step = target.plan[point.step_id.sequence() as usize].sub_step;
    let redrive = if resume_sub_step == SubStep::ControlSubflow {
        failed_children(ctx, id, point.step_id).await?
    } else {
        Vec::new()
    };
    let recoveries = exchange.recoveries + 1;
    let planned = &target.plan[point.step_id.sequence() as usize];
    let message = HandoffMessage {
        exchange_id: id.clone(),
        integration_code: exchange.integration_code.clone(),
        integration_version: target.stored.version,
        step_id: point.step_id,
        sub_step: planned.sub_step,
        attempt: 1,
        input: point.input,
        parameters: exchange.parameters.clone(),
        not_before: None,
        recovery: recoveries,
        parent: exchange.parent.clone(),
    };
    // The resume handoff and the new SLA are stored with the recovery itself: a crash after
    // the commit leaves them to the regular job instead of losing them.
    let mut recovered = exchange.clone();
    recovered.recoveries = recoveries;
    let outbox = outbox_entry(&message, now, ctx.settings.outbox_delay);
    let sla = sla_timer(&recovered, target.definition.sla_seconds, now);
    let commit = RecoveryCommit {
        exchange_id: id.clone(),
        recovery: exchange.recoveries,
        integration_version: onto_version.filter(|v| *v != exchange.integration_version),
        reset: point.reset.clone(),
        clear_sub_failures: (resume_sub_step == SubStep::ControlSubflow).then_some(point.step_id),
        timers: std::iter::once(outbox.clone()).chain(sla.clone()).collect(),
        now,
    };
    if ctx.exchanges.recover(&commit).await? == CommitOutcome::Conflict {
        return Err(ActionError::Conflict("the exchange changed while it was being recovered; read it again".into()));
    }
    for child in &redrive {
        // Boxed: sub-exchanges may themselves be subflows.
        if let Err(e) = Box::pin(recover_exchange(ctx, child, None)).await {
            tracing::warn!(exchangeId = %id, child = %child, error = %e, "a failed sub-exchange could not be re-driven");
        }
    }
    match ctx.queue.send(planned.sub_step.family(), &message, 0).await {
        Ok(()) => {
            if let Err(e) = ctx.exchanges.take_timer(&outbox).await {
                tracing::warn!(exchangeId = %id, error = %e, "recovery handed on; its outbox entry stays and will send a harmless duplicate");
            }
        }
        Err(e) => {
            tracing::warn!(exchangeId = %id, error = %e, "recovery committed; the regular job hands it on from the outbox")
        }
    }
    // The stored SLA timer is swept when due; one due soon also goes now, for precision.
    if let Some(sla) = sla.filter(|t| (t.due - now).num_seconds() <= MAX_SQS_DELAY_SECONDS) {
        if let Err(e) = ctx.queue.send_timer(&sla, delay_until(now, sla.due)).await {
            tracing::warn!(exchangeId = %id, error = %e, "the SLA timer waits for the regular job");
        }
    }
    tracing::info!(exchangeId = %id, resumedAt = %point.step_id, recoveries, "exchange recovered");
    Ok(Recovered { resumed_at: point.step_id, integration_version: target.stored.version, recoveries })
}

/// A manual retry of a step waiting for its next automatic attempt: that attempt runs now
/// (and counts); the scheduled one then finds it done and changes nothing.
pub async fn retry_step_now(ctx: &AppContext, id: &ExchangeId, step_id: StepId) -> Result<u32, ActionError> {
    let detail = load(ctx, id).await?;
    let index = detail.steps.iter().position(|s| s.step_id == step_id).ok_or(ActionError::UnknownStep(step_id))?;
    let step = &detail.steps[index];
    if detail.exchange.status.is_final() {
        return Err(ActionError::Conflict(format!(
            "the exchange is {:?}; recover it instead (POST /exchanges/{id}/recover)",
            detail.exchange.status
        )));
    }
    if step.status != StepStatus::Initial || step.next_retry_at.is_none() {
        return Err(ActionError::Conflict(format!("step {step_id} is not waiting for a retry")));
    }
    let attempt = step.attempts + 1;
    let message = HandoffMessage {
        exchange_id: id.clone(),
        integration_code: detail.exchange.integration_code.clone(),
        integration_version: detail.exchange.integration_version,
        step_id,
        sub_step: step.sub_step,
        attempt,
        input: input_before(&detail.steps, index),
        parameters: detail.exchange.parameters.clone(),
        not_before: None,
        recovery: detail.exchange.recoveries,
        parent: detail.exchange.parent.clone(),
    };
    ctx.queue.send(step.sub_step.family(), &message, 0).await?;
    tracing::info!(exchangeId = %id, stepId = %step_id, attempt, "manual retry requested");
    Ok(attempt)
}
