//! Unrouted messages (issue 10, point 5): a `POST /exchanges` the gateway cannot route is
//! refused as before *and* kept — caller, time, requested code and version, parameters,
//! payload (in S3 when large) — to be listed and replayed once the integration can take it
//! ([`handoff_core::unrouted`] decides when a replay may run).

use crate::use_cases::invoke::{invoke_exchange, InvokeError, InvokeInput, InvokeRequest, Starting};
use bytes::Bytes;
use chrono::Duration;
use handoff_core::exchange::{Exchange, Trigger};
use handoff_core::ids::{ExchangeId, IntegrationCode, IntegrationVersion, UnroutedId};
use handoff_core::unrouted::{replay_fate, Refusal, Replay, ReplayFate, UnroutedMessage};
use handoff_ports::{PortError, UnroutedStore, UnroutedWriteError};
use serde_json::Value;

/// The ports requests and replays use.
pub struct Routing<'a> {
    pub starting: Starting<'a>,
    pub unrouted: &'a dyn UnroutedStore,
    /// How long a kept message is kept (as finished exchanges).
    pub retention: Option<Duration>,
}

impl<'a> Routing<'a> {
    pub fn of(ctx: &'a crate::context::AppContext) -> Self {
        Self {
            starting: Starting::of(ctx),
            unrouted: ctx.ports.unrouted.as_ref(),
            retention: ctx.settings.exchange_retention,
        }
    }
}

/// A `POST /exchanges` as its caller sent it.
pub struct ExchangeRequest {
    pub integration_code: IntegrationCode,
    pub integration_version: Option<IntegrationVersion>,
    pub parameters: Value,
    /// The payload and its content type.
    pub payload: Option<(Bytes, String)>,
    pub caller: String,
}

/// Why a request started no exchange.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Refused {
    pub error: InvokeError,
    /// Where it was kept, when it could not be routed.
    pub kept: Option<UnroutedId>,
}

/// `POST /exchanges`: starts the exchange, or — when the request cannot be routed — keeps
/// it as an unrouted message before answering the refusal. The payload is stored first (as
/// an exchange's input would be), so a refused one is kept the same way.
pub async fn request_exchange(ctx: &Routing<'_>, request: ExchangeRequest) -> Result<Exchange, Refused> {
    let refused = |error: InvokeError| Refused { error, kept: None };
    let payload = match request.payload {
        Some((bytes, content_type)) => {
            Some(ctx.starting.codec.store(bytes, &content_type).await.map_err(|e| refused(e.into()))?)
        }
        None => None,
    };
    let invoked = invoke_exchange(
        &ctx.starting,
        InvokeRequest {
            integration_code: request.integration_code.clone(),
            integration_version: request.integration_version,
            parameters: request.parameters.clone(),
            payload: payload.clone().map(InvokeInput::Stored),
            trigger: Trigger::api(&request.caller),
            exchange_id: None,
        },
    )
    .await;
    let error = match invoked {
        Ok(exchange) => return Ok(exchange),
        Err(error) => error,
    };
    let Some((code, message)) = error.routing_refusal() else { return Err(refused(error)) };
    let refusal = Refusal { error: code.to_string(), message };
    let now = ctx.starting.effects.clock.now();
    let message = UnroutedMessage {
        unrouted_id: UnroutedId::new(uuid::Uuid::now_v7().to_string()),
        received_at: now,
        caller: request.caller,
        integration_code: request.integration_code,
        integration_version: request.integration_version,
        parameters: request.parameters,
        payload,
        refusal,
        replay: None,
    };
    match ctx.unrouted.keep(&message, ctx.retention.map(|keep| now + keep)).await {
        Ok(()) => {
            tracing::info!(unroutedId = %message.unrouted_id, integrationCode = %message.integration_code, refusal = %message.refusal.error, "unrouted request kept");
            Err(Refused { error, kept: Some(message.unrouted_id) })
        }
        // The refusal stands; that it could not be kept is ours to report (retryable).
        Err(UnroutedWriteError::Port(e)) => Err(refused(e.into())),
        Err(UnroutedWriteError::Conflict) => {
            Err(refused(PortError::Fault { service: "unrouted", message: "a fresh id was taken".into() }.into()))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("unrouted message {0} does not exist (or is past its retention)")]
    NotFound(UnroutedId),
    #[error(
        "unrouted message {id} was replayed already as exchange {exchange_id}; recover that exchange if it failed"
    )]
    Replayed { id: UnroutedId, exchange_id: ExchangeId },
    #[error("unrouted message {id} is being replayed right now (exchange {exchange_id})")]
    Replaying { id: UnroutedId, exchange_id: ExchangeId },
    #[error("another replay of unrouted message {0} started concurrently")]
    Concurrent(UnroutedId),
    /// Still not routable (or another reason the exchange did not start): the message stays.
    #[error(transparent)]
    NotStarted(InvokeError),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// `POST /unrouted/{id}/replay`: starts the exchange the kept request asked for, once. The
