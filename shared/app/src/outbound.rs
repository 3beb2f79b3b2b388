//! Calls to external systems: placeholders filled, failures classified (SPEC §2:
//! connection errors, timeouts, 429 and 5xx are retryable; other 4xx are business errors).

use handoff_core::definition::RequestTemplate;
use handoff_core::placeholder::{self, PlaceholderContext};
use handoff_core::retry::Failure;
use handoff_ports::ByteStream;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

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

/// Sends a rendered request. A templated body wins over `body`.
pub async fn send(
    client: &reqwest::Client,
    request: RenderedRequest,
    body: OutboundBody,
    extra_headers: &[(&str, String)],
) -> Result<reqwest::Response, Failure> {
    let target = format!("{} {}", request.method, redact_query(&request.url));
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
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "failed"
        };
        Failure::transient(format!("{target} {kind}: {}", root_cause(&e)))
    })?;
    match Failure::from_http_status(response.status().as_u16(), &target) {
        Some(failure) => Err(failure),
        None => Ok(response),
    }
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
}
