//! The handoff queues adapter (SQS).

use super::*;

#[tokio::test]
async fn queue_sends_with_delay_and_attributes() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let url = client.create_queue().queue_name(unique("control")).send().await.expect("queue").queue_url.expect("url");
    let queue = SqsHandoffQueue::new(client.clone(), HashMap::from([(WorkerFamily::Control, url.clone())]));
    queue.health().await.expect("health");
    let message = HandoffMessage {
        exchange_id: ExchangeId::new("ex-q"),
        integration_code: code("Q"),
        integration_version: IntegrationVersion::NULL,
        step_id: StepId::from_sequence(2),
        sub_step: SubStep::ExchangeSignoff,
        attempt: 1,
        input: Some(Payload::raw("{}")),
        parameters: serde_json::json!({"a": 1}),
        not_before: None,
        recovery: 0,
        parent: None,
        requested_by: Some("ops@example.com".into()),
        reexecution: false,
    };
    queue.send(WorkerFamily::Control, &message, 0).await.expect("send");
    let received = client
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .wait_time_seconds(2)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default();
    assert_eq!(received.len(), 1);
    let body: HandoffMessage = serde_json::from_str(received[0].body().expect("body")).expect("json");
    assert_eq!(body, message);
    let attributes = received[0].message_attributes().expect("attributes");
    assert_eq!(attributes["exchangeId"].string_value(), Some("ex-q"));
    assert_eq!(attributes["subStep"].string_value(), Some("ExchangeSignoff"));
    // Delays above SQS's maximum are capped (moto rejects > 900 like SQS does).
    queue.send(WorkerFamily::Control, &message, 5000).await.expect("send delayed");
    assert!(queue.send(WorkerFamily::Transform, &message, 0).await.is_err(), "no queue for that family");
}

#[tokio::test]
async fn queue_sends_timers_to_the_control_queue() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let url = client.create_queue().queue_name(unique("control")).send().await.expect("queue").queue_url.expect("url");
    let queue = SqsHandoffQueue::new(client.clone(), HashMap::from([(WorkerFamily::Control, url.clone())]));
    let timer = Timer {
        exchange_id: ExchangeId::new("ex-timer"),
        recovery: 2,
        due: at(60),
        kind: TimerKind::StepTimeout { step_id: StepId::from_sequence(3) },
    };
    queue.send_timer(&timer, 0).await.expect("send");
    let received = client
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .wait_time_seconds(2)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default();
    assert_eq!(received.len(), 1);
    let body = received[0].body().expect("body");
    let json: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(json["timer"]["kind"], "stepTimeout");
    assert_eq!(
        serde_json::from_str::<QueueMessage>(body).expect("message"),
        QueueMessage::Timer { timer: timer.clone() }
    );
    let attributes = received[0].message_attributes().expect("attributes");
    assert_eq!(attributes["exchangeId"].string_value(), Some("ex-timer"));
    assert_eq!(attributes["kind"].string_value(), Some("stepTimeout"));
    queue.send_timer(&timer, 5000).await.expect("delay capped");
    let other = SqsHandoffQueue::new(client, HashMap::from([(WorkerFamily::Transform, url)]));
    assert!(other.send_timer(&timer, 0).await.is_err(), "timers go to the control queue only");
}

// ------------------------------------------------------------------ subflows

#[tokio::test]
async fn send_many_delivers_every_message_in_batches() {
    let client = aws_sdk_sqs::Client::new(&sdk().await);
    let url =
        client.create_queue().queue_name(unique("transform")).send().await.expect("queue").queue_url.expect("url");
    let queue = SqsHandoffQueue::new(client.clone(), HashMap::from([(WorkerFamily::Transform, url.clone())]));
    let message = |i: u32, input: Payload| HandoffMessage {
        exchange_id: ExchangeId::new(format!("ex-sub-{i}")),
        integration_code: code("SUB"),
        integration_version: IntegrationVersion::NULL,
        step_id: StepId::from_sequence(1),
        sub_step: SubStep::Transform,
        attempt: 1,
        input: Some(input),
        parameters: serde_json::json!({"i": i}),
        not_before: None,
        recovery: 0,
        parent: Some(ParentLink {
            exchange_id: ExchangeId::new("ex-top"),
            step_id: StepId::from_sequence(3),
            index: i,
            depth: 1,
        }),
        requested_by: None,
        reexecution: false,
    };

    async fn receive_all(client: &aws_sdk_sqs::Client, url: &str, expected: usize) -> Vec<HandoffMessage> {
        let mut received = Vec::new();
        for _ in 0..30 {
            if received.len() >= expected {
                break;
            }
            let out = client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive");
            for m in out.messages.unwrap_or_default() {
                let attributes = m.message_attributes().expect("attributes");
                assert!(attributes["exchangeId"].string_value().is_some_and(|id| id.starts_with("ex-sub-")));
                received.push(serde_json::from_str(m.body().expect("body")).expect("json"));
                client
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle().expect("handle"))
                    .send()
                    .await
                    .expect("delete");
            }
        }
        received.sort_by_key(|m: &HandoffMessage| m.parent.as_ref().map(|p| p.index));
        received
    }

    let messages: Vec<HandoffMessage> = (0..23).map(|i| message(i, Payload::raw(format!("{{\"n\":{i}}}")))).collect();
    queue.send_many(WorkerFamily::Transform, &messages).await.expect("send many");
    assert_eq!(receive_all(&client, &url, 23).await, messages);

    // Three messages of 100 KB do not fit one 256 KB batch: split by size, all arrive.
    let big: Vec<HandoffMessage> = (0..3).map(|i| message(i, Payload::raw("x".repeat(100_000)))).collect();
    queue.send_many(WorkerFamily::Transform, &big).await.expect("send big");
    assert_eq!(receive_all(&client, &url, 3).await, big);

    queue.send_many(WorkerFamily::Transform, &[]).await.expect("nothing to send");
    assert!(queue.send_many(WorkerFamily::Control, &messages).await.is_err(), "no queue for that family");
}
