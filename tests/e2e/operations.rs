//! What operators live in: waiting on partners, retries, timeouts, recovery, errors.

use handoff_e2e::{gateway, sub_steps, unique_code, ExternalSystem, Received};
use serde_json::{json, Value};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

fn status_is(code: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["statusCode"] == code
}

/// A process step that waits for a callback, then delivers what the callback brought.
fn waiting_integration(
    code: &str,
    partner: &str,
    target: &str,
    timeout_seconds: Option<u64>,
    sla: Option<u64>,
) -> Value {
    let mut process = json!({
        "name": "settle", "type": "invokeProcess", "kind": "process",
        "request": {"method": "POST", "url": format!("{partner}/jobs"), "body": "{\"run\": \"{{exchange.exchangeId}}\"}"},
        "expectNotification": true
    });
    if let Some(t) = timeout_seconds {
        process["timeoutSeconds"] = json!(t);
    }
    let mut definition = json!({
        "code": code, "version": 1,
        "steps": [process, {"name": "send", "type": "delivery", "destinations": [
            {"kind": "rest", "request": {"method": "POST", "url": format!("{target}/settled")}}]}]
    });
    if let Some(s) = sla {
        definition["slaSeconds"] = json!(s);
    }
    definition
}

/// An integration whose partner takes the call (202) and answers later, and one exchange of
/// it that has reached its wait for that callback (status `W`).
struct WaitingExchange {
    partner: ExternalSystem,
    target: ExternalSystem,
    code: String,
    id: String,
    /// The exchange as `GET /exchanges/{id}` showed it waiting.
    waiting: Value,
}

async fn waiting_exchange(prefix: &str) -> WaitingExchange {
    let gw = gateway();
    let partner = ExternalSystem::start(202, "{}").await;
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code(prefix);
    gw.create_integration(&waiting_integration(&code, &partner.url, &target.url, None, None)).await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    let waiting = gw.wait_for(&id, MINUTE, status_is("W")).await;
    WaitingExchange { partner, target, code, id, waiting }
}

