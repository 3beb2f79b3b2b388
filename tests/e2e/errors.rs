//! The error list over HTTP: business failures carry a catalogue code and the action that
//! fixes them; someone resolves one with a note; the error-processing job re-processes it
//! (from the failed step, or re-collecting the data) and the entry re-opens if it fails again.

use handoff_e2e::{function, gateway, unique_code, ExternalSystem};
use serde_json::{json, Value};

/// The open entries of one integration.
async fn entries(code: &str, state: &str) -> Vec<Value> {
    let (status, listed) = gateway().get(&format!("/errors?integrationCode={code}&state={state}")).await;
    assert_eq!(status, 200, "{listed}");
    listed["items"].as_array().cloned().unwrap_or_default()
}

async fn resolve(error_id: &str, note: &str) -> (u16, Value) {
    let (status, body) = gateway().post(&format!("/errors/{error_id}/resolve"), &json!({"note": note})).await;
    (status.as_u16(), body)
}

/// Runs the error job for `code` and checks that `error_id`'s current resolution has been
/// re-processed (by this run, or by a scheduled run of the emulator that came first).
async fn error_job(code: &str, error_id: &str) -> Value {
    let outcome = function("handoff-jobs")
        .await
        .invoke(json!({"job": "errorProcessing", "integrationCode": code}))
        .await
        .expect("the error job runs");
    assert!(outcome["reprocessed"].is_array(), "{outcome}");
    let (_, entry) = gateway().get(&format!("/errors/{error_id}")).await;
    assert_eq!(entry["reprocessing"]["resolutionAt"], entry["resolution"]["at"], "{entry:#}");
    entry
}

