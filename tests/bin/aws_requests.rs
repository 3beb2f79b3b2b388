//! Counts the AWS requests one exchange costs (SPEC: cost is a feature).
//!
//! `cargo run -p handoff-e2e --bin aws-requests [-- N]` starts moto with its request
//! recorder enabled, the emulator on that moto, and loopback source/target systems; creates
//! the integration query → transformation (jq) → rest delivery; runs one exchange to warm the
//! definition caches; then records every AWS request while N (default 5) exchanges run one
//! after another, and prints the requests per service/action and per sub-step — then what
//! they cost per million exchanges at list prices (`handoff_e2e::cost`): Lambda requests and
//! GB-seconds from each invocation's measured duration and the template's `MemorySize`, SQS
//! requests, DynamoDB on-demand units from the stored items' real sizes (a table scan after
//! the run), S3 requests, next to Step Functions Standard and Express for the same pipeline.
//!
//! Attribution (by request content, not by timing, except where noted):
//! * DynamoDB `BatchWriteItem` creating `EX#<id>` items, and the `Query` on `INT#<code>`
//!   listing the integration's versions to pick the one to run → the invocation (api).
//! * DynamoDB `TransactWriteItems` on `STEP#<n>` → the sub-step of step n (the claim of a
//!   sub-step with an outside effect — the step update plus a check of the exchange — and
//!   the one conditional commit).
//! * SQS `SendMessage` of the handoff message for step n → the sender: step n-1, or the
//!   invocation for step 0.
//! * SQS `DeleteMessageBatch` (the event source mapping deleting a handled message) → the
//!   consumer, by queue; the control queue carries two sub-steps per exchange, so its deletes
//!   alternate ExchangeTriggered / ExchangeSignoff in order (exchanges run one at a time).
//! * DynamoDB `Query` on `pk = EX#<id>` → the driver's completion wait: the bench reads
//!   each exchange (`GET /exchanges/{id}`) every 20 ms until it is final. The happy path of the workers never reads the exchange (only a commit
//!   conflict does), which the run checks: every step has exactly one commit.
//! * SQS `ReceiveMessage` → the pollers (idle long polls included), reported separately.
//! * EventBridge Scheduler calls → the emulator's own schedule checker (AWS fires schedules
//!   itself), reported separately.

use handoff_app::entry::function::{FunctionHandler, InvocationError};
use handoff_e2e::cost::{capacity_units, handoff_cost, step_functions_cost, ExchangeUsage, StoredItems, PRICES};
use handoff_e2e::recording::{access_key, body, service_action, Recorder};
use handoff_e2e::reference::{self, SUB_STEPS};
use handoff_e2e::ExternalSystem;
use handoff_emulator::functions::FunctionFactory;
use handoff_emulator::moto::{state_dir, MotoServer};
use handoff_emulator::EmulatorOptions;
use handoff_runtime::compose::{AwsEnvironment, ComposeError};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INVOKE: &str = "invoke (api: POST /exchanges)";
const POLLING: &str = "completion wait (the bench polling GET /exchanges/{id})";
const RECEIVES: &str = "poller receives (idle long-polls, amortised in Lambda by the event source mapping)";
const SCHEDULER: &str = "emulator schedule checker (not an AWS cost: EventBridge Scheduler fires itself)";
const DEFINITIONS: &str = "definition reads (cache misses)";
const OTHER: &str = "unattributed";

type Result<T> = anyhow::Result<T>;

fn main() -> Result<()> {
    // The emulator's functions start their jq sandboxes from this binary.
    handoff_emulator::serve_jq_sandbox_if_requested();
    let exchanges: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|e| anyhow::anyhow!("N must be a number: {e}"))?,
        None => 5,
    };
    // Children inherit our environment: moto records every request from its start, into a
    // file of ours (not `./moto_recording`).
    let recording = state_dir().join(format!("moto-recording-{}.jsonl", std::process::id()));
    std::fs::create_dir_all(state_dir())?;
    std::env::set_var("MOTO_ENABLE_RECORDING", "True");
    std::env::set_var("MOTO_RECORDER_FILEPATH", &recording);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run(exchanges.max(1)));
    if std::env::var_os("HANDOFF_KEEP_RECORDING").is_some() {
        eprintln!("recording kept: {}", recording.display());
    } else {
        let _ = std::fs::remove_file(&recording);
    }
    result
}