/// Waits for the partner to be called and returns the callback URL it was given.
async fn callback_url(partner: &ExternalSystem) -> String {
    for _ in 0..300 {
        if let Some(call) = partner.received().last() {
            return call.header("x-handoff-callback-url").expect("X-Handoff-Callback-Url header");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the partner was never called");
}

fn idempotency_keys(received: &[Received]) -> Vec<String> {
    received.iter().map(|r| r.header("idempotency-key").unwrap_or_default()).collect()
}

#[tokio::test]
async fn a_success_callback_resumes_the_exchange_and_a_used_token_is_404() {
    let gw = gateway();
    let WaitingExchange { partner, target, id, waiting, .. } = waiting_exchange("CALLBACK_OK").await;
    assert_eq!(waiting["status"], "WaitingOnExternalSystem");
    let url = callback_url(&partner).await;
    assert!(url.starts_with("http://127.0.0.1:"), "absolute callback URL: {url}");
    assert_eq!(partner.received()[0].json(), json!({"run": id}));

    let (status, body) = gateway().post_callback(&url, &json!({"status": "success", "data": {"settled": 3}})).await;
    assert_eq!(status, 202, "{body}");
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(
        sub_steps(&done)[1..4].to_vec(),
        [("InvokeProcess", "Done"), ("ReceiveNotification", "Done"), ("CollectData", "Done")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(target.received()[0].json(), json!({"settled": 3}), "the callback's data flows on");

    let (status, _) = gateway().post_callback(&url, &json!({"status": "success", "data": {"settled": 4}})).await;
    assert_eq!(status, 404, "a used token is refused");
    assert_eq!(target.received().len(), 1, "a duplicate callback changes nothing");
    let (status, _) = gw.post("/notifications/0123456789abcdef", &json!({"status": "success"})).await;
    assert_eq!(status, 404, "an unknown token is refused");
    let (status, body) = gateway().post_callback(&url, &json!({"status": "failure"})).await;
    assert_eq!((status, body["field"].clone()), (400, json!("reason")), "a failure needs a reason");
}

#[tokio::test]
async fn a_failure_callback_fails_the_step_with_its_reason() {
    let gw = gateway();
    let WaitingExchange { partner, target, id, .. } = waiting_exchange("CALLBACK_FAIL").await;
    let url = callback_url(&partner).await;

    let (status, _) =
        gateway().post_callback(&url, &json!({"status": "failure", "reason": "policy 42 is closed"})).await;
    assert_eq!(status, 202);
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert_eq!(failed["error"]["classification"], "business");
    assert!(failed["error"]["message"].as_str().unwrap().contains("policy 42 is closed"), "{failed:#}");
    assert_eq!(failed["steps"][2]["status"], "Failed");
    assert!(target.received().is_empty());
}

/// POSTs `body` to `path` through the API function as deployed, except that the queue named
/// by `queue_var` does not exist (every send to it fails); outbox entries fall due in 2 s.
/// The event carries what API Gateway's authorizer passes on for an operator's token.
async fn post_to_api_without_queue(queue_var: &str, path: &str, body: Value) -> Value {
    let nowhere = format!("{}/000000000000/no-such-queue", gateway().aws_endpoint);
    let api =
        handoff_e2e::function_with("handoff-api", &[(queue_var, &nowhere), ("HANDOFF_OUTBOX_SECONDS", "2")]).await;
    let event = json!({
        "rawPath": path, "headers": {"content-type": "application/json"}, "body": body.to_string(),
        "requestContext": {"http": {"method": "POST"},
                           "authorizer": {"jwt": {"claims": {"sub": "operator"}, "scopes": ["handoff:operate"]}}}
    });
    api.invoke(event).await.expect("api invocation")
}

/// A callback accepted with 202 cannot be lost: its token is used together with storing an
/// outbox entry, so when the handoff cannot be sent (here: the API's queue does not exist)
/// the regular job hands the callback on.
#[tokio::test]
async fn an_accepted_callback_whose_handoff_fails_is_handed_on_from_the_outbox() {
    let gw = gateway();
    let WaitingExchange { partner, target, id, .. } = waiting_exchange("OUTBOX").await;
    let url = callback_url(&partner).await;
    let path = url.split_once("/notifications/").map(|(_, t)| format!("/notifications/{t}")).expect("callback path");

    let answer = post_to_api_without_queue(
        "HANDOFF_QUEUE_CONTROL_URL",
        &path,
        json!({"status": "success", "data": {"settled": 5}}),
    )
    .await;
    assert_eq!(answer["statusCode"], 202, "accepted although not handed on yet: {answer}");
    let (status, _) = gateway().post_callback(&url, &json!({"status": "success", "data": {"settled": 6}})).await;
    assert_eq!(status, 404, "the token was used");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gw.exchange(&id).await["statusCode"], "W", "nothing handed the callback on yet");

    let swept =
        handoff_e2e::function("handoff-jobs").await.invoke(json!({"job": "regular"})).await.expect("regular job");
    // Tests run the job concurrently: another run may have sent the entry; the outcome counts.
    assert!(swept["timersSent"].is_u64(), "{swept}");
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(
        target.received_at("/settled").iter().map(Received::json).collect::<Vec<_>>(),
        vec![json!({"settled": 5})]
    );
}

#[tokio::test]
async fn a_waiting_step_times_out_and_a_late_callback_is_refused() {
    let gw = gateway();
    let partner = ExternalSystem::start(202, "{}").await;
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("TIMEOUT");
    gw.create_integration(&waiting_integration(&code, &partner.url, &target.url, Some(2), None)).await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    let url = callback_url(&partner).await;

    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert_eq!(failed["steps"][2]["subStep"], "ReceiveNotification");
    assert_eq!(failed["steps"][2]["status"], "Failed");
    assert!(failed["error"]["message"].as_str().unwrap().starts_with("Timeout"), "{failed:#}");
    let (status, _) = gateway().post_callback(&url, &json!({"status": "success"})).await;
    assert_eq!(status, 404, "the token expired with the wait");
}

/// The timeout of a wait travels as a delayed message sent after the commit: a redelivered
/// call arms it again, so a crash in between cannot leave the exchange waiting for ever.
#[tokio::test]
async fn a_redelivered_call_arms_its_wait_timeout_again() {
    let gw = gateway();
    let partner = ExternalSystem::start(202, "{}").await;
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("REARM");
    gw.create_integration(&waiting_integration(&code, &partner.url, &target.url, Some(10), None)).await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    let waiting = gw.wait_for(&id, MINUTE, status_is("W")).await;
    let call = &waiting["steps"][1];
    assert_eq!(
        (call["subStep"].clone(), call["status"].clone()),
        (json!("InvokeProcess"), json!("Done")),
        "{waiting:#}"
    );

    let attempt_one = json!({
        "exchangeId": id, "integrationCode": code, "integrationVersion": 1,
        "stepId": call["stepId"], "subStep": "InvokeProcess", "attempt": 1, "parameters": {}
    });
    let sent = redeliver("handoff-worker-invoke", "HANDOFF_QUEUE_CONTROL_URL", &attempt_one).await;
    let [timer] = &sent[..] else { panic!("the timeout is armed again, once: {sent:?}") };
    let timer = &timer["timer"];
    assert_eq!(
        (timer["kind"].clone(), timer["stepId"].clone(), timer["exchangeId"].clone()),
        (json!("stepTimeout"), json!("0002"), json!(id)),
        "{timer}"
    );
    let completed = rfc3339(&call["completedAt"]).expect("completedAt");
    assert_eq!(rfc3339(&timer["due"]), Some(completed + chrono::Duration::seconds(10)), "{timer}");
    assert_eq!(partner.received().len(), 1, "the partner is not called twice");

    let failed = gw.wait_final(&id).await;
    assert!(failed["error"]["message"].as_str().unwrap_or_default().starts_with("Timeout"), "{failed:#}");
}

#[tokio::test]
async fn an_exchange_past_its_sla_times_out_and_stops_advancing() {
    let gw = gateway();
    let partner = ExternalSystem::start(202, "{}").await;
    let target = ExternalSystem::start(200, "{}").await;
    let code = unique_code("SLA");
    gw.create_integration(&waiting_integration(&code, &partner.url, &target.url, None, Some(2))).await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    let url = callback_url(&partner).await;

    let timed_out = gw.wait_final(&id).await;
    assert_eq!(timed_out["status"], "TimedOut", "{timed_out:#}");
    assert_eq!(timed_out["statusCode"], "T");
    let (status, body) = gateway().post_callback(&url, &json!({"status": "success", "data": 1})).await;
    assert_eq!(status, 409, "the exchange is final: {body}");
    assert_eq!(gw.exchange(&id).await["status"], "TimedOut");
    assert!(target.received().is_empty(), "nothing in flight advanced the exchange");
}

fn delivery(code: &str, source: &str, target: &str, retry: Value) -> Value {
    json!({
        "code": code, "version": 1,
        "steps": [
            {"name": "fetch", "type": "dataCollection", "kind": "query", "request": {"url": format!("{source}/items")}},
            {"name": "send", "type": "delivery", "retry": retry, "destinations": [
                {"kind": "rest", "request": {"method": "POST", "url": format!("{target}/in")}}]}
        ]
    })
}

#[tokio::test]
async fn transient_errors_are_retried_with_one_idempotency_key() {
    let gw = gateway();
    let source = ExternalSystem::start(200, "[1]").await;
    let target = ExternalSystem::start(200, "{}").await;
    target.script([(503, "{}"), (503, "{}")]);
    let code = unique_code("RETRY_OK");
    gw.create_integration(&delivery(
        &code,
        &source.url,
        &target.url,
        json!({"maxAttempts": 5, "intervalSeconds": 1, "backoffRate": 1.0}),
    ))
    .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;

    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    let send = &done["steps"][2];
    assert_eq!((send["subStep"].clone(), send["attempts"].clone()), (json!("DeliverRest"), json!(3)));
    let keys = idempotency_keys(&target.received());
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| !k.is_empty() && *k == keys[0]), "one key across retries: {keys:?}");
}

/// Delivers `message` again to the worker `binary`, as SQS does after a crash, with the
/// worker's queue variable `queue_var` pointed at a queue of the test's own: returns what the
/// worker sent there (waiting out delays of up to 20 s), which the stack never acts on.
async fn redeliver(binary: &str, queue_var: &str, message: &Value) -> Vec<Value> {
    let sqs = handoff_e2e::sqs_client().await;
    let queue = sqs.create_queue().queue_name(unique_code("redelivered")).send().await.expect("create queue");
    let queue_url = queue.queue_url().expect("queue url").to_string();
    let worker = handoff_e2e::function_with(binary, &[(queue_var, &queue_url)]).await;
    let event = json!({"Records": [{"messageId": "redelivered", "body": message.to_string()}]});
    let answer = worker.invoke(event).await.expect("worker invocation");
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    let received = sqs
        .receive_message()
        .queue_url(&queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(20)
        .send()
        .await
        .expect("receive");
    received
        .messages()
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap_or_default()).expect("json message"))
        .collect()
}

