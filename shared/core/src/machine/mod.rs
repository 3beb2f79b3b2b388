//! The exchange state machine. Pure functions from (the exchange and step as stored, an
//! input) to a [`Decision`]: the one conditional write to make — its preconditions stated
//! in it ([`StepCommit`]) — and the effects to run once that write has applied. The
//! application layer reads, calls one of these, writes, then runs the effects; it decides
//! nothing itself.
//!
//! | input | function |
//! |---|---|
//! | an exchange is triggered (API, schedule, parent) | [`start::new_exchange`] |
//! | an attempt finished (done / retryable failure / business failure / waiting) | [`attempt::attempt_finished`] |
//! | a durable timer fired (retry, wait timeout, SLA, outbox handoff, parent timed out) | [`timers::timer_fired`] |
//! | a handoff was dead-lettered | [`failures::dead_lettered`] |
//! | the first handoff of a new exchange could not be sent | [`failures::handoff_failed`] |
//! | a write's precondition failed | [`conflict::after_conflict`] |
//! | recovery requested (also onto another version), manual retry, callback accepted | [`operator`] |
//!
//! Status changes themselves are decided by [`crate::exchange::exchange_transition`].

pub mod attempt;
pub mod conflict;
pub mod failures;
pub mod operator;
pub mod start;
pub mod timers;

use crate::commit::{ParentTally, StepCommit};
use crate::definition::{IntegrationDefinition, StepAction};
use crate::exchange::{ParentLink, Payload, StepError};
use crate::handoff::{HandoffMessage, Timer};
use crate::ids::{ExchangeId, IntegrationCode, StepId};
use crate::plan::{PlannedSubStep, WorkerFamily};
use crate::retry::{Failure, RetryPolicy};
use chrono::{DateTime, Utc};

/// SQS cannot delay a message longer than this; later timers are stored and swept.
pub const MAX_SQS_DELAY_SECONDS: i64 = 900;

/// Whole seconds from `now` until `due`, within what a delayed message can carry.
pub fn delay_until(now: DateTime<Utc>, due: DateTime<Utc>) -> u32 {
    (due - now).num_seconds().clamp(0, MAX_SQS_DELAY_SECONDS) as u32
}

/// An integration version as the machine needs it: its definition and its plan.
#[derive(Debug, Clone, Copy)]
pub struct Pipeline<'a> {
    pub definition: &'a IntegrationDefinition,
    pub plan: &'a [PlannedSubStep],
}

impl<'a> Pipeline<'a> {
    /// The planned sub-step `step_id` names, if the plan has it.
    pub fn planned(&self, step_id: StepId) -> Option<&'a PlannedSubStep> {
        self.plan.get(step_id.sequence() as usize)
    }

    /// The retry policy of a planned sub-step (bookkeeping sub-steps use the default).
    pub fn retry_policy(&self, planned: &PlannedSubStep) -> RetryPolicy {
        planned.step_index.and_then(|i| self.definition.steps.get(i)).map(|s| s.retry).unwrap_or_default()
    }

    /// The first sub-step after those of `planned`'s destination.
    pub fn after_destination(&self, planned: &PlannedSubStep) -> u32 {
        self.plan
            .iter()
            .skip(planned.sequence as usize + 1)
            .find(|p| p.step_index != planned.step_index || p.destination != planned.destination)
            .map_or(self.plan.len() as u32, |p| p.sequence)
    }

    /// Whether `planned` belongs to a destination that is not the step's main one (its
    /// failure is recorded and the exchange goes on).
    pub fn is_secondary_destination(&self, planned: &PlannedSubStep) -> bool {
        match (planned.step_index, planned.destination) {
            (Some(i), Some(d)) => matches!(
                &self.definition.steps[i].action,
                StepAction::Delivery { destinations } if destinations.get(d).is_some_and(|dest| !dest.main)
            ),
            _ => false,
        }
    }

    /// The handoff to sub-step `sequence` (none past the end of the plan).
    fn handoff_to(&self, current: &HandoffMessage, sequence: u32, input: Option<Payload>) -> Option<Effect> {
        self.plan.get(sequence as usize).map(|next| Effect::send(current.next(next, input)))
    }
}