struct Api {
    url: String,
    client: reqwest::Client,
}

impl Api {
    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let response = self.client.post(format!("{}{path}", self.url)).json(body).send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
        ))
    }

    /// Invokes (answered at once, as a caller is) and polls until the exchange is final;
    /// insists on Completed.
    async fn run_exchange(&self, code: &str, n: usize) -> Result<Value> {
        let (status, accepted) = self
            .post("/exchanges", &json!({"integrationCode": code, "parameters": {"region": format!("r{n}")}}))
            .await?;
        anyhow::ensure!(status == 202, "exchange {n} was not accepted: {status} {accepted:#}");
        let id = accepted["exchangeId"].as_str().unwrap_or_default().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let exchange: Value = self.client.get(format!("{}/exchanges/{id}", self.url)).send().await?.json().await?;
            if exchange["final"] == json!(true) {
                anyhow::ensure!(exchange["status"] == "Completed", "exchange {n} did not complete: {exchange:#}");
                return Ok(exchange);
            }
            anyhow::ensure!(Instant::now() < deadline, "exchange {n} not final within 30 s: {exchange:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Times every invocation of the functions it builds while `on` (the bench's recording).
struct TimedFactory {
    on: Arc<AtomicBool>,
    /// Function binary (the API's by route) → durations.
    durations: Arc<Mutex<BTreeMap<String, Vec<Duration>>>>,
}

struct Timed {
    binary: String,
    inner: Arc<dyn FunctionHandler>,
    on: Arc<AtomicBool>,
    durations: Arc<Mutex<BTreeMap<String, Vec<Duration>>>>,
}

#[async_trait::async_trait]
impl FunctionFactory for TimedFactory {
    async fn build(
        &self,
        binary: &str,
        vars: &HashMap<String, String>,
        aws: &AwsEnvironment,
    ) -> std::result::Result<Arc<dyn FunctionHandler>, ComposeError> {
        let inner = handoff_runtime::compose::build_function(binary, vars, aws).await?;
        Ok(Arc::new(Timed {
            binary: binary.to_string(),
            inner,
            on: self.on.clone(),
            durations: self.durations.clone(),
        }))
    }
}

#[async_trait::async_trait]
impl FunctionHandler for Timed {
    async fn invoke(&self, event: Value) -> std::result::Result<Value, InvocationError> {
        let key = match event["routeKey"].as_str() {
            Some(route) => format!("{} {route}", self.binary),
            None => self.binary.clone(),
        };
        let started = Instant::now();
        let outcome = self.inner.invoke(event).await;
        if self.on.load(Ordering::SeqCst) {
            self.durations.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().push(started.elapsed());
        }
        outcome
    }
}

async fn run(n: usize) -> Result<()> {
    eprintln!("starting moto (recorder enabled) and the emulator ...");
    let moto = MotoServer::start().await?;
    let endpoint = moto.endpoint().to_string();
    let timing = Arc::new(AtomicBool::new(false));
    let durations: Arc<Mutex<BTreeMap<String, Vec<Duration>>>> = Arc::default();
    let factory = TimedFactory { on: timing.clone(), durations: durations.clone() };
    let options = EmulatorOptions {
        aws_endpoint: Some(endpoint.clone()),
        function_factory: Arc::new(factory),
        ..Default::default()
    };
    let template = options.template_path.clone();
    let emulator = handoff_emulator::start(options).await?;
    let functions: Vec<(String, String)> =
        emulator.functions().iter().map(|f| (f.spec.logical_id.clone(), f.spec.binary.clone())).collect();
    let memory = memory_by_binary(&template, &functions)?;
    // Queue name → the function its event source feeds; access key → the function signing.
    let mut queues: HashMap<String, String> = HashMap::new();
    let mut signers: HashMap<String, String> = HashMap::new();
    for f in emulator.functions() {
        signers.insert(
            handoff_emulator::function_access_key(&f.spec.logical_id),
            f.spec.binary.trim_start_matches("handoff-").to_string(),
        );
        for source in &f.spec.sqs_events {
            let name = source.queue_arn.rsplit(':').next().unwrap_or_default().to_string();
            queues.insert(name, f.spec.binary.trim_start_matches("handoff-").to_string());
        }
    }

    let source = ExternalSystem::start(200, reference::SOURCE_BODY).await;
    let target = ExternalSystem::start(200, "{}").await;
    let api = Api { url: emulator.api_url().to_string(), client: emulator.api_client(Duration::from_secs(40)) };
    let code = format!("COST_{}", std::process::id());
    let definition = reference::pipeline(&code, &source.url, &target.url);
    let (status, body) = api.post("/integrations", &definition).await?;
    anyhow::ensure!(status == 201, "creating the integration: {status} {body}");

    eprintln!("warm-up exchange ...");
    api.run_exchange(&code, 0).await?;

    let recorder = Recorder::new(&endpoint);
    recorder.restart().await?;
    timing.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let mut finals = Vec::new();
    for i in 1..=n {
        finals.push(api.run_exchange(&code, i).await?);
    }
    let elapsed = started.elapsed();
    // Let the last handler's event source mapping delete its message.
    wait_for_deletes(&recorder, &Who { queues: &queues, signers: &signers }, n).await;
    timing.store(false, Ordering::SeqCst);
    recorder.stop().await?;
    let requests = recorder.requests().await?;
    let stored = StoredItems::from_scan(&scan_tables(&endpoint).await?);
    emulator.shutdown().await;
    drop(moto);

    for exchange in &finals {
        let steps: Vec<&str> =
            exchange["steps"].as_array().into_iter().flatten().filter_map(|s| s["subStep"].as_str()).collect();
        anyhow::ensure!(steps == SUB_STEPS, "unexpected plan {steps:?}");
    }
    anyhow::ensure!(target.received().len() == n + 1, "the target should have received {} deliveries", n + 1);

    let report = classify(&requests, &Who { queues: &queues, signers: &signers }, Some(&stored));
    print_report(&report, n, elapsed, requests.len());
    let durations = durations.lock().unwrap_or_else(|e| e.into_inner()).clone();
    print_cost(&report, n, &durations, &memory);
    Ok(())
}

/// Every item of every table, as DynamoDB JSON (moto's JSON protocol, unsigned).
async fn scan_tables(endpoint: &str) -> Result<Vec<serde_json::Map<String, Value>>> {
    let client = reqwest::Client::new();
    let call = |target: &'static str, body: Value| {
        client
            .post(endpoint)
            .header("X-Amz-Target", format!("DynamoDB_20120810.{target}"))
            .header("Content-Type", "application/x-amz-json-1.0")
            .header("Authorization", "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0")
            .body(body.to_string())
            .send()
    };
    let tables: Value = call("ListTables", json!({})).await?.json().await?;
    let mut items = Vec::new();
    for table in tables["TableNames"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        let mut start: Option<Value> = None;
        loop {
            let mut request = json!({"TableName": table});
            if let Some(key) = &start {
                request["ExclusiveStartKey"] = key.clone();
            }
            let page: Value = call("Scan", request).await?.json().await?;
            items.extend(page["Items"].as_array().into_iter().flatten().filter_map(|i| i.as_object().cloned()));
            match page.get("LastEvaluatedKey") {
                Some(key) if !key.is_null() => start = Some(key.clone()),
                _ => break,
            }
        }
    }
    Ok(items)
}

/// Each function binary's `MemorySize` (its own, else the template's Globals).
fn memory_by_binary(template: &std::path::Path, binaries: &[(String, String)]) -> Result<HashMap<String, u32>> {
    let template = handoff_emulator::template::Template::load(template)?;
    let global = template.globals_function.get("MemorySize").and_then(|v| v.as_u64()).unwrap_or(128) as u32;
    let mut memory = HashMap::new();
    for (logical_id, binary) in binaries {
        let own = template
            .resources
            .iter()
            .find(|r| &r.logical_id == logical_id)
            .and_then(|r| r.properties.get("MemorySize"))
            .and_then(|v| v.as_u64());
        memory.insert(binary.clone(), own.map_or(global, |m| m as u32));
    }
    memory.insert(String::new(), global);
    Ok(memory)
}

/// Section 4, the cost per million exchanges: from the recorded requests, the stored item
/// sizes and the measured invocations, next to Step Functions for the same pipeline.
fn print_cost(report: &Report, n: usize, durations: &BTreeMap<String, Vec<Duration>>, memory: &HashMap<String, u32>) {
    let own = |bucket: &str| bucket == INVOKE || SUB_STEPS.contains(&bucket);
    let count = |service: &str, pred: &dyn Fn(&str) -> bool| -> f64 {
        let total = report.counts.iter().filter(|((b, s, a), _)| own(b) && s == service && pred(a)).map(|(_, c)| *c);
        total.sum::<usize>() as f64 / n as f64
    };
    let deletes = count("SQS", &|a| a.starts_with("DeleteMessage"));
    let mut usage = ExchangeUsage {
        // The exchange's sends and deletes, plus one receive per message handled: the bound
        // at low load, where every receive returns one message (at load they batch).
        sqs_requests: count("SQS", &|_| true) + deletes,
        s3_puts: count("S3", &|a| {
            matches!(a, "PutObject" | "UploadPart" | "CreateMultipartUpload" | "CompleteMultipartUpload")
        }),
        s3_gets: count("S3", &|a| matches!(a, "GetObject" | "HeadObject")),
        http_api_requests: 1.0,
        ..ExchangeUsage::default()
    };
    for (bucket, (writes, reads)) in &report.units {
        if own(bucket) {
            usage.dynamodb_write_units += writes / n as f64;
            usage.dynamodb_read_units += reads / n as f64;
        }
    }
    let global = memory.get("").copied().unwrap_or(128);
    let mut work_ms = 0.0;
    for (key, times) in durations {
        // The driver's polling GETs are not part of an exchange; the jobs run on a schedule.
        let (binary, route) = key.split_once(' ').map_or((key.as_str(), None), |(b, r)| (b, Some(r)));
        if route.is_some_and(|r| r != "POST /exchanges") || binary == "handoff-jobs" {
            continue;
        }
        // Lambda bills each invocation in whole milliseconds.
        let billed: f64 =
            times.iter().map(|d| (d.as_secs_f64() * 1000.0).ceil()).sum::<f64>() / times.len().max(1) as f64;
        let invocations = times.len() as f64 / n as f64;
        if matches!(binary, "handoff-worker-query" | "handoff-worker-transform" | "handoff-worker-deliver-rest") {
            work_ms += billed * invocations;
        }
        usage.lambda.insert(key.clone(), (invocations, billed, memory.get(binary).copied().unwrap_or(global)));
    }
    let (lines, total) = handoff_cost(&usage, &PRICES);
    let line = "-".repeat(86);
    println!("\n4. Cost per million exchanges at list prices, as of {}", PRICES.as_of);
    println!("{line}");
    println!("{:<44} {:>16} {:>16}", "", "per exchange", "$ per million");
    println!("{line}");
    for (function, (invocations, ms, mb)) in &usage.lambda {
        println!("  {function:<42} {invocations:>6.2} × {ms:>5.0} ms at {mb} MB");
    }
    for l in &lines {
        println!("{:<44} {:>16.3} {:>16.2}", l.item, l.per_exchange, l.per_million);
    }
    println!("{line}");
    println!("{:<44} {:>16} {:>16.2}", "Handoff total", "", total);
    // The same pipeline as a state machine: three Task states (query, transform, deliver)
    // and the end. The tasks' own work (the three workers' Lambda time) is added to both,
    // everything Handoff spends on its bookkeeping is not: the comparison favours Step Functions.
    let work_gb_s = work_ms / 1000.0 * (global as f64 / 1024.0);
    let work = (3.0 * PRICES.lambda_per_request + work_gb_s * PRICES.lambda_per_gb_second) * 1e6;
    let (standard, express) = step_functions_cost(4.0, work_ms, work, &PRICES);
    println!("{:<44} {:>16} {:>16.2}", "Step Functions Standard (4 transitions + tasks)", "", standard);
    println!("{:<44} {:>16} {:>16.2}", "Step Functions Express (1 request, 64 MB + tasks)", "", express);
    println!("{line}");
    println!(
        "Handoff is {:.1}× cheaper than Standard (goal ≥ 10×) and {:.2}× the cost of Express.",
        standard / total.max(f64::MIN_POSITIVE),
        total / express.max(f64::MIN_POSITIVE)
    );
}

/// Waits (bounded) until the recording holds one delete per handled message: the last
/// sub-step's message is deleted just after the exchange became final.
async fn wait_for_deletes(recorder: &Recorder, who: &Who<'_>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(requests) = recorder.requests().await {
            let report = classify(&requests, who, None);
            let deletes: usize = report
                .counts
                .iter()
                .filter(|((bucket, _, action), _)| {
                    SUB_STEPS.contains(&bucket.as_str()) && action.starts_with("DeleteMessage")
                })
                .map(|(_, c)| *c)
                .sum();
            if deletes >= n * SUB_STEPS.len() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Default)]
