//! An integration code's endpoint over HTTP: `GET /integrations/{code}` with its endpoint,
//! `PATCH /integrations/{code}`, the operator commands (`/enable`, `/disable`, `/resume`)
//! and the endpoint log (see [`crate::use_cases::endpoints`]).

use super::*;

#[utoipa::path(get, path = "/integrations/{code}", tag = "integrations",
    params(requests::CodePath),
    responses(
        (status = 200, description = "The code's endpoint and every version, newest first", body = views::IntegrationDetail),
        (status = 400, description = "Not an integration code", body = views::ErrorBody),
        (status = 404, description = "No such integration", body = views::ErrorBody),
    ))]
pub(super) async fn get_integration(State(ctx): Ctx, Path(code): Path<String>) -> ApiResult {
    let code = path_code(&code)?;
    let mut versions = ctx.ports.integrations.versions(&code).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("integration {code} does not exist")));
    }
    versions.sort_by_key(|v| std::cmp::Reverse(v.version));
    let endpoint = stored_endpoint(&ctx, &code, &versions).await?;
    let endpoint = endpoint_view(&endpoint, &versions, ctx.ports.clock.now());
    let versions = versions.iter().map(views::IntegrationView::from).collect();
    Ok(Json(views::IntegrationDetail { code, endpoint, versions }).into_response())
}

/// The endpoint of a code whose `versions` are read (a code from before endpoints runs).
pub(super) async fn stored_endpoint(
    ctx: &AppContext,
    code: &IntegrationCode,
    versions: &[StoredIntegration],
) -> Result<Endpoint, ApiError> {
    let stored = ctx.ports.endpoints.endpoint(code).await?;
    stored
        .or_else(|| unrecorded_endpoint(code, versions))
        .ok_or_else(|| ApiError::not_found(format!("integration {code} does not exist")))
}

/// An endpoint as operators read it, with the schedule of the version that runs (the
/// highest enabled one) and its next runs — or "not scheduled".
pub(super) fn endpoint_view(
    endpoint: &Endpoint,
    versions: &[StoredIntegration],
    now: DateTime<Utc>,
) -> views::EndpointView {
    let schedule = match active_schedule(versions).map(|(_, spec)| spec) {
        Some(spec) if endpoint.status.keeps_schedule() => views::EndpointSchedule::Scheduled {
            next_runs: handoff_core::schedule::next_runs(&spec, now, endpoint.since, SHOWN_RUNS),
            runs: (!endpoint.status.runs())
                .then(|| format!("skipped (and logged) while the endpoint is {}", endpoint.status.name())),
            expression: spec.expression,
            timezone: spec.timezone,
        },
        Some(_) => {
            views::EndpointSchedule::NotScheduled(format!("not scheduled: the endpoint is {}", endpoint.status.name()))
        }
        None => views::EndpointSchedule::NotScheduled("not scheduled".to_string()),
    };
    views::EndpointView {
        status: endpoint.status,
        since: endpoint.since,
        reason: endpoint.reason.clone(),
        changed_by: endpoint.changed_by.clone(),
        queue_status: endpoint.queue_status,
        on_system_failure: endpoint.on_system_failure(is_event_based(versions)),
        retrying: endpoint.retrying.clone(),
        last_failure: endpoint.last_failure.clone(),
        halted_by: endpoint.halted_by.clone(),
        schedule,
        changed: None,
        recovered: None,
    }
}

/// `PATCH /integrations/{code}`: `{"onSystemFailure": "halt"|"continue", "queueStatus":
/// "ReadEvents"|"DiscardEvents"}`, each optional.
#[utoipa::path(patch, path = "/integrations/{code}", tag = "endpoints",
    params(requests::CodePath),
    request_body = requests::EndpointPatch,
    responses(
        (status = 200, description = "The endpoint as configured", body = views::EndpointAnswer),
        (status = 400, description = "The request is not valid (`field` names the problem)", body = views::ErrorBody),
        (status = 404, description = "No such integration", body = views::ErrorBody),
        (status = 409, description = "A concurrent change won (`ConcurrentChange`)", body = views::ErrorBody),
    ))]