/// A successful sub-step: its output (if it produced one; otherwise its input flows on)
/// and, for a false condition, where the exchange continues.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StepOutput {
    pub payload: Option<Payload>,
    pub skip_to: Option<u32>,
    /// The call handed out a callback: the exchange now waits for it.
    pub wait: Option<Wait>,
    /// Sub-exchanges are still running: the exchange waits for them (the last one resumes it).
    pub wait_for_sub_exchanges: bool,
}

/// An armed wait: the step that takes the callback, and when it times out.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    pub step_id: StepId,
    pub timeout_at: Option<DateTime<Utc>>,
}

/// What to do once a decision's write has applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Hand off to a worker family's queue, delayed by up to [`MAX_SQS_DELAY_SECONDS`].
    Send { family: WorkerFamily, message: HandoffMessage, delay: u32 },
    /// Send a timer (due within a delayed message's reach) to the control queue.
    SendTimer { timer: Timer, delay: u32 },
    /// The exchange became final and counted itself on its parent: if it was the last, the
    /// parent goes on.
    ResumeParentIfLast(ParentLink),
    /// The exchange timed out: so do its running sub-exchanges.
    TimeOutChildren(ExchangeId),
    /// What an attempt tells of its endpoint (retrying, recovered, failed): shown on it, and
    /// a system failure may halt it ([`crate::endpoint::observe`]; an event-based
    /// integration halts by default).
    /// `version` is the integration version whose `notify` is told when it halts.
    Observe {
        code: IntegrationCode,
        version: crate::ids::IntegrationVersion,
        observation: crate::endpoint::Observation,
        event_based: bool,
    },
    /// An exchange of an event-based integration completed: the events it took leave the
    /// endpoint's queue ([`crate::events`]).
    ConsumeEvents { code: IntegrationCode, exchange_id: ExchangeId },
}

impl Effect {
    /// What `message`'s attempt (of an integration version `pipeline`) tells of its endpoint.
    pub fn observe(
        pipeline: Pipeline<'_>,
        message: &HandoffMessage,
        observation: crate::endpoint::Observation,
    ) -> Self {
        Self::Observe {
            code: message.integration_code.clone(),
            version: pipeline.definition.version,
            observation,
            event_based: pipeline.definition.events.is_some(),
        }
    }

    /// The handoff of `message` to the family of its sub-step, now.
    pub fn send(message: HandoffMessage) -> Self {
        Self::Send { family: message.sub_step.family(), message, delay: 0 }
    }
}

/// One conditional write and what follows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub commit: StepCommit,
    pub effects: Vec<Effect>,
}

impl Decision {
    fn new(commit: StepCommit) -> Self {
        Self { commit, effects: Vec::new() }
    }

    /// Arms `timer`: due within SQS's delay limit it travels as a delayed message, later it is
    /// stored with the write for the sweeper (the regular job) to send when it comes within reach.
    pub fn arm(&mut self, timer: Timer) {
        let now = self.commit.now;
        if (timer.due - now).num_seconds() <= MAX_SQS_DELAY_SECONDS {
            let delay = delay_until(now, timer.due);
            self.effects.push(Effect::SendTimer { timer, delay });
        } else {
            self.commit.timers.push(timer);
        }
    }

    /// The exchange becomes final: a sub-exchange counts itself on its parent in the same
    /// write (so exactly once), and resumes the parent afterwards if it was the last.
    fn count_on_parent(&mut self, parent: Option<&ParentLink>, completed: bool) {
        if let Some(link) = parent {
            self.commit.tally =
                Some(ParentTally { parent: link.exchange_id.clone(), step_id: link.step_id, completed });
            self.effects.push(Effect::ResumeParentIfLast(link.clone()));
        }
    }
}

fn step_error(failure: &Failure, at: DateTime<Utc>) -> StepError {
    StepError { classification: failure.classification, code: failure.code, message: failure.message.clone(), at }
}
