//! Test harness: one emulator (with its own moto) per test binary, real loopback servers
//! standing in for source and target systems, and small HTTP helpers.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod browser;
pub mod chaos;
pub mod cost;
mod logs;
mod naive_http;
mod sftp;
pub use naive_http::{NaiveHttpServer, NaiveRequest};
pub use sftp::{ensure_python_package, SftpServer};

/// Runs `install` unless `present()`, holding the file lock `lock_path` so that test
/// processes install one at a time (and the next one finds it done).
fn install_once(
    lock_path: &std::path::Path,
    present: impl Fn() -> bool,
    install: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    if present() {
        return Ok(());
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(|e| format!("opening {}: {e}", lock_path.display()))?;
    lock.lock().map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if present() {
        return Ok(());
    }
    install()
}

/// What the emulator under test offers the tests.
pub struct Gateway {
    pub api: String,
    /// The development issuer's token with every scope, sent with every [`Gateway::request`].
    pub token: String,
    pub aws_endpoint: String,
    /// Every function's resolved environment, by binary name.
    pub function_vars: HashMap<String, HashMap<String, String>>,
    /// The error tracker the emulator reports to, as a deployment with `ErrorTracker` on
    /// would: a loopback server taking Sentry envelopes ([`ErrorTrackerServer`]).
    pub error_tracker: ErrorTrackerServer,
    client: reqwest::Client,
}

/// A loopback Sentry-protocol endpoint (as Sentry, self-hosted or GlitchTip): it takes the
/// envelopes `POST /api/<project>/envelope/` and answers as Sentry does.
pub struct ErrorTrackerServer {
    pub dsn: String,
    server: ExternalSystem,
}

/// The project of the tests' DSN.
pub const ERROR_TRACKER_PROJECT: &str = "42";

impl ErrorTrackerServer {
    async fn start() -> Self {
        let server = ExternalSystem::start(200, r#"{"id": "00000000000000000000000000000000"}"#).await;
        let dsn = server.url.replacen("http://", "http://handoff-e2e-key@", 1) + "/" + ERROR_TRACKER_PROJECT;
        Self { dsn, server }
    }

    /// The events received so far (each envelope's items of type `event`).
    pub fn events(&self) -> Vec<Value> {
        let prefix = format!("/api/{ERROR_TRACKER_PROJECT}/envelope/");
        let mut events = Vec::new();
        for request in self.server.received_at(&prefix) {
            // An envelope: a header line, then for each item a header line and its payload.
            let text = String::from_utf8_lossy(&request.body).to_string();
            let mut lines = text.lines().skip(1);
            while let (Some(header), Some(payload)) = (lines.next(), lines.next()) {
                let header: Value = serde_json::from_str(header).unwrap_or(Value::Null);
                if header["type"] == "event" {
                    events.push(serde_json::from_str(payload).unwrap_or(Value::Null));
                }
            }
        }
        events
    }

    /// The raw envelopes received (to check what they do not carry).
    pub fn envelopes(&self) -> Vec<Received> {
        self.server.received()
    }
}

static GATEWAY: OnceLock<Gateway> = OnceLock::new();

/// The `JqTimeoutMs` the tests' emulator is deployed with.
pub const JQ_TIMEOUT_MS: u64 = 10_000;

/// Where the suite's emulator records every AWS request (moto's recorder, one JSON object
/// per line), next to the test binaries: `cargo run -p handoff-e2e --bin iam-check` reads it.
pub fn aws_request_recording() -> std::path::PathBuf {
    jq_sandbox_executable().with_file_name("e2e-aws-requests.jsonl")
}

/// The tests package's `handoff-jq-sandbox` binary: cargo builds a package's binaries with
/// its integration tests, next to the `deps/` directory the test binary runs from.
pub fn jq_sandbox_executable() -> std::path::PathBuf {
    let name = format!("handoff-jq-sandbox{}", std::env::consts::EXE_SUFFIX);
    let found = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors().skip(1).take(2).map(|dir| dir.join(&name)).find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| panic!("{name} was not built next to this test binary (cargo test builds it)"))
}

/// The shared emulator, started on first use on a thread (and runtime) of its own so it
/// outlives every test's runtime. Its clock never moves: tests run on it side by side.
pub fn gateway() -> &'static Gateway {
    GATEWAY.get_or_init(|| start_gateway(aws_request_recording()))
}

