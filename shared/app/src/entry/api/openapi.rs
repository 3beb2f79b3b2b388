//! The OpenAPI 3.1 document: operations and schemas come from the handlers'
//! `#[utoipa::path]` and the view types; this module adds what every route shares — the
//! bearer scheme with each route's scope from [`ROUTE_SCOPES`] (the one list the
//! authorizer, the template and this document read), and the error answers any route can
//! give (401, 403, 413, 500, 503).

use super::{ApiResult, ROUTE_SCOPES};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use std::sync::Arc;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, InfoBuilder, LicenseBuilder, OpenApi, Ref, RefOr};

/// The name of the bearer scheme in `components.securitySchemes`.
const BEARER: &str = "bearer";
/// The schema of API Gateway's own answers (`{"message": "Unauthorized"}`): its JWT
/// authorizer refuses tokens, and it answers for a function that failed, before or
/// instead of the function.
const GATEWAY_MESSAGE: &str = "GatewayMessage";

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The API's OpenAPI 3.1 document", content_type = "application/json")))]
pub(super) async fn openapi_json(Extension(document): Extension<Arc<OpenApi>>) -> ApiResult {
    Ok(Json(document.as_ref().clone()).into_response())
}

/// `api` (as the routes generate it) with its info, security and shared error answers.
pub(super) fn document(mut api: OpenApi) -> OpenApi {
    api.info = InfoBuilder::new()
        .title("Handoff API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Define integrations, start and watch exchanges, and hold, repair and replay what failed. \
             Every route but `/health`, `/openapi.json` and the callback `/notifications/{token}` needs a \
             bearer token (a JWT from the configured OIDC issuer) with the scope the operation names.",
        ))
        .license(Some(LicenseBuilder::new().name("Apache-2.0").identifier(Some("Apache-2.0")).build()))
        .build();
    let components = api.components.get_or_insert_with(Default::default);
    let mut bearer = Http::new(HttpAuthScheme::Bearer);
    bearer.bearer_format = Some("JWT".to_string());
    components.security_schemes.insert(BEARER.to_string(), SecurityScheme::Http(bearer));
    let gateway_message = ObjectBuilder::new()
        .description(Some("An answer of API Gateway itself (its authorizer, limits, or a function that failed)"))
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("message");
    components.schemas.insert(GATEWAY_MESSAGE.to_string(), gateway_message.into());

    for (path, item) in api.paths.paths.iter_mut() {
        for (method, operation) in [
            (HttpMethod::Get, &mut item.get),
            (HttpMethod::Put, &mut item.put),
            (HttpMethod::Post, &mut item.post),
            (HttpMethod::Patch, &mut item.patch),
            (HttpMethod::Delete, &mut item.delete),
        ] {
            if let Some(operation) = operation {
                complete(path, method, operation);
            }
        }
    }
    api
}

fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Put => "PUT",
        HttpMethod::Post => "POST",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Head => "HEAD",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Trace => "TRACE",
    }
}

/// The scope a route needs: `Some(None)` for a public one, `None` when it is not listed.
fn scope_of(path: &str, method: &HttpMethod) -> Option<Option<handoff_core::identity::Scope>> {
    ROUTE_SCOPES.iter().find(|(m, p, _)| *m == method_name(method) && *p == path).map(|(_, _, scope)| *scope)
}

fn complete(path: &str, method: HttpMethod, operation: &mut Operation) {
    let scope = scope_of(path, &method).flatten();
    match scope {
        Some(scope) => {
            operation.security = Some(vec![SecurityRequirement::new(BEARER, [scope.to_string()])]);
            add_error(operation, "401", "No bearer token, or one that is not valid (`Unauthorized`)");
            add_error(operation, "403", &format!("The token lacks the `{scope}` scope (`Forbidden`)"));
        }
        // Public: an empty requirement says so explicitly.
        None => operation.security = Some(vec![SecurityRequirement::default()]),
    }
    if matches!(method, HttpMethod::Post | HttpMethod::Put | HttpMethod::Patch) {
        add_error(operation, "413", "The request body is larger than 6 MB (`PayloadTooLarge`)");
    }
    add_error(operation, "500", "The gateway failed; quote the `errorId` (`InternalError`)");
    add_error(operation, "503", "A service the gateway depends on is unavailable; try again (`ServiceUnavailable`)");
}

/// Documents an error answer of `status` unless the route documents its own: ours, or
/// API Gateway's.
fn add_error(operation: &mut Operation, status: &str, description: &str) {
    let schema = AnyOfBuilder::new()
        .item(Ref::from_schema_name("ErrorBody"))
        .item(Ref::from_schema_name(GATEWAY_MESSAGE))
        .build();
    let schema = RefOr::T(utoipa::openapi::schema::Schema::AnyOf(schema));
    let response = ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build())
        .build();
    operation.responses.responses.entry(status.to_string()).or_insert(RefOr::T(response));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn operations(api: &OpenApi) -> BTreeSet<(String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in &api.paths.paths {
            for (method, operation) in [
                ("GET", &item.get),
                ("PUT", &item.put),
                ("POST", &item.post),
                ("PATCH", &item.patch),
                ("DELETE", &item.delete),
            ] {
                if operation.is_some() {
                    all.insert((method.to_string(), path.clone()));
                }
            }
        }
        all
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_has_a_scope() {
        let api = super::super::openapi_document();
        let documented = operations(&api);
        let scoped: BTreeSet<(String, String)> =
            ROUTE_SCOPES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
        assert_eq!(documented, scoped);
    }

    #[test]
    fn scoped_routes_name_their_scope_and_answer_401_and_403() {
        let api = super::super::openapi_document();
        let get = api.paths.paths.get("/exchanges/{id}").and_then(|i| i.get.as_ref()).expect("GET /exchanges/{id}");
        let security = serde_json::to_value(&get.security).expect("json");
        assert_eq!(security, serde_json::json!([{"bearer": ["handoff:read"]}]));
        for status in ["200", "401", "403", "404", "500", "503"] {
            assert!(get.responses.responses.contains_key(status), "GET /exchanges/{{id}} documents {status}");
        }
        let health = api.paths.paths.get("/health").and_then(|i| i.get.as_ref()).expect("GET /health");
        assert!(!health.responses.responses.contains_key("401"));
    }
}
