//! The chaos run (issue 13): a steady load of mixed pipelines started over the HTTP API, with
//! faults — the gateway killed with SIGKILL and restarted against the same AWS emulator, a
//! fault proxy in front of that emulator, duplicate SQS deliveries, targets that fail, stall
//! or reset — then a bounded drain and the checks: nothing lost, nothing applied twice,
//! nothing stuck, no message or due timer left behind, no callback used twice.
//!
//! Modelled on Temporal's omes load checks and Restate's Jepsen nemeses; loopback only. The
//! bench (`cargo run --release -p handoff-e2e --bin chaos`) and the suite's short run
//! (`tests/chaos`) both call [`run`].

pub mod gateway;
pub mod net;
pub mod proxy;
pub mod systems;

use anyhow::Context as _;
use gateway::{GatewayProcess, GatewaySpec};
use proxy::{FaultProxy, ProxyFaults};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use systems::{CallbackPlan, Systems};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Exchanges started over the API (scheduled ones and sub-exchanges come on top).
    pub exchanges: usize,
    pub seed: u64,
    /// Exchanges started per second.
    pub rate_per_second: f64,
    /// SIGKILLs of the gateway, at random moments of the load.
    pub kills: usize,
    /// Share of DynamoDB/SQS/S3 requests that meet a fault, and of SQS deletes swallowed.
    pub proxy_faults: ProxyFaults,
    /// Share of target and partner requests that meet a fault.
    pub target_fault_rate: f64,
    /// How long after the load every exchange must be final.
    pub drain: Duration,
    /// A waiting step's `timeoutSeconds` (callbacks that never come).
    pub callback_timeout_seconds: u64,
    /// Queue visibility timeouts and claim leases are capped at this for the run (see
    /// [`chaos_template`]).
    pub visibility_cap_seconds: u64,
    /// SQS pollers per queue in the gateway process.
    pub pollers_per_source: usize,
    /// Where the run keeps its template, state and the gateway's log.
    pub work_dir: PathBuf,
    /// The binary whose `gateway` mode runs the gateway ([`gateway::serve`]).
    pub gateway_executable: PathBuf,
}

impl ChaosConfig {
    /// The bench's defaults for `exchanges` exchanges.
    pub fn new(exchanges: usize, seed: u64, work_dir: PathBuf, gateway_executable: PathBuf) -> Self {
        Self {
            exchanges,
            seed,
            rate_per_second: 20.0,
            kills: (exchanges / 500).clamp(2, 20),
            proxy_faults: ProxyFaults { request_fault_rate: 0.01, duplicate_delivery_rate: 0.02 },
            target_fault_rate: 0.05,
            drain: Duration::from_secs(300),
            callback_timeout_seconds: 20,
            visibility_cap_seconds: 20,
            pollers_per_source: 2,
            work_dir,
            gateway_executable,
        }
    }
}

/// What the run found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    pub seed: u64,
    pub started: usize,
    pub accepted: usize,
    /// Invocations that got no answer (the gateway went down under them).
    pub unanswered: usize,
    /// Why invocations went unanswered: timed out, connection lost (a kill), HTTP 5xx.
    pub unanswered_by_kind: BTreeMap<String, usize>,
    /// Every exchange the run found at the end (scheduled ones and sub-exchanges included).
    pub exchanges: usize,
    pub by_status: BTreeMap<String, usize>,
    pub load: Duration,
    pub drain: Duration,
    /// Each SIGKILL of the gateway: when (wall clock, to match with logs and dead letters)
    /// and how long it stayed down.
    pub kills: Vec<(chrono::DateTime<chrono::Utc>, Duration)>,
    pub faults: BTreeMap<String, u64>,
    pub callbacks: BTreeMap<String, usize>,
    pub target_received: u64,
    pub target_duplicates_dropped: u64,
    pub latency_p50_ms: i64,
    pub latency_p99_ms: i64,
    pub lost: Vec<String>,
    /// Valid invocations answered with something other than 202.
    pub refused: Vec<String>,
    pub applied_twice: Vec<String>,
    pub stuck: Vec<String>,
    /// Stuck exchanges by where their next step was found once the gateway stopped.
    pub stuck_by_cause: BTreeMap<String, usize>,
    /// Final but not as expected (Failed though its targets accepted, or never delivered).
    pub wrong_outcome: Vec<String>,
    /// Explained, not counterexamples: exchanges that timed out waiting for a callback whose
    /// every try met a gateway that was down (killed) until after the callback's window had
    /// closed. The gateway cannot accept what never reaches it; the exchange is Failed and
    /// recoverable. (A callback that was accepted and still timed out is a counterexample:
    /// accepting marks the step, and the timeout then loses.)
    pub timed_out_while_down: Vec<String>,
    pub messages_left: Vec<String>,
    pub timers_left: Vec<String>,
    pub callbacks_used_twice: Vec<String>,
}

