//! The conditional writes that record what happened to an exchange: a step commit (one
//! atomic transaction), a claim, a recovery, and the failure records listed for operators.

use crate::error_code::ErrorCode;
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
    /// When the attempt began: stored only if the step has no start yet (its first attempt).
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Appended to the step's log lines.
    pub logs: Vec<LogLine>,
}

/// What a commit does to the exchange item.
#[derive(Debug, Clone, PartialEq)]
pub enum ExchangeChange {
    /// Only check the exchange is not final (a TimedOut/Failed exchange stops everything in flight).
    RequireNotFinal,
    /// Only check the exchange is in one of these statuses (a failed secondary destination
    /// re-executed on a Completed exchange requires it to stay Completed).
    RequireIn(Vec<ExchangeStatus>),
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
    /// The changed step is a wait that its timeout ends: the change applies only if no
    /// callback was accepted for it. A callback accepted (its caller told `202`) just before
    /// the timeout fires wins, and its outbox entry hands it on.
    pub unless_callback_accepted: bool,
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
    /// Whether this commit makes the exchange final.
    pub fn finishes_exchange(&self) -> bool {
        matches!(&self.exchange, ExchangeChange::SetStatus { to, .. } if to.is_final())
    }

    /// A commit that finishes the exchange also stores the timer that deletes it once it
    /// has been kept `retention` (`None`: finished exchanges are kept for ever). Stored in
    /// the same write, so no finished exchange escapes its retention; a recovery moves the
    /// exchange to the next generation, which the timer then no longer matches.
    pub fn keep_finished_for(&mut self, retention: Option<chrono::Duration>) {
        let Some(retention) = retention.filter(|_| self.finishes_exchange()) else {
            return;
        };
        self.timers.push(Timer {
            exchange_id: self.exchange_id.clone(),
            recovery: self.recovery,
            due: self.now + retention,
            kind: crate::handoff::TimerKind::Retention,
        });
    }

    /// Lists `record` with this commit, in the commit's recovery generation.
    pub fn record_error(&mut self, record: ErrorRecord) {
        self.errors.push(ErrorRecord { recovery: self.recovery, ..record });
    }

    /// A commit with no extras; callers fill in what they need.
    pub fn new(exchange_id: ExchangeId, recovery: u32, exchange: ExchangeChange, now: DateTime<Utc>) -> Self {
        Self {
            exchange_id,
            recovery,
            step: None,
            skip: Vec::new(),
            exchange,
            require_done: None,
            unless_callback_accepted: false,
            errors: Vec::new(),
            timers: Vec::new(),
            result: None,
            tally: None,
            now,
        }
    }
}

/// A failure as operators list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRecord {
    pub exchange_id: ExchangeId,
    pub integration_code: IntegrationCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<StepId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_step: Option<SubStep>,
    pub classification: ErrorClassification,
    /// Its catalogue code ([`crate::error_code`]); the action shown with it comes from there.
    #[serde(default)]
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
    /// Whether the exchange failed because of it (a secondary destination's failure does not).
    pub exchange_failed: bool,
    /// The exchange's recovery generation it happened in (the error job re-processes only
    /// an exchange nobody has recovered since).
    #[serde(default)]
    pub recovery: u32,
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
    /// Who asked and what it does, appended to the logs of the step it resumes at (that
    /// step is among `reset`): the audit trail of recoveries.
    pub log: Option<LogLine>,
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
    /// What this change requires of the exchange at generation `recovery`.
    pub fn precondition(&self, exchange: &ExchangeId, recovery: u32) -> Precondition {
        match self {
            Self::RequireNotFinal => Precondition::ExchangeNotFinal { exchange: exchange.clone(), recovery },
            Self::RequireIn(statuses) => {
                Precondition::ExchangeIn { exchange: exchange.clone(), statuses: statuses.clone(), recovery }
            }
            Self::SetStatus { from, .. } => {
                Precondition::ExchangeIn { exchange: exchange.clone(), statuses: from.clone(), recovery }
            }
        }
    }

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
            code: failure.code,
            message: failure.message.clone(),
            retryable: failure.retryable,
            exchange_failed,
            recovery: 0,
            at,
        }
    }
}

