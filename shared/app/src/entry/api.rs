//! The HTTP API (SPEC §4): an axum router, run by Lambda through the API Gateway adapter.

/// The per-destination summary of delivery steps.
mod destinations;

use crate::context::AppContext;
use crate::entry::apigw;
use crate::entry::function::{FunctionHandler, InvocationError};
use crate::use_cases::callback::{accept_callback, CallbackError, Callbacks};
use crate::use_cases::endpoints::{configure_endpoint, operate_endpoint, EndpointError};
use crate::use_cases::events::{is_event_based, EventsRefusal};
use crate::use_cases::integrations::{
    active_schedule, amend_integration, define_integration, endpoint_of, unrecorded_endpoint, DefineError, Defined,
    Integrations, ScheduleState,
};
use crate::use_cases::invoke::InvokeError;
use crate::use_cases::recover::{recover_exchange, retry_step_now, sign_off, ActionError, Recovering};
use crate::use_cases::unrouted::{request_exchange, ExchangeRequest, Routing};
use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::extract::MatchedPath;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use handoff_core::endpoint::{Endpoint, EndpointCommand, OnSystemFailure, QueueStatus};
use handoff_core::exchange::ExchangeDetail;
use handoff_core::exchange::{Exchange, ExchangeStatus, ExchangeStep};
use handoff_core::identity::{Caller, Scope};
use handoff_core::ids::{DataFileSetId, ExchangeId, IntegrationCode, IntegrationVersion, StepId};
use handoff_core::notification::parse_notification;
use handoff_core::reader::{FieldError, ObjectReader};
use handoff_core::recovery::ResumeFrom;
use handoff_ports::{ExchangeFilter, IntegrationWriteError, PortError, StoredIntegration};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

mod action_routes;
mod endpoint_routes;
mod error_routes;
mod event_routes;
mod mapping_routes;
mod unrouted_routes;

/// Requests above this are refused (Lambda's synchronous payload limit is 6 MB).
pub const MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;
/// `waitSeconds` stays below API Gateway's 30 s integration timeout.
pub const MAX_WAIT_SECONDS: u64 = 25;
/// Files above this cannot pass through a Lambda response; they are redirected to storage.
const MAX_DOWNLOAD_BYTES: u64 = 5 * 1024 * 1024;
/// How long a redirect to a large file stays usable.
const DOWNLOAD_URL_VALIDITY: Duration = Duration::from_secs(300);

type Ctx = State<Arc<AppContext>>;

/// An error answer: `{"error": "<Code>", "message": "...", "field": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// Set on our own failures: the log line that has the detail.
    error_id: Option<String>,
    /// More that the caller can act on (e.g. where a refused request was kept).
    details: Map<String, Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None, error_id: None, details: Map::new() }
    }
    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    fn field(error: FieldError, code: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: error.to_string(),
            field: Some(error.path),
            error_id: None,
            details: Map::new(),
        }
    }
    /// The error with `key` set in its body.
    fn with(mut self, key: &str, value: Value) -> Self {
        self.details.insert(key.to_string(), value);
        self
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }
    /// A query or path parameter that is wrong.
    fn parameter(name: &str, problem: impl Into<String>) -> Self {
        Self::field(FieldError::new(name, problem), "InvalidParameter")
    }
}

/// Refuses a query parameter that is not one of `allowed`.
fn only_parameters(query: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    match query.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => {
            Err(ApiError::parameter(unknown, format!("unknown query parameter (expected {})", allowed.join(", "))))
        }
        None => Ok(()),
    }
}

/// A listing's storage error: a malformed `cursor` is the caller's; anything else is ours.
fn listing_error(e: PortError) -> ApiError {
    match e {
        PortError::InvalidCursor(problem) => ApiError::parameter("cursor", problem),
        other => other.into(),
    }
}

impl ApiError {
    /// Our own failure: its text (which may name tables, roles or hosts) goes to the log
    /// under a fresh `errorId`, and the caller gets only that id to quote.
    fn internal(status: StatusCode, code: &'static str, what: &str, e: &dyn std::fmt::Display) -> Self {
        let error_id = logged_error_id(what, e);
        let message = match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                format!("a service the gateway depends on is unavailable; try again shortly (errorId {error_id})")
            }
            _ => format!("the gateway failed to handle the request; quote errorId {error_id} when reporting it"),
        };
        Self { status, code, message, field: None, error_id: Some(error_id), details: Map::new() }
    }
}

