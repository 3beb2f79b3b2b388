//! Calls to external systems: placeholders filled, failures classified (SPEC §2:
//! connection errors, timeouts, 429 and 5xx are retryable; other 4xx are business errors),
//! and every connection guarded by the [`OutboundPolicy`]: names are resolved here and
//! only allowed addresses are connected to (so DNS rebinding does not pass), an address in
//! the URL is checked the same way, and redirects are not followed (a 3xx is a business
//! error naming its `Location`) unless the request sets `followRedirects`: then each hop is
//! checked like the first, and a hop to another origin carries none of the request's own
//! headers (credentials, the callback URL).

use handoff_core::definition::{RequestTemplate, MAX_REDIRECTS};
use handoff_core::error_code::ErrorCode;
use handoff_core::network::{OutboundPolicy, Refused};
use handoff_core::placeholder::{self, PlaceholderContext};
use handoff_core::retry::Failure;
use handoff_ports::ByteStream;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Characters left as they are when a value is put into a URL.
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

pub enum OutboundBody {
    Empty,
    Stream {
        body: ByteStream,
        content_type: String,
        /// Sent as `Content-Length` when known: many targets (Python's `http.server`, older
        /// servlet stacks) read a chunked body as empty.
        length: Option<u64>,
    },
    /// multipart/form-data (file uploads); the form sets its own content type and boundary.
    Multipart(reqwest::multipart::Form),
}

/// Fills the placeholders of a request; a missing parameter is the caller's data problem.
pub struct RenderedRequest {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// Follow up to [`MAX_REDIRECTS`] redirects (the request's `followRedirects`).
    pub follow_redirects: bool,
}

pub fn render(template: &RequestTemplate, ctx: &PlaceholderContext) -> Result<RenderedRequest, Failure> {
    let fail = |what: &str, e: placeholder::PlaceholderError| {
        Failure::business(ErrorCode::InvalidParameters, format!("{what}: {e}"))
    };
    let url = placeholder::render(&template.url, ctx, |v| utf8_percent_encode(v, URL_VALUE).to_string())
        .map_err(|e| fail("request url", e))?;
    let headers = template
        .headers
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                placeholder::render(v, ctx, |s| s.to_string()).map_err(|e| fail(&format!("header {k}"), e))?,
            ))
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    let body = template
        .body
        .as_deref()
        .map(|b| placeholder::render(b, ctx, json_escape).map_err(|e| fail("request body", e)))
        .transpose()?;
    let method = reqwest::Method::from_bytes(template.method.as_bytes())
        .map_err(|_| Failure::system(format!("invalid HTTP method {}", template.method)))?;
    Ok(RenderedRequest { method, url, headers, body, follow_redirects: template.follow_redirects })
}

/// Values substituted into a body are escaped as JSON string content, so a templated JSON
/// body stays valid whatever the parameter holds.
fn json_escape(value: &str) -> String {
    let quoted = serde_json::Value::String(value.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// The HTTP client of sub-steps: guarded connections, no redirects, bounded waits. There
/// is no fallback when it cannot be built (its TLS set-up failed): a default client would
/// connect without the guard, wherever a name resolves.
fn guarded_client(policy: OutboundPolicy) -> Result<reqwest::Client, ClientUnavailable> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // A silent peer fails after 25 s; a long transfer (a multi-GB data file streamed
        // in or out) does not — the function timeout bounds the whole.
        .read_timeout(Duration::from_secs(25))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .build()
        .map_err(|e| ClientUnavailable(root_cause(&e)))
}

/// The guarded HTTP client could not be built; another attempt in the same process fails
/// the same way.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the outbound HTTP client could not be built: {0}")]
pub struct ClientUnavailable(String);

impl From<ClientUnavailable> for Failure {
    fn from(e: ClientUnavailable) -> Self {
        Failure::system(e.to_string())
    }
}

/// Resolves a host and keeps only the addresses the policy allows.
struct GuardedResolver {
    policy: OutboundPolicy,
}

/// A destination the policy refuses (found in a request error's sources).
#[derive(Debug, thiserror::Error)]
#[error("{host}: {refused}")]
struct RefusedDestination {
    host: String,
    refused: Refused,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            match allowed_addresses(&policy, resolved) {
                Ok(allowed) => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
                Err(refused) => Err(Box::new(RefusedDestination { host, refused }) as _),
            }
        })
    }
}

