//! Use-case tests of the application layer against the in-memory fakes of every port
//! (`handoff-ports`, feature `test-util`): the HTTP routes through axum `oneshot`, the
//! workers, the DLQ handler, timers, recovery, callbacks and the jobs — no AWS emulator.
//! External systems are real loopback servers (or a loopback port nobody listens on).

use axum::body::Body;
use handoff_app::context::{AppContext, AppSettings, Ports};
use handoff_app::effects::run_effects;
use handoff_app::entry::api::router;
use handoff_app::entry::dlq::DlqFunction;
use handoff_app::entry::function::FunctionHandler;
use handoff_app::entry::jobs::JobsFunction;
use handoff_app::entry::worker::{WorkerError, WorkerFunction};
use handoff_core::error_code::ErrorCode;
use handoff_core::exchange::{ExchangeDetail, ExchangeStatus, StepStatus};
use handoff_core::handoff::{CallbackToken, HandoffMessage, QueueMessage, Timer, TimerKind};
use handoff_core::identity::{Caller, Scope};
use handoff_core::ids::{ExchangeId, StepId};
use handoff_core::machine::Effect;
use handoff_core::plan::{SubStep, WorkerFamily};
use handoff_ports::memory::{
    ManualClock, MemoryDataFileStore, MemoryEndpoints, MemoryErrorTracker, MemoryEventQueues, MemoryExchangeRepository,
    MemoryIntegrationRepository, MemoryMappings, MemoryQueue, MemorySchedules, MemorySecrets, MemoryTopics,
    MemoryUnrouted, Queued,
};
use handoff_ports::{Clock, ExchangeReads, ScheduleManager, TokenStore};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

