//! A durable timer fired: a retry or outbox handoff is sent, a wait that got no callback
//! fails its step, an SLA (the exchange's or its parent's) times the exchange out.

use super::{delay_until, step_error, Decision, Effect, Pipeline};
use crate::commit::{ErrorRecord, ExchangeChange, StepChange, StepCommit};
use crate::error_code::ErrorCode;
use crate::exchange::{ExchangeDetail, ExchangeError, ExchangeEvent, LogLine, LogType, StepStatus};
use crate::handoff::{HandoffMessage, Timer, TimerKind};
use crate::ids::{ExchangeId, StepId};
use crate::recovery::input_before;
use crate::retry::Failure;
use chrono::{DateTime, Utc};

/// What a fired timer leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum TimerOutcome {
    /// Effects without a write (a handoff to send, or the timer itself again: swept early).
    Send(Effect),
    /// One write and what follows it.
    Write(Box<Decision>),
    /// Nothing to do: the exchange or step it names does not exist.
    Nothing,
    /// Delete the exchange and everything stored under it, if it is still final at
    /// generation `recovery` (its retention ran out).
    Delete { exchange_id: ExchangeId, recovery: u32 },
}

/// Whether deciding `timer` needs the exchange's pipeline: a wait on a destination may be a
/// secondary destination's, whose timeout does not fail the exchange.
pub fn needs_pipeline(timer: &Timer, detail: &ExchangeDetail) -> bool {
    match &timer.kind {
        TimerKind::StepTimeout { step_id } => {
            detail.steps.iter().any(|s| s.step_id == *step_id && s.destination.is_some())
        }
        _ => false,
    }
}

