//! The local API Gateway HTTP API: routes from the template's `Type: HttpApi` events,
//! requests turned into payload format 2.0 events, responses turned back into HTTP.
//!
//! The API function runs behind `lambda_http` in AWS, so the emulator must hand it exactly
//! the event shape API Gateway produces and honour API Gateway's own answers (404 for an
//! unknown route, 413 above 10 MB, 503 after the 30 s integration timeout), otherwise
//! tests would pass locally against behaviour production does not have.

use crate::auth::{Denied, JwtAuthorizer};
use crate::clock::EmulatorClock;
use crate::functions::{Function, InvokeFailure};
use crate::template::ACCOUNT_ID;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use handoff_ports::Clock;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// API Gateway's request payload quota.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// API Gateway HTTP API's maximum integration timeout.
pub const INTEGRATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Greedy(String),
}

#[derive(Debug, Clone)]
struct Route {
    method: String,
    segments: Vec<Segment>,
    route_key: String,
    target: usize,
    guard: Option<RouteGuard>,
}

/// The authorizer a route goes through, and the scopes it requires (any one of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteGuard {
    pub authorizer: String,
    pub scopes: Vec<String>,
}

/// The routes of the HTTP API and the function (by index) each one invokes.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    default_target: Option<usize>,
    default_guard: Option<RouteGuard>,
}

/// A matched route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub target: usize,
    /// `"POST /exchanges"` or `"$default"`.
    pub route_key: String,
    pub path_parameters: BTreeMap<String, String>,
    /// `None`: a public route.
    pub guard: Option<RouteGuard>,
}

impl RouteTable {
    /// Adds a public route; `path = None` is the `$default` route.
    pub fn add(&mut self, method: &str, path: Option<&str>, target: usize) {
        self.add_guarded(method, path, target, None);
    }

    /// Adds a route behind `guard` (`None`: public).
    pub fn add_guarded(&mut self, method: &str, path: Option<&str>, target: usize, guard: Option<RouteGuard>) {
        let Some(path) = path else {
            self.default_guard = guard;
            self.default_target = Some(target);
            return;
        };
        let method = method.to_ascii_uppercase();
        let segments = split_path(path)
            .map(|s| {
                if let Some(inner) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    match inner.strip_suffix('+') {
                        Some(name) => Segment::Greedy(name.to_string()),
                        None => Segment::Param(inner.to_string()),
                    }
                } else {
                    Segment::Literal(s.to_string())
                }
            })
            .collect();
        self.routes.push(Route { route_key: format!("{method} {path}"), method, segments, target, guard });
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.default_target.is_none()
    }

    /// Finds the route API Gateway would choose: the most specific path (literal segments
    /// beat `{param}`, which beats `{proxy+}`), an exact method before `ANY`, and
    /// `$default` last.
    pub fn find(&self, method: &str, raw_path: &str) -> Option<RouteMatch> {
        let parts: Vec<&str> = split_path(raw_path).collect();
        let mut best: Option<(Vec<u8>, u8, RouteMatch)> = None;
        for r in &self.routes {
            if r.method != "ANY" && !r.method.eq_ignore_ascii_case(method) {
                continue;
            }
            let Some((rank, params)) = match_segments(&r.segments, &parts) else {
                continue;
            };
            let method_rank = u8::from(r.method == "ANY");
            let better = match &best {
                None => true,
                Some((b_rank, b_method, _)) => (&rank, method_rank) < (b_rank, *b_method),
            };
            if better {
                best = Some((
                    rank,
                    method_rank,
                    RouteMatch {
                        target: r.target,
                        route_key: r.route_key.clone(),
                        path_parameters: params,
                        guard: r.guard.clone(),
                    },
                ));
            }
        }
        best.map(|(_, _, m)| m).or_else(|| {
            self.default_target.map(|target| RouteMatch {
                target,
                route_key: "$default".into(),
                path_parameters: BTreeMap::new(),
                guard: self.default_guard.clone(),
            })
        })
    }
}

