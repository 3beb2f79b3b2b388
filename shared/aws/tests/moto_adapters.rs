//! The adapters against a running moto server. CI runs them end to end through the
//! emulator; run these directly with
//! `HANDOFF_TEST_AWS_ENDPOINT=http://127.0.0.1:PORT cargo test -p handoff-aws -- --ignored`.

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use handoff_app::ports::{
    ClaimOutcome, CommitOutcome, DataFileStore, ExchangeChange, ExchangeFilter, ExchangeRepository, HandoffMessage,
    HandoffQueue, IntegrationRepository, IntegrationWriteError, ScheduleManager, StepChange, StepCommit,
    StoredIntegration,
};
use handoff_aws::scheduler::schedule_name;
use handoff_aws::{
    DynamoExchangeRepository, DynamoIntegrationRepository, EventBridgeScheduleManager, S3DataFileStore, SqsHandoffQueue,
};
use handoff_core::definition::ScheduleSpec;
use handoff_core::exchange::{
    Exchange, ExchangeError, ExchangeStatus, ExchangeStep, LogLine, LogType, Payload, StepError, StepStatus,
};
use handoff_core::ids::{DataFileSetId, ExchangeId, IntegrationCode, IntegrationVersion, StepId};
use handoff_core::plan::{SubStep, WorkerFamily};
use handoff_core::retry::ErrorClassification;
use std::collections::HashMap;

async fn sdk() -> aws_config::SdkConfig {
    let endpoint = std::env::var("HANDOFF_TEST_AWS_ENDPOINT").expect("HANDOFF_TEST_AWS_ENDPOINT");
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region("us-east-1")
        .test_credentials()
        .load()
        .await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder().attribute_name(name).key_type(kind).build().expect("key")
}

fn attr(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build().expect("attr")
}

/// The exchanges table as `infra/template.yaml` declares it.
async fn exchanges_table(client: &aws_sdk_dynamodb::Client) -> String {
    let table = unique("exchanges");
    let mut create = client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range));
    for a in ["pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk", "gsi3pk", "gsi3sk"] {
        create = create.attribute_definitions(attr(a));
    }
    for (i, name) in [(1, "byIntegration"), (2, "byStatus"), (3, "byCreation")] {
        create = create.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key(&format!("gsi{i}pk"), KeyType::Hash))
                .key_schema(key(&format!("gsi{i}sk"), KeyType::Range))
                .projection(Projection::builder().projection_type(ProjectionType::All).build())
                .build()
                .expect("gsi"),
        );
    }
    create.send().await.expect("create exchanges table");
    table
}

async fn integrations_table(client: &aws_sdk_dynamodb::Client) -> String {
    let table = unique("integrations");
    client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .send()
        .await
        .expect("create integrations table");
    table
}

async fn exchange_repo() -> DynamoExchangeRepository {
    let client = aws_sdk_dynamodb::Client::new(&sdk().await);
    let table = exchanges_table(&client).await;
    DynamoExchangeRepository::new(client, table)
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + seconds, 0).single().expect("time")
}

fn code(c: &str) -> IntegrationCode {
    IntegrationCode::parse(c).expect("code")
}

fn exchange(id: &str, integration: &str, created: DateTime<Utc>) -> Exchange {
    Exchange {
        exchange_id: ExchangeId::new(id),
        integration_code: code(integration),
        integration_version: IntegrationVersion::number(1).expect("version"),
        status: ExchangeStatus::New,
        parameters: serde_json::json!({"region": "EU"}),
        created_at: created,
        updated_at: created,
        completed_at: None,
        error: None,
    }
}

fn steps(n: u32) -> Vec<ExchangeStep> {
    (0..n)
        .map(|i| ExchangeStep {
            step_id: StepId::from_sequence(i),
            sequence: i,
            integration_step: (i > 0).then(|| format!("step{i}")),
            sub_step: if i == 0 { SubStep::ExchangeTriggered } else { SubStep::InvokeQuery },
            destination: None,
            status: StepStatus::Initial,
            payload: None,
            attempts: 0,
            max_attempts: 3,
            last_error: None,
            next_retry_at: None,
            completed_at: None,
        })
        .collect()
}

fn change(step: u32, attempt: u32, claimed: bool, status: StepStatus, now: DateTime<Utc>) -> StepChange {
    StepChange {
        step_id: StepId::from_sequence(step),
        attempt,
        claimed,
        status,
        payload: Some(Payload::raw(format!("out of {step}"))),
        max_attempts: 3,
        last_error: None,
        next_retry_at: None,
        completed_at: (status != StepStatus::Initial).then_some(now),
        logs: vec![LogLine {
            kind: LogType::System,
            line: format!("step {step} attempt {attempt}"),
            timestamp: now,
            step_id: StepId::from_sequence(step),
        }],
    }
}

