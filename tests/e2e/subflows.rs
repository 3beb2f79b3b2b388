//! Subflows: an exchange fans out into sub-exchanges and waits for all of them.

use handoff_e2e::{gateway, unique_code, ExternalSystem};
use serde_json::{json, Value};
use std::time::Duration;

/// A child integration: shapes its own result from its parameters, delivers it to
/// `{target}/regions/{region}`.
fn child(code: &str, target: &str) -> Value {
    json!({"code": code, "version": 1, "steps": [
        {"name": "shape", "type": "transformation", "function": {"jq": "{region: $parameters.region, by: $exchange.exchangeId}"}},
        {"name": "send", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{target}/regions/{{{{parameters.region}}}}")}}]}
    ]})
}

/// A parent: one sub-exchange per region of its payload, then delivers what they returned.
fn parent(code: &str, child_code: &str, target: &str) -> Value {
    json!({"code": code, "version": 1, "steps": [
        {"name": "perRegion", "type": "subflow", "integrationCode": child_code, "function": {"jq": "map({region: .})"}},
        {"name": "report", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{target}/summary")}}]}
    ]})
}

async fn children_of(id: &str) -> Vec<Value> {
    let (status, page) = gateway().get(&format!("/exchanges?parentExchangeId={id}&limit=100")).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().expect("items").clone()
}

fn regions(results: &Value) -> Vec<String> {
    results.as_array().expect("array").iter().map(|r| r["region"].as_str().unwrap_or("?").to_string()).collect()
}

#[tokio::test]
async fn a_parent_completes_with_the_payloads_of_its_sub_exchanges() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let (child_code, parent_code) = (unique_code("CHILD"), unique_code("PARENT"));
    gw.create_integration(&child(&child_code, &target.url)).await;
    gw.create_integration(&parent(&parent_code, &child_code, &target.url)).await;

    let id = gw.invoke(&json!({"integrationCode": parent_code, "payload": ["north", "south", "east"]})).await;
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(done["subExchanges"], json!({"total": 3, "completed": 3, "failed": 0, "running": 0}));
    let subs: Vec<&str> = done["steps"].as_array().unwrap().iter().map(|s| s["subStep"].as_str().unwrap()).collect();
    assert_eq!(subs[1..4], ["CollectSubflowProperties", "CreateSubExchanges", "ControlSubflow"]);

    for region in ["north", "south", "east"] {
        let got = target.received_at(&format!("/regions/{region}"));
        assert_eq!(got.len(), 1, "{region} received its own delivery once");
        assert_eq!(got[0].json()["region"], region);
    }
    let summary = target.received_at("/summary");
    assert_eq!(summary.len(), 1);
    assert_eq!(regions(&summary[0].json()), ["north", "south", "east"], "results in sub-exchange order");

    let children = children_of(&id).await;
    assert_eq!(children.len(), 3);
    assert!(children.iter().all(|c| c["status"] == "Completed" && c["parent"]["exchangeId"] == json!(id)));
    let by: Vec<Value> = summary[0].json().as_array().unwrap().iter().map(|r| r["by"].clone()).collect();
    let ids: Vec<Value> = children.iter().map(|c| c["exchangeId"].clone()).collect();
    assert_eq!(by, ids, "each result came from its own sub-exchange, listed in order");
}

#[tokio::test]
async fn a_failed_sub_exchange_fails_the_parent_and_recovery_reruns_only_it() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    target.fail_path("/regions/south", 400);
    let (child_code, parent_code) = (unique_code("CHILDF"), unique_code("PARENTF"));
    gw.create_integration(&child(&child_code, &target.url)).await;
    gw.create_integration(&parent(&parent_code, &child_code, &target.url)).await;

    let id = gw.invoke(&json!({"integrationCode": parent_code, "payload": ["north", "south", "east"]})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert_eq!(failed["error"]["classification"], "business", "classification from the sub-exchange");
    assert_eq!(failed["error"]["subStep"], "ControlSubflow");
    assert_eq!(failed["subExchanges"], json!({"total": 3, "completed": 2, "failed": 1, "running": 0}));
    let children = children_of(&id).await;
    let statuses: Vec<&str> = children.iter().map(|c| c["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["Completed", "Failed", "Completed"], "the parent failed only once all were final");

    target.clear_failing_paths();
    let (status, body) = gw.post(&format!("/exchanges/{id}/recover"), &json!({})).await;
    assert_eq!(status, 202, "{body}");
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(done["subExchanges"]["completed"], 3);
    assert_eq!(target.received_at("/regions/north").len(), 1, "completed sub-exchanges did not run again");
    assert_eq!(target.received_at("/regions/east").len(), 1);
    assert_eq!(target.received_at("/regions/south").len(), 2);
    let children = children_of(&id).await;
    let recoveries: Vec<Value> = children.iter().map(|c| c["recoveries"].clone()).collect();
    assert_eq!(recoveries, [json!(0), json!(1), json!(0)]);
    assert_eq!(regions(&target.received_at("/summary")[0].json()), ["north", "south", "east"]);
}

#[tokio::test]
async fn subflows_nest() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let (leaf, middle, top) = (unique_code("LEAF"), unique_code("MIDDLE"), unique_code("TOP"));
    gw.create_integration(&child(&leaf, &target.url)).await;
    gw.create_integration(&json!({"code": middle, "version": 1, "steps": [
        {"name": "fan", "type": "subflow", "integrationCode": leaf, "function": {"jq": "$parameters.regions | map({region: .})"}}]}))
    .await;
    gw.create_integration(&json!({"code": top, "version": 1, "steps": [
        {"name": "fan", "type": "subflow", "integrationCode": middle, "function": {"jq": "map({regions: .})"}},
        {"name": "report", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{}/summary", target.url)}}]}]}))
        .await;

    let id = gw.invoke(&json!({"integrationCode": top, "payload": [["a", "b"], ["c"]]})).await;
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    let summary = target.received_at("/summary")[0].json();
    let nested: Vec<Vec<String>> = summary.as_array().unwrap().iter().map(regions).collect();
    assert_eq!(nested, vec![vec!["a", "b"], vec!["c"]]);
    let middles = children_of(&id).await;
    assert_eq!(middles.len(), 2);
    assert_eq!(children_of(middles[0]["exchangeId"].as_str().unwrap()).await.len(), 2);
}

#[tokio::test]
async fn a_duplicate_completion_message_is_not_counted_twice() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let (child_code, parent_code) = (unique_code("CHILDD"), unique_code("PARENTD"));
    gw.create_integration(&child(&child_code, &target.url)).await;
    gw.create_integration(&parent(&parent_code, &child_code, &target.url)).await;
    let id = gw.invoke(&json!({"integrationCode": parent_code, "payload": ["x", "y"]})).await;
    let before = gw.wait_final(&id).await;
    assert_eq!(before["subExchanges"], json!({"total": 2, "completed": 2, "failed": 0, "running": 0}));

    // Replay a sub-exchange's sign-off and the parent's ControlSubflow handoff, as SQS may.
    let first = &children_of(&id).await[0];
    let child_id = first["exchangeId"].as_str().unwrap();
    let child_detail = gw.exchange(child_id).await;
    let signoff = child_detail["steps"].as_array().unwrap().last().unwrap().clone();
    let control = &before["steps"][3];
    let sqs = handoff_e2e::sqs_client().await;
    let queue = gw.var("handoff-worker-control", "HANDOFF_QUEUE_CONTROL_URL");
    for message in [
        json!({"exchangeId": child_id, "integrationCode": child_code, "integrationVersion": 1, "stepId": signoff["stepId"],
               "subStep": "ExchangeSignoff", "attempt": 1, "input": signoff["payload"], "parameters": first["parameters"],
               "parent": first["parent"]}),
        json!({"exchangeId": id, "integrationCode": parent_code, "integrationVersion": 1, "stepId": control["stepId"],
               "subStep": "ControlSubflow", "attempt": 1, "parameters": {}}),
    ] {
        sqs.send_message().queue_url(&queue).message_body(message.to_string()).send().await.expect("send duplicate");
        handoff_e2e::wait_until_drained(&sqs, &queue, Duration::from_secs(30)).await;
    }
    let after = gw.exchange(&id).await;
    assert_eq!(after["subExchanges"], before["subExchanges"], "counted once");
    assert_eq!(after["steps"], before["steps"]);
    assert_eq!(target.received_at("/summary").len(), 1);
}

#[tokio::test]
async fn a_parent_that_times_out_times_out_its_running_sub_exchanges() {
    let gw = gateway();
    let partner = ExternalSystem::start(202, "{}").await;
    let (child_code, parent_code) = (unique_code("CHILDW"), unique_code("PARENTSLA"));
    gw.create_integration(&json!({"code": child_code, "version": 1, "steps": [
        {"name": "settle", "type": "invokeProcess", "kind": "process",
         "request": {"method": "POST", "url": format!("{}/jobs", partner.url)}, "expectNotification": true}]}))
        .await;
    let mut p = parent(&parent_code, &child_code, &partner.url);
    // Long enough to see the parent waiting on a loaded machine, short enough to wait out.
    p["slaSeconds"] = json!(10);
    gw.create_integration(&p).await;

    let id = gw.invoke(&json!({"integrationCode": parent_code, "payload": ["a", "b"]})).await;
    let waiting = gw.wait_for(&id, Duration::from_secs(30), |e| e["statusCode"] == "WS").await;
    assert_eq!(waiting["status"], "WaitingForSubExchangesToFinish");
    assert_eq!(waiting["subExchanges"]["running"], 2);
    let timed_out = gw.wait_final(&id).await;
    assert_eq!(timed_out["status"], "TimedOut", "{timed_out:#}");
    for c in children_of(&id).await {
        let c = gw.wait_final(c["exchangeId"].as_str().unwrap()).await;
        assert_eq!(c["status"], "TimedOut", "{c:#}");
        assert!(c["error"]["message"].as_str().unwrap().contains("parent"), "{c:#}");
    }
}

#[tokio::test]
async fn a_subflow_that_starts_its_own_integration_is_refused_at_creation() {
    let gw = gateway();
    let code = unique_code("SELF_FAN");
    let (status, body) = gw
        .post(
            "/integrations",
            &json!({"code": code, "version": 1, "steps": [
                {"name": "again", "type": "subflow", "integrationCode": code, "function": {"jq": "[{}, {}]"}}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "steps[0].integrationCode", "{body}");
    let (status, _) = gw.get(&format!("/integrations/{code}")).await;
    assert_eq!(status, 404, "nothing stored");
}
