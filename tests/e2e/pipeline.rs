//! Exchanges running end to end: query → transformation → REST delivery.

use handoff_e2e::{gateway, sub_steps, unique_code, ExternalSystem};
use serde_json::{json, Value};
use std::time::Duration;

fn providers() -> Value {
    json!([
        {"providerId": 1, "displayName": "Alpha", "region": "north"},
        {"providerId": 2, "displayName": "Beta", "region": "south"}
    ])
}

fn pipeline(code: &str, source: &str, target: &str, condition: Option<&str>) -> Value {
    let mut transform = json!({
        "name": "map", "type": "transformation",
        "function": {"jq": "map({id: .providerId, name: .displayName, run: $exchange.exchangeId})"},
        "output": {"format": "json"}
    });
    if let Some(condition) = condition {
        transform["condition"] = json!(condition);
    }
    json!({
        "code": code, "version": 1, "enabled": true,
        "steps": [
            {"name": "fetch", "type": "dataCollection", "kind": "query",
             "request": {"method": "GET", "url": format!("{source}/providers?region={{{{parameters.region}}}}"),
                         "headers": {"Accept": "application/json"}}},
            transform,
            {"name": "send", "type": "delivery", "destinations": [
                {"kind": "rest", "main": true, "request": {"method": "POST", "url": format!("{target}/providers")}}]}
        ]
    })
}

#[tokio::test]
async fn happy_path_completes_every_sub_step_and_delivers_once() {
    let gw = gateway();
    let source = ExternalSystem::start(200, providers().to_string()).await;
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("HAPPY");
    gw.create_integration(&pipeline(&code, &source.url, &target.url, None)).await;

    let id = gw.invoke(&json!({"integrationCode": code, "parameters": {"region": "north west"}})).await;
    let exchange = gw.wait_final(&id).await;

    assert_eq!(exchange["status"], "Completed", "{exchange:#}");
    assert_eq!(exchange["statusCode"], "C");
    assert_eq!(
        sub_steps(&exchange),
        ["ExchangeTriggered", "InvokeQuery", "Transform", "DeliverRest", "ExchangeSignoff"]
            .iter()
            .map(|s| (s.to_string(), "Done".to_string()))
            .collect::<Vec<_>>()
    );
    assert!(exchange["steps"].as_array().unwrap().iter().all(|s| s["statusCode"] == "D" && s["attempts"] == 1));

    let queried = source.received();
    assert_eq!(queried.len(), 1);
    assert_eq!(queried[0].path, "/providers?region=north%20west", "parameters are URL-encoded into the query");

    let delivered = target.received();
    assert_eq!(delivered.len(), 1, "the target receives the payload exactly once");
    assert_eq!(delivered[0].method, "POST");
    assert_eq!(
        delivered[0].json(),
        json!([{"id": 1, "name": "Alpha", "run": id}, {"id": 2, "name": "Beta", "run": id}])
    );
    let key = delivered[0].header("idempotency-key").expect("Idempotency-Key header");
    assert_eq!(key.len(), 32);

    // Logs name their step and never carry payload contents.
    let (_, logs) = gw.get(&format!("/exchanges/{id}/logs")).await;
    let lines = logs["items"].as_array().expect("log items");
    assert!(lines.len() >= 5, "{logs:#}");
    assert!(lines.iter().all(|l| l["stepId"].is_string() && l["type"] == "System"));
    let text = logs.to_string();
    assert!(!text.contains("Alpha") && !text.contains("displayName"), "payload leaked into logs: {text}");
}

