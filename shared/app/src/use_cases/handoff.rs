//! Handling one handoff message (a sub-step worker): it claims the step (side effects
//! only), executes, and records the outcome as the state machine
//! ([`handoff_core::machine`]) decides — ONE conditional write, then its effects (the next
//! handoff, a retry, a timer). Duplicate, late and stale messages change nothing.
//!
//! It takes the whole [`AppContext`]: the executors between claim and commit use every port
//! but the schedules.

use crate::context::AppContext;
use crate::definitions::LoadedIntegration;
use crate::effects::{after_applied, run_effects};
use crate::executors::{Execute, ExecutionContext};
use chrono::{Duration as ChronoDuration, Utc};
use handoff_core::commit::{claim_lease_until, ClaimRequest, Conflict};
use handoff_core::endpoint::hold;
use handoff_core::exchange::LogLine;
use handoff_core::handoff::HandoffMessage;
use handoff_core::ids::StepId;
use handoff_core::machine::conflict::{self, AfterConflict};
use handoff_core::machine::{attempt, delay_until, Decision};
use handoff_core::plan::WorkerFamily;
use handoff_ports::{EndpointWriteError, PortError};

/// Errors that leave the message on the queue for another try (infrastructure trouble).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("handoff message is not valid: {0}")]
    BadMessage(String),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("integration definition unavailable: {0}")]
    Definition(String),
    #[error("step {0} is being worked on by another attempt; try again later")]
    InFlightElsewhere(StepId),
    #[error("the endpoint kept changing while deciding whether to hold; try again later")]
    EndpointChanging,
}

/// Handles one handoff message arrived at the `family` worker.
pub async fn handle_handoff(
    ctx: &AppContext,
    family: WorkerFamily,
    execute: Execute,
    message: HandoffMessage,
) -> Result<(), WorkerError> {
    let now = ctx.ports.clock.now();
    if let Some(due) = message.not_before.filter(|due| *due > now) {
        // Sent early (whole-second delays): wait out the rest.
        return Ok(ctx.ports.queue.send(family, &message, delay_until(now, due)).await?);
    }
    let loaded = ctx
        .definitions
        .get(&message.integration_code, message.integration_version)
        .await
        .map_err(|e| WorkerError::Definition(e.to_string()))?
        .ok_or_else(|| {
            WorkerError::Definition(format!(
                "integration {} version {} does not exist",
                message.integration_code, message.integration_version
            ))
        })?;
    let pipeline = loaded.pipeline();
    let planned = pipeline.planned(message.step_id).filter(|p| p.sub_step == message.sub_step).ok_or_else(|| {
        WorkerError::BadMessage(format!("step {} is not a {} in the plan", message.step_id, message.sub_step))
    })?;
    if planned.sub_step.family() != family {
        return Err(WorkerError::BadMessage(format!("{} arrived at the {} worker", planned.sub_step, family.name())));
    }
    // The policy in force now: a lowered maximum ends a retrying step before it runs again.
    if let Some(decision) = attempt::beyond_policy(pipeline, planned, &message, now) {
        return apply(ctx, &message, &loaded, decision).await;
    }

    if planned.sub_step.sends_data_out() && held(ctx, &message, now).await? {
        return Ok(());
    }

    let claimed = planned.sub_step.has_external_effect();
    if claimed {
        let lease = ChronoDuration::from_std(ctx.settings.claim_lease).unwrap_or(ChronoDuration::seconds(60));
        let request = ClaimRequest {
            exchange_id: message.exchange_id.clone(),
            step: message.step_id,
            attempt: message.attempt,
            recovery: message.recovery,
            requires: message.exchange_requirement(),
            now,
            lease_until: claim_lease_until(now, lease),
        };
        let claim = ctx.ports.exchanges.try_claim(&request).await?;
        if let Err(conflict) = claim {
            return after_conflict(ctx, &message, &loaded, conflict).await;
        }
    }
    tracing::info!("sub-step started");
    let codec = ctx.codec();
    let started = std::time::Instant::now();
    let started_at = ctx.ports.clock.now();
    let execution = execute(&ExecutionContext {
        app: ctx,
        http: &ctx.http,
        codec: &codec,
        loaded: &loaded,
        planned,
        message: &message,
    })
    .await;
    crate::metrics::attempt_ran(planned.sub_step, started.elapsed());
    let now = ctx.ports.clock.now();
    let logs = execution
        .logs
        .into_iter()
        .map(|(kind, line)| LogLine { kind, line, timestamp: now, step_id: message.step_id })
        .collect();
    let attempt = attempt::Attempt {
        claimed,
        outcome: execution.outcome,
        logs,
        pass_on: execution.pass_on,
        recorded: execution.recorded,
        started_at: Some(started_at),
    };
    let decision = attempt::attempt_finished(pipeline, planned, &message, attempt, random_unit(), now);
    apply(ctx, &message, &loaded, decision).await
}

