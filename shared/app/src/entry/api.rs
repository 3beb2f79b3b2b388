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
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use handoff_core::endpoint::{Endpoint, EndpointCommand, OnSystemFailure, QueueStatus};
use handoff_core::exchange::ExchangeDetail;
use handoff_core::exchange::ExchangeStatus;
use handoff_core::identity::{Caller, Scope};
use handoff_core::ids::{DataFileSetId, ExchangeId, IntegrationCode, IntegrationVersion, StepId, UnroutedId};
use handoff_core::notification::parse_notification;
use handoff_core::reader::{FieldError, ObjectReader};
use handoff_core::recovery::ResumeFrom;
use handoff_ports::{ExchangeFilter, IntegrationWriteError, PortError, StoredIntegration};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod action_routes;
mod console;
mod endpoint_routes;
mod error_routes;
mod event_routes;
mod mapping_routes;
mod openapi;
mod requests;
mod unrouted_routes;
pub mod views;

/// Requests above this are refused (Lambda's synchronous payload limit is 6 MB).
pub const MAX_REQUEST_BYTES: usize = 6 * 1024 * 1024;
/// `waitSeconds` stays below API Gateway's 30 s integration timeout.
pub const MAX_WAIT_SECONDS: u64 = 25;
/// Files above this cannot pass through a Lambda response; they are redirected to storage.
const MAX_DOWNLOAD_BYTES: u64 = 5 * 1024 * 1024;
/// How long a redirect to a large file stays usable.
const DOWNLOAD_URL_VALIDITY: Duration = Duration::from_secs(300);

type Ctx = State<Arc<AppContext>>;

/// An error answer ([`views::ErrorBody`]): `{"error": "<Code>", "message": "...", "field": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Box<views::ErrorBody>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let body = Box::new(views::ErrorBody {
            error: code.to_string(),
            message: message.into(),
            field: None,
            error_id: None,
            unrouted_id: None,
            exchange_id: None,
            refusal: None,
        });
        Self { status, body }
    }
    /// The message as the caller sees it.
    fn message(&self) -> &str {
        &self.body.message
    }
    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    fn field(error: FieldError, code: &'static str) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, code, error.to_string());
        e.body.field = Some(error.path);
        e
    }
    /// A replay refused because it started exchange `id` already.
    fn replayed_as(mut self, id: ExchangeId) -> Self {
        self.body.exchange_id = Some(id);
        self
    }
    /// Why a kept request still cannot be routed.
    fn refused_as(mut self, refusal: &str) -> Self {
        self.body.refusal = Some(refusal.to_string());
        self
    }
    /// The refused request was kept as `id`: the caller learns where, and an operator can replay it.
    fn kept_as(mut self, id: UnroutedId) -> Self {
        self.body.unrouted_id = Some(id);
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

/// Refuses a query parameter that `P` (the operation's documented parameters) does not name.
fn only_parameters<P: utoipa::IntoParams>(query: &HashMap<String, String>) -> Result<(), ApiError> {
    let allowed: Vec<String> =
        P::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query)).into_iter().map(|p| p.name).collect();
    match query.keys().find(|k| !allowed.contains(k)) {
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
        let mut e = Self::new(status, code, message);
        e.body.error_id = Some(error_id);
        e
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
        (self.status, Json(self.body)).into_response()
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
    ("GET", "/openapi.json", None),
    ("GET", "/console", None),
    ("GET", "/console/app.js", None),
    ("GET", "/console/app.css", None),
    ("GET", "/console/config.json", None),
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

/// The routes, each with its OpenAPI operation (`#[utoipa::path]` on its handler names the
/// path once, for both).
fn routes() -> OpenApiRouter<Arc<AppContext>> {
    OpenApiRouter::new()
        .routes(routes!(create_integration, list_integrations))
        .routes(routes!(endpoint_routes::get_integration, endpoint_routes::patch_endpoint))
        .routes(routes!(patch_integration))
        .routes(routes!(endpoint_routes::endpoint_log))
        .routes(routes!(event_routes::post_events, event_routes::get_events))
        .routes(routes!(endpoint_routes::enable_endpoint))
        .routes(routes!(endpoint_routes::disable_endpoint))
        .routes(routes!(endpoint_routes::resume_endpoint))
        .routes(routes!(post_exchange, list_exchanges))
        .routes(routes!(get_exchange))
        .routes(routes!(get_logs))
        .routes(routes!(action_routes::recover))
        .routes(routes!(action_routes::retry_step))
        .routes(routes!(action_routes::signoff))
        .routes(routes!(error_routes::list_errors))
        .routes(routes!(error_routes::get_error))
        .routes(routes!(error_routes::resolve))
        .routes(routes!(unrouted_routes::list_unrouted))
        .routes(routes!(unrouted_routes::get_unrouted))
        .routes(routes!(unrouted_routes::replay))
        .routes(routes!(notify))
        .routes(routes!(get_data_file_set))
        .routes(routes!(get_data_file))
        .routes(routes!(shallow_health))
        .routes(routes!(health))
        .routes(routes!(mapping_routes::put_mapping, mapping_routes::get_mapping))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(console::console_page))
        .routes(routes!(console::console_script))
        .routes(routes!(console::console_style))
        .routes(routes!(console::console_config))
}

