//! The Lambda package bench (issue 13, README "Measuring"):
//! `cargo run -p handoff-e2e --bin packages [-- --runs 5] [--package handoff-api ...]`.
//!
//! Builds every function of `infra/template.yaml` as the package Lambda runs — `cargo lambda
//! build --release` (cargo-lambda from PyPI into the project venv), zipped — together with a
//! hello-world `lambda_runtime` function (`tests/hello-lambda`) built the same way, in the
//! same invocation. Then, for each package and the same number of runs each:
//! * **zipped size** of `bootstrap.zip`;
//! * **init**: from the exec of the real `bootstrap` until its first
//!   `GET /2018-06-01/runtime/invocation/next` on a local Lambda Runtime API served here;
//! * **first invocation**: from handing it a real event until its response (or error) is
//!   posted. The events reach the AWS emulator (moto, provisioned from the template by the
//!   emulator, whose variables each function gets): a worker's handoff of an integration that
//!   does not exist (its definition read from DynamoDB finds nothing, so the worker answers
//!   `batchItemFailures` and the message stays for its retries and the DLQ), the DLQ's dead
//!   letter of one, the jobs' regular run, a schedule of a code that does not exist, the API's `GET /exchanges` with
//!   the authorizer context API Gateway passes;
//! * **RSS** after that invocation (`VmRSS`, and the peak `VmHWM`), from `/proc`.
//!
//! Prints one table, hello-world first, with each package's init as a multiple of hello
//! world's from the same run. Medians over the runs; the process is killed after each run.

use anyhow::{bail, Context as _};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use handoff_core::handoff::{HandoffMessage, QueueMessage};
use handoff_core::ids::{ExchangeId, IntegrationCode, IntegrationVersion, StepId};
use handoff_core::plan::SubStep;
use handoff_emulator::moto::{venv_dir, workspace_root};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

const CARGO_LAMBDA: &str = "cargo-lambda>=1.9,<2";
const HELLO: &str = "hello-lambda";
const MEMORY_MB: u32 = 256;

fn main() -> anyhow::Result<()> {
    // The emulator started here runs functions that start jq sandboxes from this binary.
    handoff_emulator::serve_jq_sandbox_if_requested();
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = match args.iter().skip_while(|a| *a != "--runs").nth(1) {
        Some(n) => n.parse().context("--runs takes a number")?,
        None => 5,
    };
    // `--package handoff-api` (repeatable): build and measure only these (and hello world).
    let only: Vec<String> = args.windows(2).filter(|w| w[0] == "--package").map(|w| w[1].clone()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(runs.max(1), &only))
}

/// One package's figures.
struct Measured {
    name: String,
    zipped_bytes: u64,
    init: Vec<Duration>,
    first_invocation: Vec<Duration>,
    rss_kb: Vec<u64>,
    peak_rss_kb: Vec<u64>,
    outcome: String,
}