fn commit(id: &ExchangeId, step: StepChange, exchange: ExchangeChange, now: DateTime<Utc>) -> StepCommit {
    StepCommit { exchange_id: id.clone(), step, skip: vec![], exchange, now }
}

#[tokio::test]
#[ignore = "needs a running moto; run with HANDOFF_TEST_AWS_ENDPOINT=... cargo test -p handoff-aws -- --ignored"]
async fn exchange_lifecycle_with_claims_commits_and_conflicts() {
    let repo = exchange_repo().await;
    repo.health().await.expect("health");
    let ex = exchange("ex-life", "LIFE", at(0));
    let id = ex.exchange_id.clone();
    // More than one BatchWriteItem's worth of steps; writing twice changes nothing.
    repo.create(&ex, &steps(40)).await.expect("create");
    repo.create(&ex, &steps(40)).await.expect("create again");
    let detail = repo.get(&id).await.expect("get").expect("exists");
    assert_eq!(detail.exchange, ex);
    assert_eq!(detail.steps, steps(40));
    assert!(detail.logs.is_empty());
    assert!(repo.get(&ExchangeId::new("missing")).await.expect("get").is_none());

    // Start: step 0 done, exchange New -> Started. Applied once, Conflict on replay.
    let start = commit(
        &id,
        change(0, 1, false, StepStatus::Done, at(1)),
        ExchangeChange::SetStatus {
            from: vec![ExchangeStatus::New],
            to: ExchangeStatus::Started,
            error: None,
            completed_at: None,
        },
        at(1),
    );
    assert_eq!(repo.commit(&start).await.expect("commit"), CommitOutcome::Applied);
    assert_eq!(repo.commit(&start).await.expect("replay"), CommitOutcome::Conflict);

    // A retry of step 1: status stays Initial, attempt 1 recorded; replaying attempt 1 conflicts.
    let mut retry = change(1, 1, false, StepStatus::Initial, at(2));
    retry.last_error =
        Some(StepError { classification: ErrorClassification::System, message: "503".into(), at: at(2) });
    retry.next_retry_at = Some(at(6));
    let retry = commit(&id, retry, ExchangeChange::RequireNotFinal, at(2));
    assert_eq!(repo.commit(&retry).await.expect("retry"), CommitOutcome::Applied);
    assert_eq!(repo.commit(&retry).await.expect("retry replay"), CommitOutcome::Conflict);
    let step1 = repo.get_step(&id, StepId::from_sequence(1)).await.expect("get step").expect("step");
    assert_eq!((step1.status, step1.attempts), (StepStatus::Initial, 1));
    assert_eq!(step1.next_retry_at, Some(at(6)));
    assert!(step1.last_error.is_some());

    // Claims of attempt 2: exclusive while the lease lives, free again after it ends.
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(1), 1, at(7), at(67)).await.expect("claim"),
        ClaimOutcome::NotClaimable
    );
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(1), 2, at(7), at(67)).await.expect("claim"),
        ClaimOutcome::Claimed
    );
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(1), 2, at(8), at(68)).await.expect("claim"),
        ClaimOutcome::NotClaimable
    );
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(1), 2, at(70), at(130)).await.expect("claim"),
        ClaimOutcome::Claimed
    );
    // A commit that requires a claim of another attempt conflicts; the claimed one applies.
    let wrong = commit(&id, change(1, 3, true, StepStatus::Done, at(71)), ExchangeChange::RequireNotFinal, at(71));
    assert_eq!(repo.commit(&wrong).await.expect("commit"), CommitOutcome::Conflict);
    let mut done = change(1, 2, true, StepStatus::Done, at(72));
    // A false condition skips steps 2 and 3 in the same transaction.
    done.status = StepStatus::Done;
    let mut done = commit(&id, done, ExchangeChange::RequireNotFinal, at(72));
    done.skip = vec![StepId::from_sequence(2), StepId::from_sequence(3)];
    assert_eq!(repo.commit(&done).await.expect("commit"), CommitOutcome::Applied);
    assert_eq!(repo.commit(&done).await.expect("replay"), CommitOutcome::Conflict);
    let step1 = repo.get_step(&id, StepId::from_sequence(1)).await.expect("get").expect("step");
    assert_eq!(
        (step1.status, step1.attempts, step1.last_error.clone(), step1.next_retry_at),
        (StepStatus::Done, 2, None, None)
    );
    assert_eq!(step1.payload, Some(Payload::raw("out of 1")));
    // A finished step cannot be claimed.
    assert_eq!(
        repo.claim(&id, StepId::from_sequence(1), 3, at(200), at(260)).await.expect("claim"),
        ClaimOutcome::NotClaimable
    );

    // The exchange fails: later commits conflict, listing by status finds it.
    let error = ExchangeError {
        classification: ErrorClassification::System,
        message: "gave up".into(),
        step_id: Some(StepId::from_sequence(4)),
        sub_step: Some(SubStep::InvokeQuery),
        at: at(80),
    };
    let fail = commit(
        &id,
        change(4, 1, false, StepStatus::Failed, at(80)),
        ExchangeChange::SetStatus {
            from: vec![ExchangeStatus::Started],
            to: ExchangeStatus::Failed,
            error: Some(error.clone()),
            completed_at: Some(at(80)),
        },
        at(80),
    );
    assert_eq!(repo.commit(&fail).await.expect("fail"), CommitOutcome::Applied);
    let late = commit(&id, change(5, 1, false, StepStatus::Done, at(81)), ExchangeChange::RequireNotFinal, at(81));
    assert_eq!(repo.commit(&late).await.expect("late"), CommitOutcome::Conflict);
    assert_eq!(
        repo.get_step(&id, StepId::from_sequence(5)).await.expect("get").expect("step").status,
        StepStatus::Initial
    );

    let detail = repo.get(&id).await.expect("get").expect("exists");
    assert_eq!(detail.exchange.status, ExchangeStatus::Failed);
    assert_eq!(detail.exchange.error, Some(error));
    assert_eq!(detail.exchange.completed_at, Some(at(80)));
    assert_eq!(detail.exchange.updated_at, at(80));
    let statuses: Vec<StepStatus> = detail.steps.iter().take(6).map(|s| s.status).collect();
    use StepStatus::*;
    assert_eq!(statuses, vec![Done, Done, Skipped, Skipped, Failed, Initial]);
    let lines: Vec<&str> = detail.logs.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(lines, vec!["step 0 attempt 1", "step 1 attempt 1", "step 1 attempt 2", "step 4 attempt 1"]);

    let failed = ExchangeFilter { integration_code: None, status: Some(ExchangeStatus::Failed) };
    let page = repo.list(&failed, 10, None).await.expect("list");
    assert_eq!(page.items.iter().map(|e| e.exchange_id.as_str()).collect::<Vec<_>>(), vec!["ex-life"]);
    let started = ExchangeFilter { integration_code: Some(code("LIFE")), status: Some(ExchangeStatus::Started) };
    assert!(repo.list(&started, 10, None).await.expect("list").items.is_empty());
    let new = ExchangeFilter { integration_code: None, status: Some(ExchangeStatus::New) };
    assert!(repo.list(&new, 10, None).await.expect("list").items.is_empty());
}

