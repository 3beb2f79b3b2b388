//! Event queues over HTTP: events wait while the endpoint is Disabled and arrive in one
//! exchange once it is enabled (the latest per key); an endpoint that discards events counts
//! them and delivers none; a failed event exchange keeps its events through its recovery.

use handoff_e2e::{gateway, unique_code, ExternalSystem, Gateway};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn event_based(code: &str, target: &ExternalSystem, max_attempts: u32) -> Value {
    json!({"code": code, "version": 1, "events": {"maxPerExchange": 50}, "steps": [
        {"name": "send", "type": "delivery", "retry": {"maxAttempts": max_attempts, "intervalSeconds": 1},
         "destinations": [{"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]})
}

/// Polls the endpoint's queue until `done` holds.
async fn wait_for_queue(gw: &Gateway, code: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, queue) = gw.get(&format!("/integrations/{code}/events")).await;
        assert_eq!(status, 200, "{queue}");
        if done(&queue) {
            return queue;
        }
        assert!(Instant::now() < deadline, "the queue did not reach the expected state: {queue:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn keys_and_data(delivered: &Value) -> Vec<(Value, Value)> {
    delivered.as_array().into_iter().flatten().map(|e| (e["key"].clone(), e["data"].clone())).collect()
}

#[tokio::test]
async fn events_sent_while_disabled_arrive_in_one_exchange_once_enabled_and_discarded_ones_are_only_counted() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("EVENTS");
    let mut definition = event_based(&code, &target, 3);
    definition["endpointStatus"] = json!("Disabled");
    gw.create_integration(&definition).await;
    let events = format!("/integrations/{code}/events");
    let (status, accepted) = gw
        .post(
            &events,
            &json!([
            {"key": "item-1", "type": "priceChanged", "data": {"price": 10}},
            {"key": "item-2", "type": "priceChanged", "data": {"price": 7}}]),
        )
        .await;
    assert_eq!((status.as_u16(), accepted["accepted"].as_u64()), (202, Some(2)), "{accepted}");
    let (status, _) = gw.post(&events, &json!({"key": "item-1", "type": "priceChanged", "data": {"price": 12}})).await;
    assert_eq!(status, 202);
    let (_, queue) = gw.get(&events).await;
    assert_eq!(queue["pending"], 3, "{queue}");
    assert!(queue["oldestAgeSeconds"].as_i64().is_some_and(|age| age >= 0), "{queue}");
    assert_eq!(queue["items"][2]["data"], json!({"price": 12}), "oldest first: {queue}");

    let (status, _) = gw.post(&format!("/integrations/{code}/enable"), &json!({})).await;
    assert_eq!(status, 200);
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    let exchange = gw.wait_final(&id).await;
    assert_eq!(exchange["status"], "Completed", "{exchange:#}");
    let received = target.received();
    assert_eq!(received.len(), 1, "one exchange, one delivery");
    assert_eq!(
        keys_and_data(&received[0].json()),
        [(json!("item-1"), json!({"price": 12})), (json!("item-2"), json!({"price": 7}))],
        "the latest per key, in the order the keys first arrived"
    );
    wait_for_queue(gw, &code, |q| q["pending"] == 0).await;
    let (status, refused) = gw.post("/exchanges", &json!({"integrationCode": code})).await;
    assert_eq!((status.as_u16(), refused["error"].as_str()), (409, Some("NoPendingEvents")), "{refused}");
    let (_, log) = gw.get(&format!("/integrations/{code}/log")).await;
    let invoked = log["items"].as_array().into_iter().flatten().find(|l| l["kind"] == "invoked").cloned();
    assert_eq!(invoked.map(|l| l["events"].clone()), Some(json!(2)), "{log}");

    // Discarding: counted, never kept, never delivered.
    let (status, body) = gw.patch(&format!("/integrations/{code}"), &json!({"queueStatus": "DiscardEvents"})).await;
    assert_eq!((status.as_u16(), body["endpoint"]["queueStatus"].as_str()), (200, Some("DiscardEvents")), "{body}");
    let (status, answer) = gw.post(&events, &json!({"events": [{"data": 1}, {"data": 2}, {"data": 3}]})).await;
    assert_eq!((status.as_u16(), answer["discarded"].as_u64()), (202, Some(3)), "{answer}");
    let (_, queue) = gw.get(&events).await;
    assert_eq!((queue["pending"].as_u64(), queue["discarded"].as_u64()), (Some(0), Some(3)), "{queue}");
    let (status, _) = gw.post("/exchanges", &json!({"integrationCode": code})).await;
    assert_eq!(status, 409);
    assert_eq!(target.received().len(), 1, "nothing discarded was delivered");
    let (status, body) = gw.post(&events, &json!([{"key": "k"}])).await;
    assert_eq!((status.as_u16(), body["field"].as_str()), (400, Some("[0].data")), "{body}");
}

#[tokio::test]
async fn a_failed_event_exchange_keeps_its_events_through_recovery() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    target.fail_path("/in", 503);
    let code = unique_code("EVENTS_FAIL");
    gw.create_integration(&event_based(&code, &target, 1)).await;
    let events = format!("/integrations/{code}/events");
    gw.post(&events, &json!([{"key": "a", "data": 1}, {"key": "b", "data": 1}])).await;
    let first = gw.invoke(&json!({"integrationCode": code})).await;
    assert_eq!(gw.wait_final(&first).await["status"], "Failed");
    let (_, shown) = gw.get(&format!("/integrations/{code}")).await;
    assert_eq!(shown["endpoint"]["status"], "Failed", "an event-based endpoint halts: {shown:#}");
    // Events keep arriving; those the failed exchange took stay in the queue under it.
    let (status, _) = gw.post(&events, &json!({"key": "a", "data": 2})).await;
    assert_eq!(status, 202);
    let (_, queue) = gw.get(&events).await;
    assert_eq!((queue["pending"].as_u64(), queue["takenBy"].as_str()), (Some(3), Some(first.as_str())), "{queue}");

    let refused_attempts = target.received().len();
    target.clear_failing_paths();
    let (status, resumed) = gw.post(&format!("/integrations/{code}/resume"), &json!({"recoverFailed": true})).await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(gw.wait_final(&first).await["status"], "Completed");
    let queue = wait_for_queue(gw, &code, |q| q["takenBy"].is_null()).await;
    assert_eq!(queue["pending"], 1, "only the later event is left: {queue}");
    let second = gw.invoke(&json!({"integrationCode": code})).await;
    assert_eq!(gw.wait_final(&second).await["status"], "Completed");
    let applied: Vec<Value> = target.received()[refused_attempts..]
        .iter()
        .map(|r| keys_and_data(&r.json()).into_iter().map(|(k, d)| json!([k, d])).collect())
        .collect();
    assert_eq!(applied, [json!([["a", 1], ["b", 1]]), json!([["a", 2]])], "recovery ran on the events it took");
    wait_for_queue(gw, &code, |q| q["pending"] == 0).await;
}