/// A second emulator (its own moto) for the tests that move the clock
/// ([`Gateway::advance_clock_to`]): a move would fire the timers and schedules of every
/// other test running on the shared one. Tests on it run one after the other
/// ([`clock_lock`]), as each assumes nobody else moves its time.
pub fn clock_gateway() -> &'static Gateway {
    CLOCK_GATEWAY.get_or_init(|| start_gateway(clock_aws_request_recording()))
}

static CLOCK_GATEWAY: OnceLock<Gateway> = OnceLock::new();

/// Held by a test for as long as it moves [`clock_gateway`]'s clock.
pub async fn clock_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Where [`clock_gateway`]'s moto records (iam-check reads it with the shared one's).
pub fn clock_aws_request_recording() -> std::path::PathBuf {
    jq_sandbox_executable().with_file_name("e2e-clock-aws-requests.jsonl")
}

fn start_gateway(recording: std::path::PathBuf) -> Gateway {
    logs::capture();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("emulator".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut options = handoff_emulator::EmulatorOptions {
                    // Tests change versions and expect the next exchange to see it.
                    env_overrides: BTreeMap::from([("HANDOFF_DEFINITION_CACHE_SECONDS".to_string(), "1".to_string())]),
                    jq_sandbox_executable: jq_sandbox_executable(),
                    // For `iam-check`: every AWS request the suite makes, by function.
                    aws_request_recording: Some(recording),
                    ..Default::default()
                };
                // Short enough for the runaway-program test to wait out, long enough for the tests' largest
                // documents in a dev build on a loaded machine.
                options.parameter_overrides.insert("JqTimeoutMs".into(), JQ_TIMEOUT_MS.to_string());
                // System failures go to an error tracker, as in a deployment that has one; its
                // DSN secret is created before anything can fail (it is read at the first report).
                options.parameter_overrides.insert("ErrorTracker".into(), "on".into());
                let tracker = ErrorTrackerServer::start().await;
                match handoff_emulator::start(options).await {
                    Ok(running) => {
                        let function_vars: HashMap<String, HashMap<String, String>> =
                            running.functions().iter().map(|f| (f.spec.binary.clone(), f.vars.clone())).collect();
                        let secret = function_vars
                            .get("handoff-dlq")
                            .and_then(|vars| vars.get("HANDOFF_ERROR_TRACKER_DSN_SECRET"))
                            .cloned()
                            .unwrap_or_default();
                        let sdk = handoff_emulator::sdk_config_for(running.aws_endpoint()).await;
                        let created = aws_sdk_secretsmanager::Client::new(&sdk)
                            .create_secret()
                            .name(&secret)
                            .secret_string(&tracker.dsn)
                            .send()
                            .await;
                        if let Err(e) = created {
                            let _ = tx.send(Err(format!("the error tracker's DSN secret '{secret}': {e:?}")));
                            return;
                        }
                        let _ = tx.send(Ok((
                            running.api_url().to_string(),
                            running.dev_token().unwrap_or_default().to_string(),
                            running.aws_endpoint().to_string(),
                            function_vars,
                            tracker,
                        )));
                        // Keep it running for the life of the test binary.
                        std::future::pending::<()>().await;
                        drop(running);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        })
        .expect("spawn emulator thread");
    let (api, token, aws_endpoint, function_vars, error_tracker) = rx
        .recv()
        .expect("emulator thread ended before reporting")
        .unwrap_or_else(|e| panic!("emulator failed to start: {e}"));
    assert!(!token.is_empty(), "the emulator runs its development issuer in tests");
    Gateway {
        api,
        token,
        aws_endpoint,
        function_vars,
        error_tracker,
        // No pooled connections: a pooled connection belongs to the runtime of the test that
        // opened it and dies with that test.
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(40))
            .pool_max_idle_per_host(0)
            .build()
            .expect("http client"),
    }
}