/// The API's OpenAPI 3.1 document, as `GET /openapi.json` serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::document(routes().split_for_parts().1)
}

/// The document as `docs/openapi.json` holds it: pretty-printed, with a final newline.
pub fn openapi_json_text() -> String {
    let mut text = serde_json::to_string_pretty(&openapi_document()).unwrap_or_default();
    text.push('\n');
    text
}

pub fn router(ctx: Arc<AppContext>) -> Router {
    let (router, api) = routes().split_for_parts();
    let document = Arc::new(openapi::document(api));
    router
        .route_layer(axum::middleware::from_fn(authorize))
        .fallback(|| async { ApiError::not_found("no such route") })
        // Size limits are checked in `json_body`, so oversized requests get our JSON error.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(Extension(document))
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

#[utoipa::path(post, path = "/integrations", tag = "integrations",
    request_body(content = requests::IntegrationDefinition, description = "The definition (SPEC §3)"),
    responses(
        (status = 201, description = "Stored as a new version", body = views::DefinedView),
        (status = 400, description = "Not valid JSON, or a definition that is not valid (`field` names the problem)", body = views::ErrorBody),
        (status = 409, description = "The version exists (`AlreadyExists`), a concurrent change won, or a mapping it uses is unusable", body = views::ErrorBody),
    ))]
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
fn defined_view(defined: &Defined) -> views::DefinedView {
    let what = format!("the schedule of {} could not be synchronised", defined.stored.code);
    views::DefinedView {
        integration: views::IntegrationView::from(&defined.stored),
        endpoint: views::EndpointBrief {
            status: defined.endpoint.status,
            since: defined.endpoint.since,
            changed_by: defined.endpoint.changed_by.clone(),
        },
        schedule: views::ScheduleStateView::of(&defined.schedule, &what),
    }
}

#[utoipa::path(get, path = "/integrations", tag = "integrations",
    responses((status = 200, description = "Every version of every integration, with its endpoint", body = views::IntegrationList)))]
async fn list_integrations(State(ctx): Ctx) -> ApiResult {
    let mut all = ctx.ports.integrations.all().await?;
    all.sort_by(|a, b| a.code.cmp(&b.code).then(b.version.cmp(&a.version)));
    let mut items = Vec::with_capacity(all.len());
    for versions in all.chunk_by(|a, b| a.code == b.code) {
        let endpoint = endpoint_routes::endpoint_view(
            &endpoint_routes::stored_endpoint(&ctx, &versions[0].code, versions).await?,
            versions,
            ctx.ports.clock.now(),
        );
        items.extend(versions.iter().map(|v| views::ListedIntegration {
            integration: views::IntegrationView::from(v),
            endpoint: endpoint.clone(),
        }));
    }
    Ok(Json(views::IntegrationList { items }).into_response())
}

/// How many upcoming runs an endpoint shows.
const SHOWN_RUNS: usize = 5;

/// A status change's reason is shown to operators, not a document.
const MAX_REASON_BYTES: usize = 1024;