fn split_path(path: &str) -> impl Iterator<Item = &str> {
    // "/a/b" → ["a", "b"]; "/" → []; "/a/" → ["a", ""] (a trailing slash is a distinct path).
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    trimmed.split('/').filter(move |_| !trimmed.is_empty())
}

fn match_segments(route: &[Segment], parts: &[&str]) -> Option<(Vec<u8>, BTreeMap<String, String>)> {
    let mut rank = Vec::with_capacity(route.len());
    let mut params = BTreeMap::new();
    for (i, seg) in route.iter().enumerate() {
        match seg {
            Segment::Literal(l) => {
                if parts.get(i) != Some(&l.as_str()) {
                    return None;
                }
                rank.push(0);
            }
            Segment::Param(name) => {
                let p = parts.get(i).filter(|p| !p.is_empty())?;
                params.insert(name.clone(), percent_decode(p));
                rank.push(1);
            }
            Segment::Greedy(name) => {
                if i >= parts.len() {
                    return None;
                }
                params.insert(name.clone(), percent_decode(&parts[i..].join("/")));
                rank.push(2);
                return Some((rank, params));
            }
        }
    }
    (parts.len() == route.len()).then_some((rank, params))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// What the event needs to know about the request besides its body.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub method: String,
    pub raw_path: String,
    pub raw_query: String,
    pub protocol: String,
    pub headers: HeaderMap,
    pub source_ip: String,
    pub request_id: String,
    pub time: DateTime<Utc>,
    pub api_id: String,
}

/// Builds the API Gateway HTTP API payload format 2.0 event.
/// `authorizer` is the `requestContext.authorizer` of a guarded route.
pub fn payload_v2_event(req: &RequestInfo, route: &RouteMatch, authorizer: Option<Value>, body: &[u8]) -> Value {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies: Vec<String> = Vec::new();
    for (name, value) in &req.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == http::header::COOKIE {
            cookies.extend(value.split(';').map(str::trim).filter(|c| !c.is_empty()).map(str::to_string));
            continue;
        }
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let host = headers.get("host").cloned().unwrap_or_else(|| "localhost".into());
    headers.entry("x-forwarded-for".into()).or_insert_with(|| req.source_ip.clone());
    headers.entry("x-forwarded-proto".into()).or_insert_with(|| "http".into());
    if let Some(port) = host.rsplit_once(':').map(|(_, p)| p.to_string()) {
        headers.entry("x-forwarded-port".into()).or_insert(port);
    }
    let user_agent = headers.get("user-agent").cloned().unwrap_or_default();

    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(req.raw_query.as_bytes()) {
        query
            .entry(k.into_owned())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }

    let mut event = Map::new();
    event.insert("version".into(), json!("2.0"));
    event.insert("routeKey".into(), json!(route.route_key));
    event.insert("rawPath".into(), json!(req.raw_path));
    event.insert("rawQueryString".into(), json!(req.raw_query));
    if !cookies.is_empty() {
        event.insert("cookies".into(), json!(cookies));
    }
    event.insert("headers".into(), json!(headers));
    if !query.is_empty() {
        event.insert("queryStringParameters".into(), json!(query));
    }
    if !route.path_parameters.is_empty() {
        event.insert("pathParameters".into(), json!(route.path_parameters));
    }
    event.insert(
        "requestContext".into(),
        json!({
            "accountId": ACCOUNT_ID,
            "apiId": req.api_id,
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or_default(),
            "http": {
                "method": req.method,
                "path": req.raw_path,
                "protocol": req.protocol,
                "sourceIp": req.source_ip,
                "userAgent": user_agent,
            },
            "requestId": req.request_id,
            "routeKey": route.route_key,
            "stage": "$default",
            "time": req.time.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            "timeEpoch": req.time.timestamp_millis(),
        }),
    );
    if let (Some(authorizer), Some(Value::Object(context))) = (authorizer, event.get_mut("requestContext")) {
        context.insert("authorizer".into(), authorizer);
    }
    if !body.is_empty() {
        match std::str::from_utf8(body) {
            Ok(text) => {
                event.insert("body".into(), json!(text));
                event.insert("isBase64Encoded".into(), json!(false));
            }
            Err(_) => {
                event.insert("body".into(), json!(base64::engine::general_purpose::STANDARD.encode(body)));
                event.insert("isBase64Encoded".into(), json!(true));
            }
        }
    } else {
        event.insert("isBase64Encoded".into(), json!(false));
    }
    Value::Object(event)
}

