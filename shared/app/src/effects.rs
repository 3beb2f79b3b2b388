//! The one effects runner: carries out what a core decision says follows its write, in order.

use crate::sub_exchanges::children;
use handoff_core::commit::StepCommit;
use handoff_core::endpoint::{observe, Endpoint, EndpointLogEntry, EndpointStatus, Observation};
use handoff_core::exchange::{ParentLink, StepStatus};
use handoff_core::handoff::{HandoffMessage, Timer, TimerKind};
use handoff_core::ids::ExchangeId;
use handoff_core::ids::{IntegrationCode, IntegrationVersion};
use handoff_core::machine::Effect;
use handoff_core::plan::{SubStep, WorkerFamily};
use handoff_ports::{EndpointStore, EndpointWriteError, PortError, PortResult};

pub use crate::context::EffectPorts;

/// Runs `effects` once their decision's write has applied. An error leaves the rest unrun;
/// the caller's message then comes back and the state machine sends again what is missing.
pub async fn run_effects(ports: EffectPorts<'_>, effects: Vec<Effect>) -> PortResult<()> {
    for effect in effects {
        match effect {
            Effect::Send { family, message, delay } => ports.queue.send(family, &message, delay).await?,
            Effect::SendTimer { timer, delay } => ports.queue.send_timer(&timer, delay).await?,
            Effect::ResumeParentIfLast(link) => resume_parent_if_last(ports, &link).await?,
            Effect::TimeOutChildren(exchange_id) => time_out_children(ports, &exchange_id).await?,
            Effect::Observe { code, version, observation, event_based } => {
                observe_endpoint(ports, &code, version, &observation, event_based).await
            }
            Effect::ConsumeEvents { code, exchange_id } => consume_events(ports, &code, &exchange_id).await?,
        }
    }
    Ok(())
}

/// What follows a decision whose write applied: its effects, then telling of the write
/// ([`crate::telling::commit_applied`]). Telling comes last, so the next handoff or an
/// endpoint's halt never waits on an error tracker or a webhook; and it comes even when an
/// effect failed, as the message that comes back finds the write made and tells nothing.
pub async fn after_applied(
    ports: EffectPorts<'_>,
    code: &IntegrationCode,
    version: IntegrationVersion,
    commit: &StepCommit,
    effects: Vec<Effect>,
) -> PortResult<()> {
    let ran = run_effects(ports, effects).await;
    crate::telling::commit_applied(ports, code, version, commit).await;
    ran
}

/// An event exchange completed: the events it took leave the queue. The claim is checked to
/// be this exchange's (a claim found on a Completed exchange is consumed by the next
/// invocation too, should this not run). An error sends the message back, and it repeats.
async fn consume_events(ports: EffectPorts<'_>, code: &IntegrationCode, exchange_id: &ExchangeId) -> PortResult<()> {
    match ports.events.claim(code).await? {
        Some(claim) if claim.exchange_id == *exchange_id => {
            ports.events.consume(code, &claim).await?;
            tracing::info!(integrationCode = %code, exchangeId = %exchange_id, events = claim.taken.len(), "events consumed");
            Ok(())
        }
        _ => Ok(()),
    }
}

/// After a sub-exchange counted itself: if it completed the count, hand the parent on.
/// Several may see the count complete; the parent's step takes only the first.
pub async fn resume_parent_if_last(app: EffectPorts<'_>, link: &ParentLink) -> Result<(), PortError> {
    let Some(step) = app.exchanges.get_step(&link.exchange_id, link.step_id).await? else {
        return Ok(());
    };
    if step.status != StepStatus::Initial || !step.sub_exchanges.is_some_and(|c| c.all_final()) {
        return Ok(());
    }
    let Some(parent) = app.exchanges.get(&link.exchange_id).await? else {
        return Ok(());
    };
    if parent.exchange.status.is_final() {
        return Ok(());
    }
    let message = HandoffMessage::at_step(&parent.exchange, link.step_id, SubStep::ControlSubflow, 1, None);
    tracing::info!(parent = %link.exchange_id, "last sub-exchange ended; parent resumes");
    app.queue.send(WorkerFamily::Control, &message, 0).await
}