struct Report {
    /// (bucket, service, action) → requests.
    counts: BTreeMap<(String, String, String), usize>,
    /// ReceiveMessage per queue's function.
    receives: BTreeMap<String, usize>,
    /// Commits (TransactWriteItems) per (exchange, step): all must be 1.
    commits: BTreeMap<(String, String), usize>,
    /// DynamoDB (write, read) request units per bucket, from the stored item sizes.
    units: BTreeMap<String, (f64, f64)>,
}

/// The sub-step of `STEP#<id>` (steps are created in plan order: sequence = index).
fn sub_step_of_sk(sk: &str) -> Option<&'static str> {
    let seq: usize = sk.strip_prefix("STEP#")?.parse().ok()?;
    SUB_STEPS.get(seq).copied()
}

fn first_step_sk(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => {
            if let Some(sk) = map.get("sk").and_then(|v| v["S"].as_str()).filter(|s| s.starts_with("STEP#")) {
                return Some(sk.to_string());
            }
            map.values().find_map(first_step_sk)
        }
        Value::Array(items) => items.iter().find_map(first_step_sk),
        _ => None,
    }
}

fn mentions_exchange(value: &Value) -> bool {
    match value {
        Value::String(s) => s.starts_with("EX#"),
        Value::Object(map) => map.values().any(mentions_exchange),
        Value::Array(items) => items.iter().any(mentions_exchange),
        _ => false,
    }
}