/// Logs our own failure `e` under a fresh id and returns the id, the only part of it a caller sees.
fn logged_error_id(what: &str, e: &dyn std::fmt::Display) -> String {
    let error_id = uuid::Uuid::now_v7().to_string();
    tracing::error!(errorId = %error_id, error = %e, "{what}");
    error_id
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        if e.is_retryable() {
            Self::internal(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "storage call failed", &e)
        } else {
            Self::internal(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "storage call failed", &e)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Value::Object(self.details);
        body["error"] = json!(self.code);
        body["message"] = json!(self.message);
        if let Some(field) = self.field {
            body["field"] = Value::String(field);
        }
        if let Some(error_id) = self.error_id {
            body["errorId"] = Value::String(error_id);
        }
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// The scope each route requires (SPEC §6); `None`: public. The template's
/// `AuthorizationScopes` say the same (a test keeps them equal) and API Gateway checks them
/// first; the function checks again from the authorizer context, so a template mistake
/// never opens a route.
pub const ROUTE_SCOPES: &[(&str, &str, Option<Scope>)] = &[
    ("POST", "/integrations", Some(Scope::Admin)),
    ("GET", "/integrations", Some(Scope::Read)),
    ("GET", "/integrations/{code}", Some(Scope::Read)),
    ("PATCH", "/integrations/{code}/versions/{version}", Some(Scope::Admin)),
    ("PATCH", "/integrations/{code}", Some(Scope::Operate)),
    ("GET", "/integrations/{code}/log", Some(Scope::Read)),
    ("POST", "/integrations/{code}/events", Some(Scope::Invoke)),
    ("GET", "/integrations/{code}/events", Some(Scope::Read)),
    ("POST", "/integrations/{code}/enable", Some(Scope::Operate)),
    ("POST", "/integrations/{code}/disable", Some(Scope::Operate)),
    ("POST", "/integrations/{code}/resume", Some(Scope::Operate)),
    ("POST", "/exchanges", Some(Scope::Invoke)),
    ("GET", "/exchanges", Some(Scope::Read)),
    ("GET", "/exchanges/{id}", Some(Scope::Read)),
    ("GET", "/exchanges/{id}/logs", Some(Scope::Read)),
    ("POST", "/exchanges/{id}/recover", Some(Scope::Operate)),
    ("POST", "/exchanges/{id}/steps/{stepId}/retry", Some(Scope::Operate)),
    ("POST", "/exchanges/{id}/signoff", Some(Scope::Invoke)),
    ("GET", "/errors", Some(Scope::Read)),
    ("GET", "/errors/{errorId}", Some(Scope::Read)),
    ("POST", "/errors/{errorId}/resolve", Some(Scope::Operate)),
    ("GET", "/unrouted", Some(Scope::Read)),
    ("GET", "/unrouted/{id}", Some(Scope::Read)),
    ("POST", "/unrouted/{id}/replay", Some(Scope::Operate)),
    ("POST", "/notifications/{token}", None),
    ("GET", "/data-file-sets/{id}", Some(Scope::Read)),
    ("GET", "/data-file-sets/{id}/files/{name}", Some(Scope::Read)),
    ("GET", "/health", None),
    ("GET", "/health/components", Some(Scope::Read)),
    ("PUT", "/mappings/{name}", Some(Scope::Admin)),
    ("GET", "/mappings/{name}", Some(Scope::Read)),
];

/// Refuses a request whose route needs a scope its caller lacks: 401 without a caller,
/// 403 without the scope. A route missing from [`ROUTE_SCOPES`] is refused (fail closed).
async fn authorize(matched: MatchedPath, request: axum::extract::Request, next: Next) -> Response {
    let method = request.method().as_str();
    let required = ROUTE_SCOPES.iter().find(|(m, p, _)| *m == method && *p == matched.as_str()).map(|(_, _, s)| *s);
    let caller = request.extensions().get::<Caller>();
    match (required, caller) {
        (Some(None), _) => next.run(request).await,
        (Some(Some(scope)), Some(caller)) if caller.may(scope) => next.run(request).await,
        (Some(Some(_)), None) => {
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "this route needs a bearer token")
                    .into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            response
        }
        (Some(Some(scope)), Some(_)) => {
            ApiError::new(StatusCode::FORBIDDEN, "Forbidden", format!("this route needs the {scope} scope"))
                .into_response()
        }
        (None, _) => {
            tracing::error!(method, route = matched.as_str(), "route has no entry in ROUTE_SCOPES; refused");
            ApiError::new(StatusCode::FORBIDDEN, "Forbidden", "this route is not open to callers").into_response()
        }
    }
}

pub fn router(ctx: Arc<AppContext>) -> Router {
    Router::new()
        .route("/integrations", post(create_integration).get(list_integrations))
        .route("/integrations/{code}", get(endpoint_routes::get_integration).patch(endpoint_routes::patch_endpoint))
        .route("/integrations/{code}/versions/{version}", patch(patch_integration))
        .route("/integrations/{code}/log", get(endpoint_routes::endpoint_log))
        .route("/integrations/{code}/events", post(event_routes::post_events).get(event_routes::get_events))
        .route("/integrations/{code}/enable", post(endpoint_routes::enable_endpoint))
        .route("/integrations/{code}/disable", post(endpoint_routes::disable_endpoint))
        .route("/integrations/{code}/resume", post(endpoint_routes::resume_endpoint))
        .route("/exchanges", post(post_exchange).get(list_exchanges))
        .route("/exchanges/{id}", get(get_exchange))
        .route("/exchanges/{id}/logs", get(get_logs))
        .route("/exchanges/{id}/recover", post(action_routes::recover))
        .route("/exchanges/{id}/steps/{stepId}/retry", post(action_routes::retry_step))
        .route("/exchanges/{id}/signoff", post(action_routes::signoff))
        .route("/errors", get(error_routes::list_errors))
        .route("/errors/{errorId}", get(error_routes::get_error))
        .route("/errors/{errorId}/resolve", post(error_routes::resolve))
        .route("/unrouted", get(unrouted_routes::list_unrouted))
        .route("/unrouted/{id}", get(unrouted_routes::get_unrouted))
        .route("/unrouted/{id}/replay", post(unrouted_routes::replay))
        .route("/notifications/{token}", post(notify))
        .route("/data-file-sets/{id}", get(get_data_file_set))
        .route("/data-file-sets/{id}/files/{name}", get(get_data_file))
        .route("/health", get(shallow_health))
        .route("/health/components", get(health))
        .route("/mappings/{name}", axum::routing::put(mapping_routes::put_mapping).get(mapping_routes::get_mapping))
        .route_layer(axum::middleware::from_fn(authorize))
        .fallback(|| async { ApiError::not_found("no such route") })
        // Size limits are checked in `json_body`, so oversized requests get our JSON error.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(ctx)
}

/// The api function: API Gateway events in, API Gateway responses out.
pub struct ApiFunction {
    router: Router,
}

impl ApiFunction {
    pub fn new(ctx: Arc<AppContext>) -> Self {
        Self { router: router(ctx) }
    }
}

#[async_trait]
impl FunctionHandler for ApiFunction {
    async fn invoke(&self, event: Value) -> Result<Value, InvocationError> {
        let request = apigw::to_request(event)?;
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        apigw::from_response(response).await
    }
}

// ------------------------------------------------------------------ request parsing

fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("request body of {} bytes exceeds the limit of {MAX_REQUEST_BYTES} bytes", body.len()),
        ));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("InvalidJson", "request body is empty; a JSON object is expected"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("InvalidJson", format!("request body is not valid JSON: {e}")))
}