/// A code no other test uses.
pub fn unique_code(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Gateway {
    pub async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> (StatusCode, Value) {
        self.request_as(Some(&self.token), method, path, body).await
    }

    /// A request with `token` as its bearer token (`None`: anonymous).
    pub async fn request_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.api));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{path}: {e:?}"));
        let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
        let bytes = response.bytes().await.expect("body");
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, Some(serde_json::to_vec(body).expect("json"))).await
    }

    /// Posts `body` to a callback URL a partner was given (`…/notifications/{token}`).
    pub async fn post_callback(&self, callback_url: &str, body: &Value) -> (u16, Value) {
        let path = callback_url
            .split_once("/notifications/")
            .map(|(_, t)| format!("/notifications/{t}"))
            .expect("a callback URL ends in /notifications/{token}");
        let (status, body) = self.post(&path, body).await;
        (status.as_u16(), body)
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.request(Method::PATCH, path, Some(serde_json::to_vec(body).expect("json"))).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(Method::GET, path, None).await
    }

    /// The emulator's time (`GET /_emulator/clock`), as RFC 3339.
    pub async fn clock_now(&self) -> String {
        let (status, body) = self.get("/_emulator/clock").await;
        assert_eq!(status, StatusCode::OK, "reading the emulator's clock: {body}");
        body["now"].as_str().expect("now").to_string()
    }

    /// Moves the emulator's clock forward to `to` (RFC 3339) with `POST /_emulator/clock`,
    /// as a user would; returns once its scheduler has ticked on the new time. Only on
    /// [`clock_gateway`], under [`clock_lock`].
    pub async fn advance_clock_to(&self, to: &str) {
        let (status, body) = self.post("/_emulator/clock", &serde_json::json!({"to": to})).await;
        assert_eq!(status, StatusCode::OK, "moving the clock to {to}: {body}");
        assert_eq!(body["schedulerCaughtUp"], true, "the scheduler did not tick on the new time: {body}");
    }

    /// Creates an integration version and insists on 201. A new code is created with its
    /// endpoint enabled unless the definition says otherwise (`endpointStatus`): tests not
    /// about endpoints create and enable in one call, as a user may.
    pub async fn create_integration(&self, definition: &Value) -> Value {
        let mut definition = definition.clone();
        if let Some(map) = definition.as_object_mut() {
            map.entry("endpointStatus").or_insert_with(|| Value::String("Enabled".into()));
        }
        let (status, body) = self.post("/integrations", &definition).await;
        assert_eq!(status, StatusCode::CREATED, "creating integration: {body}");
        body
    }

    /// Invokes and insists on 202; returns the exchange id.
    pub async fn invoke(&self, request: &Value) -> String {
        let (status, body) = self.post("/exchanges", request).await;
        assert_eq!(status, StatusCode::ACCEPTED, "invoking: {body}");
        body["exchangeId"].as_str().expect("exchangeId").to_string()
    }

    pub async fn exchange(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/exchanges/{id}")).await;
        assert_eq!(status, StatusCode::OK, "reading exchange {id}: {body}");
        body
    }

    /// Polls the exchange until `done` holds (or panics with the last state after `timeout`).
    pub async fn wait_for(&self, id: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let exchange = self.exchange(id).await;
            if done(&exchange) {
                return exchange;
            }
            if Instant::now() > deadline {
                panic!(
                    "exchange {id} did not reach the expected state in {timeout:?}: {exchange:#}\n{}",
                    logs::about(id)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the exchange is final.
    pub async fn wait_final(&self, id: &str) -> Value {
        self.wait_for(id, Duration::from_secs(90), |e| matches!(e["statusCode"].as_str(), Some("C" | "F" | "T"))).await
    }

    pub fn var(&self, binary: &str, name: &str) -> String {
        self.function_vars
            .get(binary)
            .and_then(|v| v.get(name))
            .unwrap_or_else(|| panic!("{binary} has no variable {name}"))
            .clone()
    }
}

/// The sub-steps of an exchange as (subStep, status) pairs.
pub fn sub_steps(exchange: &Value) -> Vec<(String, String)> {
    exchange["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| (s["subStep"].as_str().unwrap_or("?").to_string(), s["status"].as_str().unwrap_or("?").to_string()))
        .collect()
}

// ------------------------------------------------------------------ loopback systems

/// A request an external system received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }
}

#[derive(Clone)]
struct Behaviour {
    received: Arc<Mutex<Vec<Received>>>,
    /// Scripted answers (status, body), used in order; then `default`.
    script: Arc<Mutex<VecDeque<(u16, Bytes)>>>,
    /// Requests whose path starts with one of these prefixes get that status.
    failing_paths: Arc<Mutex<Vec<(String, u16)>>>,
    default: Arc<Mutex<(u16, Bytes)>>,
}

/// A real HTTP server on 127.0.0.1 standing in for a source or target system. It records
/// every request and answers with scripted responses.
pub struct ExternalSystem {
    pub url: String,
    behaviour: Behaviour,
}

impl ExternalSystem {
    /// Answers every request with `status` and `body` unless scripted otherwise.
    pub async fn start(status: u16, body: impl Into<Bytes>) -> Self {
        let behaviour = Behaviour {
            received: Arc::default(),
            script: Arc::default(),
            failing_paths: Arc::default(),
            default: Arc::new(Mutex::new((status, body.into()))),
        };
        let app = Router::new()
            .fallback(record)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(behaviour.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, behaviour }
    }

    /// The next answers, in order, before falling back to the default.
    pub fn script(&self, answers: impl IntoIterator<Item = (u16, &'static str)>) {
        let mut script = self.behaviour.script.lock().expect("lock");
        script.extend(answers.into_iter().map(|(s, b)| (s, Bytes::from_static(b.as_bytes()))));
    }

    /// Answers `status` to every request whose path starts with `prefix`, until cleared.
    pub fn fail_path(&self, prefix: &str, status: u16) {
        self.behaviour.failing_paths.lock().expect("lock").push((prefix.to_string(), status));
    }

    pub fn clear_failing_paths(&self) {
        self.behaviour.failing_paths.lock().expect("lock").clear();
    }

    /// The requests whose path starts with `prefix`.
    pub fn received_at(&self, prefix: &str) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.path.starts_with(prefix)).collect()
    }

    /// How many requests arrived (without copying them).
    pub fn received_count(&self) -> usize {
        self.behaviour.received.lock().expect("lock").len()
    }

    pub fn received(&self) -> Vec<Received> {
        self.behaviour.received.lock().expect("lock").clone()
    }
}

async fn record(
    State(b): State<Behaviour>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    b.received.lock().expect("lock").push(Received {
        method: method.to_string(),
        path: uri.to_string(),
        headers,
        body,
    });
    let failing = b
        .failing_paths
        .lock()
        .expect("lock")
        .iter()
        .find(|(prefix, _)| uri.path().starts_with(prefix.as_str()))
        .map(|(_, status)| *status);
    if let Some(status) = failing {
        return (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [("content-type", "application/json")],
            Bytes::from_static(b"{}"),
        )
            .into_response();
    }
    let (status, body) = match b.script.lock().expect("lock").pop_front() {
        Some(answer) => answer,
        None => b.default.lock().expect("lock").clone(),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, [("content-type", "application/json")], body.clone()).into_response();
    // A scripted redirect: its body is the Location.
    if status.is_redirection() {
        if let Ok(location) = axum::http::HeaderValue::from_bytes(&body) {
            response.headers_mut().insert(axum::http::header::LOCATION, location);
        }
    }
    response
}

// ------------------------------------------------------------------ direct AWS access

/// A function of the stack, built with the same wiring and environment the emulator uses,
/// to invoke it as its schedule would (without waiting minutes for the schedule).
pub async fn function(binary: &str) -> std::sync::Arc<dyn handoff_app::entry::function::FunctionHandler> {
    function_with(binary, &[]).await
}

/// [`function`] with some environment variables changed (e.g. a queue of the test's own, to
/// see what the function sends without the stack acting on it).
pub async fn function_with(
    binary: &str,
    overrides: &[(&str, &str)],
) -> std::sync::Arc<dyn handoff_app::entry::function::FunctionHandler> {
    let gw = gateway();
    let mut vars = gw.function_vars.get(binary).unwrap_or_else(|| panic!("no function {binary}")).clone();
    vars.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let aws = handoff_runtime::compose::AwsEnvironment {
        sdk: handoff_emulator::sdk_config_for(&gw.aws_endpoint).await,
        s3_force_path_style: true,
        // The shared emulator's clock never moves (see [`clock_gateway`]).
        clock: std::sync::Arc::new(handoff_ports::SystemClock),
    };
    handoff_runtime::compose::build_function(binary, &vars, &aws)
        .await
        .unwrap_or_else(|e| panic!("building {binary}: {e}"))
}

/// An SQS client on the emulator's AWS endpoint (to replay messages as SQS may).
pub async fn sqs_client() -> aws_sdk_sqs::Client {
    let sdk = handoff_emulator::sdk_config_for(&gateway().aws_endpoint).await;
    aws_sdk_sqs::Client::new(&sdk)
}

/// Waits until a queue holds no visible or in-flight message. Delayed messages (retries
/// other tests scheduled minutes ahead) do not count.
pub async fn wait_until_drained(sqs: &aws_sdk_sqs::Client, queue_url: &str, timeout: Duration) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let deadline = Instant::now() + timeout;
    loop {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("queue attributes");
        let pending: u64 =
            attributes.attributes().map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum()).unwrap_or(0);
        if pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "queue {queue_url} still holds {pending} messages");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The reference pipeline the benches measure: query → transformation (jq) → rest delivery.
