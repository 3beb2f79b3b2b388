//! The loopback systems of the chaos run, one server:
//! * a **source** (`GET /source/...`) serving a few records;
//! * a **target** (`POST /apply/{exchange}/{destination}`) that applies each request once per
//!   `Idempotency-Key`, as a well-behaved target does, and counts what it received, applied and
//!   dropped as a duplicate;
//! * a **partner** (`POST /partner/{kind}/{exchange}`) that takes process, extract and activity
//!   invocations and answers by callback: at once, late, twice, or never; its files
//!   (`GET /files/...`) and recovery links (on the target) are on the same host.
//!
//! While faults are on, the target and the partner answer a share of requests with a 503, slowly,
//! by resetting the connection, or by applying and then resetting (the answer lost).

use super::net::{respond, Answer, Dropped, ReadRequest};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the partner answers one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CallbackPlan {
    Prompt,
    /// After a few seconds.
    Late,
    /// At once, then the same callback again (it must be refused).
    Twice,
    /// Never: the step times out.
    Never,
}

/// What a target or partner does with a request while faults are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TargetFault {
    Unavailable,
    Slow,
    Reset,
    AppliedAnswerLost,
}

impl TargetFault {
    fn name(self) -> &'static str {
        match self {
            Self::Unavailable => "target: 503",
            Self::Slow => "target: slow answer",
            Self::Reset => "target: reset",
            Self::AppliedAnswerLost => "target: applied, answer lost",
        }
    }
}

/// One callback the partner posted, and what the gateway answered (0: no answer at all).
#[derive(Debug, Clone)]
pub struct CallbackPosted {
    pub exchange_id: String,
    pub token_url: String,
    pub plan: CallbackPlan,
    /// What invoked the partner: `process`, `extract` or `activity`.
    pub kind: String,
    /// When the partner took the invocation (the callback window opens about then).
    pub invoked_at: std::time::Instant,
    /// When the gateway first answered one of its tries (not a 5xx), if it ever did.
    pub first_answer_at: Option<std::time::Instant>,
    pub answers: Vec<u16>,
    /// Every try, with what came of it (for a counterexample).
    pub tries: Vec<String>,
}

struct State {
    url: Mutex<String>,
    faults_on: AtomicBool,
    fault_rate: f64,
    rng: Mutex<StdRng>,
    records: Mutex<SystemsReport>,
    http: reqwest::Client,
    late_seconds: (u64, u64),
}

/// What the systems saw, for the checks.
#[derive(Debug, Default, Clone)]
pub struct SystemsReport {
    /// Path → the distinct Idempotency-Keys applied there.
    pub applied: BTreeMap<String, BTreeSet<String>>,
    pub received: u64,
    pub duplicates_dropped: u64,
    pub faults: BTreeMap<&'static str, u64>,
    /// Exchange → the plan of its invocations (chosen once per exchange).
    pub plans: HashMap<String, CallbackPlan>,
    /// Processes (invocations that may go unanswered) that have a plan.
    pub process_plans: usize,
    pub invocations: u64,
    pub callbacks: Vec<CallbackPosted>,
    pub callbacks_pending: u64,
}

#[derive(Clone)]
pub struct Systems {
    pub url: String,
    state: Arc<State>,
}

impl Systems {
    /// `fault_rate`: the share of target and partner requests that meet a fault while faults
    /// are on; `late_seconds`: the range a late callback waits.
    pub async fn start(fault_rate: f64, late_seconds: (u64, u64), seed: u64) -> anyhow::Result<Self> {
        let state = Arc::new(State {
            url: Mutex::default(),
            faults_on: AtomicBool::new(false),
            fault_rate,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            records: Mutex::default(),
            http: reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build()?,
            late_seconds,
        });
        let handler_state = state.clone();
        let url = super::net::serve(0, move |request| handle(handler_state.clone(), request)).await?;
        if let Ok(mut u) = state.url.lock() {
            *u = url.clone();
        }
        Ok(Self { url, state })
    }

