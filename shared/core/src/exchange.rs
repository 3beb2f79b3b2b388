//! Exchanges and their steps: states, payloads, log lines, and the transition functions
//! that decide what happens next. Decisions only — the caller performs them.

use crate::error_code::ErrorCode;
use crate::ids::{DataFileSetId, ExchangeId, IntegrationCode, IntegrationVersion, StepId};
use crate::plan::SubStep;
use crate::retry::{ErrorClassification, Failure, RetryPolicy};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ExchangeStatus {
    New,
    Started,
    WaitingOnExternalSystem,
    WaitingForSubExchangesToFinish,
    Failed,
    TimedOut,
    Completed,
}

impl ExchangeStatus {
    pub const ALL: [ExchangeStatus; 7] = [
        Self::New,
        Self::Started,
        Self::WaitingOnExternalSystem,
        Self::WaitingForSubExchangesToFinish,
        Self::Failed,
        Self::TimedOut,
        Self::Completed,
    ];

    pub fn code(&self) -> &'static str {
        match self {
            Self::New => "N",
            Self::Started => "S",
            Self::WaitingOnExternalSystem => "W",
            Self::WaitingForSubExchangesToFinish => "WS",
            Self::Failed => "F",
            Self::TimedOut => "T",
            Self::Completed => "C",
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Self::New => "New",
            Self::Started => "Started",
            Self::WaitingOnExternalSystem => "WaitingOnExternalSystem",
            Self::WaitingForSubExchangesToFinish => "WaitingForSubExchangesToFinish",
            Self::Failed => "Failed",
            Self::TimedOut => "TimedOut",
            Self::Completed => "Completed",
        }
    }
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == value || s.code() == value)
    }
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Failed | Self::TimedOut | Self::Completed)
    }
    pub fn is_recoverable(&self) -> bool {
        matches!(self, Self::Failed | Self::TimedOut)
    }

    /// Every status that is not final: where sub-steps may still run.
    pub fn not_final() -> Vec<ExchangeStatus> {
        Self::ALL.into_iter().filter(|s| !s.is_final()).collect()
    }

    /// Every final status: where an exchange is kept, but nothing runs.
    pub fn finished() -> Vec<ExchangeStatus> {
        Self::ALL.into_iter().filter(|s| s.is_final()).collect()
    }

    /// Every status an exchange can be recovered from.
    pub fn recoverable() -> Vec<ExchangeStatus> {
        Self::ALL.into_iter().filter(|s| s.is_recoverable()).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum StepStatus {
    Initial,
    Skipped,
    Failed,
    Done,
}

impl StepStatus {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Initial => "I",
            Self::Skipped => "S",
            Self::Failed => "F",
            Self::Done => "D",
        }
    }
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Initial)
    }
}

/// What flows between sub-steps: small payloads inline, large ones as a data file set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type")]
pub enum Payload {
    Raw {
        raw: String,
    },
    #[serde(rename_all = "camelCase")]
    DataFileSet {
        data_file_set_id: DataFileSetId,
    },
}

