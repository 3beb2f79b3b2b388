//! The endpoint: an integration code (all its versions) as operators hold it — Enabled,
//! Disabled, FailedRetrying or Failed — and what each status lets through. Operator
//! commands (enable, disable, resume) are pure decisions on the endpoint as stored; the
//! store writes the result under the revision it was read at.

use crate::handoff::HandoffMessage;
use crate::ids::{ExchangeId, IntegrationCode, StepId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EndpointStatus {
    /// Runs: invocations, schedules and outbound sub-steps go ahead.
    Enabled,
    /// Held by an operator: nothing starts and nothing leaves the gateway until enabled.
    Disabled,
    /// Runs, while an exchange of it retries a connection-type (system, retryable) error.
    FailedRetrying,
    /// Halted by a system failure (`onSystemFailure: halt`): held like `Disabled` until resumed.
    Failed,
}

impl EndpointStatus {
    pub const ALL: [EndpointStatus; 4] = [Self::Enabled, Self::Disabled, Self::FailedRetrying, Self::Failed];

    pub fn name(self) -> &'static str {
        match self {
            Self::Enabled => "Enabled",
            Self::Disabled => "Disabled",
            Self::FailedRetrying => "FailedRetrying",
            Self::Failed => "Failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == value)
    }

    /// Whether exchanges may start and data may leave the gateway.
    pub fn runs(self) -> bool {
        matches!(self, Self::Enabled | Self::FailedRetrying)
    }

    /// Whether the code's schedule stays armed. An operator's disable removes it (as in
    /// STEP, a disabled endpoint has no schedule); a halted endpoint keeps it, so each run it
    /// misses is logged as skipped and the operator sees what the halt held back.
    pub fn keeps_schedule(self) -> bool {
        !matches!(self, Self::Disabled)
    }
}

/// What becomes of events sent to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub enum QueueStatus {
    /// Kept until an exchange takes them.
    #[default]
    ReadEvents,
    /// Dropped and counted.
    DiscardEvents,
}

/// What a system failure of one of its exchanges does to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnSystemFailure {
    /// The endpoint goes `Failed` and holds until resumed (events must wait in order).
    Halt,
    /// The endpoint keeps running; the failure is shown on it.
    Continue,
}

/// An integration code's endpoint as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub code: IntegrationCode,
    pub status: EndpointStatus,
    /// When the status last changed.
    pub since: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `sub` of whoever changed the status last (none for the gateway itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
    #[serde(default)]
    pub queue_status: QueueStatus,
    /// `None`: the default for the kind of integration (see [`Endpoint::on_system_failure`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_system_failure: Option<OnSystemFailure>,
    /// While `FailedRetrying`: the retry that shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrying: Option<Retrying>,
    /// The last system failure of one of its exchanges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<SystemFailure>,
    /// The exchanges whose system failures halted it (`Failed`): what `resume` with
    /// `recoverFailed` recovers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub halted_by: Vec<ExchangeId>,
    /// Increases with every write (optimistic concurrency); 0 for an endpoint never stored.
    #[serde(default)]
    pub revision: u64,
}

/// An exchange of the endpoint retrying a connection-type (system, retryable) error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retrying {
    pub exchange_id: ExchangeId,
    pub step_id: StepId,
    pub error: String,
    pub at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    /// The attempt that failed, of `max_attempts`.
    pub attempt: u32,
    pub max_attempts: u32,
}

/// A system failure of an exchange of the endpoint (retries exhausted, or not retryable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemFailure {
    pub exchange_id: ExchangeId,
    pub step_id: StepId,
    /// Its catalogue code ([`crate::error_code`]).
    #[serde(default)]
    pub code: crate::error_code::ErrorCode,
    pub error: String,
    pub at: DateTime<Utc>,
}

/// What an exchange's attempt at a call outside the gateway tells of its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A connection-type error is being retried.
    Retrying(Retrying),
    /// A call succeeded.
    Succeeded,
    /// The exchange failed on a system error (not a secondary destination's).
    Failed(SystemFailure),
}

/// Most exchanges an endpoint remembers as having halted it.
pub const MAX_HALTED_BY: usize = 1000;