fn path_code(code: &str) -> Result<IntegrationCode, ApiError> {
    IntegrationCode::parse(code).map_err(|e| ApiError::bad_request("InvalidParameter", format!("code: {e}")))
}

// ------------------------------------------------------------------ integrations

fn integration_view(i: &StoredIntegration) -> Value {
    json!({
        "code": i.code,
        "version": i.version,
        "enabled": i.enabled,
        "revision": i.revision,
        "createdBy": i.created_by,
        "updatedBy": i.updated_by,
        "createdAt": i.created_at,
        "updatedAt": i.updated_at,
        "definition": i.document,
    })
}

async fn create_integration(State(ctx): Ctx, Extension(caller): Extension<Caller>, body: Bytes) -> ApiResult {
    let defined =
        define_integration(&Integrations::of(&ctx), json_body(&body)?, &caller.subject).await.map_err(define_error)?;
    Ok((StatusCode::CREATED, Json(defined_view(&defined))).into_response())
}

fn define_error(e: DefineError) -> ApiError {
    match e {
        DefineError::InvalidDefinition(field) => ApiError::field(field, "InvalidDefinition"),
        DefineError::InvalidChange(field) => ApiError::field(field, "InvalidPatch"),
        DefineError::Unusable(problem) => ApiError::bad_request("InvalidDefinition", problem),
        DefineError::MappingUnusable(problem) => ApiError::new(StatusCode::CONFLICT, "MappingUnusable", problem),
        DefineError::NotFound { .. } => ApiError::not_found(e.to_string()),
        DefineError::Write(e @ IntegrationWriteError::AlreadyExists { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "AlreadyExists", e.to_string())
        }
        DefineError::Write(e @ IntegrationWriteError::RevisionConflict) => {
            ApiError::new(StatusCode::CONFLICT, "ConcurrentModification", e.to_string())
        }
        DefineError::Write(IntegrationWriteError::Port(p)) | DefineError::Port(p) => p.into(),
    }
}