impl ChaosReport {
    /// True when no check found a counterexample.
    pub fn passed(&self) -> bool {
        self.accepted > 0
            && [
                &self.lost,
                &self.refused,
                &self.applied_twice,
                &self.stuck,
                &self.wrong_outcome,
                &self.messages_left,
                &self.timers_left,
                &self.callbacks_used_twice,
            ]
            .iter()
            .all(|v| v.is_empty())
    }
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "chaos run, seed {}", self.seed)?;
        writeln!(
            f,
            "  exchanges: {} started over the API, {} accepted, {} unanswered; {} in all (scheduled and sub-exchanges included)",
            self.started, self.accepted, self.unanswered, self.exchanges
        )?;
        if !self.unanswered_by_kind.is_empty() {
            let kinds: Vec<String> = self.unanswered_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
            writeln!(f, "    unanswered: {}", kinds.join(", "))?;
        }
        let statuses: Vec<String> = self.by_status.iter().map(|(s, n)| format!("{s} {n}")).collect();
        writeln!(f, "  final statuses: {}", statuses.join(", "))?;
        writeln!(f, "  load {:.1} s, drain {:.1} s", self.load.as_secs_f64(), self.drain.as_secs_f64())?;
        writeln!(f, "  gateway kills (SIGKILL): {}", self.kills.len())?;
        let kills: Vec<String> = self
            .kills
            .iter()
            .map(|(at, down)| format!("{} (down {:.1} s)", at.format("%H:%M:%S%.3fZ"), down.as_secs_f64()))
            .collect();
        for line in kills.chunks(4) {
            writeln!(f, "    {}", line.join(", "))?;
        }
        writeln!(f, "  faults injected: {}", self.faults.values().sum::<u64>())?;
        for (fault, n) in &self.faults {
            writeln!(f, "    {fault:<48} {n:>7}")?;
        }
        let callbacks: Vec<String> = self.callbacks.iter().map(|(p, n)| format!("{p} {n}")).collect();
        writeln!(f, "  partner callbacks: {}", callbacks.join(", "))?;
        writeln!(
            f,
            "  target: {} requests received, {} duplicates dropped by Idempotency-Key",
            self.target_received, self.target_duplicates_dropped
        )?;
        writeln!(
            f,
            "  end-to-end latency of completed exchanges: p50 {} ms, p99 {} ms",
            self.latency_p50_ms, self.latency_p99_ms
        )?;
        writeln!(
            f,
            "  lost {} / refused {} / applied twice {} / stuck {} / wrong outcome {} / messages left {} / timers left {} / callbacks used twice {}",
            self.lost.len(),
            self.refused.len(),
            self.applied_twice.len(),
            self.stuck.len(),
            self.wrong_outcome.len(),
            self.messages_left.len(),
            self.timers_left.len(),
            self.callbacks_used_twice.len()
        )?;
        if !self.stuck_by_cause.is_empty() {
            let causes: Vec<String> = self.stuck_by_cause.iter().map(|(c, n)| format!("{c} {n}")).collect();
            writeln!(f, "  stuck: {}", causes.join(", "))?;
        }
        if !self.timed_out_while_down.is_empty() {
            writeln!(
                f,
                "  explained: {} exchange(s) timed out waiting for a callback that met the gateway down through its whole window",
                self.timed_out_while_down.len()
            )?;
            for line in self.timed_out_while_down.iter().take(20) {
                writeln!(f, "    {line}")?;
            }
        }
        for (what, list) in [
            ("lost", &self.lost),
            ("refused", &self.refused),
            ("applied twice", &self.applied_twice),
            ("stuck", &self.stuck),
            ("wrong outcome", &self.wrong_outcome),
            ("message left", &self.messages_left),
            ("timer left", &self.timers_left),
            ("callback used twice", &self.callbacks_used_twice),
        ] {
            for line in list.iter().take(20) {
                writeln!(f, "  counterexample ({what}): {line}")?;
            }
            if list.len() > 20 {
                writeln!(f, "  … and {} more {what}", list.len() - 20)?;
            }
        }
        write!(f, "  result: {}", if self.passed() { "PASSED" } else { "FAILED" })
    }
}