#[tokio::test]
#[ignore = "needs a running moto; run with HANDOFF_TEST_AWS_ENDPOINT=... cargo test -p handoff-aws -- --ignored"]
async fn list_is_newest_first_and_paginates() {
    let repo = exchange_repo().await;
    // 7 of integration A (every other one Failed), 2 of B.
    for i in 0..7 {
        let mut ex = exchange(&format!("a{i}"), "A", at(i * 10));
        if i % 2 == 0 {
            ex.status = ExchangeStatus::Failed;
        }
        repo.create(&ex, &steps(1)).await.expect("create");
    }
    for i in 0..2 {
        repo.create(&exchange(&format!("b{i}"), "B", at(100 + i)), &steps(1)).await.expect("create");
    }

    async fn pages(repo: &DynamoExchangeRepository, filter: &ExchangeFilter, limit: u32) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = repo.list(filter, limit, cursor.as_deref()).await.expect("list");
            out.push(page.items.iter().map(|e| e.exchange_id.to_string()).collect());
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
            assert!(out.len() < 20, "runaway pagination");
        }
        out.retain(|p: &Vec<String>| !p.is_empty());
        out
    }
    let by_a = ExchangeFilter { integration_code: Some(code("A")), status: None };
    assert_eq!(pages(&repo, &by_a, 3).await, vec![vec!["a6", "a5", "a4"], vec!["a3", "a2", "a1"], vec!["a0"]]);
    let a_failed = ExchangeFilter { integration_code: Some(code("A")), status: Some(ExchangeStatus::Failed) };
    assert_eq!(pages(&repo, &a_failed, 3).await, vec![vec!["a6", "a4", "a2"], vec!["a0"]]);
    let new = ExchangeFilter { integration_code: None, status: Some(ExchangeStatus::New) };
    assert_eq!(pages(&repo, &new, 2).await, vec![vec!["b1", "b0"], vec!["a5", "a3"], vec!["a1"]]);
    let all = pages(&repo, &ExchangeFilter::default(), 4).await;
    assert_eq!(all, vec![vec!["b1", "b0", "a6", "a5"], vec!["a4", "a3", "a2", "a1"], vec!["a0"]]);
    // A cursor of another filter is refused.
    let page = repo.list(&by_a, 3, None).await.expect("list");
    assert!(repo.list(&new, 3, page.next_cursor.as_deref()).await.is_err());
}

