//! Scheduled integrations fire by themselves: the api stores an EventBridge Scheduler
//! schedule in the AWS emulator and the emulator's scheduler fires it.

use handoff_e2e::{gateway, unique_code, ExternalSystem};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_scheduled_integration_fires_by_itself() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("SCHEDULED");
    let created = gw
        .create_integration(&json!({
            "code": code, "version": 1,
            "schedule": {"expression": "cron(* * * * ? *)", "timezone": "Europe/Amsterdam"},
            "steps": [{"name": "send", "type": "delivery", "destinations": [
                {"kind": "rest", "request": {"method": "POST", "url": format!("{}/tick", target.url),
                 "body": "{\"run\": \"{{exchange.exchangeId}}\"}"}}]}]
        }))
        .await;
    assert_eq!(created["schedule"]["state"], "active", "{created:#}");

    // Every minute, on the minute: the first run is due within 60 s.
    let deadline = Instant::now() + Duration::from_secs(90);
    let exchange_id = loop {
        let (_, page) = gw.get(&format!("/exchanges?integrationCode={code}")).await;
        if let Some(first) = page["items"].as_array().and_then(|items| items.first()) {
            break first["exchangeId"].as_str().expect("id").to_string();
        }
        assert!(Instant::now() < deadline, "no scheduled exchange appeared within 90 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let exchange = gw.wait_final(&exchange_id).await;
    assert_eq!(exchange["status"], "Completed", "{exchange:#}");
    let received = target.received();
    assert!(!received.is_empty());
    assert_eq!(received[0].json(), json!({"run": exchange_id}));

    // Disabling the only version removes the schedule.
    let (status, body) = gw.patch(&format!("/integrations/{code}/versions/1"), &json!({"enabled": false})).await;
    assert_eq!(status, 200);
    assert_eq!(body["schedule"]["state"], "none", "{body:#}");
}
