//! Sign-off by the requester over HTTP: an integration with `"signoff": "requester"` waits
//! (`W`) after its last step until its requester signs it off; without a sign-off in time
//! it fails with reason Timeout, and a recovery waits for one again.

use handoff_e2e::{gateway, unique_code, ExternalSystem};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_requester_signs_off_and_a_missing_signoff_times_out_recoverably() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("SIGNOFF");
    gw.create_integration(&json!({"code": code, "version": 1, "signoff": "requester", "signoffTimeoutSeconds": 2,
        "steps": [{"name": "send", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;
    let signed = gw.invoke(&json!({"integrationCode": code, "payload": {"order": 1}})).await;
    let waiting = gw.wait_for(&signed, Duration::from_secs(30), |e| e["statusCode"] == "W").await;
    assert_eq!(target.received().len(), 1, "delivered before the wait: {waiting:#}");
    let (status, body) = gw.post(&format!("/exchanges/{signed}/signoff"), &json!({})).await;
    assert_eq!((status.as_u16(), body["signedOffBy"].as_str()), (202, Some("developer")), "{body}");
    let done = gw.wait_final(&signed).await;
    assert_eq!(done["status"], "Completed", "{done:#}");

    // No sign-off within 2 s: Failed (Timeout), recoverable; the recovery waits again.
    let late = gw.invoke(&json!({"integrationCode": code, "payload": {"order": 2}})).await;
    let failed = gw.wait_final(&late).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert!(failed["error"]["message"].as_str().is_some_and(|m| m.starts_with("Timeout")), "{failed:#}");
    let (status, body) = gw.post(&format!("/exchanges/{late}/recover"), &json!({})).await;
    assert_eq!(status, 202, "{body}");
    gw.wait_for(&late, Duration::from_secs(30), |e| e["statusCode"] == "W").await;
    let (status, _) = gw.post(&format!("/exchanges/{late}/signoff"), &json!({})).await;
    assert_eq!(status, 202);
    assert_eq!(gw.wait_final(&late).await["status"], "Completed");
    assert_eq!(target.received().len(), 2, "the recovery re-ran only the wait, not the delivery");
}