/// replay (and its exchange id) is written first, under a condition two replays race on;
/// if the exchange does not start the replay is taken back, and one that stopped before
/// writing its exchange is taken back by the next replay after a while.
pub async fn replay_unrouted(ctx: &Routing<'_>, id: &UnroutedId, operator: &str) -> Result<Exchange, ReplayError> {
    let message = ctx.unrouted.unrouted(id).await?.ok_or_else(|| ReplayError::NotFound(id.clone()))?;
    let previous = message.replay.as_ref().map(|r| r.exchange_id.clone());
    let replay_status = match &previous {
        Some(exchange_id) => ctx.starting.effects.exchanges.get(exchange_id).await?.map(|d| d.exchange.status),
        None => None,
    };
    let now = ctx.starting.effects.clock.now();
    match replay_fate(&message, replay_status, now) {
        ReplayFate::Replay => {}
        ReplayFate::Replayed(exchange_id) => return Err(ReplayError::Replayed { id: id.clone(), exchange_id }),
        ReplayFate::Replaying(exchange_id) => return Err(ReplayError::Replaying { id: id.clone(), exchange_id }),
    }
    let exchange_id = ExchangeId::new(uuid::Uuid::now_v7().to_string());
    let replaying = UnroutedMessage {
        replay: Some(Replay { exchange_id: exchange_id.clone(), at: now, by: operator.to_string() }),
        ..message.clone()
    };
    save_replay(ctx, &replaying, previous.as_ref()).await?;
    let invoked = invoke_exchange(
        &ctx.starting,
        InvokeRequest {
            integration_code: message.integration_code.clone(),
            integration_version: message.integration_version,
            parameters: message.parameters.clone(),
            payload: message.payload.clone().map(InvokeInput::Stored),
            trigger: Trigger::replay(operator),
            exchange_id: Some(exchange_id.clone()),
        },
    )
    .await;
    match invoked {
        Ok(exchange) => {
            tracing::info!(unroutedId = %id, exchangeId = %exchange.exchange_id, "unrouted request replayed");
            Ok(exchange)
        }
        Err(error) => {
            // Nothing started (the exchange is written last of all but its handoff, and an
            // exchange that was written but not handed off is Failed, so recoverable): the
            // message may be replayed again.
            let written = ctx.starting.effects.exchanges.get(&exchange_id).await?.is_some();
            if !written {
                save_replay(ctx, &UnroutedMessage { replay: None, ..message }, Some(&exchange_id)).await?;
            }
            Err(ReplayError::NotStarted(error))
        }
    }
}

async fn save_replay(
    ctx: &Routing<'_>,
    message: &UnroutedMessage,
    expected: Option<&ExchangeId>,
) -> Result<(), ReplayError> {
    match ctx.unrouted.save_replay(message, expected).await {
        Ok(()) => Ok(()),
        Err(UnroutedWriteError::Conflict) => Err(ReplayError::Concurrent(message.unrouted_id.clone())),
        Err(UnroutedWriteError::Port(e)) => Err(e.into()),
    }
}