/// The template the run provisions: the project's, with queue visibility timeouts and
/// function timeouts capped at `cap` seconds, so that the messages of an invocation killed
/// mid-flight come back within the drain (AWS would take the template's values; nothing else
/// changes). The claim leases, which match the visibility timeouts, are capped alike by the
/// gateway's environment ([`gateway::serve`]).
pub fn chaos_template(template: &str, cap: u64) -> String {
    let capped = |line: &str, key: &str| -> Option<String> {
        let (indent, rest) = line.split_at(line.len() - line.trim_start().len());
        let value = rest.strip_prefix(key)?.trim().trim_matches('"');
        let seconds: u64 = value.parse().ok()?;
        let quote = if rest.contains('"') { "\"" } else { "" };
        Some(format!("{indent}{key} {quote}{}{quote}", seconds.min(cap)))
    };
    template
        .lines()
        .map(|line| {
            ["VisibilityTimeout:", "Timeout:"]
                .iter()
                .find_map(|key| capped(line, key))
                .unwrap_or_else(|| line.to_string())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------------------ the pipelines

/// One pipeline of the mix: its integration code, how often it is started, and the target
/// paths (`/apply/{exchange}/{name}`) a Completed exchange of it has applied.
struct Pipeline {
    code: &'static str,
    weight: u32,
    applies: &'static [&'static str],
}

const PIPELINES: [Pipeline; 6] = [
    Pipeline { code: "CHAOS_REST", weight: 35, applies: &["main"] },
    Pipeline { code: "CHAOS_SECONDARY", weight: 15, applies: &["main", "secondary"] },
    Pipeline { code: "CHAOS_CALLBACK", weight: 20, applies: &["main"] },
    Pipeline { code: "CHAOS_EXTRACT", weight: 10, applies: &["main"] },
    Pipeline { code: "CHAOS_ACTIVITY", weight: 10, applies: &["recovery", "main"] },
    Pipeline { code: "CHAOS_PARENT", weight: 10, applies: &["summary"] },
];
const CHILD: (&str, &[&str]) = ("CHAOS_CHILD", &["main"]);
const SCHEDULED: (&str, &[&str]) = ("CHAOS_SCHEDULED", &["main"]);

fn applies_of(code: &str) -> &'static [&'static str] {
    PIPELINES
        .iter()
        .find(|p| p.code == code)
        .map(|p| p.applies)
        .or_else(|| [CHILD, SCHEDULED].iter().find(|(c, _)| *c == code).map(|(_, a)| *a))
        .unwrap_or(&[])
}

fn definitions(systems: &str, callback_timeout: u64) -> Vec<Value> {
    let retry = json!({"maxAttempts": 12, "intervalSeconds": 1, "backoffRate": 1.5, "maxIntervalSeconds": 4});
    let apply = |name: &str| {
        json!({"kind": "rest", "main": name != "secondary",
               "request": {"method": "POST", "url": format!("{systems}/apply/{{{{exchange.exchangeId}}}}/{name}")}})
    };
    let deliver = |names: &[&str]| {
        json!({"name": "send", "type": "delivery", "retry": retry,
               "destinations": names.iter().map(|n| apply(n)).collect::<Vec<_>>()})
    };
    let query = json!({"name": "fetch", "type": "dataCollection", "kind": "query", "retry": retry,
                       "request": {"method": "GET", "url": format!("{systems}/source/records")}});
    let partner = |kind: &str| format!("{systems}/partner/{kind}/{{{{exchange.exchangeId}}}}");
    vec![
        json!({"code": "CHAOS_REST", "version": 1, "enabled": true, "endpointStatus": "Enabled", "steps": [
            query,
            {"name": "shape", "type": "transformation", "function": {"jq": "map({id, name})"}},
            deliver(&["main"])]}),
        json!({"code": "CHAOS_SECONDARY", "version": 1, "enabled": true, "endpointStatus": "Enabled", "steps": [query, deliver(&["main", "secondary"])]}),
        json!({"code": "CHAOS_CALLBACK", "version": 1, "enabled": true, "endpointStatus": "Enabled", "steps": [
            {"name": "settle", "type": "invokeProcess", "kind": "process", "expectNotification": true,
             "timeoutSeconds": callback_timeout, "retry": retry,
             "request": {"method": "POST", "url": partner("process"), "body": "{\"run\": \"{{exchange.exchangeId}}\"}"}},
            deliver(&["main"])]}),
        json!({"code": "CHAOS_EXTRACT", "version": 1, "enabled": true, "endpointStatus": "Enabled", "steps": [
            {"name": "extract", "type": "dataCollection", "kind": "extract", "downloadMessages": true,
             "timeoutSeconds": callback_timeout * 3, "retry": retry,
             "request": {"method": "POST", "url": partner("extract")}},
            deliver(&["main"])]}),
        json!({"code": "CHAOS_ACTIVITY", "version": 1, "enabled": true, "endpointStatus": "Enabled", "steps": [
            {"name": "reconcile", "type": "invokeProcess", "kind": "activity", "expectNotification": true,
             "autoRecovery": true, "downloadMessages": true, "timeoutSeconds": callback_timeout * 3, "retry": retry,
             "request": {"method": "POST", "url": partner("activity")}},
            deliver(&["main"])]}),
        json!({"code": "CHAOS_CHILD", "version": 1, "enabled": true, "endpointStatus": "Enabled", "steps": [
            {"name": "shape", "type": "transformation", "function": {"jq": "{region: $parameters.region}"}},
            deliver(&["main"])]}),
        json!({"code": "CHAOS_PARENT", "version": 1, "enabled": true, "endpointStatus": "Enabled", "steps": [
            query,
            {"name": "perRegion", "type": "subflow", "integrationCode": "CHAOS_CHILD",
             "function": {"jq": "[.[] | .region] | unique | map({region: .})"}},
            deliver(&["summary"])]}),
        json!({"code": "CHAOS_SCHEDULED", "version": 1, "enabled": true, "endpointStatus": "Enabled",
               "schedule": {"expression": "cron(* * * * ? *)", "timezone": "UTC"},
               "steps": [query, deliver(&["main"])]}),
    ]
}

// ------------------------------------------------------------------ the run

/// The API as the load driver sees it: tolerant of the gateway being down for a moment.
#[derive(Clone)]
struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    /// `GET path`, retried while the gateway is down or restarting (up to `patience`).
    async fn get(&self, path: &str, patience: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + patience;
        loop {
            match self.http.get(format!("{}{path}", self.url)).send().await {
                Ok(r) if r.status().is_success() => return Ok(r.json().await?),
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => return Ok(Value::Null),
                Ok(r) if !r.status().is_server_error() => {
                    anyhow::bail!("GET {path}: HTTP {}: {}", r.status(), r.text().await.unwrap_or_default())
                }
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(300)).await,
                Ok(r) => anyhow::bail!("GET {path}: HTTP {}", r.status()),
                Err(e) => anyhow::bail!("GET {path}: {e}"),
            }
        }
    }

    /// Every exchange with `query` (e.g. `status=Started`), following the cursor.
    async fn exchanges(&self, query: &str, max_pages: usize) -> anyhow::Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..max_pages {
            let mut path = "/exchanges?limit=100".to_string();
            if !query.is_empty() {
                path.push('&');
                path.push_str(query);
            }
            if let Some(c) = &cursor {
                path.push_str(&format!(
                    "&cursor={}",
                    url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
                ));
            }
            let page = self.get(&path, Duration::from_secs(60)).await?;
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            cursor = page["nextCursor"].as_str().map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        Ok(items)
    }
}

