//! `GET /unrouted`, `GET /unrouted/{id}` and `POST /unrouted/{id}/replay`: requests the
//! gateway could not route, kept for operators (see [`crate::use_cases::unrouted`]).

use super::{exchange_summary, invoke_error, paging, ApiError, ApiResult, Ctx};
use crate::use_cases::unrouted::{replay_unrouted, ReplayError, Routing};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use handoff_core::identity::Caller;
use handoff_core::ids::UnroutedId;
use handoff_core::unrouted::UnroutedMessage;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Unrouted ids are UUIDs (v7, time-ordered): anything else is not one.
fn unrouted_id(raw: &str, field: &str) -> Result<UnroutedId, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(|u| UnroutedId::new(u.hyphenated().to_string()))
        .map_err(|_| ApiError::parameter(field, format!("'{raw}' is not an unrouted message id")))
}

fn view(message: &UnroutedMessage) -> Value {
    let mut v = serde_json::to_value(message).unwrap_or_default();
    v["replayed"] = json!(message.replay.is_some());
    v
}

pub(super) async fn list_unrouted(State(ctx): Ctx, Query(query): Query<HashMap<String, String>>) -> ApiResult {
    let (limit, cursor) = paging(&query)?;
    let after = match cursor {
        Some(c) => Some(unrouted_id(c, "cursor")?),
        None => None,
    };
    let (items, next) = ctx.ports.unrouted.list_unrouted(limit as usize, after.as_ref().map(|a| a.as_str())).await?;
    Ok(Json(json!({"items": items.iter().map(view).collect::<Vec<_>>(), "nextCursor": next})).into_response())
}

pub(super) async fn get_unrouted(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    let id = unrouted_id(&id, "id")?;
    let message = ctx
        .ports
        .unrouted
        .unrouted(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unrouted message {id} does not exist")))?;
    Ok(Json(view(&message)).into_response())
}

/// 202 with the exchange it started; 409 when it was replayed already (naming that
/// exchange) or still cannot be routed (it stays kept).
pub(super) async fn replay(State(ctx): Ctx, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult {
    let id = unrouted_id(&id, "id")?;
    let exchange = replay_unrouted(&Routing::of(&ctx), &id, &caller.subject).await.map_err(|e| match e {
        ReplayError::NotFound(_) => ApiError::not_found(e.to_string()),
        ReplayError::Replayed { ref exchange_id, .. } | ReplayError::Replaying { ref exchange_id, .. } => {
            let exchange_id = json!(exchange_id);
            ApiError::new(StatusCode::CONFLICT, "AlreadyReplayed", e.to_string()).with("exchangeId", exchange_id)
        }
        ReplayError::Concurrent(_) => ApiError::new(StatusCode::CONFLICT, "AlreadyReplayed", e.to_string()),
        // Still not routable: the message stays kept, to be replayed later.
        ReplayError::NotStarted(invoke) => match invoke.routing_refusal() {
            Some((refusal, message)) => ApiError::new(StatusCode::CONFLICT, "NotRoutable", message)
                .with("refusal", json!(refusal))
                .with("unroutedId", json!(id)),
            None => invoke_error(invoke).with("unroutedId", json!(id)),
        },
        ReplayError::Port(p) => p.into(),
    })?;
    let mut body = exchange_summary(&exchange);
    body["unroutedId"] = json!(id);
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
