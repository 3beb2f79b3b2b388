//! The web console (`/console`): one page and its script and style, embedded in the binary,
//! public like any static asset — it shows no data until its user signs in through the
//! configured OpenID Connect issuer (authorization code + PKCE) and then calls the same JSON
//! API with that user's token and scopes.

use super::{views, ApiResult, Ctx};
use crate::context::ConsoleSettings;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// The origin of `url` (`https://idp.example`), for the page's `connect-src`.
fn origin_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    matches!(parsed.scheme(), "https" | "http").then(|| parsed.origin().ascii_serialization())
}

/// No script but ours, no framing, nothing sent anywhere but the API and the token endpoint.
fn security_headers(response: &mut Response, settings: &ConsoleSettings) {
    let token_origin = settings.token_endpoint.as_deref().and_then(origin_of).unwrap_or_default();
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' {token_origin}; \
         form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    );
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(policy.trim()) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

fn asset(ctx: &Ctx, content_type: &'static str, body: &'static str) -> ApiResult {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    security_headers(&mut response, &ctx.0.settings.console);
    Ok(response)
}

#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 200, description = "The web console (it shows no data until its user signs in)", content_type = "text/html")))]
pub(super) async fn console_page(ctx: Ctx) -> ApiResult {
    asset(&ctx, "text/html; charset=utf-8", PAGE)
}

#[utoipa::path(get, path = "/console/app.js", tag = "console",
    responses((status = 200, description = "The console's script", content_type = "text/javascript")))]
pub(super) async fn console_script(ctx: Ctx) -> ApiResult {
    asset(&ctx, "text/javascript; charset=utf-8", SCRIPT)
}

#[utoipa::path(get, path = "/console/app.css", tag = "console",
    responses((status = 200, description = "The console's style", content_type = "text/css")))]
pub(super) async fn console_style(ctx: Ctx) -> ApiResult {
    asset(&ctx, "text/css; charset=utf-8", STYLE)
}

#[utoipa::path(get, path = "/console/config.json", tag = "console",
    responses((status = 200, description = "Where the console signs its users in", body = views::ConsoleConfig)))]
pub(super) async fn console_config(State(ctx): Ctx) -> ApiResult {
    let settings = &ctx.settings.console;
    Ok(Json(views::ConsoleConfig {
        authorization_endpoint: settings.authorization_endpoint.clone(),
        token_endpoint: settings.token_endpoint.clone(),
        client_id: settings.client_id.clone(),
        scope: settings.scope.clone(),
        development_issuer: settings.development_issuer,
    })
    .into_response())
}