/// `timer` fired at `now`; `detail` is its exchange as stored (`None`: it does not exist).
pub fn timer_fired(
    pipeline: Option<Pipeline<'_>>,
    timer: &Timer,
    detail: Option<&ExchangeDetail>,
    now: DateTime<Utc>,
) -> TimerOutcome {
    if timer.due > now {
        // Swept early: wait out the rest.
        return TimerOutcome::Send(Effect::SendTimer { timer: timer.clone(), delay: delay_until(now, timer.due) });
    }
    if let TimerKind::Handoff { message } = &timer.kind {
        return TimerOutcome::Send(Effect::send((**message).clone()));
    }
    let Some(detail) = detail else { return TimerOutcome::Nothing };
    let exchange = &detail.exchange;
    if timer.kind == TimerKind::Retention {
        // A recovered exchange runs again at a later generation: its own next finish arms
        // a new retention.
        return if exchange.status.is_final() && exchange.recoveries == timer.recovery {
            TimerOutcome::Delete { exchange_id: timer.exchange_id.clone(), recovery: timer.recovery }
        } else {
            TimerOutcome::Nothing
        };
    }
    let mut d =
        Decision::new(StepCommit::new(timer.exchange_id.clone(), timer.recovery, ExchangeChange::RequireNotFinal, now));
    let (failure, step, event) = match &timer.kind {
        TimerKind::Handoff { .. } | TimerKind::Retention => return TimerOutcome::Nothing,
        TimerKind::Sla => {
            let failure = Failure::system(format!(
                "TimedOut: the exchange exceeded its SLA (due {})",
                timer.due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ))
            .coded(ErrorCode::SlaExceeded);
            (failure, None, ExchangeEvent::SlaExpired)
        }
        TimerKind::ParentTimedOut { parent } => {
            let failure = Failure::system(format!("TimedOut: its parent exchange {parent} timed out"))
                .coded(ErrorCode::SlaExceeded);
            (failure, None, ExchangeEvent::SlaExpired)
        }
        TimerKind::StepTimeout { step_id } => {
            let Some((index, step)) = detail.steps.iter().enumerate().find(|(_, s)| s.step_id == *step_id) else {
                return TimerOutcome::Nothing;
            };
            let failure = if step.sub_step == crate::plan::SubStep::ExchangeSignoff {
                Failure::system("Timeout: the requester did not sign the exchange off in time")
                    .coded(ErrorCode::SignoffTimeout)
            } else {
                Failure::system("Timeout: no callback arrived in time").coded(ErrorCode::CallbackTimeout)
            };
            // A callback accepted just before the timeout wins (its outbox entry hands it on).
            d.commit.unless_callback_accepted = true;
            d.commit.step = Some(StepChange {
                step_id: *step_id,
                attempt: 1,
                claimed: false,
                status: StepStatus::Failed,
                payload: None,
                max_attempts: step.max_attempts,
                last_error: Some(step_error(&failure, now)),
                next_retry_at: None,
                started_at: None,
                completed_at: None,
                logs: vec![LogLine {
                    kind: LogType::System,
                    line: failure.message.clone(),
                    timestamp: now,
                    step_id: *step_id,
                }],
            });
            let planned = pipeline.and_then(|p| p.planned(*step_id).map(|planned| (p, planned)));
            if let Some((pipeline, planned)) = planned.filter(|(p, planned)| p.is_secondary_destination(planned)) {
                // A secondary destination's agent that never reported: like any failed
                // secondary, its step fails, the failure is listed without failing the
                // exchange, and the exchange goes on with the next destination.
                let next = pipeline.after_destination(planned);
                d.commit.skip = (planned.sequence + 1..next).map(StepId::from_sequence).collect();
                d.commit.exchange = ExchangeChange::on(ExchangeEvent::CallbackTaken);
                let at = Some((step.step_id, step.sub_step));
                d.commit.record_error(ErrorRecord::of(
                    &timer.exchange_id,
                    &exchange.integration_code,
                    at,
                    &failure,
                    false,
                    now,
                ));
                if let Some(next) = pipeline.plan.get(next as usize) {
                    let message = HandoffMessage {
                        recovery: timer.recovery,
                        ..HandoffMessage::at_step(
                            exchange,
                            StepId::from_sequence(next.sequence),
                            next.sub_step,
                            1,
                            input_before(&detail.steps, index),
                        )
                    };
                    d.effects.push(Effect::send(message));
                }
                return TimerOutcome::Write(Box::new(d));
            }
            (failure, Some((step.step_id, step.sub_step)), ExchangeEvent::StepFailed)
        }
    };
    d.commit.exchange = ExchangeChange::fail(event, ExchangeError::of(&failure, step, now));
    d.commit.record_error(ErrorRecord::of(&timer.exchange_id, &exchange.integration_code, step, &failure, true, now));
    if event == ExchangeEvent::SlaExpired {
        d.effects.push(Effect::TimeOutChildren(timer.exchange_id.clone()));
    }
    d.count_on_parent(exchange.parent.as_ref(), false);
    TimerOutcome::Write(Box::new(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{ExchangeStatus, ParentLink};
    use crate::machine::attempt::tests::Fixture;
    use chrono::Duration;
    use serde_json::json;

    fn detail(f: &Fixture, parent: Option<ParentLink>) -> ExchangeDetail {
        let mut d = f.detail(ExchangeStatus::WaitingOnExternalSystem, 2, &[]);
        d.exchange.parent = parent;
        d
    }

    fn fixture() -> Fixture {
        // main rest (1), secondary agent (2, 3, 4), a process that calls back (5, 6), signoff (7).
        Fixture::new(json!({"code": "C", "version": 1, "steps": [
            {"name": "d", "type": "delivery", "destinations": [
                {"kind": "rest", "main": true, "request": {"url": "http://main.example"}},
                {"kind": "agent", "healthUrl": "http://agent.example/health", "request": {"url": "http://agent.example"}}]},
            {"name": "p", "type": "invokeProcess", "kind": "process", "request": {"url": "http://p.example"}, "expectNotification": true}
        ]}))
    }

    fn timer(kind: TimerKind, due: DateTime<Utc>) -> Timer {
        Timer { exchange_id: ExchangeId::new("x"), recovery: 2, due, kind }
    }

    #[test]
    fn an_early_timer_waits_out_the_rest_and_an_outbox_entry_is_sent() {
        let f = fixture();
        let now = Utc::now();
        let early = timer(TimerKind::Sla, now + Duration::seconds(30));
        assert!(matches!(
            timer_fired(None, &early, None, now),
            TimerOutcome::Send(Effect::SendTimer { delay: 30, .. })
        ));
        let message = f.message(1);
        let outbox = timer(TimerKind::Handoff { message: Box::new(message.clone()) }, now);
        assert_eq!(timer_fired(None, &outbox, None, now), TimerOutcome::Send(Effect::send(message)));
    }

    #[test]
    fn an_sla_times_the_exchange_and_its_children_out_and_counts_on_the_parent() {
        let f = fixture();
        let now = Utc::now();
        let link =
            ParentLink { exchange_id: ExchangeId::new("p"), step_id: StepId::from_sequence(3), index: 1, depth: 1 };
        let d = detail(&f, Some(link));
        let TimerOutcome::Write(decision) = timer_fired(None, &timer(TimerKind::Sla, now), Some(&d), now) else {
            panic!("a write")
        };
        assert!(matches!(decision.commit.exchange, ExchangeChange::SetStatus { to: ExchangeStatus::TimedOut, .. }));
        assert!(decision.commit.tally.as_ref().is_some_and(|t| !t.completed));
        assert!(decision.effects.contains(&Effect::TimeOutChildren(ExchangeId::new("x"))));
        assert!(decision.effects.iter().any(|e| matches!(e, Effect::ResumeParentIfLast(_))));
    }

    #[test]
    fn a_wait_timeout_fails_the_exchange_unless_it_is_a_secondary_destinations() {
        let f = fixture();
        let now = Utc::now();
        let d = detail(&f, None);
        let main_wait = timer(TimerKind::StepTimeout { step_id: StepId::from_sequence(6) }, now);
        assert!(!needs_pipeline(&main_wait, &d));
        let TimerOutcome::Write(failed) = timer_fired(None, &main_wait, Some(&d), now) else { panic!("a write") };
        assert!(matches!(failed.commit.exchange, ExchangeChange::SetStatus { to: ExchangeStatus::Failed, .. }));
        assert!(failed.commit.errors[0].exchange_failed);
        // Only if no callback was accepted for the step meanwhile (its outbox entry hands that on).
        assert!(failed.commit.preconditions().contains(&crate::commit::Precondition::NoCallbackAccepted {
            exchange: ExchangeId::new("x"),
            step: StepId::from_sequence(6)
        }));

        let agent_wait = timer(TimerKind::StepTimeout { step_id: StepId::from_sequence(4) }, now);
        assert!(needs_pipeline(&agent_wait, &d));
        let TimerOutcome::Write(goes_on) = timer_fired(Some(f.pipeline()), &agent_wait, Some(&d), now) else {
            panic!("a write")
        };
        assert!(matches!(goes_on.commit.exchange, ExchangeChange::SetStatus { to: ExchangeStatus::Started, .. }));
        assert!(!goes_on.commit.errors[0].exchange_failed);
        assert_eq!(goes_on.commit.step.as_ref().map(|s| s.status), Some(StepStatus::Failed));
        assert!(goes_on.commit.unless_callback_accepted);
        assert!(
            matches!(&goes_on.effects[..], [Effect::Send { message, .. }] if message.step_id == StepId::from_sequence(5) && message.recovery == 2)
        );
    }

    #[test]
    fn a_retention_deletes_the_exchange_only_while_it_is_final_at_the_timers_generation() {
        let f = fixture();
        let now = Utc::now();
        let retention = timer(TimerKind::Retention, now);
        let mut d = f.detail(ExchangeStatus::Completed, 2, &[]);
        assert_eq!(
            timer_fired(None, &retention, Some(&d), now),
            TimerOutcome::Delete { exchange_id: ExchangeId::new("x"), recovery: 2 }
        );
        d.exchange.status = ExchangeStatus::Failed;
        assert!(matches!(timer_fired(None, &retention, Some(&d), now), TimerOutcome::Delete { .. }));
        // Recovered: running again, or final again at a later generation.
        d.exchange.status = ExchangeStatus::Started;
        assert_eq!(timer_fired(None, &retention, Some(&d), now), TimerOutcome::Nothing);
        let later = f.detail(ExchangeStatus::Completed, 3, &[]);
        assert_eq!(timer_fired(None, &retention, Some(&later), now), TimerOutcome::Nothing);
        assert_eq!(timer_fired(None, &retention, None, now), TimerOutcome::Nothing);
    }
}
