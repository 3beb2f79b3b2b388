//! The `handoff` binary end to end against the emulator: what it prints for people, the
//! JSON it prints for scripts, and its exit codes.

use handoff_e2e::{gateway, unique_code, ExternalSystem};
use handoff_emulator::auth::{DevIssuer, DEV_AUDIENCE};
use handoff_emulator::EmulatorOptions;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs `handoff ARGS` against the test gateway with `token` (stdin not a terminal).
async fn handoff_as(token: &str, args: &[&str]) -> Run {
    let gw = gateway();
    let mut command = Command::new(env!("CARGO_BIN_EXE_handoff"));
    command
        .args(args)
        .env("HANDOFF_URL", &gw.api)
        .env("HANDOFF_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("join").expect("runs handoff");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn handoff(args: &[&str]) -> Run {
    handoff_as(&gateway().token, args).await
}

fn token_with(scopes: &[&str]) -> String {
    DevIssuer::load_or_create(&EmulatorOptions::default().state_dir)
        .expect("the development issuer")
        .mint("cli-reader", scopes, DEV_AUDIENCE, Duration::from_secs(300))
        .expect("token")
}

fn delivering(code: &str, target: &ExternalSystem) -> Value {
    json!({"code": code, "version": 1, "steps": [{"name": "send", "type": "delivery",
        "retry": {"maxAttempts": 1},
        "destinations": [{"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_definition_in_yaml_is_defined_listed_shown_and_enabled() {
    let code = unique_code("CLI_DEFINE");
    let dir = std::env::temp_dir().join(format!("handoff-cli-{code}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("integration.yaml");
    let yaml = format!(
        "code: {code}\nversion: 1\nsteps:\n  - name: send\n    type: delivery\n    destinations:\n      - kind: rest\n        request: {{method: POST, url: \"http://127.0.0.1:9/in\"}}\n"
    );
    std::fs::write(&file, yaml).expect("write");

    let defined = handoff(&["integrations", "define", file.to_str().expect("path")]).await;
    assert_eq!(defined.code, 0, "{}{}", defined.stdout, defined.stderr);
    assert!(defined.stdout.contains(&format!("defined {code} version 1 (endpoint Disabled")), "{}", defined.stdout);

    let listed = handoff(&["integrations", "list"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let header = listed.stdout.lines().next().unwrap_or_default();
    assert!(header.starts_with("CODE") && header.contains("ENDPOINT"), "{header}");
    let row = listed.stdout.lines().find(|l| l.starts_with(&code)).unwrap_or_else(|| panic!("{}", listed.stdout));
    // Aligned columns: the row's fields start where the header's do.
    assert_eq!(row.find("Disabled"), header.find("ENDPOINT"), "{}", listed.stdout);

    let enabled = handoff(&["integrations", "enable", &code, "--reason", "ready"]).await;
    assert_eq!(
        (enabled.code, enabled.stdout.trim()),
        (0, format!("{code}: now Enabled").as_str()),
        "{}",
        enabled.stderr
    );
    let again = handoff(&["integrations", "enable", &code]).await;
    assert_eq!(again.stdout.trim(), format!("{code}: already Enabled"));

    let shown = handoff(&["integrations", "show", &code]).await;
    assert!(shown.stdout.starts_with(&format!("{code}  endpoint Enabled")), "{}", shown.stdout);
    assert!(shown.stdout.contains("  reason: ready"), "{}", shown.stdout);
    let as_json = handoff(&["integrations", "show", &code, "--output", "json"]).await.json();
    assert_eq!(as_json["versions"][0]["definition"]["code"], code.as_str());

    let refused = handoff(&["integrations", "define", file.to_str().expect("path")]).await;
    assert_eq!(refused.code, 1, "the version exists: {}", refused.stderr);
    assert!(refused.stderr.contains("409 AlreadyExists"), "{}", refused.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_exchanges_are_found_recovered_in_bulk_and_watched_to_completed() {
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    target.script([(422, r#"{"message": "no"}"#), (422, r#"{"message": "no"}"#)]);
    let code = unique_code("CLI_RECOVER");
    gw.create_integration(&delivering(&code, &target)).await;
    let mut ids = Vec::new();
    for region in ["north", "south"] {
        let param = format!("region={region}");
        let started = handoff(&["exchanges", "start", &code, "--param", &param, "-o", "json"]).await;
        assert_eq!(started.code, 0, "{}", started.stderr);
        let id = started.json()["exchangeId"].as_str().expect("exchangeId").to_string();
        assert_eq!(gw.wait_final(&id).await["status"], "Failed");
        ids.push(id);
    }

    let listed = handoff(&["exchanges", "list", "--integration", &code, "--status", "Failed", "-o", "json"]).await;
    let listed = listed.json();
    let found: Vec<&str> =
        listed["items"].as_array().expect("items").iter().filter_map(|e| e["exchangeId"].as_str()).collect();
    assert_eq!(found.len(), 2, "{listed}");
    let north =
        handoff(&["exchanges", "list", "--integration", &code, "--param", "region=north", "--since", "10m"]).await;
    assert_eq!(north.stdout.lines().filter(|l| l.contains("Failed")).count(), 1, "{}", north.stdout);
    assert!(north.stdout.contains(&ids[0]), "{}", north.stdout);

    let shown = handoff(&["exchanges", "show", &ids[0]]).await;
    assert!(shown.stdout.contains("Failed (final, recoverable)"), "{}", shown.stdout);
    assert!(shown.stdout.contains("business TargetRejected"), "{}", shown.stdout);
    let watched_failed = handoff(&["exchanges", "watch", &ids[0]]).await;
    assert_eq!(watched_failed.code, 5, "a watch that ends Failed exits 5: {}", watched_failed.stderr);

    // Without a terminal to ask at, a bulk recovery needs --yes.
    let unconfirmed = handoff(&["exchanges", "recover", "--filter", "--integration", &code]).await;
    assert_eq!(unconfirmed.code, 2, "{}", unconfirmed.stderr);
    assert!(unconfirmed.stderr.contains("2 exchanges match; pass --yes"), "{}", unconfirmed.stderr);
    let reader = token_with(&["handoff:read"]);
    let forbidden = handoff_as(&reader, &["exchanges", "recover", "--filter", "--integration", &code, "--yes"]).await;
    assert_eq!(forbidden.code, 1, "{}{}", forbidden.stdout, forbidden.stderr);
    assert!(forbidden.stdout.contains("recovered 0, refused 2"), "{}", forbidden.stdout);
    assert!(forbidden.stdout.contains("403 Forbidden"), "{}", forbidden.stdout);

    let recovered = handoff(&["exchanges", "recover", "--filter", "--integration", &code, "--yes"]).await;
    assert_eq!(recovered.code, 0, "{}{}", recovered.stdout, recovered.stderr);
    assert!(recovered.stdout.contains("recovered 2, refused 0"), "{}", recovered.stdout);
    for id in &ids {
        let watched = handoff(&["exchanges", "watch", id, "--interval-ms", "200"]).await;
        assert_eq!(watched.code, 0, "{}{}", watched.stdout, watched.stderr);
        assert!(watched.stdout.lines().last().is_some_and(|l| l.starts_with("Completed")), "{}", watched.stdout);
    }
    let logs = handoff(&["exchanges", "logs", &ids[1], "-o", "json"]).await.json();
    assert!(!logs["items"].as_array().expect("items").is_empty(), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_say_what_happened() {
    let missing = handoff(&["exchanges", "show", "no-such-exchange"]).await;
    assert_eq!(missing.code, 4, "{}", missing.stderr);
    assert!(missing.stderr.contains("404 NotFound"), "{}", missing.stderr);

    let unauthenticated = handoff_as("not-a-token", &["integrations", "list"]).await;
    assert_eq!(unauthenticated.code, 1, "{}", unauthenticated.stderr);
    assert!(unauthenticated.stderr.contains("401") && unauthenticated.stderr.contains("HANDOFF_TOKEN"));

    let mut command = Command::new(env!("CARGO_BIN_EXE_handoff"));
    let unreachable = command.args(["--url", "http://127.0.0.1:9", "integrations", "list"]).output().expect("runs");
    assert_eq!(unreachable.status.code(), Some(3));

    let usage = handoff(&["exchanges", "list", "--param", "no-equals-sign"]).await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    assert!(usage.stderr.contains("expected KEY=VALUE"), "{}", usage.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_events_and_mappings() {
    let gw = gateway();
    let target = ExternalSystem::start(422, r#"{"message": "postcode missing"}"#).await;
    let code = unique_code("CLI_ERRORS");
    gw.create_integration(&delivering(&code, &target)).await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    gw.wait_final(&id).await;

    let listed = handoff(&["errors", "list", "--integration", &code, "--state", "open"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let row = listed.stdout.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("{}", listed.stdout));
    assert!(row.contains("TargetRejected") && row.contains("open"), "{row}");
    let error_id = row.split_whitespace().next().expect("error id").to_string();
    let resolved = handoff(&["errors", "resolve", &error_id, "--note", "postcode added"]).await;
    assert_eq!(resolved.code, 0, "{}", resolved.stderr);
    let entry = handoff(&["errors", "list", "--integration", &code, "-o", "json"]).await.json();
    assert_eq!(entry["items"][0]["resolution"]["note"], "postcode added");

    let queue_code = unique_code("CLI_EVENTS");
    gw.create_integration(&json!({"code": queue_code, "version": 1, "events": {"maxPerExchange": 5}, "steps": [
        {"name": "send", "type": "delivery",
         "destinations": [{"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;
    let sent = handoff(&["events", "send", &queue_code, "--data", r#"[{"key": "p-1", "data": {"price": 10}}]"#]).await;
    assert_eq!(
        (sent.code, sent.stdout.trim()),
        (0, format!("{queue_code}: 1 accepted, 0 discarded").as_str()),
        "{}",
        sent.stderr
    );
    let queue = handoff(&["events", "list", &queue_code]).await;
    assert!(queue.stdout.starts_with(&format!("{queue_code}: 1 pending")), "{}", queue.stdout);
    assert!(queue.stdout.lines().any(|l| l.contains("p-1")), "{}", queue.stdout);

    let name = unique_code("cli-map").to_lowercase();
    let file = std::env::temp_dir().join(format!("{name}.yaml"));
    std::fs::write(&file, "fields:\n  providerId: id\nvalues:\n  status: {A: active}\n").expect("write");
    let put = handoff(&["mappings", "put", &name, file.to_str().expect("path"), "-o", "json"]).await;
    assert_eq!((put.code, put.json()["revision"].clone()), (0, json!(1)), "{}", put.stderr);
    let got = handoff(&["mappings", "get", &name, "-o", "json"]).await.json();
    assert_eq!(got["mapping"], json!({"fields": {"providerId": "id"}, "values": {"status": {"A": "active"}}}));
}
