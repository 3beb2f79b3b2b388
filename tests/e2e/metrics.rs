//! The functions' figures: flushed as CloudWatch embedded-metric-format documents after
//! every invocation, and summed by the emulator at its Prometheus route.

use handoff_e2e::{gateway, unique_code, ExternalSystem};
use serde_json::{json, Value};

fn delivery(code: &str, url: &str) -> Value {
    json!({"code": code, "version": 1, "steps": [{"name": "send", "type": "delivery", "retry": {"maxAttempts": 1},
        "destinations": [{"kind": "rest", "request": {"method": "POST", "url": format!("{url}/in")}}]}]})
}

/// The value of the Prometheus sample `name{labels}` (labels as rendered), if present.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn a_completed_and_a_failed_exchange_show_at_the_metrics_route_and_as_emf_documents() {
    let gw = gateway();
    let accepting = ExternalSystem::start(200, "{}").await;
    let refusing = ExternalSystem::start(422, "{}").await;
    let (ok_code, failing_code) = (unique_code("METRICS_OK"), unique_code("METRICS_FAIL"));
    gw.create_integration(&delivery(&ok_code, &accepting.url)).await;
    gw.create_integration(&delivery(&failing_code, &refusing.url)).await;
    let done = gw.invoke(&json!({"integrationCode": ok_code})).await;
    let failed = gw.invoke(&json!({"integrationCode": failing_code})).await;
    assert_eq!(gw.wait_final(&done).await["status"], "Completed");
    assert_eq!(gw.wait_final(&failed).await["status"], "Failed");

    let (status, text) = gw.get("/_emulator/metrics").await;
    assert_eq!(status, 200, "{text}");
    let text = text.as_str().expect("Prometheus text").to_string();
    let of = |code: &str| format!("integration_code=\"{code}\"");
    assert_eq!(sample(&text, "handoff_exchanges_started_sum", &format!("{},trigger=\"api\"", of(&ok_code))), Some(1.0));
    assert_eq!(sample(&text, "handoff_exchanges_completed_sum", &of(&ok_code)), Some(1.0), "{text}");
    assert_eq!(sample(&text, "handoff_exchanges_failed_sum", &of(&failing_code)), Some(1.0), "{text}");
    assert_eq!(sample(&text, "handoff_exchanges_failed_sum", &of(&ok_code)), None);
    let rejected = sample(&text, "handoff_failures_sum", "classification=\"business\",code=\"TargetRejected\"");
    assert!(rejected.is_some_and(|n| n >= 1.0), "{text}");
    let deliveries = sample(&text, "handoff_sub_step_duration_ms_count", "sub_step=\"DeliverRest\"");
    assert!(deliveries.is_some_and(|n| n >= 2.0), "{text}");

    // The same figures as the documents CloudWatch Logs would receive.
    let (status, emf) = gw.get("/_emulator/metrics/emf").await;
    assert_eq!(status, 200);
    let documents: Vec<Value> =
        emf.as_str().unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let completed = documents
        .iter()
        .find(|d| d["IntegrationCode"] == json!(ok_code) && d["ExchangesCompleted"] == 1)
        .unwrap_or_else(|| panic!("no EMF document of the completed exchange among {}", documents.len()));
    let directive = &completed["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "Handoff/handoff", "the template's namespace");
    assert_eq!(directive["Dimensions"], json!([["IntegrationCode"]]));
    assert!(completed["_aws"]["Timestamp"].is_u64(), "{completed}");
    assert!(documents.iter().any(|d| d["IntegrationCode"] == json!(failing_code) && d["ExchangesFailed"] == 1));

    // Emulator-only routes still ask for a token with the read scope.
    let (status, _) = gw.request_as(None, axum::http::Method::GET, "/_emulator/metrics", None).await;
    assert_eq!(status, 401);
}
