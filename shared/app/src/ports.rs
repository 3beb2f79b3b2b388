//! Ports: what the application needs from storage, queues, object storage and schedules.
//! `handoff-aws` implements them with DynamoDB, SQS, S3 and EventBridge Scheduler.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use handoff_core::definition::ScheduleSpec;
use handoff_core::exchange::{
    Exchange, ExchangeError, ExchangeStatus, ExchangeStep, LogLine, Payload, StepError, StepStatus,
};
use handoff_core::ids::{DataFileSetId, ExchangeId, IntegrationCode, IntegrationVersion, StepId};
use handoff_core::plan::{SubStep, WorkerFamily};
use handoff_core::retry::ErrorClassification;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An adapter failed. `Unavailable` is infrastructure trouble worth retrying (throttling,
/// network); `Fault` means the data or the call itself is wrong.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{service} unavailable: {message}")]
    Unavailable { service: &'static str, message: String },
    #[error("{service} error: {message}")]
    Fault { service: &'static str, message: String },
}

pub type PortResult<T> = Result<T, PortError>;

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

// ------------------------------------------------------------------ exchanges

/// How one step changes in a commit. Conditions make every change happen at most once:
/// the write applies only if the step is still `Initial` and attempt `attempt` has not been
/// recorded (`completedAttempt < attempt`); if `claimed`, also only if this attempt holds
/// the claim (`claimedAttempt = attempt`).
#[derive(Debug, Clone, PartialEq)]
pub struct StepChange {
    pub step_id: StepId,
    pub attempt: u32,
    pub claimed: bool,
    pub status: StepStatus,
    /// `Some` replaces the stored payload.
    pub payload: Option<Payload>,
    pub max_attempts: u32,
    pub last_error: Option<StepError>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Appended to the step's log lines.
    pub logs: Vec<LogLine>,
}

/// What a commit does to the exchange item.
#[derive(Debug, Clone, PartialEq)]
pub enum ExchangeChange {
    /// Only check the exchange is not final (a TimedOut/Failed exchange stops everything in flight).
    RequireNotFinal,
    /// Move the exchange from one of `from` to `to` (updating the status index), optionally recording an error.
    SetStatus {
        from: Vec<ExchangeStatus>,
        to: ExchangeStatus,
        error: Option<ExchangeError>,
        completed_at: Option<DateTime<Utc>>,
    },
}

/// One atomic, conditional write (a single DynamoDB TransactWriteItems). Every commit also
/// requires the exchange to be at recovery generation `recovery`: a handoff from before a
/// recovery changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCommit {
    pub exchange_id: ExchangeId,
    pub recovery: u32,
    /// `None` for changes of the exchange alone (e.g. its SLA expired).
    pub step: Option<StepChange>,
    /// Steps to mark `Skipped` (only those still `Initial`) — a false condition skips the rest of its step.
    pub skip: Vec<StepId>,
    pub exchange: ExchangeChange,
    /// A step that must already be `Done` (a callback must not overtake the call that armed it).
    pub require_done: Option<StepId>,
    /// Failures to list for operators (`GET /errors`), written with the change.
    pub errors: Vec<ErrorRecord>,
    /// Durable timers to store, due beyond what a delayed message can carry.
    pub timers: Vec<Timer>,
    /// The exchange's final payload, stored on it when it completes.
    pub result: Option<Payload>,
    /// A sub-exchange reaching a final state counts itself on its parent's `ControlSubflow`
    /// step in the same transaction, so it is counted exactly once.
    pub tally: Option<ParentTally>,
    pub now: DateTime<Utc>,
}

/// One more sub-exchange of a parent step is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentTally {
    pub parent: ExchangeId,
    pub step_id: StepId,
    pub completed: bool,
}

impl StepCommit {
    /// A commit with no extras; callers fill in what they need.
    pub fn new(exchange_id: ExchangeId, recovery: u32, exchange: ExchangeChange, now: DateTime<Utc>) -> Self {
        Self {
            exchange_id,
            recovery,
            step: None,
            skip: Vec::new(),
            exchange,
            require_done: None,
            errors: Vec::new(),
            timers: Vec::new(),
            result: None,
            tally: None,
            now,
        }
    }
}

