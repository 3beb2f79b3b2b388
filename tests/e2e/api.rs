//! The HTTP API's contract: version selection, validation errors, listing, health.

use handoff_e2e::{gateway, unique_code, ExternalSystem};
use serde_json::{json, Value};

fn delivering_to(code: &str, version: Value, enabled: bool, target: &str) -> Value {
    json!({
        "code": code, "version": version, "enabled": enabled,
        "steps": [{"name": "send", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{target}/in")}}]}]
    })
}

#[tokio::test]
async fn version_selection_through_post_exchanges() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("VERSIONS");
    gw.create_integration(&delivering_to(&code, Value::Null, true, &target.url)).await;
    gw.create_integration(&delivering_to(&code, json!(1), true, &target.url)).await;
    gw.create_integration(&delivering_to(&code, json!(2), true, &target.url)).await;
    gw.create_integration(&delivering_to(&code, json!(3), false, &target.url)).await;

    let (status, body) = gw.post("/exchanges", &json!({"integrationCode": code})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["integrationVersion"], 2, "highest enabled version");
    assert_eq!(body["status"], "New");
    assert!(body["exchangeId"].is_string());

    let (status, body) = gw.post("/exchanges", &json!({"integrationCode": code, "integrationVersion": 1})).await;
    assert_eq!((status.as_u16(), body["integrationVersion"].clone()), (202, json!(1)));

    let (status, body) = gw.post("/exchanges", &json!({"integrationCode": code, "integrationVersion": 3})).await;
    assert_eq!(status, 409, "a disabled version conflicts: {body}");
    assert_eq!(body["error"], "VersionDisabled");

    let (status, body) = gw.post("/exchanges", &json!({"integrationCode": code, "integrationVersion": 7})).await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = gw.post("/exchanges", &json!({"integrationCode": unique_code("NOPE")})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "NotFound");

    // Disable 1 and 2: only the null version is left enabled.
    for v in [1, 2] {
        let (status, body) = gw.patch(&format!("/integrations/{code}/versions/{v}"), &json!({"enabled": false})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["enabled"], false);
    }
    let (status, body) = gw.post("/exchanges", &json!({"integrationCode": code})).await;
    assert_eq!((status.as_u16(), body["integrationVersion"].clone()), (202, Value::Null), "{body}");

    let (status, _) = gw.patch(&format!("/integrations/{code}/versions/null"), &json!({"enabled": false})).await;
    assert_eq!(status, 200);
    let (status, body) = gw.post("/exchanges", &json!({"integrationCode": code})).await;
    assert_eq!(status, 404, "nothing enabled: {body}");

    let (status, versions) = gw.get(&format!("/integrations/{code}")).await;
    assert_eq!(status, 200);
    let listed: Vec<Value> = versions["versions"].as_array().unwrap().iter().map(|v| v["version"].clone()).collect();
    assert_eq!(listed, vec![json!(3), json!(2), json!(1), Value::Null]);
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;

    let (status, body) = gw.request(reqwest::Method::POST, "/integrations", Some(b"{not json".to_vec())).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "InvalidJson");

    let code = unique_code("BAD");
    let mut missing_url = delivering_to(&code, json!(1), true, &target.url);
    missing_url["steps"][0]["destinations"][0]["request"].as_object_mut().unwrap().remove("url");
    let (status, body) = gw.post("/integrations", &missing_url).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "InvalidDefinition");
    assert_eq!(body["field"], "steps[0].destinations[0].request.url");
    assert!(body["message"].as_str().unwrap().contains("is required"));

    let mut no_steps = delivering_to(&code, json!(1), true, &target.url);
    no_steps.as_object_mut().unwrap().remove("steps");
    let (status, body) = gw.post("/integrations", &no_steps).await;
    assert_eq!((status.as_u16(), body["field"].clone()), (400, json!("steps")), "{body}");

    let mut unknown_type = delivering_to(&code, json!(1), true, &target.url);
    unknown_type["steps"][0]["type"] = json!("teleport");
    let (status, body) = gw.post("/integrations", &unknown_type).await;
    assert_eq!((status.as_u16(), body["field"].clone()), (400, json!("steps[0].type")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("teleport"));

    let mut bad_jq = delivering_to(&code, json!(1), true, &target.url);
    bad_jq["steps"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"name": "t", "type": "transformation", "function": {"jq": "map("}}));
    let (status, body) = gw.post("/integrations", &bad_jq).await;
    assert_eq!((status.as_u16(), body["field"].clone()), (400, json!("steps[0].function.jq")), "{body}");

    gw.create_integration(&delivering_to(&code, json!(1), true, &target.url)).await;
    let (status, body) = gw.post("/integrations", &delivering_to(&code, json!(1), true, &target.url)).await;
    assert_eq!(status, 409, "duplicate version: {body}");
    assert_eq!(body["error"], "AlreadyExists");

    let (status, body) = gw.get("/exchanges/does-not-exist").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "NotFound");

    let (status, body) = gw.post("/exchanges", &json!({"integrationVersion": 1})).await;
    assert_eq!((status.as_u16(), body["field"].clone()), (400, json!("integrationCode")), "{body}");

    let (status, body) = gw.post("/exchanges", &json!({"integrationCode": code, "parameters": [1]})).await;
    assert_eq!((status.as_u16(), body["field"].clone()), (400, json!("parameters")), "{body}");

    let (status, body) = gw.get("/exchanges?status=Sleeping").await;
    assert_eq!((status.as_u16(), body["field"].clone()), (400, json!("status")), "{body}");

    let (status, body) = gw.patch(&format!("/integrations/{code}/versions/1"), &json!({"steps": []})).await;
    assert_eq!((status.as_u16(), body["field"].clone()), (400, json!("steps")), "steps are immutable: {body}");

    let (status, _) = gw.get("/no/such/route").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_oversized_request_is_refused_with_413() {
    let gw = gateway();
    let code = unique_code("HUGE");
    let big = "x".repeat(7 * 1024 * 1024);
    let body = format!(r#"{{"integrationCode": "{code}", "payload": "{big}"}}"#);
    let (status, body) = gw.request(reqwest::Method::POST, "/exchanges", Some(body.into_bytes())).await;
    assert_eq!(status, 413, "{body}");
}

#[tokio::test]
async fn exchanges_are_listed_newest_first_with_pagination() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("LIST");
    gw.create_integration(&delivering_to(&code, json!(1), true, &target.url)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(gw.invoke(&json!({"integrationCode": code})).await);
    }
    for id in &ids {
        gw.wait_final(id).await;
    }

    let (status, first) = gw.get(&format!("/exchanges?integrationCode={code}&limit=2")).await;
    assert_eq!(status, 200, "{first}");
    let cursor = first["nextCursor"].as_str().expect("a second page").to_string();
    let (_, second) = gw.get(&format!("/exchanges?integrationCode={code}&limit=2&cursor={cursor}")).await;
    let listed: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|e| e["exchangeId"].as_str().unwrap().to_string())
        .collect();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);

    let (_, completed) = gw.get(&format!("/exchanges?integrationCode={code}&status=C")).await;
    assert_eq!(completed["items"].as_array().map(Vec::len), Some(3));
    let (_, by_status) = gw.get("/exchanges?status=Completed&limit=100").await;
    assert!(by_status["items"].as_array().unwrap().iter().all(|e| e["status"] == "Completed"));
}

#[tokio::test]
async fn health_reports_every_component() {
    let (status, body) = gateway().get("/health/components").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    for component in ["integrations", "exchanges", "queues", "dataFiles"] {
        assert_eq!(body["components"][component]["status"], "ok", "{body}");
    }
}
