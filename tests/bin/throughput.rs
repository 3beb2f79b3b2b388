//! The throughput bench (issue 13, point 3; README "Measuring"):
//! `cargo run --release -p handoff-e2e --bin throughput [-- --exchanges 1000 --in-flight 80]`.
//!
//! How close does the gateway come to the rate its AWS emulator allows? Two measurements of
//! one moto (request recorder on throughout, so both pay the same recording cost):
//! 1. **The gateway at load.** The emulator runs on that moto with loopback source and target
//!    systems. N exchanges of the reference pipeline (`handoff_e2e::reference`: query →
//!    transformation (jq) → rest delivery) are started over the HTTP API, keeping
//!    `--in-flight` of them between their start and their delivery at the target. Prints
//!    exchanges/s, in the steady part (between 10 % and 90 % of the deliveries) and over the
//!    whole run, and the AWS requests the exchanges cost at that load — per exchange and per
//!    sub-step, with the pollers' receives and deletes batched as they are under load.
//! 2. **moto alone.** The requests the exchanges cost (exactly those recorded, in their
//!    order) are sent again straight to moto — raw HTTP, the recorded bodies and headers, no
//!    SDK and no gateway in between — by several concurrent senders (the best of the
//!    `--replay-concurrency` levels counts). That rate divided by the requests per exchange
//!    is the emulator-bound limit; the gateway's rate over it is the ratio (goal ≥ 80 %).
//!    The replay re-executes the run: each exchange's `BatchWriteItem` comes before its
//!    transactions, which therefore meet the state they met the first time and succeed (the
//!    answers are counted by class). Receives are replayed without their long-poll wait,
//!    and deletes with the receipt handles the replayed receives got (the recorded ones are
//!    stale), so the queues stay as short as they were in the run.
//!
//! Not counted as the exchanges' cost (reported apart): the bench's own completion checks
//! (the api function's reads of `EX#` partitions after the last delivery), the regular job,
//! the emulator's schedule checker and the idle long polls of the queues the pipeline does not
//! use (in AWS each event source mapping polls at its own pace, traffic or not).

use anyhow::Context as _;
use clap::Parser;
use handoff_e2e::recording::{access_key, body, service_action, Recorder};
use handoff_e2e::reference::{self, SUB_STEPS};
use handoff_e2e::ExternalSystem;
use handoff_emulator::moto::{state_dir, MotoServer};
use handoff_emulator::EmulatorOptions;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Exchanges/s of the reference pipeline against the AWS emulator's own rate for the same requests")]
struct Args {
    /// Exchanges to run at load.
    #[arg(long, default_value_t = 1000)]
    exchanges: usize,
    /// Exchanges kept between their start and their delivery: enough to keep moto busy. At
    /// load each of the pipeline's five hops waits about a second on it (its requests queue
    /// behind one lock), so with fewer in flight it idles part of the time and the ratio
    /// measures the bench's concurrency rather than the gateway.
    #[arg(long, default_value_t = 80)]
    in_flight: usize,
    /// Pollers per SQS event source (Lambda starts 5 per mapping and scales up under load).
    #[arg(long, default_value_t = 4)]
    pollers: usize,
    /// Concurrent senders of the raw replay, one pass per level; the fastest counts.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    replay_concurrency: Vec<usize>,
}

/// The function binaries whose queues carry the reference pipeline's messages.
const PIPELINE_CONSUMERS: [&str; 4] =
    ["handoff-worker-control", "handoff-worker-query", "handoff-worker-transform", "handoff-worker-deliver-rest"];

fn main() -> anyhow::Result<()> {
    // The emulator's functions start their jq sandboxes from this binary.
    handoff_emulator::serve_jq_sandbox_if_requested();
    let args = Args::parse();
    anyhow::ensure!(args.exchanges >= 10, "--exchanges: at least 10 (the steady rate is read between 10 % and 90 %)");
    anyhow::ensure!(args.in_flight >= 1, "--in-flight: at least 1");
    anyhow::ensure!(args.replay_concurrency.iter().all(|c| *c >= 1), "--replay-concurrency: each level at least 1");
    let recording = state_dir().join(format!("throughput-recording-{}.jsonl", std::process::id()));
    std::fs::create_dir_all(state_dir())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run(&args, &recording));
    let _ = std::fs::remove_file(&recording);
    result
}

