//! Identity at the HTTP API, as a client sees it through the emulator's API Gateway:
//! tokens from the development issuer, 401 for a missing or bad token, 403 for a missing
//! scope, and the two public routes.

use handoff_e2e::{gateway, unique_code};
use handoff_emulator::auth::{DevIssuer, ALL_SCOPES, DEV_AUDIENCE, DEV_ISSUER};
use handoff_emulator::EmulatorOptions;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

fn issuer() -> DevIssuer {
    DevIssuer::load_or_create(&EmulatorOptions::default().state_dir).expect("the development issuer")
}

fn token(scopes: &[&str]) -> String {
    issuer().mint("e2e-caller", scopes, DEV_AUDIENCE, Duration::from_secs(300)).expect("token")
}

#[tokio::test]
async fn a_request_without_a_valid_token_is_401() {
    let gw = gateway();
    let now = chrono::Utc::now().timestamp();
    let expired = issuer()
        .sign(&json!({"iss": DEV_ISSUER, "sub": "late", "aud": DEV_AUDIENCE, "iat": now - 600, "exp": now - 60,
                      "scope": ALL_SCOPES.join(" ")}))
        .expect("token");
    let other_audience = issuer().mint("x", &ALL_SCOPES, "another-api", Duration::from_secs(60)).expect("token");
    let foreign_dir = std::env::temp_dir().join(format!("handoff-foreign-issuer-{}", std::process::id()));
    let foreign = DevIssuer::load_or_create(&foreign_dir).expect("another key");
    let wrongly_signed = foreign.mint("mallory", &ALL_SCOPES, DEV_AUDIENCE, Duration::from_secs(60)).expect("token");
    let _ = std::fs::remove_dir_all(&foreign_dir);
    for (what, credential) in [
        ("no token", None),
        ("a malformed token", Some("not-a-jwt")),
        ("an expired token", Some(expired.as_str())),
        ("a token for another audience", Some(other_audience.as_str())),
        ("a token signed by another key", Some(wrongly_signed.as_str())),
    ] {
        let (status, body) = gw.request_as(credential, Method::GET, "/exchanges", None).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body, json!({"message": "Unauthorized"}), "{what}");
    }
}