/// An exchange's log lines, one after the other (for a counterexample).
async fn log_of(api: &Api, id: &str) -> String {
    let Ok(logs) = api.get(&format!("/exchanges/{id}/logs?limit=100"), Duration::from_secs(10)).await else {
        return "(unreadable)".into();
    };
    let lines: Vec<String> = logs["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|l| {
                    format!(
                        "[{} {}] {}",
                        l["timestamp"].as_str().unwrap_or(""),
                        l["stepId"].as_str().unwrap_or(""),
                        l["line"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    lines.join(" | ")
}

enum Invoked {
    Accepted(String),
    /// No answer to tell whether it was accepted (the final listing finds it if it was).
    Unanswered(&'static str),
    /// Answered, but not with 202: the gateway refused a valid invocation.
    Refused(String),
}

/// Starts one exchange; a refused connection (the gateway down) is tried again, anything
/// after the request went out is not (it may have been accepted: the final listing finds it).
async fn invoke(api: &Api, code: &str) -> Invoked {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match api.http.post(format!("{}/exchanges", api.url)).json(&json!({"integrationCode": code})).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                return match r.json::<Value>().await {
                    Ok(body) => body["exchangeId"]
                        .as_str()
                        .map_or(Invoked::Unanswered("202 without an id"), |id| Invoked::Accepted(id.into())),
                    Err(_) => Invoked::Unanswered("connection lost"),
                };
            }
            Err(e) if e.is_connect() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            // 503 from the gateway starting up: nothing was created.
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(r) if !r.status().is_server_error() => {
                let status = r.status();
                return Invoked::Refused(format!("{code}: HTTP {status}: {}", r.text().await.unwrap_or_default()));
            }
            Ok(r) => {
                return Invoked::Unanswered(if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    "HTTP 503 past the retry deadline"
                } else {
                    "HTTP 5xx"
                })
            }
            Err(e) if e.is_timeout() => return Invoked::Unanswered("timed out (30 s)"),
            Err(_) => return Invoked::Unanswered("connection lost"),
        }
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

const NOT_FINAL: [&str; 4] = ["New", "Started", "WaitingOnExternalSystem", "WaitingForSubExchangesToFinish"];

/// Runs the load, the faults, the drain and the checks.
pub async fn run(config: ChaosConfig) -> anyhow::Result<ChaosReport> {
    std::fs::create_dir_all(&config.work_dir)?;
    let template_path = config.work_dir.join("template.yaml");
    let template = std::fs::read_to_string(handoff_emulator::moto::workspace_root().join("infra/template.yaml"))?;
    std::fs::write(&template_path, chaos_template(&template, config.visibility_cap_seconds))?;
    let state_dir = config.work_dir.join("state");
    std::fs::create_dir_all(&state_dir)?;

    let mut moto = handoff_emulator::moto::MotoServer::start().await.context("starting moto")?;
    let proxy = FaultProxy::start(moto.endpoint(), config.proxy_faults, config.seed).await?;
    let systems = Systems::start(config.target_fault_rate, (3, 12), config.seed.wrapping_add(1)).await?;
    let port = handoff_emulator::moto::free_port()?;
    let gateway = Arc::new(tokio::sync::Mutex::new(GatewayProcess::new(GatewaySpec {
        executable: config.gateway_executable.clone(),
        port,
        aws_endpoint: proxy.url.clone(),
        template: template_path,
        claim_lease_seconds: config.visibility_cap_seconds,
        pollers_per_source: config.pollers_per_source,
        state_dir: state_dir.clone(),
        log: config.work_dir.join("gateway.log"),
    })));
    gateway.lock().await.start().await?;
    let api_url = gateway.lock().await.url();

    let issuer = handoff_emulator::auth::DevIssuer::load_or_create(&state_dir)?;
    let token = issuer.mint(
        "chaos",
        &handoff_emulator::auth::ALL_SCOPES,
        handoff_emulator::auth::DEV_AUDIENCE,
        Duration::from_secs(12 * 3600),
    )?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    let http =
        reqwest::Client::builder().no_proxy().default_headers(headers).timeout(Duration::from_secs(30)).build()?;
    let api = Api { url: api_url.clone(), http };
    for definition in definitions(&systems.url, config.callback_timeout_seconds) {
        let r = api.http.post(format!("{api_url}/integrations")).json(&definition).send().await?;
        anyhow::ensure!(r.status().is_success(), "creating {}: {}", definition["code"], r.text().await?);
    }

    // ---- load, with faults and kills
    proxy.set_faults(true);
    systems.set_faults(true);
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(2));
    let load_seconds = config.exchanges as f64 / config.rate_per_second;
    let mut kill_at: Vec<f64> = (0..config.kills).map(|_| rng.random_range(0.05..0.95) * load_seconds).collect();
    kill_at.sort_by(f64::total_cmp);
    let downtimes: Vec<u64> = (0..config.kills).map(|_| rng.random_range(200..2000)).collect();
    let load_started = Instant::now();
    let killer = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let mut kills = Vec::new();
            for (at, down) in kill_at.into_iter().zip(downtimes) {
                tokio::time::sleep_until((load_started + Duration::from_secs_f64(at)).into()).await;
                let mut g = gateway.lock().await;
                g.kill()?;
                let (killed_at, down_since) = (chrono::Utc::now(), Instant::now());
                tokio::time::sleep(Duration::from_millis(down)).await;
                g.start().await?;
                kills.push((killed_at, down_since.elapsed()));
            }
            anyhow::Ok(kills)
        })
    };
    let total_weight: u32 = PIPELINES.iter().map(|p| p.weight).sum();
    let accepted: Arc<Mutex<Vec<(String, &'static str)>>> = Arc::default();
    let unanswered: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(config.exchanges);
    for i in 0..config.exchanges {
        let mut pick = rng.random_range(0..total_weight);
        let pipeline = PIPELINES.iter().find(|p| {
            if pick < p.weight {
                return true;
            }
            pick -= p.weight;
            false
        });
        let code = pipeline.map_or("CHAOS_REST", |p| p.code);
        tokio::time::sleep_until((load_started + Duration::from_secs_f64(i as f64 / config.rate_per_second)).into())
            .await;
        let permit = limit.clone().acquire_owned().await?;
        let (api, accepted, unanswered, refused) = (api.clone(), accepted.clone(), unanswered.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            match invoke(&api, code).await {
                Invoked::Accepted(id) => accepted.lock().map(|mut a| a.push((id, code))).unwrap_or(()),
                Invoked::Unanswered(kind) => {
                    unanswered.lock().map(|mut u| *u.entry(kind.to_string()).or_default() += 1).unwrap_or(())
                }
                Invoked::Refused(why) => refused.lock().map(|mut r| r.push(why)).unwrap_or(()),
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let kills = killer.await??;
    let load = load_started.elapsed();
    proxy.set_faults(false);
    systems.set_faults(false);

    // ---- drain: every exchange final, every callback answered
    let drain_started = Instant::now();
    let expected_failures = |plans: &HashMap<String, CallbackPlan>| -> HashSet<String> {
        plans.iter().filter(|(_, p)| **p == CallbackPlan::Never).map(|(id, _)| id.clone()).collect()
    };
    // Each listing is an index query that moto answers by reading the whole table: poll
    // gently, and list the failures only once nothing is open.
    let poll_every = Duration::from_secs(if config.exchanges > 1000 { 10 } else { 2 });
    loop {
        let mut open = 0;
        for status in NOT_FINAL {
            open += api.exchanges(&format!("status={status}"), 1).await?.len();
        }
        let mut done = open == 0 && systems.callbacks_pending() == 0;
        if done {
            let failed = api.exchanges("status=Failed", 200).await?;
            let never = expected_failures(&systems.report().plans);
            done = failed.iter().all(|e| never.contains(e["exchangeId"].as_str().unwrap_or("")));
        }
        if done || drain_started.elapsed() > config.drain {
            break;
        }
        tokio::time::sleep(poll_every).await;
    }
    let drain = drain_started.elapsed();

    // ---- checks
    let all = api.exchanges("", 100_000).await?;
    let seen = systems.report();
    let never = expected_failures(&seen.plans);
    // One lock, taken and released before the report is built.
    let unanswered_by_kind = unanswered.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let mut report = ChaosReport {
        seed: config.seed,
        started: config.exchanges,
        unanswered: unanswered_by_kind.values().sum(),
        unanswered_by_kind,
        exchanges: all.len(),
        load,
        drain,
        kills,
        target_received: seen.received,
        target_duplicates_dropped: seen.duplicates_dropped,
        ..ChaosReport::default()
    };
    let accepted = accepted.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    report.accepted = accepted.len();
    report.refused = refused.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let by_id: HashMap<&str, &Value> = all.iter().filter_map(|e| Some((e["exchangeId"].as_str()?, e))).collect();
    for (id, code) in &accepted {
        if !by_id.contains_key(id.as_str()) {
            let detail = api.get(&format!("/exchanges/{id}"), Duration::from_secs(30)).await?;
            if detail.is_null() {
                report.lost.push(format!("{id} ({code}): accepted with 202, not found"));
            }
        }
    }
    let mut latencies = Vec::new();
    // Exchanges not final: (id, what the report says of it).
    let mut stuck: Vec<(String, String)> = Vec::new();
    for exchange in &all {
        let id = exchange["exchangeId"].as_str().unwrap_or("?");
        let code = exchange["integrationCode"].as_str().unwrap_or("?");
        let status = exchange["status"].as_str().unwrap_or("?");
        *report.by_status.entry(status.to_string()).or_default() += 1;
        if exchange["final"] != json!(true) {
            stuck.push((id.to_string(), format!("{id} ({code}): {status}")));
            continue;
        }
        let expected_to_fail = never.contains(id);
        match (status, expected_to_fail) {
            ("Completed", false) => {
                if let Some(ms) = exchange["durationMs"].as_i64() {
                    latencies.push(ms);
                }
                for name in applies_of(code) {
                    if !seen.applied.contains_key(&format!("/apply/{id}/{name}")) {
                        report.lost.push(format!("{id} ({code}): Completed, but nothing applied at {name}"));
                    }
                }
            }
            ("Completed", true) => {
                report.wrong_outcome.push(format!("{id} ({code}): Completed though its callback never came"))
            }
            (_, true) => {}
            (other, false) => {
                let posted: Vec<&systems::CallbackPosted> =
                    seen.callbacks.iter().filter(|c| c.exchange_id == id).collect();
                // The window a callback had (the definitions' timeoutSeconds), counted from
                // when the partner took the call: a little later than the gateway's own.
                let window = |kind: &str| match kind {
                    "process" => Duration::from_secs(config.callback_timeout_seconds),
                    _ => Duration::from_secs(config.callback_timeout_seconds * 3),
                };
                let unreachable_through_window = exchange["error"]["code"] == "CallbackTimeout"
                    && !posted.is_empty()
                    && posted.iter().all(|c| c.first_answer_at.is_none_or(|at| at > c.invoked_at + window(&c.kind)));
                let callbacks: Vec<String> = posted
                    .iter()
                    .map(|c| {
                        let token = c.token_url.rsplit('/').next().unwrap_or("");
                        format!("…{} {:?} tries {:?}", &token[token.len().saturating_sub(6)..], c.plan, c.tries)
                    })
                    .collect();
                if unreachable_through_window {
                    report.timed_out_while_down.push(format!("{id} ({code}): callbacks [{}]", callbacks.join(", ")));
                    continue;
                }
                report.wrong_outcome.push(format!(
                    "{id} ({code}): {other} though its targets accept: {}; callbacks posted: [{}]; log: {}",
                    exchange["error"],
                    callbacks.join(", "),
                    log_of(&api, id).await
                ))
            }
        }
    }
    for (path, keys) in &seen.applied {
        if keys.len() > 1 {
            report.applied_twice.push(format!("{path}: applied under {} distinct Idempotency-Keys", keys.len()));
        }
    }
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for callback in &seen.callbacks {
        *report.callbacks.entry(format!("{:?}", callback.plan).to_lowercase()).or_default() += 1;
        let accepted = callback.answers.iter().filter(|a| (200..300).contains(*a)).count();
        *uses.entry(callback.token_url.as_str()).or_default() += accepted;
    }
    report.callbacks.insert("never".into(), never.len());
    for (token, n) in uses {
        if n > 1 {
            let path = token.split_once("/notifications/").map_or(token, |(_, t)| t);
            report
                .callbacks_used_twice
                .push(format!("token …{}: accepted {n} times", &path[path.len().saturating_sub(8)..]));
        }
    }
    latencies.sort_unstable();
    report.latency_p50_ms = percentile(&latencies, 50.0);
    report.latency_p99_ms = percentile(&latencies, 99.0);
    report.faults = proxy.counts();
    for (fault, n) in &seen.faults {
        report.faults.insert(fault.to_string(), *n);
    }

    let sdk = handoff_emulator::sdk_config_for(moto.endpoint()).await;
    // Messages left may still be handled within the visibility cap, unless the run already
    // failed: then the gateway stops at once, so that where each stuck exchange's next step
    // waits is read as it was at the verdict (and the messages are counted as they were).
    let mut patience = Duration::from_secs(config.visibility_cap_seconds * 2 + 30);
    if !stuck.is_empty() {
        gateway.lock().await.kill()?;
        // What the killed gateway had received comes back into view.
        tokio::time::sleep(Duration::from_secs(config.visibility_cap_seconds + 2)).await;
        let ids: Vec<String> = stuck.iter().map(|(id, _)| id.clone()).collect();
        let found = locate(&sdk, &ids).await?;
        for (id, mut line) in stuck {
            let cause = found.get(&id).map_or_else(
                || "no message readable in any queue (delayed ones cannot be read), no timer but its retention".into(),
                |places| places.iter().cloned().collect::<Vec<_>>().join(", "),
            );
            line.push_str(&format!(": {cause}"));
            let kind = if found.contains_key(&id) { "next step queued or timed" } else { "nothing found" };
            *report.stuck_by_cause.entry(kind.to_string()).or_default() += 1;
            report.stuck.push(line);
        }
        patience = Duration::ZERO;
    }
    leftovers(&sdk, patience, &mut report).await?;
    gateway.lock().await.kill()?;
    moto.stop();
    Ok(report)
}

/// For each of `ids`, where its next step waits: messages in a queue (read, not deleted:
/// the run is over) and timers on the due index. Ids are matched as whole words of a
/// message body or a timer's attributes, whatever their shape.
async fn locate(sdk: &aws_config::SdkConfig, ids: &[String]) -> anyhow::Result<HashMap<String, BTreeSet<String>>> {
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut found: HashMap<String, BTreeSet<String>> = HashMap::new();
    // A sub-exchange's id is its parent's with `.step.index`: words take the dots in.
    let mut note = |text: &str, place: &str| {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c))) {
            if wanted.contains(word) {
                found.entry(word.to_string()).or_default().insert(place.to_string());
            }
        }
    };
    let sqs = aws_sdk_sqs::Client::new(sdk);
    for url in sqs.list_queues().send().await?.queue_urls() {
        let name = url.rsplit('/').next().unwrap_or(url);
        loop {
            let page = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(3600)
                .wait_time_seconds(0)
                .send()
                .await?;
            if page.messages().is_empty() {
                break;
            }
            for message in page.messages() {
                note(message.body().unwrap_or(""), &format!("message in {name}"));
            }
        }
    }
    for timer in timers(sdk).await? {
        // Every exchange has one: it says nothing about what comes next.
        if timer.due_key.ends_with("#retention") {
            continue;
        }
        let text: Vec<&str> = timer.item.values().filter_map(|v| v.as_s().ok().map(String::as_str)).collect();
        note(&text.join(" "), &format!("timer {}", timer.due_key));
    }
    Ok(found)
}