/// The endpoint after `seen` (`None`: nothing to change). `event_based` chooses the default
/// `onSystemFailure`. An operator's hold (`Disabled`) is never changed by what exchanges do;
/// business errors never reach here.
pub fn observe(endpoint: &Endpoint, seen: &Observation, event_based: bool, now: DateTime<Utc>) -> Option<Endpoint> {
    use EndpointStatus as S;
    let mut next = endpoint.clone();
    match (seen, endpoint.status) {
        (Observation::Retrying(retrying), S::Enabled | S::FailedRetrying) => {
            if endpoint.status == S::Enabled {
                next.since = now;
            }
            next.status = S::FailedRetrying;
            next.reason = Some(format!(
                "exchange {} retrying step {} (attempt {}/{}, next at {}): {}",
                retrying.exchange_id,
                retrying.step_id,
                retrying.attempt,
                retrying.max_attempts,
                retrying.next_attempt_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                retrying.error
            ));
            next.changed_by = None;
            next.retrying = Some(retrying.clone());
        }
        (Observation::Succeeded, S::FailedRetrying) => {
            next.status = S::Enabled;
            next.since = now;
            next.reason = Some("a call succeeded again".into());
            next.changed_by = None;
            next.retrying = None;
        }
        (Observation::Failed(failure), status) => {
            next.last_failure = Some(failure.clone());
            next.retrying = None;
            let halts = endpoint.on_system_failure(event_based) == OnSystemFailure::Halt;
            match status {
                S::Enabled | S::FailedRetrying if halts => {
                    next.status = S::Failed;
                    next.since = now;
                    next.reason = Some(format!(
                        "exchange {} failed on a system error at step {}: {}",
                        failure.exchange_id, failure.step_id, failure.error
                    ));
                    next.changed_by = None;
                    next.halted_by = vec![failure.exchange_id.clone()];
                }
                S::Failed
                    if !endpoint.halted_by.contains(&failure.exchange_id)
                        && endpoint.halted_by.len() < MAX_HALTED_BY =>
                {
                    next.halted_by.push(failure.exchange_id.clone());
                }
                S::FailedRetrying => {
                    next.status = S::Enabled;
                    next.since = now;
                    next.reason = Some(format!("exchange {} failed; the endpoint continues", failure.exchange_id));
                    next.changed_by = None;
                }
                _ => {}
            }
        }
        _ => return None,
    }
    (next != *endpoint).then_some(next)
}

impl Endpoint {
    /// The endpoint of a new code, created `status` by `by`.
    pub fn new(code: IntegrationCode, status: EndpointStatus, by: &str, now: DateTime<Utc>) -> Self {
        Self {
            code,
            status,
            since: now,
            reason: Some(format!("created {}", status.name())),
            changed_by: Some(by.to_string()),
            queue_status: QueueStatus::default(),
            on_system_failure: None,
            retrying: None,
            last_failure: None,
            halted_by: Vec::new(),
            revision: 0,
        }
    }

    /// The endpoint of a code defined before endpoints were stored: it runs, as it did.
    pub fn unrecorded(code: IntegrationCode, since: DateTime<Utc>) -> Self {
        Self { reason: None, changed_by: None, ..Self::new(code, EndpointStatus::Enabled, "", since) }
    }

    /// The policy in force: the endpoint's own, else `halt` for event-based integrations
    /// (their events must wait in order) and `continue` for the others.
    pub fn on_system_failure(&self, event_based: bool) -> OnSystemFailure {
        self.on_system_failure.unwrap_or(if event_based { OnSystemFailure::Halt } else { OnSystemFailure::Continue })
    }

    /// Why nothing may start on this endpoint now, with how to change that; `None` when it runs.
    pub fn refusal(&self) -> Option<String> {
        let since = self.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let why = self.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        let code = &self.code;
        match self.status {
            EndpointStatus::Enabled | EndpointStatus::FailedRetrying => None,
            EndpointStatus::Disabled => Some(format!(
                "integration {code} is Disabled since {since}{why}; enable it with POST /integrations/{code}/enable"
            )),
            EndpointStatus::Failed => Some(format!(
                "integration {code} is Failed since {since}{why}; resume it with POST /integrations/{code}/resume"
            )),
        }
    }
}