/// A parent that timed out takes its running sub-exchanges (and theirs) with it.
pub async fn time_out_children(app: EffectPorts<'_>, parent: &ExchangeId) -> Result<(), PortError> {
    let now = app.clock.now();
    for child in children(app.exchanges, parent).await? {
        if child.status.is_final() {
            continue;
        }
        let timer = Timer {
            exchange_id: child.exchange_id.clone(),
            recovery: child.recoveries,
            due: now,
            kind: TimerKind::ParentTimedOut { parent: parent.clone() },
        };
        app.queue.send_timer(&timer, 0).await?;
    }
    Ok(())
}

/// How often an observation is decided again when the endpoint changes under it.
const OBSERVE_ATTEMPTS: usize = 3;

/// Shows on `code`'s endpoint what an attempt told of it (and halts it if its policy says
/// so). The exchange's own state is already written: an endpoint that cannot be updated
/// is logged, never a reason to run the message again (its commit would not repeat).
async fn observe_endpoint(
    ports: EffectPorts<'_>,
    code: &IntegrationCode,
    version: IntegrationVersion,
    observation: &Observation,
    event_based: bool,
) {
    for _ in 0..OBSERVE_ATTEMPTS {
        let now = ports.clock.now();
        let stored = match ports.endpoints.endpoint(code).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(integrationCode = %code, error = %e, "endpoint not updated: it could not be read");
                return;
            }
        };
        // A code from before endpoints gets its endpoint stored at its first change.
        let current = stored.unwrap_or_else(|| Endpoint::unrecorded(code.clone(), now));
        let Some(next) = observe(&current, observation, event_based, now) else { return };
        match ports.endpoints.save_endpoint(&next).await {
            Ok(saved) => {
                tracing::info!(integrationCode = %code, status = saved.status.name(), reason = saved.reason.as_deref().unwrap_or(""), "endpoint status");
                log_status_change(ports.endpoints, &current, &saved).await;
                if let (Observation::Failed(failure), true) = (observation, halted(&current, &saved)) {
                    crate::telling::endpoint_halted(ports, code, version, &failure.exchange_id, failure.code).await;
                }
                return;
            }
            Err(EndpointWriteError::RevisionConflict) => continue,
            Err(EndpointWriteError::Port(e)) => {
                tracing::error!(integrationCode = %code, error = %e, "endpoint not updated");
                return;
            }
        }
    }
    tracing::warn!(integrationCode = %code, "endpoint not updated: it kept changing");
}

/// Whether the change from `before` to `after` halted the endpoint.
fn halted(before: &Endpoint, after: &Endpoint) -> bool {
    before.status != EndpointStatus::Failed && after.status == EndpointStatus::Failed
}

/// Adds the status change from `before` to `after` to the endpoint log (if the status
/// changed). The log is for people: a line that cannot be written is logged, and that is all.
pub async fn log_status_change(endpoints: &dyn EndpointStore, before: &Endpoint, after: &Endpoint) {
    let Some(entry) = EndpointLogEntry::status_change(before, after) else { return };
    if let Err(e) = endpoints.append_log(&after.code, &entry, None).await {
        tracing::warn!(integrationCode = %after.code, error = %e, "endpoint log line not written");
    }
}

/// What [`handoff_core::machine::conflict::after_stale`] says to send again (a lost resume of a parent), run.
pub(crate) async fn resend_if_stale(
    ports: EffectPorts<'_>,
    decided: handoff_core::machine::conflict::AfterConflict,
) -> PortResult<()> {
    match decided {
        handoff_core::machine::conflict::AfterConflict::Resend(effect, reason) => {
            tracing::info!(reason, "sent again");
            run_effects(ports, vec![*effect]).await
        }
        _ => Ok(()),
    }
}