/// Messages in any queue or dead-letter queue (given `patience` to come back and be
/// handled), and timers overdue on the due index.
async fn leftovers(sdk: &aws_config::SdkConfig, patience: Duration, report: &mut ChaosReport) -> anyhow::Result<()> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let deadline = Instant::now() + patience;
    loop {
        let mut left = Vec::new();
        let queues = sqs.list_queues().send().await?;
        for url in queues.queue_urls() {
            let attributes = sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
                .send()
                .await?;
            let count = |name: aws_sdk_sqs::types::QueueAttributeName| -> u64 {
                attributes.attributes().and_then(|a| a.get(&name)).and_then(|v| v.parse().ok()).unwrap_or(0)
            };
            use aws_sdk_sqs::types::QueueAttributeName as A;
            let n = count(A::ApproximateNumberOfMessages)
                + count(A::ApproximateNumberOfMessagesNotVisible)
                + count(A::ApproximateNumberOfMessagesDelayed);
            if n > 0 {
                let name = url.rsplit('/').next().unwrap_or(url);
                left.push(format!("{name}: {n} message(s)"));
            }
        }
        if left.is_empty() || Instant::now() > deadline {
            report.messages_left = left;
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let overdue_before = chrono::Utc::now().timestamp_millis() - 120_000;
    for timer in timers(sdk).await? {
        let due: i64 = timer.due_key.split('#').next().and_then(|d| d.parse().ok()).unwrap_or(0);
        if due < overdue_before {
            report.timers_left.push(format!("{}: {} overdue", timer.table, timer.due_key));
        }
    }
    Ok(())
}

/// A timer item as stored on the due index.
struct StoredTimer {
    table: String,
    /// Its sort key on the due index (`gsi4sk`): due time in milliseconds, then its kind.
    due_key: String,
    item: HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
}

/// Every timer on the due index of every table.
async fn timers(sdk: &aws_config::SdkConfig) -> anyhow::Result<Vec<StoredTimer>> {
    let dynamo = aws_sdk_dynamodb::Client::new(sdk);
    let mut found = Vec::new();
    for table in dynamo.list_tables().send().await?.table_names() {
        let mut start = None;
        loop {
            let page = dynamo
                .scan()
                .table_name(table)
                .filter_expression("gsi4pk = :timers")
                .expression_attribute_values(":timers", aws_sdk_dynamodb::types::AttributeValue::S("TIMERS".into()))
                .set_exclusive_start_key(start)
                .send()
                .await?;
            found.extend(page.items().iter().map(|item| StoredTimer {
                table: table.clone(),
                due_key: item.get("gsi4sk").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default(),
                item: item.clone(),
            }));
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chaos_template_caps_visibility_and_function_timeouts_only() {
        let template = "Q:\n  VisibilityTimeout: 960\n  Timeout: 10\n  F:\n    Timeout: 900\n    Other: 960";
        let capped = chaos_template(template, 20);
        assert_eq!(capped, "Q:\n  VisibilityTimeout: 20\n  Timeout: 10\n  F:\n    Timeout: 20\n    Other: 960");
    }

    #[test]
    fn percentiles_pick_by_rank() {
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 51);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&[], 99.0), 0);
    }
}