struct Harness {
    ctx: Arc<AppContext>,
    exchanges: Arc<MemoryExchangeRepository>,
    queue: Arc<MemoryQueue>,
    schedules: Arc<MemorySchedules>,
    /// What was published to SNS topics, and reported to the error tracker.
    topics: Arc<MemoryTopics>,
    tracker: Arc<MemoryErrorTracker>,
    /// Stands still until a test moves it.
    clock: Arc<ManualClock>,
    workers: HashMap<WorkerFamily, WorkerFunction>,
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {})
    }

    /// A harness whose deployment settings `adjust` changes.
    fn with(adjust: impl FnOnce(&mut AppSettings)) -> Self {
        let exchanges = Arc::new(MemoryExchangeRepository::new());
        let queue = Arc::new(MemoryQueue::default());
        let schedules = Arc::new(MemorySchedules::default());
        let clock = Arc::new(ManualClock::default());
        let topics = Arc::new(MemoryTopics::default());
        let tracker = Arc::new(MemoryErrorTracker::default());
        let ports = Ports {
            integrations: Arc::new(MemoryIntegrationRepository::default()),
            exchanges: exchanges.clone(),
            queue: queue.clone(),
            files: Arc::new(MemoryDataFileStore::default()),
            schedules: schedules.clone() as Arc<dyn ScheduleManager>,
            secrets: Arc::new(MemorySecrets::default()),
            mappings: Arc::new(MemoryMappings::default()),
            endpoints: Arc::new(MemoryEndpoints::default()),
            events: Arc::new(MemoryEventQueues::default()),
            unrouted: Arc::new(MemoryUnrouted::default()),
            clock: clock.clone(),
            tracker: tracker.clone(),
            topics: topics.clone(),
            job_runs: Arc::new(handoff_ports::memory::MemoryJobRuns::default()),
        };
        // Definitions are read live, so a changed retry policy shows at the next decision.
        // Loopback systems stand in for partners, so loopback is opened as the emulator does.
        let settings = AppSettings {
            definition_cache_ttl: Duration::ZERO,
            outbound: handoff_core::network::OutboundPolicy::parse("127.0.0.0/8").expect("policy"),
            ..AppSettings::default()
        };
        let mut settings = settings;
        adjust(&mut settings);
        let ctx = AppContext::new(ports, settings, Arc::new(handoff_core::expression::InProcess::default()));
        let workers = WorkerFamily::ALL
            .into_iter()
            .map(|f| (f, WorkerFunction::new(ctx.clone(), f, handoff_app::executors::execute)))
            .collect();
        Self { ctx, exchanges, queue, schedules, topics, tracker, clock, workers }
    }

    /// A request as a caller with every scope (what API Gateway's authorizer hands on).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let everything = Caller::new("tester", Scope::ALL.map(Scope::as_str));
        self.call_as(Some(everything), method, path, body).await
    }

    async fn call_as(
        &self,
        caller: Option<Caller>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        let response = router(self.ctx.clone()).oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Defines a version; a new code's endpoint is enabled unless `endpointStatus` says otherwise.
    async fn define(&self, mut definition: Value) {
        if let Some(map) = definition.as_object_mut() {
            map.entry("endpointStatus").or_insert_with(|| json!("Enabled"));
        }
        let (status, body) = self.call("POST", "/integrations", Some(definition)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    async fn invoke(&self, code: &str, payload: Value) -> ExchangeId {
        let (status, body) =
            self.call("POST", "/exchanges", Some(json!({"integrationCode": code, "payload": payload}))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ExchangeId::new(body["exchangeId"].as_str().expect("exchangeId"))
    }

    async fn deliver(&self, queued: &Queued) -> Result<(), WorkerError> {
        let (family, body) = match queued {
            Queued::Handoff { family, message, .. } => (*family, QueueMessage::Handoff(message.clone())),
            Queued::Timer { timer, .. } => (WorkerFamily::Control, QueueMessage::Timer { timer: timer.clone() }),
        };
        let body = serde_json::to_string(&body).expect("message");
        self.workers[&family].handle_body(&body).await
    }

    /// Delivers every queued message, and what they send, until the queues are empty or only
    /// messages due later (delayed) are left; returns those.
    async fn run(&self) -> Vec<Queued> {
        let mut later = Vec::new();
        for _ in 0..200 {
            let batch = self.queue.take();
            if batch.is_empty() {
                return later;
            }
            for queued in batch {
                if delay(&queued) > 0 {
                    later.push(queued);
                    continue;
                }
                if let Err(e) = self.deliver(&queued).await {
                    panic!("{queued:?}: {e}");
                }
            }
        }
        panic!("the exchange did not settle within 200 rounds");
    }

    /// A completed exchange of a plain integration (it signs off by itself).
    async fn invoke_completed_plain(&self) -> ExchangeId {
        self.define(transform("PLAIN_SIGNOFF", ".")).await;
        let id = self.invoke("PLAIN_SIGNOFF", json!([1])).await;
        assert!(self.run().await.is_empty());
        id
    }

    async fn detail(&self, id: &ExchangeId) -> ExchangeDetail {
        self.exchanges.get(id).await.expect("read").expect("exchange exists")
    }
}

fn delay(queued: &Queued) -> u32 {
    match queued {
        Queued::Handoff { delay_seconds, .. } | Queued::Timer { delay_seconds, .. } => *delay_seconds,
    }
}

fn transform(code: &str, jq: &str) -> Value {
    json!({"code": code, "version": 1, "enabled": true, "steps": [
        {"name": "map", "type": "transformation", "function": {"jq": jq}}]})
}

/// A delivery to a loopback port nobody listens on: every attempt is a connection error.
fn unreachable_delivery(code: &str, max_attempts: u32) -> Value {
    json!({"code": code, "version": 1, "enabled": true, "steps": [
        {"name": "send", "type": "delivery", "retry": {"maxAttempts": max_attempts, "intervalSeconds": 0},
         "destinations": [{"kind": "rest", "request": {"method": "POST", "url": "http://127.0.0.1:9/in"}}]}]})
}

#[tokio::test]
async fn an_exchange_runs_to_completion_through_the_workers() {
    let h = Harness::new();
    h.define(transform("DOUBLE", "map(. * 2)")).await;
    let id = h.invoke("DOUBLE", json!([1, 2])).await;
    assert!(h.run().await.is_empty());
    let detail = h.detail(&id).await;
    assert_eq!(detail.exchange.status, ExchangeStatus::Completed);
    assert!(detail.steps.iter().all(|s| s.status == StepStatus::Done), "{:?}", detail.steps);
    let (status, body) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    assert_eq!((status, body["statusCode"].as_str()), (StatusCode::OK, Some("C")));
    // What an operator asks first: final? recoverable? who started it? how long each step took?
    assert_eq!((body["final"].as_bool(), body["recoverable"].as_bool()), (Some(true), Some(false)), "{body}");
    assert_eq!(body["trigger"], json!({"kind": "api", "caller": "tester"}));
    assert!(body["durationMs"].as_i64().is_some_and(|ms| ms >= 0), "{body}");
    for step in body["steps"].as_array().expect("steps") {
        assert!(step["startedAt"].is_string() && step["durationMs"].as_i64().is_some_and(|ms| ms >= 0), "{step}");
    }
    let (_, listed) = h.call("GET", "/exchanges?integrationCode=DOUBLE", None).await;
    let item = &listed["items"][0];
    for field in ["final", "recoverable", "trigger", "durationMs", "statusCode", "status", "createdAt"] {
        assert_eq!(item[field], body[field], "list items carry the detail's summary field {field}");
    }
}

#[tokio::test]
async fn a_duplicate_handoff_changes_nothing_and_a_lost_next_handoff_is_sent_again() {
    let h = Harness::new();
    h.define(transform("DUP", ".")).await;
    let id = h.invoke("DUP", json!([1])).await;
    let first = h.queue.take();
    assert!(matches!(&first[..], [Queued::Handoff { message, .. }] if message.sub_step == SubStep::ExchangeTriggered));
    h.deliver(&first[0]).await.expect("triggered");
    // The transform's handoff is "lost" (taken and dropped); the duplicate of the first
    // message finds its step done with no next step started, and sends the handoff again.
    let lost = h.queue.take();
    assert_eq!(lost.len(), 1);
    h.deliver(&first[0]).await.expect("duplicate");
    assert_eq!(h.queue.take(), lost, "the same handoff, sent again");
    h.deliver(&lost[0]).await.expect("transform");
    assert!(h.run().await.is_empty());
    // Once everything ran, the same duplicate is simply dropped.
    h.deliver(&first[0]).await.expect("late duplicate");
    assert!(h.queue.take().is_empty());
    let detail = h.detail(&id).await;
    assert_eq!(detail.exchange.status, ExchangeStatus::Completed);
    assert_eq!(detail.steps[1].attempts, 1, "the transform ran once");
}

#[tokio::test]
async fn retries_follow_the_live_policy_then_fail_the_exchange_for_operators() {
    let h = Harness::new();
    h.define(unreachable_delivery("DOWN", 2)).await;
    let id = h.invoke("DOWN", json!({"a": 1})).await;
    let triggered = h.queue.take();
    h.deliver(&triggered[0]).await.expect("triggered");
    let attempt1 = h.queue.take();
    h.deliver(&attempt1[0]).await.expect("attempt 1");
    let step = h.detail(&id).await.steps[1].clone();
    assert_eq!((step.attempts, step.status), (1, StepStatus::Initial));
    let step_started = step.started_at.expect("started");
    let (_, running) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    assert_eq!((running["final"].as_bool(), running["recoverable"].as_bool()), (Some(false), Some(false)));
    assert!(step.next_retry_at.is_some() && step.last_error.is_some());
    // Raise maxAttempts while it retries: the step goes on to the new maximum.
    let (status, body) = h
        .call(
            "PATCH",
            "/integrations/DOWN/versions/1",
            Some(json!({"steps": [
            {"name": "send", "type": "delivery", "retry": {"maxAttempts": 3, "intervalSeconds": 0},
             "destinations": [{"kind": "rest", "request": {"method": "POST", "url": "http://127.0.0.1:9/in"}}]}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(h.run().await.is_empty());
    let detail = h.detail(&id).await;
    assert_eq!(detail.exchange.status, ExchangeStatus::Failed);
    assert_eq!((detail.steps[1].attempts, detail.steps[1].status), (3, StepStatus::Failed));
    let (_, shown) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    assert_eq!((shown["final"].as_bool(), shown["recoverable"].as_bool()), (Some(true), Some(true)), "{shown}");
    assert_eq!(shown["steps"][1]["startedAt"], json!(step_started), "the first attempt's start is kept");
    assert!(shown["durationMs"].as_i64().is_some_and(|ms| ms >= 0), "a failed exchange took as long: {shown}");
    assert!(shown["steps"][1]["durationMs"].as_i64().is_some_and(|ms| ms >= 0), "so did its failed step: {shown}");
    assert!(running["durationMs"].is_null(), "a running one has no duration yet: {running}");
    let (status, errors) = h.call("GET", "/errors?classification=system", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(errors["items"][0]["exchangeId"], json!(id.as_str()), "{errors}");
}

#[tokio::test]
async fn a_business_failure_is_recovered_onto_a_fixed_version() {
    let h = Harness::new();
    h.define(transform("FIX", "error(\"bad record\")")).await;
    let id = h.invoke("FIX", json!([1])).await;
    h.run().await;
    let failed = h.detail(&id).await;
    assert_eq!(failed.exchange.status, ExchangeStatus::Failed);
    assert_eq!(failed.steps[1].attempts, 1, "business errors are not retried");
    let mut fixed = transform("FIX", "map(. + 1)");
    fixed["version"] = json!(2);
    h.define(fixed).await;
    let (status, body) =
        h.call("POST", &format!("/exchanges/{id}/recover"), Some(json!({"integrationVersion": 2}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // A second recovery of a running exchange is refused.
    let (status, _) = h.call("POST", &format!("/exchanges/{id}/recover"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    h.run().await;
    let detail = h.detail(&id).await;
    assert_eq!(detail.exchange.status, ExchangeStatus::Completed);
    assert_eq!(detail.exchange.recoveries, 1);
    assert_eq!(detail.steps[0].attempts, 1, "a Done step is not run again");
}

#[tokio::test]
async fn an_sla_timer_times_the_exchange_out_and_a_stale_one_changes_nothing() {
    let h = Harness::new();
    let mut definition = unreachable_delivery("SLA", 5);
    definition["slaSeconds"] = json!(60);
    h.define(definition).await;
    let id = h.invoke("SLA", json!([1])).await;
    let sent = h.queue.take();
    let sla = sent
        .iter()
        .find_map(|q| match q {
            Queued::Timer { timer, delay_seconds } if timer.kind == TimerKind::Sla => {
                Some((timer.clone(), *delay_seconds))
            }
            _ => None,
        })
        .expect("the SLA travels as a delayed message");
    assert!((59..=60).contains(&sla.1));
    let fired = Timer { due: h.clock.now(), ..sla.0 };
    let stale = Timer { recovery: 7, ..fired.clone() };
    h.deliver(&Queued::Timer { timer: stale, delay_seconds: 0 }).await.expect("stale timer");
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::New);
    h.deliver(&Queued::Timer { timer: fired, delay_seconds: 0 }).await.expect("timer");
    let detail = h.detail(&id).await;
    assert_eq!(detail.exchange.status, ExchangeStatus::TimedOut);
    // The handoff still in the queue now finds a final exchange and changes nothing.
    h.run().await;
    assert_eq!(h.detail(&id).await.steps[1].attempts, 0);
}

#[tokio::test]
async fn a_dead_letter_fails_its_exchange_recoverably() {
    let h = Harness::new();
    h.define(transform("DLQ", ".")).await;
    let id = h.invoke("DLQ", json!([1])).await;
    let Queued::Handoff { message, .. } = h.queue.take().remove(0) else { panic!("a handoff") };
    let event = json!({"Records": [{
        "messageId": "m1", "body": serde_json::to_string(&message).expect("json"),
        "eventSourceARN": "arn:aws:sqs:us-east-1:1:handoff-control-dlq",
        "attributes": {"ApproximateReceiveCount": "5"}}]});
    let answer = DlqFunction::new(h.ctx.clone()).invoke(event.clone()).await.expect("dlq");
    assert_eq!(answer["batchItemFailures"], json!([]));
    let detail = h.detail(&id).await;
    assert_eq!(detail.exchange.status, ExchangeStatus::Failed);
    let error = detail.exchange.error.expect("error");
    assert!(error.retryable && error.message.contains("handoff-control-dlq after 5 receives"), "{}", error.message);
    // The same dead letter again finds the exchange failed already: nothing more is written.
    DlqFunction::new(h.ctx.clone()).invoke(event).await.expect("dlq again");
    let (_, errors) = h.call("GET", "/errors", None).await;
    assert_eq!(errors["items"].as_array().map(Vec::len), Some(1));
}

/// Found by the 10,000-exchange chaos run: a step-timeout timer whose receives ran out in
/// the control queue reached its DLQ, where the handler (reading handoffs only) left it for
/// good. A dead-lettered timer now goes back to the control queue after a pause, and fires
/// there as any other (a no-op once its exchange has moved on).
#[tokio::test]
async fn a_dead_lettered_timer_goes_back_to_the_control_queue_and_fires_there() {
    let h = Harness::new();
    h.define(transform("DEAD_TIMER", ".")).await;
    let id = h.invoke("DEAD_TIMER", json!([1])).await;
    h.queue.take();
    let timer = Timer {
        exchange_id: id.clone(),
        recovery: 0,
        due: h.clock.now() - chrono::Duration::seconds(5),
        kind: TimerKind::Sla,
    };
    let dead_letter = |timer: &Timer, message_id: &str| {
        json!({"Records": [{
            "messageId": message_id,
            "body": serde_json::to_string(&QueueMessage::Timer { timer: timer.clone() }).expect("json"),
            "eventSourceARN": "arn:aws:sqs:us-east-1:1:handoff-ControlDlq",
            "attributes": {"ApproximateReceiveCount": "3"}}]})
    };
    let answer = DlqFunction::new(h.ctx.clone()).invoke(dead_letter(&timer, "t1")).await.expect("dlq");
    assert_eq!(answer["batchItemFailures"], json!([]), "handled: deleted from the DLQ");
    let sent = h.queue.take();
    assert!(
        matches!(&sent[..], [Queued::Timer { timer: back, delay_seconds: 60 }] if *back == timer),
        "the timer goes back to the control queue, a minute later: {sent:?}"
    );
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::New, "the DLQ only sends it back");
    // There it fires as any timer does: the SLA times the exchange out.
    for queued in &sent {
        h.deliver(queued).await.expect("timer");
    }
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::TimedOut);
    // One still dead-lettered a day after its due time stays in the DLQ for an operator.
    let old = Timer { due: h.clock.now() - chrono::Duration::hours(25), ..timer };
    let answer = DlqFunction::new(h.ctx.clone()).invoke(dead_letter(&old, "t2")).await.expect("dlq");
    assert_eq!(answer["batchItemFailures"], json!([{"itemIdentifier": "t2"}]));
    assert!(h.queue.take().is_empty());
}

#[tokio::test]
async fn a_callback_is_taken_once_and_its_outbox_entry_is_taken_back() {
    let h = Harness::new();
    h.define(json!({"code": "CB", "version": 1, "enabled": true, "steps": [
        {"name": "p", "type": "invokeProcess", "kind": "process", "request": {"url": "http://127.0.0.1:9/jobs"},
         "expectNotification": true}]}))
        .await;
    let id = h.invoke("CB", json!([1])).await;
    let detail = h.detail(&id).await;
    let waiting = detail.steps.iter().find(|s| s.sub_step == SubStep::ReceiveNotification).expect("waiting step");
    let token = "a-token-only-the-partner-knows";
    let armed = armed_token(
        token,
        &id,
        detail.exchange.integration_code.clone(),
        detail.exchange.integration_version,
        waiting.step_id,
        waiting.sub_step,
    );
    h.exchanges.put_token(&armed).await.expect("token");
    h.queue.take();
    let answer = json!({"status": "success", "data": {"ok": true}});
    let (status, body) = h.call("POST", &format!("/notifications/{token}"), Some(answer.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let sent = h.queue.take();
    assert!(matches!(&sent[..], [Queued::Handoff { message, .. }] if message.step_id == waiting.step_id));
    assert!(h.exchanges.pending_timers().is_empty(), "the outbox entry was taken back once the handoff went out");
    let (status, _) = h.call("POST", &format!("/notifications/{token}"), Some(answer)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a token is single use");
}

#[tokio::test]
async fn a_callback_whose_handoff_fails_stays_in_the_outbox_for_the_regular_job() {
    let h = Harness::new();
    h.define(transform("OUTBOX", ".")).await;
    let id = h.invoke("OUTBOX", json!([1])).await;
    h.queue.take();
    let token = "another-token";
    let armed = armed_token(
        token,
        &id,
        handoff_core::ids::IntegrationCode::parse("OUTBOX").expect("code"),
        handoff_core::ids::IntegrationVersion::number(1).expect("version"),
        StepId::from_sequence(1),
        SubStep::Transform,
    );
    h.exchanges.put_token(&armed).await.expect("token");
    h.queue.fail_sends_to(WorkerFamily::Transform);
    let (status, _) = h.call("POST", &format!("/notifications/{token}"), Some(json!({"status": "success"}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "the callback is stored even though its handoff failed");
    h.queue.heal();
    let kept = h.exchanges.pending_timers();
    assert!(
        matches!(&kept[..], [Timer { kind: TimerKind::Handoff { message }, .. }] if message.step_id == StepId::from_sequence(1))
    );
    // The regular job sweeps timers due within its lookahead: the outbox entry goes out.
    let (_, before) = h.call("GET", "/health/components", None).await;
    assert_eq!(before["jobs"], json!([]), "no job has run yet");
    let jobs = JobsFunction::new(h.ctx.clone());
    let answer = jobs.invoke(json!({"job": "regular"})).await.expect("job");
    assert_eq!(answer["timersSent"], json!(1));
    let (_, health) = h.call("GET", "/health/components", None).await;
    assert_eq!(
        (health["jobs"][0]["job"].as_str(), health["jobs"][0]["succeeded"].as_bool()),
        (Some("regular"), Some(true)),
        "the health view shows the job's last run: {health}"
    );
    assert_eq!(health["jobs"].as_array().map(Vec::len), Some(1), "only jobs that ran");
    assert!(h.exchanges.pending_timers().is_empty());
    assert!(h
        .queue
        .take()
        .iter()
        .any(|q| matches!(q, Queued::Timer { timer, .. } if matches!(timer.kind, TimerKind::Handoff { .. }))));
}

/// Found by the chaos run: a gateway killed after accepting a callback (token used, outbox
/// entry stored) but before sending its handoff left the wait to its timeout, due before the
/// outbox entry, which failed the step though the caller had heard `202`.
#[tokio::test]
async fn a_wait_timeout_after_an_accepted_callback_leaves_the_step_to_its_outbox_entry() {
    let h = Harness::new();
    h.define(transform("LATE_WAIT", ".")).await;
    let id = h.invoke("LATE_WAIT", json!([1])).await;
    h.queue.take();
    let token = "accepted-before-a-crash";
    let waiting = StepId::from_sequence(1);
    let armed = armed_token(
        token,
        &id,
        handoff_core::ids::IntegrationCode::parse("LATE_WAIT").expect("code"),
        handoff_core::ids::IntegrationVersion::number(1).expect("version"),
        waiting,
        SubStep::Transform,
    );
    h.exchanges.put_token(&armed).await.expect("token");
    // The handoff is never sent (as if the gateway died right after its write).
    h.queue.fail_sends_to(WorkerFamily::Transform);
    let (status, _) = h.call("POST", &format!("/notifications/{token}"), Some(json!({"status": "success"}))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.queue.heal();
    let timeout = Timer {
        exchange_id: id.clone(),
        recovery: 0,
        due: h.clock.now(),
        kind: TimerKind::StepTimeout { step_id: waiting },
    };
    fire_now(&h, &timeout).await;
    let detail = h.detail(&id).await;
    assert_eq!(detail.steps[1].status, StepStatus::Initial, "the timeout lost to the accepted callback");
    assert!(!detail.exchange.status.is_final(), "{:?}", detail.exchange.status);
    // The outbox entry hands the callback on, and the exchange completes.
    let jobs = JobsFunction::new(h.ctx.clone());
    let answer = jobs.invoke(json!({"job": "regular"})).await.expect("job");
    assert_eq!(answer["timersSent"], json!(1));
    let outbox: Vec<Timer> = h
        .run()
        .await
        .into_iter()
        .filter_map(|q| match q {
            Queued::Timer { timer, .. } if matches!(timer.kind, TimerKind::Handoff { .. }) => Some(timer),
            _ => None,
        })
        .collect();
    assert_eq!(outbox.len(), 1, "the outbox entry, due later");
    fire_now(&h, &outbox[0]).await;
    assert!(h.run().await.is_empty());
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::Completed);
}

#[tokio::test]
async fn a_manual_retry_runs_the_next_attempt_now() {
    let h = Harness::new();
    let mut definition = unreachable_delivery("MANUAL", 5);
    definition["steps"][0]["retry"] = json!({"maxAttempts": 5, "intervalSeconds": 3600, "maxIntervalSeconds": 3600});
    h.define(definition).await;
    let id = h.invoke("MANUAL", json!([1])).await;
    let later = h.run().await;
    assert!(later.is_empty(), "an hour's retry is a stored timer, not a message");
    assert_eq!(h.exchanges.pending_timers().len(), 1);
    let (status, body) = h.call("POST", &format!("/exchanges/{id}/steps/1/retry"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let sent = h.queue.take();
    assert!(matches!(&sent[..], [Queued::Handoff { message, .. }] if message.attempt == 2));
    h.deliver(&sent[0]).await.expect("attempt 2");
    let detail = h.detail(&id).await;
    assert_eq!(detail.steps[1].attempts, 2, "a manual retry counts as an attempt");
    let asked: Vec<&str> = detail.logs.iter().map(|l| l.line.as_str()).filter(|l| l.contains("manual retry")).collect();
    assert_eq!(asked, ["Attempt 2 ran now: a manual retry requested by tester"], "stored with the attempt");
    let (status, _) = h.call("POST", &format!("/exchanges/{id}/steps/0/retry"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a done step is not retried");
}

#[tokio::test]
async fn a_handoff_beyond_a_lowered_maximum_fails_the_step_without_running_it() {
    let h = Harness::new();
    h.define(unreachable_delivery("LOWER", 5)).await;
    let id = h.invoke("LOWER", json!([1])).await;
    let detail = h.detail(&id).await;
    let beyond = HandoffMessage::at_step(&detail.exchange, StepId::from_sequence(1), SubStep::DeliverRest, 6, None);
    h.deliver(&Queued::Handoff { family: WorkerFamily::DeliverRest, message: beyond, delay_seconds: 0 })
        .await
        .expect("beyond the policy");
    let detail = h.detail(&id).await;
    assert_eq!(detail.exchange.status, ExchangeStatus::Failed);
    assert!(detail.steps[1].last_error.as_ref().is_some_and(|e| e.message.contains("beyond maxAttempts 5")));
}

#[tokio::test]
async fn routes_answer_clear_errors_for_bad_input() {
    let h = Harness::new();
    let (status, body) = h.call("POST", "/integrations", Some(json!({"code": "X", "steps": [{"name": "a"}]}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], json!("steps[0].type"), "{body}");
    let (status, _) = h.call("POST", "/exchanges", Some(json!({"integrationCode": "NOPE"}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.call("GET", "/exchanges/unknown", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.call("GET", "/exchanges?cursor=garbage", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut scheduled = transform("SCHED", ".");
    scheduled["schedule"] = json!({"expression": "rate(1 hour)"});
    h.define(scheduled).await;
    assert!(h.schedules.get(&handoff_core::ids::IntegrationCode::parse("SCHED").expect("code")).is_some());
}

#[tokio::test]
async fn an_internal_failure_answers_an_error_id_never_its_text_and_the_exchange_is_kept() {
    let h = Harness::new();
    h.define(transform("NOSEND", ".")).await;
    h.queue.fail_sends_to(WorkerFamily::Control);
    let (status, body) = h.call("POST", "/exchanges", Some(json!({"integrationCode": "NOSEND", "payload": [1]}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let error_id = body["errorId"].as_str().expect("an errorId to quote");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains(error_id) && !message.contains("queue"), "internal text leaked: {message}");
    // The exchange that could not be handed off is kept, Failed and recoverable.
    h.queue.heal();
    let (_, listed) = h.call("GET", "/exchanges?integrationCode=NOSEND", None).await;
    assert_eq!(listed["items"][0]["status"], json!("Failed"), "{listed}");
}

#[tokio::test]
async fn a_parent_resumes_once_its_last_sub_exchange_ends_and_counts_each_child_once() {
    let h = Harness::new();
    h.define(transform("LEAF", ".")).await;
    // After its sub-exchanges the parent delivers to a peer that is down, retrying in an hour.
    h.define(json!({"code": "FAN", "version": 1, "enabled": true, "steps": [
        {"name": "each", "type": "subflow", "integrationCode": "LEAF", "function": {"jq": "map({n: .})"}},
        {"name": "send", "type": "delivery", "retry": {"maxAttempts": 3, "intervalSeconds": 3600, "maxIntervalSeconds": 3600},
         "destinations": [{"kind": "rest", "request": {"method": "POST", "url": "http://127.0.0.1:9/in"}}]}]}))
        .await;
    let id = h.invoke("FAN", json!([1, 2, 3])).await;
    assert!(h.run().await.is_empty());
    let (status, children) = h.call("GET", &format!("/exchanges?parentExchangeId={id}&limit=10"), None).await;
    assert_eq!(status, StatusCode::OK);
    let children = children["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(children.len(), 3);
    assert!(children.iter().all(|c| c["status"] == json!("Completed")), "{children:?}");
    let parent = h.detail(&id).await;
    let control = parent.steps.iter().find(|s| s.sub_exchanges.is_some()).expect("the control step counts");
    let counted = control.sub_exchanges.expect("counts");
    assert!(counted.all_final() && counted.total == 3, "{counted:?}");
    assert_eq!(control.status, StepStatus::Done, "the parent resumed past its sub-exchanges");
    let delivery = parent.steps.iter().find(|s| s.sub_step == SubStep::DeliverRest).expect("delivery");
    assert_eq!((parent.exchange.status, delivery.attempts), (ExchangeStatus::Started, 1), "{:?}", parent.steps);
    // A child's sign-off delivered again counts nothing twice and resumes nothing.
    let child = ExchangeId::new(children[0]["exchangeId"].as_str().expect("id"));
    let child = h.detail(&child).await;
    let signoff = child.steps.last().expect("a sign-off step");
    let again = HandoffMessage::at_step(&child.exchange, signoff.step_id, signoff.sub_step, 1, None);
    h.deliver(&Queued::Handoff { family: signoff.sub_step.family(), message: again, delay_seconds: 0 })
        .await
        .expect("duplicate sign-off");
    assert!(h.queue.take().is_empty(), "nothing resumes twice");
    // Nor does a resume repeated after the parent moved on (a retried effect).
    let link = child.exchange.parent.clone().expect("a child knows its parent");
    run_effects(h.ctx.effects(), vec![Effect::ResumeParentIfLast(link)]).await.expect("effect");
    assert!(h.queue.take().is_empty(), "the parent's control step is done: no second resume");
    let after = h.detail(&id).await;
    assert_eq!(after.steps.iter().find_map(|s| s.sub_exchanges), Some(counted));
    assert_eq!(after.steps.iter().find(|s| s.sub_step == SubStep::DeliverRest).map(|s| s.attempts), Some(1));
}

/// Found by the chaos run: a gateway killed between a last sub-exchange's final write and
/// its parent's resume left the parent waiting for ever — the child's message came back,
/// found its exchange final, and was dropped as stale.
#[tokio::test]
async fn a_parent_resume_lost_after_its_last_childs_write_is_sent_when_that_message_comes_back() {
    let h = Harness::new();
    h.define(transform("ONLY_CHILD", ".")).await;
    h.define(json!({"code": "LONE_PARENT", "version": 1, "enabled": true, "steps": [
        {"name": "each", "type": "subflow", "integrationCode": "ONLY_CHILD", "function": {"jq": "map({n: .})"}},
        {"name": "after", "type": "transformation", "function": {"jq": "."}}]}))
        .await;
    let id = h.invoke("LONE_PARENT", json!([1])).await;
    let mut lost_once = false;
    for _ in 0..200 {
        let batch = h.queue.take();
        if batch.is_empty() {
            break;
        }
        for queued in batch {
            let last_of_child = matches!(&queued, Queued::Handoff { message, .. }
                if message.parent.is_some() && message.sub_step == SubStep::ExchangeSignoff);
            if last_of_child && !lost_once {
                // The child's final write applies; the resume that follows it is lost.
                h.queue.fail_sends_to(WorkerFamily::Control);
                assert!(h.deliver(&queued).await.is_err(), "the resume could not be sent");
                h.queue.heal();
                lost_once = true;
                let child = queued_exchange(&queued);
                assert_eq!(h.detail(&child).await.exchange.status, ExchangeStatus::Completed);
                assert!(!h.detail(&id).await.exchange.status.is_final());
            }
            h.deliver(&queued).await.expect("delivered");
        }
    }
    assert!(lost_once, "the child's sign-off was seen");
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::Completed, "the parent resumed");
}

fn queued_exchange(queued: &Queued) -> ExchangeId {
    match queued {
        Queued::Handoff { message, .. } => message.exchange_id.clone(),
        Queued::Timer { timer, .. } => timer.exchange_id.clone(),
    }
}

/// Found by the 10,000-exchange chaos run: with a large backlog a run swept past its function
/// timeout and was killed with nothing recorded. A run now stops at its budget (after at least
/// one page) and the next one carries on from the earliest timer left.
#[tokio::test]
async fn the_regular_job_stops_at_its_budget_and_the_next_run_sweeps_the_rest() {
    let h = Harness::with(|s| s.exchange_retention = Some(chrono::Duration::days(1)));
    h.define(transform("MANY", ".")).await;
    for _ in 0..150 {
        h.invoke("MANY", json!([1])).await;
    }
    h.run().await;
    h.clock.advance(chrono::Duration::days(2));
    assert_eq!(h.exchanges.pending_timers().len(), 150, "one retention timer per finished exchange, all due");
    h.queue.take();
    let jobs = JobsFunction::new(h.ctx.clone()).within(Duration::ZERO);
    let first = jobs.invoke(json!({"job": "regular"})).await.expect("job");
    assert_eq!((first["timersSent"].clone(), first["complete"].clone()), (json!(100), json!(false)), "{first}");
    assert_eq!(h.exchanges.pending_timers().len(), 50, "the rest is left on the index");
    let second = jobs.invoke(json!({"job": "regular"})).await.expect("job");
    assert_eq!((second["timersSent"].clone(), second["complete"].clone()), (json!(50), json!(true)), "{second}");
    assert!(h.exchanges.pending_timers().is_empty());
    let sent = h.queue.take().iter().filter(|q| matches!(q, Queued::Timer { .. })).count();
    assert_eq!(sent, 150, "each timer sent once over the two runs");
    let unbounded = JobsFunction::new(h.ctx.clone()).invoke(json!({"job": "regular"})).await.expect("job");
    assert_eq!(unbounded["complete"], json!(true), "{unbounded}");
}

#[tokio::test]
async fn the_regular_job_starts_again_an_exchange_left_new() {
    let h = Harness::new();
    h.define(transform("ORPHAN", "map(. + 1)")).await;
    let id = h.invoke("ORPHAN", json!([1])).await;
    // Its creator "stopped" before the first handoff went out; a fresh one is left alone.
    h.queue.take();
    let jobs = JobsFunction::new(h.ctx.clone());
    let answer = jobs.invoke(json!({"job": "regular"})).await.expect("job");
    assert_eq!(answer["exchangesStarted"], json!(0), "created just now: its creator may still be at work");
    h.exchanges.age(&id, chrono::Duration::minutes(3));
    let answer = jobs.invoke(json!({"job": "regular"})).await.expect("job");
    assert_eq!(answer["exchangesStarted"], json!(1));
    assert!(h.run().await.is_empty());
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::Completed);
    let answer = jobs.invoke(json!({"job": "nightly"})).await;
    assert!(answer.is_err(), "an unknown job is refused");
}

#[tokio::test]
async fn the_error_processing_job_redrives_retryable_system_failures_a_limited_number_of_times() {
    let h = Harness::with(|s| s.auto_recovery_limit = 1);
    h.define(unreachable_delivery("FLAKY", 1)).await;
    h.define(transform("BROKEN", "error(\"bad record\")")).await;
    let flaky = h.invoke("FLAKY", json!([1])).await;
    let broken = h.invoke("BROKEN", json!([1])).await;
    h.run().await;
    assert_eq!(h.detail(&flaky).await.exchange.status, ExchangeStatus::Failed);
    assert_eq!(h.detail(&broken).await.exchange.status, ExchangeStatus::Failed);
    let jobs = JobsFunction::new(h.ctx.clone());
    let answer = jobs.invoke(json!({"job": "errorProcessing"})).await.expect("job");
    assert_eq!(answer["recovered"], json!([flaky.as_str()]), "a business failure waits for an operator");
    assert_eq!(answer["left"], json!(1));
    h.run().await;
    let again = h.detail(&flaky).await;
    assert_eq!((again.exchange.status, again.exchange.recoveries), (ExchangeStatus::Failed, 1));
    let answer = jobs.invoke(json!({"job": "errorProcessing"})).await.expect("job");
    assert_eq!(answer["recovered"], json!([]), "re-driven as often as allowed");
    assert_eq!(answer["left"], json!(2));
}

#[tokio::test]
async fn a_resolved_error_is_reprocessed_once_reopens_when_it_fails_again_and_is_only_recorded_if_recovered_since() {
    let h = Harness::with(|s| s.auto_recovery_limit = 1);
    h.define(transform("STILL_BROKEN", "error(\"bad record\")")).await;
    let id = h.invoke("STILL_BROKEN", json!([1])).await;
    h.run().await;
    let (_, listed) = h.call("GET", "/errors?state=open&integrationCode=STILL_BROKEN", None).await;
    let entry = &listed["items"][0];
    assert_eq!(
        (entry["code"].as_str(), entry["occurrences"].as_u64()),
        (Some("ExpressionFailed"), Some(1)),
        "{listed}"
    );
    assert_eq!(entry["action"], json!(ErrorCode::ExpressionFailed.action()));
    let error_id = entry["errorId"].as_str().expect("id").to_string();
    let resolve_path = format!("/errors/{error_id}/resolve");
    let (status, _) = h.call("POST", &resolve_path, Some(json!({"note": "tried a fix"}))).await;
    assert_eq!(status, StatusCode::OK);
    let jobs = JobsFunction::new(h.ctx.clone());
    let answer = jobs.invoke(json!({"job": "errorProcessing"})).await.expect("job");
    assert_eq!(answer["reprocessed"], json!([error_id]), "{answer}");
    assert_eq!(answer["recovered"], json!([]), "a business failure is not re-driven as a system one");
    h.run().await;
    let again = h.detail(&id).await;
    assert_eq!((again.exchange.status, again.exchange.recoveries), (ExchangeStatus::Failed, 1));
    let (_, reopened) = h.call("GET", &format!("/errors/{error_id}"), None).await;
    assert_eq!((reopened["state"].as_str(), reopened["occurrences"].as_u64()), (Some("open"), Some(2)), "{reopened}");
    assert_eq!(reopened["recovery"], 1, "the failure of the re-processed generation");

    // Resolved again, but an operator recovers it first: the job only records that.
    let (status, _) = h.call("POST", &resolve_path, Some(json!({"note": "fixed for real"}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h.call("POST", &format!("/exchanges/{id}/recover"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let answer = jobs.invoke(json!({"job": "errorProcessing"})).await.expect("job");
    assert_eq!((answer["reprocessed"].clone(), answer["resolutionsRecorded"].clone()), (json!([]), json!(1)));
    let (_, recorded) = h.call("GET", &format!("/errors/{error_id}"), None).await;
    assert_eq!(recorded["reprocessing"]["outcome"], "the exchange was recovered since it failed", "{recorded}");
    assert_eq!(h.detail(&id).await.exchange.recoveries, 2, "not recovered a second time");
}

#[tokio::test]
async fn a_stored_version_changes_only_where_allowed_and_never_behind_a_concurrent_change() {
    let h = Harness::new();
    h.define(transform("AMEND", ".")).await;
    let (status, body) = h.call("PATCH", "/integrations/AMEND/versions/1", Some(json!({"code": "OTHER"}))).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("code")), "{body}");
    let (status, body) = h
        .call(
            "PATCH",
            "/integrations/AMEND/versions/1",
            Some(json!({"steps": [{"name": "map", "type": "transformation", "function": {"jq": "map(1)"}}]})),
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("steps")), "{body}");
    let (status, body) = h.call("PATCH", "/integrations/AMEND/versions/2", Some(json!({"enabled": false}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = h
        .call("PATCH", "/integrations/AMEND/versions/1", Some(json!({"schedule": {"expression": "rate(5 minutes)"}})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["schedule"]["state"], json!("active"), "{body}");
    assert_eq!(body["revision"], json!(2), "{body}");
    let (status, body) = h.call("PATCH", "/integrations/AMEND/versions/1", Some(json!({"enabled": false}))).await;
    assert_eq!((status, body["schedule"]["state"].as_str()), (StatusCode::OK, Some("none")), "{body}");
    assert!(h.schedules.get(&handoff_core::ids::IntegrationCode::parse("AMEND").expect("code")).is_none());
    let (status, _) = h.call("POST", "/integrations", Some(transform("AMEND", "."))).await;
    assert_eq!(status, StatusCode::CONFLICT, "version 1 exists");
}

#[tokio::test]
async fn each_route_asks_its_scope_and_only_the_callback_and_shallow_health_are_public() {
    let h = Harness::new();
    h.define(transform("SCOPED", ".")).await;
    let reader = Caller::new("reader", ["handoff:read"]);
    let (status, body) = h.call_as(None, "GET", "/exchanges", None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("Unauthorized")), "{body}");
    let (status, body) = h.call_as(Some(reader.clone()), "GET", "/integrations/SCOPED", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        h.call_as(Some(reader.clone()), "POST", "/exchanges", Some(json!({"integrationCode": "SCOPED"}))).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("Forbidden")), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("handoff:invoke")), "{body}");
    let invoker = Caller::new("app", ["handoff:invoke"]);
    let (status, _) =
        h.call_as(Some(invoker.clone()), "POST", "/exchanges", Some(json!({"integrationCode": "SCOPED"}))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = h.call_as(Some(invoker), "POST", "/integrations", Some(transform("OTHER", "."))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "defining integrations needs handoff:admin");
    let (status, _) = h.call_as(Some(reader.clone()), "POST", "/exchanges/x/recover", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "recovering needs handoff:operate");
    // Public: the callback (its token is the credential) and the shallow health check.
    let (status, _) = h.call_as(None, "POST", "/notifications/unknown-token", Some(json!({"status": "success"}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "reached the function: an unknown token");
    let (status, body) = h.call_as(None, "GET", "/health", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _) = h.call_as(None, "GET", "/health/components", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = h.call_as(Some(reader), "GET", "/health/components", None).await;
    assert_eq!((status, &body["components"]["exchanges"]["status"]), (StatusCode::OK, &json!("ok")), "{body}");
}

#[tokio::test]
async fn a_subflow_past_its_caps_fails_as_a_business_error_and_creates_nothing() {
    let h = Harness::new();
    h.define(transform("LEAF2", ".")).await;
    h.define(json!({"code": "WIDE", "version": 1, "enabled": true, "steps": [
        {"name": "each", "type": "subflow", "integrationCode": "LEAF2", "maxSubExchanges": 2, "function": {"jq": "map({n: .})"}}]}))
    .await;
    let id = h.invoke("WIDE", json!([1, 2, 3])).await;
    h.run().await;
    let wide = h.detail(&id).await;
    assert_eq!(wide.exchange.status, ExchangeStatus::Failed);
    let error = wide.exchange.error.expect("error");
    assert!(error.message.contains("3 sub-exchanges, more than maxSubExchanges 2"), "{}", error.message);
    let (_, children) = h.call("GET", &format!("/exchanges?parentExchangeId={id}"), None).await;
    assert_eq!(children["items"], json!([]), "no orphans");

    // Two integrations that start each other stop at the depth limit.
    h.define(json!({"code": "PING", "version": 1, "enabled": true, "steps": [
        {"name": "to", "type": "subflow", "integrationCode": "PONG", "function": {"jq": "[{}]"}}]}))
        .await;
    h.define(json!({"code": "PONG", "version": 1, "enabled": true, "steps": [
        {"name": "to", "type": "subflow", "integrationCode": "PING", "function": {"jq": "[{}]"}}]}))
        .await;
    let root = h.invoke("PING", json!([1])).await;
    h.run().await;
    let mut level = h.detail(&root).await;
    let mut depth = 0;
    loop {
        let (_, children) =
            h.call("GET", &format!("/exchanges?parentExchangeId={}", level.exchange.exchange_id), None).await;
        let Some(child) = children["items"].as_array().and_then(|c| c.first()).cloned() else { break };
        depth += 1;
        level = h.detail(&ExchangeId::new(child["exchangeId"].as_str().expect("id"))).await;
    }
    assert_eq!(depth, 5, "five levels below the root, no more");
    let error = level.exchange.error.expect("the deepest one failed");
    assert!(error.message.contains("nested 6 deep; the limit is 5"), "{}", error.message);
}

/// The retention timers stored for `id`, oldest generation first.
async fn retention_timers(h: &Harness, id: &ExchangeId) -> Vec<Timer> {
    use handoff_ports::TimerStore;
    let far = h.clock.now() + chrono::Duration::days(3);
    let mut timers: Vec<Timer> = h
        .exchanges
        .due_timers(far, 100)
        .await
        .expect("timers")
        .into_iter()
        .filter(|t| t.exchange_id == *id && t.kind == TimerKind::Retention)
        .collect();
    timers.sort_by_key(|t| t.recovery);
    timers
}

/// Fires `timer` as if its time had come.
async fn fire_now(h: &Harness, timer: &Timer) {
    let due = Timer { due: h.clock.now() - chrono::Duration::seconds(1), ..timer.clone() };
    h.deliver(&Queued::Timer { timer: due, delay_seconds: 0 }).await.expect("timer");
}

#[tokio::test]
async fn a_finished_exchange_is_deleted_once_kept_its_retention_unless_recovered_since() {
    let h = Harness::with(|s| s.exchange_retention = Some(chrono::Duration::days(1)));
    h.define(transform("KEEP", "error(\"bad record\")")).await;
    let id = h.invoke("KEEP", json!([1])).await;
    h.run().await;
    let failed = h.detail(&id).await;
    assert_eq!(failed.exchange.status, ExchangeStatus::Failed);
    let first = retention_timers(&h, &id).await;
    assert_eq!(first.len(), 1, "stored with the commit that failed the exchange");
    let completed_at = failed.exchange.completed_at.unwrap_or(failed.exchange.updated_at);
    assert!((first[0].due - completed_at - chrono::Duration::days(1)).num_seconds().abs() <= 1, "{first:?}");

    // Recovered, it fails again: its new retention replaces the first, and the first, had it
    // fired meanwhile, would have found the exchange at another generation.
    let (status, body) = h.call("POST", &format!("/exchanges/{id}/recover"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    fire_now(&h, &first[0]).await;
    h.run().await;
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::Failed);
    let second = retention_timers(&h, &id).await;
    assert_eq!(second.iter().map(|t| t.recovery).collect::<Vec<_>>(), vec![1]);
    fire_now(&h, &first[0]).await;
    let (status, _) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "kept: recovered since the first retention was armed");

    fire_now(&h, &second[0]).await;
    let (status, _) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, errors) = h.call("GET", "/errors", None).await;
    assert!(
        errors["items"].as_array().is_some_and(|items| items.iter().all(|e| e["exchangeId"] != json!(id.as_str()))),
        "{errors}"
    );
    assert!(retention_timers(&h, &id).await.is_empty());

    // Without a retention (the default), nothing is armed.
    let kept = Harness::new();
    kept.define(transform("KEPT", ".")).await;
    let id = kept.invoke("KEPT", json!([1])).await;
    kept.run().await;
    assert_eq!(kept.detail(&id).await.exchange.status, ExchangeStatus::Completed);
    assert!(retention_timers(&kept, &id).await.is_empty());
}

#[tokio::test]
async fn a_new_code_starts_disabled_and_runs_only_once_enabled_with_its_schedule() {
    let h = Harness::new();
    let code = handoff_core::ids::IntegrationCode::parse("HELD").expect("code");
    let mut definition = transform("HELD", ".");
    definition["schedule"] = json!({"expression": "cron(0 18 * * ? *)", "timezone": "Europe/Amsterdam"});
    // Without endpointStatus, as a user posts it: configured first, enabled later.
    let (status, created) = h.call("POST", "/integrations", Some(definition.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["endpoint"]["status"], "Disabled");
    assert!(created["definition"].get("endpointStatus").is_none(), "not part of the definition");
    assert!(h.schedules.get(&code).is_none(), "a held endpoint has no schedule");
    let (_, shown) = h.call("GET", "/integrations/HELD", None).await;
    assert_eq!(shown["endpoint"]["status"], "Disabled", "{shown}");
    assert_eq!(shown["endpoint"]["schedule"], "not scheduled: the endpoint is Disabled");
    assert_eq!(shown["endpoint"]["changedBy"], "tester");

    let (status, refused) =
        h.call("POST", "/exchanges", Some(json!({"integrationCode": "HELD", "payload": [1]}))).await;
    assert_eq!((status, refused["error"].as_str()), (StatusCode::CONFLICT, Some("EndpointDisabled")), "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("POST /integrations/HELD/enable")), "{refused}");
    let (status, body) = h.call("POST", "/integrations/HELD/resume", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "only a Failed endpoint resumes: {body}");
    let reader = Caller::new("reader", ["handoff:read"]);
    let (status, _) = h.call_as(Some(reader), "POST", "/integrations/HELD/enable", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "enabling needs handoff:operate");

    let (status, enabled) = h.call("POST", "/integrations/HELD/enable", Some(json!({"reason": "partner ready"}))).await;
    assert_eq!(status, StatusCode::OK, "{enabled}");
    let endpoint = &enabled["endpoint"];
    assert_eq!((endpoint["status"].as_str(), endpoint["changed"].as_bool()), (Some("Enabled"), Some(true)));
    assert_eq!((endpoint["reason"].as_str(), endpoint["changedBy"].as_str()), (Some("partner ready"), Some("tester")));
    assert_eq!(endpoint["schedule"]["nextRuns"].as_array().map(Vec::len), Some(5), "{endpoint}");
    assert!(h.schedules.get(&code).is_some(), "enabling arms the schedule");
    let id = h.invoke("HELD", json!([1])).await;
    h.run().await;
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::Completed);
    let (_, again) = h.call("POST", "/integrations/HELD/enable", None).await;
    assert_eq!(again["endpoint"]["changed"], false);

    // A new version leaves the endpoint alone, even if it asks otherwise.
    let (status, body) = h.call("POST", "/integrations/HELD/disable", None).await;
    assert_eq!((status, body["endpoint"]["status"].as_str()), (StatusCode::OK, Some("Disabled")), "{body}");
    assert!(h.schedules.get(&code).is_none(), "disabling removes the schedule");
    let mut v2 = definition;
    v2["version"] = json!(2);
    v2["endpointStatus"] = json!("Enabled");
    let (status, body) = h.call("POST", "/integrations", Some(v2)).await;
    assert_eq!((status, body["endpoint"]["status"].as_str()), (StatusCode::CREATED, Some("Disabled")), "{body}");

    let (status, _) = h.call("POST", "/integrations/NOPE/enable", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut bad = transform("BAD_STATUS", ".");
    bad["endpointStatus"] = json!("Paused");
    let (status, body) = h.call("POST", "/integrations", Some(bad)).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("endpointStatus")), "{body}");
    let (status, _) = h.call("GET", "/integrations/BAD_STATUS", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing stored");
}

#[tokio::test]
async fn a_scheduled_run_of_a_held_endpoint_is_skipped_with_its_reason() {
    use handoff_app::entry::trigger::TriggerFunction;
    let h = Harness::new();
    let mut definition = transform("NIGHTLY", ".");
    definition["endpointStatus"] = json!("Disabled");
    h.define(definition).await;
    let trigger = TriggerFunction::new(h.ctx.clone());
    let answer = trigger.invoke(json!({"integrationCode": "NIGHTLY"})).await.expect("not an error to retry");
    assert!(answer["skipped"].as_str().is_some_and(|s| s.contains("is Disabled")), "{answer}");
    assert!(h.queue.take().is_empty(), "nothing started");
    h.call("POST", "/integrations/NIGHTLY/enable", None).await;
    let answer = trigger.invoke(json!({"integrationCode": "NIGHTLY"})).await.expect("started");
    assert!(answer["exchangeId"].is_string(), "{answer}");
    let scheduled = answer["exchangeId"].as_str().expect("id").to_string();
    let id = h.invoke("NIGHTLY", json!([1])).await;
    let (_, shown) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    assert_eq!(shown["trigger"], json!({"kind": "api", "caller": "tester"}), "{shown}");

    // The endpoint log, newest first: both invocations, the status change, the skipped run.
    let (status, log) = h.call("GET", "/integrations/NIGHTLY/log", None).await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let kinds: Vec<&str> = log["items"].as_array().into_iter().flatten().filter_map(|l| l["kind"].as_str()).collect();
    assert_eq!(kinds, ["invoked", "invoked", "statusChanged", "skipped"], "{log}");
    let items = &log["items"];
    assert_eq!((items[0]["exchangeId"].as_str(), &items[0]["trigger"]["kind"]), (Some(id.as_str()), &json!("api")));
    assert_eq!(
        (items[1]["exchangeId"].as_str(), &items[1]["trigger"]["kind"]),
        (Some(scheduled.as_str()), &json!("schedule"))
    );
    assert_eq!(
        (items[2]["from"].as_str(), items[2]["to"].as_str(), items[2]["by"].as_str()),
        (Some("Disabled"), Some("Enabled"), Some("tester"))
    );
    assert!(items[3]["reason"].as_str().is_some_and(|r| r.contains("is Disabled")), "{log}");
    // Paged.
    let (_, first) = h.call("GET", "/integrations/NIGHTLY/log?limit=3", None).await;
    let cursor = first["nextCursor"].as_str().expect("more");
    let (_, rest) = h.call("GET", &format!("/integrations/NIGHTLY/log?limit=3&cursor={cursor}"), None).await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["items"][0]["kind"], "skipped");
    let (status, _) = h.call("GET", "/integrations/NOPE/log", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A loopback target that answers 200 and counts what it received.
async fn counting_target() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/in", listener.local_addr().expect("addr"));
    let count = received.clone();
    let app = axum::Router::new().fallback(move || {
        let count = count.clone();
        async move {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            "{}"
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

#[tokio::test]
async fn a_running_exchange_holds_before_its_delivery_while_disabled_and_goes_on_when_enabled() {
    use std::sync::atomic::Ordering;
    let h = Harness::new();
    let (url, received) = counting_target().await;
    h.define(json!({"code": "HOLD", "version": 1, "steps": [
        {"name": "map", "type": "transformation", "function": {"jq": "."}},
        {"name": "send", "type": "delivery", "destinations": [{"kind": "rest", "request": {"method": "POST", "url": url}}]}]}))
    .await;
    let id = h.invoke("HOLD", json!([1])).await;
    // The exchange is under way (triggered) when the operator disables the endpoint.
    let first = h.queue.take();
    h.deliver(&first[0]).await.expect("triggered");
    let (status, _) =
        h.call("POST", "/integrations/HOLD/disable", Some(json!({"reason": "target down for repair"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(h.run().await.is_empty());
    let detail = h.detail(&id).await;
    assert_eq!(detail.exchange.status, ExchangeStatus::Started, "held, not failed");
    assert_eq!(detail.steps[1].status, StepStatus::Done, "work inside the gateway went on");
    assert_eq!((detail.steps[2].status, detail.steps[2].attempts), (StepStatus::Initial, 0), "no attempt used");
    assert_eq!(received.load(Ordering::SeqCst), 0, "nothing left the gateway");
    let (_, shown) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    assert_eq!(shown["held"]["stepId"], "0002", "{shown}");
    assert!(shown["held"]["reason"].as_str().is_some_and(|r| r.contains("target down for repair")), "{shown}");

    let (status, enabled) = h.call("POST", "/integrations/HOLD/enable", None).await;
    assert_eq!(status, StatusCode::OK, "{enabled}");
    assert!(h.run().await.is_empty());
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::Completed);
    assert_eq!(received.load(Ordering::SeqCst), 1, "delivered once");
    let (_, shown) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    assert!(shown.get("held").is_none(), "{shown}");
    // Enabling again releases nothing twice.
    h.call("POST", "/integrations/HOLD/enable", None).await;
    assert!(h.run().await.is_empty());
    assert_eq!(received.load(Ordering::SeqCst), 1);
}

/// A loopback target that answers 503 while `down` is set, and counts what it applied.
async fn switchable_target() -> (String, Arc<std::sync::atomic::AtomicBool>, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::http::StatusCode as S;
    use std::sync::atomic::Ordering;
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let applied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/in", listener.local_addr().expect("addr"));
    let (is_down, count) = (down.clone(), applied.clone());
    let app = axum::Router::new().fallback(move || {
        let (is_down, count) = (is_down.clone(), count.clone());
        async move {
            if is_down.load(Ordering::SeqCst) {
                return (S::SERVICE_UNAVAILABLE, "down");
            }
            count.fetch_add(1, Ordering::SeqCst);
            (S::OK, "{}")
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, down, applied)
}

#[tokio::test]
async fn a_target_down_shows_failed_retrying_then_halts_the_endpoint_and_resume_recovers_what_it_halted() {
    use std::sync::atomic::Ordering;
    let h = Harness::new();
    let (url, down, applied) = switchable_target().await;
    h.define(json!({"code": "HALT", "version": 1, "steps": [
        {"name": "send", "type": "delivery", "retry": {"maxAttempts": 2, "intervalSeconds": 0},
         "destinations": [{"kind": "rest", "request": {"method": "POST", "url": url}}]}]}))
        .await;
    let (status, body) = h.call("PATCH", "/integrations/HALT", Some(json!({"onSystemFailure": "halt"}))).await;
    assert_eq!((status, body["endpoint"]["onSystemFailure"].as_str()), (StatusCode::OK, Some("halt")), "{body}");
    down.store(true, Ordering::SeqCst);
    let x1 = h.invoke("HALT", json!({"n": 1})).await;
    let triggered = h.queue.take();
    h.deliver(&triggered[0]).await.expect("triggered");
    let attempt1 = h.queue.take();
    h.deliver(&attempt1[0]).await.expect("attempt 1");
    let (_, shown) = h.call("GET", "/integrations/HALT", None).await;
    let endpoint = &shown["endpoint"];
    assert_eq!(endpoint["status"], "FailedRetrying", "{shown}");
    assert_eq!(
        (endpoint["retrying"]["attempt"].as_u64(), endpoint["retrying"]["maxAttempts"].as_u64()),
        (Some(1), Some(2))
    );
    assert!(endpoint["retrying"]["error"].as_str().is_some_and(|e| e.contains("503")), "{shown}");

    // A second exchange starts while the endpoint still runs; then x1's retries run out.
    let x2 = h.invoke("HALT", json!({"n": 2})).await;
    let queued = h.queue.take();
    let (retry, start2): (Vec<_>, Vec<_>) =
        queued.into_iter().partition(|q| matches!(q, Queued::Handoff { message, .. } if message.exchange_id == x1));
    h.deliver(&retry[0]).await.expect("attempt 2");
    assert_eq!(h.detail(&x1).await.exchange.status, ExchangeStatus::Failed);
    let (_, shown) = h.call("GET", "/integrations/HALT", None).await;
    assert_eq!(shown["endpoint"]["status"], "Failed", "{shown}");
    assert_eq!(shown["endpoint"]["haltedBy"], json!([x1.as_str()]));
    let (status, refused) = h.call("POST", "/exchanges", Some(json!({"integrationCode": "HALT"}))).await;
    assert_eq!((status, refused["error"].as_str()), (StatusCode::CONFLICT, Some("EndpointFailed")), "{refused}");
    // x2 holds before its delivery: nothing sent, nothing failed.
    h.deliver(&start2[0]).await.expect("x2 triggered");
    assert!(h.run().await.is_empty());
    let (_, held) = h.call("GET", &format!("/exchanges/{x2}"), None).await;
    assert_eq!((held["status"].as_str(), held["held"]["stepId"].as_str()), (Some("Started"), Some("0001")), "{held}");
    let (status, _) = h.call("POST", "/integrations/HALT/enable", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a Failed endpoint is resumed, not enabled");

    down.store(false, Ordering::SeqCst);
    let (status, resumed) = h.call("POST", "/integrations/HALT/resume", Some(json!({"recoverFailed": true}))).await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["endpoint"]["status"], "Enabled");
    assert_eq!(resumed["endpoint"]["recovered"][0]["exchangeId"], json!(x1.as_str()), "{resumed}");
    assert_eq!(resumed["endpoint"]["recovered"][0]["recovered"], true, "{resumed}");
    assert!(h.run().await.is_empty());
    for id in [&x1, &x2] {
        assert_eq!(h.detail(id).await.exchange.status, ExchangeStatus::Completed, "{id}");
    }
    assert_eq!(applied.load(Ordering::SeqCst), 2, "each delivered once");
    let (_, shown) = h.call("GET", "/integrations/HALT", None).await;
    assert_eq!(
        (shown["endpoint"]["status"].as_str(), shown["endpoint"]["haltedBy"].clone()),
        (Some("Enabled"), json!([]))
    );
    // The recovery is an invocation in the endpoint's log, by whom it was asked.
    let (_, log) = h.call("GET", "/integrations/HALT/log", None).await;
    let recovery = log["items"].as_array().into_iter().flatten().find(|l| l["trigger"]["kind"] == "recovery").cloned();
    let recovery = recovery.unwrap_or_else(|| panic!("no recovery logged: {log}"));
    assert_eq!(
        (recovery["exchangeId"].as_str(), recovery["trigger"]["caller"].as_str()),
        (Some(x1.as_str()), Some("tester"))
    );
}

#[tokio::test]
async fn the_regular_job_sends_on_a_handoff_left_held_at_an_endpoint_that_runs_again() {
    use handoff_core::endpoint::{EndpointStatus, HeldHandoff};
    use std::sync::atomic::Ordering;
    let h = Harness::new();
    let (url, received) = counting_target().await;
    h.define(json!({"code": "STRANDED", "version": 1, "steps": [
        {"name": "send", "type": "delivery", "destinations": [{"kind": "rest", "request": {"method": "POST", "url": url}}]}]}))
    .await;
    let id = h.invoke("STRANDED", json!([1])).await;
    let first = h.queue.take();
    h.deliver(&first[0]).await.expect("triggered");
    h.call("POST", "/integrations/STRANDED/disable", None).await;
    assert!(h.run().await.is_empty());
    let code = handoff_core::ids::IntegrationCode::parse("STRANDED").expect("code");
    let endpoints = h.ctx.ports.endpoints.clone();
    let held = endpoints.held(&code).await.expect("held");
    assert_eq!(held.len(), 1, "held before its delivery");
    // Held two minutes ago; then the endpoint was enabled and the caller stopped before
    // sending it on (the enable's own release never ran).
    let endpoint = endpoints.endpoint(&code).await.expect("read").expect("stored");
    endpoints.release(&held[0]).await.expect("release");
    let old = HeldHandoff { held_at: held[0].held_at - chrono::Duration::minutes(2), ..held[0].clone() };
    endpoints.hold(&old, endpoint.revision).await.expect("held again");
    endpoints
        .save_endpoint(&handoff_core::endpoint::Endpoint { status: EndpointStatus::Enabled, ..endpoint })
        .await
        .expect("enabled");

    let jobs = JobsFunction::new(h.ctx.clone());
    let answer = jobs.invoke(json!({"job": "regular"})).await.expect("job");
    assert_eq!(answer["heldReleased"], json!(1), "{answer}");
    assert!(h.run().await.is_empty());
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::Completed);
    assert_eq!(received.load(Ordering::SeqCst), 1);
    let answer = jobs.invoke(json!({"job": "regular"})).await.expect("job");
    assert_eq!(answer["heldReleased"], json!(0), "nothing sent twice");
}

/// A loopback target that answers 503 while `down` is set and otherwise keeps each body it
/// received (as JSON).
async fn recording_target() -> (String, Arc<std::sync::atomic::AtomicBool>, Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::http::StatusCode as S;
    use std::sync::atomic::Ordering;
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/in", listener.local_addr().expect("addr"));
    let (is_down, kept) = (down.clone(), bodies.clone());
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let (is_down, kept) = (is_down.clone(), kept.clone());
        async move {
            if is_down.load(Ordering::SeqCst) {
                return (S::SERVICE_UNAVAILABLE, "down");
            }
            kept.lock().expect("lock").push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            (S::OK, "{}")
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, down, bodies)
}

/// An event-based integration that delivers the events it takes to `url`.
fn event_delivery(code: &str, url: &str, max_attempts: u32) -> Value {
    json!({"code": code, "version": 1, "events": {"maxPerExchange": 10}, "steps": [
        {"name": "send", "type": "delivery", "retry": {"maxAttempts": max_attempts, "intervalSeconds": 0},
         "destinations": [{"kind": "rest", "request": {"method": "POST", "url": url}}]}]})
}

fn event_data(delivered: &Value) -> Vec<(Option<&str>, Value)> {
    delivered.as_array().into_iter().flatten().map(|e| (e["key"].as_str(), e["data"].clone())).collect()
}

#[tokio::test]
async fn events_sent_while_disabled_arrive_in_one_exchange_once_enabled_the_latest_per_key() {
    use handoff_app::entry::trigger::TriggerFunction;
    let h = Harness::new();
    let (url, _, delivered) = recording_target().await;
    let mut definition = event_delivery("ORDERS", &url, 3);
    definition["endpointStatus"] = json!("Disabled");
    h.define(definition).await;
    let events = json!([
        {"key": "order-1", "type": "changed", "data": {"qty": 1}},
        {"key": "order-2", "data": {"qty": 5}},
        {"key": "order-1", "type": "changed", "data": {"qty": 2}},
        {"data": {"note": "no key"}}]);
    let (status, accepted) = h.call("POST", "/integrations/ORDERS/events", Some(events)).await;
    assert_eq!((status, accepted["accepted"].as_u64()), (StatusCode::ACCEPTED, Some(4)), "{accepted}");
    let (status, queue) = h.call("GET", "/integrations/ORDERS/events?limit=3", None).await;
    assert_eq!((status, queue["pending"].as_u64()), (StatusCode::OK, Some(4)), "{queue}");
    assert_eq!(queue["items"].as_array().map(Vec::len), Some(3), "paged: {queue}");
    assert_eq!(queue["items"][0]["key"], "order-1");
    assert_eq!(queue["items"][0]["type"], "changed");
    assert!(queue["oldestAgeSeconds"].is_number(), "{queue}");
    let cursor = queue["nextCursor"].as_str().expect("a second page");
    let (_, rest) = h.call("GET", &format!("/integrations/ORDERS/events?cursor={cursor}"), None).await;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1), "{rest}");
    assert!(rest["nextCursor"].is_null(), "{rest}");
    let (status, refused) = h.call("POST", "/exchanges", Some(json!({"integrationCode": "ORDERS"}))).await;
    assert_eq!((status, refused["error"].as_str()), (StatusCode::CONFLICT, Some("EndpointDisabled")), "{refused}");
    assert!(delivered.lock().expect("lock").is_empty(), "nothing left while Disabled");

    h.call("POST", "/integrations/ORDERS/enable", None).await;
    let (status, refused) =
        h.call("POST", "/exchanges", Some(json!({"integrationCode": "ORDERS", "payload": [1]}))).await;
    assert_eq!((status, refused["field"].as_str()), (StatusCode::BAD_REQUEST, Some("payload")), "{refused}");
    let (status, started) = h.call("POST", "/exchanges", Some(json!({"integrationCode": "ORDERS"}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = ExchangeId::new(started["exchangeId"].as_str().expect("id"));
    let (_, queue) = h.call("GET", "/integrations/ORDERS/events", None).await;
    assert_eq!((queue["pending"].as_u64(), queue["takenBy"].as_str()), (Some(4), Some(id.as_str())), "{queue}");
    assert_eq!(queue["items"][0]["takenBy"], json!(id.as_str()));
    assert!(h.run().await.is_empty());
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::Completed);
    let bodies = delivered.lock().expect("lock").clone();
    assert_eq!(bodies.len(), 1, "one exchange, one delivery: {bodies:?}");
    assert_eq!(
        event_data(&bodies[0]),
        [(Some("order-1"), json!({"qty": 2})), (Some("order-2"), json!({"qty": 5})), (None, json!({"note": "no key"}))],
        "the latest per key, in the order the keys first arrived"
    );
    assert_eq!(bodies[0][0]["type"], "changed");
    let (_, queue) = h.call("GET", "/integrations/ORDERS/events", None).await;
    assert_eq!((queue["pending"].as_u64(), &queue["takenBy"]), (Some(0), &Value::Null), "consumed: {queue}");

    // Nothing pending: a manual run is refused, a scheduled one skipped and logged.
    let (status, refused) = h.call("POST", "/exchanges", Some(json!({"integrationCode": "ORDERS"}))).await;
    assert_eq!((status, refused["error"].as_str()), (StatusCode::CONFLICT, Some("NoPendingEvents")), "{refused}");
    let answer = TriggerFunction::new(h.ctx.clone()).invoke(json!({"integrationCode": "ORDERS"})).await.expect("ok");
    assert!(answer["skipped"].as_str().is_some_and(|s| s.contains("no pending events")), "{answer}");
    assert!(h.queue.take().is_empty(), "nothing started");
    let (_, log) = h.call("GET", "/integrations/ORDERS/log", None).await;
    assert_eq!(log["items"][0]["kind"], "skipped", "{log}");
    assert_eq!(log["items"][1]["events"], 3, "the invocation tells how many events it took: {log}");

    // Bad input names its field; a code that takes no events says so.
    let (status, body) = h.call("POST", "/integrations/ORDERS/events", Some(json!([{"key": "k"}]))).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("[0].data")), "{body}");
    let (status, body) = h.call("POST", "/integrations/ORDERS/events", Some(json!({"events": []}))).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("events")), "{body}");
    h.define(transform("PLAIN", ".")).await;
    let (status, body) = h.call("POST", "/integrations/PLAIN/events", Some(json!({"data": 1}))).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("NotEventBased")), "{body}");
    let (status, _) = h.call("POST", "/integrations/NOPE/events", Some(json!({"data": 1}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let reader = Caller::new("reader", ["handoff:read"]);
    let (status, _) = h.call_as(Some(reader), "POST", "/integrations/ORDERS/events", Some(json!({"data": 1}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "sending events needs handoff:invoke");
}

#[tokio::test]
async fn an_endpoint_that_discards_events_counts_them_and_never_delivers_them() {
    let h = Harness::new();
    let (url, _, delivered) = recording_target().await;
    h.define(event_delivery("DROPS", &url, 3)).await;
    let (status, body) = h.call("PATCH", "/integrations/DROPS", Some(json!({"queueStatus": "DiscardEvents"}))).await;
    assert_eq!((status, body["endpoint"]["queueStatus"].as_str()), (StatusCode::OK, Some("DiscardEvents")), "{body}");
    for _ in 0..2 {
        let (status, answer) =
            h.call("POST", "/integrations/DROPS/events", Some(json!([{"data": 1}, {"key": "a", "data": 2}]))).await;
        assert_eq!((status, answer["discarded"].as_u64()), (StatusCode::ACCEPTED, Some(2)), "{answer}");
        assert_eq!(answer["accepted"], 0);
    }
    let (_, queue) = h.call("GET", "/integrations/DROPS/events", None).await;
    assert_eq!((queue["pending"].as_u64(), queue["discarded"].as_u64()), (Some(0), Some(4)), "{queue}");
    let (status, refused) = h.call("POST", "/exchanges", Some(json!({"integrationCode": "DROPS"}))).await;
    assert_eq!((status, refused["error"].as_str()), (StatusCode::CONFLICT, Some("NoPendingEvents")), "{refused}");
    assert!(h.run().await.is_empty());
    assert!(delivered.lock().expect("lock").is_empty());
    // Reading again keeps what arrives from then on.
    h.call("PATCH", "/integrations/DROPS", Some(json!({"queueStatus": "ReadEvents"}))).await;
    h.call("POST", "/integrations/DROPS/events", Some(json!({"data": 3}))).await;
    let (_, queue) = h.call("GET", "/integrations/DROPS/events", None).await;
    assert_eq!((queue["pending"].as_u64(), queue["discarded"].as_u64()), (Some(1), Some(4)), "{queue}");
}

#[tokio::test]
async fn a_failed_event_exchange_keeps_its_events_through_recovery_and_later_events_wait_for_the_next() {
    use std::sync::atomic::Ordering;
    let h = Harness::new();
    let (url, down, delivered) = recording_target().await;
    h.define(event_delivery("STOCK", &url, 1)).await;
    let (_, shown) = h.call("GET", "/integrations/STOCK", None).await;
    assert_eq!(shown["endpoint"]["onSystemFailure"], "halt", "the default of an event-based endpoint");
    h.call(
        "POST",
        "/integrations/STOCK/events",
        Some(json!([{"key": "sku-1", "data": 1}, {"key": "sku-2", "data": 1}])),
    )
    .await;
    down.store(true, Ordering::SeqCst);
    let (_, started) = h.call("POST", "/exchanges", Some(json!({"integrationCode": "STOCK"}))).await;
    let x1 = ExchangeId::new(started["exchangeId"].as_str().expect("id"));
    assert!(h.run().await.is_empty());
    assert_eq!(h.detail(&x1).await.exchange.status, ExchangeStatus::Failed);
    let (_, shown) = h.call("GET", "/integrations/STOCK", None).await;
    assert_eq!(shown["endpoint"]["status"], "Failed", "halted: its events must wait in order");
    // Events keep arriving while it is Failed; those taken stay, under the failed exchange.
    h.call("POST", "/integrations/STOCK/events", Some(json!({"key": "sku-1", "data": 2}))).await;
    let (_, queue) = h.call("GET", "/integrations/STOCK/events", None).await;
    assert_eq!((queue["pending"].as_u64(), queue["takenBy"].as_str()), (Some(3), Some(x1.as_str())), "{queue}");
    assert!(queue["items"][2].get("takenBy").is_none(), "the later event is not x1's: {queue}");
    h.call("POST", "/integrations/STOCK/resume", None).await;
    let (status, refused) = h.call("POST", "/exchanges", Some(json!({"integrationCode": "STOCK"}))).await;
    assert_eq!((status, refused["error"].as_str()), (StatusCode::CONFLICT, Some("EventsInUse")), "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("/recover")), "{refused}");

    down.store(false, Ordering::SeqCst);
    let (status, body) = h.call("POST", &format!("/exchanges/{x1}/recover"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(h.run().await.is_empty());
    assert_eq!(h.detail(&x1).await.exchange.status, ExchangeStatus::Completed);
    let (_, queue) = h.call("GET", "/integrations/STOCK/events", None).await;
    assert_eq!((queue["pending"].as_u64(), &queue["takenBy"]), (Some(1), &Value::Null), "{queue}");
    let x2 = {
        let (status, started) = h.call("POST", "/exchanges", Some(json!({"integrationCode": "STOCK"}))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{started}");
        ExchangeId::new(started["exchangeId"].as_str().expect("id"))
    };
    assert!(h.run().await.is_empty());
    assert_eq!(h.detail(&x2).await.exchange.status, ExchangeStatus::Completed);
    let bodies = delivered.lock().expect("lock").clone();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(
        event_data(&bodies[0]),
        [(Some("sku-1"), json!(1)), (Some("sku-2"), json!(1))],
        "recovery used x1's events"
    );
    assert_eq!(event_data(&bodies[1]), [(Some("sku-1"), json!(2))]);
    let (_, queue) = h.call("GET", "/integrations/STOCK/events", None).await;
    assert_eq!(queue["pending"], 0);
}

#[tokio::test]
async fn a_request_that_cannot_be_routed_is_kept_listed_and_replayed_once_the_integration_exists() {
    let h = Harness::new();
    let (url, _, delivered) = recording_target().await;
    let request = json!({"integrationCode": "LATER", "parameters": {"region": "EU"}, "payload": {"order": 7}});
    let (status, refused) = h.call("POST", "/exchanges", Some(request.clone())).await;
    assert_eq!((status, refused["error"].as_str()), (StatusCode::NOT_FOUND, Some("NotFound")), "{refused}");
    let unrouted = refused["unroutedId"].as_str().expect("kept").to_string();
    let (status, listed) = h.call("GET", "/unrouted", None).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let kept = &listed["items"][0];
    assert_eq!((kept["unroutedId"].as_str(), kept["caller"].as_str()), (Some(unrouted.as_str()), Some("tester")));
    assert_eq!(
        (kept["integrationCode"].as_str(), kept["refusal"]["error"].as_str()),
        (Some("LATER"), Some("NotFound"))
    );
    assert_eq!(kept["parameters"], json!({"region": "EU"}));
    assert_eq!(kept["replayed"], false);

    // Not routable yet: the replay is refused and the message stays.
    let replay = format!("/unrouted/{unrouted}/replay");
    let (status, body) = h.call("POST", &replay, None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("NotRoutable")), "{body}");
    let (_, shown) = h.call("GET", &format!("/unrouted/{unrouted}"), None).await;
    assert!(shown.get("replay").is_none(), "{shown}");

    // A held endpoint's refusals are kept too.
    h.define(json!({"code": "LATER", "version": 1, "endpointStatus": "Disabled", "steps": [
        {"name": "send", "type": "delivery", "destinations": [{"kind": "rest", "request": {"method": "POST", "url": url}}]}]}))
    .await;
    let (status, held) = h.call("POST", "/exchanges", Some(json!({"integrationCode": "LATER"}))).await;
    assert_eq!((status, held["error"].as_str()), (StatusCode::CONFLICT, Some("EndpointDisabled")), "{held}");
    assert!(held["unroutedId"].is_string(), "{held}");
    let (_, listed) = h.call("GET", "/unrouted?limit=1", None).await;
    assert_eq!(listed["items"][0]["refusal"]["error"], "EndpointDisabled", "newest first: {listed}");
    let cursor = listed["nextCursor"].as_str().expect("a next page");
    let (_, older) = h.call("GET", &format!("/unrouted?limit=1&cursor={cursor}"), None).await;
    assert_eq!(older["items"][0]["unroutedId"], json!(unrouted), "{older}");

    h.call("POST", "/integrations/LATER/enable", None).await;
    let (status, replayed) = h.call("POST", &replay, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replayed}");
    let id = ExchangeId::new(replayed["exchangeId"].as_str().expect("exchange"));
    assert!(h.run().await.is_empty());
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::Completed);
    assert_eq!(delivered.lock().expect("lock").clone(), [json!({"order": 7})], "the kept payload, delivered once");
    let (_, exchange) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    assert_eq!(exchange["trigger"], json!({"kind": "replay", "caller": "tester"}), "{exchange}");
    assert_eq!(exchange["parameters"], json!({"region": "EU"}));
    let (_, shown) = h.call("GET", &format!("/unrouted/{unrouted}"), None).await;
    assert_eq!((shown["replayed"].as_bool(), shown["replay"]["exchangeId"].as_str()), (Some(true), Some(id.as_str())));
    let (status, again) = h.call("POST", &replay, None).await;
    assert_eq!((status, again["error"].as_str()), (StatusCode::CONFLICT, Some("AlreadyReplayed")), "{again}");
    assert_eq!(again["exchangeId"], json!(id.as_str()));

    let (status, body) = h.call("GET", "/unrouted/not-an-id", None).await;
    assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("id")), "{body}");
    let (status, _) = h.call("GET", "/unrouted/01900000-0000-7000-8000-000000000000", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let reader = Caller::new("reader", ["handoff:read"]);
    let (status, _) = h.call_as(Some(reader), "POST", &replay, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "replaying needs handoff:operate");
}

#[tokio::test]
async fn a_requester_signoff_completes_the_exchange_and_without_one_it_times_out_recoverably() {
    let h = Harness::new();
    let mut definition = transform("SIGNED", "map(. * 10)");
    definition["signoff"] = json!("requester");
    h.define(definition).await;
    let id = h.invoke("SIGNED", json!([1, 2])).await;
    assert!(h.run().await.is_empty(), "no timeout armed without signoffTimeoutSeconds");
    let (_, waiting) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    assert_eq!(waiting["statusCode"], "W", "it waits after its last step: {waiting}");
    let signoff = format!("/exchanges/{id}/signoff");
    let operator = Caller::new("ops", ["handoff:operate", "handoff:read"]);
    let (status, _) = h.call_as(Some(operator), "POST", &signoff, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "signing off needs handoff:invoke");
    let requester = Caller::new("partner", ["handoff:invoke"]);
    let (status, body) = h.call_as(Some(requester.clone()), "POST", &signoff, None).await;
    assert_eq!((status, body["signedOffBy"].as_str()), (StatusCode::ACCEPTED, Some("partner")), "{body}");
    // Signed off twice before the first ran: the sign-off runs once.
    let (status, _) = h.call_as(Some(requester.clone()), "POST", &signoff, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(h.run().await.is_empty());
    let detail = h.detail(&id).await;
    assert_eq!(detail.exchange.status, ExchangeStatus::Completed);
    assert_eq!(detail.exchange.result, Some(handoff_core::exchange::Payload::raw("[10,20]")), "the result flows on");
    assert!(detail.logs.iter().any(|l| l.line == "Exchange signed off by partner"), "{:?}", detail.logs);
    let (status, body) = h.call_as(Some(requester), "POST", &signoff, None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("InvalidState")), "{body}");
    let plain = h.invoke_completed_plain().await;
    let (status, body) = h.call("POST", &format!("/exchanges/{plain}/signoff"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "an integration that signs off by itself: {body}");

    // With a timeout and no sign-off: Failed with reason Timeout, recoverable into a new wait.
    let mut definition = transform("SIGNED_IN_TIME", ".");
    definition["signoff"] = json!("requester");
    definition["signoffTimeoutSeconds"] = json!(60);
    h.define(definition).await;
    let id = h.invoke("SIGNED_IN_TIME", json!([1])).await;
    let later = h.run().await;
    let timeout = later.iter().find_map(|q| match q {
        Queued::Timer { timer, .. } if matches!(timer.kind, TimerKind::StepTimeout { .. }) => Some(timer.clone()),
        _ => None,
    });
    let timeout = timeout.expect("the sign-off timeout is armed");
    fire_now(&h, &timeout).await;
    let detail = h.detail(&id).await;
    assert_eq!(detail.exchange.status, ExchangeStatus::Failed);
    let error = detail.exchange.error.as_ref().expect("error");
    assert!(error.message.starts_with("Timeout"), "{error:?}");
    let (status, body) = h.call("POST", &format!("/exchanges/{id}/recover"), Some(json!({}))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    h.run().await;
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::WaitingOnExternalSystem, "waiting again");
    let (status, _) = h.call("POST", &format!("/exchanges/{id}/signoff"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.run().await;
    assert_eq!(h.detail(&id).await.exchange.status, ExchangeStatus::Completed);
}

#[tokio::test]
async fn a_captured_answer_flows_on_is_the_result_and_is_delivered_to_the_response_address() {
    let h = Harness::new();
    // The target answers with a confirmation of what it got.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = format!("http://{}/orders", listener.local_addr().expect("addr"));
    let app = axum::Router::new().fallback(|body: axum::body::Bytes| async move {
        let got: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        axum::Json(json!({"confirmation": "C-1", "for": got}))
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (answers, _, delivered) = recording_target().await;
    h.define(json!({"code": "ASKING", "version": 1, "steps": [
        {"name": "order", "type": "delivery", "destinations": [{"kind": "rest",
         "request": {"method": "POST", "url": target},
         "response": {"capture": true, "deliverTo": {"kind": "rest", "request": {"url": answers}}}}]},
        {"name": "pick", "type": "transformation", "function": {"jq": "{confirmation, order: .for.order}"}}]}))
        .await;
    let id = h.invoke("ASKING", json!({"order": 7})).await;
    assert!(h.run().await.is_empty());
    let detail = h.detail(&id).await;
    assert_eq!(detail.exchange.status, ExchangeStatus::Completed);
    let answer = json!({"confirmation": "C-1", "for": {"order": 7}});
    assert_eq!(delivered.lock().expect("lock").clone(), [answer], "the answer, at its response address");
    let (_, shown) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    let result: Value = serde_json::from_str(shown["result"]["raw"].as_str().expect("inline result")).expect("json");
    assert_eq!(result, json!({"confirmation": "C-1", "order": 7}), "the answer flowed on: {shown}");
    assert_eq!(shown["destinations"][0]["status"], "Done", "{shown}");
    let subs: Vec<String> = detail.steps.iter().map(|s| s.sub_step.to_string()).collect();
    assert!(subs.iter().any(|s| s == "DeliverResponse"), "{subs:?}");
}

#[tokio::test]
async fn a_failed_secondary_of_a_completed_exchange_runs_again_and_its_outcome_shows() {
    use std::sync::atomic::Ordering;
    let h = Harness::new();
    let (main, main_received) = counting_target().await;
    let (secondary, down, applied) = switchable_target().await;
    h.define(json!({"code": "FANOUT", "version": 1, "steps": [
        {"name": "send", "type": "delivery", "retry": {"maxAttempts": 2, "intervalSeconds": 0}, "destinations": [
            {"kind": "rest", "main": true, "request": {"method": "POST", "url": main}},
            {"kind": "rest", "request": {"method": "POST", "url": secondary}}]}]}))
        .await;
    down.store(true, Ordering::SeqCst);
    let id = h.invoke("FANOUT", json!([1])).await;
    assert!(h.run().await.is_empty());
    let (_, shown) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    assert_eq!(shown["status"], "Completed", "a secondary never fails the exchange: {shown}");
    assert_eq!(shown["destinations"][1]["status"], "Failed", "{shown}");
    let step_id = shown["destinations"][1]["stepIds"][0].as_str().expect("step").to_string();
    let retry = format!("/exchanges/{id}/steps/{step_id}/retry");

    down.store(false, Ordering::SeqCst);
    let reader = Caller::new("reader", ["handoff:read"]);
    let (status, _) = h.call_as(Some(reader), "POST", &retry, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "re-executing needs handoff:operate");
    let (status, body) = h.call("POST", &retry, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(h.run().await.is_empty());
    let (_, shown) = h.call("GET", &format!("/exchanges/{id}"), None).await;
    assert_eq!(
        (shown["status"].as_str(), shown["destinations"][1]["status"].as_str()),
        (Some("Completed"), Some("Done"))
    );
    assert!(shown["destinations"][1]["lastError"].is_null(), "{shown}");
    assert_eq!(applied.load(Ordering::SeqCst), 1, "the secondary got it once");
    assert_eq!(main_received.load(Ordering::SeqCst), 1, "nothing else ran again");
    let detail = h.detail(&id).await;
    assert!(detail.logs.iter().any(|l| l.line.starts_with("Re-executed by tester")), "{:?}", detail.logs);

    // Done now, and the main destination never was a failed secondary: refused.
    let (status, body) = h.call("POST", &retry, None).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("InvalidState")), "{body}");
    let main_step = shown["destinations"][0]["stepIds"][0].as_str().expect("step");
    let (status, _) = h.call("POST", &format!("/exchanges/{id}/steps/{main_step}/retry"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

/// A loopback healthchecks.io stand-in: keeps each ping's path and body.
async fn heartbeat_monitor() -> (String, Arc<std::sync::Mutex<Vec<(String, String)>>>) {
    let pings = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/ping/check-1234", listener.local_addr().expect("addr"));
    let kept = pings.clone();
    let app = axum::Router::new().fallback(move |uri: http::Uri, body: String| {
        let kept = kept.clone();
        async move {
            kept.lock().expect("lock").push((uri.path().to_string(), body));
            "OK"
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, pings)
}

#[tokio::test]
async fn each_job_run_pings_its_heartbeat_start_then_success_or_fail() {
    use handoff_app::entry::jobs::JobHeartbeats;
    use handoff_core::heartbeat::HeartbeatUrl;
    let h = Harness::new();
    let (regular_url, pings) = heartbeat_monitor().await;
    let heartbeats = JobHeartbeats {
        regular: HeartbeatUrl::parse(&regular_url).expect("valid"),
        error_processing: HeartbeatUrl::parse(&format!("{regular_url}-errors")).expect("valid"),
    };
    let jobs = JobsFunction::new(h.ctx.clone()).with_heartbeats(heartbeats);
    jobs.invoke(json!({"job": "regular"})).await.expect("job");
    jobs.invoke(json!({"job": "errorProcessing"})).await.expect("job");
    let seen = pings.lock().expect("lock").clone();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["/ping/check-1234/start", "/ping/check-1234", "/ping/check-1234-errors/start", "/ping/check-1234-errors"]
    );

    // A run that fails: a stored retry comes due, and the control queue refuses it.
    let mut definition = unreachable_delivery("LATER_RETRY", 2);
    definition["steps"][0]["retry"] = json!({"maxAttempts": 2, "intervalSeconds": 3600, "maxIntervalSeconds": 3600});
    h.define(definition).await;
    h.invoke("LATER_RETRY", json!([1])).await;
    assert!(h.run().await.is_empty(), "the retry an hour ahead is a stored timer");
    h.clock.advance(chrono::Duration::hours(2));
    h.queue.fail_sends_to(WorkerFamily::Control);
    pings.lock().expect("lock").clear();
    assert!(jobs.invoke(json!({"job": "regular"})).await.is_err(), "the job fails");
    let seen = pings.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, "/ping/check-1234/start");
    assert_eq!(seen[1].0, "/ping/check-1234/fail");
    assert!(!seen[1].1.is_empty(), "the fail ping says why");

    // No heartbeat configured, or one nobody answers: the job itself is not affected.
    let silent = JobsFunction::new(h.ctx.clone()).with_heartbeats(JobHeartbeats {
        regular: HeartbeatUrl::parse("http://127.0.0.1:9/ping/x").expect("valid"),
        error_processing: None,
    });
    h.queue.heal();
    silent.invoke(json!({"job": "errorProcessing"})).await.expect("no heartbeat configured");
    silent.invoke(json!({"job": "regular"})).await.expect("a heartbeat nobody answers");
}

/// A scheduled run pings its integration's heartbeat `/start` before it is handed on and
/// success or `/fail` when its exchange ends; a run started over the API pings nothing. An
/// integration without its own `heartbeatUrl` pings the deployment's pattern.
#[tokio::test]
async fn a_scheduled_run_pings_its_heartbeat_start_then_success_or_fail_and_other_runs_do_not() {
    use handoff_app::entry::trigger::TriggerFunction;
    use handoff_core::heartbeat::HeartbeatPattern;
    let (check, pings) = heartbeat_monitor().await;
    let pattern = check.replace("check-1234", "pattern/{code}");
    let h = Harness::with(|s| s.integration_heartbeats = HeartbeatPattern::parse(&pattern).expect("valid"));
    let mut own = transform("NIGHTLY_OWN", ".");
    own["schedule"] = json!({"expression": "rate(1 hour)"});
    own["heartbeatUrl"] = json!(check);
    h.define(own).await;
    let mut by_pattern = transform("NIGHTLY_PATTERN", "error(\"customer Jane Roe has no account\")");
    by_pattern["schedule"] = json!({"expression": "rate(1 hour)"});
    h.define(by_pattern).await;

    let trigger = TriggerFunction::new(h.ctx.clone());
    trigger.invoke(json!({"integrationCode": "NIGHTLY_OWN"})).await.expect("scheduled run");
    assert_eq!(pings.lock().expect("lock").clone(), [("/ping/check-1234/start".to_string(), String::new())]);
    assert!(h.run().await.is_empty());
    h.invoke("NIGHTLY_OWN", json!([1])).await;
    assert!(h.run().await.is_empty());
    let seen: Vec<String> = pings.lock().expect("lock").iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(seen, ["/ping/check-1234/start", "/ping/check-1234"], "the API run pinged nothing");

    pings.lock().expect("lock").clear();
    trigger.invoke(json!({"integrationCode": "NIGHTLY_PATTERN"})).await.expect("scheduled run");
    h.run().await;
    let seen = pings.lock().expect("lock").clone();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["/ping/pattern/nightly_pattern/start", "/ping/pattern/nightly_pattern/fail"]);
    assert!(seen[1].1.contains("ExpressionFailed"), "{}", seen[1].1);
    assert!(!seen[1].1.contains("Jane Roe"), "the fail text quotes no data: {}", seen[1].1);
}

/// `notify` targets hear of an exchange that failed for good (a business error) and of an
/// endpoint a system failure halted — not of a failure the error job re-drives on its own —
/// with the code, the exchange, the error code and its action and a link, never the data.
/// System failures, and only they, reach the error tracker with where they happened.
#[tokio::test]
async fn the_owner_is_told_of_failures_for_good_and_halts_and_system_failures_are_tracked() {
    use handoff_core::notice::NoticeEvent;
    let (hook, received) = heartbeat_monitor().await;
    let hook = hook.replace("/ping/check-1234", "/hooks/owner");
    let topic = "arn:aws:sns:us-east-1:123456789012:handoff-notify-owner";
    let h = Harness::with(|s| s.public_base_url = Some("https://gw.example.com".into()));
    let notify = json!([{"webhook": hook}, {"snsTopicArn": topic, "on": ["endpointHalted"]}]);
    let mut business = transform("TOLD_BIZ", "error(\"customer Jane Roe has no account\")");
    business["notify"] = notify.clone();
    h.define(business).await;
    let mut system = unreachable_delivery("TOLD_SYS", 1);
    system["notify"] = notify;
    h.define(system).await;
    let (status, body) = h.call("PATCH", "/integrations/TOLD_SYS", Some(json!({"onSystemFailure": "halt"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let failed = h.invoke("TOLD_BIZ", json!({"name": "Jane Roe"})).await;
    assert!(h.run().await.is_empty());
    assert_eq!(h.detail(&failed).await.exchange.status, ExchangeStatus::Failed);
    let heard = received.lock().expect("lock").clone();
    assert_eq!(heard.len(), 1, "the webhook heard once: {heard:?}");
    assert_eq!(heard[0].0, "/hooks/owner");
    let notice: Value = serde_json::from_str(&heard[0].1).expect("json");
    assert_eq!(notice["event"], "exchangeFailed");
    assert_eq!(notice["integrationCode"], "TOLD_BIZ");
    assert_eq!(notice["exchangeId"], failed.as_str());
    assert_eq!(notice["errorCode"], "ExpressionFailed");
    assert_eq!(notice["action"], handoff_core::error_code::ErrorCode::ExpressionFailed.action());
    assert_eq!(notice["link"], format!("https://gw.example.com/exchanges/{failed}"));
    assert!(!heard[0].1.contains("Jane Roe"), "{}", heard[0].1);
    assert!(h.topics.published().is_empty(), "the topic wants halts only");
    assert!(h.tracker.reports().is_empty(), "a business failure is not a system error");

    // A connection failure: retryable, so the error job re-drives it (nobody is told it
    // failed), but it halts the endpoint, which both targets hear of.
    received.lock().expect("lock").clear();
    let halted = h.invoke("TOLD_SYS", json!({"name": "Jane Roe"})).await;
    assert!(h.run().await.is_empty());
    assert_eq!(h.detail(&halted).await.exchange.status, ExchangeStatus::Failed);
    let heard = received.lock().expect("lock").clone();
    let events: Vec<String> =
        heard.iter().map(|(_, body)| serde_json::from_str::<Value>(body).expect("json")["event"].to_string()).collect();
    assert_eq!(events, [format!("\"{}\"", NoticeEvent::EndpointHalted.name())]);
    let published = h.topics.published();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].topic_arn, topic);
    assert_eq!(published[0].subject, "Handoff: TOLD_SYS endpoint halted (Unavailable)");
    assert!(published[0].message.contains(&format!("Exchange: {halted}")), "{}", published[0].message);
    assert!(published[0].message.contains("/integrations/TOLD_SYS/resume"), "{}", published[0].message);
    assert!(!published[0].message.contains("Jane Roe"));

    let reports = h.tracker.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    assert_eq!((report.kind.as_str(), report.exchange_id.as_ref()), ("Unavailable", Some(&halted)));
    assert_eq!(report.integration_code.as_ref().map(|c| c.as_str()), Some("TOLD_SYS"));
    assert_eq!((report.sub_step, report.attempt), (Some(SubStep::DeliverRest), Some(1)));
    assert_eq!(report.link.as_deref(), Some(format!("https://gw.example.com/exchanges/{halted}").as_str()));
    assert!(!report.message.contains("Jane Roe"));
}

/// The callback token a wait of step `step_id` (`sub_step`) of exchange `id` holds, as the
/// executor stores it: no expiry, no parent, first recovery.
fn armed_token(
    token: &str,
    id: &ExchangeId,
    integration_code: handoff_core::ids::IntegrationCode,
    integration_version: handoff_core::ids::IntegrationVersion,
    step_id: StepId,
    sub_step: SubStep,
) -> CallbackToken {
    CallbackToken {
        hash: CallbackToken::hash_of(token),
        exchange_id: id.clone(),
        integration_code,
        integration_version,
        step_id,
        sub_step,
        recovery: 0,
        parameters: json!({}),
        expires_at: None,
        parent: None,
    }
}
