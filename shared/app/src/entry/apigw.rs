//! API Gateway HTTP API (payload format 2.0) ⇄ `http` request/response, so the axum router
//! is the api function both in Lambda and in the emulator.

use crate::entry::function::InvocationError;
use base64::Engine;
use bytes::Bytes;
use handoff_core::identity::Caller;
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
    /// Set by a JWT authorizer on a guarded route.
    #[serde(default)]
    authorizer: Option<AuthorizerContext>,
}

#[derive(Debug, Deserialize)]
struct AuthorizerContext {
    #[serde(default)]
    jwt: Option<JwtContext>,
}

/// `requestContext.authorizer.jwt`: the validated token's claims (as strings) and scopes.
#[derive(Debug, Deserialize)]
struct JwtContext {
    #[serde(default)]
    claims: HashMap<String, Value>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

impl JwtContext {
    /// The caller the authorizer vouched for; none without a `sub`.
    fn caller(&self) -> Option<Caller> {
        let subject = self.claims.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty())?;
        let claimed = ["scope", "scp"].into_iter().filter_map(|k| self.claims.get(k)).filter_map(Value::as_str);
        let scopes: Vec<&str> = match &self.scopes {
            Some(scopes) => scopes.iter().map(String::as_str).collect(),
            None => claimed.map(|s| s.trim_matches(['[', ']'])).collect(),
        };
        Some(Caller::new(subject, scopes))
    }
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
    // Only API Gateway sets the authorizer context: a header a caller sends proves nothing.
    if let Some(caller) =
        event.request_context.authorizer.as_ref().and_then(|a| a.jwt.as_ref()).and_then(JwtContext::caller)
    {
        builder = builder.extension(caller);
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

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_core::identity::Scope;

    fn event(authorizer: Value) -> Value {
        json!({"rawPath": "/exchanges", "rawQueryString": "", "headers": {},
               "requestContext": {"http": {"method": "GET"}, "authorizer": authorizer}})
    }

    #[test]
    fn the_caller_comes_from_the_authorizer_context_only() {
        let request = to_request(event(json!({"jwt": {"claims": {"sub": "alice", "scope": "handoff:read"},
                                                       "scopes": ["handoff:read", "handoff:admin"]}})))
        .expect("request");
        let caller = request.extensions().get::<Caller>().expect("a caller");
        assert_eq!(caller.subject, "alice");
        assert!(caller.may(Scope::Admin) && caller.may(Scope::Read) && !caller.may(Scope::Operate));
        // Without `scopes` (a route without authorization scopes), the claim is read.
        let request =
            to_request(event(json!({"jwt": {"claims": {"sub": "bob", "scp": "handoff:operate"}}}))).expect("request");
        assert!(request.extensions().get::<Caller>().is_some_and(|c| c.may(Scope::Operate)));
        let request = to_request(event(Value::Null)).expect("request");
        assert!(request.extensions().get::<Caller>().is_none(), "a public route has no caller");
        let request = to_request(event(json!({"jwt": {"claims": {"scope": "handoff:admin"}}}))).expect("request");
        assert!(request.extensions().get::<Caller>().is_none(), "no sub, no caller");
    }
}
