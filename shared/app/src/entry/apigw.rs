//! API Gateway HTTP API (payload format 2.0) ⇄ `http` request/response, so the axum router
//! is the api function both in Lambda and in the emulator.

use crate::entry::function::InvocationError;
use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpApiEvent {
    #[serde(default)]
    raw_path: String,
    #[serde(default)]
    raw_query_string: String,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default)]
    cookies: Vec<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    is_base64_encoded: bool,
    request_context: RequestContext,
}

#[derive(Debug, Deserialize)]
struct RequestContext {
    http: HttpContext,
}

#[derive(Debug, Deserialize)]
struct HttpContext {
    method: String,
}

/// Largest response a Lambda function may return through API Gateway.
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024 - 64 * 1024;

pub fn to_request(event: Value) -> Result<http::Request<axum::body::Body>, InvocationError> {
    let event: HttpApiEvent = serde_json::from_value(event)
        .map_err(|e| InvocationError::new("InvalidEvent", format!("not an HTTP API 2.0 event: {e}")))?;
    let uri = if event.raw_query_string.is_empty() {
        event.raw_path.clone()
    } else {
        format!("{}?{}", event.raw_path, event.raw_query_string)
    };
    let body = match event.body {
        None => Bytes::new(),
        Some(b) if event.is_base64_encoded => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| InvocationError::new("InvalidEvent", format!("body is not base64: {e}")))?
            .into(),
        Some(b) => Bytes::from(b),
    };
    let mut builder = http::Request::builder().method(event.request_context.http.method.as_str()).uri(uri);
    for (name, value) in &event.headers {
        builder = builder.header(name, value);
    }
    if !event.cookies.is_empty() {
        builder = builder.header("cookie", event.cookies.join("; "));
    }
    builder.body(axum::body::Body::from(body)).map_err(|e| InvocationError::new("InvalidEvent", e.to_string()))
}

pub async fn from_response(response: http::Response<axum::body::Body>) -> Result<Value, InvocationError> {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map_err(|e| InvocationError::new("ResponseError", e.to_string()))?.to_bytes();
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(InvocationError::new(
            "ResponseTooLarge",
            format!("{} bytes exceed the Lambda response limit", bytes.len()),
        ));
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        if let Ok(v) = value.to_str() {
            headers.insert(name.as_str().to_string(), Value::String(v.to_string()));
        }
    }
    let (body, is_base64) = match std::str::from_utf8(&bytes) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(&bytes), true),
    };
    Ok(json!({
        "statusCode": parts.status.as_u16(),
        "headers": headers,
        "body": body,
        "isBase64Encoded": is_base64,
        "cookies": [],
    }))
}