#[tokio::test]
#[ignore = "needs a running moto; run with HANDOFF_TEST_AWS_ENDPOINT=... cargo test -p handoff-aws -- --ignored"]
async fn integrations_create_replace_and_read() {
    let client = aws_sdk_dynamodb::Client::new(&sdk().await);
    let table = integrations_table(&client).await;
    let repo = DynamoIntegrationRepository::new(client, table);
    repo.health().await.expect("health");
    let stored = |version: IntegrationVersion, revision: u64, enabled: bool| StoredIntegration {
        code: code("PROVIDER_IMPORT"),
        version,
        enabled,
        document: serde_json::json!({"code": "PROVIDER_IMPORT", "enabled": enabled, "steps": []}),
        revision,
        created_at: at(0),
        updated_at: at(revision as i64),
    };
    let v1 = IntegrationVersion::number(1).expect("v");
    repo.create(&stored(IntegrationVersion::NULL, 1, true)).await.expect("create null");
    repo.create(&stored(v1, 1, true)).await.expect("create 1");
    assert!(matches!(repo.create(&stored(v1, 1, false)).await, Err(IntegrationWriteError::AlreadyExists { .. })));
    assert!(matches!(repo.replace(&stored(v1, 3, false), 2).await, Err(IntegrationWriteError::RevisionConflict)));
    repo.replace(&stored(v1, 2, false), 1).await.expect("replace");
    assert!(matches!(repo.replace(&stored(v1, 2, false), 1).await, Err(IntegrationWriteError::RevisionConflict)));
    assert_eq!(repo.get(&code("PROVIDER_IMPORT"), v1).await.expect("get"), Some(stored(v1, 2, false)));
    assert_eq!(repo.get(&code("OTHER"), v1).await.expect("get"), None);
    let mut versions = repo.versions(&code("PROVIDER_IMPORT")).await.expect("versions");
    versions.sort_by_key(|s| s.version);
    assert_eq!(versions, vec![stored(IntegrationVersion::NULL, 1, true), stored(v1, 2, false)]);
    assert_eq!(repo.all().await.expect("all").len(), 2);
    assert!(matches!(
        repo.replace(&stored(IntegrationVersion::number(9).expect("v"), 1, true), 0).await,
        Err(IntegrationWriteError::RevisionConflict)
    ));
}

#[tokio::test]
#[ignore = "needs a running moto; run with HANDOFF_TEST_AWS_ENDPOINT=... cargo test -p handoff-aws -- --ignored"]
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

fn pattern(offset: usize, len: usize) -> Bytes {
    Bytes::from((offset..offset + len).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())
}