/// The addresses the policy allows; refused when it allows none of them (an empty
/// resolution is left to the connection to report).
fn allowed_addresses(policy: &OutboundPolicy, resolved: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
    let mut first_refusal = None;
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|addr| match policy.check(addr.ip()) {
            Ok(()) => true,
            Err(refused) => {
                first_refusal.get_or_insert(refused);
                false
            }
        })
        .collect();
    match (allowed.is_empty(), first_refusal) {
        (true, Some(refused)) => Err(refused),
        _ => Ok(allowed),
    }
}

/// Resolves `host` for a connection that is not HTTP (SFTP) and keeps the addresses the
/// policy allows: connect to exactly these, so a name that resolves again differently
/// (rebinding) cannot pass. A refusal is a business error naming the host, a failed
/// resolution a transient one.
pub async fn resolve_guarded(
    policy: &OutboundPolicy,
    scheme: &str,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Failure> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Failure::transient(format!("{scheme} {host}: the name does not resolve: {e}")))?
        .collect();
    allowed_addresses(policy, resolved).map_err(|refused| {
        Failure::business(ErrorCode::DestinationRefused, format!("{scheme} {host}:{port} refused: {refused}"))
    })
}

/// The policy's verdict on a URL whose host is an address (names are checked on resolution).
fn check_literal_host(policy: &OutboundPolicy, url: &str) -> Result<(), Failure> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Err(Failure::business(
            ErrorCode::DestinationRefused,
            format!("'{}' is not a valid URL", redact_query(url)),
        ));
    };
    let ip = match parsed.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    policy.check(ip).map_err(|refused| {
        Failure::business(ErrorCode::DestinationRefused, format!("{} refused: {refused}", redact_query(url)))
    })
}

/// Sends a rendered request. A templated body wins over `body`. `extra_headers` are the
/// gateway's own (`Idempotency-Key`, `X-Handoff-Callback-Url`).
pub async fn send(
    client: &OutboundClient,
    request: RenderedRequest,
    body: OutboundBody,
    extra_headers: &[(&str, String)],
) -> Result<reqwest::Response, Failure> {
    let first = format!("{} {}", request.method, redact_query(&request.url));
    let follow = request.follow_redirects;
    let streamed = request.body.is_none() && !matches!(body, OutboundBody::Empty);
    let mut hop = Hop { request, streamed, foreign: false };
    let mut body = body;
    for redirects in 0..=MAX_REDIRECTS {
        let target = format!("{} {}", hop.request.method, redact_query(&hop.request.url));
        // Only the first hop has a payload to stream; later ones resend a templated body or none.
        let this_body = std::mem::replace(&mut body, OutboundBody::Empty);
        let response = send_once(client, &hop, this_body, extra_headers, &target).await?;
        let status = response.status();
        if !status.is_redirection() || status == reqwest::StatusCode::NOT_MODIFIED {
            return match Failure::from_http_status(status.as_u16(), &target) {
                Some(failure) => Err(failure),
                None => Ok(response),
            };
        }
        let location = response.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("");
        let redirected =
            format!("{target} answered HTTP {} redirecting to '{}'", status.as_u16(), redact_query(location));
        if !follow {
            return Err(Failure::business(
                ErrorCode::DestinationRefused,
                format!("{redirected}; redirects are not followed"),
            ));
        }
        if redirects == MAX_REDIRECTS {
            break;
        }
        hop = hop
            .redirected(status, location)
            .map_err(|why| Failure::business(ErrorCode::DestinationRefused, format!("{redirected}: {why}")))?;
    }
    Err(Failure::business(
        ErrorCode::DestinationRefused,
        format!("{first}: more than {MAX_REDIRECTS} redirects; not followed further"),
    ))
}