/// Converts a payload 2.0 response into HTTP. A response without `statusCode` is, as in
/// API Gateway, taken as a 200 JSON body.
pub fn payload_v2_response(value: Value) -> Result<Response<Body>, String> {
    let structured = value.as_object().is_some_and(|o| o.contains_key("statusCode"));
    if !structured {
        let body = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        return Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .map_err(|e| e.to_string());
    }
    let status = value
        .get("statusCode")
        .and_then(|s| s.as_u64().or_else(|| s.as_str().and_then(|t| t.parse().ok())))
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or("statusCode is not a valid HTTP status")?;
    let mut builder = Response::builder().status(status);
    let headers = builder.headers_mut().ok_or("invalid response builder")?;
    let header_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if let Some(h) = value.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            insert_header(headers, k, &header_text(v), false)?;
        }
    }
    if let Some(h) = value.get("multiValueHeaders").and_then(Value::as_object) {
        for (k, vs) in h {
            for v in vs.as_array().into_iter().flatten() {
                insert_header(headers, k, &header_text(v), true)?;
            }
        }
    }
    for c in value.get("cookies").and_then(Value::as_array).into_iter().flatten() {
        if let Some(c) = c.as_str() {
            insert_header(headers, "set-cookie", c, true)?;
        }
    }
    let body = match value.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) => {
            if value.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
                Bytes::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| format!("body is not valid base64: {e}"))?,
                )
            } else {
                Bytes::from(s.clone())
            }
        }
        Some(other) => Bytes::from(other.to_string()),
    };
    builder.body(Body::from(body)).map_err(|e| e.to_string())
}

fn insert_header(headers: &mut HeaderMap, name: &str, value: &str, append: bool) -> Result<(), String> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("bad header name {name}: {e}"))?;
    let value = HeaderValue::from_str(value).map_err(|e| format!("bad header value for {name}: {e}"))?;
    if append {
        headers.append(name, value);
    } else {
        headers.insert(name, value);
    }
    Ok(())
}

/// Shared state of the HTTP server.
#[derive(Clone)]
pub struct HttpState {
    pub routes: Arc<RouteTable>,
    /// The template's JWT authorizers by name.
    pub authorizers: Arc<BTreeMap<String, JwtAuthorizer>>,
    /// The development issuer's JWKS, served under `/.well-known/` when it is in use.
    pub issuer_keys: Option<Arc<jsonwebtoken::jwk::JwkSet>>,
    pub functions: Arc<Vec<Arc<Function>>>,
    pub api_id: String,
    pub integration_timeout: Duration,
    /// The emulator's clock, which `/_emulator/clock` moves.
    pub clock: Arc<EmulatorClock>,
    /// How often the scheduler ticks (a move waits a few ticks for it at most).
    pub scheduler_interval: Duration,
    /// The functions' figures, as CloudWatch would have them (`/_emulator/metrics`).
    pub metrics: Arc<crate::metrics::MetricStore>,
    /// The development issuer's sign-in (`/oauth2/...`), when it is in use.
    pub sign_in: Option<Arc<crate::oidc::DevSignIn>>,
}

/// The axum application: every request goes through the template's route table.
pub fn router(state: HttpState) -> axum::Router {
    axum::Router::new()
        .route("/.well-known/jwks.json", axum::routing::get(jwks))
        .route("/.well-known/openid-configuration", axum::routing::get(openid_configuration))
        .route(crate::oidc::AUTHORIZE_PATH, axum::routing::get(crate::oidc::authorize))
        .route(crate::oidc::TOKEN_PATH, axum::routing::post(crate::oidc::token))
        .route(CLOCK_ROUTE, axum::routing::get(read_clock).post(move_clock))
        .route(METRICS_ROUTE, axum::routing::get(prometheus_metrics))
        .route(EMF_ROUTE, axum::routing::get(emf_documents))
        .fallback(handle)
        .with_state(state)
}

