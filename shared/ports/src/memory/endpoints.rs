//! The in-memory fakes of an endpoint's runtime state: the endpoint, its held handoffs and
//! log, its event queue, and the unrouted messages — each under the same conditions as its
//! DynamoDB adapter.

use super::*;

/// Endpoints in memory, with the adapter's optimistic concurrency.
#[derive(Debug, Default)]
pub struct MemoryEndpoints {
    endpoints: Mutex<BTreeMap<IntegrationCode, Endpoint>>,
    /// By code, then (exchange, step, attempt).
    held: Mutex<BTreeMap<(IntegrationCode, ExchangeId, StepId, u32), HeldHandoff>>,
    /// By code, in the order appended.
    log: Mutex<BTreeMap<IntegrationCode, Vec<EndpointLogEntry>>>,
}

fn held_key(held: &HeldHandoff) -> (IntegrationCode, ExchangeId, StepId, u32) {
    let m = &held.message;
    (m.integration_code.clone(), m.exchange_id.clone(), m.step_id, m.attempt)
}

#[async_trait]
impl EndpointStore for MemoryEndpoints {
    async fn endpoint(&self, code: &IntegrationCode) -> PortResult<Option<Endpoint>> {
        Ok(lock(&self.endpoints).get(code).cloned())
    }
    async fn save_endpoint(&self, endpoint: &Endpoint) -> Result<Endpoint, EndpointWriteError> {
        let mut endpoints = lock(&self.endpoints);
        let current = endpoints.get(&endpoint.code).map_or(0, |e| e.revision);
        if current != endpoint.revision {
            return Err(EndpointWriteError::RevisionConflict);
        }
        let stored = Endpoint { revision: endpoint.revision + 1, ..endpoint.clone() };
        endpoints.insert(endpoint.code.clone(), stored.clone());
        Ok(stored)
    }
    async fn hold(&self, held: &HeldHandoff, endpoint_revision: u64) -> Result<(), EndpointWriteError> {
        // Both locks, endpoints first (as everywhere): the check and the write are one step.
        let endpoints = lock(&self.endpoints);
        let still_held = endpoints
            .get(&held.message.integration_code)
            .is_some_and(|e| e.revision == endpoint_revision && !e.status.runs());
        if !still_held {
            return Err(EndpointWriteError::RevisionConflict);
        }
        lock(&self.held).insert(held_key(held), held.clone());
        Ok(())
    }
    async fn held(&self, code: &IntegrationCode) -> PortResult<Vec<HeldHandoff>> {
        let mut held: Vec<HeldHandoff> =
            lock(&self.held).iter().filter(|(key, _)| &key.0 == code).map(|(_, h)| h.clone()).collect();
        held.sort_by_key(|h| h.held_at);
        Ok(held)
    }
    async fn release(&self, held: &HeldHandoff) -> PortResult<()> {
        lock(&self.held).remove(&held_key(held));
        Ok(())
    }
    async fn append_log(
        &self,
        code: &IntegrationCode,
        entry: &EndpointLogEntry,
        _expires_at: Option<DateTime<Utc>>,
    ) -> PortResult<()> {
        lock(&self.log).entry(code.clone()).or_default().push(entry.clone());
        Ok(())
    }
    async fn log(
        &self,
        code: &IntegrationCode,
        limit: u32,
        cursor: Option<&str>,
    ) -> PortResult<(Vec<EndpointLogEntry>, Option<String>)> {
        // Newest first; the cursor is how many lines were handed out already.
        let mut lines = lock(&self.log).get(code).cloned().unwrap_or_default();
        lines.sort_by_key(|l| std::cmp::Reverse(l.at));
        let skip = match cursor.filter(|c| !c.is_empty()) {
            None => 0,
            Some(c) => c.parse::<usize>().map_err(|_| PortError::InvalidCursor("invalid cursor".into()))?,
        };
        let page: Vec<EndpointLogEntry> = lines.iter().skip(skip).take(limit.max(1) as usize).cloned().collect();
        let next = (skip + page.len() < lines.len()).then(|| (skip + page.len()).to_string());
        Ok((page, next))
    }
}

/// Unrouted messages in memory, by id (time-ordered): kept once, replays written only over
/// the replay read, as the adapter's conditional writes. Expiry is not played.
#[derive(Debug, Default)]
pub struct MemoryUnrouted {
    messages: Mutex<BTreeMap<UnroutedId, UnroutedMessage>>,
}