pub mod reference {
    use serde_json::{json, Value};

    /// What the source system answers: two providers.
    pub const SOURCE_BODY: &str =
        r#"[{"providerId": 1, "displayName": "Alpha"}, {"providerId": 2, "displayName": "Beta"}]"#;

    /// The sub-steps an exchange of [`pipeline`] runs, in order.
    pub const SUB_STEPS: [&str; 5] =
        ["ExchangeTriggered", "InvokeQuery", "Transform", "DeliverRest", "ExchangeSignoff"];

    /// The definition (enabled) of `code`: fetch the providers of `{{parameters.region}}` from
    /// `source`, rename their fields with jq, POST them to `target`.
    pub fn pipeline(code: &str, source: &str, target: &str) -> Value {
        json!({
            "code": code, "version": 1, "enabled": true, "endpointStatus": "Enabled",
            "steps": [
                {"name": "fetch", "type": "dataCollection", "kind": "query",
                 "request": {"method": "GET", "url": format!("{source}/providers?region={{{{parameters.region}}}}")}},
                {"name": "map", "type": "transformation",
                 "function": {"jq": "map({id: .providerId, name: .displayName})"}, "output": {"format": "json"}},
                {"name": "send", "type": "delivery", "destinations": [
                    {"kind": "rest", "main": true, "request": {"method": "POST", "url": format!("{target}/providers")}}]}
            ]
        })
    }
}