pub(super) async fn patch_endpoint(State(ctx): Ctx, Path(code): Path<String>, body: Bytes) -> ApiResult {
    let code = path_code(&code)?;
    let request = json_body(&body)?;
    let invalid = |e| ApiError::field(e, "InvalidRequest");
    let r = ObjectReader::new("", &request).map_err(invalid)?;
    r.deny_unknown(&["onSystemFailure", "queueStatus"]).map_err(invalid)?;
    let on_system_failure = match r.optional_str("onSystemFailure").map_err(invalid)? {
        None => None,
        Some("halt") => Some(OnSystemFailure::Halt),
        Some("continue") => Some(OnSystemFailure::Continue),
        Some(other) => {
            let problem = format!("must be \"halt\" or \"continue\", found \"{other}\"");
            return Err(invalid(FieldError::new("onSystemFailure", problem)));
        }
    };
    let queue_status = match r.optional_str("queueStatus").map_err(invalid)? {
        None => None,
        Some("ReadEvents") => Some(QueueStatus::ReadEvents),
        Some("DiscardEvents") => Some(QueueStatus::DiscardEvents),
        Some(other) => {
            let problem = format!("must be \"ReadEvents\" or \"DiscardEvents\", found \"{other}\"");
            return Err(invalid(FieldError::new("queueStatus", problem)));
        }
    };
    let endpoint = configure_endpoint(&Integrations::of(&ctx), &code, on_system_failure, queue_status)
        .await
        .map_err(endpoint_error)?;
    let versions = ctx.ports.integrations.versions(&code).await?;
    let endpoint = endpoint_view(&endpoint, &versions, ctx.ports.clock.now());
    Ok(Json(views::EndpointAnswer { code, endpoint }).into_response())
}

fn endpoint_error(e: EndpointError) -> ApiError {
    match e {
        EndpointError::NotFound(_) => ApiError::not_found(e.to_string()),
        EndpointError::Refused(_) => ApiError::new(StatusCode::CONFLICT, "EndpointStatusConflict", e.to_string()),
        EndpointError::Contended(_) => ApiError::new(StatusCode::CONFLICT, "ConcurrentChange", e.to_string()),
        EndpointError::Port(p) => p.into(),
    }
}

#[utoipa::path(post, path = "/integrations/{code}/enable", tag = "endpoints",
    params(requests::CodePath),
    request_body(content = Option<requests::EndpointCommand>, description = "Optional"),
    responses(
        (status = 200, description = "Enabled (`changed`: whether it was not already)", body = views::EndpointAnswer),
        (status = 400, description = "The request is not valid", body = views::ErrorBody),
        (status = 404, description = "No such integration", body = views::ErrorBody),
        (status = 409, description = "Not allowed from its status, or a concurrent change won", body = views::ErrorBody),
    ))]
pub(super) async fn enable_endpoint(ctx: Ctx, caller: Extension<Caller>, code: Path<String>, body: Bytes) -> ApiResult {
    command_endpoint(ctx, caller, code, body, EndpointCommand::Enable).await
}

#[utoipa::path(post, path = "/integrations/{code}/disable", tag = "endpoints",
    params(requests::CodePath),
    request_body(content = Option<requests::EndpointCommand>, description = "Optional"),
    responses(
        (status = 200, description = "Held: nothing starts and nothing leaves until enabled", body = views::EndpointAnswer),
        (status = 400, description = "The request is not valid", body = views::ErrorBody),
        (status = 404, description = "No such integration", body = views::ErrorBody),
        (status = 409, description = "Not allowed from its status, or a concurrent change won", body = views::ErrorBody),
    ))]
pub(super) async fn disable_endpoint(
    ctx: Ctx,
    caller: Extension<Caller>,
    code: Path<String>,
    body: Bytes,
) -> ApiResult {
    command_endpoint(ctx, caller, code, body, EndpointCommand::Disable).await
}

#[utoipa::path(post, path = "/integrations/{code}/resume", tag = "endpoints",
    params(requests::CodePath),
    request_body(content = Option<requests::ResumeCommand>, description = "Optional"),
    responses(
        (status = 200, description = "Resumed; held handoffs go on (with `recoverFailed`: `recovered`)", body = views::EndpointAnswer),
        (status = 400, description = "The request is not valid", body = views::ErrorBody),
        (status = 404, description = "No such integration", body = views::ErrorBody),
        (status = 409, description = "Not halted, or a concurrent change won", body = views::ErrorBody),
    ))]