/// A handoff stopped at a held endpoint, before a sub-step that sends data out: it keeps
/// its place (no attempt is used) and is sent again when the endpoint runs again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldHandoff {
    pub message: HandoffMessage,
    pub held_at: DateTime<Utc>,
    /// Why, as the exchange shows it.
    pub reason: String,
}

/// Whether `message` holds at `endpoint` (as read, `None`: never stored, so it runs):
/// only before a sub-step that sends data out, only while the endpoint does not run.
pub fn hold(endpoint: Option<&Endpoint>, message: &HandoffMessage, now: DateTime<Utc>) -> Option<HeldHandoff> {
    let endpoint = endpoint.filter(|e| !e.status.runs() && message.sub_step.sends_data_out())?;
    let why = endpoint.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    Some(HeldHandoff {
        message: message.clone(),
        held_at: now,
        reason: format!("held before {}: the endpoint is {}{why}", message.sub_step, endpoint.status.name()),
    })
}

/// One line of an endpoint's log (`GET /integrations/{code}/log`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointLogEntry {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: EndpointEvent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum EndpointEvent {
    /// An exchange started (on `events` queued events, for an event-based integration).
    #[serde(rename_all = "camelCase")]
    Invoked {
        exchange_id: ExchangeId,
        trigger: crate::exchange::Trigger,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        events: Option<usize>,
    },
    /// A run that did not start, and why (a scheduled run of a held endpoint).
    #[serde(rename_all = "camelCase")]
    Skipped { trigger: crate::exchange::Trigger, reason: String },
    /// The status changed: by an operator (`by`), or by what its exchanges did.
    #[serde(rename_all = "camelCase")]
    StatusChanged {
        from: EndpointStatus,
        to: EndpointStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl EndpointLogEntry {
    /// The log line of a change from `before` to `after`, if the status changed.
    pub fn status_change(before: &Endpoint, after: &Endpoint) -> Option<Self> {
        (before.status != after.status).then(|| Self {
            at: after.since,
            event: EndpointEvent::StatusChanged {
                from: before.status,
                to: after.status,
                by: after.changed_by.clone(),
                reason: after.reason.clone(),
            },
        })
    }
}

/// What an operator asks of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointCommand {
    Enable,
    Disable,
    Resume,
}

impl EndpointCommand {
    pub fn name(self) -> &'static str {
        match self {
            Self::Enable => "enable",
            Self::Disable => "disable",
            Self::Resume => "resume",
        }
    }
}

/// An operator command that does not apply to the endpoint as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointCommandError {
    #[error("integration {code} is Failed; resume it instead (POST /integrations/{code}/resume)")]
    ResumeFailedFirst { code: IntegrationCode },
    #[error("integration {code} is {status}, not Failed; only a Failed endpoint is resumed{hint}")]
    NotFailed { code: IntegrationCode, status: &'static str, hint: String },
}

/// What a command leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointChange {
    /// The endpoint already stands where the command would put it.
    Unchanged,
    /// Store this (under the revision the endpoint was read at).
    To(Box<Endpoint>),
}

