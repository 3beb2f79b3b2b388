//! Firing a durable timer (the control worker): a retry, a wait or SLA timeout, an outbox
//! handoff. The state machine ([`handoff_core::machine::timers`]) decides; a timer the
//! exchange has moved past changes nothing.

use crate::context::AppContext;
use crate::definitions::DefinitionCache;
use crate::effects::{after_applied, run_effects, EffectPorts};
use crate::use_cases::handoff::WorkerError;
use handoff_core::commit::CommitOutcome;
use handoff_core::handoff::{Timer, TimerKind};
use handoff_core::machine::conflict;
use handoff_core::machine::timers::{self, TimerOutcome};
use handoff_ports::ExchangeWrites;

/// The ports firing a timer uses.
pub struct Timers<'a> {
    pub definitions: &'a DefinitionCache,
    pub writes: &'a dyn ExchangeWrites,
    pub retention: Option<chrono::Duration>,
    /// Reading the exchange; sending what the timer hands on.
    pub effects: EffectPorts<'a>,
}

impl<'a> Timers<'a> {
    pub fn of(ctx: &'a AppContext) -> Self {
        Self {
            definitions: &ctx.definitions,
            writes: ctx.ports.exchanges.as_ref(),
            retention: ctx.settings.exchange_retention,
            effects: ctx.effects(),
        }
    }
}

/// Fires a durable timer (control worker).
pub async fn fire_timer(ctx: &Timers<'_>, timer: Timer) -> Result<(), WorkerError> {
    let now = ctx.effects.clock.now();
    let detail = match &timer.kind {
        TimerKind::Handoff { .. } => None,
        _ if timer.due > now => None,
        _ => ctx.effects.exchanges.get(&timer.exchange_id).await?,
    };
    let loaded = match &detail {
        Some(detail) if timers::needs_pipeline(&timer, detail) => ctx
            .definitions
            .get(&detail.exchange.integration_code, detail.exchange.integration_version)
            .await
            .map_err(|e| WorkerError::Definition(e.to_string()))?,
        _ => None,
    };
    let pipeline = loaded.as_ref().map(|l| l.pipeline());
    match timers::timer_fired(pipeline, &timer, detail.as_ref(), now) {
        TimerOutcome::Nothing => Ok(()),
        TimerOutcome::Send(effect) => Ok(run_effects(ctx.effects, vec![effect]).await?),
        TimerOutcome::Delete { exchange_id, recovery } => {
            match ctx.writes.delete_finished(&exchange_id, recovery).await? {
                CommitOutcome::Applied => {
                    tracing::info!(exchangeId = %exchange_id, "finished exchange deleted: its retention ran out")
                }
                CommitOutcome::Conflict => {
                    tracing::info!(exchangeId = %exchange_id, "retention no longer relevant (the exchange was recovered or is gone)")
                }
            }
            Ok(())
        }
        TimerOutcome::Write(mut decision) => {
            decision.commit.keep_finished_for(ctx.retention);
            match ctx.writes.commit(&decision.commit).await? {
                CommitOutcome::Applied => {
                    tracing::warn!(exchange = ?decision.commit.exchange, "timer fired");
                    let (commit, effects) = (&decision.commit, decision.effects);
                    match &detail {
                        Some(detail) => {
                            let (code, version) =
                                (&detail.exchange.integration_code, detail.exchange.integration_version);
                            Ok(after_applied(ctx.effects, code, version, commit, effects).await?)
                        }
                        None => Ok(run_effects(ctx.effects, effects).await?),
                    }
                }
                CommitOutcome::Conflict => {
                    tracing::info!("timer no longer relevant (the exchange or step moved on)");
                    let parent = detail.as_ref().and_then(|d| d.exchange.parent.as_ref());
                    Ok(crate::effects::resend_if_stale(ctx.effects, conflict::after_stale(parent)).await?)
                }
            }
        }
    }
}