#[utoipa::path(patch, path = "/integrations/{code}/versions/{version}", tag = "integrations",
    params(requests::VersionPath),
    request_body(content = requests::IntegrationPatch, description = "What to change on the version (e.g. `{\"enabled\": false}`)"),
    responses(
        (status = 200, description = "The version as changed", body = views::DefinedView),
        (status = 400, description = "A parameter, or the change, is not valid", body = views::ErrorBody),
        (status = 404, description = "No such version", body = views::ErrorBody),
        (status = 409, description = "A concurrent change won, or a mapping it uses is unusable", body = views::ErrorBody),
    ))]
async fn patch_integration(
    State(ctx): Ctx,
    Extension(caller): Extension<Caller>,
    Path((code, version)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let code = path_code(&code)?;
    let version = IntegrationVersion::parse_path(&version).map_err(|e| ApiError::parameter("version", e))?;
    let patch = json_body(&body)?;
    let defined = amend_integration(&Integrations::of(&ctx), &code, version, &patch, &caller.subject)
        .await
        .map_err(define_error)?;
    Ok(Json(defined_view(&defined)).into_response())
}

// ------------------------------------------------------------------ exchanges

fn exchange_view(detail: &ExchangeDetail) -> views::ExchangeView {
    // A parent shows how its sub-exchanges stand, over all its subflow steps.
    let mut subflow_steps = detail.steps.iter().filter_map(|s| s.sub_exchanges).peekable();
    let sub_exchanges = subflow_steps.peek().is_some().then(|| {
        let sum = subflow_steps.fold(handoff_core::exchange::SubExchangeCounts::default(), |mut sum, c| {
            sum.total += c.total;
            sum.completed += c.completed;
            sum.failed += c.failed;
            sum
        });
        views::CountsView::from(&sum)
    });
    views::ExchangeView {
        summary: views::ExchangeSummary::from(&detail.exchange),
        steps: detail.steps.iter().map(views::StepView::from).collect(),
        destinations: detail
            .steps
            .iter()
            .any(|s| s.destination.is_some())
            .then(|| destinations::destinations_view(&detail.steps)),
        sub_exchanges,
        held: None,
    }
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

#[utoipa::path(post, path = "/exchanges", tag = "exchanges",
    request_body = requests::ExchangeRequest,
    responses(
        (status = 200, description = "With `waitSeconds`: the exchange, final within the wait", body = views::ExchangeView),
        (status = 202, description = "The exchange started; with `waitSeconds`, as it stands when the wait ended (then with its `steps`)", body = views::ExchangeSummary),
        (status = 400, description = "The request is not valid (`field` names the problem)", body = views::ErrorBody),
        (status = 404, description = "No such integration (the request is kept: `unroutedId`)", body = views::ErrorBody),
        (status = 409, description = "The version or endpoint does not run now, or an event-based integration has no events to take (kept when routable later: `unroutedId`)", body = views::ErrorBody),
    ))]
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
        let error = invoke_error(refused.error);
        match refused.kept {
            Some(id) => error.kept_as(id),
            None => error,
        }
    })?;
    if wait_seconds == 0 {
        let body = views::StartedExchange::Summary(Box::new(views::ExchangeSummary::from(&exchange)));
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    // Request/response use: answer when final, or with the exchange as it stands.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_seconds);
    loop {
        let detail = ctx.ports.exchanges.get(&exchange.exchange_id).await?;
        let is_final = detail.as_ref().is_some_and(|d| d.exchange.status.is_final());
        if is_final || tokio::time::Instant::now() >= deadline {
            let status = if is_final { StatusCode::OK } else { StatusCode::ACCEPTED };
            let body = match &detail {
                Some(detail) => views::StartedExchange::Detail(Box::new(exchange_view(detail))),
                None => views::StartedExchange::Summary(Box::new(views::ExchangeSummary::from(&exchange))),
            };
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

#[utoipa::path(get, path = "/exchanges/{id}", tag = "exchanges",
    params(requests::ExchangePath),
    responses(
        (status = 200, description = "The exchange with its steps", body = views::ExchangeView),
        (status = 404, description = "No such exchange", body = views::ErrorBody),
    ))]
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
            view.held = Some(views::HeldView {
                step_id: h.message.step_id,
                sub_step: h.message.sub_step,
                since: h.held_at,
                reason: h.reason.clone(),
            });
        }
    }
    Ok(Json(view).into_response())
}