/// One request of a call: the first, or a redirect's.
struct Hop {
    request: RenderedRequest,
    /// The first hop streamed a payload (not kept: it cannot be sent again).
    streamed: bool,
    /// On another origin than the first request: none of its headers go there.
    foreign: bool,
}

impl Hop {
    /// The hop `status` and `location` redirect to (RFC 9110 §15.4): 301/302/303 turn a
    /// request other than GET/HEAD into a GET without body, 307/308 repeat it as it was —
    /// possible only for a templated body or none, since a streamed payload went out once.
    fn redirected(self, status: reqwest::StatusCode, location: &str) -> Result<Hop, String> {
        let from = url::Url::parse(&self.request.url).map_err(|e| format!("the request URL is invalid: {e}"))?;
        if location.is_empty() {
            return Err("there is no Location to follow".into());
        }
        let to = from.join(location).map_err(|e| format!("the Location is not a URL: {e}"))?;
        match (from.scheme(), to.scheme()) {
            ("https", "http") => return Err("a redirect from https to http is not followed".into()),
            (_, "http" | "https") => {}
            (_, other) => return Err(format!("a redirect to a {other}: URL is not followed")),
        }
        let foreign = self.foreign || from.origin() != to.origin();
        let keeps_method = matches!(status.as_u16(), 307 | 308);
        let RenderedRequest { method, headers, body, .. } = self.request;
        let (method, body) = if keeps_method {
            if self.streamed {
                return Err("following it would send the streamed payload again, which is not kept".into());
            }
            (method, body)
        } else if method == reqwest::Method::HEAD {
            (method, None)
        } else {
            (reqwest::Method::GET, None)
        };
        // The request's own headers carry credentials: they stay on its first origin. A
        // body that is dropped takes its content headers with it.
        let headers = if foreign {
            Vec::new()
        } else {
            headers
                .into_iter()
                .filter(|(name, _)| body.is_some() || !name.to_ascii_lowercase().starts_with("content-"))
                .collect()
        };
        Ok(Hop {
            request: RenderedRequest { method, url: to.to_string(), headers, body, follow_redirects: true },
            streamed: false,
            foreign,
        })
    }
}

/// The header that hands a waiting step's callback URL to the system it calls.
pub const CALLBACK_HEADER: &str = "X-Handoff-Callback-Url";

/// Sends one hop; classifies a failure to get an answer.
async fn send_once(
    client: &OutboundClient,
    hop: &Hop,
    body: OutboundBody,
    extra_headers: &[(&str, String)],
    target: &str,
) -> Result<reqwest::Response, Failure> {
    let request = &hop.request;
    check_literal_host(&client.policy, &request.url)?;
    let mut builder = client.http()?.request(request.method.clone(), &request.url);
    for (k, v) in &request.headers {
        builder = builder.header(k, v);
    }
    for (k, v) in extra_headers {
        // The callback URL is a credential for the step's own system, never another's.
        if hop.foreign && k.eq_ignore_ascii_case(CALLBACK_HEADER) {
            continue;
        }
        builder = builder.header(*k, v);
    }
    builder = match (&request.body, body) {
        (Some(templated), _) => builder.body(templated.clone()),
        (None, OutboundBody::Stream { body, content_type, length }) => {
            let has_type = request.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
            let builder = if has_type { builder } else { builder.header("Content-Type", content_type) };
            // hyper frames a streamed body by a Content-Length header when one is set.
            let builder = match length {
                Some(length) => builder.header(reqwest::header::CONTENT_LENGTH, length),
                None => builder,
            };
            builder.body(reqwest::Body::wrap_stream(body))
        }
        (None, OutboundBody::Multipart(form)) => builder.multipart(form),
        (None, OutboundBody::Empty) => builder,
    };
    builder.send().await.map_err(|e| {
        if let Some(refused) = refusal_in(&e) {
            return Failure::business(ErrorCode::DestinationRefused, format!("{target} refused: {refused}"));
        }
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "failed"
        };
        Failure::transient(format!("{target} {kind}: {}", root_cause(&e)))
    })
}