#[tokio::test]
async fn a_false_condition_skips_the_step_and_passes_the_payload_on() {
    let gw = gateway();
    let source = ExternalSystem::start(200, providers().to_string()).await;
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("SKIP");
    gw.create_integration(&pipeline(&code, &source.url, &target.url, Some("length > 5"))).await;

    let id = gw.invoke(&json!({"integrationCode": code, "parameters": {"region": "x"}})).await;
    let exchange = gw.wait_final(&id).await;

    assert_eq!(exchange["status"], "Completed", "{exchange:#}");
    let steps = sub_steps(&exchange);
    assert_eq!(steps[2], ("ConditionInvocation".to_string(), "Done".to_string()));
    assert_eq!(steps[3], ("Transform".to_string(), "Skipped".to_string()));
    assert_eq!(exchange["steps"][3]["statusCode"], "S");
    assert_eq!(steps[4], ("DeliverRest".to_string(), "Done".to_string()));
    let delivered = target.received();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].json(), providers(), "the untransformed payload flows on");
}

#[tokio::test]
async fn wait_seconds_answers_200_with_the_final_exchange() {
    let gw = gateway();
    let source = ExternalSystem::start(200, providers().to_string()).await;
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("WAIT");
    gw.create_integration(&pipeline(&code, &source.url, &target.url, None)).await;

    let (status, exchange) = gw
        .post("/exchanges", &json!({"integrationCode": code, "parameters": {"region": "n"}, "waitSeconds": 20}))
        .await;
    assert_eq!(status, 200, "{exchange:#}");
    assert_eq!(exchange["status"], "Completed");
    assert_eq!(exchange["steps"].as_array().map(Vec::len), Some(5));
    assert_eq!(target.received().len(), 1);
}

#[tokio::test]
async fn wait_seconds_past_the_wait_answers_202_with_the_exchange_as_it_stands() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    // The source keeps answering 503, so the exchange is still retrying when the wait is over.
    let source = ExternalSystem::start(503, "{}").await;
    let code = unique_code("WAITOVER");
    let mut definition = pipeline(&code, &source.url, &target.url, None);
    definition["steps"][0]["retry"] = json!({"maxAttempts": 5, "intervalSeconds": 30});
    gw.create_integration(&definition).await;

    let (status, exchange) =
        gw.post("/exchanges", &json!({"integrationCode": code, "parameters": {"region": "n"}, "waitSeconds": 1})).await;
    assert_eq!(status, 202, "{exchange:#}");
    assert_eq!(exchange["statusCode"], "S");
    assert!(exchange["steps"].is_array());
}

#[tokio::test]
async fn a_payload_of_several_megabytes_travels_as_a_data_file_set_and_arrives_intact() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("LARGE");
    gw.create_integration(&json!({
        "code": code, "steps": [
            {"name": "shape", "type": "transformation", "function": {"jq": "map(. + {checked: true})"}},
            {"name": "send", "type": "delivery", "destinations": [
                {"kind": "rest", "request": {"method": "PUT", "url": format!("{}/bulk", target.url)}}]}
        ]
    }))
    .await;
    // ~4 MB of records.
    let records: Vec<Value> = (0..40_000)
        .map(|i| json!({"id": i, "name": format!("record number {i:08}"), "filler": "x".repeat(60)}))
        .collect();
    let payload = Value::Array(records);

    let id = gw.invoke(&json!({"integrationCode": code, "payload": payload})).await;
    let exchange = gw.wait_final(&id).await;

    assert_eq!(exchange["status"], "Completed", "{exchange:#}");
    let triggered = &exchange["steps"][0];
    assert_eq!(triggered["payload"]["type"], "DataFileSet", "{triggered:#}");
    assert_eq!(exchange["steps"][1]["payload"]["type"], "DataFileSet");
    let set = triggered["payload"]["dataFileSetId"].as_str().expect("set id");
    let (status, listing) = gw.get(&format!("/data-file-sets/{set}")).await;
    assert_eq!(status, 200, "{listing:#}");
    assert!(listing["files"][0]["size"].as_u64().unwrap() > 3_000_000);

    let delivered = target.received();
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].body.len() > 3_000_000);
    let expected: Vec<Value> = payload
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["checked"] = json!(true);
            r
        })
        .collect();
    assert_eq!(delivered[0].json(), Value::Array(expected));
}

