//! Recovering a Failed or TimedOut exchange: where it resumes, what it resumes with, and
//! when another version of the integration may take over (pure decisions).

use crate::exchange::{ExchangeStatus, ExchangeStep, Payload, StepStatus};
use crate::ids::StepId;
use crate::plan::{PlannedSubStep, SubStep};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    #[error("only Failed or TimedOut exchanges can be recovered; this one is {0:?}")]
    NotRecoverable(ExchangeStatus),
    #[error("the exchange has no step left to run")]
    NothingToResume,
    #[error("version {version} cannot take over: {problem}")]
    IncompatibleVersion { version: String, problem: String },
}

/// Where a recovery starts (an integration's `errorProcessing.from`, for the error job).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ResumeFrom {
    /// At the step that failed, on the data it had (the fix was elsewhere: a mapping, the target).
    #[default]
    FailedStep,
    /// At the first step that collects data, every step after it run again, so data fixed
    /// at the source is fetched again (falls back to the failed step without one).
    Collection,
}

/// Where a recovered exchange starts again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The first sub-step to run again; it and every later unfinished step get fresh attempts.
    pub step_id: StepId,
    /// The payload it runs on: the output of the nearest earlier step that produced one.
    pub input: Option<Payload>,
    /// Steps to reset to `Initial` (the resume step and later steps that failed).
    pub reset: Vec<StepId>,
}

/// Sub-steps handed on by a callback (or a requester's sign-off) that the sub-step before
/// them waits for: a recovery re-runs that one, since a fresh wait without a fresh call (or
/// a fresh sign-off wait) would wait for nothing.
fn armed_by_previous(steps: &[ExchangeStep], at: usize) -> bool {
    matches!(steps[at].sub_step, SubStep::ReceiveNotification | SubStep::ReceiveAgentNotification)
        || (at > 0 && steps[at - 1].sub_step == SubStep::AwaitSignoff)
}

/// Decides where a recovery resumes. `failed_step` is the step the exchange error names
/// (`None` for a TimedOut exchange: it resumes at the first unfinished step).
pub fn resume_point(
    status: ExchangeStatus,
    failed_step: Option<StepId>,
    steps: &[ExchangeStep],
    from: ResumeFrom,
) -> Result<ResumePoint, RecoveryError> {
    if !status.is_recoverable() {
        return Err(RecoveryError::NotRecoverable(status));
    }
    let collection = steps.iter().position(|s| s.sub_step.collects_data());
    if let (ResumeFrom::Collection, Some(at)) = (from, collection) {
        let reset = steps[at..].iter().map(|s| s.step_id).collect();
        return Ok(ResumePoint { step_id: steps[at].step_id, input: input_before(steps, at), reset });
    }
    let named = failed_step.and_then(|id| steps.iter().position(|s| s.step_id == id && s.status != StepStatus::Done));
    let first_unfinished = steps.iter().position(|s| s.status == StepStatus::Initial);
    let mut at = named.or(first_unfinished).ok_or(RecoveryError::NothingToResume)?;
    if armed_by_previous(steps, at) && at > 0 {
        at -= 1;
    }
    let input = input_before(steps, at);
    let reset = steps[at..]
        .iter()
        .enumerate()
        .filter(|(offset, s)| *offset == 0 || s.status == StepStatus::Failed || s.status == StepStatus::Initial)
        .map(|(_, s)| s.step_id)
        .collect();
    Ok(ResumePoint { step_id: steps[at].step_id, input, reset })
}

/// The payload the step at `index` runs on: the output of the nearest earlier `Done` step
/// that produced one (steps without output pass their input on).
pub fn input_before(steps: &[ExchangeStep], index: usize) -> Option<Payload> {
    steps[..index.min(steps.len())]
        .iter()
        .rev()
        .find(|s| s.status == StepStatus::Done && s.payload.is_some())
        .and_then(|s| s.payload.clone())
}

