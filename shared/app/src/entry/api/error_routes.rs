//! `GET /errors`, `GET /errors/{errorId}` and `POST /errors/{errorId}/resolve`: the error
//! list, each entry with its catalogue code and the action that fixes it (see
//! [`crate::use_cases::errors`] and [`handoff_core::error_code`]).

use super::{
    integration_code_filter, json_body, listing_error, only_parameters, parse_limit, requests, views, ApiError,
    ApiResult, Ctx,
};
use crate::use_cases::errors::{resolve_error, ResolveFailure};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use chrono::Utc;
use handoff_core::error_list::{ErrorId, ErrorState, ResolveError};
use handoff_core::identity::Caller;
use handoff_core::reader::{FieldError, ObjectReader};
use handoff_core::retry::ErrorClassification;
use handoff_ports::ErrorFilter;
use std::collections::HashMap;

fn error_id(raw: &str) -> Result<ErrorId, ApiError> {
    ErrorId::parse(raw).map_err(|e| ApiError::parameter("errorId", e))
}

#[utoipa::path(get, path = "/errors", tag = "errors",
    params(requests::ErrorQuery),
    responses(
        (status = 200, description = "Error-list entries, newest first", body = views::ErrorPage),
        (status = 400, description = "A parameter is not valid (`field` names it)", body = views::ErrorBody),
    ))]
pub(super) async fn list_errors(State(ctx): Ctx, Query(query): Query<HashMap<String, String>>) -> ApiResult {
    let invalid = ApiError::parameter;
    only_parameters::<requests::ErrorQuery>(&query)?;
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
    let items = page.items.iter().map(views::ErrorEntry::from).collect();
    Ok(Json(views::ErrorPage { items, next_cursor: page.next_cursor }).into_response())
}

#[utoipa::path(get, path = "/errors/{errorId}", tag = "errors",
    params(requests::ErrorPath),
    responses(
        (status = 200, description = "The entry", body = views::ErrorEntry),
        (status = 400, description = "Not an error id", body = views::ErrorBody),
        (status = 404, description = "No such entry", body = views::ErrorBody),
    ))]
pub(super) async fn get_error(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    let id = error_id(&id)?;
    match ctx.ports.exchanges.error(&id).await? {
        Some(entry) => Ok(Json(views::ErrorEntry::from(&entry)).into_response()),
        None => Err(ApiError::not_found(format!("error {id} does not exist"))),
    }
}

/// `{"note": "what was fixed"}`: 200 with the resolved entry; 409 if it is resolved already.
#[utoipa::path(post, path = "/errors/{errorId}/resolve", tag = "errors",
    params(requests::ErrorPath),
    request_body = requests::ResolveRequest,
    responses(
        (status = 200, description = "Resolved; the error job re-processes it once", body = views::ErrorEntry),
        (status = 400, description = "Not an error id, or the note is missing, blank or too long", body = views::ErrorBody),
        (status = 404, description = "No such entry", body = views::ErrorBody),
        (status = 409, description = "Resolved already (`InvalidState`)", body = views::ErrorBody),
    ))]
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
        Ok(entry) => Ok((StatusCode::OK, Json(views::ErrorEntry::from(&entry))).into_response()),
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
