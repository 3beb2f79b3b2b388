//! An external system answers a waiting step (`POST /notifications/{token}`). The token is
//! single use; an unknown, used or expired one is refused, so a duplicate callback changes
//! nothing. Accepting a callback uses its token and stores, in the same write, an outbox
//! timer that hands the callback on if its message is never sent (a crash, SQS
//! unavailable), and marks the waiting step so that the wait's timeout no longer fails it:
//! once the caller hears it was accepted, the callback cannot be lost, not even to a
//! timeout due before the outbox entry. The message is then sent at once and the outbox
//! entry taken back.

use crate::context::AppContext;
use crate::payloads::PayloadCodec;
use handoff_core::exchange::ExchangeStatus;
use handoff_core::handoff::CallbackToken;
use handoff_core::ids::{ExchangeId, StepId};
use handoff_core::machine::operator;
use handoff_core::notification::{parse_agent_report, Notification};
use handoff_core::plan::SubStep;
use handoff_core::reader::FieldError;
use handoff_ports::{Clock, ExchangeReads, HandoffQueue, PortError, TimerStore, TokenStore};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("unknown, used or expired notification token")]
    UnknownToken,
    /// An agent's report that does not parse: the agent hears of it (and may send again).
    #[error("{0}")]
    InvalidReport(FieldError),
    #[error("exchange {exchange} is {} and no longer waits for this callback", status.name())]
    TooLate { exchange: ExchangeId, status: ExchangeStatus },
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Which waiting step an accepted callback went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub exchange_id: ExchangeId,
    pub step_id: StepId,
}

/// The ports accepting a callback uses.
pub struct Callbacks<'a> {
    pub tokens: &'a dyn TokenStore,
    /// Taking back the outbox entry once the handoff is sent.
    pub timers: &'a dyn TimerStore,
    pub reads: &'a dyn ExchangeReads,
    pub queue: &'a dyn HandoffQueue,
    pub codec: PayloadCodec,
    pub outbox_delay: Duration,
    pub clock: &'a dyn Clock,
}

impl<'a> Callbacks<'a> {
    pub fn of(ctx: &'a AppContext) -> Self {
        Self {
            tokens: ctx.ports.exchanges.as_ref(),
            timers: ctx.ports.exchanges.as_ref(),
            reads: ctx.ports.exchanges.as_ref(),
            queue: ctx.ports.queue.as_ref(),
            codec: ctx.codec(),
            outbox_delay: ctx.settings.outbox_delay,
            clock: ctx.ports.clock.as_ref(),
        }
    }
}

pub async fn accept_callback(
    ctx: &Callbacks<'_>,
    token: &str,
    notification: &Notification,
) -> Result<Accepted, CallbackError> {
    let hash = CallbackToken::hash_of(token);
    let now = ctx.clock.now();
    let armed = ctx.tokens.usable_token(&hash, now).await?.ok_or(CallbackError::UnknownToken)?;
    if armed.sub_step == SubStep::ReceiveAgentNotification {
        parse_agent_report(notification).map_err(CallbackError::InvalidReport)?;
    }
    // Tell the caller plainly when its answer comes too late to matter.
    let detail = ctx.reads.get(&armed.exchange_id).await?;
    if let Some(detail) = &detail {
        if operator::callback_is_late(&armed, &detail.exchange) {
            return Err(CallbackError::TooLate { exchange: armed.exchange_id, status: detail.exchange.status });
        }
    }
    // The wait began when the call before it (which armed it) was done.
    let waiting_since = detail.as_ref().and_then(|d| {
        let at = d.steps.iter().position(|s| s.step_id == armed.step_id)?;
        d.steps.get(at.checked_sub(1)?)?.completed_at
    });
    let bytes =
        serde_json::to_vec(notification).map_err(|e| PortError::Fault { service: "api", message: e.to_string() })?;
    let input = ctx
        .codec
        .store(bytes.into(), "application/json")
        .await
        .map_err(|e| PortError::Unavailable { service: "payloads", message: e.to_string() })?;
    let (message, outbox) = operator::callback_accepted(&armed, input, ctx.outbox_delay, now);
    if !ctx.tokens.consume_token(&armed, now, &outbox).await? {
        return Err(CallbackError::UnknownToken);
    }
    if let Some(waited) = waiting_since.and_then(|since| (now - since).to_std().ok()) {
        crate::metrics::callback_arrived(waited);
    }
    match ctx.queue.send(armed.sub_step.family(), &message, 0).await {
        Ok(()) => {
            if let Err(e) = ctx.timers.take_timer(&outbox).await {
                tracing::warn!(exchangeId = %armed.exchange_id, error = %e, "callback handed on; its outbox entry stays and will send a harmless duplicate");
            }
        }
        Err(e) => {
            tracing::warn!(exchangeId = %armed.exchange_id, error = %e, "callback kept; the regular job hands it on from the outbox")
        }
    }
    tracing::info!(exchangeId = %armed.exchange_id, stepId = %armed.step_id, status = ?notification.status, "callback accepted");
    Ok(Accepted { exchange_id: armed.exchange_id, step_id: armed.step_id })
}