/// The emulator-only route that reads and moves the clock (not in the AWS template).
pub const CLOCK_ROUTE: &str = "/_emulator/clock";

/// The scope a caller needs to move the clock: it changes what every function sees.
const CLOCK_SCOPE: &str = "handoff:admin";

/// The emulator-only routes of the functions' figures (scope `handoff:read`): Prometheus
/// text, and the embedded-metric-format documents themselves.
pub const METRICS_ROUTE: &str = "/_emulator/metrics";
pub const EMF_ROUTE: &str = "/_emulator/metrics/emf";

/// Refuses a caller without `scope` (any of the template's authorizers decides).
async fn emulator_route_allowed(state: &HttpState, headers: &HeaderMap, scope: &str) -> Result<(), Response<Body>> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let header = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(authorizer) = state.authorizers.values().next() else {
        return Err(gateway_error(StatusCode::NOT_FOUND, "Not Found", &request_id));
    };
    authorizer.authorize(header, &[scope.to_string()]).await.map(|_| ()).map_err(|refused| denied(refused, &request_id))
}

fn text_response(content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

/// `GET /_emulator/metrics`: every figure so far, summed, in Prometheus text format.
async fn prometheus_metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response<Body> {
    if let Err(refused) = emulator_route_allowed(&state, &headers, "handoff:read").await {
        return refused;
    }
    text_response("text/plain; version=0.0.4; charset=utf-8", state.metrics.prometheus())
}

/// `GET /_emulator/metrics/emf`: the documents the functions flushed, oldest first (NDJSON).
async fn emf_documents(State(state): State<HttpState>, headers: HeaderMap) -> Response<Body> {
    if let Err(refused) = emulator_route_allowed(&state, &headers, "handoff:read").await {
        return refused;
    }
    text_response("application/x-ndjson", state.metrics.documents())
}

fn clock_view(clock: &EmulatorClock) -> Value {
    json!({"now": clock.now(), "offsetSeconds": clock.offset().num_seconds()})
}

/// `GET /_emulator/clock`: `{"now", "offsetSeconds"}`.
async fn read_clock(State(state): State<HttpState>) -> Response<Body> {
    json_response(StatusCode::OK, &clock_view(&state.clock))
}

/// `POST /_emulator/clock` with `{"advanceSeconds": N}` or `{"to": "<RFC 3339>"}` (forward
/// only; scope `handoff:admin`): moves the clock, then answers once the scheduler has ticked
/// on the new time — every schedule due by then has fired (its invocation may still run).
async fn move_clock(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    if let Err(refused) = emulator_route_allowed(&state, &headers, CLOCK_SCOPE).await {
        return refused;
    }
    let bad = |message: String| {
        json_response(StatusCode::BAD_REQUEST, &json!({"error": "InvalidClockMove", "message": message}))
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(o)) => Value::Object(o),
        _ => return bad("the body must be a JSON object with advanceSeconds or to".into()),
    };
    let moved = match (request.get("advanceSeconds"), request.get("to")) {
        (Some(seconds), None) => match seconds.as_i64() {
            Some(seconds) => state.clock.advance_by(chrono::Duration::seconds(seconds)),
            None => return bad("advanceSeconds must be a whole number of seconds".into()),
        },
        (None, Some(to)) => match to.as_str().map(DateTime::parse_from_rfc3339) {
            Some(Ok(to)) => state.clock.advance_to(to.with_timezone(&Utc)),
            _ => return bad("to must be an RFC 3339 time, e.g. 2026-12-04T18:00:00Z".into()),
        },
        _ => return bad("give exactly one of advanceSeconds and to".into()),
    };
    let to = match moved {
        Ok(to) => to,
        Err(e) => return bad(e.to_string()),
    };
    let caught_up = state.clock.wait_for_tick(to, state.scheduler_interval * 5 + Duration::from_secs(5)).await;
    let mut view = clock_view(&state.clock);
    view["schedulerCaughtUp"] = json!(caught_up);
    json_response(StatusCode::OK, &view)
}