async fn run(runs: usize, only: &[String]) -> anyhow::Result<()> {
    let cargo_lambda = tokio::task::spawn_blocking(ensure_cargo_lambda).await??;
    let emulator = handoff_emulator::start(handoff_emulator::EmulatorOptions::default()).await?;
    let measured = |binary: &str| only.is_empty() || only.iter().any(|o| o == binary);
    let mut binaries: Vec<String> =
        emulator.functions().iter().map(|f| f.spec.binary.clone()).filter(|b| measured(b)).collect();
    binaries.sort();
    binaries.dedup();
    if let Some(unknown) = only.iter().find(|o| !binaries.contains(o)) {
        bail!("--package {unknown}: not a function of the template");
    }

    let started = Instant::now();
    build_packages(&cargo_lambda, &binaries)?;
    println!(
        "cargo lambda build --release of {} packages: {:.0} s",
        binaries.len() + 1,
        started.elapsed().as_secs_f64()
    );

    let packages = workspace_root().join("target").join("lambda");
    let token = emulator.dev_token().unwrap_or_default().to_string();
    let mut table = Vec::new();
    let base_env = lambda_environment(emulator.aws_endpoint());
    table.push(
        measure(HELLO, &packages, runs, &base_env, |_| json!({"hello": "world"}))
            .await
            .context("measuring hello world")?,
    );
    for function in emulator.functions().iter().filter(|f| measured(&f.spec.binary)) {
        let spec = &function.spec;
        let mut env = base_env.clone();
        env.extend(function.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("AWS_LAMBDA_FUNCTION_NAME".into(), spec.name.clone());
        env.insert("AWS_ACCESS_KEY_ID".into(), handoff_emulator::function_access_key(&spec.logical_id));
        let queue_arn = spec.sqs_events.first().map(|s| s.queue_arn.clone()).unwrap_or_default();
        let binary = spec.binary.clone();
        let token = token.clone();
        let measured =
            measure(&spec.binary, &packages, runs, &env, move |run| real_event(&binary, &queue_arn, &token, run))
                .await
                .with_context(|| format!("measuring {}", spec.binary))?;
        table.push(measured);
    }
    print_table(&table, runs);
    emulator.shutdown().await;
    Ok(())
}

/// `cargo-lambda` in the project venv (PyPI), installed on first use.
fn ensure_cargo_lambda() -> anyhow::Result<PathBuf> {
    let venv = venv_dir();
    let binary = venv.join("bin").join("cargo-lambda");
    if binary.exists() {
        return Ok(binary);
    }
    if !venv.join("bin").join("pip").exists() {
        let status = Command::new("python3").args(["-m", "venv"]).arg(&venv).status()?;
        if !status.success() {
            bail!("python3 -m venv {} failed: {status}", venv.display());
        }
    }
    eprintln!("packages: installing {CARGO_LAMBDA} into {}", venv.display());
    let status = Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", CARGO_LAMBDA])
        .status()?;
    if !status.success() || !binary.exists() {
        bail!("pip install {CARGO_LAMBDA} failed: {status}");
    }
    Ok(binary)
}

/// One `cargo lambda build --release` of every function and hello world, zipped
/// (`target/lambda/<binary>/bootstrap.zip`).
fn build_packages(cargo_lambda: &Path, binaries: &[String]) -> anyhow::Result<()> {
    let mut command = Command::new(cargo_lambda);
    command.current_dir(workspace_root()).args([
        "lambda",
        "build",
        "--release",
        "--x86-64",
        "--compiler",
        "cargo",
        "--output-format",
        "zip",
    ]);
    for binary in binaries.iter().map(String::as_str).chain([HELLO]) {
        command.args(["--package", binary]);
    }
    // cargo-lambda finds cargo on PATH; the venv's bin first.
    let path = format!("{}:{}", venv_dir().join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let status = command.env("PATH", path).status().context("running cargo lambda build")?;
    if !status.success() {
        bail!("cargo lambda build failed: {status}");
    }
    Ok(())
}

/// What Lambda sets for every function (the Runtime API address is added per run).
fn lambda_environment(aws_endpoint: &str) -> BTreeMap<String, String> {
    let region = handoff_emulator::template::REGION;
    [
        ("AWS_REGION", region),
        ("AWS_DEFAULT_REGION", region),
        ("AWS_ACCESS_KEY_ID", "hello"),
        ("AWS_SECRET_ACCESS_KEY", "handoff-emulator-secret"),
        ("AWS_ENDPOINT_URL", aws_endpoint),
        ("AWS_LAMBDA_FUNCTION_NAME", HELLO),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bench"),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench"),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand"),
        ("_HANDLER", "bootstrap"),
        ("LANG", "en_US.UTF-8"),
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("TZ", ":UTC"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".to_string(), MEMORY_MB.to_string())])
    .collect()
}

/// A real event for `binary`'s first invocation (run `run`: fresh ids each time).
fn real_event(binary: &str, queue_arn: &str, token: &str, run: usize) -> Value {
    let exchange = ExchangeId::new(format!("0199bench-0000-7000-8000-{run:012}"));
    match binary {
        "handoff-api" => api_event(token),
        "handoff-jobs" => json!({"job": "regular"}),
        "handoff-trigger" => json!({"integrationCode": "BENCH_NO_SUCH_CODE"}),
        "handoff-dlq" => sqs_event(&handoff_body(&exchange, SubStep::Transform), queue_arn, 5),
        worker => {
            let family = handoff_runtime::compose::worker_family(worker);
            let sub_step = all_sub_steps().into_iter().find(|s| Some(s.family()) == family);
            match sub_step {
                Some(sub_step) => sqs_event(&handoff_body(&exchange, sub_step), queue_arn, 1),
                None => json!({"unknown": worker}),
            }
        }
    }
}

fn all_sub_steps() -> Vec<SubStep> {
    [
        "ExchangeTriggered",
        "InvokeQuery",
        "Transform",
        "DeliverRest",
        "DeliverSftp",
        "DeliverFileUpload",
        "InvokeProcess",
        "CollectData",
        "InvokeAgent",
        "CreateSubExchanges",
    ]
    .into_iter()
    .filter_map(|name| serde_json::from_value(json!(name)).ok())
    .collect()
}

/// The SQS message body of a handoff to `sub_step` of an exchange (and integration) that
/// does not exist.
fn handoff_body(exchange: &ExchangeId, sub_step: SubStep) -> String {
    let message = HandoffMessage {
        exchange_id: exchange.clone(),
        integration_code: IntegrationCode::parse("BENCH").unwrap_or_else(|_| unreachable!("a valid code")),
        integration_version: IntegrationVersion::number(1).unwrap_or_else(|_| unreachable!("a valid version")),
        step_id: StepId::from_sequence(1),
        sub_step,
        attempt: 1,
        input: None,
        parameters: json!({}),
        not_before: None,
        recovery: 0,
        parent: None,
        requested_by: None,
        reexecution: false,
    };
    serde_json::to_string(&QueueMessage::Handoff(message)).unwrap_or_default()
}

fn sqs_event(body: &str, queue_arn: &str, receives: u32) -> Value {
    let now = chrono::Utc::now().timestamp_millis().to_string();
    json!({"Records": [{
        "messageId": uuid_like(),
        "receiptHandle": "bench-receipt",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": receives.to_string(),
            "SentTimestamp": now,
            "SenderId": "bench",
            "ApproximateFirstReceiveTimestamp": now
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": handoff_emulator::template::REGION
    }]})
}

fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// `GET /exchanges?limit=1` as API Gateway passes it past its JWT authorizer.
fn api_event(token: &str) -> Value {
    let now = chrono::Utc::now();
    json!({
        "version": "2.0",
        "routeKey": "GET /exchanges",
        "rawPath": "/exchanges",
        "rawQueryString": "limit=1",
        "headers": {"authorization": format!("Bearer {token}"), "host": "bench.execute-api.local", "user-agent": "packages-bench"},
        "queryStringParameters": {"limit": "1"},
        "requestContext": {
            "accountId": handoff_emulator::template::ACCOUNT_ID,
            "apiId": "bench",
            "domainName": "bench.execute-api.local",
            "domainPrefix": "bench",
            "http": {"method": "GET", "path": "/exchanges", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "packages-bench"},
            "requestId": uuid_like(),
            "routeKey": "GET /exchanges",
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
            "timeEpoch": now.timestamp_millis(),
            "authorizer": {"jwt": {"claims": {"sub": "packages-bench", "scope": "handoff:read"}, "scopes": ["handoff:read"]}}
        },
        "isBase64Encoded": false
    })
}

/// A local Lambda Runtime API for one run: hands out one event, records when the function
/// first asked and what it answered.
#[derive(Default)]
struct RuntimeApi {
    first_next: Mutex<Option<Instant>>,
    event_sent: Mutex<Option<Instant>>,
    event: Mutex<Option<Value>>,
    answered: Mutex<Option<(Instant, String)>>,
    asked: Notify,
    done: Notify,
}

async fn next(State(api): State<Arc<RuntimeApi>>) -> impl IntoResponse {
    let first = {
        let mut first = api.first_next.lock().unwrap_or_else(|e| e.into_inner());
        let is_first = first.is_none();
        first.get_or_insert_with(Instant::now);
        is_first
    };
    api.asked.notify_one();
    let event = if first { api.event.lock().unwrap_or_else(|e| e.into_inner()).take() } else { None };
    let Some(event) = event else {
        // One invocation per run: later polls wait until the process is killed.
        std::future::pending::<()>().await;
        return (StatusCode::INTERNAL_SERVER_ERROR, HeaderMap::new(), String::new());
    };
    let mut headers = HeaderMap::new();
    let deadline = chrono::Utc::now().timestamp_millis() + 30_000;
    let insert = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    };
    insert(&mut headers, "lambda-runtime-aws-request-id", uuid_like());
    insert(&mut headers, "lambda-runtime-deadline-ms", deadline.to_string());
    insert(
        &mut headers,
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:bench".to_string(),
    );
    insert(&mut headers, "lambda-runtime-trace-id", "Root=1-00000000-000000000000000000000000;Sampled=0".to_string());
    insert(&mut headers, "content-type", "application/json".to_string());
    *api.event_sent.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    (StatusCode::OK, headers, event.to_string())
}

async fn answer(
    State(api): State<Arc<RuntimeApi>>,
    UrlPath((_, kind)): UrlPath<(String, String)>,
    body: String,
) -> StatusCode {
    let outcome = if kind == "response" {
        format!("ok {}", truncate(&body, 80))
    } else {
        format!("error {}", truncate(&body, 160))
    };
    *api.answered.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), outcome));
    api.done.notify_one();
    StatusCode::ACCEPTED
}