fn rfc3339(v: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    v.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
}

/// A worker can stop (a crash, a timed-out batch) after recording a failed attempt and
/// before sending its retry; SQS then delivers that attempt again. The redelivery must send
/// the retry again, or the exchange would wait forever.
#[tokio::test]
async fn a_redelivered_failed_attempt_sends_its_retry_again() {
    let gw = gateway();
    let source = ExternalSystem::start(200, "[1]").await;
    let target = ExternalSystem::start(503, "{}").await;
    let code = unique_code("RETRY_LOST");
    gw.create_integration(&delivery(
        &code,
        &source.url,
        &target.url,
        json!({"maxAttempts": 2, "intervalSeconds": 10, "backoffRate": 1.0}),
    ))
    .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    let waiting =
        gw.wait_for(&id, MINUTE, |e| e["steps"][2]["attempts"] == 1 && e["steps"][2]["nextRetryAt"].is_string()).await;
    let send = &waiting["steps"][2];

    let attempt_one = json!({
        "exchangeId": id, "integrationCode": code, "integrationVersion": 1,
        "stepId": send["stepId"], "subStep": "DeliverRest", "attempt": 1,
        "input": waiting["steps"][1]["payload"], "parameters": {}
    });
    let sent = redeliver("handoff-worker-deliver-rest", "HANDOFF_QUEUE_DELIVER_REST_URL", &attempt_one).await;
    let [retry] = &sent[..] else { panic!("the retry is sent again, once: {sent:?}") };
    assert_eq!(
        (retry["exchangeId"].clone(), retry["stepId"].clone(), retry["attempt"].clone()),
        (json!(id), send["stepId"].clone(), json!(2))
    );
    assert_eq!(rfc3339(&retry["notBefore"]), rfc3339(&send["nextRetryAt"]), "the retry keeps its time: {retry}");

    // The stack's own retry runs once; the copy on the test's queue never does.
    let failed = gw.wait_final(&id).await;
    assert_eq!(
        (failed["status"].clone(), failed["steps"][2]["attempts"].clone()),
        (json!("Failed"), json!(2)),
        "{failed:#}"
    );
    assert_eq!(target.received().len(), 2);
}

