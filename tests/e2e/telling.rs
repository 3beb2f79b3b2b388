//! Operators and owners are told (issue 11): a system failure reaches the error tracker (a
//! loopback Sentry endpoint the emulator reports to) with its exchange and no payload
//! value; an integration's `notify` targets — a webhook, and an SNS topic whose subscriber
//! is a loopback server — hear of an exchange that failed for good; a scheduled
//! integration's heartbeat hears `/start` when its run begins and success or `/fail` when
//! it ends, through the emulator's scheduler.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use handoff_e2e::{clock_gateway, clock_lock, gateway, unique_code, ExternalSystem, Received};
use serde_json::json;
use std::time::{Duration, Instant};

/// Waits until `system` received at least `count` requests under `prefix`.
async fn wait_received(system: &ExternalSystem, prefix: &str, count: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received = system.received_at(prefix);
        if received.len() >= count {
            return received;
        }
        assert!(Instant::now() < deadline, "{prefix}: {} of {count} requests within 30 s", received.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_system_failure_reaches_the_error_tracker_with_its_exchange_and_no_payload_value() {
    let gw = gateway();
    let code = unique_code("TRACKED");
    let secret_value = format!("Jane Roe {}", uuid::Uuid::new_v4());
    gw.create_integration(&json!({"code": code, "version": 1, "steps": [
        {"name": "send", "type": "delivery", "retry": {"maxAttempts": 1},
         "destinations": [{"kind": "rest", "request": {"method": "POST", "url": "http://127.0.0.1:9/in"}}]}]}))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code, "payload": {"customer": secret_value}})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        let events = gw.error_tracker.events();
        if let Some(event) = events.into_iter().find(|e| e["tags"]["exchange_id"] == id.as_str()) {
            break event;
        }
        assert!(Instant::now() < deadline, "no report of {id} within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(event["exception"]["values"][0]["type"], "Unavailable", "{event:#}");
    assert!(event["exception"]["values"][0]["value"].as_str().is_some_and(|v| v.contains("127.0.0.1:9")), "{event:#}");
    assert_eq!(event["tags"]["integration_code"], code.as_str());
    assert_eq!(event["tags"]["sub_step"], "DeliverRest");
    assert_eq!(event["tags"]["attempt"], "1");
    assert_eq!(event["tags"]["function"], "handoff-worker-deliver-rest");
    assert_eq!(event["server_name"], "handoff-worker-deliver-rest");
    assert!(event["release"].as_str().is_some_and(|r| r.starts_with("handoff@")), "{event:#}");
    assert!(event["extra"]["link"].as_str().is_some_and(|l| l.ends_with(&format!("/exchanges/{id}"))), "{event:#}");

    let envelopes = gw.error_tracker.envelopes();
    assert!(envelopes.iter().all(|e| !String::from_utf8_lossy(&e.body).contains(&secret_value)), "no payload value");
    let ours = envelopes.iter().find(|e| String::from_utf8_lossy(&e.body).contains(id.as_str())).expect("envelope");
    assert!(ours.header("x-sentry-auth").is_some_and(|a| a.contains("sentry_key=handoff-e2e-key")), "{ours:?}");
    assert_eq!(ours.header("content-length"), Some(ours.body.len().to_string()), "Content-Length sent");
}

#[tokio::test]
async fn notify_targets_hear_of_an_exchange_that_failed_for_good_without_its_data() {
    let gw = gateway();
    let owner = ExternalSystem::start(200, "{}").await;
    let sdk = handoff_emulator::sdk_config_for(&gw.aws_endpoint).await;
    let sns = aws_sdk_sns::Client::new(&sdk);
    let topic = sns.create_topic().name(unique_code("handoff-notify-owner")).send().await.expect("topic");
    let topic_arn = topic.topic_arn().expect("arn").to_string();
    sns.subscribe()
        .topic_arn(&topic_arn)
        .protocol("http")
        .endpoint(format!("{}/sns", owner.url))
        .send()
        .await
        .expect("subscribed");

    let code = unique_code("TOLD");
    let secret_value = format!("Jane Roe {}", uuid::Uuid::new_v4());
    gw.create_integration(&json!({"code": code, "version": 1,
        "notify": [{"webhook": format!("{}/hook", owner.url)}, {"snsTopicArn": topic_arn}],
        "steps": [{"name": "map", "type": "transformation",
                   "function": {"jq": "error(\"customer \\(.name) has no account\")"}}]}))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code, "payload": {"name": secret_value}})).await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");

    let hook = wait_received(&owner, "/hook", 1).await;
    let notice = hook[0].json();
    assert_eq!(notice["event"], "exchangeFailed", "{notice:#}");
    assert_eq!(
        (notice["integrationCode"].as_str(), notice["exchangeId"].as_str()),
        (Some(code.as_str()), Some(id.as_str()))
    );
    assert_eq!(notice["errorCode"], "ExpressionFailed");
    assert!(notice["action"].as_str().is_some_and(|a| !a.is_empty()), "{notice:#}");
    assert!(notice["link"].as_str().is_some_and(|l| l.ends_with(&format!("/exchanges/{id}"))), "{notice:#}");
    assert_eq!(hook[0].header("content-type").as_deref(), Some("application/json"));

    let published = wait_received(&owner, "/sns", 1).await;
    let delivery = published[0].json();
    assert_eq!(delivery["Type"], "Notification", "{delivery:#}");
    assert_eq!(delivery["TopicArn"], topic_arn.as_str());
    assert_eq!(delivery["Subject"], format!("Handoff: {code} exchange failed (ExpressionFailed)"));
    let message = delivery["Message"].as_str().expect("message");
    assert!(message.contains(&format!("Exchange: {id}")) && message.contains("What to do: "), "{message}");
    for received in hook.iter().chain(&published) {
        assert!(!String::from_utf8_lossy(&received.body).contains(&secret_value), "no payload value: {received:?}");
    }
}

