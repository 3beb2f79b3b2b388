//! Benchmark: one exchange fanning out into N sub-exchanges (default 1,000) on the emulator.
//!
//! `cargo run -p handoff-e2e --bin subflow-bench [-- N]` prints the wall time from invocation
//! until the parent is Completed, and the AWS requests that creating the sub-exchanges and
//! fanning them back in cost per sub-exchange (goal: ≤ 3), recorded with moto's request
//! recorder. A sub-exchange's own run (its sub-steps) is reported separately: it is the cost
//! of the child integration, not of the subflow.
//!
//! On moto the wall time grows faster than N: a query on a secondary index scans the whole
//! table there, unlike in DynamoDB. (Stock moto also deep-copies the whole table for every
//! item of every transaction; the emulator's launcher, `infra/emulator/python/moto_server.py`,
//! journals the items a transaction touches instead.) The requests per sub-exchange, which is
//! what this measures, do not depend on that.
//!
//! Attribution by request content:
//! * creation: `BatchGetItem` (which children exist already), `BatchWriteItem` of child
//!   items, `SendMessageBatch` starting them, the `UpdateItem` setting the expected total;
//! * fan-in: each child counts itself inside its own final commit (no request of its own),
//!   then reads the parent's counter (`GetItem` on the parent's step); the last one reads the
//!   parent and hands it on; the parent lists its children's results (`Query` on `byParent`).

use handoff_e2e::recording::{body, header, Recorder};
use handoff_emulator::moto::MotoServer;
use handoff_emulator::EmulatorOptions;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    // The emulator's functions start their jq sandboxes from this binary.
    handoff_emulator::serve_jq_sandbox_if_requested();
    let n: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1000);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(n))
}

async fn run(n: usize) -> anyhow::Result<()> {
    let recording = handoff_emulator::moto::state_dir().join(format!("subflow-recording-{}", std::process::id()));
    let moto = MotoServer::start_recording(Some(&recording)).await?;
    let endpoint = moto.endpoint().to_string();
    let emulator =
        handoff_emulator::start(EmulatorOptions { aws_endpoint: Some(endpoint.clone()), ..Default::default() }).await?;
    let api = emulator.api_url().to_string();
    let client = emulator.api_client(Duration::from_secs(60));
    let post = |path: &str, body: Value| {
        let request = client.post(format!("{api}{path}")).json(&body);
        async move { anyhow::Ok(request.send().await?.error_for_status()?.json::<Value>().await?) }
    };
    let suffix = std::process::id();
    let (child, parent) = (format!("BENCH_CHILD_{suffix}"), format!("BENCH_PARENT_{suffix}"));
    post(
        "/integrations",
        json!({"code": child, "version": 1, "endpointStatus": "Enabled", "steps": [
        {"name": "shape", "type": "transformation", "function": {"jq": "{i: $parameters.i}"}}]}),
    )
    .await?;
    post("/integrations", json!({"code": parent, "version": 1, "endpointStatus": "Enabled", "steps": [
        {"name": "fan", "type": "subflow", "integrationCode": child, "function": {"jq": "[range(0; length) as $i | {i: $i}]"}}]})).await?;

    eprintln!("emulator up; integrations defined");
    // Only what the run itself costs: the definitions above are not counted.
    let recorder = Recorder::new(&endpoint);
    recorder.restart().await?;
    let started = Instant::now();
    let invoked = post("/exchanges", json!({"integrationCode": parent, "payload": vec![0; n]})).await?;
    let id = invoked["exchangeId"].as_str().unwrap_or_default().to_string();
    eprintln!("parent {id} invoked; waiting for its {n} sub-exchanges ...");
    let mut last_report = Instant::now();
    // Each poll is one Query on the parent's partition (reported apart from the fan-in).
    let mut polls = 0usize;
    let exchange = loop {
        polls += 1;
        let e: Value = client.get(format!("{api}/exchanges/{id}")).send().await?.json().await?;
        if matches!(e["statusCode"].as_str(), Some("C" | "F" | "T")) {
            break e;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("  {:>5.0} s: parent {} {}", started.elapsed().as_secs_f64(), e["status"], e["subExchanges"]);
            last_report = Instant::now();
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "the parent did not finish in 30 minutes");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let elapsed = started.elapsed();
    recorder.stop().await?;
    let requests = recorder.requests().await?;
    emulator.shutdown().await;
    drop(moto);
    anyhow::ensure!(exchange["status"] == "Completed", "parent ended {}: {}", exchange["status"], exchange["error"]);
    let results = exchange["subExchanges"].clone();

    let mut buckets: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for request in &requests {
        let target = header(request, "x-amz-target").unwrap_or_default();
        let action = target.rsplit('.').next().unwrap_or_default().to_string();
        let body = body(request);
        let parent_key = format!("EX#{id}\"");
        let bucket = match action.as_str() {
            "BatchGetItem" | "BatchWriteItem" | "SendMessageBatch" => "creation",
            "UpdateItem" if body.contains("subTotal") => "creation",
            "GetItem" if body.contains(&parent_key) => "fan-in",
            "Query" if body.contains("byParent") => "fan-in (parent collects results)",
            "Query" if body.contains(&parent_key) => "parent reads (last child; the driver's polling)",
            "ReceiveMessage" | "DeleteMessageBatch" => "queue polling/deletes",
            "" => "other (S3, scheduler, API reads)",
            _ => "sub-exchanges' own sub-steps and the parent's",
        };
        *buckets.entry((bucket, action)).or_default() += 1;
    }
    println!("subflow of {n} sub-exchanges: parent Completed in {:.1} s ({results})", elapsed.as_secs_f64());
    println!("{:<48} {:<22} {:>8} {:>10}", "bucket", "action", "requests", "per child");
    let mut creation_and_fan_in = 0;
    for ((bucket, action), count) in &buckets {
        println!("{bucket:<48} {action:<22} {count:>8} {:>10.3}", *count as f64 / n as f64);
        if bucket.starts_with("creation") || bucket.starts_with("fan-in") {
            creation_and_fan_in += count;
        }
    }
    // The last sub-exchange(s) read the parent to hand it on; the rest of those reads were the driver's.
    let parent_reads =
        buckets.iter().filter(|((b, _), _)| b.starts_with("parent reads")).map(|(_, c)| *c).sum::<usize>();
    let resumes = parent_reads.saturating_sub(polls);
    creation_and_fan_in += resumes;
    println!("parent reads: {parent_reads} = {polls} by the benchmark's own polling + {resumes} by sub-exchanges handing the parent on (counted as fan-in)");
    println!(
        "creation + fan-in: {creation_and_fan_in} requests = {:.2} per sub-exchange (goal ≤ 3); wall time {:.1} s",
        creation_and_fan_in as f64 / n as f64,
        elapsed.as_secs_f64()
    );
    Ok(())
}
