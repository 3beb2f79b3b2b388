//! `POST /integrations/{code}/events` and `GET /integrations/{code}/events`: an endpoint's
//! event queue (see [`crate::use_cases::events`]).

use super::{json_body, paging, path_code, requests, views, ApiError, ApiResult, Ctx};
use crate::use_cases::events::{queue_view, receive_events, EventIntake, EventsError, Received};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::collections::HashMap;

fn events_error(e: EventsError) -> ApiError {
    match e {
        EventsError::NotFound(_) => ApiError::not_found(e.to_string()),
        EventsError::NotEventBased(_) => ApiError::new(StatusCode::CONFLICT, "NotEventBased", e.to_string()),
        EventsError::Invalid(field) => ApiError::field(field, "InvalidEvents"),
        EventsError::Port(p) => p.into(),
    }
}

/// 202 once the events are stored (or counted as discarded): `{"accepted", "discarded",
/// "eventIds"}`.
#[utoipa::path(post, path = "/integrations/{code}/events", tag = "events",
    params(requests::CodePath),
    request_body = requests::Events,
    responses(
        (status = 202, description = "Stored, or counted as discarded (`queueStatus` DiscardEvents)", body = views::EventsAccepted),
        (status = 400, description = "The events are not valid (`field` names the problem)", body = views::ErrorBody),
        (status = 404, description = "No such integration", body = views::ErrorBody),
        (status = 409, description = "The integration is not event-based (`NotEventBased`)", body = views::ErrorBody),
    ))]
pub(super) async fn post_events(State(ctx): Ctx, Path(code): Path<String>, body: Bytes) -> ApiResult {
    let code = path_code(&code)?;
    let document = json_body(&body)?;
    let request_id = uuid::Uuid::now_v7().to_string();
    let received = receive_events(&EventIntake::of(&ctx), &code, &document, &request_id).await.map_err(events_error)?;
    let body = match received {
        Received::Kept(events) => views::EventsAccepted {
            accepted: events.len(),
            discarded: 0,
            event_ids: events.iter().map(|e| e.event_id.clone()).collect(),
            message: None,
        },
        Received::Discarded(count) => views::EventsAccepted {
            accepted: 0,
            discarded: count,
            event_ids: Vec::new(),
            message: Some(format!(
                "integration {code} discards events (queueStatus DiscardEvents): they were counted, not kept"
            )),
        },
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `{"pending", "oldestAgeSeconds", "discarded", "items", "nextCursor"}`: the queued events
/// oldest first, each with `takenBy` when an exchange holds it.
#[utoipa::path(get, path = "/integrations/{code}/events", tag = "events",
    params(requests::CodePath, requests::Paging),
    responses(
        (status = 200, description = "The queue, oldest event first", body = views::EventQueue),
        (status = 400, description = "A parameter is not valid", body = views::ErrorBody),
        (status = 404, description = "No such integration", body = views::ErrorBody),
        (status = 409, description = "The integration is not event-based (`NotEventBased`)", body = views::ErrorBody),
    ))]
pub(super) async fn get_events(
    State(ctx): Ctx,
    Path(code): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let code = path_code(&code)?;
    let (limit, cursor) = paging(&query)?;
    let after = match cursor {
        None => None,
        Some(c) => Some(
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|p| !p.is_empty())
                .ok_or_else(|| ApiError::parameter("cursor", "invalid cursor"))?,
        ),
    };
    let view =
        queue_view(&EventIntake::of(&ctx), &code, limit as usize, after.as_deref()).await.map_err(events_error)?;
    let taken = |position: &String| view.claim.as_ref().filter(|c| c.taken.contains(position));
    let items = view
        .items
        .iter()
        .map(|event| views::EventView {
            event_id: event.event_id.clone(),
            key: event.key.clone(),
            event_type: event.event_type.clone(),
            data: event.data.clone(),
            received_at: event.received_at,
            taken_by: taken(&event.position).map(|c| c.exchange_id.clone()),
        })
        .collect();
    let oldest_age = view.summary.oldest.map(|t| (view.now - t).num_seconds().max(0));
    Ok(Json(views::EventQueue {
        code,
        pending: view.summary.pending,
        oldest_age_seconds: oldest_age,
        discarded: view.summary.discarded,
        taken_by: view.claim.as_ref().map(|c| c.exchange_id.clone()),
        items,
        next_cursor: view.next.map(|p| URL_SAFE_NO_PAD.encode(p)),
    })
    .into_response())
}
