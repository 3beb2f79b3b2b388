//! Deliveries to SFTP, multipart file upload and agent destinations, several destinations
//! with one main, and custom data collection — each against a real loopback server, each
//! checking what the external system actually received.

use handoff_e2e::{gateway, sub_steps, unique_code, ExternalSystem, NaiveHttpServer, Received, SftpServer};
use serde_json::{json, Value};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

fn delivery(code: &str, destinations: Value) -> Value {
    json!({"code": code, "version": 1, "steps": [
        {"name": "send", "type": "delivery", "destinations": destinations,
         "retry": {"maxAttempts": 2, "intervalSeconds": 1}}]})
}

/// Stores a secret in the emulator's Secrets Manager (what an operator does once).
async fn put_secret(name: &str, value: &str) {
    let sdk = handoff_emulator::sdk_config_for(&gateway().aws_endpoint).await;
    aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .expect("create secret");
}

/// One part of a multipart/form-data body.
struct FormPart {
    field: String,
    file_name: Option<String>,
    content_type: Option<String>,
    content: Vec<u8>,
}

/// The parts of a multipart/form-data body, parsed from the raw bytes the target received.
fn multipart_parts(received: &Received) -> Vec<FormPart> {
    let content_type = received.header("content-type").expect("content-type");
    let boundary = content_type.split("boundary=").nth(1).expect("boundary").trim_matches('"');
    let delimiter = format!("--{boundary}");
    let body = received.body.as_ref();
    let mut parts = Vec::new();
    let positions: Vec<usize> =
        body.windows(delimiter.len()).enumerate().filter(|(_, w)| *w == delimiter.as_bytes()).map(|(i, _)| i).collect();
    for pair in positions.windows(2) {
        let part = &body[pair[0] + delimiter.len()..pair[1]];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let split = part.windows(4).position(|w| w == b"\r\n\r\n").expect("part headers");
        let headers = String::from_utf8_lossy(&part[..split]).to_string();
        let content = part[split + 4..].to_vec();
        let disposition =
            headers.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition")).unwrap_or("");
        let attribute = |name: &str| {
            disposition.split(&format!("{name}=\"")).nth(1).and_then(|r| r.split('"').next()).map(str::to_string)
        };
        let part_type = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-type"))
            .map(|l| l.split_once(':').map_or("", |(_, v)| v).trim().to_string());
        parts.push(FormPart {
            field: attribute("name").unwrap_or_default(),
            file_name: attribute("filename"),
            content_type: part_type,
            content,
        });
    }
    parts
}