/// How often holding is decided again when the endpoint changes under it.
const HOLD_ATTEMPTS: usize = 3;

/// Whether `message` is held at its endpoint (Disabled or Failed): kept, with no attempt
/// used, until the endpoint runs again. An endpoint that changes meanwhile is read again.
async fn held(ctx: &AppContext, message: &HandoffMessage, now: chrono::DateTime<Utc>) -> Result<bool, WorkerError> {
    for _ in 0..HOLD_ATTEMPTS {
        let endpoint = ctx.ports.endpoints.endpoint(&message.integration_code).await?;
        let (Some(endpoint), Some(held)) = (endpoint.as_ref(), hold(endpoint.as_ref(), message, now)) else {
            return Ok(false);
        };
        match ctx.ports.endpoints.hold(&held, endpoint.revision).await {
            Ok(()) => {
                tracing::warn!(reason = %held.reason, "handoff held at its endpoint");
                return Ok(true);
            }
            Err(EndpointWriteError::RevisionConflict) => continue,
            Err(EndpointWriteError::Port(e)) => return Err(e.into()),
        }
    }
    Err(WorkerError::EndpointChanging)
}

async fn apply(
    ctx: &AppContext,
    message: &HandoffMessage,
    loaded: &LoadedIntegration,
    mut decision: Decision,
) -> Result<(), WorkerError> {
    decision.commit.keep_finished_for(ctx.settings.exchange_retention);
    match ctx.ports.exchanges.try_commit(&decision.commit).await? {
        Ok(()) => {
            tracing::info!(status = ?decision.commit.step.as_ref().map(|s| s.status), "sub-step recorded");
            let (code, version) = (&message.integration_code, message.integration_version);
            Ok(after_applied(ctx.effects(), code, version, &decision.commit, decision.effects).await?)
        }
        Err(conflict) => after_conflict(ctx, message, loaded, conflict).await,
    }
}

/// Another delivery of this message (or a final or recovered exchange) got there first:
/// a failed not-final check says the message is stale; otherwise the state machine
/// decides from the exchange as it stands now.
async fn after_conflict(
    ctx: &AppContext,
    message: &HandoffMessage,
    loaded: &LoadedIntegration,
    conflict: Conflict,
) -> Result<(), WorkerError> {
    let decided = if conflict.is_stale() {
        conflict::after_stale(message.parent.as_ref())
    } else {
        tracing::debug!(failed = ?conflict.failed, "conflict");
        let detail = ctx.ports.exchanges.get(&message.exchange_id).await?;
        conflict::after_conflict(loaded.pipeline(), message, detail.as_ref(), ctx.ports.clock.now())
    };
    match decided {
        AfterConflict::Drop(reason) => {
            tracing::info!(reason, "message dropped");
            Ok(())
        }
        AfterConflict::Resend(effect, reason) => {
            tracing::info!(reason, "sent again");
            Ok(run_effects(ctx.effects(), vec![*effect]).await?)
        }
        AfterConflict::TryLater => Err(WorkerError::InFlightElsewhere(message.step_id)),
        AfterConflict::BadMessage(problem) => Err(WorkerError::BadMessage(problem)),
    }
}

/// Jitter needs randomness; the core stays pure by taking it as an argument.
fn random_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
