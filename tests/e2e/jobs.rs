//! The two scheduled jobs, invoked with the input their schedules in the template carry.

use chrono::Utc;
use handoff_core::commit::{ExchangeChange, StepCommit};
use handoff_core::handoff::{Timer, TimerKind};
use handoff_core::ids::{ExchangeId, StepId};
use handoff_e2e::{function, gateway, unique_code, ExternalSystem};
use handoff_ports::{ExchangeWrites, TimerStore};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn the_regular_job_sends_stored_timers_when_they_come_due() {
    let gw = gateway();
    let partner = ExternalSystem::start(202, "{}").await;
    let code = unique_code("SWEPT");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [
        {"name": "settle", "type": "invokeProcess", "kind": "process",
         "request": {"method": "POST", "url": format!("{}/jobs", partner.url)}, "expectNotification": true}]}))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    gw.wait_for(&id, Duration::from_secs(60), |e| e["statusCode"] == "W").await;

    // A timer stored for the sweeper (as a step timeout beyond SQS's 15-minute delay would be).
    let sdk = handoff_emulator::sdk_config_for(&gw.aws_endpoint).await;
    let table = gw.var("handoff-api", "HANDOFF_EXCHANGES_TABLE");
    let repository = handoff_aws::DynamoExchangeRepository::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    let now = Utc::now();
    let mut commit = StepCommit::new(ExchangeId::new(id.clone()), 0, ExchangeChange::RequireNotFinal, now);
    commit.timers.push(Timer {
        exchange_id: ExchangeId::new(id.clone()),
        recovery: 0,
        due: now + chrono::Duration::seconds(2),
        kind: TimerKind::StepTimeout { step_id: StepId::from_sequence(2) },
    });
    repository.commit(&commit).await.expect("store timer");

    let swept = function("handoff-jobs").await.invoke(json!({"job": "regular"})).await.expect("regular job");
    // Tests run the job concurrently: another run may have sent this timer; the outcome counts.
    assert!(swept["timersSent"].is_u64(), "{swept}");
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert!(failed["error"]["message"].as_str().unwrap().starts_with("Timeout"), "{failed:#}");
    assert!(repository
        .due_timers(Utc::now() + chrono::Duration::seconds(120), 1000)
        .await
        .unwrap()
        .iter()
        .all(|t| t.exchange_id.as_str() != id));
}

#[tokio::test]
async fn the_error_job_redrives_retryable_system_failures_only() {
    let gw = gateway();
    let flaky = ExternalSystem::start(200, "{}").await;
    flaky.script([(503, "{}")]);
    let strict = ExternalSystem::start(400, "{}").await;
    let code = unique_code("REDRIVE");
    let definition = |version: u32, url: &str| {
        json!({"code": code, "version": version, "steps": [{"name": "send", "type": "delivery", "retry": {"maxAttempts": 1},
            "destinations": [{"kind": "rest", "request": {"method": "POST", "url": format!("{url}/in")}}]}]})
    };
    gw.create_integration(&definition(1, &flaky.url)).await;
    gw.create_integration(&definition(2, &strict.url)).await;
    let system = gw.invoke(&json!({"integrationCode": code, "integrationVersion": 1})).await;
    let business = gw.invoke(&json!({"integrationCode": code, "integrationVersion": 2})).await;
    assert_eq!(gw.wait_final(&system).await["error"]["classification"], "system");
    assert_eq!(gw.wait_final(&business).await["error"]["classification"], "business");

    let outcome = function("handoff-jobs")
        .await
        .invoke(json!({"job": "errorProcessing", "integrationCode": code}))
        .await
        .expect("error job");
    assert_eq!(outcome["recovered"], json!([system]), "{outcome}");
    let redriven = gw.wait_final(&system).await;
    assert_eq!(redriven["status"], "Completed", "{redriven:#}");
    assert_eq!(redriven["recoveries"], 1);
    assert_eq!(gw.exchange(&business).await["status"], "Failed", "business errors wait for the data to be fixed");
}