#[tokio::test]
async fn a_client_error_fails_at_once_as_a_business_error() {
    let gw = gateway();
    let source = ExternalSystem::start(200, "[1]").await;
    let target = ExternalSystem::start(400, "{\"error\": \"bad provider\"}").await;
    let code = unique_code("BUSINESS");
    gw.create_integration(&delivery(&code, &source.url, &target.url, json!({"maxAttempts": 5, "intervalSeconds": 1})))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;

    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed");
    assert_eq!(failed["statusCode"], "F");
    assert_eq!(failed["error"]["classification"], "business");
    assert_eq!(failed["error"]["subStep"], "DeliverRest");
    assert_eq!(failed["steps"][2]["attempts"], 1);
    assert_eq!(target.received().len(), 1);

    let (_, errors) = gw.get(&format!("/errors?integrationCode={code}")).await;
    let items = errors["items"].as_array().expect("error items");
    assert_eq!(items.len(), 1, "{errors:#}");
    assert_eq!(items[0]["exchangeId"], json!(id));
    assert_eq!(items[0]["classification"], "business");
    let (_, system_only) = gw.get(&format!("/errors?integrationCode={code}&classification=system")).await;
    assert_eq!(system_only["items"].as_array().map(Vec::len), Some(0));
    let (_, future) = gw.get(&format!("/errors?integrationCode={code}&since=2999-01-01T00:00:00Z")).await;
    assert_eq!(future["items"].as_array().map(Vec::len), Some(0));
    let (status, body) = gw.get("/errors?classification=fatal").await;
    assert_eq!((status.as_u16(), body["field"].clone()), (400, json!("classification")));
}

