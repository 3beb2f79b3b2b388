//! `up --demo`: starts a demo source and target system on loopback, loads the
//! `DEMO_PROVIDERS` integration, invokes it once and prints its progress.
//!
//! The source and target servers are spawned on the runtime and keep serving after the
//! demo exchange finishes, so the user can re-run the integration with curl.

use anyhow::{anyhow, bail, Context as _};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CODE: &str = "DEMO_PROVIDERS";
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const DEMO_TIMEOUT: Duration = Duration::from_secs(60);

/// One delivery received by the demo target system.
#[derive(Debug, Clone)]
struct Received {
    idempotency_key: Option<String>,
    body: Value,
}

type Inbox = Arc<Mutex<Vec<Received>>>;

fn demo_providers() -> Value {
    json!([
        {"providerId": "P-001", "displayName": "Northwind Health", "region": "north"},
        {"providerId": "P-002", "displayName": "Fjord Clinics", "region": "north"},
        {"providerId": "P-003", "displayName": "Southside Care", "region": "south"},
        {"providerId": "P-004", "displayName": "Polar Pharmacy", "region": "north"},
    ])
}

/// `GET /providers[?region=R]`: the providers (of region `R` if given).
async fn source_providers(Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    let all = demo_providers();
    let list = match (all, q.get("region")) {
        (Value::Array(items), Some(region)) => Value::Array(
            items.into_iter().filter(|p| p.get("region").and_then(Value::as_str) == Some(region.as_str())).collect(),
        ),
        (other, _) => other,
    };
    Json(list)
}

/// `POST /providers`: records the body and the `Idempotency-Key` header.
async fn target_providers(State(inbox): State<Inbox>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let idempotency_key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body =
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    if let Ok(mut received) = inbox.lock() {
        received.push(Received { idempotency_key, body });
    }
    StatusCode::OK
}

/// Binds `router` on 127.0.0.1:`port` (falling back to a free port if that one is taken)
/// and serves it on a spawned task; returns its address.
async fn serve(name: &'static str, port: u16, router: Router) -> anyhow::Result<SocketAddr> {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) if port != 0 => {
            println!(
                "demo: cannot reuse port {port} for the {name} system ({e}); the stored {CODE} v1 will not reach it"
            );
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .with_context(|| format!("binding the demo {name} system"))?
        }
        Err(e) => return Err(e).with_context(|| format!("binding the demo {name} system")),
    };
    let addr = listener.local_addr().with_context(|| format!("reading the demo {name} address"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, system = name, "demo server stopped");
        }
    });
    Ok(addr)
}

fn definition(source: &str, target: &str) -> Value {
    json!({
        "code": CODE,
        "version": 1,
        "enabled": true,
        "steps": [
            {"name": "fetch", "type": "dataCollection", "kind": "query",
             "request": {"method": "GET",
                         "url": format!("{source}/providers?region={{{{parameters.region}}}}"),
                         "headers": {"Accept": "application/json"}}},
            {"name": "map", "type": "transformation",
             "condition": "length > 0",
             "function": {"jq": "map({id: .providerId, name: .displayName})"},
             "output": {"format": "json"}},
            {"name": "send", "type": "delivery",
             "destinations": [
                {"kind": "rest", "main": true,
                 "request": {"method": "POST", "url": format!("{target}/providers")}}]}
        ]
    })
}

/// Reads a response as JSON, failing with the status and body if it is not `expected`.
async fn expect_json(resp: reqwest::Response, expected: &[u16], what: &str) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp.text().await.with_context(|| format!("reading the answer to {what}"))?;
    if !expected.contains(&status.as_u16()) {
        bail!("{what} answered {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{what} answered non-JSON: {text}"))
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

/// Runs the demo against the API at `api_url` with `http`, a client that sends the
/// development token ([`crate::RunningEmulator::api_client`]). Called by `main` once the
/// emulator is up.
pub async fn run_demo(api_url: &str, http: reqwest::Client) -> anyhow::Result<()> {
    let api = api_url.trim_end_matches('/');
    tokio::time::timeout(DEMO_TIMEOUT, demo(api, &http))
        .await
        .map_err(|_| anyhow!("the demo exchange did not finish within {} s", DEMO_TIMEOUT.as_secs()))?
}