pub(super) async fn resume_endpoint(ctx: Ctx, caller: Extension<Caller>, code: Path<String>, body: Bytes) -> ApiResult {
    command_endpoint(ctx, caller, code, body, EndpointCommand::Resume).await
}

/// `POST /integrations/{code}/enable|disable|resume`, with an optional `{"reason": "..."}`.
async fn command_endpoint(
    State(ctx): Ctx,
    Extension(caller): Extension<Caller>,
    Path(code): Path<String>,
    body: Bytes,
    command: EndpointCommand,
) -> ApiResult {
    let code = path_code(&code)?;
    let request = if body.is_empty() { json!({}) } else { json_body(&body)? };
    let invalid = |e| ApiError::field(e, "InvalidRequest");
    let r = ObjectReader::new("", &request).map_err(invalid)?;
    match command {
        EndpointCommand::Resume => r.deny_unknown(&["reason", "recoverFailed"]),
        _ => r.deny_unknown(&["reason"]),
    }
    .map_err(invalid)?;
    let reason = r.optional_str("reason").map_err(invalid)?;
    let recover_failed = r.optional_bool("recoverFailed").map_err(invalid)?.unwrap_or(false);
    if reason.is_some_and(|r| r.len() > MAX_REASON_BYTES) {
        return Err(invalid(FieldError::new("reason", format!("must be at most {MAX_REASON_BYTES} bytes"))));
    }
    let operated = operate_endpoint(&Integrations::of(&ctx), &code, command, &caller.subject, reason)
        .await
        .map_err(endpoint_error)?;
    let versions = ctx.ports.integrations.versions(&code).await?;
    let mut view = endpoint_view(&operated.endpoint, &versions, ctx.ports.clock.now());
    view.changed = Some(operated.changed);
    if recover_failed {
        // The exchanges that halted it, each recovered as if asked one by one.
        let mut recovered = Vec::new();
        for id in &operated.halted_by {
            let outcome = match recover_exchange(
                &Recovering::of(&ctx),
                id,
                None,
                ResumeFrom::FailedStep,
                &caller.subject,
            )
            .await
            {
                Ok(r) => views::RecoveredExchange {
                    exchange_id: id.clone(),
                    recovered: true,
                    resumed_at: Some(r.resumed_at),
                    reason: None,
                },
                Err(e) => views::RecoveredExchange {
                    exchange_id: id.clone(),
                    recovered: false,
                    resumed_at: None,
                    reason: Some(super::action_routes::action_error(e).message().to_string()),
                },
            };
            recovered.push(outcome);
        }
        view.recovered = Some(recovered);
    }
    if let ScheduleState::OutOfSync(e) = &operated.schedule {
        let what = format!("the schedule of {code} could not be synchronised");
        view.schedule =
            views::EndpointSchedule::OutOfSync { state: "outOfSync".to_string(), error_id: logged_error_id(&what, e) };
    }
    Ok(Json(views::EndpointAnswer { code, endpoint: view }).into_response())
}

/// `GET /integrations/{code}/log?limit=&cursor=`: invocations, skipped runs and status
/// changes, newest first.
#[utoipa::path(get, path = "/integrations/{code}/log", tag = "endpoints",
    params(requests::CodePath, requests::Paging),
    responses(
        (status = 200, description = "Invocations, skipped runs and status changes, newest first", body = views::EndpointLogPage),
        (status = 400, description = "A parameter is not valid", body = views::ErrorBody),
        (status = 404, description = "No such integration", body = views::ErrorBody),
    ))]
pub(super) async fn endpoint_log(
    State(ctx): Ctx,
    Path(code): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let code = path_code(&code)?;
    let (limit, cursor) = paging(&query)?;
    if endpoint_of(ctx.ports.endpoints.as_ref(), ctx.ports.integrations.as_ref(), &code).await?.is_none() {
        return Err(ApiError::not_found(format!("integration {code} does not exist")));
    }
    let (items, next) = ctx.ports.endpoints.log(&code, limit, cursor).await.map_err(listing_error)?;
    Ok(Json(views::EndpointLogPage { code, items, next_cursor: next }).into_response())
}
