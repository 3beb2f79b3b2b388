//! Time-driven behaviour with the emulator's clock control (`POST /_emulator/clock`, an
//! emulator-only route): schedules follow their endpoint exactly — a schedule moved from
//! 18:00 to 19:00 never fires at 18:00 again, a halted endpoint logs the run it skips — and
//! a retry stored an hour ahead runs when the hour has passed. These run on an emulator of
//! their own ([`clock_gateway`]), one at a time, so moving its time disturbs no other test.

use chrono::{DateTime, Duration as ChronoDuration, NaiveTime, Utc};
use handoff_e2e::{clock_gateway, clock_lock, unique_code, ExternalSystem, Gateway};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn parse(at: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(at).expect("an RFC 3339 time").with_timezone(&Utc)
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `hh:mm:ss` UTC on the emulated day after today: every test starts on a day of its own,
/// as the clock only moves forward.
async fn tomorrow_at(gw: &Gateway, time: &str) -> DateTime<Utc> {
    let today = parse(&gw.clock_now().await).date_naive();
    let time = NaiveTime::parse_from_str(time, "%H:%M:%S").expect("hh:mm:ss");
    (today + ChronoDuration::days(1)).and_time(time).and_utc()
}

/// The endpoint log's entries, newest first.
async fn log(gw: &Gateway, code: &str) -> Vec<Value> {
    let (status, page) = gw.get(&format!("/integrations/{code}/log?limit=100")).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().cloned().unwrap_or_default()
}

fn scheduled_invocations(entries: &[Value]) -> Vec<Value> {
    entries.iter().filter(|e| e["kind"] == "invoked" && e["trigger"]["kind"] == "schedule").cloned().collect()
}

/// Waits for the endpoint log to hold an entry that `wanted` picks.
async fn wait_for_log(gw: &Gateway, code: &str, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let entries = log(gw, code).await;
        if let Some(found) = entries.iter().find(|e| wanted(e)) {
            return found.clone();
        }
        assert!(Instant::now() < deadline, "no {what} in the endpoint log within 30 s: {entries:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn daily_delivery(code: &str, hour: u32, target: &ExternalSystem) -> Value {
    json!({"code": code, "version": 1,
        "schedule": {"expression": format!("cron(0 {hour} * * ? *)"), "timezone": "UTC"},
        "steps": [{"name": "send", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url),
             "body": "{\"run\": \"{{exchange.exchangeId}}\"}"}}]}]})
}