/// An exchange whose creator stopped between writing it and handing it off stays `New`; the
/// regular job starts it again, on the payload it was invoked with.
#[tokio::test]
async fn the_regular_job_starts_exchanges_that_were_never_handed_off() {
    use handoff_app::definitions::LoadedIntegration;
    use handoff_core::exchange::Payload;
    use handoff_core::ids::IntegrationCode;
    use handoff_ports::IntegrationRepository;
    let gw = gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("UNSTARTED");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [{"name": "send", "type": "delivery",
        "destinations": [{"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;

    // What the API writes before its first send, three minutes ago — and nothing after.
    let sdk = handoff_emulator::sdk_config_for(&gw.aws_endpoint).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let integrations = handoff_aws::DynamoIntegrationRepository::new(
        dynamo.clone(),
        gw.var("handoff-api", "HANDOFF_INTEGRATIONS_TABLE"),
    );
    let exchanges =
        handoff_aws::DynamoExchangeRepository::new(dynamo, gw.var("handoff-api", "HANDOFF_EXCHANGES_TABLE"));
    let stored =
        integrations.versions(&IntegrationCode::parse(&code).expect("code")).await.expect("versions").remove(0);
    let loaded = LoadedIntegration::from_stored(stored).expect("definition");
    let id = ExchangeId::new(uuid::Uuid::now_v7().to_string());
    let created_at = Utc::now() - chrono::Duration::minutes(3);
    let created = handoff_app::use_cases::invoke::materialize(
        &loaded,
        id.clone(),
        json!({}),
        Some(Payload::raw("{\"n\": 42}")),
        None,
        created_at,
    );
    exchanges.create(&created.exchange, &created.steps).await.expect("create");
    assert_eq!(gw.exchange(id.as_str()).await["status"], "New");

    let outcome = function("handoff-jobs").await.invoke(json!({"job": "regular"})).await.expect("regular job");
    // Tests run the job concurrently: another run may have started it; the outcome counts.
    assert!(outcome["exchangesStarted"].is_u64(), "{outcome}");
    let done = gw.wait_final(id.as_str()).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(target.received().iter().map(|r| r.json()).collect::<Vec<_>>(), vec![json!({"n": 42})]);
}

/// The regular job pings its heartbeat (healthchecks.io protocol) when it starts and when it
/// succeeds, and `/fail` with the reason when it fails; the URL comes from the template's
/// `RegularJobHeartbeatUrl` (empty here: not monitored unless set).
#[tokio::test]
async fn the_regular_job_pings_start_then_success_and_a_failing_run_pings_fail() {
    let gw = gateway();
    assert_eq!(gw.var("handoff-jobs", "HANDOFF_REGULAR_JOB_HEARTBEAT_URL"), "", "wired from the template, unset");
    let monitor = ExternalSystem::start(200, "OK").await;
    let check = format!("{}/ping/{}", monitor.url, uuid::Uuid::new_v4());
    let jobs = handoff_e2e::function_with("handoff-jobs", &[("HANDOFF_REGULAR_JOB_HEARTBEAT_URL", &check)]).await;
    jobs.invoke(json!({"job": "regular"})).await.expect("the regular job runs");
    let paths: Vec<String> = monitor.received().iter().map(|r| r.path.clone()).collect();
    let base = check.trim_start_matches(&monitor.url).to_string();
    assert_eq!(paths, [format!("{base}/start"), base.clone()]);

    // A run that cannot reach its table fails, and says so to the monitor.
    let broken = handoff_e2e::function_with(
        "handoff-jobs",
        &[("HANDOFF_REGULAR_JOB_HEARTBEAT_URL", &check), ("HANDOFF_EXCHANGES_TABLE", "no-such-table")],
    )
    .await;
    assert!(broken.invoke(json!({"job": "regular"})).await.is_err(), "the job fails");
    let received = monitor.received();
    let tail: Vec<&str> = received[2..].iter().map(|r| r.path.as_str()).collect();
    assert_eq!(tail, [format!("{base}/start"), format!("{base}/fail")]);
    let reason = String::from_utf8_lossy(&received[3].body).to_string();
    assert!(!reason.is_empty() && reason.len() <= 1000, "{reason}");
    assert_eq!(received[3].header("content-length"), Some(reason.len().to_string()), "Content-Length sent");
}