impl ExchangeError {
    /// Why an exchange failed: `failure`, at the sub-step that failed (if one did).
    pub fn of(failure: &crate::retry::Failure, step: Option<(StepId, SubStep)>, at: DateTime<Utc>) -> Self {
        Self {
            classification: failure.classification,
            code: failure.code,
            message: failure.message.clone(),
            retryable: failure.retryable,
            step_id: step.map(|(id, _)| id),
            sub_step: step.map(|(_, sub_step)| sub_step),
            at,
        }
    }
}

// ------------------------------------------------------------------ shape

/// At most this many items one commit or recovery writes (DynamoDB's limit on the actions of
/// one transaction: the write stays atomic only within it).
pub const MAX_WRITES_PER_COMMIT: usize = 100;

/// A commit that no store can carry out as one atomic write: a bug in whoever built it,
/// never worth a retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitShapeError {
    #[error("attempt numbers start at 1")]
    AttemptZero,
    #[error("an exchange cannot be its own parent")]
    OwnParent,
    /// One transaction cannot touch an item twice, and these could never apply anyway.
    #[error("step {0} cannot be both required done and changed in one commit")]
    DoneAndChanged(StepId),
    #[error("a commit cannot store two timers of the same name")]
    TimerTwice,
    /// Errors are listed one per failing step ([`crate::error_list::ErrorId`]).
    #[error("a commit cannot list two errors of the same step")]
    ErrorTwice,
    /// The recovery's log line goes on a step it resets; any other would be lost.
    #[error("a recovery logs on step {0}, which it does not reset")]
    RecoveryLogElsewhere(StepId),
    #[error("SetStatus needs at least one status to move from")]
    NoStatusToMoveFrom,
    #[error("a commit of {0} writes exceeds DynamoDB's {MAX_WRITES_PER_COMMIT} per transaction")]
    TooManyWrites(usize),
    #[error(
        "a recovery can write at most {MAX_WRITES_PER_COMMIT} items (the exchange, its steps and timers), not {0}"
    )]
    RecoveryTooLarge(usize),
}

impl StepCommit {
    /// How many items the commit writes: the step, the skips, the done check, the errors,
    /// the timers, the exchange and the parent tally.
    pub fn write_count(&self) -> usize {
        usize::from(self.step.is_some())
            + self.skipped_steps().len()
            + usize::from(self.require_done.is_some())
            + self.errors.len()
            + self.timers.len()
            + 1
            + usize::from(self.tally.is_some())
    }

    /// Whether the commit can be carried out as one atomic write (see [`CommitShapeError`]).
    pub fn check_shape(&self) -> Result<(), CommitShapeError> {
        if self.step.as_ref().is_some_and(|c| c.attempt == 0) {
            return Err(CommitShapeError::AttemptZero);
        }
        if self.tally.as_ref().is_some_and(|t| t.parent == self.exchange_id) {
            return Err(CommitShapeError::OwnParent);
        }
        if let Some(done) = self.require_done {
            let changed = self.step.as_ref().map(|c| c.step_id);
            if Some(done) == changed || self.skipped_steps().contains(&done) {
                return Err(CommitShapeError::DoneAndChanged(done));
            }
        }
        let mut names: Vec<String> = self.timers.iter().map(Timer::name).collect();
        names.sort();
        names.dedup();
        if names.len() != self.timers.len() {
            return Err(CommitShapeError::TimerTwice);
        }
        let mut failing: Vec<Option<StepId>> = self.errors.iter().map(|e| e.step_id).collect();
        failing.sort();
        failing.dedup();
        if failing.len() != self.errors.len() {
            return Err(CommitShapeError::ErrorTwice);
        }
        if matches!(&self.exchange, ExchangeChange::SetStatus { from, .. } if from.is_empty()) {
            return Err(CommitShapeError::NoStatusToMoveFrom);
        }
        match self.write_count() {
            count if count > MAX_WRITES_PER_COMMIT => Err(CommitShapeError::TooManyWrites(count)),
            _ => Ok(()),
        }
    }
}