#[tokio::test]
async fn a_schedule_moved_from_18_to_19_runs_at_19_and_never_at_18() {
    let _one_at_a_time = clock_lock().await;
    let gw = clock_gateway();
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("MOVED");
    let five_pm = tomorrow_at(gw, "17:00:00").await;
    gw.advance_clock_to(&rfc3339(five_pm)).await;
    gw.create_integration(&daily_delivery(&code, 18, &target)).await;
    let (_, shown) = gw.get(&format!("/integrations/{code}")).await;
    let six_pm = five_pm + ChronoDuration::hours(1);
    assert_eq!(shown["endpoint"]["schedule"]["nextRuns"][0], json!(six_pm), "{shown:#}");

    // Half a minute before the run, the partner asks for 7 pm instead.
    gw.advance_clock_to(&rfc3339(six_pm - ChronoDuration::seconds(30))).await;
    let moved = json!({"schedule": {"expression": "cron(0 19 * * ? *)", "timezone": "UTC"}});
    let (status, body) = gw.patch(&format!("/integrations/{code}/versions/1"), &moved).await;
    assert_eq!(status, 200, "{body}");
    let (_, shown) = gw.get(&format!("/integrations/{code}")).await;
    let seven_pm = six_pm + ChronoDuration::hours(1);
    assert_eq!(shown["endpoint"]["schedule"]["nextRuns"][0], json!(seven_pm), "{shown:#}");

    gw.advance_clock_to(&rfc3339(six_pm + ChronoDuration::seconds(30))).await;
    // Anything the scheduler fired at 18:00 would be invoking by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(scheduled_invocations(&log(gw, &code).await), Vec::<Value>::new(), "no run at 18:00");
    assert!(target.received().is_empty());

    gw.advance_clock_to(&rfc3339(seven_pm + ChronoDuration::seconds(30))).await;
    let run = wait_for_log(gw, &code, "run at 19:00", |e| e["kind"] == "invoked").await;
    assert_eq!(run["trigger"]["kind"], "schedule", "{run:#}");
    assert!(parse(run["at"].as_str().expect("at")) >= seven_pm, "started on the emulator's time: {run:#}");
    let exchange_id = run["exchangeId"].as_str().expect("exchangeId").to_string();
    assert_eq!(gw.wait_final(&exchange_id).await["status"], "Completed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(scheduled_invocations(&log(gw, &code).await).len(), 1, "exactly one run at 19:00");
    assert_eq!(target.received().len(), 1);
    assert_eq!(target.received()[0].json(), json!({"run": exchange_id}));
}

#[tokio::test]
async fn a_halted_endpoint_logs_the_scheduled_run_it_skips_and_runs_again_once_resumed() {
    let _one_at_a_time = clock_lock().await;
    let gw = clock_gateway();
    let target = ExternalSystem::start(200, "{}").await;
    target.fail_path("/in", 503);
    let code = unique_code("HALTED");
    let five_pm = tomorrow_at(gw, "17:00:00").await;
    gw.advance_clock_to(&rfc3339(five_pm)).await;
    let mut definition = daily_delivery(&code, 18, &target);
    definition["steps"][0]["retry"] = json!({"maxAttempts": 1});
    gw.create_integration(&definition).await;
    let (status, body) = gw.patch(&format!("/integrations/{code}"), &json!({"onSystemFailure": "halt"})).await;
    assert_eq!(status, 200, "{body}");

    // The target is down: an exchange fails on a system error and halts the endpoint.
    let failed = gw.invoke(&json!({"integrationCode": code})).await;
    assert_eq!(gw.wait_final(&failed).await["status"], "Failed");
    let (_, shown) = gw.get(&format!("/integrations/{code}")).await;
    assert_eq!(shown["endpoint"]["status"], "Failed", "{shown:#}");
    let six_pm = five_pm + ChronoDuration::hours(1);
    assert_eq!(shown["endpoint"]["schedule"]["nextRuns"][0], json!(six_pm), "the schedule stays armed: {shown:#}");

    gw.advance_clock_to(&rfc3339(six_pm + ChronoDuration::seconds(30))).await;
    let skipped = wait_for_log(gw, &code, "skipped run", |e| e["kind"] == "skipped").await;
    assert_eq!(skipped["trigger"]["kind"], "schedule", "{skipped:#}");
    let reason = skipped["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("is Failed") && reason.contains(&format!("/integrations/{code}/resume")), "{reason}");
    assert_eq!(scheduled_invocations(&log(gw, &code).await), Vec::<Value>::new(), "the run did not start");

    // Repaired and resumed: the next day's run goes ahead.
    target.clear_failing_paths();
    let before = target.received().len();
    let (status, resumed) = gw.post(&format!("/integrations/{code}/resume"), &json!({})).await;
    assert_eq!(status, 200, "{resumed}");
    let next_day = six_pm + ChronoDuration::days(1);
    gw.advance_clock_to(&rfc3339(next_day + ChronoDuration::seconds(30))).await;
    let run = wait_for_log(gw, &code, "scheduled run after the resume", |e| {
        e["kind"] == "invoked" && e["trigger"]["kind"] == "schedule"
    })
    .await;
    let exchange_id = run["exchangeId"].as_str().expect("exchangeId");
    assert_eq!(gw.wait_final(exchange_id).await["status"], "Completed");
    // A day on, the error-processing job has also re-driven the exchange that failed on a
    // system error (a retryable one): each is delivered once.
    assert_eq!(gw.wait_final(&failed).await["status"], "Completed", "re-driven once the endpoint runs");
    let delivered: Vec<Value> = target.received()[before..].iter().map(|r| r.json()).collect();
    for id in [exchange_id, failed.as_str()] {
        assert_eq!(delivered.iter().filter(|d| d["run"] == json!(id)).count(), 1, "{id}: {delivered:?}");
    }
}

#[tokio::test]
async fn a_retry_stored_an_hour_ahead_runs_once_the_clock_has_passed_it() {
    let _one_at_a_time = clock_lock().await;
    let gw = clock_gateway();
    let target = ExternalSystem::start(200, "{}").await;
    target.fail_path("/in", 503);
    let code = unique_code("HOURLY_RETRY");
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [
        {"name": "send", "type": "delivery", "retry": {"maxAttempts": 2, "intervalSeconds": 3600, "maxIntervalSeconds": 3600},
         "destinations": [{"kind": "rest", "request": {"method": "POST", "url": format!("{}/in", target.url)}}]}]}))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    let retrying =
        |e: &Value| e["steps"].as_array().into_iter().flatten().find(|s| s["nextRetryAt"].is_string()).cloned();
    let waiting = gw.wait_for(&id, Duration::from_secs(60), |e| retrying(e).is_some()).await;
    let step = retrying(&waiting).unwrap_or_default();
    let next_attempt = parse(step["nextRetryAt"].as_str().expect("nextRetryAt"));
    assert!(next_attempt - parse(&gw.clock_now().await) > ChronoDuration::minutes(55), "{waiting:#}");
    target.clear_failing_paths();
    let before = target.received().len();

    // An hour on, the regular job hands the stored timer over and the retry succeeds.
    gw.advance_clock_to(&rfc3339(next_attempt + ChronoDuration::seconds(5))).await;
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(target.received().len() - before, 1, "the retry, once");
}