/// Who sent or consumes what: queue name → the function its event source feeds, and access
/// key → the function that signs with it (both without the `handoff-` prefix).
struct Who<'a> {
    queues: &'a HashMap<String, String>,
    signers: &'a HashMap<String, String>,
}

impl Who<'_> {
    /// The bucket of a request made by the function that signed it, for the functions that
    /// run one sub-step of the pipeline (and the api, which runs the invocation).
    fn signer_bucket(&self, request: &Value) -> &'static str {
        match self.signers.get(access_key(request)).map(String::as_str) {
            Some("api") => INVOKE,
            Some("worker-query") => "InvokeQuery",
            Some("worker-transform") => "Transform",
            Some("worker-deliver-rest") => "DeliverRest",
            _ => OTHER,
        }
    }
}

fn classify(requests: &[Value], who: &Who, stored: Option<&StoredItems>) -> Report {
    let queues = who.queues;
    let mut report = Report::default();
    let mut control_deletes = 0usize;
    for request in requests {
        let text = body(request);
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let (service, action) = service_action(request);
        let queue_function = json["QueueUrl"]
            .as_str()
            .and_then(|u| u.rsplit('/').next())
            .and_then(|name| queues.get(name))
            .cloned()
            .unwrap_or_else(|| "?".into());
        let bucket: String = match (service.as_str(), action.as_str()) {
            ("DynamoDB", "BatchWriteItem") if mentions_exchange(&json) => INVOKE.into(),
            // The endpoint: its status read before data goes out (invocation, query, delivery)
            // and after a delivery, and the endpoint log's line for each invocation.
            ("DynamoDB", "GetItem" | "PutItem" | "UpdateItem") if text.contains("\"S\":\"ENDPOINT#") => {
                who.signer_bucket(request).into()
            }
            ("DynamoDB", "UpdateItem" | "TransactWriteItems" | "PutItem" | "DeleteItem") => {
                match first_step_sk(&json).as_deref().and_then(sub_step_of_sk) {
                    Some(step) => {
                        // A claim is a transaction too (the step update plus a check of the
                        // exchange); it sets `claimedAttempt`, a commit at most checks it.
                        let sets_claim = json["TransactItems"][0]["Update"]["UpdateExpression"]
                            .as_str()
                            .is_some_and(|update| update.contains("#claimedAttempt = :attempt"));
                        if action == "TransactWriteItems" && !sets_claim {
                            let pk = first_pk(&json).unwrap_or_default();
                            *report.commits.entry((pk, step.to_string())).or_default() += 1;
                        }
                        step.into()
                    }
                    None => OTHER.into(),
                }
            }
            ("DynamoDB", "Query" | "GetItem") if mentions_exchange(&json) => POLLING.into(),
            // What an exchange not yet final is held for (`GET /exchanges/{id}`).
            ("DynamoDB", "Query") if text.contains("\"S\":\"HELD#") => POLLING.into(),
            // Selecting the version to run lists the integration's versions (not cached).
            ("DynamoDB", "Query") if text.contains("\"S\":\"INT#") => INVOKE.into(),
            ("DynamoDB", "Query" | "GetItem") => DEFINITIONS.into(),
            ("SQS", "SendMessage") => {
                let message: Value =
                    json["MessageBody"].as_str().and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
                let next = message["subStep"].as_str().and_then(|s| SUB_STEPS.iter().position(|x| *x == s));
                match next {
                    Some(0) => INVOKE.into(),
                    Some(i) => SUB_STEPS[i - 1].into(),
                    None => OTHER.into(),
                }
            }
            ("SQS", "ReceiveMessage") => {
                *report.receives.entry(queue_function).or_default() += 1;
                RECEIVES.into()
            }
            ("SQS", "DeleteMessageBatch" | "DeleteMessage") => match queue_function.trim_start_matches("handoff-") {
                "worker-query" => "InvokeQuery".into(),
                "worker-transform" => "Transform".into(),
                "worker-deliver-rest" => "DeliverRest".into(),
                "worker-control" => {
                    control_deletes += 1;
                    if control_deletes % 2 == 1 { "ExchangeTriggered" } else { "ExchangeSignoff" }.into()
                }
                _ => OTHER.into(),
            },
            ("scheduler", _) => SCHEDULER.into(),
            _ => OTHER.into(),
        };
        if let (Some(stored), "DynamoDB") = (stored, service.as_str()) {
            let (writes, reads) = capacity_units(&action, &json, stored);
            let units = report.units.entry(bucket.clone()).or_default();
            units.0 += writes;
            units.1 += reads;
        }
        *report.counts.entry((bucket, service, action)).or_default() += 1;
    }
    report
}

