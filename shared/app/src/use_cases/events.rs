//! Event queues (issue 10, point 3): events sent to an endpoint are kept or counted as
//! discarded by its `queueStatus`, listed for operators, and taken by the exchanges of its
//! event-based integration — one exchange at a time, the latest per key
//! ([`handoff_core::events`] decides; this carries it out).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use handoff_core::definition::{declares_events, EventsSpec};
use handoff_core::endpoint::QueueStatus;
use handoff_core::events::{
    claim_fate, parse_events, select, ClaimFate, EventClaim, QueuedEvent, MAX_EVENTS_CONSIDERED,
};
use handoff_core::ids::{ExchangeId, IntegrationCode};
use handoff_core::reader::FieldError;
use handoff_ports::{
    Clock, EndpointStore, EventClaimError, EventQueue, EventQueueSummary, ExchangeReads, IntegrationRepository,
    PortError, StoredIntegration,
};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("integration {0} does not exist")]
    NotFound(IntegrationCode),
    #[error(
        "integration {0} takes no events: a version must declare \"events\": {{\"maxPerExchange\": N}} to run on them"
    )]
    NotEventBased(IntegrationCode),
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The ports the events API uses.
pub struct EventIntake<'a> {
    pub integrations: &'a dyn IntegrationRepository,
    pub endpoints: &'a dyn EndpointStore,
    pub events: &'a dyn EventQueue,
    pub clock: &'a dyn Clock,
}

impl<'a> EventIntake<'a> {
    pub fn of(ctx: &'a crate::context::AppContext) -> Self {
        Self {
            integrations: ctx.ports.integrations.as_ref(),
            endpoints: ctx.ports.endpoints.as_ref(),
            events: ctx.ports.events.as_ref(),
            clock: ctx.ports.clock.as_ref(),
        }
    }
}

/// What became of the events of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Kept, in this order.
    Kept(Vec<QueuedEvent>),
    /// Dropped and counted: the endpoint discards events.
    Discarded(usize),
}

/// Whether a code with these versions takes events: one of them declares `events` (so an
/// endpoint keeps its queue while a new version is prepared).
pub fn is_event_based(versions: &[StoredIntegration]) -> bool {
    versions.iter().any(|v| declares_events(&v.document))
}

/// The code exists and one of its versions is event-based.
async fn event_based(ctx: &EventIntake<'_>, code: &IntegrationCode) -> Result<(), EventsError> {
    let versions = ctx.integrations.versions(code).await?;
    if versions.is_empty() {
        return Err(EventsError::NotFound(code.clone()));
    }
    if !is_event_based(&versions) {
        return Err(EventsError::NotEventBased(code.clone()));
    }
    Ok(())
}

/// `POST /integrations/{code}/events`: keeps the events (durably, before answering) or,
/// when the endpoint discards events, counts them. Events arrive whatever the endpoint's
/// status: they wait while it is Disabled or Failed.
pub async fn receive_events(
    ctx: &EventIntake<'_>,
    code: &IntegrationCode,
    body: &Value,
    request_id: &str,
) -> Result<Received, EventsError> {
    let events = parse_events(body)?;
    event_based(ctx, code).await?;
    let queue_status = ctx.endpoints.endpoint(code).await?.map(|e| e.queue_status).unwrap_or_default();
    match queue_status {
        QueueStatus::DiscardEvents => {
            ctx.events.count_discarded(code, events.len() as u64).await?;
            Ok(Received::Discarded(events.len()))
        }
        QueueStatus::ReadEvents => {
            let queued = QueuedEvent::queue(events, ctx.clock.now(), request_id);
            ctx.events.append(code, &queued).await?;
            Ok(Received::Kept(queued))
        }
    }
}

/// An endpoint's queue as operators read it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    pub summary: EventQueueSummary,
    pub items: Vec<QueuedEvent>,
    pub next: Option<String>,
    /// The exchange that holds the events it took, and which.
    pub claim: Option<EventClaim>,
    pub now: DateTime<Utc>,
}

/// `GET /integrations/{code}/events`.
pub async fn queue_view(
    ctx: &EventIntake<'_>,
    code: &IntegrationCode,
    limit: usize,
    after: Option<&str>,
) -> Result<QueueView, EventsError> {
    event_based(ctx, code).await?;
    let summary = ctx.events.summary(code).await?;
    let (items, next) = ctx.events.pending(code, limit, after).await?;
    let claim = ctx.events.claim(code).await?;
    Ok(QueueView { summary, items, next, claim, now: ctx.clock.now() })
}

/// What an exchange about to start took from its endpoint's queue.
#[derive(Debug, Clone, PartialEq)]
pub struct TakenEvents {
    /// Its input: a JSON array of the events.
    pub input: Bytes,
    pub count: usize,
}

/// Why an event-based run does not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventsRefusal {
    /// Another exchange holds the endpoint's events (running, or failed and to be recovered).
    #[error("{0}")]
    Busy(String),
    #[error("no pending events")]
    NonePending,
}

/// Takes up to `spec.max_per_exchange` pending events for `exchange_id`, under a claim no
/// other exchange can take meanwhile. A claim left by an exchange that completed (its
/// consumption interrupted) is consumed first; one whose exchange never came to be is let go.
pub async fn take_events(
    queue: &dyn EventQueue,
    exchanges: &dyn ExchangeReads,
    code: &IntegrationCode,
    spec: EventsSpec,
    exchange_id: &ExchangeId,
    now: DateTime<Utc>,
) -> Result<Result<TakenEvents, EventsRefusal>, PortError> {
    if let Some(claim) = queue.claim(code).await? {
        let status = exchanges.get(&claim.exchange_id).await?.map(|d| d.exchange.status);
        match claim_fate(&claim, status, now) {
            ClaimFate::Consume => queue.consume(code, &claim).await?,
            ClaimFate::Abandon => {
                tracing::warn!(integrationCode = %code, exchangeId = %claim.exchange_id, "event claim of an exchange that never started let go");
                queue.let_go(code, &claim).await?
            }
            ClaimFate::Keep { reason } => return Ok(Err(EventsRefusal::Busy(reason))),
        }
    }
    let (pending, _) = queue.pending(code, MAX_EVENTS_CONSIDERED, None).await?;
    let selection = select(&pending, spec.max_per_exchange as usize);
    if selection.input.is_empty() {
        return Ok(Err(EventsRefusal::NonePending));
    }
    let claim = EventClaim { exchange_id: exchange_id.clone(), taken: selection.taken, claimed_at: now };
    match queue.take(code, &claim).await {
        Ok(()) => {}
        Err(EventClaimError::Taken) => {
            return Ok(Err(EventsRefusal::Busy("another exchange has just taken the pending events".into())))
        }
        Err(EventClaimError::Port(e)) => return Err(e),
    }
    let input: Vec<Value> = selection.input.iter().map(QueuedEvent::as_input).collect();
    Ok(Ok(TakenEvents { input: Bytes::from(Value::Array(input).to_string()), count: selection.input.len() }))
}
