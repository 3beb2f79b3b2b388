//! In-memory fakes of every port (feature `test-util`), for use-case tests without an AWS
//! emulator. They enforce the same preconditions as the DynamoDB adapter — a commit applies
//! all of its writes or none, under the same conditions — and the contract tests in
//! `tests/adapters` run the same cases against both, so the two cannot drift.

use crate::{
    ByteStream, DataFileInfo, DataFileStore, EndpointStore, EndpointWriteError, ErrorFilter, ErrorPage, ErrorStore,
    EventClaimError, EventQueue, EventQueueSummary, ExchangeFilter, ExchangePage, ExchangeReads, ExchangeWrites,
    HandoffQueue, IntegrationRepository, IntegrationWriteError, MappingRepository, MappingWriteError, PortError,
    PortResult, ScheduleManager, SecretStore, SecretText, StoredIntegration, StoredMapping, TimerStore, TokenStore,
    UnroutedStore, UnroutedWriteError,
};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use handoff_core::commit::{
    ClaimRequest, CommitOutcome, Conflict, ExchangeChange, ItemRef, Precondition, RecoveryCommit, ReexecutionCommit,
    StepChange, StepCommit,
};
use handoff_core::definition::ScheduleSpec;
use handoff_core::endpoint::{Endpoint, EndpointLogEntry, HeldHandoff};
use handoff_core::error_list::{ErrorId, ErrorState, Reprocessing, Resolution, StoredError};
use handoff_core::events::{EventClaim, QueuedEvent};
use handoff_core::exchange::{
    Exchange, ExchangeDetail, ExchangeStatus, ExchangeStep, LogLine, StepStatus, SubExchangeCounts,
};
use handoff_core::handoff::{CallbackToken, HandoffMessage, Timer};
use handoff_core::ids::{DataFileSetId, ExchangeId, IntegrationCode, IntegrationVersion, StepId, UnroutedId};
use handoff_core::mapping::MappingName;
use handoff_core::plan::WorkerFamily;
use handoff_core::unrouted::UnroutedMessage;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

mod endpoints;
pub use endpoints::{MemoryEndpoints, MemoryEventQueues, MemoryUnrouted};