/// The development issuer's keys (404 when an external issuer is configured).
async fn jwks(State(state): State<HttpState>) -> Response<Body> {
    match &state.issuer_keys {
        Some(keys) => json_response(StatusCode::OK, &json!(keys.as_ref())),
        None => gateway_error(StatusCode::NOT_FOUND, "Not Found", ""),
    }
}

/// Discovery for the development issuer, for tools that look its keys up.
async fn openid_configuration(State(state): State<HttpState>, headers: HeaderMap) -> Response<Body> {
    if state.issuer_keys.is_none() {
        return gateway_error(StatusCode::NOT_FOUND, "Not Found", "");
    }
    let host = headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": crate::auth::DEV_ISSUER,
            "jwks_uri": format!("http://{host}/.well-known/jwks.json"),
            "authorization_endpoint": format!("http://{host}{}", crate::oidc::AUTHORIZE_PATH),
            "token_endpoint": format!("http://{host}{}", crate::oidc::TOKEN_PATH),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": crate::auth::ALL_SCOPES,
        }),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// API Gateway's own 401/403, with the RFC 6750 challenge.
fn denied(denied: Denied, request_id: &str) -> Response<Body> {
    let (status, message, challenge) = match denied {
        Denied::Unauthorized(why) => (
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            format!("Bearer error=\"invalid_token\", error_description=\"{why}\""),
        ),
        Denied::Forbidden { required } => (
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("Bearer error=\"insufficient_scope\", scope=\"{}\"", required.join(" ")),
        ),
    };
    let mut response = gateway_error(status, message, request_id);
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    response
}

fn gateway_error(status: StatusCode, message: &str, request_id: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(json!({ "message": message }).to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("apigw-requestid", v);
    }
    r
}

