//! A handoff message that kept failing reached its dead-letter queue: its exchange is marked
//! Failed (system error, cause recorded) so nothing is lost silently and it can be recovered.
//! A timer that did is sent back to the control queue ([`timer_dead_lettered`]).

use crate::context::AppContext;
use crate::effects::{after_applied, EffectPorts};
use handoff_core::commit::CommitOutcome;
use handoff_core::handoff::{HandoffMessage, Timer};
use handoff_core::machine::failures::{self, DeadTimer};
use handoff_ports::{ExchangeWrites, PortError};

/// The ports recording a dead letter uses.
pub struct DeadLetters<'a> {
    pub writes: &'a dyn ExchangeWrites,
    pub retention: Option<chrono::Duration>,
    /// Resuming a parent whose last sub-exchange this was.
    pub effects: EffectPorts<'a>,
}

impl<'a> DeadLetters<'a> {
    pub fn of(ctx: &'a AppContext) -> Self {
        Self {
            writes: ctx.ports.exchanges.as_ref(),
            retention: ctx.settings.exchange_retention,
            effects: ctx.effects(),
        }
    }
}

/// Fails the exchange of a dead-lettered `message` that left `queue` after `receives`
/// receives; a dead letter for a step or exchange that already moved on changes nothing.
pub async fn dead_lettered(
    ctx: &DeadLetters<'_>,
    message: &HandoffMessage,
    queue: &str,
    receives: &str,
) -> Result<(), PortError> {
    crate::metrics::dead_lettered(message.sub_step.family());
    let mut decision = failures::dead_lettered(message, queue, receives, ctx.effects.clock.now());
    decision.commit.keep_finished_for(ctx.retention);
    match ctx.writes.commit(&decision.commit).await? {
        CommitOutcome::Applied => {
            tracing::error!(exchangeId = %message.exchange_id, stepId = %message.step_id, queue, "exchange failed: dead-lettered handoff");
            let (code, version) = (&message.integration_code, message.integration_version);
            after_applied(ctx.effects, code, version, &decision.commit, decision.effects).await?;
        }
        CommitOutcome::Conflict => {
            tracing::warn!(exchangeId = %message.exchange_id, stepId = %message.step_id, "dead letter for a step or exchange that already moved on; nothing to mark");
            let decided = handoff_core::machine::conflict::after_stale(message.parent.as_ref());
            crate::effects::resend_if_stale(ctx.effects, decided).await?;
        }
    }
    Ok(())
}

/// A timer that left `queue` dead-lettered goes back to the control queue after a pause (the
/// state machine decides, [`failures::timer_dead_lettered`]); one failing for too long stays
/// in the DLQ for an operator (an error: the message is not deleted).
pub async fn timer_dead_lettered(ctx: &DeadLetters<'_>, timer: &Timer, queue: &str) -> Result<(), PortError> {
    match failures::timer_dead_lettered(timer, ctx.effects.clock.now()) {
        DeadTimer::Redrive { delay } => {
            tracing::error!(exchangeId = %timer.exchange_id, timer = %timer.name(), queue, delay, "dead-lettered timer sent back to the control queue");
            ctx.effects.queue.send_timer(timer, delay).await
        }
        DeadTimer::Keep { reason } => {
            tracing::error!(exchangeId = %timer.exchange_id, timer = %timer.name(), queue, "{reason}; left in the DLQ for an operator");
            Err(PortError::Fault { service: "dlq", message: reason })
        }
    }
}