/// A listing's `?limit=&cursor=` (its only parameters): the page size, and the cursor if
/// one was given.
fn paging(query: &HashMap<String, String>) -> Result<(u32, Option<&str>), ApiError> {
    only_parameters::<requests::Paging>(query)?;
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
#[utoipa::path(post, path = "/notifications/{token}", tag = "exchanges",
    params(requests::TokenPath),
    request_body = requests::Notification,
    responses(
        (status = 202, description = "Stored; the step goes on", body = views::CallbackAccepted),
        (status = 400, description = "The callback is not valid (`field` names the problem)", body = views::ErrorBody),
        (status = 404, description = "Unknown, used or expired token", body = views::ErrorBody),
        (status = 409, description = "The step no longer waits (`InvalidState`)", body = views::ErrorBody),
    ))]
async fn notify(State(ctx): Ctx, Path(token): Path<String>, body: Bytes) -> ApiResult {
    let document = json_body(&body)?;
    let notification = parse_notification(&document).map_err(|e| ApiError::field(e, "InvalidNotification"))?;
    match accept_callback(&Callbacks::of(&ctx), &token, &notification).await {
        Ok(accepted) => {
            let body = views::CallbackAccepted { exchange_id: accepted.exchange_id, step_id: accepted.step_id };
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        Err(e @ CallbackError::UnknownToken) => Err(ApiError::not_found(e.to_string())),
        Err(CallbackError::InvalidReport(field)) => Err(ApiError::field(field, "InvalidNotification")),
        Err(e @ CallbackError::TooLate { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, "InvalidState", e.to_string()))
        }
        Err(CallbackError::Port(port)) => Err(port.into()),
    }
}

#[utoipa::path(get, path = "/exchanges/{id}/logs", tag = "exchanges",
    params(requests::ExchangePath),
    responses(
        (status = 200, description = "Its System and User log lines, in time order", body = views::ExchangeLogs),
        (status = 404, description = "No such exchange", body = views::ErrorBody),
    ))]
async fn get_logs(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    let detail = load_exchange(&ctx, &id).await?;
    Ok(Json(views::ExchangeLogs { exchange_id: detail.exchange.exchange_id, items: detail.logs }).into_response())
}

/// A listing's `?integrationCode=` filter, if given.
fn integration_code_filter(query: &HashMap<String, String>) -> Result<Option<IntegrationCode>, ApiError> {
    query
        .get("integrationCode")
        .map(|c| IntegrationCode::parse(c).map_err(|e| ApiError::parameter("integrationCode", e)))
        .transpose()
}

#[utoipa::path(get, path = "/exchanges", tag = "exchanges",
    params(requests::ExchangeQuery),
    responses(
        (status = 200, description = "Exchanges, newest first", body = views::ExchangePage),
        (status = 400, description = "A parameter is not valid (`field` names it)", body = views::ErrorBody),
    ))]
async fn list_exchanges(State(ctx): Ctx, Query(query): Query<HashMap<String, String>>) -> ApiResult {
    let invalid = ApiError::parameter;
    only_parameters::<requests::ExchangeQuery>(&query)?;
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
    let items = page.items.iter().map(views::ExchangeSummary::from).collect();
    Ok(Json(views::ExchangePage { items, next_cursor: page.next_cursor }).into_response())
}

// ------------------------------------------------------------------ data files

fn path_data_file_set(id: &str) -> Result<DataFileSetId, ApiError> {
    DataFileSetId::parse(id).map_err(|e| ApiError::parameter("id", e))
}

#[utoipa::path(get, path = "/data-file-sets/{id}", tag = "data files",
    params(requests::DataFileSetPath),
    responses(
        (status = 200, description = "Its files", body = views::DataFileSetView),
        (status = 400, description = "Not a data file set id", body = views::ErrorBody),
        (status = 404, description = "No such set", body = views::ErrorBody),
    ))]