impl Payload {
    pub fn raw(raw: impl Into<String>) -> Self {
        Self::Raw { raw: raw.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum LogType {
    System,
    User,
}

/// A log line of a sub-step execution. Never carries payload contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    #[serde(rename = "type")]
    pub kind: LogType,
    pub line: String,
    pub timestamp: DateTime<Utc>,
    pub step_id: StepId,
}

/// Why an exchange failed, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeError {
    pub classification: ErrorClassification,
    /// Its catalogue code ([`crate::error_code`]).
    #[serde(default)]
    pub code: ErrorCode,
    pub message: String,
    /// Whether the cause was transient (the error-processing job re-drives only these).
    #[serde(default)]
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<StepId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_step: Option<SubStep>,
    pub at: DateTime<Utc>,
}

/// The last error of a step attempt, with when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepError {
    pub classification: ErrorClassification,
    #[serde(default)]
    pub code: ErrorCode,
    pub message: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Exchange {
    pub exchange_id: ExchangeId,
    pub integration_code: IntegrationCode,
    pub integration_version: IntegrationVersion,
    pub status: ExchangeStatus,
    #[serde(default)]
    pub parameters: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExchangeError>,
    /// How often the exchange was recovered. Handoffs of an earlier recovery are stale.
    #[serde(default)]
    pub recoveries: u32,
    /// For a sub-exchange: the parent and its `ControlSubflow` step that counts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
    /// The payload the exchange completed with (what a parent subflow collects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Payload>,
    /// What started it, and who (none on exchanges from before triggers were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
}

/// What started an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum TriggerKind {
    /// `POST /exchanges`.
    Api,
    /// The integration's schedule.
    Schedule,
    /// A parent's subflow step.
    Subflow,
    /// `POST /unrouted/{id}/replay`: a request kept because it could not be routed, replayed
    /// by an operator (the caller) once it can be.
    Replay,
    /// A recovery of a failed or timed-out exchange (by an operator, or the error job): an
    /// endpoint log line, not the exchange's own trigger.
    Recovery,
}

impl TriggerKind {
    /// As stored and shown (`api`, `schedule`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Schedule => "schedule",
            Self::Subflow => "subflow",
            Self::Replay => "replay",
            Self::Recovery => "recovery",
        }
    }
}

/// What started an exchange and on whose behalf (the caller's `sub`; none for the schedule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    pub kind: TriggerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

impl Trigger {
    pub fn api(caller: &str) -> Self {
        Self { kind: TriggerKind::Api, caller: Some(caller.to_string()) }
    }
    pub fn schedule() -> Self {
        Self { kind: TriggerKind::Schedule, caller: None }
    }
    pub fn subflow() -> Self {
        Self { kind: TriggerKind::Subflow, caller: None }
    }
    pub fn recovery(by: &str) -> Self {
        Self { kind: TriggerKind::Recovery, caller: Some(by.to_string()) }
    }
    pub fn replay(operator: &str) -> Self {
        Self { kind: TriggerKind::Replay, caller: Some(operator.to_string()) }
    }
}

/// Ties a sub-exchange to the parent step that waits for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentLink {
    pub exchange_id: ExchangeId,
    /// The parent's `ControlSubflow` step.
    pub step_id: StepId,
    /// Position among the siblings (the order of the parent's collected payloads).
    pub index: u32,
    /// How deep the child is nested: 1 under a root exchange, one more per level.
    #[serde(default = "first_level")]
    pub depth: u32,
}

fn first_level() -> u32 {
    1
}

/// How the sub-exchanges of a subflow stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubExchangeCounts {
    pub total: u32,
    pub completed: u32,
    /// Failed or TimedOut.
    pub failed: u32,
}