async fn init_error(State(api): State<Arc<RuntimeApi>>, body: String) -> StatusCode {
    *api.answered.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((Instant::now(), format!("init error {}", truncate(&body, 160))));
    api.done.notify_one();
    api.asked.notify_one();
    StatusCode::ACCEPTED
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Runs `name`'s bootstrap `runs` times against a fresh Runtime API each time.
async fn measure(
    name: &str,
    packages: &Path,
    runs: usize,
    env: &BTreeMap<String, String>,
    event_for: impl Fn(usize) -> Value,
) -> anyhow::Result<Measured> {
    let zip = packages.join(name).join("bootstrap.zip");
    let zipped_bytes = std::fs::metadata(&zip).with_context(|| format!("{} missing", zip.display()))?.len();
    let dir = std::env::temp_dir().join(format!("handoff-packages-{}-{name}", std::process::id()));
    unzip(&zip, &dir)?;
    let bootstrap = dir.join("bootstrap");
    let mut measured = Measured {
        name: name.to_string(),
        zipped_bytes,
        init: Vec::new(),
        first_invocation: Vec::new(),
        rss_kb: Vec::new(),
        peak_rss_kb: Vec::new(),
        outcome: String::new(),
    };
    for run in 0..runs {
        let api = Arc::new(RuntimeApi::default());
        *api.event.lock().unwrap_or_else(|e| e.into_inner()) = Some(event_for(run));
        let router = axum::Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(answer))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let log = std::fs::File::create(dir.join(format!("run-{run}.log")))?;
        let spawned_at = Instant::now();
        let mut child = tokio::process::Command::new(&bootstrap)
            .current_dir(&dir)
            .env_clear()
            .envs(env)
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .env("LAMBDA_TASK_ROOT", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bootstrap.display()))?;
        let pid = child.id().unwrap_or(0);
        tokio::time::timeout(Duration::from_secs(30), api.asked.notified())
            .await
            .context("no first invocation/next within 30 s")?;
        tokio::time::timeout(Duration::from_secs(60), api.done.notified()).await.context("no answer within 60 s")?;
        let first_next = api.first_next.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(spawned_at);
        let sent = api.event_sent.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(first_next);
        let (answered_at, outcome) =
            api.answered.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or((sent, "no answer".into()));
        let (rss, peak) = memory_kb(pid);
        measured.init.push(first_next - spawned_at);
        measured.first_invocation.push(answered_at.saturating_duration_since(sent));
        measured.rss_kb.push(rss);
        measured.peak_rss_kb.push(peak);
        measured.outcome = outcome;
        let _ = child.kill().await;
        let _ = stop.send(());
        let _ = server.await;
    }
    Ok(measured)
}