/// What the load phase measured.
struct Load {
    steady_per_second: f64,
    overall_per_second: f64,
    elapsed: Duration,
    /// The requests that are the exchanges' cost, in the order moto served them.
    counted: Vec<Value>,
    /// Requests recorded but not the exchanges' cost: reason → count.
    excluded: BTreeMap<&'static str, usize>,
}

async fn run(args: &Args, recording: &std::path::Path) -> anyhow::Result<()> {
    eprintln!("starting moto (request recorder on) and the emulator ({} pollers per queue) ...", args.pollers);
    let moto = MotoServer::start_recording(Some(recording)).await?;
    let endpoint = moto.endpoint().to_string();
    let recorder = Recorder::new(&endpoint);
    let load = run_load(args, &endpoint, &recorder).await?;
    let per_exchange = load.counted.len() as f64 / args.exchanges as f64;

    eprintln!("replaying the {} recorded requests straight to moto ...", load.counted.len());
    let mut replays = Vec::new();
    for &concurrency in &args.replay_concurrency {
        recorder.restart().await?;
        replays.push(replay(&load.counted, concurrency).await?);
    }
    recorder.stop().await?;
    drop(moto);

    print_report(args, &load, per_exchange, &replays);
    Ok(())
}

async fn run_load(args: &Args, endpoint: &str, recorder: &Recorder) -> anyhow::Result<Load> {
    let options = EmulatorOptions { aws_endpoint: Some(endpoint.to_string()), ..Default::default() }
        .polling_like_lambda(args.pollers);
    let emulator = handoff_emulator::start(options).await?;
    // Who signs what: each function has its own access key; each queue feeds one function.
    let mut signer: HashMap<String, String> = HashMap::new();
    let mut consumer: HashMap<String, String> = HashMap::new();
    for f in emulator.functions() {
        signer.insert(handoff_emulator::function_access_key(&f.spec.logical_id), f.spec.binary.clone());
        for source in &f.spec.sqs_events {
            let queue = source.queue_arn.rsplit(':').next().unwrap_or_default().to_string();
            consumer.insert(queue, f.spec.binary.clone());
        }
    }
    let source = ExternalSystem::start(200, reference::SOURCE_BODY).await;
    let target = ExternalSystem::start(200, "{}").await;
    let api = emulator.api_url().to_string();
    let client = emulator.api_client(Duration::from_secs(60));
    let code = format!("THROUGHPUT_{}", std::process::id());
    let created =
        client.post(format!("{api}/integrations")).json(&reference::pipeline(&code, &source.url, &target.url));
    let created = created.send().await?;
    anyhow::ensure!(created.status().as_u16() == 201, "creating the integration: {}", created.text().await?);

    // Warm the definition caches and the pollers; not measured.
    let warm_up = args.in_flight.min(20);
    eprintln!("warm-up: {warm_up} exchanges ...");
    let (ids, _, _) = drive(&client, &api, &code, &target, warm_up, warm_up).await?;
    wait_completed(&client, &api, &ids).await?;

    eprintln!("{} exchanges, {} in flight ...", args.exchanges, args.in_flight);
    recorder.restart().await?;
    let (ids, samples, elapsed) = drive(&client, &api, &code, &target, args.exchanges, args.in_flight).await?;
    wait_completed(&client, &api, &ids).await?;
    // The last exchanges' signoff messages are deleted just after their commit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.stop().await?;
    let recorded = recorder.requests().await?;
    emulator.shutdown().await;
    let delivered = target.received_count() - warm_up;
    anyhow::ensure!(delivered == args.exchanges, "{delivered} deliveries for {} exchanges", args.exchanges);

    let (counted, excluded) = split_recorded(recorded, &signer, &consumer);
    Ok(Load {
        steady_per_second: steady_rate(&samples, args.exchanges),
        overall_per_second: args.exchanges as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
        elapsed,
        counted,
        excluded,
    })
}