#[tokio::test]
async fn a_token_without_the_route_scope_is_403_and_each_scope_opens_its_routes() {
    let gw = gateway();
    let code = unique_code("SCOPES");
    let definition = json!({"code": code, "version": 1, "steps": [
        {"name": "t", "type": "transformation", "function": {"jq": "."}}]});
    let reader = token(&["handoff:read"]);
    let admin = token(&["handoff:admin"]);
    let invoker = token(&["handoff:invoke"]);
    let body = |v: &Value| Some(serde_json::to_vec(v).expect("json"));

    let (status, answer) = gw.request_as(Some(&reader), Method::POST, "/integrations", body(&definition)).await;
    assert_eq!((status.as_u16(), answer), (403, json!({"message": "Forbidden"})));
    let (status, answer) = gw.request_as(Some(&admin), Method::POST, "/integrations", body(&definition)).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!((&answer["createdBy"], &answer["updatedBy"]), (&json!("e2e-caller"), &json!("e2e-caller")));
    let other_admin =
        issuer().mint("second-admin", &["handoff:admin"], DEV_AUDIENCE, Duration::from_secs(60)).expect("t");
    let change = json!({"description": "changed by a second admin"});
    let path = format!("/integrations/{code}/versions/1");
    let (status, answer) = gw.request_as(Some(&other_admin), Method::PATCH, &path, body(&change)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((&answer["createdBy"], &answer["updatedBy"]), (&json!("e2e-caller"), &json!("second-admin")));
    // A new code is Disabled; enabling it is an operator's act, not an admin's.
    let enable = format!("/integrations/{code}/enable");
    let (status, _) = gw.request_as(Some(&admin), Method::POST, &enable, None).await;
    assert_eq!(status, 403, "enabling needs handoff:operate");
    let operator = token(&["handoff:operate"]);
    let (status, answer) = gw.request_as(Some(&operator), Method::POST, &enable, None).await;
    assert_eq!((status.as_u16(), &answer["endpoint"]["changedBy"]), (200, &json!("e2e-caller")), "{answer}");
    let start = json!({"integrationCode": code});
    let (status, _) = gw.request_as(Some(&admin), Method::POST, "/exchanges", body(&start)).await;
    assert_eq!(status, 403, "invoking needs handoff:invoke");
    let (status, started) = gw.request_as(Some(&invoker), Method::POST, "/exchanges", body(&start)).await;
    assert_eq!(status, 202, "{started}");
    let id = started["exchangeId"].as_str().expect("exchangeId");
    let (status, _) = gw.request_as(Some(&invoker), Method::GET, &format!("/exchanges/{id}"), None).await;
    assert_eq!(status, 403, "reading needs handoff:read");
    let (status, _) = gw.request_as(Some(&reader), Method::GET, &format!("/exchanges/{id}"), None).await;
    assert_eq!(status, 200);
    let (status, _) = gw.request_as(Some(&reader), Method::POST, &format!("/exchanges/{id}/recover"), None).await;
    assert_eq!(status, 403, "recovering needs handoff:operate");
}

#[tokio::test]
async fn the_callback_and_the_shallow_health_check_are_public() {
    let gw = gateway();
    let (status, body) = gw.request_as(None, Method::GET, "/health", None).await;
    assert_eq!((status.as_u16(), body), (200, json!({"status": "ok"})), "nothing about components");
    let (status, _) = gw.request_as(None, Method::GET, "/health/components", None).await;
    assert_eq!(status, 401);
    let answer = Some(serde_json::to_vec(&json!({"status": "success"})).expect("json"));
    let (status, body) = gw.request_as(None, Method::POST, "/notifications/no-such-token", answer).await;
    assert_eq!(status, 404, "the function answered: the token is the credential");
    assert_eq!(body["error"], "NotFound", "{body}");
}

/// A delivery of one step to `url`, retried (a refusal must not be).
fn delivery_to(code: &str, url: &str) -> Value {
    json!({"code": code, "version": 1, "steps": [
        {"name": "send", "type": "delivery", "retry": {"maxAttempts": 3, "intervalSeconds": 1},
         "destinations": [{"kind": "rest", "request": {"method": "POST", "url": url}}]}]})
}

#[tokio::test]
async fn metadata_and_private_addresses_are_refused_as_business_errors() {
    let gw = gateway();
    for (url, refusal) in [
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "link-local or metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "link-local or metadata"),
        ("http://10.0.0.1/internal", "not listed in AllowedOutboundNetworks"),
    ] {
        let code = unique_code("GUARD");
        gw.create_integration(&delivery_to(&code, url)).await;
        let id = gw.invoke(&json!({"integrationCode": code, "payload": {"a": 1}})).await;
        let done = gw.wait_final(&id).await;
        assert_eq!(done["status"], "Failed", "{url}: {done:#}");
        assert_eq!(done["error"]["classification"], "business", "{url}: not retried");
        let message = done["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("refused") && message.contains(refusal), "{url}: {message}");
        assert_eq!(done["steps"][1]["attempts"], 1, "{url}: {done:#}");
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_names_its_location() {
    let gw = gateway();
    let target = handoff_e2e::ExternalSystem::start(200, "{}").await;
    target.script([(302, "http://127.0.0.1:1/elsewhere")]);
    let code = unique_code("REDIRECT");
    gw.create_integration(&delivery_to(&code, &format!("{}/in", target.url))).await;
    let id = gw.invoke(&json!({"integrationCode": code, "payload": {"a": 1}})).await;
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Failed", "{done:#}");
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("HTTP 302 redirecting to 'http://127.0.0.1:1/elsewhere'"), "{message}");
    assert_eq!(target.received().len(), 1, "the redirect was not followed");
}

#[tokio::test]
async fn a_request_that_opts_in_follows_a_redirect_without_its_headers_to_another_host() {
    let gw = gateway();
    let old = handoff_e2e::ExternalSystem::start(200, "{}").await;
    let new = handoff_e2e::ExternalSystem::start(200, r#"[{"id": 1}]"#).await;
    // The API moved to another host (another name for loopback: another origin).
    let moved: &'static str =
        Box::leak(format!("{}/v2/items", new.url.replace("127.0.0.1", "localhost")).into_boxed_str());
    old.script([(301, moved)]);
    let code = unique_code("FOLLOW");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [
        {"name": "fetch", "type": "dataCollection", "kind": "query",
         "request": {"url": format!("{}/v1/items", old.url), "headers": {"X-Api-Key": "key-for-old"},
                     "followRedirects": true}}]}))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(old.received()[0].header("x-api-key").as_deref(), Some("key-for-old"));
    let hop = new.received();
    assert_eq!(hop.len(), 1, "followed once");
    assert_eq!(hop[0].path, "/v2/items");
    assert_eq!(hop[0].header("x-api-key"), None, "the old host's key stays with it");
}

#[tokio::test]
async fn a_callback_file_on_another_host_than_the_step_request_is_refused() {
    let gw = gateway();
    let partner = handoff_e2e::ExternalSystem::start(202, "{}").await;
    let files = handoff_e2e::ExternalSystem::start(200, "a,b\n1,2\n").await;
    let code = unique_code("LINK_HOST");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [
        {"name": "extract", "type": "dataCollection", "kind": "extract",
         "request": {"method": "POST", "url": format!("{}/extract", partner.url)}}]}))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    gw.wait_for(&id, Duration::from_secs(60), |e| e["statusCode"] == "W").await;
    let callback = partner.received()[0].header("x-handoff-callback-url").expect("callback url");
    let path = callback.split_once("/notifications/").map(|(_, t)| format!("/notifications/{t}")).expect("path");
    // The partner's request went to 127.0.0.1; the file is named through another host name.
    let elsewhere = files.url.replace("127.0.0.1", "localhost");
    let (status, body) = gw
        .post(&path, &json!({"status": "success", "files": [{"name": "x.csv", "url": format!("{elsewhere}/x.csv")}]}))
        .await;
    assert_eq!(status, 202, "{body}");
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Failed", "{done:#}");
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("host 'localhost'") && message.contains("allowedLinkHosts"), "{message}");
    assert!(files.received().is_empty(), "nothing was fetched");
}