#[async_trait]
impl UnroutedStore for MemoryUnrouted {
    async fn keep(
        &self,
        message: &UnroutedMessage,
        _expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), UnroutedWriteError> {
        let mut messages = lock(&self.messages);
        if messages.contains_key(&message.unrouted_id) {
            return Err(UnroutedWriteError::Conflict);
        }
        messages.insert(message.unrouted_id.clone(), message.clone());
        Ok(())
    }
    async fn unrouted(&self, id: &UnroutedId) -> PortResult<Option<UnroutedMessage>> {
        Ok(lock(&self.messages).get(id).cloned())
    }
    async fn list_unrouted(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> PortResult<(Vec<UnroutedMessage>, Option<String>)> {
        let limit = limit.max(1);
        let messages = lock(&self.messages);
        let mut page: Vec<UnroutedMessage> = messages
            .values()
            .rev()
            .filter(|m| after.is_none_or(|after| m.unrouted_id.as_str() < after))
            .take(limit + 1)
            .cloned()
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let next = if more { page.last().map(|m| m.unrouted_id.to_string()) } else { None };
        Ok((page, next))
    }
    async fn save_replay(
        &self,
        message: &UnroutedMessage,
        expected: Option<&ExchangeId>,
    ) -> Result<(), UnroutedWriteError> {
        let mut messages = lock(&self.messages);
        let Some(stored) = messages.get_mut(&message.unrouted_id) else { return Err(UnroutedWriteError::Conflict) };
        if stored.replay.as_ref().map(|r| &r.exchange_id) != expected {
            return Err(UnroutedWriteError::Conflict);
        }
        stored.replay = message.replay.clone();
        Ok(())
    }
}

/// Event queues in memory: events by position, one claim per code taken only when none
/// stands, as the adapter's conditional put.
#[derive(Debug, Default)]
pub struct MemoryEventQueues {
    events: Mutex<BTreeMap<(IntegrationCode, String), QueuedEvent>>,
    claims: Mutex<BTreeMap<IntegrationCode, EventClaim>>,
    discarded: Mutex<BTreeMap<IntegrationCode, u64>>,
}

#[async_trait]
impl EventQueue for MemoryEventQueues {
    async fn append(&self, code: &IntegrationCode, events: &[QueuedEvent]) -> PortResult<()> {
        let mut stored = lock(&self.events);
        for event in events {
            stored.insert((code.clone(), event.position.clone()), event.clone());
        }
        Ok(())
    }
    async fn count_discarded(&self, code: &IntegrationCode, count: u64) -> PortResult<()> {
        *lock(&self.discarded).entry(code.clone()).or_default() += count;
        Ok(())
    }
    async fn pending(
        &self,
        code: &IntegrationCode,
        limit: usize,
        after: Option<&str>,
    ) -> PortResult<(Vec<QueuedEvent>, Option<String>)> {
        let events = lock(&self.events);
        let mut page: Vec<QueuedEvent> = events
            .iter()
            .filter(|((c, position), _)| c == code && after.is_none_or(|after| position.as_str() > after))
            .map(|(_, e)| e.clone())
            .take(limit.max(1) + 1)
            .collect();
        let more = page.len() > limit.max(1);
        page.truncate(limit.max(1));
        let next = if more { page.last().map(|e| e.position.clone()) } else { None };
        Ok((page, next))
    }
    async fn summary(&self, code: &IntegrationCode) -> PortResult<EventQueueSummary> {
        let events = lock(&self.events);
        let mine: Vec<&QueuedEvent> = events.iter().filter(|((c, _), _)| c == code).map(|(_, e)| e).collect();
        Ok(EventQueueSummary {
            pending: mine.len() as u64,
            oldest: mine.first().map(|e| e.received_at),
            discarded: lock(&self.discarded).get(code).copied().unwrap_or(0),
        })
    }
    async fn claim(&self, code: &IntegrationCode) -> PortResult<Option<EventClaim>> {
        Ok(lock(&self.claims).get(code).cloned())
    }
    async fn take(&self, code: &IntegrationCode, claim: &EventClaim) -> Result<(), EventClaimError> {
        let mut claims = lock(&self.claims);
        if claims.contains_key(code) {
            return Err(EventClaimError::Taken);
        }
        claims.insert(code.clone(), claim.clone());
        Ok(())
    }
    async fn consume(&self, code: &IntegrationCode, claim: &EventClaim) -> PortResult<()> {
        {
            let mut events = lock(&self.events);
            for position in &claim.taken {
                events.remove(&(code.clone(), position.clone()));
            }
        }
        self.let_go(code, claim).await
    }
    async fn let_go(&self, code: &IntegrationCode, claim: &EventClaim) -> PortResult<()> {
        let mut claims = lock(&self.claims);
        if claims.get(code).is_some_and(|c| c.exchange_id == claim.exchange_id) {
            claims.remove(code);
        }
        Ok(())
    }
}