#[tokio::test]
async fn a_rejected_delivery_is_listed_with_its_code_and_action_then_resolved_and_reprocessed_to_completed() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    target.script([(422, r#"{"message": "postcode missing"}"#)]);
    let code = unique_code("REJECTED");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [{"name": "send", "type": "delivery",
        "destinations": [{"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code, "payload": {"id": 7}})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!((failed["status"].as_str(), failed["error"]["code"].as_str()), (Some("Failed"), Some("TargetRejected")));

    let open = entries(&code, "open").await;
    assert_eq!(open.len(), 1, "{open:#?}");
    let entry = &open[0];
    assert!(entry["errorId"].as_str().is_some_and(|e| e.starts_with(&format!("{id}."))), "{entry:#}");
    assert_eq!((entry["classification"].as_str(), entry["code"].as_str()), (Some("business"), Some("TargetRejected")));
    assert!(entry["action"].as_str().is_some_and(|a| a.contains("resolve the error")), "{entry:#}");
    assert_eq!((entry["state"].as_str(), entry["occurrences"].as_u64()), (Some("open"), Some(1)));
    let error_id = entry["errorId"].as_str().expect("errorId").to_string();
    let (status, one) = gw.get(&format!("/errors/{error_id}")).await;
    assert_eq!((status.as_u16(), &one["action"]), (200, &entry["action"]));

    // Bad requests name their field; a resolution is said once.
    assert_eq!(resolve(&error_id, " ").await.1["field"], "note");
    let (status, _) = gw.post(&format!("/errors/{error_id}/resolve"), &json!({"note": "x", "by": "me"})).await;
    assert_eq!(status, 400);
    assert_eq!(resolve(&format!("{id}.99"), "fixed").await.0, 404);
    assert_eq!(gw.get("/errors/not-an-id").await.0, 400);
    let (status, resolved) = resolve(&error_id, "the customer added the postcode").await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(
        (resolved["state"].as_str(), resolved["resolution"]["by"].as_str()),
        (Some("resolved"), Some("developer"))
    );
    let (status, again) = resolve(&error_id, "again").await;
    assert_eq!((status, again["error"].as_str()), (409, Some("InvalidState")), "{again}");
    assert!(entries(&code, "open").await.is_empty());

    let entry = error_job(&code, &error_id).await;
    let done = gw.wait_final(&id).await;
    assert_eq!((done["status"].as_str(), done["recoveries"].as_u64()), (Some("Completed"), Some(1)), "{done:#}");
    assert_eq!(target.received().len(), 2, "delivered again once");
    assert_eq!(entry["state"], "resolved");
    let outcome_text = entry["reprocessing"]["outcome"].as_str().unwrap_or_default();
    assert!(outcome_text.contains("failed step"), "{entry:#}");

    // Recorded on the exchange and in the endpoint log; a resolution is re-processed once.
    let (_, log) = gw.get(&format!("/integrations/{code}/log")).await;
    let recovery = log["items"].as_array().into_iter().flatten().find(|i| i["trigger"]["kind"] == "recovery");
    let caller = recovery.and_then(|r| r["trigger"]["caller"].as_str()).unwrap_or_default().to_string();
    assert!(caller.contains("error-processing job") && caller.contains(&error_id), "{log:#}");
    let (_, logs) = gw.get(&format!("/exchanges/{id}/logs")).await;
    assert!(logs.to_string().contains("the customer added the postcode"), "{logs:#}");
    let outcome =
        function("handoff-jobs").await.invoke(json!({"job": "errorProcessing", "integrationCode": code})).await;
    assert_eq!(outcome.expect("runs")["reprocessed"], json!([]), "re-processed once");
}

#[tokio::test]
async fn with_re_collection_the_fixed_data_is_fetched_again_and_a_repeated_failure_reopens_the_error() {
    let gw = gateway();
    let name = unique_code("status-codes").to_ascii_lowercase().replace('_', "-");
    let mapping = json!({"values": {"status": {"A": "active"}}});
    let (status, _) =
        gw.request(axum::http::Method::PUT, &format!("/mappings/{name}"), Some(mapping.to_string().into_bytes())).await;
    assert_eq!(status, 201);
    // The source answers bad data twice (the first fix did not take), then the fixed data.
    let source = ExternalSystem::start(200, "id,status\np1,A\n").await;
    source.script([(200, "id,status\np1,X\n"), (200, "id,status\np1,X\n")]);
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("RECOLLECT");
    gw.create_integration(&json!({"code": code, "version": 1, "errorProcessing": {"from": "collection"}, "steps": [
        {"name": "fetch", "type": "dataCollection", "kind": "query", "request": {"url": format!("{}/data", source.url)}},
        {"name": "map", "type": "transformation", "input": {"format": "csv"}, "output": {"format": "ndjson"}, "mapping": name},
        {"name": "send", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    assert_eq!(gw.wait_final(&id).await["error"]["code"], "UnmappedValue");
    let open = entries(&code, "open").await;
    assert_eq!(open.len(), 1, "{open:#?}");
    let error_id = open[0]["errorId"].as_str().expect("errorId").to_string();
    assert!(open[0]["action"].as_str().is_some_and(|a| a.contains("mapping")), "{:#}", open[0]);

    assert_eq!(resolve(&error_id, "fixed p1 at the source").await.0, 200);
    error_job(&code, &error_id).await;
    let failed_again =
        gw.wait_for(&id, std::time::Duration::from_secs(60), |e| e["recoveries"] == 1 && e["status"] == "Failed").await;
    assert_eq!(failed_again["error"]["code"], "UnmappedValue");
    let reopened = entries(&code, "open").await;
    assert_eq!(reopened.len(), 1, "{reopened:#?}");
    assert_eq!(
        (reopened[0]["errorId"].as_str(), reopened[0]["occurrences"].as_u64()),
        (Some(error_id.as_str()), Some(2))
    );
    assert_eq!(reopened[0]["resolution"]["note"], "fixed p1 at the source", "the history stays");

    assert_eq!(resolve(&error_id, "really fixed now").await.0, 200);
    error_job(&code, &error_id).await;
    let done = gw.wait_for(&id, std::time::Duration::from_secs(60), |e| e["status"] == "Completed").await;
    assert_eq!(done["recoveries"], 2, "{done:#}");
    assert_eq!(source.received_at("/data").len(), 3, "each re-processing fetched the data again");
    let delivered = String::from_utf8_lossy(&target.received()[0].body).into_owned();
    assert_eq!(delivered, "{\"id\":\"p1\",\"status\":\"active\"}\n");
}
