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
    let body = json!({
        "exchangeId": id,
        "status": ExchangeStatus::Started,
        "statusCode": ExchangeStatus::Started.code(),
        "resumedAt": recovered.resumed_at,
        "integrationVersion": recovered.integration_version,
        "recoveries": recovered.recoveries,
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

pub(super) async fn retry_step(
    State(ctx): Ctx,
    Extension(caller): Extension<Caller>,
    Path((id, step_id)): Path<(String, String)>,
) -> ApiResult {
    let step_id =
        StepId::parse(&step_id).map_err(|e| ApiError::bad_request("InvalidParameter", format!("stepId: {e}")))?;
    let attempt = retry_step_now(&Recovering::of(&ctx), &ExchangeId::new(id.clone()), step_id, &caller.subject)
        .await
        .map_err(action_error)?;
    Ok((StatusCode::ACCEPTED, Json(json!({"exchangeId": id, "stepId": step_id, "attempt": attempt}))).into_response())
}

/// 202 once the sign-off is handed to the exchange (it completes shortly after).
pub(super) async fn signoff(
    State(ctx): Ctx,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    let step_id =
        sign_off(&Recovering::of(&ctx), &ExchangeId::new(id.clone()), &caller.subject).await.map_err(action_error)?;
    let body = json!({"exchangeId": id, "stepId": step_id, "signedOffBy": caller.subject});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