fn fault(message: impl Into<String>) -> PortError {
    PortError::Fault { service: "memory", message: message.into() }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the state from the assertions that follow.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Pages `items` (already in order) with an offset cursor that belongs to `scope` (the
/// listing's filter): like the adapter's, a cursor of another listing is refused.
fn page<T: Clone>(items: &[T], scope: &str, limit: u32, cursor: Option<&str>) -> PortResult<(Vec<T>, Option<String>)> {
    let start = match cursor {
        None => 0,
        Some(c) => {
            let invalid = || PortError::InvalidCursor("invalid cursor".into());
            let (offset, of) = c.split_once('@').ok_or_else(invalid)?;
            if of != scope {
                return Err(PortError::InvalidCursor("the cursor belongs to a different filter".into()));
            }
            offset.parse::<usize>().map_err(|_| invalid())?
        }
    };
    let limit = limit.clamp(1, 1000) as usize;
    let end = (start + limit).min(items.len());
    let slice = items.get(start..end).unwrap_or_default().to_vec();
    let next = (end < items.len()).then(|| format!("{end}@{scope}"));
    Ok((slice, next))
}

/// A short, URL-safe name of a listing's filter.
fn scope_of(filter: &impl std::fmt::Debug) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{filter:?}").hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

// ------------------------------------------------------------------ exchanges

#[derive(Debug, Clone)]
struct StoredStep {
    step: ExchangeStep,
    completed_attempt: u32,
    claimed_attempt: u32,
    lease_until: i64,
    /// A callback for this (waiting) step was accepted since its last reset.
    callback_accepted: bool,
    logs: Vec<LogLine>,
    sub_total: Option<u32>,
    sub_completed: u32,
    sub_failed: u32,
}

impl StoredStep {
    fn view(&self) -> ExchangeStep {
        let mut step = self.step.clone();
        step.sub_exchanges = self.sub_total.map(|total| SubExchangeCounts {
            total,
            completed: self.sub_completed,
            failed: self.sub_failed,
        });
        step
    }
}

#[derive(Debug, Clone)]
struct StoredTimer {
    timer: Timer,
    /// Still on the due index (not taken).
    due: bool,
}

#[derive(Debug, Clone)]
struct StoredToken {
    token: CallbackToken,
    used: bool,
}

#[derive(Debug, Default, Clone)]
struct ExchangeState {
    exchanges: BTreeMap<ExchangeId, Exchange>,
    steps: BTreeMap<(ExchangeId, StepId), StoredStep>,
    errors: BTreeMap<ErrorId, StoredError>,
    timers: BTreeMap<(ExchangeId, String), StoredTimer>,
    tokens: HashMap<String, StoredToken>,
}

impl ExchangeState {
    fn exchange_at(&self, id: &ExchangeId, statuses: &[ExchangeStatus], recovery: u32) -> bool {
        self.exchanges.get(id).is_some_and(|e| statuses.contains(&e.status) && e.recoveries == recovery)
    }
    fn step(&self, id: &ExchangeId, step: StepId) -> Option<&StoredStep> {
        self.steps.get(&(id.clone(), step))
    }
    fn step_mut(&mut self, id: &ExchangeId, step: StepId) -> Option<&mut StoredStep> {
        self.steps.get_mut(&(id.clone(), step))
    }
    fn put_timer(&mut self, timer: &Timer) {
        self.timers.insert((timer.exchange_id.clone(), timer.name()), StoredTimer { timer: timer.clone(), due: true });
    }
}

/// The exchange store in memory: exchanges, steps, logs, errors, timers and tokens.
#[derive(Debug, Default)]
pub struct MemoryExchangeRepository {
    state: Mutex<ExchangeState>,
}

impl MemoryExchangeRepository {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every timer still due (not taken), oldest first.
    pub fn pending_timers(&self) -> Vec<Timer> {
        let mut timers: Vec<Timer> =
            lock(&self.state).timers.values().filter(|t| t.due).map(|t| t.timer.clone()).collect();
        timers.sort_by(|a, b| (a.due, a.exchange_id.as_str()).cmp(&(b.due, b.exchange_id.as_str())));
        timers
    }

    /// Moves exchange `id`'s creation `by` into the past (what jobs look at is its age).
    pub fn age(&self, id: &ExchangeId, by: chrono::Duration) {
        if let Some(exchange) = lock(&self.state).exchanges.get_mut(id) {
            exchange.created_at -= by;
        }
    }
}

/// Whether `precondition` holds in `state`: the same conditions the DynamoDB adapter compiles.
fn holds(state: &ExchangeState, precondition: &Precondition) -> bool {
    use Precondition as P;
    let step = |exchange: &ExchangeId, step: &StepId| state.step(exchange, *step);
    match precondition {
        P::ExchangeNotFinal { exchange, recovery } => {
            state.exchange_at(exchange, &ExchangeStatus::not_final(), *recovery)
        }
        P::ExchangeIn { exchange, statuses, recovery } => state.exchange_at(exchange, statuses, *recovery),
        P::StepOpen { exchange, step: s, attempt } => {
            step(exchange, s).is_some_and(|s| s.step.status == StepStatus::Initial && s.completed_attempt < *attempt)
        }
        P::ClaimedBy { exchange, step: s, attempt } => step(exchange, s).is_some_and(|s| s.claimed_attempt == *attempt),
        P::Claimable { exchange, step: s, attempt, now } => {
            step(exchange, s).is_some_and(|s| s.claimed_attempt < *attempt || s.lease_until < now.timestamp_millis())
        }
        P::StepInitial { exchange, step: s } => step(exchange, s).is_some_and(|s| s.step.status == StepStatus::Initial),
        P::StepDone { exchange, step: s } => step(exchange, s).is_some_and(|s| s.step.status == StepStatus::Done),
        P::StepFailed { exchange, step: s } => step(exchange, s).is_some_and(|s| s.step.status == StepStatus::Failed),
        P::StepExists { exchange, step: s } => step(exchange, s).is_some(),
        P::NoCallbackAccepted { exchange, step: s } => step(exchange, s).is_some_and(|s| !s.callback_accepted),
        P::TokenUsable { hash, now } => state.tokens.get(hash).is_some_and(|t| usable(t, *now)),
    }
}

/// Every precondition holds, or the conflict naming those that do not — item by item, as
/// DynamoDB reports them: when any precondition on an item fails, all of that item's are named.
fn check(state: &ExchangeState, preconditions: Vec<Precondition>) -> Result<(), Conflict> {
    let failed_items: Vec<ItemRef> =
        preconditions.iter().filter(|p| !holds(state, p)).map(Precondition::item).collect();
    if failed_items.is_empty() {
        return Ok(());
    }
    Err(Conflict { failed: preconditions.into_iter().filter(|p| failed_items.contains(&p.item())).collect() })
}

/// A step back to `Initial` with no attempts, claims, error, retry time or output (as the
/// adapter's `reset_update`).
fn reset_step(stored: &mut StoredStep) {
    stored.step.status = StepStatus::Initial;
    stored.step.attempts = 0;
    stored.completed_attempt = 0;
    stored.claimed_attempt = 0;
    stored.lease_until = 0;
    stored.callback_accepted = false;
    stored.step.next_retry_at = None;
    stored.step.last_error = None;
    stored.step.started_at = None;
    stored.step.completed_at = None;
    stored.step.payload = None;
}

fn apply_step(stored: &mut StoredStep, change: &StepChange) {
    let step = &mut stored.step;
    step.status = change.status;
    step.attempts = change.attempt;
    stored.completed_attempt = change.attempt;
    step.max_attempts = change.max_attempts;
    if let Some(payload) = &change.payload {
        step.payload = Some(payload.clone());
    }
    step.last_error = change.last_error.clone();
    step.next_retry_at = change.next_retry_at;
    // The step's start is its first attempt's: later attempts keep it.
    step.started_at = step.started_at.or(change.started_at);
    if let Some(at) = change.completed_at {
        step.completed_at = Some(at);
    }
    stored.logs.extend(change.logs.iter().cloned());
}

fn apply_commit(state: &mut ExchangeState, commit: &StepCommit, skips: &[StepId]) {
    let id = &commit.exchange_id;
    if let Some(change) = &commit.step {
        if let Some(stored) = state.step_mut(id, change.step_id) {
            apply_step(stored, change);
        }
    }
    for step in skips {
        if let Some(stored) = state.step_mut(id, *step) {
            stored.step.status = StepStatus::Skipped;
        }
    }
    for record in &commit.errors {
        let id = ErrorId::of(record);
        let entry = match state.errors.remove(&id) {
            Some(listed) => listed.recurred(record.clone()),
            None => StoredError::first(record.clone()),
        };
        state.errors.insert(id, entry);
    }
    for timer in &commit.timers {
        state.put_timer(timer);
    }
    if let Some(exchange) = state.exchanges.get_mut(id) {
        if let ExchangeChange::SetStatus { to, error, completed_at, .. } = &commit.exchange {
            exchange.status = *to;
            exchange.updated_at = commit.now;
            match error {
                Some(err) => exchange.error = Some(err.clone()),
                // A running exchange carries no error of an earlier run (recovery).
                None if !to.is_final() => exchange.error = None,
                None => {}
            }
            match completed_at {
                Some(at) => exchange.completed_at = Some(*at),
                None if !to.is_final() => exchange.completed_at = None,
                None => {}
            }
        }
        if let Some(result) = &commit.result {
            exchange.result = Some(result.clone());
        }
    }
    if let Some(tally) = &commit.tally {
        if let Some(parent) = state.step_mut(&tally.parent, tally.step_id) {
            if tally.completed {
                parent.sub_completed += 1;
            } else {
                parent.sub_failed += 1;
            }
        }
    }
}

#[async_trait]
impl ExchangeReads for MemoryExchangeRepository {
    async fn statuses(&self, ids: &[ExchangeId]) -> PortResult<Vec<(ExchangeId, ExchangeStatus)>> {
        let state = lock(&self.state);
        Ok(ids.iter().filter_map(|id| state.exchanges.get(id).map(|e| (id.clone(), e.status))).collect())
    }

    async fn get(&self, id: &ExchangeId) -> PortResult<Option<ExchangeDetail>> {
        let state = lock(&self.state);
        let Some(exchange) = state.exchanges.get(id).cloned() else { return Ok(None) };
        let mut steps: Vec<&StoredStep> = state.steps.iter().filter(|((e, _), _)| e == id).map(|(_, s)| s).collect();
        steps.sort_by_key(|s| (s.step.sequence, s.step.step_id));
        let mut logs: Vec<LogLine> = steps.iter().flat_map(|s| s.logs.iter().cloned()).collect();
        logs.sort_by_key(|l| l.timestamp);
        Ok(Some(ExchangeDetail { exchange, steps: steps.into_iter().map(StoredStep::view).collect(), logs }))
    }

    async fn get_step(&self, id: &ExchangeId, step: StepId) -> PortResult<Option<ExchangeStep>> {
        Ok(lock(&self.state).step(id, step).map(StoredStep::view))
    }

    async fn list(&self, filter: &ExchangeFilter, limit: u32, cursor: Option<&str>) -> PortResult<ExchangePage> {
        let state = lock(&self.state);
        let mut items: Vec<Exchange> = state
            .exchanges
            .values()
            .filter(|e| filter.status.is_none_or(|s| e.status == s))
            .filter(|e| filter.integration_code.as_ref().is_none_or(|c| &e.integration_code == c))
            .filter(|e| filter.parent.as_ref().is_none_or(|p| e.parent.as_ref().is_some_and(|l| &l.exchange_id == p)))
            .cloned()
            .collect();
        if filter.parent.is_some() {
            items.sort_by_key(|e| e.parent.as_ref().map(|l| (l.step_id, l.index)));
        } else {
            items.sort_by(|a, b| (b.created_at, b.exchange_id.as_str()).cmp(&(a.created_at, a.exchange_id.as_str())));
        }
        let (items, next_cursor) = page(&items, &scope_of(filter), limit, cursor)?;
        Ok(ExchangePage { items, next_cursor })
    }

    async fn health(&self) -> PortResult<()> {
        Ok(())
    }
}

#[async_trait]
impl ErrorStore for MemoryExchangeRepository {
    async fn errors(&self, filter: &ErrorFilter, limit: u32, cursor: Option<&str>) -> PortResult<ErrorPage> {
        let state = lock(&self.state);
        let mut items: Vec<StoredError> = state
            .errors
            .values()
            .filter(|e| filter.classification.is_none_or(|c| e.record.classification == c))
            .filter(|e| filter.integration_code.as_ref().is_none_or(|c| &e.record.integration_code == c))
            .filter(|e| filter.since.is_none_or(|since| e.record.at >= since))
            .filter(|e| filter.state.is_none_or(|wanted| e.state == wanted))
            .cloned()
            .collect();
        // Newest first, as the store's index sorts them (time, exchange, step).
        items.sort_by(|a, b| (b.record.at, &b.error_id).cmp(&(a.record.at, &a.error_id)));
        let (items, next_cursor) = page(&items, &scope_of(filter), limit, cursor)?;
        Ok(ErrorPage { items, next_cursor })
    }

    async fn error(&self, id: &ErrorId) -> PortResult<Option<StoredError>> {
        Ok(lock(&self.state).errors.get(id).cloned())
    }

    async fn resolve_error(&self, id: &ErrorId, resolution: &Resolution) -> PortResult<bool> {
        let mut state = lock(&self.state);
        match state.errors.get_mut(id) {
            Some(entry) if entry.state == ErrorState::Open => {
                entry.state = ErrorState::Resolved;
                entry.resolution = Some(resolution.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn record_reprocessing(&self, id: &ErrorId, reprocessing: &Reprocessing) -> PortResult<bool> {
        let mut state = lock(&self.state);
        let Some(entry) = state.errors.get_mut(id) else { return Ok(false) };
        let current = entry.state == ErrorState::Resolved
            && entry.resolution.as_ref().is_some_and(|r| r.at == reprocessing.resolution_at)
            && entry.reprocessing.as_ref().is_none_or(|r| r.resolution_at != reprocessing.resolution_at);
        if current {
            entry.reprocessing = Some(reprocessing.clone());
        }
        Ok(current)
    }
}

#[async_trait]
impl ExchangeWrites for MemoryExchangeRepository {
    async fn create(&self, exchange: &Exchange, steps: &[ExchangeStep]) -> PortResult<()> {
        let mut state = lock(&self.state);
        state.exchanges.insert(exchange.exchange_id.clone(), exchange.clone());
        for step in steps {
            let stored = StoredStep {
                step: ExchangeStep { sub_exchanges: None, ..step.clone() },
                completed_attempt: 0,
                claimed_attempt: 0,
                lease_until: 0,
                callback_accepted: false,
                logs: Vec::new(),
                sub_total: None,
                sub_completed: 0,
                sub_failed: 0,
            };
            state.steps.insert((exchange.exchange_id.clone(), step.step_id), stored);
        }
        Ok(())
    }

    async fn set_sub_exchange_total(&self, id: &ExchangeId, step: StepId, total: u32) -> PortResult<()> {
        let mut state = lock(&self.state);
        let stored = state
            .step_mut(id, step)
            .ok_or_else(|| fault(format!("exchange {id} has no step {step} to count sub-exchanges on")))?;
        stored.sub_total = Some(total);
        Ok(())
    }

    async fn try_claim(&self, request: &ClaimRequest) -> PortResult<Result<(), Conflict>> {
        if request.attempt == 0 {
            return Err(fault("attempt numbers start at 1"));
        }
        let mut state = lock(&self.state);
        if let Err(conflict) = check(&state, request.preconditions()) {
            return Ok(Err(conflict));
        }
        if let Some(stored) = state.step_mut(&request.exchange_id, request.step) {
            stored.claimed_attempt = request.attempt;
            stored.step.attempts = request.attempt;
            stored.lease_until = request.lease_until.timestamp_millis();
            stored.step.next_retry_at = None;
        }
        Ok(Ok(()))
    }

    async fn try_reexecute(&self, commit: &ReexecutionCommit) -> PortResult<Result<(), Conflict>> {
        let mut state = lock(&self.state);
        if let Err(conflict) = check(&state, commit.preconditions()) {
            return Ok(Err(conflict));
        }
        if let Some(stored) = state.step_mut(&commit.exchange_id, commit.step) {
            reset_step(stored);
            stored.logs.push(commit.log.clone());
        }
        Ok(Ok(()))
    }

    async fn try_commit(&self, commit: &StepCommit) -> PortResult<Result<(), Conflict>> {
        commit.check_shape().map_err(|e| fault(e.to_string()))?;
        let skips = commit.skipped_steps();
        let mut state = lock(&self.state);
        if let Err(conflict) = check(&state, commit.preconditions()) {
            return Ok(Err(conflict));
        }
        apply_commit(&mut state, commit, &skips);
        Ok(Ok(()))
    }

    async fn delete_finished(&self, id: &ExchangeId, recovery: u32) -> PortResult<CommitOutcome> {
        let mut state = lock(&self.state);
        if check(&state, handoff_core::commit::deletion_preconditions(id, recovery)).is_err() {
            return Ok(CommitOutcome::Conflict);
        }
        state.exchanges.remove(id);
        state.steps.retain(|(exchange, _), _| exchange != id);
        state.errors.retain(|error, _| &error.exchange_id != id);
        state.timers.retain(|(exchange, _), _| exchange != id);
        Ok(CommitOutcome::Applied)
    }

    async fn try_recover(&self, commit: &RecoveryCommit) -> PortResult<Result<(), Conflict>> {
        commit.check_shape().map_err(|e| fault(e.to_string()))?;
        let reset = commit.reset_steps();
        let clear_alone = commit.clear_alone();
        let id = &commit.exchange_id;
        let mut state = lock(&self.state);
        if let Err(conflict) = check(&state, commit.preconditions()) {
            return Ok(Err(conflict));
        }
        if let Some(exchange) = state.exchanges.get_mut(id) {
            exchange.status = ExchangeStatus::Started;
            exchange.updated_at = commit.now;
            exchange.recoveries += 1;
            if let Some(version) = commit.integration_version {
                exchange.integration_version = version;
            }
            exchange.error = None;
            exchange.completed_at = None;
        }
        for step in &reset {
            if let Some(stored) = state.step_mut(id, *step) {
                reset_step(stored);
                if commit.clear_sub_failures == Some(*step) {
                    stored.sub_failed = 0;
                }
                if let Some(line) = commit.log.as_ref().filter(|line| line.step_id == *step) {
                    stored.logs.push(line.clone());
                }
            }
        }
        if let Some(step) = clear_alone {
            if let Some(stored) = state.step_mut(id, step) {
                stored.sub_failed = 0;
            }
        }
        for timer in &commit.timers {
            state.put_timer(timer);
        }
        Ok(Ok(()))
    }
}

#[async_trait]
impl TimerStore for MemoryExchangeRepository {
    async fn due_timers(&self, until: DateTime<Utc>, limit: u32) -> PortResult<Vec<Timer>> {
        let mut due: Vec<Timer> = self.pending_timers().into_iter().filter(|t| t.due <= until).collect();
        due.truncate(limit.clamp(1, 1000) as usize);
        Ok(due)
    }

    async fn take_timer(&self, timer: &Timer) -> PortResult<bool> {
        let mut state = lock(&self.state);
        match state.timers.get_mut(&(timer.exchange_id.clone(), timer.name())) {
            // Only this very timer: one re-armed since it was read stays due.
            Some(stored) if stored.due && stored.timer.due == timer.due => {
                stored.due = false;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl TokenStore for MemoryExchangeRepository {
    async fn put_token(&self, token: &CallbackToken) -> PortResult<()> {
        let mut state = lock(&self.state);
        if state.tokens.contains_key(&token.hash) {
            return Err(fault("a callback token with this hash exists already"));
        }
        state.tokens.insert(token.hash.clone(), StoredToken { token: token.clone(), used: false });
        Ok(())
    }

    async fn usable_token(&self, hash: &str, now: DateTime<Utc>) -> PortResult<Option<CallbackToken>> {
        let state = lock(&self.state);
        Ok(state.tokens.get(hash).filter(|t| usable(t, now)).map(|t| t.token.clone()))
    }

    async fn consume_token(&self, token: &CallbackToken, now: DateTime<Utc>, outbox: &Timer) -> PortResult<bool> {
        let mut state = lock(&self.state);
        let (exchange, step) = (token.exchange_id.clone(), token.step_id);
        let required = vec![
            Precondition::TokenUsable { hash: token.hash.clone(), now },
            Precondition::StepInitial { exchange: exchange.clone(), step },
        ];
        if check(&state, required).is_err() {
            return Ok(false);
        }
        if let Some(stored) = state.tokens.get_mut(&token.hash) {
            stored.used = true;
        }
        if let Some(waiting) = state.step_mut(&exchange, step) {
            waiting.callback_accepted = true;
        }
        state.put_timer(outbox);
        Ok(true)
    }
}

fn usable(stored: &StoredToken, now: DateTime<Utc>) -> bool {
    !stored.used && stored.token.expires_at.is_none_or(|at| at > now)
}

// ------------------------------------------------------------------ integrations

/// Integration versions in memory, with the adapter's optimistic concurrency.
#[derive(Debug, Default)]
pub struct MemoryIntegrationRepository {
    versions: Mutex<BTreeMap<(IntegrationCode, IntegrationVersion), StoredIntegration>>,
}

#[async_trait]
impl IntegrationRepository for MemoryIntegrationRepository {
    async fn create(&self, integration: &StoredIntegration) -> Result<(), IntegrationWriteError> {
        let mut versions = lock(&self.versions);
        let key = (integration.code.clone(), integration.version);
        if versions.contains_key(&key) {
            return Err(IntegrationWriteError::AlreadyExists {
                code: integration.code.clone(),
                version: integration.version,
            });
        }
        versions.insert(key, integration.clone());
        Ok(())
    }
    async fn versions(&self, code: &IntegrationCode) -> PortResult<Vec<StoredIntegration>> {
        Ok(lock(&self.versions).values().filter(|v| &v.code == code).cloned().collect())
    }
    async fn all(&self) -> PortResult<Vec<StoredIntegration>> {
        Ok(lock(&self.versions).values().cloned().collect())
    }
    async fn get(&self, code: &IntegrationCode, version: IntegrationVersion) -> PortResult<Option<StoredIntegration>> {
        Ok(lock(&self.versions).get(&(code.clone(), version)).cloned())
    }
    async fn replace(
        &self,
        integration: &StoredIntegration,
        expected_revision: u64,
    ) -> Result<(), IntegrationWriteError> {
        let mut versions = lock(&self.versions);
        let key = (integration.code.clone(), integration.version);
        match versions.get(&key) {
            Some(current) if current.revision == expected_revision => {
                versions.insert(key, integration.clone());
                Ok(())
            }
            _ => Err(IntegrationWriteError::RevisionConflict),
        }
    }
    async fn health(&self) -> PortResult<()> {
        Ok(())
    }
}

// ------------------------------------------------------------------ queues

/// A message a fake queue holds: a handoff to a family's queue or a timer to the control queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Queued {
    Handoff { family: WorkerFamily, message: HandoffMessage, delay_seconds: u32 },
    Timer { timer: Timer, delay_seconds: u32 },
}

/// Queues in memory: what was sent, in order, until a test takes it.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    sent: Mutex<Vec<Queued>>,
    /// Families whose sends fail (an unavailable queue).
    failing: Mutex<Vec<WorkerFamily>>,
}

impl MemoryQueue {
    /// Takes everything sent so far.
    pub fn take(&self) -> Vec<Queued> {
        std::mem::take(&mut *lock(&self.sent))
    }
    /// Makes sends to `family` fail until [`Self::heal`].
    pub fn fail_sends_to(&self, family: WorkerFamily) {
        lock(&self.failing).push(family);
    }
    pub fn heal(&self) {
        lock(&self.failing).clear();
    }
    fn check(&self, family: WorkerFamily) -> PortResult<()> {
        if lock(&self.failing).contains(&family) {
            return Err(PortError::Unavailable {
                service: "sqs",
                message: format!("the {} queue is down", family.name()),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl HandoffQueue for MemoryQueue {
    async fn send(&self, family: WorkerFamily, message: &HandoffMessage, delay_seconds: u32) -> PortResult<()> {
        self.check(family)?;
        lock(&self.sent).push(Queued::Handoff {
            family,
            message: message.clone(),
            delay_seconds: delay_seconds.min(900),
        });
        Ok(())
    }
    async fn send_timer(&self, timer: &Timer, delay_seconds: u32) -> PortResult<()> {
        self.check(WorkerFamily::Control)?;
        lock(&self.sent).push(Queued::Timer { timer: timer.clone(), delay_seconds: delay_seconds.min(900) });
        Ok(())
    }
    async fn health(&self) -> PortResult<()> {
        Ok(())
    }
}

// ------------------------------------------------------------------ data files

/// Data file sets in memory (whole files: fakes hold test-sized data).
#[derive(Debug, Default)]
pub struct MemoryDataFileStore {
    files: Mutex<BTreeMap<(DataFileSetId, String), (DataFileInfo, Bytes)>>,
}

#[async_trait]
impl DataFileStore for MemoryDataFileStore {
    async fn write(
        &self,
        set: &DataFileSetId,
        name: &str,
        content_type: &str,
        mut body: ByteStream,
    ) -> PortResult<DataFileInfo> {
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk.map_err(|e| fault(format!("reading the body: {e}")))?);
        }
        let info =
            DataFileInfo { name: name.to_string(), size: bytes.len() as u64, content_type: content_type.to_string() };
        lock(&self.files).insert((set.clone(), name.to_string()), (info.clone(), Bytes::from(bytes)));
        Ok(info)
    }
    async fn read(&self, set: &DataFileSetId, name: &str) -> PortResult<Option<(DataFileInfo, ByteStream)>> {
        let found = lock(&self.files).get(&(set.clone(), name.to_string())).cloned();
        Ok(found.map(|(info, bytes)| {
            let stream: ByteStream = futures::stream::once(async move { Ok(bytes) }).boxed();
            (info, stream)
        }))
    }
    async fn list(&self, set: &DataFileSetId) -> PortResult<Vec<DataFileInfo>> {
        Ok(lock(&self.files).iter().filter(|((s, _), _)| s == set).map(|(_, (info, _))| info.clone()).collect())
    }
    async fn download_url(
        &self,
        set: &DataFileSetId,
        name: &str,
        _valid_for: std::time::Duration,
    ) -> PortResult<String> {
        Ok(format!("memory://{set}/{name}"))
    }
    async fn health(&self) -> PortResult<()> {
        Ok(())
    }
}

// ------------------------------------------------------------------ schedules, mappings, secrets

/// Schedules in memory, by integration code.
#[derive(Debug, Default)]
pub struct MemorySchedules {
    schedules: Mutex<BTreeMap<IntegrationCode, ScheduleSpec>>,
}

impl MemorySchedules {
    pub fn get(&self, code: &IntegrationCode) -> Option<ScheduleSpec> {
        lock(&self.schedules).get(code).cloned()
    }
}

#[async_trait]
impl ScheduleManager for MemorySchedules {
    async fn upsert(&self, code: &IntegrationCode, schedule: &ScheduleSpec) -> PortResult<()> {
        lock(&self.schedules).insert(code.clone(), schedule.clone());
        Ok(())
    }
    async fn remove(&self, code: &IntegrationCode) -> PortResult<()> {
        lock(&self.schedules).remove(code);
        Ok(())
    }
}

/// Mappings in memory, with the adapter's optimistic concurrency.
#[derive(Debug, Default)]
pub struct MemoryMappings {
    mappings: Mutex<BTreeMap<String, StoredMapping>>,
}

#[async_trait]
impl MappingRepository for MemoryMappings {
    async fn get(&self, name: &MappingName) -> PortResult<Option<StoredMapping>> {
        Ok(lock(&self.mappings).get(name.as_str()).cloned())
    }
    async fn put(&self, mapping: &StoredMapping, expected_revision: Option<u64>) -> Result<(), MappingWriteError> {
        let mut mappings = lock(&self.mappings);
        let current = mappings.get(mapping.name.as_str()).map(|m| m.revision);
        if current != expected_revision {
            return Err(MappingWriteError::RevisionConflict);
        }
        mappings.insert(mapping.name.as_str().to_string(), mapping.clone());
        Ok(())
    }
}

/// Secrets in memory, by name.
#[derive(Debug, Default)]
pub struct MemorySecrets {
    secrets: Mutex<HashMap<String, String>>,
}

impl MemorySecrets {
    pub fn put(&self, name: &str, text: &str) {
        lock(&self.secrets).insert(name.to_string(), text.to_string());
    }
}

#[async_trait]
impl SecretStore for MemorySecrets {
    async fn get(&self, name: &str) -> PortResult<Option<SecretText>> {
        Ok(lock(&self.secrets).get(name).map(SecretText::new))
    }
}

/// The jobs' last runs in memory; like the table, an older run never replaces a newer one.
#[derive(Debug, Default)]
pub struct MemoryJobRuns {
    runs: Mutex<HashMap<String, handoff_core::job_run::JobRun>>,
}

#[async_trait]
impl crate::JobRunLog for MemoryJobRuns {
    async fn record(&self, run: &handoff_core::job_run::JobRun) -> PortResult<()> {
        let mut runs = lock(&self.runs);
        if runs.get(&run.job).is_none_or(|last| last.started_at <= run.started_at) {
            runs.insert(run.job.clone(), run.clone());
        }
        Ok(())
    }
    async fn last(&self, job: &str) -> PortResult<Option<handoff_core::job_run::JobRun>> {
        Ok(lock(&self.runs).get(job).cloned())
    }
}

/// SNS topics in memory: what was published to each.
#[derive(Debug, Default)]
pub struct MemoryTopics {
    published: Mutex<Vec<PublishedNotice>>,
}

/// One message published to a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedNotice {
    pub topic_arn: String,
    pub subject: String,
    pub message: String,
}

impl MemoryTopics {
    pub fn published(&self) -> Vec<PublishedNotice> {
        lock(&self.published).clone()
    }
}

#[async_trait]
impl crate::TopicPublisher for MemoryTopics {
    async fn publish(&self, topic_arn: &str, subject: &str, message: &str) -> PortResult<()> {
        // SNS refuses subjects over 100 characters, or with line breaks.
        if subject.chars().count() > 100 || subject.contains('\n') {
            return Err(fault(format!("invalid subject '{subject}'")));
        }
        lock(&self.published).push(PublishedNotice {
            topic_arn: topic_arn.to_string(),
            subject: subject.to_string(),
            message: message.to_string(),
        });
        Ok(())
    }
}

/// An error tracker that keeps what it was sent.
#[derive(Debug, Default)]
pub struct MemoryErrorTracker {
    reports: Mutex<Vec<handoff_core::notice::ErrorReport>>,
}

impl MemoryErrorTracker {
    pub fn reports(&self) -> Vec<handoff_core::notice::ErrorReport> {
        lock(&self.reports).clone()
    }
}

#[async_trait]
impl crate::ErrorTracker for MemoryErrorTracker {
    async fn report(&self, report: &handoff_core::notice::ErrorReport) {
        lock(&self.reports).push(report.clone());
    }
}

/// A clock a test moves by hand: it starts at the real time and moves a millisecond per
/// reading (so events read in order keep that order, as on a real clock) plus what the
/// test moves it.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self { now: Mutex::new(Utc::now()) }
    }
}

impl ManualClock {
    /// Moves the clock by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = lock(&self.now);
        *now += by;
    }
}

impl crate::Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let mut now = lock(&self.now);
        *now += chrono::Duration::milliseconds(1);
        *now
    }
}