/// The guarded client with the policy it applies (the policy also checks address URLs).
#[derive(Clone)]
pub struct OutboundClient {
    http: std::sync::OnceLock<Result<reqwest::Client, ClientUnavailable>>,
    pub policy: OutboundPolicy,
}

impl OutboundClient {
    /// A client for `policy`, built on first use: building one loads the system's root
    /// certificates, which a function that never calls out should not pay for at start.
    pub fn new(policy: OutboundPolicy) -> Self {
        Self { http: std::sync::OnceLock::new(), policy }
    }

    /// The HTTP client (built now if it was not yet).
    pub fn http(&self) -> Result<&reqwest::Client, ClientUnavailable> {
        self.http.get_or_init(|| guarded_client(self.policy.clone())).as_ref().map_err(Clone::clone)
    }

    /// Builds the client now: what a function whose invocations call out does at start, so
    /// that a client that cannot be built fails the function's start, not each invocation.
    pub fn warm(&self) -> Result<(), ClientUnavailable> {
        self.http().map(|_| ())
    }
}

fn refusal_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a RefusedDestination> {
    let mut cause: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<RefusedDestination>() {
            return Some(refused);
        }
        cause = current.source();
    }
    None
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Query strings may carry secrets; logs and errors show only scheme, host and path.
pub fn redact_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_client_is_built_on_first_use_or_when_warmed_not_before() {
        let lazy = OutboundClient::new(OutboundPolicy::default());
        assert!(lazy.http.get().is_none(), "nothing built (no root certificates loaded) at construction");
        lazy.http().expect("the client builds");
        assert!(lazy.http.get().is_some());
        let warmed = OutboundClient::new(OutboundPolicy::default());
        warmed.warm().expect("the client builds");
        assert!(warmed.http.get().is_some(), "warm builds it");
    }

    #[test]
    fn renders_url_headers_and_body_with_the_right_escaping() {
        let template = RequestTemplate {
            method: "POST".into(),
            url: "http://h.example/r/{{parameters.region}}".into(),
            headers: vec![("X-Region".into(), "{{parameters.region}}".into())],
            body: Some(r#"{"region": "{{parameters.region}}", "x": "{{exchange.exchangeId}}"}"#.into()),
            follow_redirects: false,
        };
        let ctx = PlaceholderContext {
            parameters: json!({"region": "a \"b\"/c"}),
            exchange_id: "ex1".into(),
            ..Default::default()
        };
        let r = render(&template, &ctx).unwrap();
        assert_eq!(r.url, "http://h.example/r/a%20%22b%22%2Fc");
        assert_eq!(r.headers[0].1, "a \"b\"/c");
        let body: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        assert_eq!(body, json!({"region": "a \"b\"/c", "x": "ex1"}));
    }

    #[test]
    fn a_missing_parameter_is_a_business_error() {
        let template = RequestTemplate {
            method: "GET".into(),
            url: "http://h.example/{{parameters.id}}".into(),
            headers: vec![],
            body: None,
            follow_redirects: false,
        };
        let f = render(&template, &PlaceholderContext::default()).err().unwrap();
        assert!(!f.retryable);
        assert!(f.message.contains("'id'"));
    }

    fn post(url: &str) -> RenderedRequest {
        RenderedRequest {
            method: reqwest::Method::POST,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            follow_redirects: false,
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_a_refused_address_is_a_business_error() {
        let closed = OutboundClient::new(OutboundPolicy::default());
        let failure =
            send(&closed, post("http://localhost:9/in"), OutboundBody::Empty, &[]).await.expect_err("refused");
        assert!(!failure.retryable, "{failure:?}");
        assert!(
            failure.message.contains("localhost") && failure.message.contains("AllowedOutboundNetworks"),
            "{failure:?}"
        );
        // Opened, the same call reaches the network (nobody listens: a retryable connection error).
        let open = OutboundClient::new(OutboundPolicy::parse("127.0.0.0/8, ::1").expect("policy"));
        let failure =
            send(&open, post("http://localhost:9/in"), OutboundBody::Empty, &[]).await.expect_err("closed port");
        assert!(failure.retryable, "{failure:?}");
        let failure = send(&open, post("http://169.254.169.254/"), OutboundBody::Empty, &[]).await.expect_err("never");
        assert!(!failure.retryable && failure.message.contains("metadata"), "{failure:?}");
    }

    #[tokio::test]
    async fn a_connection_that_is_not_http_is_guarded_the_same_way() {
        let closed = OutboundPolicy::default();
        let refused = resolve_guarded(&closed, "sftp", "127.0.0.1", 22).await.expect_err("loopback is closed");
        assert!(!refused.retryable && refused.message.starts_with("sftp 127.0.0.1:22 refused"), "{refused:?}");
        let metadata =
            resolve_guarded(&OutboundPolicy::parse("0.0.0.0/0").expect("policy"), "sftp", "169.254.169.254", 22)
                .await
                .expect_err("never");
        assert!(metadata.message.contains("metadata"), "{metadata:?}");
        let open = OutboundPolicy::parse("127.0.0.0/8").expect("policy");
        let addresses = resolve_guarded(&open, "sftp", "127.0.0.1", 2222).await.expect("allowed");
        assert_eq!(addresses, vec![SocketAddr::from(([127, 0, 0, 1], 2222))]);
    }

    /// What a loopback target received: method, path, headers (lower-case names), body.
    type Received = Arc<std::sync::Mutex<Vec<(String, String, std::collections::HashMap<String, String>, String)>>>;

    /// A loopback target whose paths redirect as their names say; `/final` answers 200.
    async fn redirecting_target() -> (u16, Received) {
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::IntoResponse;
        let received: Received = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let log = received.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let names = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                log.lock().expect("log").push((method.to_string(), uri.path().to_string(), names, body));
                let to = |status: StatusCode, location: String| (status, [("location", location)]).into_response();
                match uri.path() {
                    "/moved" => to(StatusCode::FOUND, "/final".into()),
                    "/keep" => to(StatusCode::TEMPORARY_REDIRECT, "/final".into()),
                    "/away" => to(StatusCode::TEMPORARY_REDIRECT, format!("http://localhost:{port}/final")),
                    "/loop" => to(StatusCode::FOUND, "/loop".into()),
                    "/metadata" => to(StatusCode::FOUND, "http://169.254.169.254/latest/meta-data/".into()),
                    "/ftp" => to(StatusCode::FOUND, "ftp://127.0.0.1/file".into()),
                    _ => (StatusCode::OK, "done").into_response(),
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        (port, received)
    }

    fn following(url: String, body: Option<&str>) -> RenderedRequest {
        RenderedRequest {
            method: reqwest::Method::POST,
            url,
            headers: vec![
                ("Authorization".into(), "Bearer partner".into()),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: body.map(str::to_string),
            follow_redirects: true,
        }
    }

    fn loopback() -> OutboundClient {
        OutboundClient::new(OutboundPolicy::parse("127.0.0.0/8, ::1").expect("policy"))
    }

    #[tokio::test]
    async fn redirects_are_followed_only_when_asked_and_each_hop_is_checked() {
        let (port, received) = redirecting_target().await;
        let base = format!("http://127.0.0.1:{port}");
        let callback = [(CALLBACK_HEADER, "https://gw.example/notifications/t".to_string())];
        let client = loopback();
        let last = || received.lock().expect("log").last().cloned().expect("a request");

        // Not asked: the 3xx is a business error naming where it pointed.
        let mut plain = following(format!("{base}/moved"), Some("{}"));
        plain.follow_redirects = false;
        let refused = send(&client, plain, OutboundBody::Empty, &[]).await.expect_err("not followed");
        assert!(
            !refused.retryable && refused.message.contains("'/final'") && refused.message.contains("not followed"),
            "{refused:?}"
        );

        // 302: the POST becomes a GET without its body or content headers, on the same origin
        // with its other headers.
        let ok = send(&client, following(format!("{base}/moved"), Some(r#"{"a":1}"#)), OutboundBody::Empty, &callback)
            .await
            .expect("followed");
        assert_eq!(ok.status(), 200);
        let (method, path, headers, body) = last();
        assert_eq!((method.as_str(), path.as_str(), body.as_str()), ("GET", "/final", ""));
        assert_eq!(headers.get("authorization").map(String::as_str), Some("Bearer partner"));
        assert!(!headers.contains_key("content-type"), "{headers:?}");
        assert!(headers.contains_key("x-handoff-callback-url"), "the same origin keeps the callback URL");

        // 307: the same method and templated body again.
        send(&client, following(format!("{base}/keep"), Some(r#"{"a":1}"#)), OutboundBody::Empty, &[])
            .await
            .expect("followed");
        let (method, path, _, body) = last();
        assert_eq!((method.as_str(), path.as_str(), body.as_str()), ("POST", "/final", r#"{"a":1}"#));

        // Another origin: none of the request's headers, never the callback URL.
        send(&client, following(format!("{base}/away"), Some("{}")), OutboundBody::Empty, &callback)
            .await
            .expect("followed");
        let (_, path, headers, _) = last();
        assert_eq!(path, "/final");
        assert!(headers.get("host").is_some_and(|h| h.starts_with("localhost")), "{headers:?}");
        assert!(
            !headers.contains_key("authorization") && !headers.contains_key("x-handoff-callback-url"),
            "{headers:?}"
        );

        // Each hop is checked: the metadata address, another scheme, an endless loop.
        let metadata = send(&client, following(format!("{base}/metadata"), None), OutboundBody::Empty, &[])
            .await
            .expect_err("refused");
        assert!(!metadata.retryable && metadata.message.contains("metadata"), "{metadata:?}");
        let ftp =
            send(&client, following(format!("{base}/ftp"), None), OutboundBody::Empty, &[]).await.expect_err("ftp");
        assert!(ftp.message.contains("ftp: URL is not followed"), "{ftp:?}");
        let before = received.lock().expect("log").len();
        let endless =
            send(&client, following(format!("{base}/loop"), None), OutboundBody::Empty, &[]).await.expect_err("loop");
        assert!(endless.message.contains(&format!("more than {MAX_REDIRECTS} redirects")), "{endless:?}");
        assert_eq!(received.lock().expect("log").len() - before, MAX_REDIRECTS + 1);
    }

    #[tokio::test]
    async fn a_307_that_would_send_a_streamed_payload_again_is_not_followed() {
        let (port, _) = redirecting_target().await;
        let payload = bytes::Bytes::from_static(b"[1,2,3]");
        let stream: ByteStream = Box::pin(futures::stream::once(async move { Ok::<_, std::io::Error>(payload) }));
        let body = OutboundBody::Stream { body: stream, content_type: "application/json".into(), length: Some(7) };
        let failure = send(&loopback(), following(format!("http://127.0.0.1:{port}/keep"), None), body, &[])
            .await
            .expect_err("not resent");
        assert!(!failure.retryable && failure.message.contains("streamed payload"), "{failure:?}");
    }
}
