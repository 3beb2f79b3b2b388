//! Integration tests: the real `infra/template.yaml` provisioned into a real moto started
//! by the emulator, with fake function handlers standing in for the Handoff functions.

use async_trait::async_trait;
use handoff_app::entry::function::{FunctionHandler, InvocationError};
use handoff_emulator::functions::FunctionFactory;
use handoff_emulator::{start, EmulatorOptions, RunningEmulator};
use handoff_runtime::compose::{AwsEnvironment, ComposeError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every invocation, per binary.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, Value)>>,
}

impl Recorder {
    fn calls_of(&self, binary: &str) -> Vec<Value> {
        self.calls
            .lock()
            .map(|c| c.iter().filter(|(b, _)| b == binary).map(|(_, v)| v.clone()).collect())
            .unwrap_or_default()
    }
}

/// * `handoff-api` echoes the event as the response body (and sleeps on `x-sleep-ms`);
/// * `handoff-worker-query` fails every invocation;
/// * everything else succeeds.
struct Fake {
    binary: String,
    recorder: Arc<Recorder>,
}

#[async_trait]
impl FunctionHandler for Fake {
    async fn invoke(&self, event: Value) -> Result<Value, InvocationError> {
        if let Ok(mut c) = self.recorder.calls.lock() {
            c.push((self.binary.clone(), event.clone()));
        }
        match self.binary.as_str() {
            "handoff-api" => {
                if let Some(ms) = event["headers"]["x-sleep-ms"].as_str().and_then(|s| s.parse().ok()) {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Ok(json!({
                    "statusCode": 200,
                    "headers": {"content-type": "application/json", "x-fake": "api"},
                    "cookies": ["session=abc"],
                    "body": event.to_string(),
                }))
            }
            "handoff-worker-query" => Err(InvocationError::new("Boom", "always fails")),
            _ => Ok(json!({"batchItemFailures": []})),
        }
    }
}

struct FakeFactory(Arc<Recorder>, Arc<Mutex<HashMap<String, HashMap<String, String>>>>);

#[async_trait]
impl FunctionFactory for FakeFactory {
    async fn build(
        &self,
        binary: &str,
        vars: &HashMap<String, String>,
        _aws: &AwsEnvironment,
    ) -> Result<Arc<dyn FunctionHandler>, ComposeError> {
        if let Ok(mut v) = self.1.lock() {
            v.insert(binary.to_string(), vars.clone());
        }
        Ok(Arc::new(Fake { binary: binary.to_string(), recorder: self.0.clone() }))
    }
}

struct Setup {
    emulator: RunningEmulator,
    recorder: Arc<Recorder>,
    vars: Arc<Mutex<HashMap<String, HashMap<String, String>>>>,
}

async fn setup(tune: impl FnOnce(&mut EmulatorOptions)) -> Setup {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let recorder = Arc::new(Recorder::default());
    let vars = Arc::new(Mutex::new(HashMap::new()));
    let mut options = EmulatorOptions {
        aws_endpoint: None,
        function_factory: Arc::new(FakeFactory(recorder.clone(), vars.clone())),
        ..EmulatorOptions::default()
    };
    options.env_overrides.insert("HANDOFF_TEST_OVERRIDE".into(), "yes".into());
    tune(&mut options);
    let emulator = start(options).await.expect("emulator starts");
    Setup { emulator, recorder, vars }
}

async fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_messages_are_redriven_to_the_dead_letter_queue() {
    let s = setup(|_| {}).await;
    let sqs = aws_sdk_sqs::Client::new(s.emulator.sdk_config());
    let vars = s.vars.lock().map(|v| v.get("handoff-worker-query").cloned()).ok().flatten().expect("query vars");
    let queue_url = vars.get("HANDOFF_QUEUE_QUERY_URL").cloned().expect("queue url var");
    assert_eq!(vars.get("HANDOFF_TEST_OVERRIDE").map(String::as_str), Some("yes"));
    assert_eq!(vars.get("HANDOFF_PUBLIC_BASE_URL").map(String::as_str), Some(s.emulator.api_url()));

    // The template's redrive policy was provisioned as written.
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .expect("queue attributes");
    let redrive = attrs
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy))
        .cloned()
        .expect("redrive policy");
    let redrive: Value = serde_json::from_str(&redrive).expect("redrive json");
    assert_eq!(redrive["maxReceiveCount"].as_u64(), Some(5));
    assert!(redrive["deadLetterTargetArn"].as_str().is_some_and(|a| a.ends_with("handoff-QueryDlq")));

    // A 60 s visibility timeout would make this test take minutes; shorten it.
    sqs.set_queue_attributes()
        .queue_url(&queue_url)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "1")
        .send()
        .await
        .expect("shorten visibility timeout");
    // moto fixes the visibility timeout when a long poll starts: let running polls end.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let sent =
        sqs.send_message().queue_url(&queue_url).message_body(r#"{"exchangeId":"x1"}"#).send().await.expect("send");
    let message_id = sent.message_id().expect("id").to_string();

    // The DLQ function receives it after five failed attempts of the query worker.
    let dlq_event = wait_for("the message in the DLQ function", Duration::from_secs(30), || {
        s.recorder.calls_of("handoff-dlq").into_iter().find(|e| e["Records"][0]["messageId"] == message_id.as_str())
    })
    .await;
    let record = &dlq_event["Records"][0];
    assert_eq!(record["body"], r#"{"exchangeId":"x1"}"#);
    assert_eq!(record["eventSource"], "aws:sqs");
    assert!(record["eventSourceARN"].as_str().is_some_and(|a| a.ends_with(":handoff-QueryDlq")));

    let attempts: Vec<String> = s
        .recorder
        .calls_of("handoff-worker-query")
        .iter()
        .filter(|e| e["Records"][0]["messageId"] == message_id.as_str())
        .map(|e| e["Records"][0]["attributes"]["ApproximateReceiveCount"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(attempts, vec!["1", "2", "3", "4", "5"]);
    s.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_become_payload_v2_events() {
    let s = setup(|o| o.http_integration_timeout = Duration::from_millis(500)).await;
    let api = s.emulator.api_url().to_string();
    let client = s.emulator.api_client(Duration::from_secs(10));

    let r = client
        .post(format!("{api}/exchanges?a=1&a=2&b=x%20y"))
        .header("X-Custom", "v")
        .header("Cookie", "c1=1; c2=2")
        .body(r#"{"integrationCode":"X"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("x-fake").and_then(|v| v.to_str().ok()), Some("api"));
    assert_eq!(r.headers().get("set-cookie").and_then(|v| v.to_str().ok()), Some("session=abc"));
    let e: Value = r.json().await.expect("echoed event");
    assert_eq!(e["version"], "2.0");
    assert_eq!(e["routeKey"], "POST /exchanges");
    assert_eq!(e["rawPath"], "/exchanges");
    assert_eq!(e["rawQueryString"], "a=1&a=2&b=x%20y");
    assert_eq!(e["queryStringParameters"], json!({"a": "1,2", "b": "x y"}));
    assert_eq!(e["headers"]["x-custom"], "v");
    assert_eq!(e["cookies"], json!(["c1=1", "c2=2"]));
    assert_eq!(e["body"], r#"{"integrationCode":"X"}"#);
    assert_eq!(e["isBase64Encoded"], false);
    assert_eq!(e["requestContext"]["http"]["method"], "POST");
    assert_eq!(e["requestContext"]["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(e["requestContext"]["stage"], "$default");
    assert_eq!(e["requestContext"]["accountId"], "123456789012");
    // The JWT authorizer validated the development token and passes its claims on.
    assert_eq!(e["requestContext"]["authorizer"]["jwt"]["claims"]["sub"], "developer");
    assert_eq!(e["requestContext"]["authorizer"]["jwt"]["claims"]["iss"], "urn:handoff:emulator");
    let scopes = e["requestContext"]["authorizer"]["jwt"]["scopes"].as_array().cloned().unwrap_or_default();
    assert!(scopes.contains(&json!("handoff:invoke")), "{scopes:?}");

    // Without a token API Gateway answers 401 itself; a token without the route's scope, 403.
    let anonymous = reqwest::Client::new();
    let r = anonymous.post(format!("{api}/exchanges")).body("{}").send().await.expect("401");
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some_and(|v| v.to_str().unwrap_or("").starts_with("Bearer")));
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"message": "Unauthorized"}));
    let issuer =
        handoff_emulator::auth::DevIssuer::load_or_create(&EmulatorOptions::default().state_dir).expect("issuer");
    let reader = issuer.mint("reader", &["handoff:read"], "handoff", Duration::from_secs(60)).expect("token");
    let r = anonymous.post(format!("{api}/exchanges")).bearer_auth(&reader).body("{}").send().await.expect("403");
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"message": "Forbidden"}));
    // The callback route is public: the function is reached without a token.
    let r = anonymous.post(format!("{api}/notifications/some-token")).body("{}").send().await.expect("public");
    assert_eq!(r.status(), 200);

    let e: Value = client
        .patch(format!("{api}/integrations/PROVIDER_IMPORT/versions/null"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(e["routeKey"], "PATCH /integrations/{code}/versions/{version}");
    assert_eq!(e["pathParameters"], json!({"code": "PROVIDER_IMPORT", "version": "null"}));

    // Unknown route: API Gateway's own 404.
    let r = client.get(format!("{api}/nope")).send().await.expect("404");
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"message": "Not Found"}));

    // Over the 10 MB payload quota.
    let big = vec![b'a'; 10 * 1024 * 1024 + 1];
    let r = client.post(format!("{api}/exchanges")).body(big).send().await.expect("413");
    assert_eq!(r.status(), 413);

    // Integration timeout (shortened to 500 ms for the test).
    let r = client.get(format!("{api}/health")).header("x-sleep-ms", "2000").send().await.expect("503");
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"message": "Service Unavailable"}));
    s.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_schedules_fire() {
    use aws_sdk_scheduler::types::{FlexibleTimeWindow, FlexibleTimeWindowMode, Target};
    let s = setup(|o| o.scheduler_interval = Duration::from_millis(200)).await;
    let scheduler = aws_sdk_scheduler::Client::new(s.emulator.sdk_config());
    let trigger_arn = s
        .emulator
        .functions()
        .iter()
        .find(|f| f.spec.binary == "handoff-trigger")
        .map(|f| f.spec.arn.clone())
        .expect("trigger function");
    let group = s
        .vars
        .lock()
        .ok()
        .and_then(|v| v.get("handoff-api").and_then(|v| v.get("HANDOFF_SCHEDULE_GROUP").cloned()))
        .expect("schedule group var");
    let at = (chrono::Utc::now() + chrono::Duration::seconds(2)).format("%Y-%m-%dT%H:%M:%S");
    scheduler
        .create_schedule()
        .name("soon")
        .group_name(&group)
        .schedule_expression(format!("at({at})"))
        .flexible_time_window(FlexibleTimeWindow::builder().mode(FlexibleTimeWindowMode::Off).build().expect("window"))
        .target(
            Target::builder()
                .arn(&trigger_arn)
                .role_arn("arn:aws:iam::123456789012:role/r")
                .input(r#"{"integrationCode":"NIGHTLY"}"#)
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("create schedule");
    let input = wait_for("the scheduled invocation", Duration::from_secs(15), || {
        s.recorder.calls_of("handoff-trigger").into_iter().next()
    })
    .await;
    assert_eq!(input, json!({"integrationCode": "NIGHTLY"}));
    // One-time schedule: it fires once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.recorder.calls_of("handoff-trigger").len(), 1);
    s.emulator.shutdown().await;
}

#[test]
fn the_token_command_mints_a_token_with_the_scopes_asked_for() {
    let binary = env!("CARGO_BIN_EXE_handoff-emulator");
    let out = std::process::Command::new(binary)
        .args(["token", "--scope", "handoff:read", "--scope", "handoff:operate", "--subject", "dashboard"])
        .output()
        .expect("run handoff-emulator token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    let payload = token.split('.').nth(1).expect("a JWT");
    use base64::Engine as _;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
            .expect("claims");
    assert_eq!(claims["sub"], "dashboard");
    assert_eq!(claims["scope"], "handoff:read handoff:operate");
    assert_eq!(claims["iss"], handoff_emulator::auth::DEV_ISSUER);
    let out = std::process::Command::new(binary).args(["token", "--scope", "handoff:root"]).output().expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a Handoff scope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
