//! A new exchange of a pipeline: the exchange `New`, one `Initial` step per planned sub-step
//! (the input on the first), and the handoff that starts it. The same for the HTTP API, a
//! schedule and a parent's sub-exchanges.

use super::Pipeline;
use crate::exchange::{Exchange, ExchangeStatus, ExchangeStep, ParentLink, Payload, StepStatus};
use crate::handoff::HandoffMessage;
use crate::ids::{ExchangeId, StepId};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// An exchange id promised before its exchange is written (to a claim on events, to a
/// replayed request) whose exchange does not exist this long after is taken to have never
/// started: its invocation stopped first, and what was promised to it is free again.
pub const NEVER_STARTED_AFTER_SECONDS: i64 = 120;

/// Whether an exchange promised at `promised_at`, and not found at `now`, never started
/// (rather than being about to be written).
pub fn never_started(promised_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now - promised_at >= chrono::Duration::seconds(NEVER_STARTED_AFTER_SECONDS)
}

/// What creating an exchange writes, and the handoff to send once it is written.
#[derive(Debug, Clone)]
pub struct NewExchange {
    pub exchange: Exchange,
    pub steps: Vec<ExchangeStep>,
    pub first: HandoffMessage,
}

/// Exchange `exchange_id` of `pipeline`'s version, as it is created at `now`.
pub fn new_exchange(
    pipeline: Pipeline<'_>,
    exchange_id: ExchangeId,
    parameters: Value,
    input: Option<Payload>,
    parent: Option<ParentLink>,
    now: DateTime<Utc>,
) -> NewExchange {
    let exchange = Exchange {
        exchange_id,
        integration_code: pipeline.definition.code.clone(),
        integration_version: pipeline.definition.version,
        status: ExchangeStatus::New,
        parameters,
        created_at: now,
        updated_at: now,
        completed_at: None,
        error: None,
        recoveries: 0,
        // A sub-exchange is started by its parent's subflow; the caller sets any other trigger.
        trigger: parent.as_ref().map(|_| crate::exchange::Trigger::subflow()),
        parent,
        result: None,
    };
    let steps = pipeline
        .plan
        .iter()
        .map(|planned| ExchangeStep {
            step_id: StepId::from_sequence(planned.sequence),
            sequence: planned.sequence,
            integration_step: planned.integration_step.clone(),
            sub_step: planned.sub_step,
            destination: planned.destination,
            status: StepStatus::Initial,
            payload: if planned.sequence == 0 { input.clone() } else { None },
            attempts: 0,
            max_attempts: pipeline.retry_policy(planned).max_attempts,
            last_error: None,
            next_retry_at: None,
            started_at: None,
            completed_at: None,
            sub_exchanges: None,
        })
        .collect();
    let first = HandoffMessage::start(&exchange, &pipeline.plan[0], input);
    NewExchange { exchange, steps, first }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::attempt::tests::Fixture;
    use crate::plan::SubStep;
    use serde_json::json;

    #[test]
    fn a_new_exchange_has_one_initial_step_per_sub_step_and_starts_at_the_first() {
        let f = Fixture::new(json!({"code": "C", "version": 1, "steps": [
            {"name": "t", "type": "transformation", "function": {"jq": "."},
             "retry": {"maxAttempts": 4, "intervalSeconds": 1}},
        ]}));
        let input = Some(Payload::raw("[1]"));
        let created =
            new_exchange(f.pipeline(), ExchangeId::new("x"), json!({"a": 1}), input.clone(), None, Utc::now());
        assert_eq!(created.exchange.status, ExchangeStatus::New);
        assert_eq!(created.exchange.integration_code.as_str(), "C");
        assert_eq!(created.steps.len(), f.pipeline().plan.len());
        assert!(created.steps.iter().all(|s| s.status == StepStatus::Initial && s.attempts == 0));
        assert_eq!(created.steps[0].payload, input);
        assert!(created.steps[1..].iter().all(|s| s.payload.is_none()));
        let transform = created.steps.iter().find(|s| s.sub_step == SubStep::Transform).expect("run step");
        assert_eq!(transform.max_attempts, 4, "the step's own policy");
        assert_eq!((created.first.step_id, created.first.attempt), (StepId::from_sequence(0), 1));
        assert_eq!(created.first.input, input);
        assert_eq!(created.first.parameters, json!({"a": 1}));
    }
}
