//! Endpoints over HTTP: a new code starts Disabled and refuses exchanges until an operator
//! enables it; disabling holds it again, with who and why on the endpoint.

use handoff_e2e::{gateway, unique_code, ExternalSystem};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_new_code_is_disabled_and_answers_409_until_enabled() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("ENDPOINT");
    let definition = json!({"code": code, "version": 1, "steps": [
        {"name": "send", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]});
    // Posted as a user would, without endpointStatus: configure first, enable later.
    let (status, created) = gw.post("/integrations", &definition).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["endpoint"]["status"], "Disabled", "{created}");
    let invoke = json!({"integrationCode": code, "payload": {"a": 1}});
    let (status, refused) = gw.post("/exchanges", &invoke).await;
    assert_eq!((status.as_u16(), refused["error"].as_str()), (409, Some("EndpointDisabled")), "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains(&format!("POST /integrations/{code}/enable"))));

    let (status, enabled) = gw.post(&format!("/integrations/{code}/enable"), &json!({})).await;
    assert_eq!(status, 200, "{enabled}");
    assert_eq!(enabled["endpoint"]["status"], "Enabled");
    assert_eq!(enabled["endpoint"]["changedBy"], "developer", "the token's subject");
    let id = gw.invoke(&invoke).await;
    assert_eq!(gw.wait_final(&id).await["status"], "Completed");
    assert_eq!(target.received().len(), 1);

    let (status, _) =
        gw.post(&format!("/integrations/{code}/disable"), &json!({"reason": "partner maintenance"})).await;
    assert_eq!(status, 200);
    let (_, shown) = gw.get(&format!("/integrations/{code}")).await;
    let endpoint = &shown["endpoint"];
    assert_eq!(
        (endpoint["status"].as_str(), endpoint["reason"].as_str()),
        (Some("Disabled"), Some("partner maintenance"))
    );
    let (status, _) = gw.post("/exchanges", &invoke).await;
    assert_eq!(status, 409);
    let (_, listed) = gw.get("/integrations").await;
    let item = listed["items"].as_array().into_iter().flatten().find(|i| i["code"] == json!(code)).cloned();
    assert_eq!(item.map(|i| i["endpoint"]["status"].clone()), Some(json!("Disabled")), "listings show the endpoint");
}

#[tokio::test]
async fn disabling_during_a_run_holds_it_before_its_delivery_and_enabling_completes_it() {
    let gw = gateway();
    let source = ExternalSystem::start(200, "[1, 2]").await;
    source.script([(503, "{}")]);
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("HOLD_RUN");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [
        {"name": "fetch", "type": "dataCollection", "kind": "query", "retry": {"maxAttempts": 3, "intervalSeconds": 2},
         "request": {"method": "GET", "url": format!("{}/items", source.url)}},
        {"name": "send", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    // Under way: the fetch failed once and waits for its retry.
    gw.wait_for(&id, Duration::from_secs(60), |e| e["steps"][1]["attempts"] == 1).await;
    let (status, _) = gw.post(&format!("/integrations/{code}/disable"), &json!({"reason": "target repair"})).await;
    assert_eq!(status, 200);
    let held = gw.wait_for(&id, Duration::from_secs(60), |e| e["held"].is_object()).await;
    assert_eq!(held["status"], "Started", "held, not failed: {held:#}");
    assert_eq!(held["held"]["stepId"], "0002");
    assert!(held["held"]["reason"].as_str().is_some_and(|r| r.contains("target repair")), "{held:#}");
    assert_eq!(held["steps"][2]["attempts"], 0, "its place kept, no attempt used");
    assert!(target.received().is_empty(), "nothing left the gateway");

    let (status, _) = gw.post(&format!("/integrations/{code}/enable"), &json!({})).await;
    assert_eq!(status, 200);
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(target.received().len(), 1, "delivered once");
}