impl RecoveryCommit {
    /// How many items the recovery writes: the exchange, the steps it resets or clears, the timers.
    pub fn write_count(&self) -> usize {
        self.reset_steps().len() + 1 + usize::from(self.clear_alone().is_some()) + self.timers.len()
    }

    /// Whether the recovery fits one atomic write.
    pub fn check_shape(&self) -> Result<(), CommitShapeError> {
        if let Some(line) = self.log.as_ref().filter(|line| !self.reset.contains(&line.step_id)) {
            return Err(CommitShapeError::RecoveryLogElsewhere(line.step_id));
        }
        match self.write_count() {
            count if count > MAX_WRITES_PER_COMMIT => Err(CommitShapeError::RecoveryTooLarge(count)),
            _ => Ok(()),
        }
    }
}

// ------------------------------------------------------------------ preconditions

/// What deleting an exchange whose retention ran out requires: it is still final at
/// generation `recovery` (a recovery meanwhile keeps it).
pub fn deletion_preconditions(exchange: &ExchangeId, recovery: u32) -> Vec<Precondition> {
    vec![Precondition::ExchangeIn { exchange: exchange.clone(), statuses: ExchangeStatus::finished(), recovery }]
}

/// What a write requires of the item it touches. The core states them; the DynamoDB adapter
/// compiles each mechanically into a condition expression (and the in-memory fake evaluates
/// them), and a conflict names the ones that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// The exchange is not final and at recovery generation `recovery`.
    ExchangeNotFinal { exchange: ExchangeId, recovery: u32 },
    /// The exchange is in one of `statuses` at recovery generation `recovery`.
    ExchangeIn { exchange: ExchangeId, statuses: Vec<ExchangeStatus>, recovery: u32 },
    /// The step is `Initial` and attempt `attempt` is not recorded yet.
    StepOpen { exchange: ExchangeId, step: StepId, attempt: u32 },
    /// Attempt `attempt` holds the step's claim.
    ClaimedBy { exchange: ExchangeId, step: StepId, attempt: u32 },
    /// No live claim of attempt `attempt` or later: none was made, or its lease ended by `now`.
    Claimable { exchange: ExchangeId, step: StepId, attempt: u32, now: DateTime<Utc> },
    /// The step is still `Initial`.
    StepInitial { exchange: ExchangeId, step: StepId },
    /// The step is `Done` (a callback must not overtake the call that armed it).
    StepDone { exchange: ExchangeId, step: StepId },
    /// The step is `Failed` (a re-execution starts only from a failure).
    StepFailed { exchange: ExchangeId, step: StepId },
    /// The step exists (writes never create one).
    StepExists { exchange: ExchangeId, step: StepId },
    /// No callback was accepted for the (waiting) step since it was last reset.
    NoCallbackAccepted { exchange: ExchangeId, step: StepId },
    /// The callback token exists, is unused and not expired at `now`.
    TokenUsable { hash: String, now: DateTime<Utc> },
}

/// The item a precondition is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ItemRef {
    Exchange(ExchangeId),
    Step(ExchangeId, StepId),
    Token(String),
}

impl Precondition {
    pub fn item(&self) -> ItemRef {
        match self {
            Self::ExchangeNotFinal { exchange, .. } | Self::ExchangeIn { exchange, .. } => {
                ItemRef::Exchange(exchange.clone())
            }
            Self::StepOpen { exchange, step, .. }
            | Self::ClaimedBy { exchange, step, .. }
            | Self::Claimable { exchange, step, .. }
            | Self::StepInitial { exchange, step }
            | Self::StepDone { exchange, step }
            | Self::StepFailed { exchange, step }
            | Self::StepExists { exchange, step }
            | Self::NoCallbackAccepted { exchange, step } => ItemRef::Step(exchange.clone(), *step),
            Self::TokenUsable { hash, .. } => ItemRef::Token(hash.clone()),
        }
    }