async fn callback_url_of(system: &ExternalSystem, call: usize) -> String {
    for _ in 0..300 {
        if let Some(r) = system.received().get(call) {
            return r.header("x-handoff-callback-url").expect("X-Handoff-Callback-Url header");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the agent was never invoked");
}

#[tokio::test]
async fn sftp_delivery_uploads_the_payload_with_credentials_from_secrets_manager() {
    let gw = gateway();
    let server = SftpServer::start().await;
    // Under the deployment's SecretsPrefix (default handoff/), as the SFTP worker's policy requires.
    let secret = format!("handoff/{}", unique_code("sftp-target"));
    put_secret(&secret, &server.secret_json()).await;
    let code = unique_code("SFTP");
    gw.create_integration(&delivery(
        &code,
        json!([
        {"kind": "sftp", "host": "127.0.0.1", "port": server.port, "path": "/in/providers-{{parameters.region}}.json",
         "hostKeyFingerprint": server.fingerprint, "credentials": {"secretRef": secret}}]),
    ))
    .await;
    let payload = json!([{"id": 1, "name": "Acme"}, {"id": 2, "name": "Bolt"}]);
    let id = gw.invoke(&json!({"integrationCode": code, "parameters": {"region": "north"}, "payload": payload})).await;
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(sub_steps(&done)[1], ("DeliverSftp".to_string(), "Done".to_string()));
    let arrived = server.file("/in/providers-north.json").expect("the file arrived on the server");
    assert_eq!(serde_json::from_slice::<Value>(&arrived).expect("JSON file"), payload);
    assert_eq!(server.list("/in"), ["providers-north.json"], "no temporary file is left behind");

    // A host key other than the one named is refused before anything is sent.
    let wrong = unique_code("SFTP_KEY");
    gw.create_integration(&delivery(&wrong, json!([
        {"kind": "sftp", "host": "127.0.0.1", "port": server.port, "path": "/in/other.json",
         "hostKeyFingerprint": "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "credentials": {"secretRef": secret}}])))
        .await;
    let id = gw.invoke(&json!({"integrationCode": wrong, "payload": payload})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert!(
        failed["error"]["message"].as_str().unwrap_or("").contains("does not match hostKeyFingerprint"),
        "{failed:#}"
    );
    assert_eq!(failed["steps"][1]["attempts"], 1, "a wrong host key is not retried");
    assert!(server.file("/in/other.json").is_none());

    // A secretRef that names no secret fails at once, naming it (and never its content).
    let missing = unique_code("SFTP_SECRET");
    gw.create_integration(&delivery(&missing, json!([
        {"kind": "sftp", "host": "127.0.0.1", "port": server.port, "path": "/in/x.json", "credentials": {"secretRef": "handoff/no-such-secret"}}])))
        .await;
    let id = gw.invoke(&json!({"integrationCode": missing, "payload": payload})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["error"]["classification"], "system", "{failed:#}");
    assert!(
        failed["error"]["message"].as_str().unwrap_or("").contains("'handoff/no-such-secret' does not exist"),
        "{failed:#}"
    );

    // An SFTP host on a metadata address is refused before its secret is read.
    let metadata = unique_code("SFTP_GUARD");
    gw.create_integration(&delivery(&metadata, json!([
        {"kind": "sftp", "host": "169.254.169.254", "port": 22, "path": "/in/x.json", "credentials": {"secretRef": secret}}])))
        .await;
    let id = gw.invoke(&json!({"integrationCode": metadata, "payload": payload})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["error"]["classification"], "business", "{failed:#}");
    assert!(failed["error"]["message"].as_str().unwrap_or("").contains("169.254.169.254:22 refused"), "{failed:#}");
}

#[tokio::test]
async fn sftp_login_refused_is_a_business_error() {
    let gw = gateway();
    let server = SftpServer::start().await;
    let secret = format!("handoff/{}", unique_code("sftp-wrong"));
    put_secret(&secret, &json!({"username": server.username, "password": "not-it"}).to_string()).await;
    let code = unique_code("SFTP_LOGIN");
    gw.create_integration(&delivery(&code, json!([
        {"kind": "sftp", "host": "127.0.0.1", "port": server.port, "path": "/in/x.json", "credentials": {"secretRef": secret}}])))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code, "payload": {"a": 1}})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert_eq!(failed["error"]["classification"], "business");
    assert!(failed["error"]["message"].as_str().unwrap_or("").contains("refused the login"), "{failed:#}");
    let (_, logs) = gw.get(&format!("/exchanges/{id}/logs")).await;
    assert!(logs.to_string().contains("accepted without checking"), "the unchecked host key is logged: {logs:#}");
    assert!(!logs.to_string().contains("not-it"), "the password never shows");
}

#[tokio::test]
async fn file_upload_sends_multipart_with_an_idempotency_key_stable_across_retries() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    target.script([(503, "{}")]);
    let code = unique_code("UPLOAD");
    gw.create_integration(&delivery(&code, json!([
        {"kind": "fileUpload", "fieldName": "document",
         "request": {"url": format!("{}/upload/{{{{exchange.exchangeId}}}}", target.url), "headers": {"X-Tenant": "t1"}}}])))
        .await;
    let payload = json!({"policy": 42});
    let id = gw.invoke(&json!({"integrationCode": code, "payload": payload})).await;
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(done["steps"][1]["attempts"], 2, "the 503 was retried");
    let received = target.received();
    assert_eq!(received.len(), 2);
    let keys: Vec<_> = received.iter().map(|r| r.header("idempotency-key").expect("Idempotency-Key")).collect();
    assert_eq!(keys[0], keys[1], "the retry repeats the key");
    let last = &received[1];
    assert_eq!(last.method, "POST");
    assert_eq!(last.path, format!("/upload/{id}"));
    assert_eq!(last.header("x-tenant").as_deref(), Some("t1"));
    let parts = multipart_parts(last);
    assert_eq!(parts.len(), 1, "one file, one part");
    let part = &parts[0];
    assert_eq!(part.field, "document");
    assert_eq!(part.file_name.as_deref(), Some("payload"));
    assert_eq!(part.content_type.as_deref(), Some("application/json"));
    assert_eq!(serde_json::from_slice::<Value>(&part.content).expect("JSON part"), payload);
}

fn agent_destination(agent: &ExternalSystem, timeout_seconds: u64) -> Value {
    json!({"kind": "agent", "healthUrl": format!("{}/health", agent.url), "timeoutSeconds": timeout_seconds,
           "request": {"url": format!("{}/deliveries", agent.url)}})
}

#[tokio::test]
async fn an_agent_delivery_checks_health_waits_for_the_report_and_records_rejected_files() {
    let gw = gateway();
    let agent = ExternalSystem::start(200, "{}").await;
    agent.script([(200, "{\"ok\": true}"), (201, "{\"accepted\": true}")]);
    let next = ExternalSystem::start(200, "{}").await;
    let code = unique_code("AGENT");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [
        {"name": "send", "type": "delivery", "destinations": [agent_destination(&agent, 60)]},
        {"name": "after", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{}/after", next.url)}}]}]}))
        .await;
    let payload = json!([{"file": "a.csv"}, {"file": "b.csv"}]);
    let id = gw.invoke(&json!({"integrationCode": code, "payload": payload})).await;
    let url = callback_url_of(&agent, 1).await;
    gw.wait_for(&id, MINUTE, |e| e["statusCode"] == "W").await;
    let received = agent.received();
    assert_eq!((received[0].method.as_str(), received[0].path.as_str()), ("GET", "/health"));
    assert_eq!((received[1].method.as_str(), received[1].path.as_str()), ("POST", "/deliveries"));
    assert_eq!(received[1].json(), payload, "the agent is handed the payload");
    assert!(received[1].header("idempotency-key").is_some());

    // A malformed report is refused and the token stays usable.
    let (status, body) =
        gateway().post_callback(&url, &json!({"status": "success", "data": {"errors": [{"file": "b.csv"}]}})).await;
    assert_eq!((status, body["field"].clone()), (400, json!("data.errors[0].message")), "{body}");
    let report = json!({"status": "success", "data": {"processed": ["a.csv"], "errors": [{"file": "b.csv", "message": "bad row 3"}]}});
    let (status, body) = gateway().post_callback(&url, &report).await;
    assert_eq!(status, 202, "{body}");
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(
        sub_steps(&done)[1..5].to_vec(),
        pairs(&[
            ("CheckAgentHealth", "Done"),
            ("InvokeAgent", "Done"),
            ("ReceiveAgentNotification", "Done"),
            ("DeliverRest", "Done")
        ])
    );
    assert_eq!(next.received()[0].json(), payload, "the delivered payload, not the agent's report, flows on");
    let (_, logs) = gw.get(&format!("/exchanges/{id}/logs")).await;
    assert!(logs.to_string().contains("File b.csv: bad row 3"), "{logs:#}");
    let (_, errors) = gw.get(&format!("/errors?integrationCode={code}")).await;
    let items = errors["items"].as_array().expect("error items");
    assert_eq!(items.len(), 1, "{errors:#}");
    assert_eq!(items[0]["classification"], "business");
    assert_eq!(items[0]["exchangeFailed"], false);
    assert_eq!(items[0]["subStep"], "ReceiveAgentNotification");
}

#[tokio::test]
async fn an_agent_must_answer_201_and_report_within_its_timeout() {
    let gw = gateway();
    // 200 is not acceptance.
    let agent = ExternalSystem::start(200, "{}").await;
    let code = unique_code("AGENT_200");
    gw.create_integration(&delivery(&code, json!([agent_destination(&agent, 60)]))).await;
    let id = gw.invoke(&json!({"integrationCode": code, "payload": {"a": 1}})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert_eq!(failed["error"]["classification"], "business");
    assert_eq!(failed["error"]["subStep"], "InvokeAgent");
    assert!(failed["error"]["message"].as_str().unwrap_or("").contains("only 201"), "{failed:#}");

    // Accepted, but no report within the agent's timeout: Failed, recoverable.
    let silent = ExternalSystem::start(201, "{}").await;
    silent.script([(200, "{}")]);
    let code = unique_code("AGENT_SILENT");
    gw.create_integration(&delivery(&code, json!([agent_destination(&silent, 2)]))).await;
    let id = gw.invoke(&json!({"integrationCode": code, "payload": {"a": 1}})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert_eq!(failed["steps"][3]["subStep"], "ReceiveAgentNotification");
    assert_eq!(failed["steps"][3]["status"], "Failed");
    assert!(failed["error"]["message"].as_str().unwrap_or("").starts_with("Timeout"), "{failed:#}");
    let (status, body) = gw.post(&format!("/exchanges/{id}/recover"), &json!({})).await;
    assert_eq!(status.as_u16(), 202, "a timed-out agent delivery is recoverable: {body}");
    // Recovery calls the agent again (health check, then the delivery).
    gw.wait_for(&id, MINUTE, |e| e["statusCode"] == "W").await;
    assert!(silent.received().iter().filter(|r| r.method == "POST").count() >= 2);
    let unhealthy = ExternalSystem::start(503, "{}").await;
    let code = unique_code("AGENT_DOWN");
    gw.create_integration(&delivery(&code, json!([agent_destination(&unhealthy, 60)]))).await;
    let id = gw.invoke(&json!({"integrationCode": code, "payload": {"a": 1}})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["steps"][1]["subStep"], "CheckAgentHealth");
    assert_eq!(failed["steps"][1]["attempts"], 2, "an unhealthy agent is retried");
    assert!(unhealthy.received().iter().all(|r| r.method == "GET"), "nothing is delivered to an unhealthy agent");
}

#[tokio::test]
async fn a_failed_secondary_destination_is_visible_and_the_exchange_completes() {
    let gw = gateway();
    let main = ExternalSystem::start(200, "{}").await;
    let down_agent = ExternalSystem::start(503, "{}").await;
    let refusing = ExternalSystem::start(400, "{\"error\": \"no\"}").await;
    let code = unique_code("SECONDARY");
    gw.create_integration(&delivery(
        &code,
        json!([
        agent_destination(&down_agent, 60),
        {"kind": "rest", "main": true, "request": {"method": "POST", "url": format!("{}/main", main.url)}},
        {"kind": "fileUpload", "request": {"url": format!("{}/files", refusing.url)}}]),
    ))
    .await;
    let id = gw.invoke(&json!({"integrationCode": code, "payload": {"a": 1}})).await;
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(
        sub_steps(&done)[1..6].to_vec(),
        pairs(&[
            ("DeliverRest", "Done"),
            ("CheckAgentHealth", "Failed"),
            ("InvokeAgent", "Skipped"),
            ("ReceiveAgentNotification", "Skipped"),
            ("DeliverFileUpload", "Failed"),
        ])
    );
    assert_eq!(done["steps"][2]["attempts"], 2, "the secondary was retried on its own");
    assert_eq!(done["steps"][5]["attempts"], 1, "a business refusal is not retried");
    assert!(done["steps"][5]["lastError"]["message"].as_str().unwrap_or("").contains("400"), "{done:#}");
    let destinations = done["destinations"].as_array().expect("destinations summary");
    let status_of = |d: u64| destinations.iter().find(|x| x["destination"] == d).map(|x| x["status"].clone());
    assert_eq!(status_of(1), Some(json!("Done")));
    assert_eq!(status_of(0), Some(json!("Failed")));
    assert_eq!(status_of(2), Some(json!("Failed")));
    assert_eq!(main.received().len(), 1);
    assert!(down_agent.received().iter().all(|r| r.method == "GET"));
    let (_, errors) = gw.get(&format!("/errors?integrationCode={code}")).await;
    let items = errors["items"].as_array().expect("error items");
    assert_eq!(items.len(), 2, "{errors:#}");
    assert!(items.iter().all(|e| e["exchangeFailed"] == false));

    // The main destination down fails the exchange; no secondary runs.
    let main_down = ExternalSystem::start(503, "{}").await;
    let secondary = ExternalSystem::start(200, "{}").await;
    let code = unique_code("MAIN_DOWN");
    gw.create_integration(&delivery(
        &code,
        json!([
        {"kind": "rest", "main": true, "request": {"method": "POST", "url": format!("{}/main", main_down.url)}},
        {"kind": "fileUpload", "request": {"url": format!("{}/files", secondary.url)}}]),
    ))
    .await;
    let id = gw.invoke(&json!({"integrationCode": code, "payload": {"a": 1}})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert_eq!(failed["error"]["subStep"], "DeliverRest");
    assert_eq!(failed["destinations"][0]["status"], "Failed");
    assert!(secondary.received().is_empty());
}

#[tokio::test]
async fn custom_data_collection_runs_a_jq_program_or_an_http_call() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let source = ExternalSystem::start(200, "{\"rows\": [7, 8]}").await;
    let code = unique_code("CUSTOM");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [
        {"name": "scale", "type": "dataCollection", "kind": "custom", "function": {"jq": "map(. * ($parameters.factor | tonumber))"}},
        {"name": "fetch", "type": "dataCollection", "kind": "custom",
         "request": {"method": "POST", "url": format!("{}/rows?run={{{{exchange.exchangeId}}}}", source.url)}},
        {"name": "send", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code, "parameters": {"factor": "10"}, "payload": [1, 2]})).await;
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(sub_steps(&done)[1..3].to_vec(), pairs(&[("InvokeCustom", "Done"), ("InvokeCustom", "Done")]));
    let call = &source.received()[0];
    assert_eq!(call.path, format!("/rows?run={id}"));
    assert_eq!(call.json(), json!([10, 20]), "the jq step's output is what the call sends");
    assert_eq!(target.received()[0].json(), json!({"rows": [7, 8]}), "the call's answer is the payload");
}

#[tokio::test]
async fn bad_delivery_definitions_are_refused_with_the_field_named() {
    let gw = gateway();
    let rest = json!({"kind": "rest", "main": true, "request": {"url": "http://t.example/x"}});
    let cases = [
        (json!([{"kind": "rest", "request": {"method": "POST"}}]), "steps[0].destinations[0].request.url"),
        (
            json!([rest, {"kind": "rest", "main": true, "request": {"url": "http://t.example/y"}}]),
            "steps[0].destinations",
        ),
        (
            json!([rest, {"kind": "sftp", "host": "h", "path": "/in/x", "credentials": {}}]),
            "steps[0].destinations[1].credentials.secretRef",
        ),
        (json!([rest, {"kind": "sftp", "host": "h", "path": "/in/x"}]), "steps[0].destinations[1].credentials"),
        (
            json!([rest, {"kind": "sftp", "host": "h", "path": "in/x", "credentials": {"secretRef": "s"}}]),
            "steps[0].destinations[1].path",
        ),
        (json!([rest, {"kind": "fileUpload", "request": {}}]), "steps[0].destinations[1].request.url"),
        (
            json!([rest, {"kind": "fileUpload", "request": {"method": "GET", "url": "http://u.example"}}]),
            "steps[0].destinations[1].request.method",
        ),
        (
            json!([rest, {"kind": "agent", "request": {"url": "http://a.example"}}]),
            "steps[0].destinations[1].healthUrl",
        ),
        (
            json!([rest, {"kind": "agent", "healthUrl": "http://a.example/h", "request": {}}]),
            "steps[0].destinations[1].request.url",
        ),
        (json!([rest, {"kind": "ftp"}]), "steps[0].destinations[1].kind"),
    ];
    for (destinations, field) in cases {
        let (status, body) = gw.post("/integrations", &delivery(&unique_code("BAD"), destinations.clone())).await;
        assert_eq!((status.as_u16(), body["field"].as_str()), (400, Some(field)), "{destinations}: {body}");
    }
    let custom = json!({"code": unique_code("BAD"), "steps": [
        {"name": "c", "type": "dataCollection", "kind": "custom", "function": {"jq": "map("}}]});
    let (status, body) = gw.post("/integrations", &custom).await;
    assert_eq!((status.as_u16(), body["field"].as_str()), (400, Some("steps[0].function.jq")), "{body}");
}

#[tokio::test]
async fn a_secondary_agent_that_never_reports_does_not_fail_the_exchange() {
    let gw = gateway();
    let main = ExternalSystem::start(200, "{}").await;
    let silent = ExternalSystem::start(201, "{}").await;
    silent.script([(200, "{}")]);
    let last = ExternalSystem::start(200, "{}").await;
    let code = unique_code("SECONDARY_SILENT");
    gw.create_integration(&delivery(
        &code,
        json!([
        {"kind": "rest", "main": true, "request": {"method": "POST", "url": format!("{}/main", main.url)}},
        agent_destination(&silent, 2),
        {"kind": "rest", "request": {"method": "POST", "url": format!("{}/last", last.url)}}]),
    ))
    .await;
    let payload = json!({"a": 1});
    let id = gw.invoke(&json!({"integrationCode": code, "payload": payload})).await;
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(
        sub_steps(&done)[1..6].to_vec(),
        pairs(&[
            ("DeliverRest", "Done"),
            ("CheckAgentHealth", "Done"),
            ("InvokeAgent", "Done"),
            ("ReceiveAgentNotification", "Failed"),
            ("DeliverRest", "Done")
        ])
    );
    assert!(done["steps"][4]["lastError"]["message"].as_str().unwrap_or("").starts_with("Timeout"), "{done:#}");
    assert_eq!(last.received()[0].json(), payload, "the destination after the silent agent got the payload");
}

#[tokio::test]
async fn a_target_that_knows_no_chunked_bodies_receives_the_whole_payload() {
    let gw = gateway();
    let target = NaiveHttpServer::start().await;
    let code = unique_code("LENGTH");
    gw.create_integration(&delivery(
        &code,
        json!([{"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]),
    ))
    .await;
    // One payload kept inline, one large enough to travel as a data file in S3.
    let small = json!({"order": 4711, "lines": [{"sku": "A-1", "qty": 2}]});
    let large = json!((0..4000).map(|i| json!({"sku": format!("SKU-{i:05}"), "qty": i})).collect::<Vec<_>>());
    assert!(large.to_string().len() > 64 * 1024, "beyond the inline payload limit");
    for payload in [&small, &large] {
        let id = gw.invoke(&json!({"integrationCode": code, "payload": payload})).await;
        let done = gw.wait_final(&id).await;
        assert_eq!(done["status"], "Completed", "{done:#}");
    }
    let received = target.received();
    assert_eq!(received.len(), 2, "{received:?}");
    for (request, sent) in received.iter().zip([&small, &large]) {
        assert!(request.request_line.starts_with("POST /in"), "{}", request.request_line);
        assert_eq!(request.header("transfer-encoding"), None, "a known size is not sent chunked");
        assert_eq!(request.header("content-length"), Some(request.body.len().to_string().as_str()));
        let body: Value = serde_json::from_slice(&request.body).expect("the whole JSON body");
        assert_eq!(&body, sent);
    }
}

#[tokio::test]
async fn a_captured_answer_is_returned_to_a_waiting_caller_and_delivered_to_the_response_address() {
    let gw = gateway();
    let target = ExternalSystem::start(200, r#"{"confirmation": "C-9", "state": "accepted"}"#).await;
    let answers = ExternalSystem::start(202, "{}").await;
    let code = unique_code("CAPTURE");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [
        {"name": "order", "type": "delivery", "destinations": [{"kind": "rest",
         "request": {"method": "POST", "url": format!("{}/orders", target.url)},
         "response": {"capture": true,
                      "deliverTo": {"kind": "rest", "request": {"url": format!("{}/answers", answers.url)}}}}]}]}))
        .await;
    let (status, answered) =
        gw.post("/exchanges", &json!({"integrationCode": code, "payload": {"order": 9}, "waitSeconds": 30})).await;
    assert_eq!(status, 200, "answered once final: {answered:#}");
    assert_eq!(answered["status"], "Completed", "{answered:#}");
    let result: serde_json::Value =
        serde_json::from_str(answered["result"]["raw"].as_str().expect("an inline result")).expect("JSON");
    assert_eq!(result, json!({"confirmation": "C-9", "state": "accepted"}), "the target's answer");
    assert_eq!(target.received()[0].json(), json!({"order": 9}));
    let delivered = answers.received_at("/answers");
    assert_eq!(delivered.len(), 1, "delivered once to the response address");
    assert_eq!(delivered[0].json(), result);
    assert_eq!(delivered[0].method, "POST");
    assert!(delivered[0].header("idempotency-key").is_some());
}

#[tokio::test]
async fn a_failed_secondary_of_a_completed_exchange_is_re_executed_with_the_same_idempotency_key() {
    let gw = gateway();
    let main = ExternalSystem::start(200, "{}").await;
    let secondary = ExternalSystem::start(200, "{}").await;
    secondary.fail_path("/copy", 503);
    let code = unique_code("REEXECUTE");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [
        {"name": "send", "type": "delivery", "retry": {"maxAttempts": 1}, "destinations": [
            {"kind": "rest", "main": true, "request": {"method": "POST", "url": format!("{}/in", main.url)}},
            {"kind": "rest", "request": {"method": "POST", "url": format!("{}/copy", secondary.url)}}]}]}))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code, "payload": {"n": 1}})).await;
    let done = gw.wait_final(&id).await;
    assert_eq!(
        (done["status"].as_str(), done["destinations"][1]["status"].as_str()),
        (Some("Completed"), Some("Failed"))
    );
    let step_id = done["destinations"][1]["stepIds"][0].as_str().expect("step").to_string();

    secondary.clear_failing_paths();
    let (status, body) = gw.post(&format!("/exchanges/{id}/steps/{step_id}/retry"), &json!({})).await;
    assert_eq!(status, 202, "{body}");
    let again = gw.wait_for(&id, Duration::from_secs(30), |e| e["destinations"][1]["status"] == "Done").await;
    assert_eq!(again["status"], "Completed", "{again:#}");
    let copies = secondary.received_at("/copy");
    assert_eq!(copies.len(), 2, "the failed attempt and the re-execution");
    assert_eq!(copies[1].json(), json!({"n": 1}), "the same data");
    assert_eq!(copies[0].header("idempotency-key"), copies[1].header("idempotency-key"), "the same Idempotency-Key");
    assert_eq!(main.received().len(), 1, "the main destination did not run again");
}
