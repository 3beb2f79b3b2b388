//! Holding an endpoint: an operator enables, disables or resumes an integration code. The
//! core decides ([`handoff_core::endpoint::operate`]); the endpoint is stored under the
//! revision it was read at, and the code's schedule follows (armed while it runs, removed
//! while it is held). Handoffs held meanwhile go out again once it runs.

use crate::effects::log_status_change;
use crate::use_cases::integrations::{endpoint_of, sync_schedule, Integrations, ScheduleState};
use chrono::DateTime;
use chrono::Utc;
use handoff_core::endpoint::{operate, Endpoint, EndpointChange, EndpointCommand, EndpointCommandError};
use handoff_core::endpoint::{OnSystemFailure, QueueStatus};
use handoff_core::ids::{ExchangeId, IntegrationCode};
use handoff_ports::{EndpointStore, EndpointWriteError, HandoffQueue, PortError};

/// How often a command is decided again when the endpoint changed under it.
const ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("integration {0} does not exist")]
    NotFound(IntegrationCode),
    #[error(transparent)]
    Refused(#[from] EndpointCommandError),
    #[error("integration {0}'s endpoint kept changing while this request was decided; try again")]
    Contended(IntegrationCode),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The endpoint after a command, and its code's schedule.
#[derive(Debug)]
pub struct Operated {
    pub endpoint: Endpoint,
    /// Whether the command changed anything (an endpoint already enabled stays as it is).
    pub changed: bool,
    pub schedule: ScheduleState,
    /// Held handoffs sent on again.
    pub released: usize,
    /// A resumed endpoint: the exchanges whose failures had halted it.
    pub halted_by: Vec<ExchangeId>,
}

/// Carries out `command` on `code`'s endpoint on behalf of `by`.
pub async fn operate_endpoint(
    ctx: &Integrations<'_>,
    code: &IntegrationCode,
    command: EndpointCommand,
    by: &str,
    reason: Option<&str>,
) -> Result<Operated, EndpointError> {
    let (before, saved) =
        change_endpoint(ctx, code, |endpoint| match operate(endpoint, command, by, reason, ctx.clock.now())? {
            EndpointChange::Unchanged => Ok(None),
            EndpointChange::To(next) => Ok(Some(*next)),
        })
        .await?;
    let changed = saved.is_some();
    if let Some(saved) = &saved {
        log_status_change(ctx.endpoints, &before, saved).await;
        tracing::info!(integrationCode = %code, status = saved.status.name(), changedBy = by, command = command.name(), "endpoint status changed");
    }
    let halted_by = if command == EndpointCommand::Resume { before.halted_by.clone() } else { Vec::new() };
    let endpoint = saved.unwrap_or(before);
    // Also when unchanged: a schedule left out of step by an earlier failure is set right,
    // and handoffs a crash left held go out.
    let schedule = sync_schedule(ctx, code, &endpoint).await;
    let released = if endpoint.status.runs() { release_held(ctx.endpoints, ctx.queue, code, None).await? } else { 0 };
    Ok(Operated { endpoint, changed, schedule, released, halted_by })
}

/// Reads `code`'s endpoint, lets `decide` say what it becomes (`None`: it stays), and stores
/// that under the revision read — deciding again on the endpoint as it then stands when it
/// changed meanwhile. The endpoint as last read, and as stored if it changed.
async fn change_endpoint(
    ctx: &Integrations<'_>,
    code: &IntegrationCode,
    mut decide: impl FnMut(&Endpoint) -> Result<Option<Endpoint>, EndpointError>,
) -> Result<(Endpoint, Option<Endpoint>), EndpointError> {
    for _ in 0..ATTEMPTS {
        let endpoint = endpoint_of(ctx.endpoints, ctx.integrations, code)
            .await?
            .ok_or_else(|| EndpointError::NotFound(code.clone()))?;
        let Some(next) = decide(&endpoint)? else { return Ok((endpoint, None)) };
        match ctx.endpoints.save_endpoint(&next).await {
            Ok(saved) => return Ok((endpoint, Some(saved))),
            Err(EndpointWriteError::RevisionConflict) => continue,
            Err(EndpointWriteError::Port(e)) => return Err(e.into()),
        }
    }
    Err(EndpointError::Contended(code.clone()))
}

/// Sends on every handoff held at `code` (the endpoint runs again) — only those held before
/// `held_before`, if given — each forgotten only once sent: a crash in between sends it
/// again later, and the duplicate changes nothing.
pub(crate) async fn release_held(
    endpoints: &dyn EndpointStore,
    queue: &dyn HandoffQueue,
    code: &IntegrationCode,
    held_before: Option<DateTime<Utc>>,
) -> Result<usize, PortError> {
    let mut held = endpoints.held(code).await?;
    held.retain(|h| held_before.is_none_or(|before| h.held_at < before));
    for handoff in &held {
        queue.send(handoff.message.sub_step.family(), &handoff.message, 0).await?;
        endpoints.release(handoff).await?;
    }
    if !held.is_empty() {
        tracing::info!(integrationCode = %code, released = held.len(), "held handoffs sent on");
    }
    Ok(held.len())
}

/// Changes how `code`'s endpoint treats system failures and events (`PATCH
/// /integrations/{code}`); `None` leaves a setting as it is.
pub async fn configure_endpoint(
    ctx: &Integrations<'_>,
    code: &IntegrationCode,
    on_system_failure: Option<OnSystemFailure>,
    queue_status: Option<QueueStatus>,
) -> Result<Endpoint, EndpointError> {
    let (current, saved) = change_endpoint(ctx, code, |endpoint| {
        let next = Endpoint {
            on_system_failure: on_system_failure.or(endpoint.on_system_failure),
            queue_status: queue_status.unwrap_or(endpoint.queue_status),
            ..endpoint.clone()
        };
        Ok((next != *endpoint).then_some(next))
    })
    .await?;
    Ok(saved.unwrap_or(current))
}
