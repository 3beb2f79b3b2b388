//! Unrouted messages over HTTP: a request for an integration that does not exist yet is
//! refused and kept (a large payload in S3), listed, and replayed once the integration is
//! there — delivered once, the replay recorded on the message and the exchange.

use handoff_e2e::{gateway, unique_code, ExternalSystem};
use serde_json::json;

#[tokio::test]
async fn an_unrouted_request_is_listed_and_replayed_once_the_integration_exists() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("UNROUTED");
    // Large enough to be stored as a data file set rather than inline.
    let lines: Vec<String> =
        (0..4000).map(|i| format!("order {i:05} of a batch sent before its integration")).collect();
    let payload = json!({"lines": lines});
    let (status, refused) =
        gw.post("/exchanges", &json!({"integrationCode": code, "parameters": {"batch": 9}, "payload": payload})).await;
    assert_eq!((status.as_u16(), refused["error"].as_str()), (404, Some("NotFound")), "{refused}");
    let unrouted = refused["unroutedId"].as_str().expect("kept").to_string();

    let (status, listed) = gw.get("/unrouted?limit=100").await;
    assert_eq!(status, 200, "{listed}");
    let kept = listed["items"].as_array().into_iter().flatten().find(|m| m["unroutedId"] == json!(unrouted)).cloned();
    let kept = kept.unwrap_or_else(|| panic!("listed: {listed:#}"));
    assert_eq!((kept["integrationCode"].as_str(), kept["caller"].as_str()), (Some(code.as_str()), Some("developer")));
    assert_eq!(kept["payload"]["type"], "DataFileSet", "a large payload is kept in S3: {kept:#}");
    let replay = format!("/unrouted/{unrouted}/replay");
    let (status, body) = gw.post(&replay, &json!({})).await;
    assert_eq!((status.as_u16(), body["error"].as_str()), (409, Some("NotRoutable")), "{body}");

    gw.create_integration(&json!({"code": code, "version": 1, "steps": [
        {"name": "send", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;
    let (status, replayed) = gw.post(&replay, &json!({})).await;
    assert_eq!(status, 202, "{replayed}");
    let id = replayed["exchangeId"].as_str().expect("exchange").to_string();
    let exchange = gw.wait_final(&id).await;
    assert_eq!(exchange["status"], "Completed", "{exchange:#}");
    assert_eq!(exchange["trigger"], json!({"kind": "replay", "caller": "developer"}));
    assert_eq!(exchange["parameters"], json!({"batch": 9}));
    let received = target.received();
    assert_eq!(received.len(), 1, "delivered once");
    assert_eq!(received[0].json(), payload, "the payload as it was sent");
    let (status, again) = gw.post(&replay, &json!({})).await;
    assert_eq!((status.as_u16(), again["exchangeId"].as_str()), (409, Some(id.as_str())), "{again}");
    let (_, shown) = gw.get(&format!("/unrouted/{unrouted}")).await;
    assert_eq!(shown["replay"]["exchangeId"], json!(id), "{shown:#}");
}