/// The loopback port of the URL at `pointer` in a stored definition, if any.
fn stored_port(definition: &Value, pointer: &str) -> Option<u16> {
    let url = url::Url::parse(definition.pointer(pointer)?.as_str()?).ok()?;
    (url.host_str() == Some("127.0.0.1")).then(|| url.port()).flatten()
}

/// If `DEMO_PROVIDERS` v1 is already stored (a reused AWS emulator), the ports its source
/// and target URLs name, so the new demo servers can take them over; else `(0, 0)`.
async fn previous_ports(http: &reqwest::Client, api: &str) -> (u16, u16) {
    let Ok(resp) = http.get(format!("{api}/integrations/{CODE}")).send().await else {
        return (0, 0);
    };
    if !resp.status().is_success() {
        return (0, 0);
    }
    let Ok(body) = resp.json::<Value>().await else {
        return (0, 0);
    };
    let versions = body.get("versions").and_then(Value::as_array).cloned().unwrap_or_default();
    let Some(v1) = versions.iter().find(|v| v.get("version").and_then(Value::as_u64) == Some(1)) else {
        return (0, 0);
    };
    let Some(definition) = v1.get("definition") else {
        return (0, 0);
    };
    (
        stored_port(definition, "/steps/0/request/url").unwrap_or(0),
        stored_port(definition, "/steps/2/destinations/0/request/url").unwrap_or(0),
    )
}