impl SubExchangeCounts {
    pub fn running(&self) -> u32 {
        self.total.saturating_sub(self.completed + self.failed)
    }
    pub fn all_final(&self) -> bool {
        self.completed + self.failed >= self.total
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeStep {
    pub step_id: StepId,
    pub sequence: u32,
    pub integration_step: Option<String>,
    pub sub_step: SubStep,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<usize>,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
    pub attempts: u32,
    pub max_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<StepError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<DateTime<Utc>>,
    /// When its first attempt began (kept through retries; a recovery that runs it again
    /// starts it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// On a `ControlSubflow` step: its sub-exchanges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_exchanges: Option<SubExchangeCounts>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDetail {
    pub exchange: Exchange,
    /// In sequence order.
    pub steps: Vec<ExchangeStep>,
    /// In time order.
    pub logs: Vec<LogLine>,
}

// ------------------------------------------------------------------ exchange transitions

/// Something that happens to an exchange and may change its status. Every status change
/// the gateway writes is one of these, decided by [`exchange_transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeEvent {
    /// Its first sub-step (`ExchangeTriggered`) ran.
    Triggered,
    /// A call handed out a callback: the exchange waits for it.
    WaitArmed,
    /// The awaited callback (or agent report) was taken.
    CallbackTaken,
    /// A subflow started its sub-exchanges and waits for them.
    WaitingForSubExchanges,
    /// Every sub-exchange of the subflow is final; the parent goes on.
    SubExchangesFinished,
    /// `ExchangeSignoff` ran.
    SignedOff,
    /// A sub-step failed for good (retries exhausted, business error, timeout, dead letter).
    StepFailed,
    /// The exchange (or its parent) ran past its SLA.
    SlaExpired,
    /// The exchange was written but its first handoff could not be sent.
    HandoffFailed,
    /// An operator (or the error-processing job) recovers it.
    RecoveryRequested,
}

impl ExchangeEvent {
    pub const ALL: [ExchangeEvent; 10] = [
        Self::Triggered,
        Self::WaitArmed,
        Self::CallbackTaken,
        Self::WaitingForSubExchanges,
        Self::SubExchangesFinished,
        Self::SignedOff,
        Self::StepFailed,
        Self::SlaExpired,
        Self::HandoffFailed,
        Self::RecoveryRequested,
    ];

    /// The status this event leads to, wherever it applies.
    pub fn target(self) -> ExchangeStatus {
        use ExchangeStatus as S;
        match self {
            Self::Triggered | Self::CallbackTaken | Self::SubExchangesFinished | Self::RecoveryRequested => S::Started,
            Self::WaitArmed => S::WaitingOnExternalSystem,
            Self::WaitingForSubExchanges => S::WaitingForSubExchangesToFinish,
            Self::SignedOff => S::Completed,
            Self::StepFailed | Self::HandoffFailed => S::Failed,
            Self::SlaExpired => S::TimedOut,
        }
    }