/// A stored version with its code's schedule as the change left it.
fn defined_view(defined: &Defined) -> Value {
    let mut view = integration_view(&defined.stored);
    view["endpoint"] = json!({
        "status": defined.endpoint.status.name(),
        "since": defined.endpoint.since,
        "changedBy": defined.endpoint.changed_by,
    });
    view["schedule"] = match &defined.schedule {
        ScheduleState::Active { spec, follows } => {
            json!({"state": "active", "expression": spec.expression, "timezone": spec.timezone, "followsVersion": follows})
        }
        ScheduleState::None => json!({"state": "none"}),
        ScheduleState::OutOfSync(e) => {
            let what = format!("the schedule of {} could not be synchronised", defined.stored.code);
            json!({"state": "outOfSync", "errorId": logged_error_id(&what, e)})
        }
    };
    view
}

async fn list_integrations(State(ctx): Ctx) -> ApiResult {
    let mut all = ctx.ports.integrations.all().await?;
    all.sort_by(|a, b| a.code.cmp(&b.code).then(b.version.cmp(&a.version)));
    let mut items: Vec<Value> = Vec::with_capacity(all.len());
    for versions in all.chunk_by(|a, b| a.code == b.code) {
        let endpoint = endpoint_routes::endpoint_view(
            &endpoint_routes::stored_endpoint(&ctx, &versions[0].code, versions).await?,
            versions,
            ctx.ports.clock.now(),
        );
        items.extend(versions.iter().map(|v| {
            let mut item = integration_view(v);
            item["endpoint"] = endpoint.clone();
            item
        }));
    }
    Ok(Json(json!({"items": items})).into_response())
}

/// How many upcoming runs an endpoint shows.
const SHOWN_RUNS: usize = 5;

/// A status change's reason is shown to operators, not a document.
const MAX_REASON_BYTES: usize = 1024;

async fn patch_integration(
    State(ctx): Ctx,
    Extension(caller): Extension<Caller>,
    Path((code, version)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let code = path_code(&code)?;
    let version = IntegrationVersion::parse_path(&version)
        .map_err(|e| ApiError::bad_request("InvalidParameter", format!("version: {e}")))?;
    let patch = json_body(&body)?;
    let defined = amend_integration(&Integrations::of(&ctx), &code, version, &patch, &caller.subject)
        .await
        .map_err(define_error)?;
    Ok(Json(defined_view(&defined)).into_response())
}

// ------------------------------------------------------------------ exchanges

/// An exchange as lists and its detail show it: its stored fields (with `trigger`: what
/// started it and who), and what an operator asks first — whether it is `final`, whether
/// it is `recoverable`, and how long it took (`durationMs`, once final).
fn exchange_summary(e: &Exchange) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    v["statusCode"] = json!(e.status.code());
    v["final"] = json!(e.status.is_final());
    v["recoverable"] = json!(e.status.is_recoverable());
    if let Some(ms) = duration_ms(Some(e.created_at), e.completed_at) {
        v["durationMs"] = json!(ms);
    }
    v
}

