//! Benchmark of streamed data file sets (issue 3): a generated CSV (or, with `--input json`,
//! a JSON array of the same records) of `--size-mb` MiB goes through extract/collect →
//! transformation (→ NDJSON with a field and value mapping) → REST delivery, on the emulator
//! with the real handlers, S3 multipart and SQS handoffs.
//!
//! ```sh
//! cargo run --release -p handoff-e2e --bin transform-bench -- --size-mb 1024 [--files 2] [--input json]
//! ```
//!
//! The input is generated on the fly by a loopback HTTP server (no file on disk), and the
//! loopback target counts what it receives without keeping it. Printed: throughput (input
//! MiB per second of wall time from the callback to the final exchange), the time of each
//! sub-step, and the peak RSS (`VmHWM` of /proc/self/status) of **this** process — the
//! emulator with every function, the generator and the target. moto (the AWS emulator)
//! runs as a child process and keeps S3 objects in memory: its RSS is not ours and is
//! not counted.

use anyhow::{bail, Context};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use handoff_emulator::EmulatorOptions;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
const CHUNK_ROWS: u64 = 512;
const STATUSES: [&str; 3] = ["A", "I", "S"];

struct Args {
    size_mb: u64,
    files: u64,
    /// `csv` or `json` (an array of objects with the CSV's columns as string fields).
    input: &'static str,
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args { size_mb: 1024, files: 1, input: "csv" };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let value = |it: &mut dyn Iterator<Item = String>| -> anyhow::Result<u64> {
            it.next().context("missing value")?.parse().context("not a whole number")
        };
        match arg.as_str() {
            "--size-mb" => out.size_mb = value(&mut it).context("--size-mb")?,
            "--files" => out.files = value(&mut it).context("--files")?.max(1),
            "--input" => {
                out.input = match it.next().as_deref() {
                    Some("csv") => "csv",
                    Some("json") => "json",
                    other => bail!("--input: expected csv or json, not {other:?}"),
                }
            }
            other => bail!("unknown argument {other} (expected --size-mb N, --files N, --input csv|json)"),
        }
    }
    Ok(out)
}

/// `VmHWM` / `VmRSS` of this process, in MiB.
fn memory(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn row(i: u64, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "P{i:010},{},Provider number {i} of the benchmark set,Main street {},{:05},2026-01-{:02}",
        STATUSES[(i % 3) as usize],
        i % 997,
        i % 100_000,
        i % 28 + 1
    );
}

const HEADER: &str = "providerId,status,displayName,street,postcode,since\n";

/// Row `i` as a JSON object of strings (what the CSV reader makes of the CSV row).
fn json_row(i: u64, out: &mut String) {
    let mut line = String::new();
    row(i, &mut line);
    let names = HEADER.trim_end().split(',');
    let record: serde_json::Map<String, Value> =
        names.zip(line.trim_end().split(',')).map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
    if i > 0 {
        out.push(',');
    }
    out.push_str(&Value::Object(record).to_string());
}

/// A JSON array of `bytes` bytes (whole records, at least that much), streamed in chunks.
fn json_body(bytes: u64, rows_out: Arc<AtomicU64>) -> Body {
    let stream = futures::stream::unfold((0u64, 0u64, false), move |(sent, next, closed)| {
        let rows_out = rows_out.clone();
        async move {
            if closed {
                return None;
            }
            if sent >= bytes {
                return Some((Ok::<_, std::io::Error>(Bytes::from_static(b"]")), (sent, next, true)));
            }
            let mut chunk = if next == 0 { "[".to_string() } else { String::new() };
            for i in next..next + CHUNK_ROWS {
                json_row(i, &mut chunk);
            }
            rows_out.fetch_add(CHUNK_ROWS, Ordering::Relaxed);
            let len = chunk.len() as u64;
            Some((Ok(Bytes::from(chunk)), (sent + len, next + CHUNK_ROWS, false)))
        }
    });
    Body::from_stream(stream)
}