fn first_pk(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => {
            if let Some(pk) = map.get("pk").and_then(|v| v["S"].as_str()) {
                return Some(pk.to_string());
            }
            map.values().find_map(first_pk)
        }
        Value::Array(items) => items.iter().find_map(first_pk),
        _ => None,
    }
}

fn per(count: usize, n: usize) -> String {
    let value = count as f64 / n as f64;
    if (value - value.round()).abs() < 1e-9 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn print_report(report: &Report, n: usize, elapsed: Duration, total: usize) {
    let line = "-".repeat(86);
    println!();
    println!("AWS requests of {n} exchanges (query → transformation (jq) → rest delivery), recorded by moto");
    println!(
        "{total} requests recorded in {:.1} s; definition caches warm (one exchange ran before recording).",
        elapsed.as_secs_f64()
    );

    // 1. The exchange's own cost, per sub-step.
    let own = |bucket: &str| bucket == INVOKE || SUB_STEPS.contains(&bucket);
    println!("\n1. Per sub-step (the cost of the exchange itself)");
    println!("{line}");
    println!("{:<34} {:<10} {:<22} {:>8} {:>10}", "sub-step", "service", "action", "total", "/exchange");
    println!("{line}");
    let mut exchange_total = 0;
    let mut by_service: BTreeMap<(String, String), usize> = BTreeMap::new();
    for bucket in std::iter::once(INVOKE).chain(SUB_STEPS) {
        let mut bucket_total = 0;
        for ((b, service, action), count) in &report.counts {
            if b == bucket {
                println!("{:<34} {:<10} {:<22} {:>8} {:>10}", bucket, service, action, count, per(*count, n));
                bucket_total += count;
                *by_service.entry((service.clone(), action.clone())).or_default() += count;
            }
        }
        println!("{:<34} {:<10} {:<22} {:>8} {:>10}", "", "", "= sub-step total", bucket_total, per(bucket_total, n));
        exchange_total += bucket_total;
    }
    println!("{line}");
    println!("{:<34} {:<10} {:<22} {:>8} {:>10}", "EXCHANGE TOTAL", "", "", exchange_total, per(exchange_total, n));
    println!(
        "DeleteMessageBatch is the event source mapping removing the handled message (billed like any SQS request);"
    );
    println!("the ReceiveMessage that fetched each message (>= 1 per sub-step) is counted with the pollers in 3.");

    // 2. The same, per service/action.
    println!("\n2. Per service/action (the exchange itself, as in 1)");
    println!("{line}");
    println!("{:<10} {:<30} {:>8} {:>10}", "service", "action", "total", "/exchange");
    println!("{line}");
    let mut service_totals: BTreeMap<String, usize> = BTreeMap::new();
    for ((service, action), count) in &by_service {
        println!("{:<10} {:<30} {:>8} {:>10}", service, action, count, per(*count, n));
        *service_totals.entry(service.clone()).or_default() += count;
    }
    println!("{line}");
    for (service, count) in &service_totals {
        println!("{:<10} {:<30} {:>8} {:>10}", service, "= total", count, per(*count, n));
    }

    // 3. Everything else that was recorded.
    println!("\n3. Recorded but not part of the exchange's own cost");
    println!("{line}");
    for ((bucket, service, action), count) in report.counts.iter().filter(|((b, _, _), _)| !own(b)) {
        println!("{bucket}\n    {service:<10} {action:<30} {count:>8} total {:>8} /exchange", per(*count, n));
    }
    if !report.receives.is_empty() {
        println!("    ReceiveMessage by queue (consumer function):");
        for (function, count) in &report.receives {
            println!("      {function:<28} {count:>6}");
        }
        let deletes: usize = report
            .counts
            .iter()
            .filter(|((b, _, a), _)| own(b) && a.starts_with("DeleteMessage"))
            .map(|(_, c)| c)
            .sum();
        println!(
            "    of which returned messages: at least {deletes} (one per message deleted); the rest are empty long polls over {:.1} s,\n    independent of traffic (in AWS the event source mapping's pollers do this at the same rate).",
            elapsed.as_secs_f64()
        );
    }
    println!("{line}");

    // Attribution check.
    let conflicts: Vec<_> = report.commits.iter().filter(|(_, c)| **c != 1).collect();
    if conflicts.is_empty() && report.commits.len() == n * SUB_STEPS.len() {
        println!(
            "\nCheck: {} commits, exactly one TransactWriteItems per step and no conflicts, so no worker read the exchange:\nevery exchange Query above is the completion wait.",
            report.commits.len()
        );
    } else {
        println!(
            "\nCheck FAILED: commits per step {conflicts:?} ({} steps committed); the read attribution may be off.",
            report.commits.len()
        );
    }
}
