//! The API's contract (`docs/openapi.json`): the gateway serves the committed document,
//! and schemathesis, driven by it, finds no 5xx and no answer the document does not allow —
//! over every route, with random ids and tokens and with ids of real exchanges and errors.

use handoff_e2e::{ensure_python_package, gateway, unique_code, ExternalSystem};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;

fn workspace_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let gw = gateway();
    let (status, served) = gw.request_as(None, reqwest::Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200, "GET /openapi.json needs no token");
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace_file("docs/openapi.json")).expect("docs/openapi.json"))
            .expect("docs/openapi.json is JSON");
    assert!(served == committed, "GET /openapi.json differs from docs/openapi.json");
    assert_eq!(served["openapi"], "3.1.0");
}

/// Runs schemathesis against the gateway; panics with its report unless it passes.
fn schemathesis(label: &str, config: &str, extra: &[&str]) {
    let gw = gateway();
    let python = ensure_python_package("schemathesis", "schemathesis>=4.32,<5")
        .unwrap_or_else(|e| panic!("installing schemathesis: {e}"));
    let dir = tempfile_dir(label);
    let config_path = dir.join("schemathesis.toml");
    std::fs::write(&config_path, config).expect("writing the schemathesis config");
    let seed = std::env::var("HANDOFF_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261203".to_string());
    let schemathesis = python.with_file_name("schemathesis");
    let started = std::time::Instant::now();
    let output = Command::new(&schemathesis)
        .arg("--no-color")
        .arg("--config-file")
        .arg(&config_path)
        .args(["run", &format!("{}/openapi.json", gw.api)])
        .args(["--header", &format!("Authorization: Bearer {}", gw.token)])
        // Every check but two: `positive_data_acceptance` would ask the document to state
        // every rule of a definition or mapping as a schema (they are checked, and refused
        // with the field at fault, by the gateway); `unsupported_method` expects 405 where
        // API Gateway HTTP APIs answer 404 for a method a route does not have.
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance,unsupported_method"])
        .args(["--seed", &seed, "--workers", "1", "--request-timeout", "30"])
        .args(extra)
        .current_dir(&dir)
        .output()
        .expect("running schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    let summary: String =
        report.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    eprintln!("schemathesis ({label}, seed {seed}) took {:.1} s:\n{summary}", started.elapsed().as_secs_f64());
    assert!(
        output.status.success(),
        "schemathesis ({label}, seed {seed}) failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn tempfile_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("handoff-schemathesis-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a directory for schemathesis");
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let gw = gateway();
    // Real things to aim at: a failed exchange with its error entry, and its integration.
    let target = ExternalSystem::start(422, r#"{"message": "refused"}"#).await;
    let code = unique_code("CONTRACT");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [{"name": "send", "type": "delivery",
        "destinations": [{"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;
    let exchange_id = gw.invoke(&json!({"integrationCode": code, "payload": {"id": 1}})).await;
    let failed = gw.wait_final(&exchange_id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    let step_id = failed["error"]["stepId"].as_str().expect("the failed step").to_string();
    let error_id = format!("{exchange_id}.{}", step_id.trim_start_matches('0').parse::<u32>().unwrap_or(0));

    // First every route with what the generator makes up (ids, tokens, bodies), then the
    // routes that need a real exchange, error or integration, aimed at these.
    let free = "[generation]\nmax-examples = 25\n";
    tokio::task::block_in_place(|| schemathesis("free", free, &[]));
    let aimed = format!(
        "[generation]\nmax-examples = 15\n\n\
         [parameters]\ncode = \"{code}\"\nerrorId = \"{error_id}\"\nstepId = \"{step_id}\"\n\n\
         [[operations]]\ninclude-path-regex = \"^/exchanges/\"\nparameters = {{ id = \"{exchange_id}\" }}\n"
    );
    tokio::task::block_in_place(|| {
        schemathesis(
            "aimed",
            &aimed,
            &["--include-path-regex", "^/(exchanges/|errors/|integrations/)", "--phases", "examples,coverage,fuzzing"],
        )
    });
}