/// Decides `command` by `by` on `endpoint` as read, at `now`.
pub fn operate(
    endpoint: &Endpoint,
    command: EndpointCommand,
    by: &str,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<EndpointChange, EndpointCommandError> {
    use EndpointStatus as S;
    let code = endpoint.code.clone();
    let to = match (command, endpoint.status) {
        (EndpointCommand::Enable, S::Enabled | S::FailedRetrying) => return Ok(EndpointChange::Unchanged),
        (EndpointCommand::Enable, S::Failed) => return Err(EndpointCommandError::ResumeFailedFirst { code }),
        (EndpointCommand::Enable, S::Disabled) => S::Enabled,
        (EndpointCommand::Disable, S::Disabled) => return Ok(EndpointChange::Unchanged),
        (EndpointCommand::Disable, _) => S::Disabled,
        (EndpointCommand::Resume, S::Failed) => S::Enabled,
        (EndpointCommand::Resume, status) => {
            let hint = match status {
                S::Disabled => format!("; enable it (POST /integrations/{code}/enable)"),
                _ => String::new(),
            };
            return Err(EndpointCommandError::NotFailed { code, status: status.name(), hint });
        }
    };
    let reason = reason.map(str::to_string).unwrap_or_else(|| format!("{} by {by}", past(command)));
    Ok(EndpointChange::To(Box::new(Endpoint {
        status: to,
        since: now,
        reason: Some(reason),
        changed_by: Some(by.to_string()),
        // A resumed endpoint starts afresh; what halted it is handed to the caller to recover.
        halted_by: if command == EndpointCommand::Resume { Vec::new() } else { endpoint.halted_by.clone() },
        retrying: if to == S::Enabled { None } else { endpoint.retrying.clone() },
        ..endpoint.clone()
    })))
}

fn past(command: EndpointCommand) -> &'static str {
    match command {
        EndpointCommand::Enable => "enabled",
        EndpointCommand::Disable => "disabled",
        EndpointCommand::Resume => "resumed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(status: EndpointStatus) -> Endpoint {
        Endpoint {
            revision: 3,
            ..Endpoint::new(IntegrationCode::parse("ORDERS").expect("code"), status, "admin", Utc::now())
        }
    }

    #[test]
    fn only_a_running_endpoint_lets_exchanges_start_and_a_refusal_says_how_to_go_on() {
        assert_eq!(endpoint(EndpointStatus::Enabled).refusal(), None);
        assert_eq!(endpoint(EndpointStatus::FailedRetrying).refusal(), None);
        let disabled = endpoint(EndpointStatus::Disabled).refusal().expect("refused");
        assert!(disabled.contains("is Disabled since") && disabled.contains("POST /integrations/ORDERS/enable"));
        let failed = endpoint(EndpointStatus::Failed).refusal().expect("refused");
        assert!(failed.contains("is Failed since") && failed.contains("POST /integrations/ORDERS/resume"));
        let legacy = Endpoint::unrecorded(IntegrationCode::parse("OLD").expect("code"), Utc::now());
        assert!(legacy.status.runs() && legacy.refusal().is_none(), "codes from before endpoints keep running");
    }

    #[test]
    fn commands_move_the_endpoint_as_operators_expect() {
        use EndpointCommand::*;
        use EndpointStatus as S;
        let now = Utc::now();
        let to = |from: S, command: EndpointCommand| match operate(&endpoint(from), command, "ops", None, now) {
            Ok(EndpointChange::To(e)) => Ok(Some(*e)),
            Ok(EndpointChange::Unchanged) => Ok(None),
            Err(e) => Err(e),
        };
        let enabled = to(S::Disabled, Enable).expect("enable").expect("changed");
        assert_eq!((enabled.status, enabled.since, enabled.revision), (S::Enabled, now, 3));
        assert_eq!((enabled.changed_by.as_deref(), enabled.reason.as_deref()), (Some("ops"), Some("enabled by ops")));
        assert_eq!(to(S::Enabled, Enable), Ok(None));
        assert_eq!(to(S::FailedRetrying, Enable), Ok(None));
        assert!(matches!(to(S::Failed, Enable), Err(EndpointCommandError::ResumeFailedFirst { .. })));
        for from in [S::Enabled, S::FailedRetrying, S::Failed] {
            assert_eq!(to(from, Disable).expect("disable").map(|e| e.status), Some(S::Disabled));
        }
        assert_eq!(to(S::Disabled, Disable), Ok(None));
        assert_eq!(to(S::Failed, Resume).expect("resume").map(|e| e.status), Some(S::Enabled));
        let not_failed = to(S::Disabled, Resume).expect_err("not failed").to_string();
        assert!(not_failed.contains("enable it"), "{not_failed}");
        assert!(to(S::Enabled, Resume).is_err());
    }

    #[test]
    fn event_based_endpoints_halt_by_default_others_continue() {
        let mut e = endpoint(EndpointStatus::Enabled);
        assert_eq!(e.on_system_failure(true), OnSystemFailure::Halt);
        assert_eq!(e.on_system_failure(false), OnSystemFailure::Continue);
        e.on_system_failure = Some(OnSystemFailure::Halt);
        assert_eq!(e.on_system_failure(false), OnSystemFailure::Halt);
    }

    #[test]
    fn a_held_endpoint_stops_its_exchanges_only_before_data_goes_out() {
        let f = crate::machine::attempt::tests::Fixture::new(serde_json::json!({"code": "C", "version": 1, "steps": [
            {"name": "t", "type": "transformation", "function": {"jq": "."}},
            {"name": "d", "type": "delivery", "destinations": [{"kind": "rest", "request": {"url": "http://t.example"}}]}]}));
        let transform = f.message(1);
        let delivery = f.message(2);
        assert_eq!(delivery.sub_step, crate::plan::SubStep::DeliverRest);
        let now = Utc::now();
        let mut disabled = endpoint(EndpointStatus::Disabled);
        disabled.reason = Some("partner maintenance".into());
        let held = hold(Some(&disabled), &delivery, now).expect("held");
        assert_eq!((held.message, held.held_at), (delivery.clone(), now));
        assert_eq!(held.reason, "held before DeliverRest: the endpoint is Disabled: partner maintenance");
        assert!(hold(Some(&endpoint(EndpointStatus::Failed)), &delivery, now).is_some());
        assert!(hold(Some(&disabled), &transform, now).is_none(), "work inside the gateway goes on");
        assert!(hold(Some(&endpoint(EndpointStatus::Enabled)), &delivery, now).is_none());
        assert!(hold(Some(&endpoint(EndpointStatus::FailedRetrying)), &delivery, now).is_none());
        assert!(hold(None, &delivery, now).is_none(), "an endpoint never stored runs");
    }

    #[test]
    fn retries_failures_and_successes_move_a_running_endpoint_but_never_an_operators_hold() {
        use EndpointStatus as S;
        let now = Utc::now();
        let retrying = Retrying {
            exchange_id: ExchangeId::new("x1"),
            step_id: StepId::from_sequence(2),
            error: "POST http://t/in could not connect".into(),
            at: now,
            next_attempt_at: now + chrono::Duration::seconds(30),
            attempt: 1,
            max_attempts: 3,
        };
        let failure = |id: &str| SystemFailure {
            exchange_id: ExchangeId::new(id),
            step_id: StepId::from_sequence(2),
            code: crate::error_code::ErrorCode::Unavailable,
            error: "retries exhausted".into(),
            at: now,
        };
        let enabled = endpoint(S::Enabled);
        let shown = observe(&enabled, &Observation::Retrying(retrying.clone()), false, now).expect("changed");
        assert_eq!((shown.status, shown.since), (S::FailedRetrying, now));
        assert!(shown.reason.as_deref().is_some_and(|r| r.contains("attempt 1/3") && r.contains("could not connect")));
        assert_eq!(shown.retrying.as_ref(), Some(&retrying));
        let back = observe(&shown, &Observation::Succeeded, false, now).expect("changed");
        assert_eq!((back.status, back.retrying.clone()), (S::Enabled, None));
        assert_eq!(observe(&enabled, &Observation::Succeeded, false, now), None, "nothing to change");

        // continue (the default for integrations that are not event-based): shown, not halted.
        let continued = observe(&shown, &Observation::Failed(failure("x1")), false, now).expect("changed");
        assert_eq!(continued.status, S::Enabled);
        assert_eq!(continued.last_failure, Some(failure("x1")));
        // halt: Failed, remembering who halted it; later failures join.
        let halted = observe(&shown, &Observation::Failed(failure("x1")), true, now).expect("changed");
        assert_eq!((halted.status, halted.halted_by.clone()), (S::Failed, vec![ExchangeId::new("x1")]));
        assert!(halted.refusal().is_some_and(|r| r.contains("resume")));
        let more = observe(&halted, &Observation::Failed(failure("x2")), true, now).expect("changed");
        assert_eq!(more.halted_by, vec![ExchangeId::new("x1"), ExchangeId::new("x2")]);
        assert_eq!(observe(&more, &Observation::Retrying(retrying.clone()), true, now), None);
        // An operator's hold stays.
        let disabled = endpoint(S::Disabled);
        assert_eq!(observe(&disabled, &Observation::Retrying(retrying), true, now), None);
        let seen = observe(&disabled, &Observation::Failed(failure("x3")), true, now).expect("failure shown");
        assert_eq!(seen.status, S::Disabled);
        // Resuming clears what halted it.
        let EndpointChange::To(resumed) = operate(&more, EndpointCommand::Resume, "ops", None, now).expect("resume")
        else {
            panic!("changed")
        };
        assert_eq!((resumed.status, resumed.halted_by.len()), (S::Enabled, 0));
    }
}