async fn demo(api: &str, http: &reqwest::Client) -> anyhow::Result<()> {
    let (source_port, target_port) = previous_ports(http, api).await;

    let inbox: Inbox = Arc::new(Mutex::new(Vec::new()));
    let source = serve("source", source_port, Router::new().route("/providers", get(source_providers))).await?;
    let target = serve(
        "target",
        target_port,
        Router::new().route("/providers", axum::routing::post(target_providers)).with_state(inbox.clone()),
    )
    .await?;
    let source_url = format!("http://{source}");
    let target_url = format!("http://{target}");
    println!("demo: source system on {source_url} (GET /providers), target system on {target_url} (POST /providers)");

    // 1. The integration (409: already defined, e.g. a reused HANDOFF_AWS_ENDPOINT).
    let resp = http
        .post(format!("{api}/integrations"))
        .json(&definition(&source_url, &target_url))
        .send()
        .await
        .context("POST /integrations")?;
    if resp.status() == reqwest::StatusCode::CONFLICT {
        println!("demo: integration {CODE} v1 already exists; reusing it");
    } else {
        expect_json(resp, &[201], "POST /integrations").await?;
        println!("demo: created integration {CODE} v1 (fetch -> map -> send)");
    }

    // 2. Enable its endpoint (a new code starts Disabled: configure first, then enable).
    let resp = http
        .post(format!("{api}/integrations/{CODE}/enable"))
        .json(&json!({"reason": "demo ready"}))
        .send()
        .await
        .context("POST /integrations/{code}/enable")?;
    let enabled = expect_json(resp, &[200], "POST /integrations/{code}/enable").await?;
    println!("demo: endpoint {CODE} is {}", enabled["endpoint"]["status"].as_str().unwrap_or("?"));

    // 3. Invoke it.
    let resp = http
        .post(format!("{api}/exchanges"))
        .json(&json!({"integrationCode": CODE, "parameters": {"region": "north"}}))
        .send()
        .await
        .context("POST /exchanges")?;
    let created = expect_json(resp, &[202, 200], "POST /exchanges").await?;
    let exchange_id = created
        .get("exchangeId")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("POST /exchanges answered without exchangeId: {created}"))?
        .to_string();
    println!("demo: started exchange {exchange_id} (parameters {{\"region\": \"north\"}})");

    // 4. Follow it until final: at a terminal as a table redrawn in place (log lines wait
    //    until it is final), otherwise a line per change.
    let live = std::io::stdout().is_terminal();
    let hold = live.then(crate::terminal::hold_logs);
    let mut drawn = 0;
    let mut last_lines: Vec<String> = Vec::new();
    let exchange = loop {
        let resp = http.get(format!("{api}/exchanges/{exchange_id}")).send().await.context("GET /exchanges/{id}")?;
        let exchange = expect_json(resp, &[200], "GET /exchanges/{id}").await?;
        let lines = progress_table(&exchange);
        if live {
            let mut out = std::io::stdout().lock();
            if drawn > 0 {
                let _ = write!(out, "\x1b[{drawn}A");
            }
            for line in &lines {
                let _ = writeln!(out, "\x1b[2K{line}");
            }
            let _ = out.flush();
            drawn = lines.len();
        } else {
            for line in lines.iter().filter(|l| !last_lines.contains(l)) {
                println!("{line}");
            }
        }
        last_lines = lines;
        if exchange.get("final").and_then(Value::as_bool) == Some(true) {
            break exchange;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    drop(hold);

    // 5. Summary: what the target received, and where to go on.
    println!(
        "demo: exchange {exchange_id} finished: {} in {} ms",
        str_field(&exchange, "status"),
        exchange.get("durationMs").and_then(Value::as_i64).unwrap_or(0)
    );
    if let Some(err) = exchange.get("error") {
        println!("demo: error: {err}");
    }
    let received: Vec<Received> = inbox.lock().map(|r| r.clone()).unwrap_or_default();
    if received.is_empty() {
        println!("demo: the target system received nothing");
    }
    for r in &received {
        let pretty = serde_json::to_string_pretty(&r.body).unwrap_or_else(|_| r.body.to_string());
        println!("demo: the target system received POST /providers:\n{pretty}");
        println!("demo: Idempotency-Key: {}", r.idempotency_key.as_deref().unwrap_or("(none)"));
    }
    println!();
    println!("Console:  {api}/console#/exchanges/{exchange_id}");
    println!(
        "          sign in with one click: the emulator is its own OpenID issuer (developer, or viewer: read only)"
    );
    println!("CLI:      cargo run -q -p handoff-cli -- exchanges show {exchange_id}");
    println!("          cargo run -q -p handoff-cli -- exchanges start {CODE} --param region=south --wait 20");
    println!("OpenAPI:  {api}/openapi.json");
    if str_field(&exchange, "status") != "Completed" {
        bail!("the demo exchange ended {}", str_field(&exchange, "status"));
    }
    Ok(())
}

/// The exchange as a table: its status, then one row per step (sub-step, status, attempts,
/// duration, last error).
fn progress_table(exchange: &Value) -> Vec<String> {
    let mut lines =
        vec![format!("  exchange {}  {}", str_field(exchange, "exchangeId"), str_field(exchange, "status"))];
    lines.push(format!(
        "  {:<5} {:<6} {:<20} {:<8} {:<8} {:<9} {}",
        "STEP", "NAME", "SUB-STEP", "STATUS", "ATTEMPTS", "DURATION", "LAST ERROR"
    ));
    for step in exchange.get("steps").and_then(Value::as_array).into_iter().flatten() {
        let attempts = format!(
            "{}/{}",
            step.get("attempts").and_then(Value::as_u64).unwrap_or(0),
            step.get("maxAttempts").and_then(Value::as_u64).unwrap_or(0)
        );
        let duration = step.get("durationMs").and_then(Value::as_i64).map(|ms| format!("{ms} ms")).unwrap_or_default();
        let error: String =
            step.pointer("/lastError/message").and_then(Value::as_str).unwrap_or("").chars().take(60).collect();
        let row = format!(
            "  {:<5} {:<6} {:<20} {:<8} {:<8} {:<9} {error}",
            str_field(step, "stepId"),
            step.get("integrationStep").and_then(Value::as_str).unwrap_or(""),
            str_field(step, "subStep"),
            str_field(step, "status"),
            attempts,
            duration,
        );
        lines.push(row.trim_end().to_string());
    }
    lines
}
