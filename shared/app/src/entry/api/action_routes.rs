//! Operator actions on one exchange: recover it, retry a step now (or re-execute a failed
//! secondary of a Completed exchange), and the requester's sign-off
//! (see [`crate::use_cases::recover`]).

use super::*;

pub(super) fn action_error(e: ActionError) -> ApiError {
    match e {
        ActionError::UnknownExchange(_) | ActionError::UnknownStep(_) | ActionError::UnknownVersion(_) => {
            ApiError::not_found(e.to_string())
        }
        ActionError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "InvalidState", m),
        ActionError::Port(p) => p.into(),
    }
}

#[utoipa::path(post, path = "/exchanges/{id}/recover", tag = "exchanges",
    params(requests::ExchangePath),
    request_body(content = Option<requests::RecoverRequest>, description = "Optional: the version to recover onto"),
    responses(
        (status = 202, description = "Recovering from its failed step", body = views::RecoveryAccepted),
        (status = 400, description = "The request is not valid", body = views::ErrorBody),
        (status = 404, description = "No such exchange or version", body = views::ErrorBody),
        (status = 409, description = "Not recoverable in its state (`InvalidState`)", body = views::ErrorBody),
    ))]
pub(super) async fn recover(
    State(ctx): Ctx,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let version = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let request = json_body(&body)?;
        let r = ObjectReader::new("", &request).map_err(|e| ApiError::field(e, "InvalidRequest"))?;
        r.deny_unknown(&["integrationVersion"]).map_err(|e| ApiError::field(e, "InvalidRequest"))?;
        match r.get("integrationVersion") {
            None => None,
            some => Some(
                handoff_core::definition::parse_version(some)
                    .map_err(|e| ApiError::field(FieldError::new("integrationVersion", e.problem), "InvalidRequest"))?,
            ),
        }
    };
    let recovered = recover_exchange(
        &Recovering::of(&ctx),
        &ExchangeId::new(id.clone()),
        version,
        ResumeFrom::FailedStep,
        &caller.subject,
    )
    .await
    .map_err(action_error)?;
    let body = views::RecoveryAccepted {
        exchange_id: ExchangeId::new(id),
        status: ExchangeStatus::Started,
        status_code: ExchangeStatus::Started.code().to_string(),
        resumed_at: recovered.resumed_at,
        integration_version: recovered.integration_version,
        recoveries: recovered.recoveries,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[utoipa::path(post, path = "/exchanges/{id}/steps/{stepId}/retry", tag = "exchanges",
    params(requests::StepPath),
    responses(
        (status = 202, description = "The step runs again now", body = views::RetryAccepted),
        (status = 400, description = "Not a step id", body = views::ErrorBody),
        (status = 404, description = "No such exchange or step", body = views::ErrorBody),
        (status = 409, description = "The step cannot be retried in its state (`InvalidState`)", body = views::ErrorBody),
    ))]
pub(super) async fn retry_step(
    State(ctx): Ctx,
    Extension(caller): Extension<Caller>,
    Path((id, step_id)): Path<(String, String)>,
) -> ApiResult {
    let step_id = StepId::parse(&step_id).map_err(|e| ApiError::parameter("stepId", e))?;
    let attempt = retry_step_now(&Recovering::of(&ctx), &ExchangeId::new(id.clone()), step_id, &caller.subject)
        .await
        .map_err(action_error)?;
    Ok((StatusCode::ACCEPTED, Json(views::RetryAccepted { exchange_id: ExchangeId::new(id), step_id, attempt }))
        .into_response())
}

/// 202 once the sign-off is handed to the exchange (it completes shortly after).
#[utoipa::path(post, path = "/exchanges/{id}/signoff", tag = "exchanges",
    params(requests::ExchangePath),
    responses(
        (status = 202, description = "Signed off; the exchange completes shortly", body = views::SignoffAccepted),
        (status = 404, description = "No such exchange", body = views::ErrorBody),
        (status = 409, description = "It does not wait for a sign-off (`InvalidState`)", body = views::ErrorBody),
    ))]
pub(super) async fn signoff(
    State(ctx): Ctx,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    let step_id =
        sign_off(&Recovering::of(&ctx), &ExchangeId::new(id.clone()), &caller.subject).await.map_err(action_error)?;
    let body = views::SignoffAccepted { exchange_id: ExchangeId::new(id), step_id, signed_off_by: caller.subject };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