/// `VmRSS` and `VmHWM` of `pid`, in kB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn unzip(zip: &Path, into: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(into);
    std::fs::create_dir_all(into)?;
    let script = "import sys, zipfile, os\nz = zipfile.ZipFile(sys.argv[1])\nfor i in z.infolist():\n    p = z.extract(i, sys.argv[2])\n    os.chmod(p, (i.external_attr >> 16) or 0o755)\n";
    let status = Command::new("python3").args(["-c", script]).arg(zip).arg(into).status()?;
    if !status.success() {
        bail!("unzipping {} failed: {status}", zip.display());
    }
    Ok(())
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn print_table(table: &[Measured], runs: usize) {
    let hello = table.first().map(|m| median(&m.init)).unwrap_or_default();
    println!();
    println!("Lambda packages (cargo lambda build --release, x86-64), medians of {runs} runs; init = exec until the first invocation/next");
    println!(
        "{:<32} {:>10} {:>9} {:>9} {:>12} {:>9} {:>9}  first answer",
        "package", "zip (MB)", "init ms", "× hello", "1st inv. ms", "RSS MB", "peak MB"
    );
    for m in table {
        let init = median(&m.init);
        let ratio = if hello.is_zero() { 0.0 } else { init.as_secs_f64() / hello.as_secs_f64() };
        let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
        println!(
            "{:<32} {:>10.2} {:>9} {:>9.1} {:>12} {:>9.1} {:>9.1}  {}",
            m.name,
            m.zipped_bytes as f64 / 1_048_576.0,
            ms(init),
            ratio,
            ms(median(&m.first_invocation)),
            max(&m.rss_kb),
            max(&m.peak_rss_kb),
            m.outcome
        );
    }
}