#[tokio::test]
#[ignore = "needs a running moto; run with HANDOFF_TEST_AWS_ENDPOINT=... cargo test -p handoff-aws -- --ignored"]
async fn data_files_stream_multipart_and_small() {
    let config = sdk().await;
    let s3_config = aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build();
    let client = aws_sdk_s3::Client::from_conf(s3_config);
    let bucket = unique("data");
    client.create_bucket().bucket(&bucket).send().await.expect("bucket");
    let store = S3DataFileStore::new(client, bucket);
    store.health().await.expect("health");
    let set = DataFileSetId::new("set-1");

    // 20 MB in 1 MiB chunks: three parts (8 + 8 + 4 MiB-ish).
    const TOTAL: usize = 20_000_000;
    const CHUNK: usize = 1 << 20;
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..TOTAL).step_by(CHUNK).map(|o| Ok(pattern(o, CHUNK.min(TOTAL - o)))).collect();
    let info = store
        .write(&set, "big.bin", "application/octet-stream", futures::stream::iter(chunks).boxed())
        .await
        .expect("write big");
    assert_eq!(info.size, TOTAL as u64);
    let (info, mut body) = store.read(&set, "big.bin").await.expect("read").expect("exists");
    assert_eq!(info.size, TOTAL as u64);
    let mut offset = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        assert_eq!(chunk, pattern(offset, chunk.len()), "at {offset}");
        offset += chunk.len();
    }
    assert_eq!(offset, TOTAL);

    let small = futures::stream::iter(vec![Ok(Bytes::from_static(b"a,b\n")), Ok(Bytes::from_static(b"1,2\n"))]).boxed();
    let info = store.write(&set, "small.csv", "text/csv", small).await.expect("write small");
    assert_eq!(info.size, 8);
    let (_, body) = store.read(&set, "small.csv").await.expect("read").expect("exists");
    let text: Vec<Bytes> = body.map(|c| c.expect("chunk")).collect().await;
    assert_eq!(text.concat(), b"a,b\n1,2\n");

    // A failing body leaves nothing behind.
    let failing =
        futures::stream::iter(vec![Ok(pattern(0, 9 << 20)), Err(std::io::Error::other("source broke"))]).boxed();
    assert!(store.write(&set, "broken.bin", "application/octet-stream", failing).await.is_err());

    let files = store.list(&set).await.expect("list");
    let summary: Vec<(String, u64, String)> = files.into_iter().map(|f| (f.name, f.size, f.content_type)).collect();
    assert_eq!(
        summary,
        vec![
            ("big.bin".to_string(), TOTAL as u64, "application/octet-stream".to_string()),
            ("small.csv".to_string(), 8, "text/csv".to_string())
        ]
    );
    assert!(store.read(&set, "missing").await.expect("read").is_none());
    assert!(store.list(&DataFileSetId::new("nothing")).await.expect("list").is_empty());
}

#[tokio::test]
#[ignore = "needs a running moto; run with HANDOFF_TEST_AWS_ENDPOINT=... cargo test -p handoff-aws -- --ignored"]
async fn schedules_upsert_and_remove_idempotently() {
    let client = aws_sdk_scheduler::Client::new(&sdk().await);
    let group = unique("handoff");
    client.create_schedule_group().name(&group).send().await.expect("group");
    let arn = "arn:aws:lambda:us-east-1:123456789012:function:handoff-trigger";
    let role = "arn:aws:iam::123456789012:role/scheduler";
    let manager = EventBridgeScheduleManager::new(client.clone(), group.clone(), arn.into(), role.into());
    let c = code("NIGHTLY");
    let spec = |e: &str| ScheduleSpec { expression: e.into(), timezone: "Europe/Amsterdam".into() };
    manager.upsert(&c, &spec("cron(0 18 * * ? *)")).await.expect("create");
    manager.upsert(&c, &spec("rate(5 minutes)")).await.expect("update");
    let got = client.get_schedule().group_name(&group).name(schedule_name(&c)).send().await.expect("get");
    assert_eq!(got.schedule_expression(), Some("rate(5 minutes)"));
    assert_eq!(got.schedule_expression_timezone(), Some("Europe/Amsterdam"));
    let target = got.target().expect("target");
    assert_eq!(target.arn(), arn);
    assert_eq!(target.role_arn(), role);
    let input: serde_json::Value = serde_json::from_str(target.input().expect("input")).expect("json");
    assert_eq!(input, serde_json::json!({"integrationCode": "NIGHTLY"}));
    manager.remove(&c).await.expect("remove");
    manager.remove(&c).await.expect("remove again");
    assert!(client.get_schedule().group_name(&group).name(schedule_name(&c)).send().await.is_err());
}

#[tokio::test]
#[ignore = "needs a running moto; run with HANDOFF_TEST_AWS_ENDPOINT=... cargo test -p handoff-aws -- --ignored"]
async fn health_reports_missing_resources_as_faults() {
    let config = sdk().await;
    let repo = DynamoExchangeRepository::new(aws_sdk_dynamodb::Client::new(&config), "no-such-table".into());
    assert!(matches!(repo.health().await, Err(handoff_app::ports::PortError::Fault { .. })));
    // Nothing listens on port 9: dispatch failures are Unavailable.
    let dead = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url("http://127.0.0.1:9")
        .region("us-east-1")
        .test_credentials()
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let repo = DynamoExchangeRepository::new(aws_sdk_dynamodb::Client::new(&dead), "t".into());
    assert!(matches!(repo.health().await, Err(handoff_app::ports::PortError::Unavailable { .. })));
}