    /// The statuses this event applies in: the precondition of the write that records it.
    pub fn applies_in(self) -> Vec<ExchangeStatus> {
        ExchangeStatus::ALL
            .into_iter()
            .filter(|s| exchange_transition(*s, self) == ExchangeTransition::To(self.target()))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeTransition {
    /// Write this status (it may be the current one: a duplicate of an event that applies).
    To(ExchangeStatus),
    /// Nothing to write: a final state absorbs the event, or the event does not apply in
    /// this state (a late or out-of-order message); the write's precondition fails.
    Unchanged,
    /// An operator request that is not allowed in this state (recovering a running exchange).
    Rejected,
}

/// The one place that decides whether an event changes an exchange's status.
pub fn exchange_transition(current: ExchangeStatus, event: ExchangeEvent) -> ExchangeTransition {
    use ExchangeEvent as E;
    use ExchangeStatus as S;
    use ExchangeTransition::*;
    match (current, event) {
        (s, E::RecoveryRequested) => {
            if s.is_recoverable() {
                To(S::Started)
            } else {
                Rejected
            }
        }
        (s, _) if s.is_final() => Unchanged,
        (S::New | S::Started, E::Triggered) => To(S::Started),
        (S::Started, E::WaitArmed) => To(S::WaitingOnExternalSystem),
        (S::WaitingOnExternalSystem, E::CallbackTaken) => To(S::Started),
        (S::Started | S::WaitingForSubExchangesToFinish, E::WaitingForSubExchanges) => {
            To(S::WaitingForSubExchangesToFinish)
        }
        (S::Started | S::WaitingForSubExchangesToFinish, E::SubExchangesFinished) => To(S::Started),
        (_, E::SignedOff) => To(S::Completed),
        (_, E::StepFailed) => To(S::Failed),
        (_, E::SlaExpired) => To(S::TimedOut),
        (S::New, E::HandoffFailed) => To(S::Failed),
        _ => Unchanged,
    }
}

// ------------------------------------------------------------------ step decisions

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepDecision {
    MarkDone,
    ScheduleRetry {
        next_attempt: u32,
        delay_seconds: u64,
    },
    MarkFailed(Failure),
    /// The step is already final: a duplicate or late message changes nothing.
    Ignore,
}

/// Decides after attempt number `attempts` (1-based) of a step in `status`. The policy is
/// the one in force now, so a raised `maxAttempts` lets a retrying step go on, a lowered one
/// fails it at this decision, and a final step is never revived.
pub fn decide_after_attempt(
    status: StepStatus,
    attempts: u32,
    policy: &RetryPolicy,
    outcome: AttemptOutcome,
    random: f64,
) -> StepDecision {
    if status.is_final() {
        return StepDecision::Ignore;
    }
    match outcome {
        AttemptOutcome::Succeeded => StepDecision::MarkDone,
        AttemptOutcome::Failed(failure) if !failure.retryable => StepDecision::MarkFailed(failure),
        AttemptOutcome::Failed(failure) if attempts >= policy.max_attempts => StepDecision::MarkFailed(Failure {
            message: format!("{} (gave up after {attempts} of {} attempts)", failure.message, policy.max_attempts),
            ..failure
        }),
        AttemptOutcome::Failed(_) => StepDecision::ScheduleRetry {
            next_attempt: attempts + 1,
            delay_seconds: policy.delay_seconds(attempts, random),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rank(s: ExchangeStatus) -> u8 {
        match s {
            ExchangeStatus::New => 0,
            s if s.is_final() => 2,
            _ => 1,
        }
    }

    fn any_event() -> impl Strategy<Value = ExchangeEvent> {
        proptest::sample::select(ExchangeEvent::ALL.to_vec())
    }

    fn apply(s: ExchangeStatus, e: ExchangeEvent) -> ExchangeStatus {
        match exchange_transition(s, e) {
            ExchangeTransition::To(n) => n,
            _ => s,
        }
    }

    #[test]
    fn happy_path() {
        let mut s = ExchangeStatus::New;
        s = apply(s, ExchangeEvent::Triggered);
        assert_eq!(s, ExchangeStatus::Started);
        s = apply(s, ExchangeEvent::WaitArmed);
        assert_eq!(s.code(), "W");
        s = apply(s, ExchangeEvent::CallbackTaken);
        s = apply(s, ExchangeEvent::SignedOff);
        assert_eq!(s, ExchangeStatus::Completed);
        assert_eq!(s.code(), "C");
    }

    /// The statuses each event's write requires (what the adapter turns into a condition).
    #[test]
    fn each_event_applies_in_exactly_these_statuses() {
        use ExchangeEvent as E;
        use ExchangeStatus::*;
        let cases: [(E, &[ExchangeStatus]); 10] = [
            (E::Triggered, &[New, Started]),
            (E::WaitArmed, &[Started]),
            (E::CallbackTaken, &[WaitingOnExternalSystem]),
            (E::WaitingForSubExchanges, &[Started, WaitingForSubExchangesToFinish]),
            (E::SubExchangesFinished, &[Started, WaitingForSubExchangesToFinish]),
            (E::SignedOff, &[New, Started, WaitingOnExternalSystem, WaitingForSubExchangesToFinish]),
            (E::StepFailed, &[New, Started, WaitingOnExternalSystem, WaitingForSubExchangesToFinish]),
            (E::SlaExpired, &[New, Started, WaitingOnExternalSystem, WaitingForSubExchangesToFinish]),
            (E::HandoffFailed, &[New]),
            (E::RecoveryRequested, &[Failed, TimedOut]),
        ];
        for (event, statuses) in cases {
            assert_eq!(event.applies_in(), statuses.to_vec(), "{event:?}");
        }
        assert_eq!(E::StepFailed.applies_in(), ExchangeStatus::not_final());
        assert_eq!(E::RecoveryRequested.applies_in(), ExchangeStatus::recoverable());
    }

    /// Every (status, event) pair is decided, and a write only ever leads to the event's target.
    #[test]
    fn every_pair_is_decided_with_one_target_per_event() {
        for s in ExchangeStatus::ALL {
            for e in ExchangeEvent::ALL {
                match exchange_transition(s, e) {
                    ExchangeTransition::To(t) => assert_eq!(t, e.target(), "{s:?} --{e:?}-->"),
                    ExchangeTransition::Rejected => assert_eq!(e, ExchangeEvent::RecoveryRequested),
                    ExchangeTransition::Unchanged => {}
                }
            }
        }
    }

    #[test]
    fn recovery_only_from_failed_or_timed_out() {
        use ExchangeStatus::*;
        for s in ExchangeStatus::ALL {
            let t = exchange_transition(s, ExchangeEvent::RecoveryRequested);
            if matches!(s, Failed | TimedOut) {
                assert_eq!(t, ExchangeTransition::To(Started));
            } else {
                assert_eq!(t, ExchangeTransition::Rejected, "{s:?}");
            }
        }
    }

    #[test]
    fn status_names_and_codes_parse() {
        for s in ExchangeStatus::ALL {
            assert_eq!(ExchangeStatus::parse(s.name()), Some(s));
            assert_eq!(ExchangeStatus::parse(s.code()), Some(s));
        }
        assert_eq!(ExchangeStatus::parse("nope"), None);
    }

    proptest! {
        /// Without recovery, no sequence of events moves an exchange backwards, and a final
        /// state absorbs everything.
        #[test]
        fn no_transition_goes_backwards(events in proptest::collection::vec(any_event(), 0..30)) {
            let mut s = ExchangeStatus::New;
            for e in events.into_iter().filter(|e| *e != ExchangeEvent::RecoveryRequested) {
                let next = apply(s, e);
                prop_assert!(rank(next) >= rank(s), "{s:?} --{e:?}--> {next:?}");
                if s.is_final() { prop_assert_eq!(next, s); }
                s = next;
            }
        }

        #[test]
        fn completed_absorbs_every_event(e in any_event()) {
            prop_assert_eq!(apply(ExchangeStatus::Completed, e), ExchangeStatus::Completed);
        }

        /// Failed and TimedOut absorb everything but a recovery.
        #[test]
        fn final_states_absorb_every_event_but_recovery(e in any_event()) {
            for s in [ExchangeStatus::Failed, ExchangeStatus::TimedOut] {
                if e != ExchangeEvent::RecoveryRequested {
                    prop_assert_eq!(exchange_transition(s, e), ExchangeTransition::Unchanged);
                }
            }
        }

        /// Step decisions: final steps ignore everything; retries never exceed the live maximum;
        /// business errors never retry.
        #[test]
        fn step_decisions_respect_the_live_policy(
            attempts in 1u32..20, max in 1u32..20, retryable in any::<bool>(), succeeded in any::<bool>(),
            status in prop_oneof![Just(StepStatus::Initial), Just(StepStatus::Done), Just(StepStatus::Failed), Just(StepStatus::Skipped)],
        ) {
            let policy = RetryPolicy { max_attempts: max, ..RetryPolicy::default() };
            let outcome = if succeeded { AttemptOutcome::Succeeded } else {
                AttemptOutcome::Failed(Failure { retryable, ..Failure::transient("x") })
            };
            let d = decide_after_attempt(status, attempts, &policy, outcome, 0.3);
            if status.is_final() {
                prop_assert_eq!(d, StepDecision::Ignore);
            } else if succeeded {
                prop_assert_eq!(d, StepDecision::MarkDone);
            } else {
                match d {
                    StepDecision::ScheduleRetry { next_attempt, .. } => {
                        prop_assert!(retryable);
                        prop_assert!(next_attempt <= max);
                        prop_assert_eq!(next_attempt, attempts + 1);
                    }
                    StepDecision::MarkFailed(_) => prop_assert!(!retryable || attempts >= max),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
    }
}