    /// Whether this failed precondition shows the message that met it is stale: its
    /// exchange is final or was recovered since (both only ever move forward).
    pub fn shows_stale_exchange(&self) -> bool {
        matches!(self, Self::ExchangeNotFinal { .. })
    }
}

/// A write whose preconditions did not all hold; nothing of it was written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conflict {
    /// The preconditions that failed, as precisely as the store tells (DynamoDB names the
    /// items whose conditions failed, so all of one item's preconditions are listed). Empty
    /// when the store gave no reasons.
    pub failed: Vec<Precondition>,
}

impl Conflict {
    /// The message that met the conflict is stale (see [`Precondition::shows_stale_exchange`]).
    pub fn is_stale(&self) -> bool {
        self.failed.iter().any(Precondition::shows_stale_exchange)
    }
}

impl StepChange {
    /// What recording this change requires: the step open for this attempt, and its claim
    /// held by it if the attempt was claimed.
    pub fn preconditions(&self, exchange: &ExchangeId) -> Vec<Precondition> {
        let (exchange, step, attempt) = (exchange.clone(), self.step_id, self.attempt);
        let mut required = vec![Precondition::StepOpen { exchange: exchange.clone(), step, attempt }];
        if self.claimed {
            required.push(Precondition::ClaimedBy { exchange, step, attempt });
        }
        required
    }
}

impl StepCommit {
    /// The steps to mark `Skipped`: in order, once each, never the changed step itself.
    pub fn skipped_steps(&self) -> Vec<StepId> {
        let changed = self.step.as_ref().map(|c| c.step_id);
        let mut skips: Vec<StepId> = self.skip.iter().copied().filter(|s| Some(*s) != changed).collect();
        skips.sort();
        skips.dedup();
        skips
    }

    /// The preconditions on the changed step's item (none without a step change).
    pub fn step_preconditions(&self) -> Vec<Precondition> {
        let Some(change) = &self.step else { return Vec::new() };
        let mut required = change.preconditions(&self.exchange_id);
        if self.unless_callback_accepted {
            required
                .push(Precondition::NoCallbackAccepted { exchange: self.exchange_id.clone(), step: change.step_id });
        }
        required
    }

    /// Every precondition of the commit, each on the item it concerns.
    pub fn preconditions(&self) -> Vec<Precondition> {
        let id = &self.exchange_id;
        let mut required = self.step_preconditions();
        for step in self.skipped_steps() {
            required.push(Precondition::StepInitial { exchange: id.clone(), step });
        }
        if let Some(step) = self.require_done {
            required.push(Precondition::StepDone { exchange: id.clone(), step });
        }
        required.push(self.exchange.precondition(id, self.recovery));
        if let Some(tally) = &self.tally {
            required.push(Precondition::StepExists { exchange: tally.parent.clone(), step: tally.step_id });
        }
        required
    }
}

/// What claiming one attempt of a step requires.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRequest {
    pub exchange_id: ExchangeId,
    pub step: StepId,
    pub attempt: u32,
    pub recovery: u32,
    /// What the exchange must be ([`crate::handoff::HandoffMessage::exchange_requirement`]).
    pub requires: ExchangeChange,
    pub now: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
}

/// A claim's lease ends this long before its message can come back. The lease matches the
/// queue's visibility timeout, but the claim is made a moment after the receive: with the
/// same length, a message redelivered after its attempt crashed would find the dead claim
/// live by milliseconds, wait a whole visibility timeout more and use up one of its
/// receives on the way to the dead-letter queue.
pub const CLAIM_LEASE_MARGIN_SECONDS: i64 = 2;

/// Until when a claim made at `now` is exclusive, for a message invisible for `lease`.
pub fn claim_lease_until(now: DateTime<Utc>, lease: chrono::Duration) -> DateTime<Utc> {
    let margin = chrono::Duration::seconds(CLAIM_LEASE_MARGIN_SECONDS);
    now + (lease - margin).max(chrono::Duration::seconds(1))
}

