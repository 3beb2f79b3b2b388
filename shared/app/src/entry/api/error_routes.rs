//! `GET /errors`, `GET /errors/{errorId}` and `POST /errors/{errorId}/resolve`: the error
//! list, each entry with its catalogue code and the action that fixes it (see
//! [`crate::use_cases::errors`] and [`handoff_core::error_code`]).

use super::{
    integration_code_filter, json_body, listing_error, only_parameters, parse_limit, ApiError, ApiResult, Ctx,
};
use crate::use_cases::errors::{resolve_error, ResolveFailure};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use chrono::Utc;
use handoff_core::error_list::{ErrorId, ErrorState, ResolveError, StoredError};
use handoff_core::identity::Caller;
use handoff_core::reader::{FieldError, ObjectReader};
use handoff_core::retry::ErrorClassification;
use handoff_ports::ErrorFilter;
use serde_json::{json, Value};
use std::collections::HashMap;

/// An entry as callers see it: stored fields, and the catalogue's action for its code.
fn view(entry: &StoredError) -> Value {
    let mut v = serde_json::to_value(entry).unwrap_or_default();
    v["action"] = json!(entry.record.code.action());
    v
}

fn error_id(raw: &str) -> Result<ErrorId, ApiError> {
    ErrorId::parse(raw).map_err(|e| ApiError::parameter("errorId", e))
}

pub(super) async fn list_errors(State(ctx): Ctx, Query(query): Query<HashMap<String, String>>) -> ApiResult {
    let invalid = ApiError::parameter;
    only_parameters(&query, &["classification", "integrationCode", "since", "state", "limit", "cursor"])?;
    let classification = match query.get("classification").map(String::as_str) {
        None => None,
        Some("business") => Some(ErrorClassification::Business),
        Some("system") => Some(ErrorClassification::System),
        Some(other) => return Err(invalid("classification", format!("'{other}' is not business or system"))),
    };
    let integration_code = integration_code_filter(&query)?;
    let since = query
        .get("since")
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| invalid("since", format!("'{s}' is not an RFC 3339 time ({e})")))
        })
        .transpose()?;
    let state = query.get("state").map(|s| ErrorState::parse(s).map_err(|e| invalid("state", e))).transpose()?;
    let limit = parse_limit(query.get("limit")).map_err(|m| invalid("limit", m))?;
    let page = ctx
        .ports
        .exchanges
        .errors(
            &ErrorFilter { classification, integration_code, since, state },
            limit,
            query.get("cursor").map(String::as_str),
        )
        .await
        .map_err(listing_error)?;
    let items: Vec<Value> = page.items.iter().map(view).collect();
    Ok(Json(json!({"items": items, "nextCursor": page.next_cursor})).into_response())
}

pub(super) async fn get_error(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    let id = error_id(&id)?;
    match ctx.ports.exchanges.error(&id).await? {
        Some(entry) => Ok(Json(view(&entry)).into_response()),
        None => Err(ApiError::not_found(format!("error {id} does not exist"))),
    }
}

/// `{"note": "what was fixed"}`: 200 with the resolved entry; 409 if it is resolved already.
pub(super) async fn resolve(
    State(ctx): Ctx,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let id = error_id(&id)?;
    let request = json_body(&body)?;
    let invalid = |e: FieldError| ApiError::field(e, "InvalidRequest");
    let r = ObjectReader::new("", &request).map_err(invalid)?;
    r.deny_unknown(&["note"]).map_err(invalid)?;
    let note = r.required_str("note").map_err(invalid)?;
    let now = ctx.effects().clock.now();
    match resolve_error(ctx.ports.exchanges.as_ref(), &id, &caller.subject, note, now).await {
        Ok(entry) => Ok((StatusCode::OK, Json(view(&entry))).into_response()),
        Err(e @ ResolveFailure::Unknown(_)) => Err(ApiError::not_found(e.to_string())),
        Err(ResolveFailure::Refused(e @ (ResolveError::EmptyNote | ResolveError::NoteTooLong))) => {
            Err(invalid(FieldError::new("note", e.to_string())))
        }
        Err(ResolveFailure::Refused(e @ ResolveError::AlreadyResolved { .. })) => {
            Err(ApiError::new(StatusCode::CONFLICT, "InvalidState", e.to_string()))
        }
        Err(ResolveFailure::Port(p)) => Err(p.into()),
    }
}