/// Reading moto's request recording (`/moto-api/recorder/download-recording`), shared by the
/// cost-measuring commands.
pub mod recording {
    use base64::Engine;
    use serde_json::Value;

    /// moto's request recorder (`/moto-api/recorder/*`) of the moto at `endpoint`.
    pub struct Recorder {
        endpoint: String,
        client: reqwest::Client,
    }

    impl Recorder {
        pub fn new(endpoint: &str) -> Self {
            Self { endpoint: endpoint.trim_end_matches('/').to_string(), client: reqwest::Client::new() }
        }

        async fn post(&self, action: &str) -> anyhow::Result<()> {
            let url = format!("{}/moto-api/recorder/{action}", self.endpoint);
            self.client.post(url).send().await?.error_for_status()?;
            Ok(())
        }

        /// Forgets what was recorded and records from now on.
        pub async fn restart(&self) -> anyhow::Result<()> {
            self.post("reset-recording").await?;
            self.post("start-recording").await
        }

        pub async fn stop(&self) -> anyhow::Result<()> {
            self.post("stop-recording").await
        }

        /// Every request recorded so far, in the order moto served them.
        pub async fn requests(&self) -> anyhow::Result<Vec<Value>> {
            let url = format!("{}/moto-api/recorder/download-recording", self.endpoint);
            let text = self.client.get(url).send().await?.error_for_status()?.text().await?;
            let requests = text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str);
            Ok(requests.collect::<Result<_, _>>()?)
        }
    }

    /// The service (`DynamoDB`, `SQS`, `S3`, else the signing name) and action of a recorded
    /// request: from `X-Amz-Target` (DynamoDB, SQS's JSON protocol), SQS's query protocol's
    /// `Action=`, S3's method and path, else `METHOD /path`.
    pub fn service_action(request: &Value) -> (String, String) {
        let method = request["method"].as_str().unwrap_or("?");
        let url = request["url"].as_str().unwrap_or("");
        let target = header(request, "x-amz-target").unwrap_or("");
        let signing_name = signing_name(request);
        if let Some(a) = target.strip_prefix("DynamoDB_20120810.") {
            return ("DynamoDB".into(), a.into());
        }
        if let Some(a) = target.strip_prefix("AmazonSQS.") {
            return ("SQS".into(), a.into());
        }
        let (path, query) = path_and_query(url);
        if signing_name == "sqs" {
            if let Some(a) = body(request).split('&').find_map(|p| p.strip_prefix("Action=").map(str::to_string)) {
                return ("SQS".into(), a);
            }
        }
        if signing_name == "s3" {
            return ("S3".into(), s3_action(method, &path, &query));
        }
        (signing_name.to_string(), format!("{method} {path}"))
    }

    /// The access key a recorded request was signed with (the emulator gives each function
    /// its own: `handoff_emulator::function_access_key`).
    pub fn access_key(request: &Value) -> &str {
        header(request, "authorization")
            .and_then(|a| a.split("Credential=").nth(1))
            .and_then(|c| c.split('/').next())
            .unwrap_or_default()
    }

    /// The service from the SigV4 credential scope (`.../<region>/<service>/aws4_request`).
    fn signing_name(request: &Value) -> &str {
        header(request, "authorization")
            .and_then(|a| a.split("Credential=").nth(1))
            .and_then(|c| c.split(',').next())
            .and_then(|scope| scope.split('/').nth(3))
            .unwrap_or("unknown")
    }

    /// The path (from `/`) and query of a recorded request's URL.
    pub fn path_and_query(url: &str) -> (String, String) {
        let after_host = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
        let path = after_host.find('/').map(|i| &after_host[i..]).unwrap_or("/");
        match path.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (path.to_string(), String::new()),
        }
    }

    fn s3_action(method: &str, path: &str, query: &str) -> String {
        let has = |k: &str| query.split('&').any(|p| p == k || p.starts_with(&format!("{k}=")));
        let object = path.trim_start_matches('/').contains('/');
        match (method, object) {
            ("PUT", true) if has("partNumber") => "UploadPart",
            ("PUT", true) => "PutObject",
            ("POST", true) if has("uploads") => "CreateMultipartUpload",
            ("POST", true) if has("uploadId") => "CompleteMultipartUpload",
            ("GET", true) => "GetObject",
            ("HEAD", true) => "HeadObject",
            ("DELETE", true) if has("uploadId") => "AbortMultipartUpload",
            ("DELETE", true) => "DeleteObject",
            ("GET", false) if has("list-type") => "ListObjectsV2",
            ("HEAD", false) => "HeadBucket",
            (m, _) => return format!("{m} {path}"),
        }
        .to_string()
    }

    /// A header of a recorded request, by case-insensitive name.
    pub fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
        request["headers"].as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.as_str())
    }

    /// The body of a recorded request as text (moto stores some bodies base64-encoded).
    pub fn body(request: &Value) -> String {
        let raw = request["body"].as_str().unwrap_or_default();
        if request["body_encoded"].as_bool() == Some(true) {
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        } else {
            raw.to_string()
        }
    }
}
