//! The one effects runner: carries out what a core decision says follows its write, in order.

use crate::context::AppContext;
use crate::subflow::{resume_parent_if_last, time_out_children};
use handoff_core::machine::Effect;
use handoff_ports::PortResult;

/// Runs `effects` once their decision's write has applied. An error leaves the rest unrun;
/// the caller's message then comes back and the state machine sends again what is missing.
pub async fn run_effects(ctx: &AppContext, effects: Vec<Effect>) -> PortResult<()> {
    for effect in effects {
        match effect {
            Effect::Send { family, message, delay } => ctx.queue.send(family, &message, delay).await?,
            Effect::SendTimer { timer, delay } => ctx.queue.send_timer(&timer, delay).await?,
            Effect::ResumeParentIfLast(link) => resume_parent_if_last(ctx, &link).await?,
            Effect::TimeOutChildren(exchange_id) => time_out_children(ctx, &exchange_id).await?,
        }
    }
    Ok(())
}