/// A recovery is committed together with the outbox entry of its resume handoff: when that
/// handoff cannot be sent, the regular job sends it, and the exchange completes.
#[tokio::test]
async fn a_recovery_whose_handoff_fails_is_handed_on_from_the_outbox() {
    let gw = gateway();
    let source = ExternalSystem::start(200, "[3]").await;
    let target = ExternalSystem::start(200, "{}").await;
    target.script([(503, "{}")]);
    let code = unique_code("RECOVER_OUTBOX");
    gw.create_integration(&delivery(&code, &source.url, &target.url, json!({"maxAttempts": 1}))).await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    assert_eq!(gw.wait_final(&id).await["status"], "Failed");

    let answer =
        post_to_api_without_queue("HANDOFF_QUEUE_DELIVER_REST_URL", &format!("/exchanges/{id}/recover"), json!({}))
            .await;
    assert_eq!(answer["statusCode"], 202, "the recovery is committed: {answer}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = gw.exchange(&id).await;
    assert_eq!(
        (waiting["status"].clone(), waiting["steps"][2]["attempts"].clone()),
        (json!("Started"), json!(0)),
        "not handed on yet: {waiting:#}"
    );

    let swept =
        handoff_e2e::function("handoff-jobs").await.invoke(json!({"job": "regular"})).await.expect("regular job");
    // Tests run the job concurrently: another run may have sent the entry; the outcome counts.
    assert!(swept["timersSent"].is_u64(), "{swept}");
    let done = gw.wait_final(&id).await;
    assert_eq!((done["status"].clone(), done["recoveries"].clone()), (json!("Completed"), json!(1)), "{done:#}");
    assert_eq!(target.received().len(), 2, "the failed attempt and the recovered one");
}

#[tokio::test]
async fn exhausted_retries_fail_then_recovery_completes_without_rerunning_done_steps() {
    let gw = gateway();
    let source = ExternalSystem::start(200, "[1, 2]").await;
    let target = ExternalSystem::start(200, "{}").await;
    target.script([(503, "{}"), (503, "{}")]);
    let code = unique_code("RECOVER");
    gw.create_integration(&delivery(&code, &source.url, &target.url, json!({"maxAttempts": 2, "intervalSeconds": 1})))
        .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;

    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert_eq!(failed["error"]["classification"], "system");
    assert!(failed["error"]["message"].as_str().unwrap().contains("gave up after 2 of 2 attempts"), "{failed:#}");
    let (_, errors) = gw.get(&format!("/errors?integrationCode={code}&classification=system")).await;
    assert_eq!(errors["items"].as_array().map(Vec::len), Some(1), "{errors:#}");

    let (status, body) = gw.post(&format!("/exchanges/{id}/recover"), &json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["resumedAt"], "0002");
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(done["recoveries"], 1);
    assert_eq!(source.received().len(), 1, "the Done query did not run again");
    assert_eq!(done["steps"][1]["attempts"], 1);
    assert_eq!(done["steps"][2]["attempts"], 1, "fresh attempts after recovery");
    let delivered = target.received();
    assert_eq!(delivered.len(), 3);
    assert_eq!(delivered[2].json(), json!([1, 2]), "the stored payload of the Done step is reused");
    // Who asked is on record: the token's subject, on the step it resumed at.
    let (_, logs) = gw.get(&format!("/exchanges/{id}/logs")).await;
    let asked: Vec<&Value> = logs["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["line"].as_str().is_some_and(|t| t.starts_with("Recovery 1 requested by developer")))
        .collect();
    assert_eq!(asked.len(), 1, "{logs:#}");
    assert_eq!(asked[0]["stepId"], "0002");

    let (status, body) = gw.post(&format!("/exchanges/{id}/recover"), &json!({})).await;
    assert_eq!(status, 409, "a Completed exchange cannot be recovered: {body}");
    assert_eq!(body["error"], "InvalidState");
}

#[tokio::test]
async fn recovery_can_move_onto_a_compatible_version() {
    let gw = gateway();
    let source = ExternalSystem::start(200, "[7]").await;
    let broken = ExternalSystem::start(404, "{}").await;
    let fixed = ExternalSystem::start(200, "{}").await;
    let code = unique_code("REDEPLOY");
    gw.create_integration(&delivery(&code, &source.url, &broken.url, json!({"maxAttempts": 1}))).await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    assert_eq!(gw.wait_final(&id).await["status"], "Failed");

    let mut v2 = delivery(&code, &source.url, &fixed.url, json!({"maxAttempts": 1}));
    v2["version"] = json!(2);
    gw.create_integration(&v2).await;
    let mut incompatible = delivery(&code, &source.url, &fixed.url, json!({"maxAttempts": 1}));
    incompatible["version"] = json!(3);
    incompatible["steps"].as_array_mut().unwrap().insert(1, json!({"name": "extra", "type": "transformation"}));
    gw.create_integration(&incompatible).await;

    let (status, body) = gw.post(&format!("/exchanges/{id}/recover"), &json!({"integrationVersion": 3})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("cannot take over"), "{body}");
    let (status, body) = gw.post(&format!("/exchanges/{id}/recover"), &json!({"integrationVersion": 2})).await;
    assert_eq!(status, 202, "{body}");
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(done["integrationVersion"], 2);
    assert_eq!(fixed.received()[0].json(), json!([7]));
    assert_eq!(source.received().len(), 1);
}

async fn patch_retry(code: &str, source: &str, target: &str, retry: Value) {
    let steps = delivery(code, source, target, retry)["steps"].clone();
    let (status, body) = gateway().patch(&format!("/integrations/{code}/versions/1"), &json!({"steps": steps})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn raising_max_attempts_mid_retry_lets_the_step_go_on() {
    let gw = gateway();
    let source = ExternalSystem::start(200, "[1]").await;
    let target = ExternalSystem::start(503, "{}").await;
    let code = unique_code("RAISE");
    gw.create_integration(&delivery(
        &code,
        &source.url,
        &target.url,
        json!({"maxAttempts": 2, "intervalSeconds": 8, "backoffRate": 1.0}),
    ))
    .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    gw.wait_for(&id, MINUTE, |e| e["steps"][2]["attempts"] == 1 && e["steps"][2]["nextRetryAt"].is_string()).await;

    patch_retry(&code, &source.url, &target.url, json!({"maxAttempts": 4, "intervalSeconds": 1, "backoffRate": 1.0}))
        .await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert_eq!(failed["steps"][2]["attempts"], 4, "{failed:#}");
    assert_eq!(failed["steps"][2]["maxAttempts"], 4);
    assert_eq!(target.received().len(), 4);

    // Raising the maximum again does not revive a Failed step (it shows 4 of 10).
    patch_retry(&code, &source.url, &target.url, json!({"maxAttempts": 10, "intervalSeconds": 1})).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // nothing is expected to happen; give it the chance
    let still = gw.exchange(&id).await;
    assert_eq!(still["status"], "Failed");
    assert_eq!(
        (still["steps"][2]["attempts"].clone(), still["steps"][2]["maxAttempts"].clone()),
        (json!(4), json!(10))
    );
    assert_eq!(target.received().len(), 4);
}

#[tokio::test]
async fn lowering_max_attempts_mid_retry_fails_the_step_at_its_next_decision() {
    let gw = gateway();
    let source = ExternalSystem::start(200, "[1]").await;
    let target = ExternalSystem::start(503, "{}").await;
    let code = unique_code("LOWER");
    gw.create_integration(&delivery(
        &code,
        &source.url,
        &target.url,
        json!({"maxAttempts": 6, "intervalSeconds": 8, "backoffRate": 1.0}),
    ))
    .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    gw.wait_for(&id, MINUTE, |e| e["steps"][2]["attempts"] == 2 && e["steps"][2]["nextRetryAt"].is_string()).await;

    patch_retry(&code, &source.url, &target.url, json!({"maxAttempts": 2, "intervalSeconds": 3, "backoffRate": 1.0}))
        .await;
    let failed = gw.wait_final(&id).await;
    assert_eq!(failed["status"], "Failed", "{failed:#}");
    assert!(failed["error"]["message"].as_str().unwrap().contains("maxAttempts 2"), "{failed:#}");
    assert_eq!(target.received().len(), 2, "no attempt beyond the lowered maximum");
}

#[tokio::test]
async fn a_manual_retry_runs_now_and_counts_as_an_attempt() {
    let gw = gateway();
    let source = ExternalSystem::start(200, "[1]").await;
    let target = ExternalSystem::start(200, "{}").await;
    target.script([(503, "{}"), (503, "{}")]);
    let code = unique_code("MANUAL");
    gw.create_integration(&delivery(
        &code,
        &source.url,
        &target.url,
        json!({"maxAttempts": 5, "intervalSeconds": 600, "maxIntervalSeconds": 3600}),
    ))
    .await;
    let id = gw.invoke(&json!({"integrationCode": code})).await;
    gw.wait_for(&id, MINUTE, |e| e["steps"][2]["attempts"] == 1 && e["steps"][2]["nextRetryAt"].is_string()).await;

    let (status, body) = gw.post(&format!("/exchanges/{id}/steps/0002/retry"), &json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["attempt"], 2);
    let second =
        gw.wait_for(&id, MINUTE, |e| e["steps"][2]["attempts"] == 2 && e["steps"][2]["nextRetryAt"].is_string()).await;
    assert!(second["steps"][2]["lastError"]["message"].as_str().unwrap().contains("503"), "{second:#}");
    let (status, _) = gw.post(&format!("/exchanges/{id}/steps/0002/retry"), &json!({})).await;
    assert_eq!(status, 202);
    let done = gw.wait_final(&id).await;
    assert_eq!(done["status"], "Completed", "{done:#}");
    assert_eq!(done["steps"][2]["attempts"], 3, "both manual retries counted");
    assert_eq!(target.received().len(), 3);
    // Who asked is on record, with each attempt it ran.
    let (_, logs) = gw.get(&format!("/exchanges/{id}/logs")).await;
    let asked: Vec<&str> = logs["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["line"].as_str().filter(|t| t.contains("a manual retry requested by developer")))
        .collect();
    assert_eq!(asked.len(), 2, "{logs:#}");
    assert!(asked[0].starts_with("Attempt 2 ran now") && asked[1].starts_with("Attempt 3 ran now"), "{asked:?}");

    let (status, _) = gw.post(&format!("/exchanges/{id}/steps/0002/retry"), &json!({})).await;
    assert_eq!(status, 409, "nothing to retry in a Completed exchange");
    let (status, _) = gw.post(&format!("/exchanges/{id}/steps/0099/retry"), &json!({})).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_poison_message_reaching_the_dlq_fails_its_exchange_as_a_system_error() {
    use aws_sdk_sqs::types::QueueAttributeName;
    let gw = gateway();
    let WaitingExchange { code, id, .. } = waiting_exchange("POISON").await;

    // A handoff that can never be processed: it names a sub-step the plan does not have there.
    let sqs = handoff_e2e::sqs_client().await;
    let queue = gw.var("handoff-worker-collect", "HANDOFF_QUEUE_COLLECT_URL");
    let original = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .send()
        .await
        .expect("queue attributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout).cloned())
        .expect("visibility timeout");
    let set_visibility = |seconds: String| {
        sqs.set_queue_attributes().queue_url(&queue).attributes(QueueAttributeName::VisibilityTimeout, seconds).send()
    };
    set_visibility("1".into()).await.expect("shorten visibility");
    // moto fixes a queue's visibility timeout when a long poll starts: let running polls end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let poison = json!({"exchangeId": id, "integrationCode": code, "integrationVersion": 1,
                        "stepId": "0002", "subStep": "CollectData", "attempt": 1, "parameters": {}});
    sqs.send_message().queue_url(&queue).message_body(poison.to_string()).send().await.expect("send poison");

    let failed = gw.wait_for(&id, MINUTE, status_is("F")).await;
    set_visibility(original).await.expect("restore visibility");
    assert_eq!(failed["error"]["classification"], "system", "{failed:#}");
    assert!(failed["error"]["message"].as_str().unwrap().contains("dead-lettered"), "{failed:#}");
    let (_, errors) = gw.get(&format!("/errors?integrationCode={code}&classification=system")).await;
    assert_eq!(errors["items"].as_array().map(Vec::len), Some(1), "{errors:#}");
}

/// Found by the 10,000-exchange chaos run: a timer whose receives ran out reached the control
/// DLQ and stayed there, its exchange never timed out. The DLQ function now sends it back
/// to the control queue (a minute later), where it fires.
#[tokio::test]
async fn a_timer_reaching_the_dlq_goes_back_to_the_control_queue_and_fires() {
    let gw = gateway();
    let WaitingExchange { id, .. } = waiting_exchange("DEAD_TIMER").await;

    // As SQS's redrive policy would move it: the exchange's SLA timer, due, in the control DLQ.
    let sqs = handoff_e2e::sqs_client().await;
    let dlq = sqs.get_queue_url().queue_name("handoff-ControlDlq").send().await.expect("control DLQ");
    let due = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let timer = json!({"timer": {"exchangeId": id, "recovery": 0, "due": due, "kind": "sla"}});
    sqs.send_message()
        .queue_url(dlq.queue_url().expect("url"))
        .message_body(timer.to_string())
        .send()
        .await
        .expect("dead letter");

    let timed_out = gw.wait_for(&id, 3 * MINUTE, status_is("T")).await;
    assert_eq!(timed_out["status"], "TimedOut", "{timed_out:#}");
}
