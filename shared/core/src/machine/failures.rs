//! Failures that do not come from an attempt: a handoff that kept failing and was
//! dead-lettered, and a new exchange whose first handoff could not be sent. Either way the
//! exchange is marked Failed (system error, retryable, cause recorded) so nothing is lost
//! silently and it can be recovered. A dead-lettered timer is not a failure of its
//! exchange: it goes back to the control queue ([`timer_dead_lettered`]).

use super::{step_error, Decision};
use crate::commit::{ErrorRecord, ExchangeChange, StepChange, StepCommit};
use crate::exchange::{Exchange, ExchangeError, ExchangeEvent, StepStatus};
use crate::handoff::{HandoffMessage, Timer};
use crate::ids::StepId;
use crate::retry::{Failure, RetryPolicy};
use chrono::{DateTime, Utc};

/// `message` was dead-lettered from `queue` after `receives` receives.
pub fn dead_lettered(message: &HandoffMessage, queue: &str, receives: &str, now: DateTime<Utc>) -> Decision {
    let cause = format!(
        "handoff of sub-step {} (attempt {}) was dead-lettered in {queue} after {receives} receives",
        message.sub_step, message.attempt
    );
    let failure = Failure::transient(cause);
    let at = Some((message.step_id, message.sub_step));
    let mut d = Decision::new(StepCommit::new(
        message.exchange_id.clone(),
        message.recovery,
        ExchangeChange::fail(ExchangeEvent::StepFailed, ExchangeError::of(&failure, at, now)),
        now,
    ));
    d.commit.record_error(ErrorRecord::of(&message.exchange_id, &message.integration_code, at, &failure, true, now));
    d.commit.step = Some(StepChange {
        step_id: message.step_id,
        attempt: message.attempt,
        claimed: false,
        status: StepStatus::Failed,
        payload: None,
        max_attempts: message.attempt,
        last_error: Some(step_error(&failure, now)),
        next_retry_at: None,
        started_at: None,
        completed_at: None,
        logs: Vec::new(),
    });
    d.count_on_parent(message.parent.as_ref(), false);
    d
}

/// How long a dead-lettered timer waits before the control queue has it again: long enough
/// for a passing fault (a throttled table, a restarted host) to clear.
pub const TIMER_REDRIVE_DELAY_SECONDS: u32 = 60;

/// A timer still dead-lettered this long after its due time has failed through many
/// redrives: it stays in the DLQ for an operator (its depth alarm tells them).
pub fn timer_given_up_after() -> chrono::Duration {
    chrono::Duration::hours(24)
}

/// What becomes of a timer that reached its dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub enum DeadTimer {
    /// Back to the control queue after a pause: its receives start again from zero there.
    /// Firing a timer changes nothing once its exchange has moved past it, so a timer that
    /// only met bad luck (its receives used up by a crash or lost answers) costs nothing, and
    /// one that met a fault gets another try once it has passed.
    Redrive { delay: u32 },
    /// Left in the DLQ for an operator.
    Keep { reason: String },
}

/// `timer` was dead-lettered; `now` is when its DLQ handler reads it.
pub fn timer_dead_lettered(timer: &Timer, now: DateTime<Utc>) -> DeadTimer {
    let overdue = now - timer.due;
    if overdue > timer_given_up_after() {
        return DeadTimer::Keep {
            reason: format!(
                "timer {} of exchange {} is {} h overdue and still failing",
                timer.name(),
                timer.exchange_id,
                overdue.num_hours()
            ),
        };
    }
    DeadTimer::Redrive { delay: TIMER_REDRIVE_DELAY_SECONDS }
}

/// `exchange` was written but its first handoff could not be sent (`problem` says why):
/// it fails at its first step, if it is still `New`.
pub fn handoff_failed(exchange: &Exchange, problem: &str, now: DateTime<Utc>) -> Decision {
    let failure = Failure::transient(format!("could not hand off the exchange: {problem}"));
    let first = StepId::from_sequence(0);
    let mut error = ExchangeError::of(&failure, None, now);
    error.step_id = Some(first);
    let mut d = Decision::new(StepCommit::new(
        exchange.exchange_id.clone(),
        exchange.recoveries,
        ExchangeChange::fail(ExchangeEvent::HandoffFailed, error),
        now,
    ));
    let mut record = ErrorRecord::of(&exchange.exchange_id, &exchange.integration_code, None, &failure, true, now);
    record.step_id = Some(first);
    d.commit.record_error(record);
    d.commit.step = Some(StepChange {
        step_id: first,
        attempt: 1,
        claimed: false,
        status: StepStatus::Failed,
        payload: None,
        max_attempts: RetryPolicy::default().max_attempts,
        last_error: Some(step_error(&failure, now)),
        next_retry_at: None,
        started_at: None,
        completed_at: None,
        logs: Vec::new(),
    });
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{ExchangeStatus, ParentLink};
    use crate::ids::ExchangeId;
    use crate::machine::attempt::tests::Fixture;
    use crate::machine::Effect;
    use crate::retry::ErrorClassification;
    use serde_json::json;

    #[test]
    fn a_dead_lettered_timer_goes_back_to_its_queue_until_a_day_overdue() {
        let now = Utc::now();
        let timer = |due| Timer {
            exchange_id: ExchangeId::new("x"),
            recovery: 0,
            due,
            kind: crate::handoff::TimerKind::StepTimeout { step_id: StepId::from_sequence(2) },
        };
        let redriven = DeadTimer::Redrive { delay: TIMER_REDRIVE_DELAY_SECONDS };
        assert_eq!(timer_dead_lettered(&timer(now - chrono::Duration::minutes(1)), now), redriven);
        assert_eq!(timer_dead_lettered(&timer(now + chrono::Duration::minutes(5)), now), redriven, "not yet due");
        assert_eq!(timer_dead_lettered(&timer(now - chrono::Duration::hours(24)), now), redriven, "a day: the last");
        let DeadTimer::Keep { reason } = timer_dead_lettered(&timer(now - chrono::Duration::hours(25)), now) else {
            panic!("a timer failing for over a day is left for an operator")
        };
        assert!(reason.contains("exchange x") && reason.contains("25 h overdue"), "{reason}");
    }

    #[test]
    fn a_dead_letter_fails_the_exchange_as_a_retryable_system_error_and_counts_on_the_parent() {
        let f = Fixture::new(json!({"code": "C", "steps": [
            {"name": "d", "type": "delivery", "destinations": [{"kind": "rest", "request": {"url": "http://t.example"}}]}]}));
        let mut m = f.message(1);
        m.parent = Some(ParentLink {
            exchange_id: ExchangeId::new("p"),
            step_id: StepId::from_sequence(3),
            index: 0,
            depth: 1,
        });
        let d = dead_lettered(&m, "handoff-deliver-rest-dlq", "5", Utc::now());
        let ExchangeChange::SetStatus { from, to, error: Some(error), .. } = &d.commit.exchange else {
            panic!("{:?}", d.commit.exchange)
        };
        assert_eq!((from.clone(), *to), (ExchangeStatus::not_final(), ExchangeStatus::Failed));
        assert!(error.retryable && error.classification == ErrorClassification::System);
        assert!(error.message.contains("dead-lettered in handoff-deliver-rest-dlq after 5 receives"));
        assert_eq!(d.commit.step.as_ref().map(|s| s.status), Some(StepStatus::Failed));
        assert_eq!(d.commit.recovery, m.recovery, "a dead letter of an earlier generation changes nothing");
        assert!(matches!(&d.effects[..], [Effect::ResumeParentIfLast(_)]));
    }
}