/// Reads the request body up to API Gateway's quota. Over the quota the rest is still
/// read (up to a bound) and discarded, so the client sees the 413 rather than a connection
/// reset while it is still sending.
async fn read_body(mut body: Body) -> Result<Bytes, StatusCode> {
    use http_body_util::BodyExt;
    const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| StatusCode::BAD_REQUEST)?;
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen <= MAX_BODY_BYTES {
                buf.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > MAX_BODY_BYTES {
        Err(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        Ok(buf.freeze())
    }
}

async fn handle(State(state): State<HttpState>, req: Request<Body>) -> Response<Body> {
    let connect = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path().to_string();
    let Some(route) = state.routes.find(parts.method.as_str(), &raw_path) else {
        return gateway_error(StatusCode::NOT_FOUND, "Not Found", &request_id);
    };
    let authorizer = match &route.guard {
        None => None,
        Some(guard) => {
            let Some(authorizer) = state.authorizers.get(&guard.authorizer) else {
                tracing::error!(route = %route.route_key, authorizer = %guard.authorizer, "route names an unknown authorizer");
                return gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", &request_id);
            };
            let header = parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            match authorizer.authorize(header, &guard.scopes).await {
                Ok(authorized) => Some(authorized.event_context()),
                Err(refused) => {
                    tracing::info!(route = %route.route_key, refused = ?refused, "request refused by the authorizer");
                    return denied(refused, &request_id);
                }
            }
        }
    };
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(status) => {
            let message =
                if status == StatusCode::PAYLOAD_TOO_LARGE { "Request Entity Too Large" } else { "Bad Request" };
            return gateway_error(status, message, &request_id);
        }
    };
    let Some(function) = state.functions.get(route.target).cloned() else {
        return gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", &request_id);
    };
    let info = RequestInfo {
        method: parts.method.as_str().to_string(),
        raw_path,
        raw_query: parts.uri.query().unwrap_or_default().to_string(),
        protocol: format!("{:?}", parts.version),
        headers: parts.headers,
        source_ip: connect.map(|c| c.ip().to_string()).unwrap_or_else(|| "127.0.0.1".into()),
        request_id: request_id.clone(),
        time: Utc::now(),
        api_id: state.api_id.clone(),
    };
    let event = payload_v2_event(&info, &route, authorizer, &body);
    let started = std::time::Instant::now();
    let result = function.invoke_within(event, state.integration_timeout).await;
    let elapsed = started.elapsed();
    let mut response = match result {
        Ok(value) => match payload_v2_response(value) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(route = %route.route_key, error = %e, "function returned a malformed response");
                gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", &request_id)
            }
        },
        Err(InvokeFailure::Timeout(limit)) if limit >= state.integration_timeout => {
            tracing::warn!(route = %route.route_key, "integration timed out");
            gateway_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", &request_id)
        }
        Err(e) => {
            tracing::error!(route = %route.route_key, error = %e, "function invocation failed");
            gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", &request_id)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("apigw-requestid", v);
    }
    // The route, not the raw path: paths carry secrets (callback tokens) and ids belong to the function's own logs.
    tracing::info!(method = %info.method, route = %route.route_key, status = response.status().as_u16(), ms = elapsed.as_millis() as u64, "request");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        t.add("GET", Some("/exchanges"), 0);
        t.add("POST", Some("/exchanges"), 1);
        t.add("GET", Some("/exchanges/{id}"), 2);
        t.add("GET", Some("/exchanges/{id}/logs"), 3);
        t.add("GET", Some("/exchanges/latest"), 4);
        t.add("ANY", Some("/files/{proxy+}"), 5);
        t.add("GET", Some("/files/{proxy+}"), 6);
        t
    }

    #[test]
    fn literal_paths_beat_parameters() {
        let t = table();
        assert_eq!(t.find("GET", "/exchanges/latest").map(|m| m.target), Some(4));
        let m = t.find("GET", "/exchanges/abc").expect("match");
        assert_eq!(m.target, 2);
        assert_eq!(m.route_key, "GET /exchanges/{id}");
        assert_eq!(m.path_parameters.get("id").map(String::as_str), Some("abc"));
        assert_eq!(t.find("GET", "/exchanges/abc/logs").map(|m| m.target), Some(3));
        assert_eq!(t.find("POST", "/exchanges").map(|m| m.target), Some(1));
    }

    #[test]
    fn unknown_routes_and_methods_do_not_match() {
        let t = table();
        assert!(t.find("DELETE", "/exchanges").is_none());
        assert!(t.find("GET", "/nope").is_none());
        assert!(t.find("GET", "/exchanges/a/b/c").is_none());
        assert!(t.find("GET", "/exchanges/").is_none());
    }

    #[test]
    fn greedy_matches_the_rest_and_exact_method_wins_over_any() {
        let t = table();
        let m = t.find("GET", "/files/a/b%20c.csv").expect("match");
        assert_eq!(m.target, 6);
        assert_eq!(m.path_parameters.get("proxy").map(String::as_str), Some("a/b c.csv"));
        assert_eq!(t.find("PUT", "/files/x").map(|m| m.target), Some(5));
        assert!(t.find("PUT", "/files").is_none());
    }

    #[test]
    fn default_route_catches_the_rest() {
        let mut t = table();
        t.add("ANY", None, 9);
        let m = t.find("GET", "/whatever").expect("default");
        assert_eq!((m.target, m.route_key.as_str()), (9, "$default"));
    }

    fn info(query: &str) -> RequestInfo {
        let mut headers = HeaderMap::new();
        headers.insert("Host", HeaderValue::from_static("127.0.0.1:8080"));
        headers.insert("User-Agent", HeaderValue::from_static("curl/8"));
        headers.append("X-Multi", HeaderValue::from_static("a"));
        headers.append("X-Multi", HeaderValue::from_static("b"));
        headers.insert("Cookie", HeaderValue::from_static("s=1; t=2"));
        RequestInfo {
            method: "POST".into(),
            raw_path: "/exchanges".into(),
            raw_query: query.into(),
            protocol: "HTTP/1.1".into(),
            headers,
            source_ip: "127.0.0.1".into(),
            request_id: "rid".into(),
            time: DateTime::parse_from_rfc3339("2026-03-12T19:03:58Z").expect("t").with_timezone(&Utc),
            api_id: "abc123".into(),
        }
    }

    #[test]
    fn event_is_payload_format_2() {
        let route = RouteMatch {
            target: 0,
            route_key: "POST /exchanges".into(),
            path_parameters: BTreeMap::new(),
            guard: None,
        };
        let e = payload_v2_event(&info("a=1&a=2&b=x%20y"), &route, None, b"{\"k\":1}");
        assert_eq!(e["version"], "2.0");
        assert_eq!(e["routeKey"], "POST /exchanges");
        assert_eq!(e["rawPath"], "/exchanges");
        assert_eq!(e["rawQueryString"], "a=1&a=2&b=x%20y");
        assert_eq!(e["queryStringParameters"], json!({"a": "1,2", "b": "x y"}));
        assert_eq!(e["cookies"], json!(["s=1", "t=2"]));
        assert_eq!(e["headers"]["x-multi"], "a,b");
        assert_eq!(e["headers"]["user-agent"], "curl/8");
        assert!(e["headers"].get("cookie").is_none());
        assert!(e.get("pathParameters").is_none());
        assert_eq!(e["requestContext"]["http"]["method"], "POST");
        assert_eq!(e["requestContext"]["http"]["sourceIp"], "127.0.0.1");
        assert_eq!(e["requestContext"]["http"]["userAgent"], "curl/8");
        assert_eq!(e["requestContext"]["stage"], "$default");
        assert_eq!(e["requestContext"]["time"], "12/Mar/2026:19:03:58 +0000");
        assert_eq!(e["requestContext"]["timeEpoch"], 1773342238000i64);
        assert_eq!(e["requestContext"]["domainName"], "127.0.0.1:8080");
        assert_eq!(e["body"], "{\"k\":1}");
        assert_eq!(e["isBase64Encoded"], false);
        // lambda_http (what the api function runs on) accepts it.
        let parsed: aws_lambda_events::event::apigw::ApiGatewayV2httpRequest =
            serde_json::from_value(e).expect("ApiGatewayV2httpRequest");
        assert_eq!(parsed.route_key.as_deref(), Some("POST /exchanges"));
    }

    #[test]
    fn binary_bodies_are_base64() {
        let route = RouteMatch {
            target: 0,
            route_key: "POST /exchanges".into(),
            path_parameters: BTreeMap::new(),
            guard: None,
        };
        let e = payload_v2_event(&info(""), &route, None, &[0xff, 0x00, 0x01]);
        assert_eq!(e["isBase64Encoded"], true);
        assert_eq!(e["body"], "/wAB");
        assert!(e.get("queryStringParameters").is_none());
    }

    #[test]
    fn response_conversion() {
        let r = payload_v2_response(json!({
            "statusCode": 201,
            "headers": {"content-type": "application/json", "x-a": "1"},
            "multiValueHeaders": {"x-b": ["1", "2"]},
            "cookies": ["a=1", "b=2"],
            "body": "{\"ok\":true}",
            "isBase64Encoded": false
        }))
        .expect("response");
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        assert_eq!(r.headers().get_all("x-b").iter().count(), 2);
        assert_eq!(r.headers().get("x-a").and_then(|v| v.to_str().ok()), Some("1"));

        let r = payload_v2_response(json!({"statusCode": 200, "body": "/wAB", "isBase64Encoded": true})).expect("b64");
        assert_eq!(r.status(), StatusCode::OK);

        let r = payload_v2_response(json!({"hello": "world"})).expect("bare json");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
        assert!(payload_v2_response(json!({"statusCode": 1000})).is_err());
    }
}
