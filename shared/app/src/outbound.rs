//! Calls to external systems: placeholders filled, failures classified (SPEC §2:
//! connection errors, timeouts, 429 and 5xx are retryable; other 4xx are business errors),
//! and every connection guarded by the [`OutboundPolicy`]: names are resolved here and
//! only allowed addresses are connected to (so DNS rebinding does not pass), an address in
//! the URL is checked the same way, and redirects are not followed (a 3xx is a business
//! error naming its `Location`).

use handoff_core::definition::RequestTemplate;
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
}

pub fn render(template: &RequestTemplate, ctx: &PlaceholderContext) -> Result<RenderedRequest, Failure> {
    let fail = |what: &str, e: placeholder::PlaceholderError| Failure::business(format!("{what}: {e}"));
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
    Ok(RenderedRequest { method, url, headers, body })
}

/// Values substituted into a body are escaped as JSON string content, so a templated JSON
/// body stays valid whatever the parameter holds.
fn json_escape(value: &str) -> String {
    let quoted = serde_json::Value::String(value.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// The HTTP client of sub-steps: guarded connections, no redirects, bounded waits.
fn guarded_client(policy: OutboundPolicy) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // A silent peer fails after 25 s; a long transfer (a multi-GB data file streamed
        // in or out) does not — the function timeout bounds the whole.
        .read_timeout(Duration::from_secs(25))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .build()
        .unwrap_or_default()
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
    allowed_addresses(policy, resolved)
        .map_err(|refused| Failure::business(format!("{scheme} {host}:{port} refused: {refused}")))
}

/// The policy's verdict on a URL whose host is an address (names are checked on resolution).
fn check_literal_host(policy: &OutboundPolicy, url: &str) -> Result<(), Failure> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Err(Failure::business(format!("'{}' is not a valid URL", redact_query(url))));
    };
    let ip = match parsed.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    policy.check(ip).map_err(|refused| Failure::business(format!("{} refused: {refused}", redact_query(url))))
}

/// Sends a rendered request. A templated body wins over `body`.
pub async fn send(
    client: &OutboundClient,
    request: RenderedRequest,
    body: OutboundBody,
    extra_headers: &[(&str, String)],
) -> Result<reqwest::Response, Failure> {
    let target = format!("{} {}", request.method, redact_query(&request.url));
    check_literal_host(&client.policy, &request.url)?;
    let client = &client.http;
    let mut builder = client.request(request.method, &request.url);
    for (k, v) in &request.headers {
        builder = builder.header(k, v);
    }
    for (k, v) in extra_headers {
        builder = builder.header(*k, v);
    }
    builder = match (request.body, body) {
        (Some(templated), _) => builder.body(templated),
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
    let response = builder.send().await.map_err(|e| {
        if let Some(refused) = refusal_in(&e) {
            return Failure::business(format!("{target} refused: {refused}"));
        }
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "failed"
        };
        Failure::transient(format!("{target} {kind}: {}", root_cause(&e)))
    })?;
    let status = response.status();
    if status.is_redirection() {
        let location = response.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("");
        return Err(Failure::business(format!(
            "{target} answered HTTP {} redirecting to '{}'; redirects are not followed",
            status.as_u16(),
            redact_query(location)
        )));
    }
    match Failure::from_http_status(status.as_u16(), &target) {
        Some(failure) => Err(failure),
        None => Ok(response),
    }
}

/// The guarded client with the policy it applies (the policy also checks address URLs).
#[derive(Clone)]
pub struct OutboundClient {
    pub http: reqwest::Client,
    pub policy: OutboundPolicy,
}

impl OutboundClient {
    pub fn new(policy: OutboundPolicy) -> Self {
        Self { http: guarded_client(policy.clone()), policy }
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
    fn renders_url_headers_and_body_with_the_right_escaping() {
        let template = RequestTemplate {
            method: "POST".into(),
            url: "http://h.example/r/{{parameters.region}}".into(),
            headers: vec![("X-Region".into(), "{{parameters.region}}".into())],
            body: Some(r#"{"region": "{{parameters.region}}", "x": "{{exchange.exchangeId}}"}"#.into()),
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
        };
        let f = render(&template, &PlaceholderContext::default()).err().unwrap();
        assert!(!f.retryable);
        assert!(f.message.contains("'id'"));
    }

    fn post(url: &str) -> RenderedRequest {
        RenderedRequest { method: reqwest::Method::POST, url: url.into(), headers: Vec::new(), body: None }
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
}