/// A failure as operators list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRecord {
    pub exchange_id: ExchangeId,
    pub integration_code: IntegrationCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<StepId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_step: Option<SubStep>,
    pub classification: ErrorClassification,
    pub message: String,
    pub retryable: bool,
    /// Whether the exchange failed because of it (a secondary destination's failure does not).
    pub exchange_failed: bool,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorFilter {
    pub classification: Option<ErrorClassification>,
    pub integration_code: Option<IntegrationCode>,
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ErrorPage {
    /// Newest first.
    pub items: Vec<ErrorRecord>,
    pub next_cursor: Option<String>,
}

/// What a durable timer does when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum TimerKind {
    /// A waiting step got no callback in time.
    #[serde(rename_all = "camelCase")]
    StepTimeout { step_id: StepId },
    /// The exchange ran past the integration's `slaSeconds`.
    Sla,
    /// A handoff to send when due: a retry later than SQS can delay a message, or a
    /// callback's handoff kept until it is on its way (an outbox entry).
    #[serde(rename_all = "camelCase")]
    Handoff { message: Box<HandoffMessage> },
    /// The parent of a sub-exchange timed out; so does the sub-exchange.
    #[serde(rename_all = "camelCase")]
    ParentTimedOut { parent: ExchangeId },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timer {
    pub exchange_id: ExchangeId,
    pub recovery: u32,
    pub due: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: TimerKind,
}

impl Timer {
    /// Identifies the timer within its exchange (a re-armed timer replaces the old one).
    pub fn name(&self) -> String {
        match &self.kind {
            TimerKind::StepTimeout { step_id } => format!("timeout#{step_id}"),
            TimerKind::Sla => "sla".into(),
            TimerKind::Handoff { message } => format!("handoff#{}#{}", message.step_id, message.attempt),
            TimerKind::ParentTimedOut { .. } => "parent-timed-out".into(),
        }
    }
}

/// The outbox entry of `message`: stored with the state change that decides to send it, due
/// `delay` later, taken back once the message is sent — so a crash in between loses nothing.
pub fn outbox_entry(message: &HandoffMessage, now: DateTime<Utc>, delay: std::time::Duration) -> Timer {
    Timer {
        exchange_id: message.exchange_id.clone(),
        recovery: message.recovery,
        due: now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::seconds(60)),
        kind: TimerKind::Handoff { message: Box::new(message.clone()) },
    }
}

/// A single-use callback token. Only its hash is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackToken {
    pub hash: String,
    pub exchange_id: ExchangeId,
    pub integration_code: IntegrationCode,
    pub integration_version: IntegrationVersion,
    /// The waiting step the callback completes.
    pub step_id: StepId,
    pub sub_step: SubStep,
    pub recovery: u32,
    #[serde(default)]
    pub parameters: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<handoff_core::exchange::ParentLink>,
}

/// Recovering an exchange: back to `Started` at generation `recovery + 1`, with its steps
/// from the resume point reset to fresh attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryCommit {
    pub exchange_id: ExchangeId,
    /// The generation being recovered (the exchange must still be at it).
    pub recovery: u32,
    /// Move the exchange onto another version of its integration.
    pub integration_version: Option<IntegrationVersion>,
    /// Steps back to `Initial` with no attempts, claims, errors or retry times.
    pub reset: Vec<StepId>,
    /// A `ControlSubflow` step whose failed sub-exchanges are being re-driven: its failure
    /// count goes back to zero (they count again when they end).
    pub clear_sub_failures: Option<StepId>,
    /// Stored with the recovery: the resume handoff's outbox entry, the new SLA timer.
    pub timers: Vec<Timer>,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Applied,
    /// A condition failed: the step moved on already or the exchange is final. Nothing was written.
    Conflict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    Claimed,
    /// The step is final, the attempt was already recorded, or another worker holds a live claim.
    NotClaimable,
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

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDetail {
    pub exchange: Exchange,
    /// In sequence order.
    pub steps: Vec<ExchangeStep>,
    /// In time order.
    pub logs: Vec<LogLine>,
}

