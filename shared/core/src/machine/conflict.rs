//! A claim or commit found its precondition failed: another delivery of the same message
//! (or a final or recovered exchange) got there first. What to do then is decided here,
//! from the exchange as it stands: send again what a crash between that other commit and
//! its sends could have lost — the next handoff (when it evidently never happened), the
//! retry, the wait's timeout — try again later when the other copy is still in flight,
//! and otherwise drop the message. Duplicates of what is sent again are absorbed downstream.

use super::{delay_until, Effect, Pipeline, MAX_SQS_DELAY_SECONDS};
use crate::exchange::{ExchangeDetail, ExchangeStatus, ExchangeStep, ParentLink, StepStatus};
use crate::handoff::{HandoffMessage, Timer, TimerKind};
use crate::plan::SubStep;
use chrono::{DateTime, Duration as ChronoDuration, Utc};

/// What a conflicting message leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterConflict {
    /// Nothing to do: the message is a duplicate, late or stale (the reason, for the log).
    Drop(&'static str),
    /// Send this again in case the first send was lost (the reason, for the log).
    Resend(Box<Effect>, &'static str),
    /// Another attempt is in flight or a callback overtook its call: leave the message on its
    /// queue to come back later.
    TryLater,
    /// The message names a step the exchange does not have.
    BadMessage(String),
}

/// Decides after a write that found its exchange final or recovered since (the message, timer
/// or dead letter is stale). A sub-exchange's final write is followed by resuming its parent
/// if it was the last to end; a crash between the two would leave the parent waiting for
/// ever, so whatever comes back stale for a sub-exchange checks its parent again (the check
/// is idempotent: the parent's step takes only the first resume).
pub fn after_stale(parent: Option<&ParentLink>) -> AfterConflict {
    match parent {
        Some(link) => AfterConflict::Resend(
            Box::new(Effect::ResumeParentIfLast(link.clone())),
            "stale for a sub-exchange that is final or recovered; its parent is resumed if it waits on it and that was lost",
        ),
        None => AfterConflict::Drop("late or stale (the exchange is final or was recovered since)"),
    }
}

/// Decides after a conflict of `message`; `detail` is its exchange as read after the conflict.
pub fn after_conflict(
    pipeline: Pipeline<'_>,
    message: &HandoffMessage,
    detail: Option<&ExchangeDetail>,
    now: DateTime<Utc>,
) -> AfterConflict {
    use AfterConflict::*;
    let Some(detail) = detail else { return Drop("handoff for an exchange that does not exist") };
    if !message.runs_in(detail.exchange.status) || detail.exchange.recoveries != message.recovery {
        return after_stale(message.parent.as_ref());
    }
    let Some(step) = detail.steps.iter().find(|s| s.step_id == message.step_id) else {
        return BadMessage(format!("exchange has no step {}", message.step_id));
    };
    if message.reexecution && step.status != StepStatus::Initial {
        // Nothing follows a re-execution: once recorded, a duplicate has nothing to send.
        return Drop("re-execution already recorded; duplicate");
    }
    let previous_done = message.step_id.sequence() == 0
        || detail.steps.get(message.step_id.sequence() as usize - 1).is_some_and(|s| s.status != StepStatus::Initial);
    match step.status {
        StepStatus::Initial if step.attempts > message.attempt => Drop("stale attempt"),
        // This attempt failed and scheduled the next; a crash (or a timed-out batch) between
        // that commit and the send would lose the retry, so send it again: its claim lets only
        // one copy run. A retry too far ahead for a delayed message was stored with the commit.
        StepStatus::Initial if step.attempts == message.attempt && step.next_retry_at.is_some() => {
            let Some(due) = step.next_retry_at else { return Drop("stale attempt") };
            if (due - now).num_seconds() > MAX_SQS_DELAY_SECONDS {
                return Drop("duplicate of a failed attempt; its retry is a stored timer");
            }
            let retry = message.retry(message.attempt + 1, due);
            let family = message.sub_step.family();
            Resend(
                Box::new(Effect::Send { family, message: retry, delay: delay_until(now, due) }),
                "duplicate of a failed attempt; its retry is sent again in case it was lost",
            )
        }
        StepStatus::Initial if step.next_retry_at.is_some() => Drop("stale attempt"),
        // A callback that overtook the call that armed it (the call's answer was lost, say,
        // and the call is retried): it waits for that call, sent again delayed rather than
        // left on its queue, where each return uses up a receive on the way to the DLQ while
        // the call's retry may be minutes away.
        StepStatus::Initial if !previous_done => wait_for_the_call(message, detail, now),
        StepStatus::Initial if step.attempts == message.attempt || step.attempts == 0 => TryLater,
        StepStatus::Initial => Drop("stale attempt"),
        StepStatus::Failed | StepStatus::Skipped => Drop("step already final; duplicate"),
        StepStatus::Done => after_done(pipeline, message, detail, step, now),
    }
}

/// How soon a callback ahead of its call looks again when the call has no retry scheduled
/// (it is in flight).
const CALL_RECHECK_SECONDS: i64 = 10;

/// The callback `message` again, due once the call before its step may be recorded: just
/// after that call's scheduled retry, or shortly while it is in flight.
fn wait_for_the_call(message: &HandoffMessage, detail: &ExchangeDetail, now: DateTime<Utc>) -> AfterConflict {
    let call = message.step_id.sequence().checked_sub(1).and_then(|at| detail.steps.get(at as usize));
    let due = call
        .and_then(|call| call.next_retry_at)
        .filter(|at| *at > now)
        .map_or(now + ChronoDuration::seconds(CALL_RECHECK_SECONDS), |at| at + ChronoDuration::seconds(2));
    AfterConflict::Resend(
        Box::new(Effect::Send {
            family: message.sub_step.family(),
            message: message.clone(),
            delay: delay_until(now, due).max(1),
        }),
        "a callback ahead of the call that armed it; sent again for when that call may be recorded",
    )
}

fn after_done(
    pipeline: Pipeline<'_>,
    message: &HandoffMessage,
    detail: &ExchangeDetail,
    step: &ExchangeStep,
    now: DateTime<Utc>,
) -> AfterConflict {
    use AfterConflict::*;
    let next = detail.steps.iter().find(|s| s.sequence > step.sequence && s.status != StepStatus::Skipped);
    let waiting = detail.exchange.status == ExchangeStatus::WaitingOnExternalSystem;
    match next {
        Some(next) if next.status == StepStatus::Initial && next.attempts == 0 && !waiting => {
            let Some(planned) = pipeline.plan.get(next.sequence as usize) else {
                return BadMessage(format!("the plan has no sub-step {}", next.sequence));
            };
            let input = step.payload.clone().or_else(|| message.input.clone());
            Resend(
                Box::new(Effect::send(message.next(planned, input))),
                "step was done but its handoff is missing; sent again",
            )
        }
        Some(next) if waiting && next.status == StepStatus::Initial && takes_callback_after(pipeline, step, next) => {
            rearm_callback_timeout(pipeline, message, step, next, now)
        }
        _ => Drop("duplicate handoff; the step is done"),
    }
}

/// Whether `next` is the sub-step taking the callback that `done` waits for.
fn takes_callback_after(pipeline: Pipeline<'_>, done: &ExchangeStep, next: &ExchangeStep) -> bool {
    next.sequence == done.sequence + 1
        && pipeline
            .plan
            .get(next.sequence as usize)
            .is_some_and(|p| matches!(p.sub_step, SubStep::ReceiveNotification | SubStep::ReceiveAgentNotification))
}

/// A wait's timeout timer travels as a delayed message sent after the commit, so it can be
/// lost like a handoff: arm it again (a duplicate finds the step moved on and does nothing).
fn rearm_callback_timeout(
    pipeline: Pipeline<'_>,
    message: &HandoffMessage,
    done: &ExchangeStep,
    waiting: &ExchangeStep,
    now: DateTime<Utc>,
) -> AfterConflict {
    use AfterConflict::*;
    let Some(planned) = pipeline.plan.get(done.sequence as usize) else {
        return BadMessage(format!("the plan has no sub-step {}", done.sequence));
    };
    let timeout = pipeline.definition.callback_timeout_seconds(planned.step_index, planned.destination);
    let (Some(seconds), Some(completed_at)) = (timeout, done.completed_at) else {
        return Drop("duplicate handoff; the step is done and its wait has no deadline");
    };
    let due = completed_at + ChronoDuration::seconds(seconds as i64);
    if (due - now).num_seconds() > MAX_SQS_DELAY_SECONDS {
        return Drop("duplicate handoff; the wait's timeout is a stored timer");
    }
    let timer = Timer {
        exchange_id: message.exchange_id.clone(),
        recovery: message.recovery,
        due,
        kind: TimerKind::StepTimeout { step_id: waiting.step_id },
    };
    Resend(
        Box::new(Effect::SendTimer { timer, delay: delay_until(now, due) }),
        "duplicate handoff; the wait's timeout is armed again in case it was lost",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whatever_comes_back_stale_for_a_sub_exchange_checks_its_parent_again() {
        let link = ParentLink {
            exchange_id: crate::ids::ExchangeId::new("parent"),
            step_id: crate::ids::StepId::from_sequence(1),
            index: 0,
            depth: 1,
        };
        assert!(matches!(
            after_stale(Some(&link)),
            AfterConflict::Resend(effect, _) if *effect == Effect::ResumeParentIfLast(link.clone())
        ));
        assert!(matches!(after_stale(None), AfterConflict::Drop(_)));
    }

    use crate::ids::StepId;
    use crate::machine::attempt::tests::Fixture;
    use serde_json::json;

    fn fixture() -> Fixture {
        // triggered (0), deliver (1), process (2) that calls back (3), signoff (4).
        Fixture::new(json!({"code": "C", "version": 1, "steps": [
            {"name": "d", "type": "delivery", "retry": {"maxAttempts": 5},
             "destinations": [{"kind": "rest", "request": {"url": "http://t.example"}}]},
            {"name": "p", "type": "invokeProcess", "kind": "process", "request": {"url": "http://p.example"},
             "expectNotification": true, "timeoutSeconds": 60}
        ]}))
    }

    fn detail(f: &Fixture, status: ExchangeStatus, steps: &[(StepStatus, u32)]) -> ExchangeDetail {
        f.detail(status, 2, steps)
    }

    use StepStatus::{Done, Initial};

    #[test]
    fn final_or_recovered_exchanges_drop_the_message() {
        let f = fixture();
        let m = f.message(1);
        for status in [ExchangeStatus::Failed, ExchangeStatus::Completed, ExchangeStatus::TimedOut] {
            let d = detail(&f, status, &[(Done, 1)]);
            assert!(matches!(after_conflict(f.pipeline(), &m, Some(&d), Utc::now()), AfterConflict::Drop(_)));
        }
        let mut d = detail(&f, ExchangeStatus::Started, &[(Done, 1)]);
        d.exchange.recoveries = 3;
        assert!(matches!(after_conflict(f.pipeline(), &m, Some(&d), Utc::now()), AfterConflict::Drop(_)));
        assert!(matches!(after_conflict(f.pipeline(), &m, None, Utc::now()), AfterConflict::Drop(_)));
    }

    #[test]
    fn a_redelivered_failed_attempt_sends_its_retry_again() {
        let f = fixture();
        let now = Utc::now();
        let mut d = detail(&f, ExchangeStatus::Started, &[(Done, 1), (Initial, 2)]);
        d.steps[1].next_retry_at = Some(now + ChronoDuration::seconds(10));
        let m = HandoffMessage { attempt: 2, ..f.message(1) };
        match after_conflict(f.pipeline(), &m, Some(&d), now) {
            AfterConflict::Resend(effect, _) if matches!(*effect, Effect::Send { .. }) => {
                let Effect::Send { message, delay, .. } = *effect else { unreachable!() };
                assert_eq!(message.attempt, 3);
                assert!((9..=10).contains(&delay));
            }
            other => panic!("{other:?}"),
        }
        // A retry stored as a timer is not sent again; an older attempt is stale.
        d.steps[1].next_retry_at = Some(now + ChronoDuration::hours(2));
        assert!(matches!(after_conflict(f.pipeline(), &m, Some(&d), now), AfterConflict::Drop(_)));
        let old = HandoffMessage { attempt: 1, ..f.message(1) };
        assert!(matches!(after_conflict(f.pipeline(), &old, Some(&d), now), AfterConflict::Drop(_)));
    }

    #[test]
    fn an_attempt_in_flight_or_a_callback_ahead_of_its_call_comes_back_later() {
        let f = fixture();
        let d = detail(&f, ExchangeStatus::Started, &[(Done, 1), (Initial, 1)]);
        assert_eq!(after_conflict(f.pipeline(), &f.message(1), Some(&d), Utc::now()), AfterConflict::TryLater);
        // The callback step (3) while its call (2) is not recorded yet: it comes back, without
        // using up receives, shortly while the call is in flight, after the call's retry once
        // one is scheduled.
        let now = Utc::now();
        let mut d = detail(&f, ExchangeStatus::Started, &[(Done, 1), (Done, 1), (Initial, 0)]);
        let callback = f.message(3);
        let resent_in = |d: &ExchangeDetail| match after_conflict(f.pipeline(), &callback, Some(d), now) {
            AfterConflict::Resend(effect, _) => match *effect {
                Effect::Send { message, delay, .. } if message == callback => delay,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        assert_eq!(resent_in(&d), CALL_RECHECK_SECONDS as u32);
        d.steps[2].attempts = 1;
        d.steps[2].next_retry_at = Some(now + ChronoDuration::seconds(100));
        assert!((101..=102).contains(&resent_in(&d)), "{}", resent_in(&d));
        d.steps[2].next_retry_at = Some(now + ChronoDuration::hours(3));
        assert_eq!(resent_in(&d), MAX_SQS_DELAY_SECONDS as u32, "at most a delayed message's reach, then again");
    }

    #[test]
    fn a_done_step_whose_handoff_never_happened_hands_off_again() {
        let f = fixture();
        let d = detail(&f, ExchangeStatus::Started, &[(Done, 1), (Done, 1)]);
        match after_conflict(f.pipeline(), &f.message(1), Some(&d), Utc::now()) {
            AfterConflict::Resend(effect, _) if matches!(&*effect, Effect::Send { message, .. } if message.sub_step == SubStep::InvokeProcess) =>
                {}
            other => panic!("{other:?}"),
        }
        // Once the next step has run, a duplicate is just dropped.
        let d = detail(&f, ExchangeStatus::Started, &[(Done, 1), (Done, 1), (Initial, 1)]);
        assert!(matches!(after_conflict(f.pipeline(), &f.message(1), Some(&d), Utc::now()), AfterConflict::Drop(_)));
    }

    #[test]
    fn a_redelivered_call_arms_its_wait_timeout_again() {
        let f = fixture();
        let d = detail(&f, ExchangeStatus::WaitingOnExternalSystem, &[(Done, 1), (Done, 1), (Done, 1)]);
        match after_conflict(f.pipeline(), &f.message(2), Some(&d), Utc::now()) {
            AfterConflict::Resend(effect, _) if matches!(&*effect, Effect::SendTimer { timer, .. } if timer.kind == TimerKind::StepTimeout { step_id: StepId::from_sequence(3) }) =>
                {}
            other => panic!("{other:?}"),
        }
    }
}
