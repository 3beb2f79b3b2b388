//! The waiting sub-steps of an extract and an activity, run end to end: a partner answers by
//! callback with files, messages and recovery links, and Handoff collects the files
//! (`CollectData`), keeps the messages as user log lines (`CollectMessages`) and calls the
//! recovery links once (`CheckRecovery`).

use handoff_e2e::{gateway, sub_steps, unique_code, ExternalSystem};
use serde_json::json;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// Waits for the partner's first call at `path` and returns the callback URL it carried.
async fn callback_url(partner: &ExternalSystem, path: &str) -> String {
    for _ in 0..300 {
        if let Some(call) = partner.received_at(path).first() {
            return call.header("x-handoff-callback-url").expect("X-Handoff-Callback-Url header");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the partner was never called at {path}");
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// The exchange's user log lines, in order.
async fn user_lines(id: &str) -> Vec<String> {
    let (_, logs) = gateway().get(&format!("/exchanges/{id}/logs")).await;
    logs["items"]
        .as_array()
        .expect("log items")
        .iter()
        .filter(|l| l["type"] == "User")
        .filter_map(|l| l["line"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn an_extract_with_download_messages_collects_its_files_and_keeps_the_partners_messages() {
    let gw = gateway();
    // Answers the extract request with 202, then serves the extracted file.
    let partner = ExternalSystem::start(200, "id,name\n1,Alpha\n").await;
    partner.script([(202, "{}")]);
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("EXTRACT_MESSAGES");
    gw.create_integration(&json!({
        "code": code, "version": 1,
        "steps": [
            {"name": "extract", "type": "dataCollection", "kind": "extract", "downloadMessages": true,
             "request": {"method": "POST", "url": format!("{}/extracts", partner.url)}},
            {"name": "send", "type": "delivery", "destinations": [
                {"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]
    }))
    .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    gw.wait_for(&id, MINUTE, |e| e["statusCode"] == "W").await;
    let url = callback_url(&partner, "/extracts").await;

    let callback = json!({
        "status": "success",
        "files": [{"name": "providers.csv", "url": format!("{}/files/providers.csv", partner.url)}],
        "messages": ["1 row extracted", {"warning": "row 7 skipped: no id"}]
    });
    assert_eq!(gw.post_callback(&url, &callback).await.0, 202);
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(
        sub_steps(&done)[1..5].to_vec(),
        owned(&[
            ("InvokeExtract", "Done"),
            ("ReceiveNotification", "Done"),
            ("CollectData", "Done"),
            ("CollectMessages", "Done")
        ])
    );
    assert_eq!(partner.received_at("/files/providers.csv").len(), 1, "the file is fetched once");
    let delivered = target.received();
    assert_eq!(delivered.len(), 1);
    assert_eq!(&delivered[0].body[..], b"id,name\n1,Alpha\n", "the collected file is what flows on");
    assert_eq!(
        user_lines(&id).await,
        ["1 row extracted", r#"{"warning":"row 7 skipped: no id"}"#],
        "the partner's messages are the exchange's user log lines, strings as they are, objects as JSON"
    );
}

#[tokio::test]
async fn an_activity_with_auto_recovery_calls_the_recovery_links_of_its_callback_once() {
    let gw = gateway();
    let partner = ExternalSystem::start(200, "{}").await;
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("ACTIVITY_RECOVERY");
    gw.create_integration(&json!({
        "code": code, "version": 1,
        "steps": [
            {"name": "reconcile", "type": "invokeProcess", "kind": "activity",
             "expectNotification": true, "autoRecovery": true, "downloadMessages": true,
             "request": {"method": "POST", "url": format!("{}/activities", partner.url)}},
            {"name": "send", "type": "delivery", "destinations": [
                {"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]
    }))
    .await;
    let id = gw.invoke(&json!({"integrationCode": code, "payload": {"batch": 7}})).await;
    gw.wait_for(&id, MINUTE, |e| e["statusCode"] == "W").await;
    let url = callback_url(&partner, "/activities").await;
    let activity_call = &partner.received_at("/activities")[0];
    assert_eq!(activity_call.json(), json!({"batch": 7}), "the activity gets the exchange's payload");

    let callback = json!({
        "status": "success",
        "data": {"reconciled": 41, "parked": 2},
        "recoveryLinks": [
            {"url": format!("{}/recover/parked-1", partner.url)},
            {"url": format!("{}/recover/parked-2", partner.url), "method": "put"}
        ],
        "messages": ["2 records parked for recovery"]
    });
    assert_eq!(gw.post_callback(&url, &callback).await.0, 202);
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(
        sub_steps(&done)[1..6].to_vec(),
        owned(&[
            ("InvokeActivity", "Done"),
            ("ReceiveNotification", "Done"),
            ("CollectData", "Done"),
            ("CheckRecovery", "Done"),
            ("CollectMessages", "Done")
        ])
    );
    let recoveries = partner.received_at("/recover/");
    let calls: Vec<(String, String)> = recoveries.iter().map(|r| (r.method.clone(), r.path.clone())).collect();
    assert_eq!(
        calls,
        owned(&[("POST", "/recover/parked-1"), ("PUT", "/recover/parked-2")]),
        "each recovery link is called once, with its method"
    );
    for call in &recoveries {
        let key = call.header("idempotency-key").expect("a recovery call carries an Idempotency-Key");
        assert!(!key.is_empty());
    }
    assert_eq!(target.received()[0].json(), json!({"reconciled": 41, "parked": 2}), "the callback's data flows on");
    assert_eq!(user_lines(&id).await, ["2 records parked for recovery"]);
    let (_, logs) = gw.get(&format!("/exchanges/{id}/logs")).await;
    let system: Vec<&str> = logs["items"]
        .as_array()
        .expect("log items")
        .iter()
        .filter(|l| l["type"] == "System")
        .filter_map(|l| l["line"].as_str())
        .collect();
    assert!(
        system.iter().any(|l| l.contains("Recovery link PUT") && l.contains("/recover/parked-2: HTTP 200")),
        "the recovery calls are logged: {system:#?}"
    );
}

#[tokio::test]
async fn an_activity_without_auto_recovery_leaves_the_recovery_links_alone() {
    let gw = gateway();
    let partner = ExternalSystem::start(200, "{}").await;
    let code = unique_code("ACTIVITY_NO_RECOVERY");
    gw.create_integration(&json!({
        "code": code, "version": 1,
        "steps": [
            {"name": "reconcile", "type": "invokeProcess", "kind": "activity", "expectNotification": true,
             "request": {"method": "POST", "url": format!("{}/activities", partner.url)}}]
    }))
    .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    gw.wait_for(&id, MINUTE, |e| e["statusCode"] == "W").await;
    let url = callback_url(&partner, "/activities").await;
    let callback =
        json!({"status": "success", "recoveryLinks": [{"url": format!("{}/recover/parked-1", partner.url)}]});
    assert_eq!(gw.post_callback(&url, &callback).await.0, 202);
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    let planned: Vec<String> = sub_steps(&done).into_iter().map(|(s, _)| s).collect();
    assert!(!planned.iter().any(|s| s == "CheckRecovery" || s == "CollectMessages"), "{planned:?}");
    assert!(partner.received_at("/recover/").is_empty(), "no recovery link is called without autoRecovery");
}