    pub fn set_faults(&self, on: bool) {
        self.state.faults_on.store(on, Ordering::SeqCst);
    }

    /// Callbacks scheduled and not yet answered by the gateway.
    pub fn callbacks_pending(&self) -> u64 {
        self.state.records.lock().map(|r| r.callbacks_pending).unwrap_or(0)
    }

    pub fn report(&self) -> SystemsReport {
        self.state.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// The records a query reads (each exchange of the subflow pipeline fans out per region).
pub fn source_records() -> Value {
    json!([
        {"id": 1, "name": "Alpha", "region": "north"},
        {"id": 2, "name": "Beta", "region": "south"},
        {"id": 3, "name": "Gamma", "region": "north"}
    ])
}

fn draw_fault(state: &State) -> Option<TargetFault> {
    if !state.faults_on.load(Ordering::SeqCst) {
        return None;
    }
    let mut rng = state.rng.lock().ok()?;
    if !rng.random_bool(state.fault_rate) {
        return None;
    }
    Some(match rng.random_range(0..4) {
        0 => TargetFault::Unavailable,
        1 => TargetFault::Slow,
        2 => TargetFault::Reset,
        _ => TargetFault::AppliedAnswerLost,
    })
}

/// Draws and counts a fault: `Err` with the answer when it ends the request here (a 503, a
/// reset), else the fault to play after handling it (a lost answer), after a stall if slow.
async fn meet_fault(state: &State) -> Result<Option<TargetFault>, Answer> {
    let fault = draw_fault(state);
    if let Some(f) = fault {
        if let Ok(mut r) = state.records.lock() {
            *r.faults.entry(f.name()).or_default() += 1;
        }
    }
    match fault {
        Some(TargetFault::Unavailable) => Err(respond(503, "application/json", r#"{"error":"busy"}"#)),
        Some(TargetFault::Reset) => Err(Err(Dropped)),
        Some(TargetFault::Slow) => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(fault)
        }
        _ => Ok(fault),
    }
}

async fn handle(state: Arc<State>, request: ReadRequest) -> Answer {
    let path = request.uri.path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["source", ..] => respond(200, "application/json", source_records().to_string()),
        ["files", name] => {
            let exchange = name.trim_end_matches(".csv");
            respond(200, "text/csv", format!("id,name\n1,{exchange}\n"))
        }
        ["apply", _, _] => apply(&state, &request, &path).await,
        ["partner", kind, exchange] => invoked(&state, &request, kind, exchange).await,
        _ => respond(404, "application/json", "{}"),
    }
}

/// The target: applies once per (path, Idempotency-Key).
async fn apply(state: &State, request: &ReadRequest, path: &str) -> Answer {
    let fault = match meet_fault(state).await {
        Ok(fault) => fault,
        Err(answer) => return answer,
    };
    let key = request.header("idempotency-key").unwrap_or("").to_string();
    if let Ok(mut r) = state.records.lock() {
        r.received += 1;
        let keys = r.applied.entry(path.to_string()).or_default();
        if !keys.insert(key) {
            r.duplicates_dropped += 1;
        }
    }
    if fault == Some(TargetFault::AppliedAnswerLost) {
        return Err(Dropped);
    }
    respond(200, "application/json", r#"{"applied":true}"#)
}

/// The partner: takes the invocation (faults as the target), then answers by callback.
async fn invoked(state: &Arc<State>, request: &ReadRequest, kind: &str, exchange: &str) -> Answer {
    let fault = match meet_fault(state).await {
        Ok(fault) => fault,
        Err(answer) => return answer,
    };
    let Some(callback_url) = request.header("x-handoff-callback-url").map(str::to_string) else {
        return respond(400, "application/json", r#"{"error":"no callback URL"}"#);
    };
    let base = state.url.lock().map(|u| u.clone()).unwrap_or_default();
    let body = match kind {
        "extract" => json!({
            "status": "success",
            "files": [{"name": "records.csv", "url": format!("{base}/files/{exchange}.csv")}],
            "messages": [format!("extracted 1 record for {exchange}")]
        }),
        "activity" => json!({
            "status": "success",
            "data": {"reconciled": exchange},
            "recoveryLinks": [{"url": format!("{base}/apply/{exchange}/recovery")}],
            "messages": ["1 record parked"]
        }),
        _ => json!({"status": "success", "data": {"settled": exchange}}),
    };
    let plan = {
        let mut rng = match state.rng.lock() {
            Ok(rng) => rng,
            Err(_) => return Err(Dropped),
        };
        // Only a process may never answer or answer twice; extracts and activities answer.
        let drawn = match (kind, rng.random_range(0..10)) {
            (_, 0..=5) => CallbackPlan::Prompt,
            (_, 6 | 7) => CallbackPlan::Late,
            ("process", 8) => CallbackPlan::Twice,
            ("process", _) => CallbackPlan::Never,
            _ => CallbackPlan::Prompt,
        };
        let delay = rng.random_range(state.late_seconds.0..=state.late_seconds.1);
        let Ok(mut guard) = state.records.lock() else { return Err(Dropped) };
        let r = &mut *guard;
        r.invocations += 1;
        // The first processes take each plan once, so that even a short run meets every
        // one (drawn alone, a few dozen processes miss `Never` or `Twice` now and then).
        let first_plans = [CallbackPlan::Never, CallbackPlan::Twice, CallbackPlan::Late, CallbackPlan::Prompt];
        let drawn = match first_plans.get(r.process_plans) {
            Some(plan) if kind == "process" => *plan,
            _ => drawn,
        };
        // One plan per exchange: a repeated invocation (a retry) is answered the same way.
        let plan = *r.plans.entry(exchange.to_string()).or_insert_with(|| {
            r.process_plans += usize::from(kind == "process");
            drawn
        });
        if plan != CallbackPlan::Never {
            r.callbacks_pending += 1;
        }
        (plan, delay)
    };
    let (plan, delay) = plan;
    if plan != CallbackPlan::Never {
        let state = state.clone();
        let exchange = exchange.to_string();
        let (kind, invoked_at) = (kind.to_string(), std::time::Instant::now());
        tokio::spawn(async move {
            if plan == CallbackPlan::Late {
                tokio::time::sleep(Duration::from_secs(delay)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut tries = Vec::new();
            let first = post_until_answered(&state.http, &callback_url, &body, &mut tries).await;
            let first_answer_at = first.1;
            let mut answers = vec![first.0];
            if plan == CallbackPlan::Twice {
                answers.push(post_until_answered(&state.http, &callback_url, &body, &mut tries).await.0);
            }
            if let Ok(mut r) = state.records.lock() {
                r.callbacks_pending = r.callbacks_pending.saturating_sub(1);
                r.callbacks.push(CallbackPosted {
                    exchange_id: exchange,
                    token_url: callback_url,
                    plan,
                    kind,
                    invoked_at,
                    first_answer_at,
                    answers,
                    tries,
                });
            }
        });
    }
    if fault == Some(TargetFault::AppliedAnswerLost) {
        return Err(Dropped);
    }
    respond(202, "application/json", r#"{"accepted":true}"#)
}

/// Posts a callback until the gateway answers (it may be down for a moment): the status and
/// when it came; 0 when it never did within two minutes.
async fn post_until_answered(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    tries: &mut Vec<String>,
) -> (u16, Option<std::time::Instant>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline {
        let at = chrono::Utc::now().format("%H:%M:%S%.3f");
        match http.post(url).json(body).send().await {
            // A 5xx of the gateway (a restart under way) is not an answer about the token.
            Ok(response) if !response.status().is_server_error() => {
                let answered_at = std::time::Instant::now();
                let status = response.status().as_u16();
                tries.push(format!("{at} HTTP {status} {}", response.text().await.unwrap_or_default()));
                return (status, Some(answered_at));
            }
            Ok(response) => tries.push(format!("{at} HTTP {}", response.status())),
            Err(e) => tries.push(format!("{at} {e}")),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (0, None)
}