#[async_trait]
pub trait ExchangeRepository: Send + Sync {
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
    /// Sets how many sub-exchanges a `ControlSubflow` step waits for (before any of them runs).
    async fn set_sub_exchange_total(&self, id: &ExchangeId, step: StepId, total: u32) -> PortResult<()>;
    async fn get(&self, id: &ExchangeId) -> PortResult<Option<ExchangeDetail>>;
    async fn get_step(&self, id: &ExchangeId, step: StepId) -> PortResult<Option<ExchangeStep>>;
    /// Newest first.
    async fn list(&self, filter: &ExchangeFilter, limit: u32, cursor: Option<&str>) -> PortResult<ExchangePage>;
    /// Claims attempt `attempt` of a step before an external side effect: applies only if the
    /// step is `Initial`, `completedAttempt < attempt`, and (`claimedAttempt < attempt` or the
    /// previous claim's lease ended before `now`), and the exchange is not final and at
    /// generation `recovery`. Sets `claimedAttempt`, `attempts`, `leaseUntil`; clears `nextRetryAt`.
    async fn claim(
        &self,
        id: &ExchangeId,
        step: StepId,
        attempt: u32,
        recovery: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> PortResult<ClaimOutcome>;
    async fn commit(&self, commit: &StepCommit) -> PortResult<CommitOutcome>;
    /// Conflict if the exchange is not Failed/TimedOut at generation `commit.recovery`.
    async fn recover(&self, commit: &RecoveryCommit) -> PortResult<CommitOutcome>;
    /// Failures, newest first.
    async fn errors(&self, filter: &ErrorFilter, limit: u32, cursor: Option<&str>) -> PortResult<ErrorPage>;
    /// Stored timers due up to `until`, oldest first.
    async fn due_timers(&self, until: DateTime<Utc>, limit: u32) -> PortResult<Vec<Timer>>;
    /// Takes a timer off the due index once its message is on its way; false if another
    /// sweeper took it first.
    async fn take_timer(&self, timer: &Timer) -> PortResult<bool>;
    /// Stores a callback token (before the call that hands it out).
    async fn put_token(&self, token: &CallbackToken) -> PortResult<()>;
    /// A token that can still be used at `now`: `None` if unknown, used or expired.
    async fn usable_token(&self, hash: &str, now: DateTime<Utc>) -> PortResult<Option<CallbackToken>>;
    /// Uses a token once and, in the same write, stores `outbox` (the timer that hands the
    /// callback on should its message never be sent). False if it was used or expired first.
    async fn consume_token(&self, hash: &str, now: DateTime<Utc>, outbox: &Timer) -> PortResult<bool>;
    async fn health(&self) -> PortResult<()>;
}

// ------------------------------------------------------------------ queues

/// The message that hands an exchange from one sub-step to the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffMessage {
    pub exchange_id: ExchangeId,
    pub integration_code: IntegrationCode,
    pub integration_version: IntegrationVersion,
    pub step_id: StepId,
    pub sub_step: SubStep,
    pub attempt: u32,
    /// The sub-step's input (the previous output), so a handoff needs no read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Payload>,
    #[serde(default)]
    pub parameters: Value,
    /// Not to run before this time (delays longer than SQS's 15 minutes hop until due).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// The exchange's recovery generation this handoff belongs to.
    #[serde(default)]
    pub recovery: u32,
    /// For a sub-exchange: the parent step that counts it when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<handoff_core::exchange::ParentLink>,
}

/// Everything the control queue carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QueueMessage {
    /// A durable timer fired (distinguished by its `timer` field).
    Timer {
        timer: Timer,
    },
    Handoff(HandoffMessage),
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