/// Another version may take over a recovered exchange only if its plan has the same shape:
/// the same sub-steps, of the same integration steps, in the same order (and the same
/// destinations). Then every stored step maps onto the new plan one to one, and only the
/// configuration of the steps (URLs, jq programs, retry policies, …) differs.
pub fn check_compatible(current: &[PlannedSubStep], candidate: &[PlannedSubStep]) -> Result<(), String> {
    if current.len() != candidate.len() {
        return Err(format!("its plan has {} sub-steps, the exchange has {}", candidate.len(), current.len()));
    }
    for (old, new) in current.iter().zip(candidate) {
        if old.sub_step != new.sub_step
            || old.integration_step != new.integration_step
            || old.destination != new.destination
        {
            return Err(format!(
                "sub-step {} is {} of step {} there, but {} of step {} here",
                old.sequence,
                new.sub_step,
                new.integration_step.as_deref().unwrap_or("-"),
                old.sub_step,
                old.integration_step.as_deref().unwrap_or("-"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::parse_definition;
    use crate::plan::plan;
    use serde_json::json;

    fn step(seq: u32, sub_step: SubStep, status: StepStatus, payload: Option<&str>) -> ExchangeStep {
        ExchangeStep {
            step_id: StepId::from_sequence(seq),
            sequence: seq,
            integration_step: None,
            sub_step,
            destination: None,
            status,
            payload: payload.map(Payload::raw),
            attempts: 1,
            max_attempts: 3,
            last_error: None,
            next_retry_at: None,
            started_at: None,
            completed_at: None,
            sub_exchanges: None,
        }
    }

    fn steps() -> Vec<ExchangeStep> {
        vec![
            step(0, SubStep::ExchangeTriggered, StepStatus::Done, Some("in")),
            step(1, SubStep::InvokeQuery, StepStatus::Done, Some("queried")),
            step(2, SubStep::ConditionInvocation, StepStatus::Done, None),
            step(3, SubStep::DeliverRest, StepStatus::Failed, None),
            step(4, SubStep::ExchangeSignoff, StepStatus::Initial, None),
        ]
    }

    #[test]
    fn resumes_at_the_failed_step_with_the_last_output() {
        let p = resume_point(ExchangeStatus::Failed, Some(StepId::from_sequence(3)), &steps(), ResumeFrom::FailedStep)
            .unwrap();
        assert_eq!(p.step_id, StepId::from_sequence(3));
        assert_eq!(p.input, Some(Payload::raw("queried")));
        assert_eq!(p.reset, vec![StepId::from_sequence(3), StepId::from_sequence(4)]);
    }

    #[test]
    fn a_re_collection_runs_again_from_the_first_collecting_step_on_the_exchange_input() {
        let p = resume_point(ExchangeStatus::Failed, Some(StepId::from_sequence(3)), &steps(), ResumeFrom::Collection)
            .unwrap();
        assert_eq!(p.step_id, StepId::from_sequence(1));
        assert_eq!(p.input, Some(Payload::raw("in")));
        assert_eq!(p.reset, (1..=4).map(StepId::from_sequence).collect::<Vec<_>>(), "done steps after it run again");
        // Without a collecting step it is a recovery from the failed step.
        let mut s = steps();
        s.remove(1);
        let from_failed =
            resume_point(ExchangeStatus::Failed, Some(StepId::from_sequence(3)), &s, ResumeFrom::FailedStep);
        assert_eq!(
            resume_point(ExchangeStatus::Failed, Some(StepId::from_sequence(3)), &s, ResumeFrom::Collection),
            from_failed
        );
    }

    #[test]
    fn a_timed_out_exchange_resumes_at_its_first_unfinished_step() {
        let mut s = steps();
        s[3].status = StepStatus::Initial;
        let p = resume_point(ExchangeStatus::TimedOut, None, &s, ResumeFrom::FailedStep).unwrap();
        assert_eq!(p.step_id, StepId::from_sequence(3));
    }

    #[test]
    fn a_failed_wait_resumes_at_the_call_that_armed_it() {
        let s = vec![
            step(0, SubStep::ExchangeTriggered, StepStatus::Done, Some("in")),
            step(1, SubStep::InvokeProcess, StepStatus::Done, None),
            step(2, SubStep::ReceiveNotification, StepStatus::Failed, None),
            step(3, SubStep::ExchangeSignoff, StepStatus::Initial, None),
        ];
        let p =
            resume_point(ExchangeStatus::Failed, Some(StepId::from_sequence(2)), &s, ResumeFrom::FailedStep).unwrap();
        assert_eq!(p.step_id, StepId::from_sequence(1));
        assert_eq!(p.input, Some(Payload::raw("in")));
        assert_eq!(p.reset.len(), 3);
    }

    #[test]
    fn a_sign_off_that_timed_out_resumes_at_its_wait() {
        let s = vec![
            step(0, SubStep::ExchangeTriggered, StepStatus::Done, Some("in")),
            step(1, SubStep::Transform, StepStatus::Done, Some("mapped")),
            step(2, SubStep::AwaitSignoff, StepStatus::Done, Some("mapped")),
            step(3, SubStep::ExchangeSignoff, StepStatus::Failed, None),
        ];
        let p =
            resume_point(ExchangeStatus::Failed, Some(StepId::from_sequence(3)), &s, ResumeFrom::FailedStep).unwrap();
        assert_eq!(p.step_id, StepId::from_sequence(2), "it waits for a sign-off again");
        assert_eq!(p.input, Some(Payload::raw("mapped")));
        assert_eq!(p.reset, vec![StepId::from_sequence(2), StepId::from_sequence(3)]);
    }

    #[test]
    fn only_failed_and_timed_out_exchanges_recover() {
        for status in [ExchangeStatus::Completed, ExchangeStatus::Started, ExchangeStatus::New] {
            assert_eq!(
                resume_point(status, None, &steps(), ResumeFrom::FailedStep),
                Err(RecoveryError::NotRecoverable(status))
            );
        }
    }

    #[test]
    fn compatibility_means_the_same_plan_shape() {
        let doc = |url: &str, extra: bool| {
            let mut steps =
                vec![json!({"name": "q", "type": "dataCollection", "kind": "query", "request": {"url": url}})];
            if extra {
                steps.push(json!({"name": "t", "type": "transformation"}));
            }
            plan(&parse_definition(&json!({"code": "C", "steps": steps})).unwrap())
        };
        assert!(check_compatible(&doc("http://a.example", false), &doc("http://b.example", false)).is_ok());
        assert!(check_compatible(&doc("http://a.example", false), &doc("http://a.example", true)).is_err());
    }
}