impl ClaimRequest {
    /// Its preconditions: the step open for the attempt, no live claim of it, the exchange
    /// as required at its generation.
    pub fn preconditions(&self) -> Vec<Precondition> {
        let (exchange, step, attempt) = (&self.exchange_id, self.step, self.attempt);
        vec![
            Precondition::StepOpen { exchange: exchange.clone(), step, attempt },
            Precondition::Claimable { exchange: exchange.clone(), step, attempt, now: self.now },
            self.requires.precondition(exchange, self.recovery),
        ]
    }
}

/// A failed secondary destination of a Completed exchange run again: its sub-step back to
/// `Initial` with no attempts (a fresh run under its retry policy), with who asked logged,
/// while the exchange stays Completed at its generation.
#[derive(Debug, Clone, PartialEq)]
pub struct ReexecutionCommit {
    pub exchange_id: ExchangeId,
    pub recovery: u32,
    pub step: StepId,
    pub log: LogLine,
    pub now: DateTime<Utc>,
}

impl ReexecutionCommit {
    pub fn preconditions(&self) -> Vec<Precondition> {
        vec![
            Precondition::ExchangeIn {
                exchange: self.exchange_id.clone(),
                statuses: vec![ExchangeStatus::Completed],
                recovery: self.recovery,
            },
            Precondition::StepFailed { exchange: self.exchange_id.clone(), step: self.step },
        ]
    }
}

impl RecoveryCommit {
    /// The steps to reset: in order, once each.
    pub fn reset_steps(&self) -> Vec<StepId> {
        let mut reset = self.reset.clone();
        reset.sort();
        reset.dedup();
        reset
    }

    /// A step whose failed sub-exchanges count zero again without being reset itself.
    pub fn clear_alone(&self) -> Option<StepId> {
        self.clear_sub_failures.filter(|step| !self.reset.contains(step))
    }