async fn get_data_file_set(State(ctx): Ctx, Path(id): Path<String>) -> ApiResult {
    let data_file_set_id = path_data_file_set(&id)?;
    let files = ctx.ports.files.list(&data_file_set_id).await?;
    if files.is_empty() {
        return Err(ApiError::not_found(format!("data file set {id} does not exist")));
    }
    Ok(Json(views::DataFileSetView { data_file_set_id, files }).into_response())
}

#[utoipa::path(get, path = "/data-file-sets/{id}/files/{name}", tag = "data files",
    params(requests::DataFilePath),
    responses(
        (status = 200, description = "The file, with its content type", content_type = "*/*", body = Vec<u8>),
        (status = 303, description = "Too large for an API answer: a short-lived download URL (`Location`)",
            headers(("Location" = String, description = "Where to download it"))),
        (status = 400, description = "Not a data file set id, or not a plain file name", body = views::ErrorBody),
        (status = 404, description = "No such file", body = views::ErrorBody),
    ))]
async fn get_data_file(State(ctx): Ctx, Path((id, name)): Path<(String, String)>) -> ApiResult {
    let set = path_data_file_set(&id)?;
    if !handoff_core::ids::is_plain_file_name(&name) {
        return Err(ApiError::parameter(
            "name",
            "must be a plain file name (1 to 255 bytes, no '/', no control characters, not starting with '.')",
        ));
    }
    let (info, stream) = ctx
        .ports
        .files
        .read(&set, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("data file set {id} has no file {name}")))?;
    if info.size > MAX_DOWNLOAD_BYTES {
        // Too large for an API answer: the client downloads it straight from storage.
        drop(stream);
        let url = ctx.ports.files.download_url(&set, &name, DOWNLOAD_URL_VALIDITY).await?;
        return Ok((StatusCode::SEE_OTHER, [(header::LOCATION, url)]).into_response());
    }
    Ok((
        [(header::CONTENT_TYPE, info.content_type.clone()), (header::CONTENT_LENGTH, info.size.to_string())],
        Body::from_stream(stream),
    )
        .into_response())
}

// ------------------------------------------------------------------ health

/// Public liveness: the function answers. It touches no dependency, so an anonymous caller
/// cannot make it cost anything; `GET /health/components` checks each one.
#[utoipa::path(get, path = "/health", tag = "meta",
    responses((status = 200, description = "The API answers", body = views::Liveness)))]
async fn shallow_health() -> ApiResult {
    Ok(Json(views::Liveness { status: "ok".to_string() }).into_response())
}

#[utoipa::path(get, path = "/health/components", tag = "meta",
    responses(
        (status = 200, description = "Every component answers", body = views::ComponentsHealth),
        (status = 503, description = "A component is down (`status`: `degraded`)", body = views::ComponentsHealth),
    ))]
async fn health(State(ctx): Ctx) -> ApiResult {
    let (integrations, exchanges, queue, files) = tokio::join!(
        ctx.ports.integrations.health(),
        ctx.ports.exchanges.health(),
        ctx.ports.queue.health(),
        ctx.ports.files.health()
    );
    let state = |name: &str, result: Result<(), PortError>| match result {
        Ok(()) => views::ComponentState { status: "ok".to_string(), error_id: None },
        Err(e) => views::ComponentState {
            status: "down".to_string(),
            error_id: Some(logged_error_id(&format!("health check of {name} failed"), &e)),
        },
    };
    let components = views::Components {
        integrations: state("integrations", integrations),
        exchanges: state("exchanges", exchanges),
        queues: state("queues", queue),
        data_files: state("dataFiles", files),
    };
    let healthy = [&components.integrations, &components.exchanges, &components.queues, &components.data_files]
        .iter()
        .all(|c| c.status == "ok");
    let mut jobs = Vec::new();
    for job in handoff_core::job_run::JOBS {
        match ctx.ports.job_runs.last(job).await {
            Ok(Some(run)) => jobs.push(run),
            Ok(None) => {}
            // The exchanges component above says whether the table answers.
            Err(e) => {
                logged_error_id(&format!("reading the last run of the {job} job failed"), &e);
            }
        }
    }
    let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body =
        views::ComponentsHealth { status: if healthy { "ok" } else { "degraded" }.to_string(), components, jobs };
    Ok((status, Json(body)).into_response())
}