/// Milliseconds from `from` to `to`, when both are known.
fn duration_ms(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Option<i64> {
    Some((to? - from?).num_milliseconds().max(0))
}

fn counts_view(c: &handoff_core::exchange::SubExchangeCounts) -> Value {
    json!({"total": c.total, "completed": c.completed, "failed": c.failed, "running": c.running()})
}

fn step_view(s: &ExchangeStep) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    v["statusCode"] = json!(s.status.code());
    // From its first attempt's start to its end: retries and their waits included.
    if let Some(ms) = duration_ms(s.started_at, s.completed_at) {
        v["durationMs"] = json!(ms);
    }
    if let Some(counts) = &s.sub_exchanges {
        v["subExchanges"] = counts_view(counts);
    }
    v
}

fn exchange_view(detail: &ExchangeDetail) -> Value {
    let mut v = exchange_summary(&detail.exchange);
    v["steps"] = Value::Array(detail.steps.iter().map(step_view).collect());
    if detail.steps.iter().any(|s| s.destination.is_some()) {
        v["destinations"] = destinations::destinations_view(&detail.steps);
    }
    // A parent shows how its sub-exchanges stand, over all its subflow steps.
    let mut subflow_steps = detail.steps.iter().filter_map(|s| s.sub_exchanges).peekable();
    if subflow_steps.peek().is_some() {
        let sum = subflow_steps.fold(handoff_core::exchange::SubExchangeCounts::default(), |mut sum, c| {
            sum.total += c.total;
            sum.completed += c.completed;
            sum.failed += c.failed;
            sum
        });
        v["subExchanges"] = counts_view(&sum);
    }
    v
}

/// The API's answer to an invocation that started no exchange.
fn invoke_error(e: InvokeError) -> ApiError {
    match e {
        InvokeError::NotFound { .. } | InvokeError::Disabled { .. } | InvokeError::EndpointHeld { .. } => {
            let (code, message) = e.routing_refusal().unwrap_or(("NotRouted", e.to_string()));
            let status = if code == "NotFound" { StatusCode::NOT_FOUND } else { StatusCode::CONFLICT };
            ApiError::new(status, code, message)
        }
        InvokeError::Unusable(m) => ApiError::new(StatusCode::CONFLICT, "IntegrationUnusable", m),
        InvokeError::EventBased(_) => ApiError::field(FieldError::new("payload", e.to_string()), "InvalidRequest"),
        InvokeError::Events { refusal: EventsRefusal::NonePending, .. } => {
            ApiError::new(StatusCode::CONFLICT, "NoPendingEvents", e.to_string())
        }
        InvokeError::Events { refusal: EventsRefusal::Busy(_), .. } => {
            ApiError::new(StatusCode::CONFLICT, "EventsInUse", e.to_string())
        }
        InvokeError::Payload(p) => {
            ApiError::internal(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "storing the payload failed", &p)
        }
        InvokeError::Port(p) => p.into(),
    }
}