#[tokio::test]
async fn a_duplicate_handoff_message_delivers_nothing_twice_and_moves_no_state_back() {
    let gw = gateway();
    let source = ExternalSystem::start(200, providers().to_string()).await;
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("DUP");
    gw.create_integration(&pipeline(&code, &source.url, &target.url, None)).await;
    let id = gw.invoke(&json!({"integrationCode": code, "parameters": {"region": "n"}})).await;
    let before = gw.wait_final(&id).await;
    assert_eq!(before["status"], "Completed");
    assert_eq!(target.received().len(), 1);

    // Replay the handoffs of the delivery and of the transformation, as SQS may.
    let sqs = handoff_e2e::sqs_client().await;
    let transform = &before["steps"][2];
    let delivery = &before["steps"][3];
    for (queue_var, step, input) in [
        ("HANDOFF_QUEUE_DELIVER_REST_URL", delivery, transform["payload"].clone()),
        ("HANDOFF_QUEUE_TRANSFORM_URL", transform, before["steps"][1]["payload"].clone()),
    ] {
        let message = json!({
            "exchangeId": id, "integrationCode": code, "integrationVersion": 1,
            "stepId": step["stepId"], "subStep": step["subStep"], "attempt": 1,
            "input": input, "parameters": {"region": "n"}
        });
        let queue_url = gw.var("handoff-worker-control", queue_var);
        sqs.send_message()
            .queue_url(&queue_url)
            .message_body(message.to_string())
            .send()
            .await
            .expect("send duplicate");
        handoff_e2e::wait_until_drained(&sqs, &queue_url, Duration::from_secs(30)).await;
    }

    assert_eq!(target.received().len(), 1, "no second delivery");
    let after = gw.exchange(&id).await;
    assert_eq!(after["status"], "Completed");
    assert_eq!(after["steps"], before["steps"], "no step changed");
}

#[tokio::test]
async fn post_process_reshapes_a_step_output_before_it_flows_on() {
    let gw = gateway();
    let source = ExternalSystem::start(200, providers().to_string()).await;
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("POST");
    let mut definition = pipeline(&code, &source.url, &target.url, None);
    definition["steps"][0]["postProcess"] = json!("map(select(.region == $parameters.region))");
    gw.create_integration(&definition).await;

    let id = gw.invoke(&json!({"integrationCode": code, "parameters": {"region": "south"}})).await;
    let exchange = gw.wait_final(&id).await;
    assert_eq!(exchange["status"], "Completed", "{exchange:#}");
    let subs: Vec<String> = sub_steps(&exchange).into_iter().map(|(s, _)| s).collect();
    assert_eq!(subs[1..4], ["InvokeQuery", "PostProcess", "Transform"]);
    assert_eq!(target.received()[0].json(), json!([{"id": 2, "name": "Beta", "run": id}]));
}

#[tokio::test]
async fn files_too_large_for_an_api_answer_are_redirected_to_storage() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("DOWNLOAD");
    gw.create_integration(&json!({"code": code, "steps": [{"name": "send", "type": "delivery", "destinations": [
        {"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;
    let text: String = (0..150_000).map(|i| format!("line {i:08} of a large text payload\n")).collect::<String>()
        [..5_500_000]
        .to_string();
    let id = gw.invoke(&json!({"integrationCode": code, "payload": text})).await;
    let exchange = gw.wait_final(&id).await;
    let set = exchange["steps"][0]["payload"]["dataFileSetId"].as_str().expect("a data file set").to_string();

    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let answer = no_redirects
        .get(format!("{}/data-file-sets/{set}/files/payload", gw.api))
        .bearer_auth(&gw.token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 303);
    let location = answer.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("X-Amz-Signature"), "a presigned URL: {location}");
    let file = reqwest::get(&location).await.unwrap();
    assert_eq!(file.status().as_u16(), 200);
    let bytes = file.bytes().await.unwrap();
    assert_eq!(bytes.len(), text.len());
    assert!(bytes == text.as_bytes(), "the file arrives intact");
    assert_eq!(target.received()[0].body.len(), text.len());
}