fn parse(at: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(at).expect("an RFC 3339 time").with_timezone(&Utc)
}

#[tokio::test]
async fn a_scheduled_integration_pings_its_heartbeat_when_a_run_starts_and_when_it_ends() {
    let _one_at_a_time = clock_lock().await;
    let gw = clock_gateway();
    let monitor = ExternalSystem::start(200, "OK").await;
    let target = ExternalSystem::start(200, "{}").await;
    target.fail_path("/refused", 422);
    let today = parse(&gw.clock_now().await).date_naive();
    let at_ten = (today + ChronoDuration::days(1)).and_hms_opt(10, 0, 0).expect("10:00").and_utc();
    let scheduled = |code: &str, path: &str, check: &str| {
        json!({"code": code, "version": 1, "heartbeatUrl": format!("{}{check}", monitor.url),
            "schedule": {"expression": "cron(0 10 * * ? *)", "timezone": "UTC"},
            "steps": [{"name": "send", "type": "delivery", "destinations": [
                {"kind": "rest", "request": {"method": "POST", "url": format!("{}{path}", target.url)}}]}]})
    };
    let (good, bad) = (unique_code("BEATING"), unique_code("FAILING"));
    let (good_check, bad_check) =
        (format!("/ping/{}", uuid::Uuid::new_v4()), format!("/ping/{}", uuid::Uuid::new_v4()));
    gw.create_integration(&scheduled(&good, "/in", &good_check)).await;
    gw.create_integration(&scheduled(&bad, "/refused", &bad_check)).await;
    // A run started by a caller is not the schedule's: its heartbeat hears nothing of it.
    let by_hand = gw.invoke(&json!({"integrationCode": good})).await;
    assert_eq!(gw.wait_final(&by_hand).await["status"], "Completed");

    gw.advance_clock_to(&(at_ten + ChronoDuration::seconds(30)).to_rfc3339()).await;
    let good_pings = wait_received(&monitor, &good_check, 2).await;
    let bad_pings = wait_received(&monitor, &bad_check, 2).await;
    let paths = |pings: &[Received]| pings.iter().map(|p| p.path.clone()).collect::<Vec<_>>();
    assert_eq!(paths(&good_pings), [format!("{good_check}/start"), good_check.clone()]);
    assert_eq!(paths(&bad_pings), [format!("{bad_check}/start"), format!("{bad_check}/fail")]);
    let why = String::from_utf8_lossy(&bad_pings[1].body).to_string();
    assert!(why.contains("Failed: TargetRejected"), "{why}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(monitor.received_at(&good_check).len(), 2, "one run, two pings");
}
