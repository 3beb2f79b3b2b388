//! The fault proxy between the gateway and the AWS emulator. It forwards every request, and
//! while its faults are on it answers a share of the DynamoDB, SQS and S3 requests the way AWS
//! answers under stress:
//! * throttling (`ProvisionedThroughputExceededException` and `ThrottlingException` for
//!   DynamoDB, `RequestThrottled` for SQS, `SlowDown` for S3);
//! * a 5xx (`InternalServerError`, `InternalError`);
//! * a reset (the connection closed before the request went anywhere);
//! * a lost answer (the request is executed, then the connection closed before the answer:
//!   the client cannot tell it from a reset, and its retry executes it again);
//! * a duplicate delivery (an SQS delete answered as done but not forwarded: the message comes
//!   back after its visibility timeout, as when a consumer's delete is lost).
//!
//! It also plays the one AWS guarantee moto lacks that a lost answer depends on: a
//! `TransactWriteItems` retried with the same `ClientRequestToken` succeeds without writing
//! twice (see [`forward`]).

use super::net::{respond, Answer, Dropped, ReadRequest};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Service {
    DynamoDb,
    Sqs,
    S3,
    /// Scheduler, Secrets Manager, SNS, moto's own API: forwarded untouched.
    Other,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Self::DynamoDb => "dynamodb",
            Self::Sqs => "sqs",
            Self::S3 => "s3",
            Self::Other => "other",
        }
    }
}

/// What a request is, as far as faults go.
struct Call {
    service: Service,
    /// The JSON protocols' operation (`X-Amz-Target`'s suffix); empty for S3.
    operation: String,
}

fn classify(request: &ReadRequest) -> Call {
    let path = request.uri.path();
    if let Some(target) = request.header("x-amz-target") {
        let (prefix, operation) = target.split_once('.').unwrap_or((target, ""));
        let service = match prefix {
            "DynamoDB_20120810" => Service::DynamoDb,
            "AmazonSQS" => Service::Sqs,
            _ => Service::Other,
        };
        return Call { service, operation: operation.to_string() };
    }
    let form = request.header("content-type").is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let other =
        form || path.starts_with("/moto-api") || path.starts_with("/schedule") || path.starts_with("/2015-03-31");
    Call { service: if other { Service::Other } else { Service::S3 }, operation: String::new() }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// With the service's throttling code.
    Throttle(&'static str),
    ServerError,
    Reset,
    LostAnswer,
    DuplicateDelivery,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::Throttle(code) => code,
            Self::ServerError => "5xx",
            Self::Reset => "reset",
            Self::LostAnswer => "executed, answer lost",
            Self::DuplicateDelivery => "delete lost (duplicate delivery)",
        }
    }
}

/// How often faults strike while they are on.
#[derive(Debug, Clone, Copy)]
pub struct ProxyFaults {
    /// Share of DynamoDB/SQS/S3 requests given one of throttle, 5xx, reset, lost answer.
    pub request_fault_rate: f64,
    /// Share of SQS deletes swallowed (each one a duplicate delivery later).
    pub duplicate_delivery_rate: f64,
}

struct State {
    upstream: String,
    client: reqwest::Client,
    faults: ProxyFaults,
    on: AtomicBool,
    rng: Mutex<StdRng>,
    counts: Mutex<BTreeMap<String, u64>>,
    /// Successful `TransactWriteItems` answers by `ClientRequestToken`.
    replays: Mutex<HashMap<String, Forwarded>>,
}