/// Starts `n` exchanges, at most `in_flight` of them started and not yet delivered at a
/// time; returns their ids, (seconds, deliveries) samples and the time to the last delivery.
async fn drive(
    client: &reqwest::Client,
    api: &str,
    code: &str,
    target: &ExternalSystem,
    n: usize,
    in_flight: usize,
) -> anyhow::Result<(Vec<String>, Vec<(f64, usize)>, Duration)> {
    let base = target.received_count();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120 + n as u64 / 2);
    let mut posts = tokio::task::JoinSet::new();
    let mut ids = Vec::with_capacity(n);
    let mut samples = Vec::new();
    let mut submitted = 0;
    loop {
        let delivered = target.received_count() - base;
        samples.push((started.elapsed().as_secs_f64(), delivered));
        while submitted < n && submitted - delivered.min(submitted) < in_flight {
            let request = client
                .post(format!("{api}/exchanges"))
                .json(&json!({"integrationCode": code, "parameters": {"region": format!("r{submitted}")}}));
            posts.spawn(async move {
                let response = request.send().await?;
                let status = response.status().as_u16();
                let accepted: Value = response.json().await?;
                anyhow::ensure!(status == 202, "an exchange was not accepted: {status} {accepted}");
                Ok(accepted["exchangeId"].as_str().unwrap_or_default().to_string())
            });
            submitted += 1;
        }
        while let Some(posted) = posts.try_join_next() {
            ids.push(posted??);
        }
        if delivered >= n {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {delivered} of {n} exchanges delivered in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    while let Some(posted) = posts.join_next().await {
        ids.push(posted??);
    }
    Ok((ids, samples, elapsed))
}

/// Waits until every exchange is final, insisting on Completed.
async fn wait_completed(client: &reqwest::Client, api: &str, ids: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in ids {
        loop {
            let exchange: Value = client.get(format!("{api}/exchanges/{id}")).send().await?.json().await?;
            if exchange["final"] == json!(true) {
                anyhow::ensure!(exchange["status"] == "Completed", "exchange {id} ended {}", exchange["status"]);
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "exchange {id} not final in time: {}", exchange["status"]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Deliveries per second between 10 % and 90 % of them (start-up and drain left out).
fn steady_rate(samples: &[(f64, usize)], n: usize) -> f64 {
    let at = |count: usize| samples.iter().find(|(_, d)| *d >= count).map(|(t, d)| (*t, *d));
    match (at(n / 10), at(n * 9 / 10)) {
        (Some((t0, d0)), Some((t1, d1))) if t1 > t0 => (d1 - d0) as f64 / (t1 - t0),
        _ => 0.0,
    }
}

/// Splits the recording into the exchanges' cost and the rest (with the reason).
fn split_recorded(
    recorded: Vec<Value>,
    signer: &HashMap<String, String>,
    consumer: &HashMap<String, String>,
) -> (Vec<Value>, BTreeMap<&'static str, usize>) {
    let mut counted = Vec::with_capacity(recorded.len());
    let mut excluded: BTreeMap<&'static str, usize> = BTreeMap::new();
    for request in recorded {
        let (service, action) = service_action(&request);
        let function = signer.get(access_key(&request)).map_or("?", String::as_str);
        let text = body(&request);
        let queue_consumer = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|b| b["QueueUrl"].as_str().and_then(|u| u.rsplit('/').next()).map(str::to_string))
            .and_then(|queue| consumer.get(&queue).cloned());
        let reason = if service == "scheduler" {
            Some("the emulator's schedule checker (EventBridge Scheduler fires by itself)")
        } else if function == "handoff-jobs" {
            Some("the regular job (runs on its schedule, whatever the traffic)")
        } else if function == "handoff-api" && matches!(action.as_str(), "Query" | "GetItem") && text.contains("\"EX#")
        {
            Some("the bench's completion checks (GET /exchanges/{id} after the last delivery)")
        } else if action == "ReceiveMessage"
            && !queue_consumer.as_deref().is_some_and(|c| PIPELINE_CONSUMERS.contains(&c))
        {
            Some("idle long polls of queues the pipeline does not use")
        } else {
            None
        };
        match reason {
            Some(reason) => *excluded.entry(reason).or_default() += 1,
            None => counted.push(request),
        }
    }
    (counted, excluded)
}

/// One replay pass: the rate moto served the requests at, and its answers by class.
struct Replay {
    concurrency: usize,
    elapsed: Duration,
    requests: usize,
    answers: BTreeMap<String, usize>,
    /// (service, action) → (requests, time moto took to answer them).
    by_action: BTreeMap<(String, String), (usize, Duration)>,
}

impl Replay {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// A recorded request ready to send again.
struct Prepared {
    action: (String, String),
    /// The SQS queue it addresses (`QueueUrl`), if any.
    queue: Option<String>,
    method: reqwest::Method,
    url: String,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

/// The recorded request as sent, but a receive's long-poll wait dropped (a wait is not work).
fn prepare(request: &Value) -> anyhow::Result<Prepared> {
    let method = reqwest::Method::from_bytes(request["method"].as_str().unwrap_or("GET").as_bytes())?;
    let url = request["url"].as_str().context("a recorded request without its url")?.to_string();
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in request["headers"].as_object().into_iter().flatten() {
        let skip = ["host", "content-length", "transfer-encoding", "connection", "accept-encoding"];
        if skip.iter().any(|s| name.eq_ignore_ascii_case(s)) {
            continue;
        }
        if let (Ok(name), Some(Ok(value))) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            value.as_str().map(reqwest::header::HeaderValue::from_str),
        ) {
            headers.insert(name, value);
        }
    }
    let action = service_action(request);
    let mut body = body(request).into_bytes();
    if action.1 == "ReceiveMessage" {
        if let Ok(mut receive) = serde_json::from_slice::<Value>(&body) {
            receive["WaitTimeSeconds"] = json!(0);
            body = receive.to_string().into_bytes();
        }
    }
    let queue = serde_json::from_slice::<Value>(&body).ok().and_then(|b| b["QueueUrl"].as_str().map(str::to_string));
    Ok(Prepared { action, queue, method, url, headers, body })
}

/// Receipt handles the replay's receives got, by queue URL, for its deletes to use: a delete
/// replayed with the recorded (stale) handles deletes nothing, and the queues would grow —
/// and moto's receives slow down — as they never did in the run.
#[derive(Clone, Default)]
struct Receipts(Arc<std::sync::Mutex<HashMap<String, std::collections::VecDeque<String>>>>);

impl Receipts {
    fn keep(&self, queue: &str, answer: &[u8]) {
        let Ok(answer) = serde_json::from_slice::<Value>(answer) else { return };
        let handles = answer["Messages"].as_array().into_iter().flatten().filter_map(|m| m["ReceiptHandle"].as_str());
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pool.entry(queue.to_string()).or_default().extend(handles.map(str::to_string));
    }

    /// The delete's body with handles received from its queue in place of the recorded ones.
    fn in_delete(&self, queue: &str, body: &[u8]) -> Vec<u8> {
        let Ok(mut delete) = serde_json::from_slice::<Value>(body) else { return body.to_vec() };
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let handles = pool.entry(queue.to_string()).or_default();
        for entry in delete["Entries"].as_array_mut().into_iter().flatten() {
            if let Some(handle) = handles.pop_front() {
                entry["ReceiptHandle"] = json!(handle);
            }
        }
        delete.to_string().into_bytes()
    }
}

async fn replay(requests: &[Value], concurrency: usize) -> anyhow::Result<Replay> {
    let prepared: Arc<Vec<Prepared>> = Arc::new(requests.iter().map(prepare).collect::<anyhow::Result<_>>()?);
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let receipts = Receipts::default();
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (prepared, client, next, receipts) = (prepared.clone(), client.clone(), next.clone(), receipts.clone());
        senders.spawn(async move {
            let mut answers: BTreeMap<String, usize> = BTreeMap::new();
            let mut by_action: BTreeMap<(String, String), (usize, Duration)> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = prepared.get(i) else { break };
                let body = match (p.action.1.as_str(), &p.queue) {
                    ("DeleteMessageBatch", Some(queue)) => receipts.in_delete(queue, &p.body),
                    _ => p.body.clone(),
                };
                let sent_at = Instant::now();
                let sent = client.request(p.method.clone(), &p.url).headers(p.headers.clone()).body(body).send().await;
                let class = match sent {
                    Ok(response) => {
                        let status = response.status();
                        // Read the answer whole: moto's work includes writing it.
                        let answer = response.bytes().await.unwrap_or_default();
                        if let ("ReceiveMessage", Some(queue)) = (p.action.1.as_str(), &p.queue) {
                            receipts.keep(queue, &answer);
                        }
                        format!("{}xx", status.as_u16() / 100)
                    }
                    Err(_) => "no answer".to_string(),
                };
                *answers.entry(class).or_default() += 1;
                let timed = by_action.entry(p.action.clone()).or_default();
                timed.0 += 1;
                timed.1 += sent_at.elapsed();
            }
            (answers, by_action)
        });
    }
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_action: BTreeMap<(String, String), (usize, Duration)> = BTreeMap::new();
    while let Some(sender) = senders.join_next().await {
        let (sender_answers, sender_actions) = sender?;
        for (class, count) in sender_answers {
            *answers.entry(class).or_default() += count;
        }
        for (action, (count, time)) in sender_actions {
            let timed = by_action.entry(action).or_default();
            timed.0 += count;
            timed.1 += time;
        }
    }
    Ok(Replay { concurrency, elapsed: started.elapsed(), requests: prepared.len(), answers, by_action })
}

fn print_report(args: &Args, load: &Load, per_exchange: f64, replays: &[Replay]) {
    let n = args.exchanges as f64;
    let line = "-".repeat(86);
    println!();
    println!(
        "Throughput: {} exchanges of the reference pipeline ({}), {} in flight, {} pollers per queue",
        args.exchanges,
        SUB_STEPS.join(" → "),
        args.in_flight,
        args.pollers
    );
    println!("{line}");
    println!("1. The gateway at load");
    println!("  exchanges/s, steady (10–90 % of the deliveries)         {:>5.1}", load.steady_per_second);
    println!(
        "  exchanges/s, whole run ({:>5.1} s to the last delivery) {:>5.1}",
        load.elapsed.as_secs_f64(),
        load.overall_per_second
    );
    println!(
        "  AWS requests per exchange                      {:>10.2}   = {:.2} per sub-step (goal ≤ 2.5; 4.8 one at a time)",
        per_exchange,
        per_exchange / SUB_STEPS.len() as f64
    );
    let mut by_action: BTreeMap<(String, String), usize> = BTreeMap::new();
    for request in &load.counted {
        *by_action.entry(service_action(request)).or_default() += 1;
    }
    for ((service, action), count) in &by_action {
        println!("    {service:<10} {action:<28} {:>10.2} per exchange", *count as f64 / n);
    }
    println!("  recorded, not the exchanges' cost:");
    for (reason, count) in &load.excluded {
        println!("    {count:>8}  {reason}");
    }
    println!("{line}");
    println!("2. moto alone: the same {} requests replayed raw", load.counted.len());
    for r in replays {
        let answers: Vec<String> = r.answers.iter().map(|(class, count)| format!("{class} {count}")).collect();
        println!(
            "  {:>3} senders: {:>8.0} requests/s ({:.1} s; answers {})",
            r.concurrency,
            r.per_second(),
            r.elapsed.as_secs_f64(),
            answers.join(", ")
        );
    }
    if let Some(fastest) = replays.iter().max_by(|a, b| a.per_second().total_cmp(&b.per_second())) {
        println!("  moto's answer time by action, at {} senders:", fastest.concurrency);
        for ((service, action), (count, time)) in &fastest.by_action {
            println!(
                "    {service:<10} {action:<28} {count:>7} × {:>6.1} ms",
                time.as_secs_f64() * 1000.0 / (*count).max(1) as f64
            );
        }
    }
    let best = replays.iter().map(Replay::per_second).fold(0.0, f64::max);
    let limit = best / per_exchange.max(f64::MIN_POSITIVE);
    println!("{line}");
    println!("  emulator-bound limit: {best:.0} requests/s ÷ {per_exchange:.2} per exchange = {limit:.1} exchanges/s");
    println!(
        "  the gateway reaches {:.0} % of it (steady rate; goal ≥ 80 %)",
        100.0 * load.steady_per_second / limit.max(f64::MIN_POSITIVE)
    );
}
