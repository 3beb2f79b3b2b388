//! `POST /integrations/{code}/events` and `GET /integrations/{code}/events`: an endpoint's
//! event queue (see [`crate::use_cases::events`]).

use super::{json_body, paging, path_code, ApiError, ApiResult, Ctx};
use crate::use_cases::events::{queue_view, receive_events, EventIntake, EventsError, Received};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::json;
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
pub(super) async fn post_events(State(ctx): Ctx, Path(code): Path<String>, body: Bytes) -> ApiResult {
    let code = path_code(&code)?;
    let document = json_body(&body)?;
    let request_id = uuid::Uuid::now_v7().to_string();
    let received = receive_events(&EventIntake::of(&ctx), &code, &document, &request_id).await.map_err(events_error)?;
    let body = match received {
        Received::Kept(events) => json!({
            "accepted": events.len(),
            "discarded": 0,
            "eventIds": events.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>(),
        }),
        Received::Discarded(count) => json!({
            "accepted": 0,
            "discarded": count,
            "eventIds": [],
            "message": format!("integration {code} discards events (queueStatus DiscardEvents): they were counted, not kept"),
        }),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `{"pending", "oldestAgeSeconds", "discarded", "items", "nextCursor"}`: the queued events
/// oldest first, each with `takenBy` when an exchange holds it.
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
    let items: Vec<_> = view
        .items
        .iter()
        .map(|event| {
            let mut item = serde_json::to_value(event).unwrap_or_default();
            if let Some(claim) = view.claim.as_ref().filter(|c| c.taken.contains(&event.position)) {
                item["takenBy"] = json!(claim.exchange_id);
            }
            if let Some(map) = item.as_object_mut() {
                map.remove("position");
            }
            item
        })
        .collect();
    let oldest_age = view.summary.oldest.map(|t| (view.now - t).num_seconds().max(0));
    Ok(Json(json!({
        "code": code,
        "pending": view.summary.pending,
        "oldestAgeSeconds": oldest_age,
        "discarded": view.summary.discarded,
        "takenBy": view.claim.as_ref().map(|c| c.exchange_id.clone()),
        "items": items,
        "nextCursor": view.next.map(|p| URL_SAFE_NO_PAD.encode(p)),
    }))
    .into_response())
}