/// A running fault proxy (its tasks live as long as the runtime).
#[derive(Clone)]
pub struct FaultProxy {
    pub url: String,
    state: Arc<State>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`; faults start off.
    pub async fn start(upstream: &str, faults: ProxyFaults, seed: u64) -> anyhow::Result<Self> {
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder().no_proxy().build()?,
            faults,
            on: AtomicBool::new(false),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counts: Mutex::default(),
            replays: Mutex::default(),
        });
        let handler_state = state.clone();
        let url = super::net::serve(0, move |request| handle(handler_state.clone(), request)).await?;
        Ok(Self { url, state })
    }

    pub fn set_faults(&self, on: bool) {
        self.state.on.store(on, Ordering::SeqCst);
    }

    /// Faults injected so far, by "service: fault (operation kind)".
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.state.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

fn choose(state: &State, call: &Call) -> Option<Fault> {
    if call.service == Service::Other || !state.on.load(Ordering::SeqCst) {
        return None;
    }
    let mut rng = state.rng.lock().ok()?;
    let deletes = call.service == Service::Sqs && call.operation.starts_with("DeleteMessage");
    if deletes && rng.random_bool(state.faults.duplicate_delivery_rate) {
        return Some(Fault::DuplicateDelivery);
    }
    if !rng.random_bool(state.faults.request_fault_rate) {
        return None;
    }
    Some(match rng.random_range(0..4) {
        0 => Fault::Throttle(match call.service {
            Service::DynamoDb if rng.random_bool(0.5) => "ProvisionedThroughputExceededException",
            Service::DynamoDb => "ThrottlingException",
            Service::Sqs => "RequestThrottled",
            _ => "SlowDown",
        }),
        1 => Fault::ServerError,
        2 => Fault::Reset,
        _ => Fault::LostAnswer,
    })
}

async fn handle(state: Arc<State>, request: ReadRequest) -> Answer {
    let call = classify(&request);
    let fault = choose(&state, &call);
    if let Some(fault) = fault {
        let label = format!("{}: {}", call.service.name(), fault.name());
        if let Ok(mut counts) = state.counts.lock() {
            *counts.entry(label).or_default() += 1;
        }
        match fault {
            Fault::Throttle(code) => return throttled(call.service, code),
            Fault::ServerError => return server_error(call.service),
            Fault::Reset => return Err(Dropped),
            Fault::DuplicateDelivery => return swallowed_delete(&call, &request.body),
            Fault::LostAnswer => {
                let _ = forward(&state, &call, request).await;
                return Err(Dropped);
            }
        }
    }
    forward(&state, &call, request).await?.answer()
}

const HOP_BY_HOP: [&str; 6] = ["host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade"];

/// An upstream answer, kept whole so that it can be replayed.
#[derive(Clone)]
struct Forwarded {
    status: hyper::StatusCode,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Forwarded {
    fn answer(&self) -> Answer {
        let mut answer = hyper::Response::new(http_body_util::Full::new(self.body.clone()));
        *answer.status_mut() = self.status;
        for (name, value) in &self.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                answer.headers_mut().append(name, value.clone());
            }
        }
        Ok(answer)
    }
}

/// Forwards, playing one thing moto does not: DynamoDB's idempotency of `TransactWriteItems`
/// by `ClientRequestToken` (the SDK sets one per call and keeps it across its retries; a
/// repeated token of a call that succeeded succeeds again without writing). Without it, a
/// lost answer would come back as a conflict AWS never gives.
async fn forward(state: &State, call: &Call, request: ReadRequest) -> Result<Forwarded, Dropped> {
    let token = (call.service == Service::DynamoDb && call.operation == "TransactWriteItems")
        .then(|| serde_json::from_slice::<Value>(&request.body).ok())
        .flatten()
        .and_then(|body| body["ClientRequestToken"].as_str().map(str::to_string));
    if let Some(token) = &token {
        let replay = state.replays.lock().ok().and_then(|r| r.get(token).cloned());
        if let Some(replay) = replay {
            if let Ok(mut counts) = state.counts.lock() {
                *counts.entry("dynamodb: transaction replayed by its ClientRequestToken".into()).or_default() += 1;
            }
            return Ok(replay);
        }
    }
    let path = request.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut outbound = state.client.request(request.method.clone(), format!("{}{path}", state.upstream));
    for (name, value) in &request.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            outbound = outbound.header(name, value);
        }
    }
    // The upstream unreachable is what a reset looks like to the caller.
    let response = outbound.body(request.body).send().await.map_err(|_| Dropped)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|_| Dropped)?;
    let forwarded = Forwarded { status, headers, body };
    if let (Some(token), true) = (token, status.is_success()) {
        if let Ok(mut replays) = state.replays.lock() {
            replays.insert(token, forwarded.clone());
        }
    }
    Ok(forwarded)
}

fn throttled(service: Service, code: &str) -> Answer {
    match service {
        Service::DynamoDb => {
            let namespace = if code == "ThrottlingException" {
                "com.amazon.coral.availability"
            } else {
                "com.amazonaws.dynamodb.v20120810"
            };
            json_error(400, &format!("{namespace}#{code}"), "Rate of requests exceeds the allowed throughput.")
        }
        Service::Sqs => sqs_error(400, "RequestThrottled", "Sender"),
        _ => xml_error(503, "SlowDown", "Please reduce your request rate."),
    }
}

fn server_error(service: Service) -> Answer {
    match service {
        Service::DynamoDb => {
            json_error(500, "com.amazonaws.dynamodb.v20120810#InternalServerError", "Internal server error")
        }
        Service::Sqs => sqs_error(500, "InternalError", "Receiver"),
        _ => xml_error(500, "InternalError", "We encountered an internal error. Please try again."),
    }
}

fn json_error(status: u16, kind: &str, message: &str) -> Answer {
    respond(status, "application/x-amz-json-1.0", json!({"__type": kind, "message": message}).to_string())
}

/// SQS's JSON protocol, with the query-compatible code header its SDKs read.
fn sqs_error(status: u16, code: &str, fault: &str) -> Answer {
    let mut answer = json_error(status, &format!("com.amazonaws.sqs#{code}"), "chaos")?;
    if let Ok(value) = hyper::header::HeaderValue::from_str(&format!("{code};{fault}")) {
        answer.headers_mut().insert("x-amzn-query-error", value);
    }
    Ok(answer)
}

fn xml_error(status: u16, code: &str, message: &str) -> Answer {
    let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>chaos</RequestId></Error>");
    respond(status, "application/xml", body)
}

/// The answer SQS gives a delete that worked, for a delete that was not forwarded.
fn swallowed_delete(call: &Call, body: &Bytes) -> Answer {
    if call.operation == "DeleteMessageBatch" {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let successful: Vec<Value> = request["Entries"]
            .as_array()
            .map(|entries| entries.iter().map(|e| json!({"Id": e["Id"]})).collect())
            .unwrap_or_default();
        return respond(200, "application/x-amz-json-1.0", json!({"Successful": successful, "Failed": []}).to_string());
    }
    respond(200, "application/x-amz-json-1.0", "{}")
}