async fn post_exchange(State(ctx): Ctx, Extension(caller): Extension<Caller>, body: Bytes) -> ApiResult {
    let request = json_body(&body)?;
    let r = ObjectReader::new("", &request).map_err(|e| ApiError::field(e, "InvalidRequest"))?;
    let invalid = |e| ApiError::field(e, "InvalidRequest");
    r.deny_unknown(&["integrationCode", "integrationVersion", "parameters", "payload", "waitSeconds"])
        .map_err(invalid)?;
    let integration_code = IntegrationCode::parse(r.required_str("integrationCode").map_err(invalid)?)
        .map_err(|e| invalid(FieldError::new("integrationCode", e)))?;
    let integration_version = match r.get("integrationVersion") {
        None => None,
        some => Some(
            handoff_core::definition::parse_version(some)
                .map_err(|e| invalid(FieldError::new("integrationVersion", e.problem)))?,
        ),
    };
    let parameters = match r.get("parameters") {
        None => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(invalid(FieldError::new("parameters", "must be an object"))),
    };
    let payload = r.get("payload").map(|p| match p {
        Value::String(text) => (Bytes::from(text.clone()), "text/plain".to_string()),
        other => (Bytes::from(other.to_string()), "application/json".to_string()),
    });
    let wait_seconds = r.optional_u64("waitSeconds", 0, 3600).map_err(invalid)?.unwrap_or(0).min(MAX_WAIT_SECONDS);

    let request =
        ExchangeRequest { integration_code, integration_version, parameters, payload, caller: caller.subject.clone() };
    let exchange = request_exchange(&Routing::of(&ctx), request).await.map_err(|refused| {
        let kept = refused.kept.clone();
        let error = invoke_error(refused.error);
        match kept {
            // Kept: the caller learns where, and the operator can replay it.
            Some(id) => error.with("unroutedId", json!(id)),
            None => error,
        }
    })?;
    if wait_seconds == 0 {
        let body = json!({
            "exchangeId": exchange.exchange_id,
            "status": exchange.status,
            "statusCode": exchange.status.code(),
            "integrationCode": exchange.integration_code,
            "integrationVersion": exchange.integration_version,
        });
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    // Request/response use: answer when final, or with the exchange as it stands.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_seconds);
    loop {
        let detail = ctx.ports.exchanges.get(&exchange.exchange_id).await?;
        let is_final = detail.as_ref().is_some_and(|d| d.exchange.status.is_final());
        if is_final || tokio::time::Instant::now() >= deadline {
            let status = if is_final { StatusCode::OK } else { StatusCode::ACCEPTED };
            let body = detail.as_ref().map(exchange_view).unwrap_or_else(|| exchange_summary(&exchange));
            return Ok((status, Json(body)).into_response());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn load_exchange(ctx: &AppContext, id: &str) -> Result<ExchangeDetail, ApiError> {
    ctx.ports
        .exchanges
        .get(&ExchangeId::new(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("exchange {id} does not exist")))
}

async fn get_exchange(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    let mut detail = load_exchange(&ctx, &id).await?;
    // Show the retry maximum in force now (it is read live at every decision).
    let exchange = &detail.exchange;
    if let Ok(Some(loaded)) = ctx.definitions.get(&exchange.integration_code, exchange.integration_version).await {
        for step in &mut detail.steps {
            if let Some(planned) = loaded.plan.get(step.sequence as usize) {
                step.max_attempts = loaded.pipeline().retry_policy(planned).max_attempts;
            }
        }
    }
    let mut view = exchange_view(&detail);
    // Held at its endpoint: where, since when and why (it keeps its place).
    if !detail.exchange.status.is_final() {
        let held = ctx.ports.endpoints.held(&detail.exchange.integration_code).await?;
        if let Some(h) = held.iter().find(|h| h.message.exchange_id == detail.exchange.exchange_id) {
            view["held"] = json!({
                "stepId": h.message.step_id,
                "subStep": h.message.sub_step,
                "since": h.held_at,
                "reason": h.reason,
            });
        }
    }
    Ok(Json(view).into_response())
}

/// A listing's `?limit=&cursor=` (its only parameters): the page size, and the cursor if
/// one was given.
fn paging(query: &HashMap<String, String>) -> Result<(u32, Option<&str>), ApiError> {
    only_parameters(query, &["limit", "cursor"])?;
    let limit = parse_limit(query.get("limit")).map_err(|m| ApiError::parameter("limit", m))?;
    Ok((limit, query.get("cursor").map(String::as_str).filter(|c| !c.is_empty())))
}

fn parse_limit(value: Option<&String>) -> Result<u32, String> {
    match value {
        None => Ok(20),
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| format!("'{l}' is not a number between 1 and 100")),
    }
}

/// An external system answers a waiting step ([`accept_callback`]): 202 once the callback
/// is stored, 404 for an unknown, used or expired token, 409 when it comes too late.
async fn notify(State(ctx): Ctx, Path(token): Path<String>, body: Bytes) -> ApiResult {
    let document = json_body(&body)?;
    let notification = parse_notification(&document).map_err(|e| ApiError::field(e, "InvalidNotification"))?;
    match accept_callback(&Callbacks::of(&ctx), &token, &notification).await {
        Ok(accepted) => {
            Ok((StatusCode::ACCEPTED, Json(json!({"exchangeId": accepted.exchange_id, "stepId": accepted.step_id})))
                .into_response())
        }
        Err(e @ CallbackError::UnknownToken) => Err(ApiError::not_found(e.to_string())),
        Err(CallbackError::InvalidReport(field)) => Err(ApiError::field(field, "InvalidNotification")),
        Err(e @ CallbackError::TooLate { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, "InvalidState", e.to_string()))
        }
        Err(CallbackError::Port(port)) => Err(port.into()),
    }
}

async fn get_logs(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    let detail = load_exchange(&ctx, &id).await?;
    Ok(Json(json!({"exchangeId": id, "items": detail.logs})).into_response())
}

/// A listing's `?integrationCode=` filter, if given.
fn integration_code_filter(query: &HashMap<String, String>) -> Result<Option<IntegrationCode>, ApiError> {
    query
        .get("integrationCode")
        .map(|c| IntegrationCode::parse(c).map_err(|e| ApiError::parameter("integrationCode", e)))
        .transpose()
}

async fn list_exchanges(State(ctx): Ctx, Query(query): Query<HashMap<String, String>>) -> ApiResult {
    let invalid = ApiError::parameter;
    only_parameters(&query, &["integrationCode", "status", "parentExchangeId", "limit", "cursor"])?;
    let parent = query.get("parentExchangeId").map(|p| ExchangeId::new(p.clone()));
    let integration_code = integration_code_filter(&query)?;
    let status = query
        .get("status")
        .map(|s| ExchangeStatus::parse(s).ok_or_else(|| invalid("status", format!("'{s}' is not an exchange status"))))
        .transpose()?;
    let limit = parse_limit(query.get("limit")).map_err(|m| invalid("limit", m))?;
    let page = ctx
        .ports
        .exchanges
        .list(&ExchangeFilter { integration_code, status, parent }, limit, query.get("cursor").map(String::as_str))
        .await
        .map_err(listing_error)?;
    let items: Vec<Value> = page.items.iter().map(exchange_summary).collect();
    Ok(Json(json!({"items": items, "nextCursor": page.next_cursor})).into_response())
}

// ------------------------------------------------------------------ data files

async fn get_data_file_set(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    let files = ctx.ports.files.list(&DataFileSetId::new(id.clone())).await?;
    if files.is_empty() {
        return Err(ApiError::not_found(format!("data file set {id} does not exist")));
    }
    Ok(Json(json!({"dataFileSetId": id, "files": files})).into_response())
}

async fn get_data_file(State(ctx): Ctx, Path((id, name)): Path<(String, String)>) -> ApiResult {
    let (info, stream) = ctx
        .ports
        .files
        .read(&DataFileSetId::new(id.clone()), &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("data file set {id} has no file {name}")))?;
    if info.size > MAX_DOWNLOAD_BYTES {
        // Too large for an API answer: the client downloads it straight from storage.
        drop(stream);
        let url = ctx.ports.files.download_url(&DataFileSetId::new(id.clone()), &name, DOWNLOAD_URL_VALIDITY).await?;
        return Ok((StatusCode::SEE_OTHER, [(header::LOCATION, url)]).into_response());
    }
    Ok(([(header::CONTENT_TYPE, info.content_type.clone())], Body::from_stream(stream)).into_response())
}

// ------------------------------------------------------------------ health

/// Public liveness: the function answers. It touches no dependency, so an anonymous caller
/// cannot make it cost anything; `GET /health/components` checks each one.
async fn shallow_health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn health(State(ctx): Ctx) -> Response {
    let (integrations, exchanges, queue, files) = tokio::join!(
        ctx.ports.integrations.health(),
        ctx.ports.exchanges.health(),
        ctx.ports.queue.health(),
        ctx.ports.files.health()
    );
    let mut healthy = true;
    let mut components = Map::new();
    for (name, result) in
        [("integrations", integrations), ("exchanges", exchanges), ("queues", queue), ("dataFiles", files)]
    {
        let state = match result {
            Ok(()) => json!({"status": "ok"}),
            Err(e) => {
                healthy = false;
                json!({"status": "down", "errorId": logged_error_id(&format!("health check of {name} failed"), &e)})
            }
        };
        components.insert(name.to_string(), state);
    }
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"status": if healthy { "ok" } else { "degraded" }, "components": components}))).into_response()
}
