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

    // Who started it, and the endpoint's log, newest first (paged).
    let (_, exchange) = gw.get(&format!("/exchanges/{id}")).await;
    assert_eq!(exchange["trigger"], json!({"kind": "api", "caller": "developer"}));
    let (status, log) = gw.get(&format!("/integrations/{code}/log?limit=2")).await;
    assert_eq!(status, 200, "{log}");
    let items = log["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 2, "{log}");
    assert_eq!((items[0]["kind"].as_str(), items[0]["to"].as_str()), (Some("statusChanged"), Some("Disabled")));
    assert_eq!(items[0]["reason"], "partner maintenance");
    assert_eq!((items[1]["kind"].as_str(), items[1]["exchangeId"].as_str()), (Some("invoked"), Some(id.as_str())));
    let cursor = log["nextCursor"].as_str().expect("a next page");
    let (_, older) = gw.get(&format!("/integrations/{code}/log?limit=2&cursor={cursor}")).await;
    assert_eq!(older["items"][0]["to"], "Enabled", "{older}");
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

#[tokio::test]
async fn a_target_down_halts_the_endpoint_holds_the_next_run_and_resume_recovers_both() {
    let gw = gateway();
    let source = ExternalSystem::start(200, "[1]").await;
    let target = ExternalSystem::start(200, "{}").await;
    target.fail_path("/in", 503);
    let code = unique_code("HALTING");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [
        {"name": "fetch", "type": "dataCollection", "kind": "query", "retry": {"maxAttempts": 3, "intervalSeconds": 4},
         "request": {"method": "GET", "url": format!("{}/items/{{{{parameters.n}}}}", source.url)}},
        {"name": "send", "type": "delivery", "retry": {"maxAttempts": 2, "intervalSeconds": 1},
         "destinations": [{"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;
    let (status, body) = gw.patch(&format!("/integrations/{code}"), &json!({"onSystemFailure": "halt"})).await;
    assert_eq!(status, 200, "{body}");

    // The second exchange's fetch fails once and retries 4 s later; the first goes straight
    // to the delivery, which is down.
    source.fail_path("/items/2", 503);
    let second = gw.invoke(&json!({"integrationCode": code, "parameters": {"n": 2}})).await;
    let first = gw.invoke(&json!({"integrationCode": code, "parameters": {"n": 1}})).await;
    let endpoint = |gw: &'static handoff_e2e::Gateway| {
        let code = code.clone();
        async move { gw.get(&format!("/integrations/{code}")).await.1["endpoint"].clone() }
    };
    let mut seen_retrying = false;
    for _ in 0..100 {
        let e = endpoint(gw).await;
        seen_retrying |= e["status"] == "FailedRetrying";
        if e["status"] == "Failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_retrying, "FailedRetrying while the delivery retried");
    let halted = endpoint(gw).await;
    assert_eq!(halted["status"], "Failed", "{halted:#}");
    assert_eq!(gw.wait_final(&first).await["status"], "Failed");
    let (status, refused) = gw.post("/exchanges", &json!({"integrationCode": code, "parameters": {"n": 3}})).await;
    assert_eq!((status.as_u16(), refused["error"].as_str()), (409, Some("EndpointFailed")), "{refused}");

    // The second one's fetch now succeeds, and it holds before its delivery.
    source.clear_failing_paths();
    let held = gw.wait_for(&second, Duration::from_secs(60), |e| e["held"].is_object()).await;
    assert_eq!(held["held"]["stepId"], "0002", "{held:#}");

    target.clear_failing_paths();
    let before = target.received().len();
    let (status, resumed) = gw.post(&format!("/integrations/{code}/resume"), &json!({"recoverFailed": true})).await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["endpoint"]["recovered"][0]["exchangeId"], json!(first), "{resumed}");
    for id in [&first, &second] {
        assert_eq!(gw.wait_final(id).await["status"], "Completed", "{id}");
    }
    let applied = &target.received()[before..];
    assert_eq!(applied.len(), 2, "each delivered once after the resume");
    assert_ne!(applied[0].header("idempotency-key"), applied[1].header("idempotency-key"));
}
