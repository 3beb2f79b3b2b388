//! Ports: what the application needs from the outside world, one small trait per
//! capability (integrations, exchanges, queues, data files, schedules, mappings, secrets,
//! endpoints and their event queues, the clock).
//! `handoff-aws` implements them with DynamoDB, SQS, S3, EventBridge Scheduler and Secrets
//! Manager; the decisions they carry out are `handoff_core`'s.

#[cfg(feature = "test-util")]
pub mod memory;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use handoff_core::commit::{
    ClaimOutcome, ClaimRequest, CommitOutcome, Conflict, RecoveryCommit, ReexecutionCommit, StepCommit,
};
use handoff_core::definition::ScheduleSpec;
use handoff_core::endpoint::{Endpoint, EndpointLogEntry, HeldHandoff};
use handoff_core::error_list::{ErrorId, ErrorState, Reprocessing, Resolution, StoredError};
use handoff_core::events::{EventClaim, QueuedEvent};
use handoff_core::exchange::{Exchange, ExchangeDetail, ExchangeStatus, ExchangeStep};
use handoff_core::handoff::{CallbackToken, HandoffMessage, Timer};
use handoff_core::ids::{DataFileSetId, ExchangeId, IntegrationCode, IntegrationVersion, StepId, UnroutedId};
use handoff_core::mapping::MappingName;
use handoff_core::plan::WorkerFamily;
use handoff_core::retry::ErrorClassification;
use handoff_core::unrouted::UnroutedMessage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An adapter failed, saying whether trying again can help. The other outcomes are not
/// errors: a write whose precondition failed answers a [`Conflict`] naming it, and an item
/// that does not exist is `None`.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Infrastructure trouble worth retrying (throttling, network, a service down).
    #[error("{service} unavailable: {message}")]
    Unavailable { service: &'static str, message: String },
    /// The call or the stored data is wrong (a bug, corrupt data, a missing resource,
    /// denied access): the same call will fail again.
    #[error("{service} error: {message}")]
    Fault { service: &'static str, message: String },
    /// A listing cursor the caller passed back is not one of ours (or belongs to another
    /// listing). The message is safe to show the caller.
    #[error("{0}")]
    InvalidCursor(String),
}

impl PortError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

pub type PortResult<T> = Result<T, PortError>;

fn outcome(result: Result<(), Conflict>) -> CommitOutcome {
    match result {
        Ok(()) => CommitOutcome::Applied,
        Err(_) => CommitOutcome::Conflict,
    }
}

// ------------------------------------------------------------------ integrations

/// One stored version of an integration. `document` is the definition JSON as accepted
/// (with `enabled` kept in sync); `revision` increases on every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredIntegration {
    pub code: IntegrationCode,
    pub version: IntegrationVersion,
    pub enabled: bool,
    pub document: Value,
    pub revision: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The `sub` of the caller who created this version (none for versions stored before
    /// the API had identities).
    pub created_by: Option<String>,
    /// The `sub` of the caller who last changed it.
    pub updated_by: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntegrationWriteError {
    #[error("integration {code} version {version} already exists")]
    AlreadyExists { code: IntegrationCode, version: IntegrationVersion },
    /// Someone else changed the version since it was read (optimistic concurrency).
    #[error("integration changed concurrently; read it again")]
    RevisionConflict,
    #[error(transparent)]
    Port(#[from] PortError),
}

#[async_trait]
pub trait IntegrationRepository: Send + Sync {
    /// Conditional put: fails with `AlreadyExists` if code+version exists.
    async fn create(&self, integration: &StoredIntegration) -> Result<(), IntegrationWriteError>;
    /// Every version of one code (one partition), any order.
    async fn versions(&self, code: &IntegrationCode) -> PortResult<Vec<StoredIntegration>>;
    /// Every version of every code.
    async fn all(&self) -> PortResult<Vec<StoredIntegration>>;
    async fn get(&self, code: &IntegrationCode, version: IntegrationVersion) -> PortResult<Option<StoredIntegration>>;
    /// Replaces the stored version if its revision is still `expected_revision`
    /// (the new one carries `expected_revision + 1`).
    async fn replace(
        &self,
        integration: &StoredIntegration,
        expected_revision: u64,
    ) -> Result<(), IntegrationWriteError>;
    async fn health(&self) -> PortResult<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointWriteError {
    /// Someone else changed the endpoint since it was read (optimistic concurrency).
    #[error("the endpoint changed concurrently; read it again")]
    RevisionConflict,
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Endpoints (an integration code's operational status), kept with the exchanges: the
/// gateway's own runtime state, which workers may change (issue 10), unlike definitions.
#[async_trait]
pub trait EndpointStore: Send + Sync {
    /// The endpoint of `code` as stored; `None` if it never was (a code defined before
    /// endpoints were stored, or none at all).
    async fn endpoint(&self, code: &IntegrationCode) -> PortResult<Option<Endpoint>>;

    /// Stores `endpoint` if the stored one is still at `endpoint.revision` (0: none is
    /// stored yet) and returns it as stored, at the next revision.
    async fn save_endpoint(&self, endpoint: &Endpoint) -> Result<Endpoint, EndpointWriteError>;

    /// Keeps `held` if the endpoint is still held (Disabled or Failed) at `endpoint_revision`,
    /// as it was read — so nothing is held once the endpoint runs again (its release would
    /// have missed it). Holding the same handoff again keeps one.
    async fn hold(&self, held: &HeldHandoff, endpoint_revision: u64) -> Result<(), EndpointWriteError>;

    /// The handoffs held at `code`, oldest first.
    async fn held(&self, code: &IntegrationCode) -> PortResult<Vec<HeldHandoff>>;

    /// Forgets a held handoff once it was sent again.
    async fn release(&self, held: &HeldHandoff) -> PortResult<()>;

    /// Adds a line to `code`'s endpoint log, kept until `expires_at` (if given).
    async fn append_log(
        &self,
        code: &IntegrationCode,
        entry: &EndpointLogEntry,
        expires_at: Option<DateTime<Utc>>,
    ) -> PortResult<()>;

    /// `code`'s endpoint log, newest first: up to `limit` lines from `cursor` on, and the
    /// cursor of the next page.
    async fn log(
        &self,
        code: &IntegrationCode,
        limit: u32,
        cursor: Option<&str>,
    ) -> PortResult<(Vec<EndpointLogEntry>, Option<String>)>;
}

/// The claim could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum EventClaimError {
    /// Another exchange holds the endpoint's events.
    #[error("another exchange holds the endpoint's events")]
    Taken,
    #[error(transparent)]
    Port(#[from] PortError),
}

/// How an endpoint's queue stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventQueueSummary {
    /// Events in the queue (those an exchange holds included: they leave when it completes).
    pub pending: u64,
    /// When the oldest of them arrived.
    pub oldest: Option<DateTime<Utc>>,
    /// Events dropped while the endpoint discarded them.
    pub discarded: u64,
}

/// An endpoint's event queue (issue 10, point 3), kept with the endpoint: events in arrival
/// order ([`QueuedEvent::position`]), the one claim an exchange may hold on them, and the
/// count of those discarded.
#[async_trait]
pub trait EventQueue: Send + Sync {
    /// Keeps `events` in `code`'s queue, durably: once this answers, they are stored.
    async fn append(&self, code: &IntegrationCode, events: &[QueuedEvent]) -> PortResult<()>;

    /// Counts `count` events dropped unread (the endpoint discards events).
    async fn count_discarded(&self, code: &IntegrationCode, count: u64) -> PortResult<()>;

    /// Queued events, oldest first: up to `limit` after position `after`, and the position
    /// to read the next page after (if there may be more).
    async fn pending(
        &self,
        code: &IntegrationCode,
        limit: usize,
        after: Option<&str>,
    ) -> PortResult<(Vec<QueuedEvent>, Option<String>)>;

    async fn summary(&self, code: &IntegrationCode) -> PortResult<EventQueueSummary>;

    /// The claim `code`'s events are under, if any.
    async fn claim(&self, code: &IntegrationCode) -> PortResult<Option<EventClaim>>;

    /// Stores `claim` if no claim stands (one write: two exchanges cannot both take events).
    async fn take(&self, code: &IntegrationCode, claim: &EventClaim) -> Result<(), EventClaimError>;

    /// Takes the claimed events off the queue, then the claim if it is still this exchange's.
    /// Repeatable: a crash half-way is finished by the next call.
    async fn consume(&self, code: &IntegrationCode, claim: &EventClaim) -> PortResult<()>;

    /// Lets the claim go (if it is still this exchange's), leaving its events queued.
    async fn let_go(&self, code: &IntegrationCode, claim: &EventClaim) -> PortResult<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum UnroutedWriteError {
    /// The message is not as the writer read it: kept already, or its replay changed since.
    #[error("the unrouted message changed concurrently; read it again")]
    Conflict,
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Unrouted messages (issue 10, point 5): requests the API could not route, kept until
/// replayed and for as long as finished exchanges are kept.
#[async_trait]
pub trait UnroutedStore: Send + Sync {
    /// Keeps a new message (once: a second write of the same id is a conflict), to be
    /// forgotten at `expires_at`.
    async fn keep(
        &self,
        message: &UnroutedMessage,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), UnroutedWriteError>;

    async fn unrouted(&self, id: &UnroutedId) -> PortResult<Option<UnroutedMessage>>;

    /// Newest first: up to `limit` after the cursor `after`, and the cursor of the next page.
    async fn list_unrouted(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> PortResult<(Vec<UnroutedMessage>, Option<String>)>;

    /// Writes `message`'s replay, if the stored one is still `expected` (the exchange of the
    /// replay read, `None`: never replayed): two replays cannot both start.
    async fn save_replay(
        &self,
        message: &UnroutedMessage,
        expected: Option<&ExchangeId>,
    ) -> Result<(), UnroutedWriteError>;
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorFilter {
    pub classification: Option<ErrorClassification>,
    pub integration_code: Option<IntegrationCode>,
    /// Failed (last) at or after this time.
    pub since: Option<DateTime<Utc>>,
    pub state: Option<ErrorState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ErrorPage {
    /// Newest (last failure) first.
    pub items: Vec<StoredError>,
    pub next_cursor: Option<String>,
}

/// The error list ([`handoff_core::error_list`]): written by the commits that record
/// failures (one entry per failing step, re-opened when it fails again), resolved by
/// people, re-processed by the error job. Kept with the exchanges.
#[async_trait]
pub trait ErrorStore: Send + Sync {
    async fn errors(&self, filter: &ErrorFilter, limit: u32, cursor: Option<&str>) -> PortResult<ErrorPage>;
    async fn error(&self, id: &ErrorId) -> PortResult<Option<StoredError>>;
    /// Resolves `id` while it is still open: `false` (nothing written) if it is not (any
    /// more), or does not exist.
    async fn resolve_error(&self, id: &ErrorId, resolution: &Resolution) -> PortResult<bool>;
    /// Records what the error job did with the resolution `reprocessing.resolution_at`,
    /// while that is still the entry's resolution and not yet recorded: `false` otherwise.
    async fn record_reprocessing(&self, id: &ErrorId, reprocessing: &Reprocessing) -> PortResult<bool>;
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExchangeFilter {
    pub integration_code: Option<IntegrationCode>,
    pub status: Option<ExchangeStatus>,
    /// The sub-exchanges of one exchange (in creation order rather than newest first).
    pub parent: Option<ExchangeId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangePage {
    pub items: Vec<Exchange>,
    /// Opaque; pass back to get the next page.
    pub next_cursor: Option<String>,
}

/// Every exchange capability at once: what one store offers (the DynamoDB table, the
/// in-memory fake) and what the composition root wires. Use cases name the capabilities
/// they use.
pub trait ExchangeRepository: ExchangeReads + ExchangeWrites + ErrorStore + TimerStore + TokenStore {}

impl<T: ExchangeReads + ExchangeWrites + ErrorStore + TimerStore + TokenStore + ?Sized> ExchangeRepository for T {}

/// Reading exchanges, their steps and logs, and the failures listed for operators.
#[async_trait]
pub trait ExchangeReads: Send + Sync {
    /// Which of these exchanges exist, and their status (BatchGetItem, ≤ 100 keys a request).
    async fn statuses(&self, ids: &[ExchangeId]) -> PortResult<Vec<(ExchangeId, ExchangeStatus)>> {
        let mut found = Vec::new();
        for id in ids {
            if let Some(detail) = self.get(id).await? {
                found.push((id.clone(), detail.exchange.status));
            }
        }
        Ok(found)
    }

    async fn get(&self, id: &ExchangeId) -> PortResult<Option<ExchangeDetail>>;

    async fn get_step(&self, id: &ExchangeId, step: StepId) -> PortResult<Option<ExchangeStep>>;

    /// Newest first.
    async fn list(&self, filter: &ExchangeFilter, limit: u32, cursor: Option<&str>) -> PortResult<ExchangePage>;

    /// Failures, newest first.
    async fn health(&self) -> PortResult<()>;
}

/// Writing exchanges: creation, and the conditional writes the state machine decides.
#[async_trait]
pub trait ExchangeWrites: Send + Sync {
    /// Writes the exchange and all its steps (batched, ≤ 25 items per request). Idempotent:
    /// writing the same exchange again changes nothing.
    async fn create(&self, exchange: &Exchange, steps: &[ExchangeStep]) -> PortResult<()>;

    /// Writes many exchanges with their steps, packing items of several exchanges into each
    /// batch of 25 (creating a thousand sub-exchanges costs requests per item, not per exchange).
    async fn create_many(&self, exchanges: &[(Exchange, Vec<ExchangeStep>)]) -> PortResult<()> {
        for (exchange, steps) in exchanges {
            self.create(exchange, steps).await?;
        }
        Ok(())
    }

    /// Sets how many sub-exchanges a `ControlSubflow` step waits for (before any of them runs).
    async fn set_sub_exchange_total(&self, id: &ExchangeId, step: StepId, total: u32) -> PortResult<()>;

    /// Claims an attempt of a step before an external side effect, under
    /// [`ClaimRequest::preconditions`]: the step is `Initial` with the attempt not recorded,
    /// no live claim of it or a later one, the exchange as required (not final, or Completed
    /// for a re-execution) at its generation. Sets `claimedAttempt`, `attempts`,
    /// `leaseUntil`; clears `nextRetryAt`. A conflict names the preconditions that failed.
    async fn try_claim(&self, request: &ClaimRequest) -> PortResult<Result<(), Conflict>>;

    /// Resets a failed secondary destination of a Completed exchange for a re-execution if
    /// [`ReexecutionCommit::preconditions`] hold (exchange Completed at its generation, step
    /// Failed): the step `Initial` with no attempts, claims, error, retry time or output, the
    /// log line appended.
    async fn try_reexecute(&self, commit: &ReexecutionCommit) -> PortResult<Result<(), Conflict>>;

    /// Writes `commit` atomically if every one of [`StepCommit::preconditions`] holds;
    /// otherwise writes nothing and names the preconditions that failed.
    async fn try_commit(&self, commit: &StepCommit) -> PortResult<Result<(), Conflict>>;

    /// Writes `commit` atomically if every one of [`RecoveryCommit::preconditions`] holds
    /// (the exchange Failed/TimedOut at generation `commit.recovery`).
    async fn try_recover(&self, commit: &RecoveryCommit) -> PortResult<Result<(), Conflict>>;

    /// Deletes a finished exchange and everything stored under it (steps and their logs,
    /// failures listed for operators, timers) if [`handoff_core::commit::deletion_preconditions`]
    /// hold: its retention ran out and it was not recovered meanwhile. Once it has begun,
    /// nothing else can write to the exchange; repeating it finishes what a crash left.
    async fn delete_finished(&self, id: &ExchangeId, recovery: u32) -> PortResult<CommitOutcome>;

    /// [`Self::try_claim`] of a running exchange's step, when the reasons do not matter.
    async fn claim(
        &self,
        id: &ExchangeId,
        step: StepId,
        attempt: u32,
        recovery: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> PortResult<ClaimOutcome> {
        let request = ClaimRequest {
            exchange_id: id.clone(),
            step,
            attempt,
            recovery,
            requires: handoff_core::commit::ExchangeChange::RequireNotFinal,
            now,
            lease_until,
        };
        Ok(match self.try_claim(&request).await? {
            Ok(()) => ClaimOutcome::Claimed,
            Err(_) => ClaimOutcome::NotClaimable,
        })
    }

    /// [`Self::try_commit`], when the reasons do not matter.
    async fn commit(&self, commit: &StepCommit) -> PortResult<CommitOutcome> {
        Ok(outcome(self.try_commit(commit).await?))
    }

    /// [`Self::try_recover`], when the reasons do not matter.
    async fn recover(&self, commit: &RecoveryCommit) -> PortResult<CommitOutcome> {
        Ok(outcome(self.try_recover(commit).await?))
    }
}

/// Durable timers due later than a queue can delay a message (and outbox entries).
#[async_trait]
pub trait TimerStore: Send + Sync {
    /// Stored timers due up to `until`, oldest first.
    async fn due_timers(&self, until: DateTime<Utc>, limit: u32) -> PortResult<Vec<Timer>>;

    /// Takes a timer off the due index once its message is on its way; false if another
    /// sweeper took it first.
    async fn take_timer(&self, timer: &Timer) -> PortResult<bool>;
}

/// Single-use callback tokens.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a callback token (before the call that hands it out).
    async fn put_token(&self, token: &CallbackToken) -> PortResult<()>;

    /// A token that can still be used at `now`: `None` if unknown, used or expired.
    async fn usable_token(&self, hash: &str, now: DateTime<Utc>) -> PortResult<Option<CallbackToken>>;

    /// Uses `token` once and, in the same write, stores `outbox` (the timer that hands the
    /// callback on should its message never be sent) and marks the waiting step as having
    /// its callback accepted (so the wait's timeout no longer fails it). False if the token
    /// was used or expired first, or the step no longer waits (its timeout failed it).
    async fn consume_token(&self, token: &CallbackToken, now: DateTime<Utc>, outbox: &Timer) -> PortResult<bool>;
}

#[async_trait]
pub trait HandoffQueue: Send + Sync {
    /// Sends to the queue of `family`, delayed by up to 900 seconds.
    async fn send(&self, family: WorkerFamily, message: &HandoffMessage, delay_seconds: u32) -> PortResult<()>;
    /// Sends a fired (or soon due) timer to the control queue, delayed by up to 900 seconds.
    async fn send_timer(&self, timer: &Timer, delay_seconds: u32) -> PortResult<()>;
    /// Sends many messages to one family's queue, ten per request.
    async fn send_many(&self, family: WorkerFamily, messages: &[HandoffMessage]) -> PortResult<()> {
        for message in messages {
            self.send(family, message, 0).await?;
        }
        Ok(())
    }
    async fn health(&self) -> PortResult<()>;
}

// ------------------------------------------------------------------ data files

pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataFileInfo {
    pub name: String,
    pub size: u64,
    pub content_type: String,
}

#[async_trait]
pub trait DataFileStore: Send + Sync {
    /// Streams `body` into file `name` of set `set` (multipart upload for large bodies;
    /// memory bounded by the part size, not the file size).
    async fn write(
        &self,
        set: &DataFileSetId,
        name: &str,
        content_type: &str,
        body: ByteStream,
    ) -> PortResult<DataFileInfo>;
    /// Streams one file; `None` if it does not exist.
    async fn read(&self, set: &DataFileSetId, name: &str) -> PortResult<Option<(DataFileInfo, ByteStream)>>;
    /// The files of a set, by name; empty if the set does not exist.
    async fn list(&self, set: &DataFileSetId) -> PortResult<Vec<DataFileInfo>>;
    /// A short-lived URL that downloads one file directly (files too large for an API answer).
    async fn download_url(&self, set: &DataFileSetId, name: &str, valid_for: std::time::Duration)
        -> PortResult<String>;
    async fn health(&self) -> PortResult<()>;
}

// ------------------------------------------------------------------ schedules

#[async_trait]
pub trait ScheduleManager: Send + Sync {
    /// Creates or updates the schedule that starts exchanges of `code`.
    async fn upsert(&self, code: &IntegrationCode, schedule: &ScheduleSpec) -> PortResult<()>;
    /// Removes it; a missing schedule is fine.
    async fn remove(&self, code: &IntegrationCode) -> PortResult<()>;
}

/// Input of the trigger function, as the schedule delivers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledTrigger {
    pub integration_code: IntegrationCode,
}

// ------------------------------------------------------------------ mappings

/// One stored mapping: the document as accepted, with a revision increased on each write.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMapping {
    pub name: MappingName,
    pub document: Value,
    pub revision: u64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingWriteError {
    /// Someone else wrote the mapping since it was read (optimistic concurrency).
    #[error("mapping changed concurrently; read it again")]
    RevisionConflict,
    #[error(transparent)]
    Port(#[from] PortError),
}

#[async_trait]
pub trait MappingRepository: Send + Sync {
    async fn get(&self, name: &MappingName) -> PortResult<Option<StoredMapping>>;
    /// Writes `mapping` if the stored revision is still `expected_revision` (`None`: only
    /// if no mapping of that name exists yet).
    async fn put(&self, mapping: &StoredMapping, expected_revision: Option<u64>) -> Result<(), MappingWriteError>;
}

// ------------------------------------------------------------------ secrets

/// Reads secrets by name. The value is the secret's text (JSON for the credentials here).
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// `Ok(None)` when no secret has that name.
    async fn get(&self, name: &str) -> PortResult<Option<SecretText>>;
}

/// A secret's text. Its `Debug` shows no content, so it cannot leak into logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(String);

impl SecretText {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(<redacted>)")
    }
}

// ------------------------------------------------------------------ job runs

/// The last run of each scheduled job ([`handoff_core::job_run`]).
#[async_trait]
pub trait JobRunLog: Send + Sync {
    /// Keeps `run` as its job's last (a later start replaces an earlier one only).
    async fn record(&self, run: &handoff_core::job_run::JobRun) -> PortResult<()>;
    /// The last run of `job`, if it ever ran.
    async fn last(&self, job: &str) -> PortResult<Option<handoff_core::job_run::JobRun>>;
}

// ------------------------------------------------------------------ telling people

/// Publishes a notice to an SNS topic (`notify` targets of kind `snsTopicArn`).
#[async_trait]
pub trait TopicPublisher: Send + Sync {
    /// Publishes `message` with `subject` to the topic `topic_arn`.
    async fn publish(&self, topic_arn: &str, subject: &str, message: &str) -> PortResult<()>;
}

/// Where system failures and panics are reported (a Sentry-protocol endpoint), if anywhere.
/// A report that cannot be sent is the tracker's to log: reporting never fails the work.
#[async_trait]
pub trait ErrorTracker: Send + Sync {
    async fn report(&self, report: &handoff_core::notice::ErrorReport);
}

/// The tracker of a deployment without one.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoErrorTracker;

#[async_trait]
impl ErrorTracker for NoErrorTracker {
    async fn report(&self, _report: &handoff_core::notice::ErrorReport) {}
}

/// What time it is for the gateway: timers, timeouts, schedules shown and exchange times are
/// read from here. The system clock in AWS; locally the emulator's, which its time control
/// moves forward so schedule and timer tests take seconds.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}
