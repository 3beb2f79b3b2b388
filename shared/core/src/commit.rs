//! The conditional writes that record what happened to an exchange: a step commit (one
//! atomic transaction), a claim, a recovery, and the failure records listed for operators.

use crate::exchange::{ExchangeError, ExchangeEvent, ExchangeStatus, LogLine, Payload, StepError, StepStatus};
use crate::handoff::Timer;
use crate::ids::{ExchangeId, IntegrationCode, IntegrationVersion, StepId};
use crate::plan::SubStep;
use crate::retry::ErrorClassification;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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

impl ExchangeChange {
    /// The write that records `event`: from any status the event applies in to its target
    /// (see [`crate::exchange::exchange_transition`]).
    pub fn on(event: ExchangeEvent) -> Self {
        Self::SetStatus { from: event.applies_in(), to: event.target(), error: None, completed_at: None }
    }

    /// The exchange fails (or times out) with `error`, from any status `event` applies in.
    pub fn fail(event: ExchangeEvent, error: ExchangeError) -> Self {
        Self::SetStatus { from: event.applies_in(), to: event.target(), error: Some(error), completed_at: None }
    }
}

impl ErrorRecord {
    /// `failure` of sub-step `sub_step` of step `step_id` as operators list it;
    /// `exchange_failed` says whether the exchange failed because of it.
    pub fn of(
        exchange_id: &ExchangeId,
        integration_code: &IntegrationCode,
        step: Option<(StepId, SubStep)>,
        failure: &crate::retry::Failure,
        exchange_failed: bool,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            exchange_id: exchange_id.clone(),
            integration_code: integration_code.clone(),
            step_id: step.map(|(id, _)| id),
            sub_step: step.map(|(_, sub_step)| sub_step),
            classification: failure.classification,
            message: failure.message.clone(),
            retryable: failure.retryable,
            exchange_failed,
            at,
        }
    }
}

impl ExchangeError {
    /// Why an exchange failed: `failure`, at the sub-step that failed (if one did).
    pub fn of(failure: &crate::retry::Failure, step: Option<(StepId, SubStep)>, at: DateTime<Utc>) -> Self {
        Self {
            classification: failure.classification,
            message: failure.message.clone(),
            retryable: failure.retryable,
            step_id: step.map(|(id, _)| id),
            sub_step: step.map(|(_, sub_step)| sub_step),
            at,
        }
    }
}
