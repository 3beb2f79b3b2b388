//! `PUT /mappings/{name}` and `GET /mappings/{name}`: the metadata mappings transformation
//! steps reference (see [`handoff_core::mapping`] for the document).

use super::{json_body, requests, views, ApiError, ApiResult, Ctx};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use handoff_core::mapping::{parse_mapping, MappingName};
use handoff_ports::{MappingWriteError, StoredMapping};
use std::sync::Arc;

fn path_name(name: &str) -> Result<MappingName, ApiError> {
    MappingName::parse(name).map_err(|e| ApiError::parameter("name", e))
}

/// Creates (201) or replaces (200) a mapping. Running exchanges see a replacement within
/// the mapping cache's TTL.
#[utoipa::path(put, path = "/mappings/{name}", tag = "mappings",
    params(requests::MappingPath),
    request_body = requests::MappingDocument,
    responses(
        (status = 200, description = "Replaced", body = views::MappingView),
        (status = 201, description = "Created", body = views::MappingView),
        (status = 400, description = "Not a mapping name, or not a valid mapping (`field` names the problem)", body = views::ErrorBody),
        (status = 409, description = "A concurrent change won (`ConcurrentModification`)", body = views::ErrorBody),
    ))]
pub(super) async fn put_mapping(State(ctx): Ctx, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let name = path_name(&name)?;
    let document = json_body(&body)?;
    let parsed = parse_mapping(name.clone(), &document).map_err(|e| ApiError::field(e, "InvalidMapping"))?;
    let repository = ctx.mappings.repository();
    let current = repository.get(&name).await?;
    let stored = StoredMapping {
        name,
        document,
        revision: current.as_ref().map_or(1, |c| c.revision + 1),
        updated_at: ctx.ports.clock.now(),
    };
    repository.put(&stored, current.as_ref().map(|c| c.revision)).await.map_err(|e| match e {
        MappingWriteError::RevisionConflict => {
            ApiError::new(StatusCode::CONFLICT, "ConcurrentModification", e.to_string())
        }
        MappingWriteError::Port(p) => p.into(),
    })?;
    ctx.mappings.remember(Arc::new(parsed));
    let status = if current.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(views::MappingView::from(&stored))).into_response())
}

#[utoipa::path(get, path = "/mappings/{name}", tag = "mappings",
    params(requests::MappingPath),
    responses(
        (status = 200, description = "The mapping", body = views::MappingView),
        (status = 400, description = "Not a mapping name", body = views::ErrorBody),
        (status = 404, description = "No such mapping", body = views::ErrorBody),
    ))]
pub(super) async fn get_mapping(State(ctx): Ctx, Path(name): Path<String>) -> ApiResult {
    let name = path_name(&name)?;
    let stored = ctx
        .mappings
        .repository()
        .get(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("mapping '{name}' does not exist")))?;
    Ok(Json(views::MappingView::from(&stored)).into_response())
}
