//! `GET /unrouted`, `GET /unrouted/{id}` and `POST /unrouted/{id}/replay`: requests the
//! gateway could not route, kept for operators (see [`crate::use_cases::unrouted`]).

use super::{invoke_error, paging, requests, views, ApiError, ApiResult, Ctx};
use crate::use_cases::unrouted::{replay_unrouted, ReplayError, Routing};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use handoff_core::identity::Caller;
use handoff_core::ids::UnroutedId;
use std::collections::HashMap;

/// Unrouted ids are UUIDs (v7, time-ordered): anything else is not one.
fn unrouted_id(raw: &str, field: &str) -> Result<UnroutedId, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(|u| UnroutedId::new(u.hyphenated().to_string()))
        .map_err(|_| ApiError::parameter(field, format!("'{raw}' is not an unrouted message id")))
}

#[utoipa::path(get, path = "/unrouted", tag = "unrouted",
    params(requests::Paging),
    responses(
        (status = 200, description = "Requests the gateway could not route, newest first", body = views::UnroutedPage),
        (status = 400, description = "A parameter is not valid", body = views::ErrorBody),
    ))]
pub(super) async fn list_unrouted(State(ctx): Ctx, Query(query): Query<HashMap<String, String>>) -> ApiResult {
    let (limit, cursor) = paging(&query)?;
    let after = match cursor {
        Some(c) => Some(unrouted_id(c, "cursor")?),
        None => None,
    };
    let (items, next) = ctx.ports.unrouted.list_unrouted(limit as usize, after.as_ref().map(|a| a.as_str())).await?;
    let items = items.iter().map(views::UnroutedView::from).collect();
    Ok(Json(views::UnroutedPage { items, next_cursor: next }).into_response())
}

#[utoipa::path(get, path = "/unrouted/{id}", tag = "unrouted",
    params(requests::UnroutedPath),
    responses(
        (status = 200, description = "The request as it came, and why it was refused", body = views::UnroutedView),
        (status = 400, description = "Not an unrouted message id", body = views::ErrorBody),
        (status = 404, description = "No such message", body = views::ErrorBody),
    ))]
pub(super) async fn get_unrouted(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    let id = unrouted_id(&id, "id")?;
    let message = ctx
        .ports
        .unrouted
        .unrouted(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unrouted message {id} does not exist")))?;
    Ok(Json(views::UnroutedView::from(&message)).into_response())
}

/// 202 with the exchange it started; 409 when it was replayed already (naming that
/// exchange) or still cannot be routed (it stays kept).
#[utoipa::path(post, path = "/unrouted/{id}/replay", tag = "unrouted",
    params(requests::UnroutedPath),
    responses(
        (status = 202, description = "The exchange it started", body = views::ReplayAccepted),
        (status = 400, description = "Not an unrouted message id", body = views::ErrorBody),
        (status = 404, description = "No such message", body = views::ErrorBody),
        (status = 409, description = "Replayed already (`exchangeId`), or still not routable (kept)", body = views::ErrorBody),
    ))]
pub(super) async fn replay(State(ctx): Ctx, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> ApiResult {
    let id = unrouted_id(&id, "id")?;
    let exchange = replay_unrouted(&Routing::of(&ctx), &id, &caller.subject).await.map_err(|e| match e {
        ReplayError::NotFound(_) => ApiError::not_found(e.to_string()),
        ReplayError::Replayed { ref exchange_id, .. } | ReplayError::Replaying { ref exchange_id, .. } => {
            let exchange_id = exchange_id.clone();
            ApiError::new(StatusCode::CONFLICT, "AlreadyReplayed", e.to_string()).replayed_as(exchange_id)
        }
        ReplayError::Concurrent(_) => ApiError::new(StatusCode::CONFLICT, "AlreadyReplayed", e.to_string()),
        // Still not routable: the message stays kept, to be replayed later.
        ReplayError::NotStarted(invoke) => match invoke.routing_refusal() {
            Some((refusal, message)) => {
                ApiError::new(StatusCode::CONFLICT, "NotRoutable", message).refused_as(refusal).kept_as(id.clone())
            }
            None => invoke_error(invoke).kept_as(id.clone()),
        },
        ReplayError::Port(p) => p.into(),
    })?;
    let body = views::ReplayAccepted { exchange: views::ExchangeSummary::from(&exchange), unrouted_id: id };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