/// The CSV of `bytes` bytes (whole rows, at least that much), streamed in chunks.
fn csv_body(bytes: u64, rows_out: Arc<AtomicU64>) -> Body {
    let stream = futures::stream::unfold((0u64, 0u64), move |(sent, next)| {
        let rows_out = rows_out.clone();
        async move {
            if sent >= bytes {
                return None;
            }
            let mut chunk = if next == 0 { HEADER.to_string() } else { String::new() };
            for i in next..next + CHUNK_ROWS {
                row(i, &mut chunk);
            }
            rows_out.fetch_add(CHUNK_ROWS, Ordering::Relaxed);
            let len = chunk.len() as u64;
            Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (sent + len, next + CHUNK_ROWS)))
        }
    });
    Body::from_stream(stream)
}

#[derive(Clone, Default)]
struct Systems {
    bytes_per_file: u64,
    json: bool,
    rows_generated: Arc<AtomicU64>,
    callback: Arc<Mutex<Option<String>>>,
    received_bytes: Arc<AtomicU64>,
    received_lines: Arc<AtomicU64>,
    deliveries_done: Arc<AtomicU64>,
}

/// Source (extract + files) and target on one loopback server.
async fn start_systems(systems: Systems) -> anyhow::Result<String> {
    let app = Router::new()
        .route(
            "/extract",
            post(|State(s): State<Systems>, headers: HeaderMap| async move {
                let url = headers.get("x-handoff-callback-url").and_then(|v| v.to_str().ok()).map(str::to_string);
                if let Ok(mut slot) = s.callback.lock() {
                    *slot = url;
                }
                StatusCode::ACCEPTED
            }),
        )
        .route(
            "/files/{name}",
            get(|State(s): State<Systems>, Path(_): Path<String>| async move {
                if s.json {
                    ([("content-type", "application/json")], json_body(s.bytes_per_file, s.rows_generated.clone()))
                } else {
                    ([("content-type", "text/csv")], csv_body(s.bytes_per_file, s.rows_generated.clone()))
                }
            }),
        )
        .route(
            "/in",
            post(|State(s): State<Systems>, body: Body| async move {
                let mut stream = body.into_data_stream();
                while let Some(chunk) = stream.next().await {
                    let Ok(chunk) = chunk else { return StatusCode::BAD_REQUEST };
                    s.received_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    s.received_lines.fetch_add(chunk.iter().filter(|b| **b == b'\n').count() as u64, Ordering::Relaxed);
                }
                s.deliveries_done.fetch_add(1, Ordering::Relaxed);
                StatusCode::OK
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(systems);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut request = client.request(method, &url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| url.clone())?;
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{url}: HTTP {status}: {value}");
    }
    Ok(value)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The emulator's functions start their jq sandboxes from this binary.
    handoff_emulator::serve_jq_sandbox_if_requested();
    let args = args()?;
    let total_bytes = args.size_mb * MIB;
    eprintln!("starting the emulator (moto in a child process)…");
    let emulator = handoff_emulator::start(EmulatorOptions::default()).await.context("starting the emulator")?;
    let api = emulator.api_url().to_string();
    let systems =
        Systems { bytes_per_file: total_bytes / args.files, json: args.input == "json", ..Systems::default() };
    let base = start_systems(systems.clone()).await?;
    let client = emulator.api_client(Duration::from_secs(60));

    call(
        &client,
        reqwest::Method::PUT,
        format!("{api}/mappings/bench-provider-codes"),
        Some(json!({
            "fields": {"providerId": "id", "status": "state", "displayName": "name"},
            "values": {"status": {"A": "active", "I": "inactive", "S": "suspended"}}
        })),
    )
    .await?;
    let code = format!("TRANSFORM_BENCH_{}", std::process::id());
    call(
        &client,
        reqwest::Method::POST,
        format!("{api}/integrations"),
        Some(json!({
            "code": code, "version": 1, "endpointStatus": "Enabled",
            "steps": [
                {"name": "extract", "type": "dataCollection", "kind": "extract", "timeoutSeconds": 3600,
                 "request": {"method": "POST", "url": format!("{base}/extract")}},
                {"name": "convert", "type": "transformation", "input": {"format": args.input}, "output": {"format": "ndjson"},
                 "mapping": "bench-provider-codes"},
                {"name": "send", "type": "delivery", "destinations": [
                    {"kind": "rest", "request": {"method": "POST", "url": format!("{base}/in")}}]}
            ]
        })),
    )
    .await?;
    let invoked =
        call(&client, reqwest::Method::POST, format!("{api}/exchanges"), Some(json!({"integrationCode": code})))
            .await?;
    let id = invoked["exchangeId"].as_str().context("exchangeId")?.to_string();
    let callback = loop {
        if let Some(url) = systems.callback.lock().ok().and_then(|c| c.clone()) {
            break url;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let baseline_hwm = memory("VmHWM:");
    let files: Vec<Value> = (0..args.files)
        .map(|i| json!({"name": format!("providers-{i}.{}", args.input), "url": format!("{base}/files/{i}")}))
        .collect();
    eprintln!("exchange {id}: streaming {} MiB in {} file(s)…", args.size_mb, args.files);
    let started = Instant::now();
    call(&client, reqwest::Method::POST, callback, Some(json!({"status": "success", "files": files}))).await?;

    let mut last = String::new();
    let exchange = loop {
        let exchange = call(&client, reqwest::Method::GET, format!("{api}/exchanges/{id}"), None).await?;
        let progress: Vec<String> = exchange["steps"]
            .as_array()
            .map(|s| {
                s.iter()
                    .map(|s| {
                        format!("{}={}", s["subStep"].as_str().unwrap_or("?"), s["statusCode"].as_str().unwrap_or("?"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let progress = progress.join(" ");
        if progress != last {
            eprintln!("  {:>7.1}s {progress}", started.elapsed().as_secs_f64());
            last = progress;
        }
        if matches!(exchange["statusCode"].as_str(), Some("C" | "F" | "T")) {
            break exchange;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let elapsed = started.elapsed().as_secs_f64();
    if exchange["statusCode"] != "C" {
        bail!("exchange ended {}: {:#}", exchange["status"], exchange["error"]);
    }
    let rows = systems.rows_generated.load(Ordering::Relaxed);
    let lines = systems.received_lines.load(Ordering::Relaxed);
    let received = systems.received_bytes.load(Ordering::Relaxed);
    let logs = call(&client, reqwest::Method::GET, format!("{api}/exchanges/{id}/logs"), None).await?;
    for line in logs["items"].as_array().into_iter().flatten() {
        let text = line["line"].as_str().unwrap_or_default();
        if text.starts_with("Collected") || text.starts_with("Transformed") || text.starts_with("Delivered") {
            eprintln!("  log: {text}");
        }
    }
    if lines != rows {
        bail!("the target received {lines} NDJSON lines for {rows} generated rows");
    }
    let mb = total_bytes as f64 / MIB as f64;
    println!("input            {mb:.0} MiB {} in {} file(s), {rows} rows", args.input.to_uppercase(), args.files);
    println!("output           {:.0} MiB NDJSON delivered, {lines} lines", received as f64 / MIB as f64);
    println!("wall time        {elapsed:.1} s (callback → exchange Completed: collect + transform + deliver)");
    println!("throughput       {:.1} MiB/s of input end to end", mb / elapsed);
    println!(
        "peak RSS         {:.1} MiB (VmHWM of this process: emulator, all functions, generator, target; moto excluded)",
        memory("VmHWM:")
    );
    println!("peak RSS before  {baseline_hwm:.1} MiB (after setup, before the data flowed)");
    emulator.shutdown().await;
    Ok(())
}
