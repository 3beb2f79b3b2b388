//! Endpoints over HTTP: a new code starts Disabled and refuses exchanges until an operator
//! enables it; disabling holds it again, with who and why on the endpoint.

use handoff_e2e::{gateway, unique_code, ExternalSystem};
use serde_json::json;

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