    /// Every precondition of the recovery: the exchange recoverable at its generation, and
    /// every step it touches existing.
    pub fn preconditions(&self) -> Vec<Precondition> {
        let id = &self.exchange_id;
        let mut required = vec![Precondition::ExchangeIn {
            exchange: id.clone(),
            statuses: ExchangeEvent::RecoveryRequested.applies_in(),
            recovery: self.recovery,
        }];
        for step in self.reset_steps().into_iter().chain(self.clear_alone()) {
            required.push(Precondition::StepExists { exchange: id.clone(), step });
        }
        required
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crashed_claim_has_ended_when_its_message_comes_back_and_holds_against_duplicates_before() {
        let visibility = chrono::Duration::seconds(60);
        let received = Utc::now();
        // Claimed a moment after the receive; the attempt then crashes.
        let lease_until = claim_lease_until(received + chrono::Duration::milliseconds(1500), visibility);
        let redelivered = received + visibility;
        assert!(lease_until < redelivered, "Claimable is `leaseUntil < now` when the message comes back");
        let duplicate = received + chrono::Duration::seconds(30);
        assert!(lease_until > duplicate, "a duplicate while the attempt lives finds the claim live");
        assert!(claim_lease_until(received, chrono::Duration::zero()) > received, "never a lease already over");
    }

    fn commit() -> StepCommit {
        let id = ExchangeId::new("x");
        let mut c = StepCommit::new(id, 2, ExchangeChange::on(ExchangeEvent::SignedOff), Utc::now());
        c.step = Some(StepChange {
            step_id: StepId::from_sequence(3),
            attempt: 2,
            claimed: true,
            status: StepStatus::Done,
            payload: None,
            max_attempts: 3,
            last_error: None,
            next_retry_at: None,
            started_at: None,
            completed_at: None,
            logs: vec![],
        });
        c.skip = vec![
            StepId::from_sequence(5),
            StepId::from_sequence(3),
            StepId::from_sequence(4),
            StepId::from_sequence(5),
        ];
        c.require_done = Some(StepId::from_sequence(2));
        c.tally =
            Some(ParentTally { parent: ExchangeId::new("p"), step_id: StepId::from_sequence(7), completed: true });
        c
    }

    #[test]
    fn a_commit_states_each_precondition_on_its_item() {
        let x = || ExchangeId::new("x");
        let step = StepId::from_sequence;
        assert_eq!(
            commit().preconditions(),
            vec![
                Precondition::StepOpen { exchange: x(), step: step(3), attempt: 2 },
                Precondition::ClaimedBy { exchange: x(), step: step(3), attempt: 2 },
                Precondition::StepInitial { exchange: x(), step: step(4) },
                Precondition::StepInitial { exchange: x(), step: step(5) },
                Precondition::StepDone { exchange: x(), step: step(2) },
                Precondition::ExchangeIn { exchange: x(), statuses: ExchangeStatus::not_final(), recovery: 2 },
                Precondition::StepExists { exchange: ExchangeId::new("p"), step: step(7) },
            ]
        );
        let mut plain = commit();
        plain.exchange = ExchangeChange::RequireNotFinal;
        assert!(plain.preconditions().contains(&Precondition::ExchangeNotFinal { exchange: x(), recovery: 2 }));
    }

    #[test]
    fn a_commit_that_cannot_be_one_transaction_is_refused_before_any_store_sees_it() {
        assert_eq!(commit().check_shape(), Ok(()));
        assert_eq!(commit().write_count(), 6, "step, two skips (3 is the step itself), done check, exchange, tally");
        let mut own = commit();
        own.tally =
            Some(ParentTally { parent: ExchangeId::new("x"), step_id: StepId::from_sequence(7), completed: true });
        assert_eq!(own.check_shape(), Err(CommitShapeError::OwnParent));
        let mut overlap = commit();
        overlap.require_done = Some(StepId::from_sequence(4));
        assert_eq!(overlap.check_shape(), Err(CommitShapeError::DoneAndChanged(StepId::from_sequence(4))));
        let mut many = commit();
        many.skip = (10..107).map(StepId::from_sequence).collect();
        assert_eq!(many.check_shape(), Err(CommitShapeError::TooManyWrites(101)));
        many.skip.pop();
        assert_eq!(many.check_shape(), Ok(()), "exactly the limit");
    }

    #[test]
    fn only_a_failed_not_final_check_shows_a_stale_message() {
        let x = ExchangeId::new("x");
        let stale = Conflict { failed: vec![Precondition::ExchangeNotFinal { exchange: x.clone(), recovery: 0 }] };
        assert!(stale.is_stale());
        let moved_on = Conflict {
            failed: vec![Precondition::StepOpen { exchange: x.clone(), step: StepId::from_sequence(1), attempt: 1 }],
        };
        assert!(!moved_on.is_stale());
        let waiting = Conflict {
            failed: vec![Precondition::ExchangeIn {
                exchange: x,
                statuses: vec![ExchangeStatus::WaitingOnExternalSystem],
                recovery: 0,
            }],
        };
        assert!(!waiting.is_stale(), "a running exchange in another status is not stale");
        assert!(!Conflict::default().is_stale());
    }

    #[test]
    fn only_a_commit_that_finishes_the_exchange_stores_its_retention() {
        let days = Some(chrono::Duration::days(30));
        let mut finishing = commit();
        assert!(finishing.finishes_exchange());
        finishing.keep_finished_for(days);
        assert!(matches!(
            &finishing.timers[..],
            [Timer { kind: crate::handoff::TimerKind::Retention, recovery: 2, due, .. }] if *due == finishing.now + chrono::Duration::days(30)
        ));
        assert_eq!(finishing.check_shape(), Ok(()));

        let mut kept_for_ever = commit();
        kept_for_ever.keep_finished_for(None);
        assert!(kept_for_ever.timers.is_empty());

        let mut running = StepCommit::new(ExchangeId::new("x"), 0, ExchangeChange::RequireNotFinal, Utc::now());
        running.keep_finished_for(days);
        let mut failing_over =
            StepCommit::new(ExchangeId::new("x"), 0, ExchangeChange::on(ExchangeEvent::CallbackTaken), Utc::now());
        failing_over.keep_finished_for(days);
        assert!(!running.finishes_exchange() && running.timers.is_empty() && failing_over.timers.is_empty());
    }
}
