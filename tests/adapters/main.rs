//! The AWS adapters of `handoff-aws` against a real moto server: one moto per test binary,
//! started on first use (installed into the project venv if needed) by
//! `handoff_emulator::moto`. Set `HANDOFF_TEST_AWS_ENDPOINT` to use a moto that is already
//! running instead. Every test creates its own tables, queues, buckets and schedule groups
//! (unique names), so the tests run in parallel against the one server.

use aws_config::BehaviorVersion;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use handoff_aws::scheduler::schedule_name;
use handoff_aws::{
    DynamoExchangeRepository, DynamoIntegrationRepository, EventBridgeScheduleManager, S3DataFileStore, SqsHandoffQueue,
};
use handoff_core::commit::{
    ClaimOutcome, ClaimRequest, CommitOutcome, ErrorRecord, ExchangeChange, ParentTally, Precondition, RecoveryCommit,
    ReexecutionCommit, StepChange, StepCommit,
};
use handoff_core::definition::ScheduleSpec;
use handoff_core::error_code::ErrorCode;
use handoff_core::error_list::{ErrorId, ErrorState, Reprocessing, Resolution, StoredError};
use handoff_core::exchange::{
    Exchange, ExchangeError, ExchangeStatus, ExchangeStep, LogLine, LogType, ParentLink, Payload, StepError,
    StepStatus, SubExchangeCounts,
};
use handoff_core::handoff::{CallbackToken, HandoffMessage, QueueMessage, Timer, TimerKind};
use handoff_core::ids::{DataFileSetId, ExchangeId, IntegrationCode, IntegrationVersion, StepId};
use handoff_core::plan::{SubStep, WorkerFamily};
use handoff_core::retry::ErrorClassification;
use handoff_emulator::moto::MotoServer;
use handoff_ports::{
    DataFileStore, ErrorFilter, ExchangeFilter, ExchangeReads, ExchangeRepository, ExchangeWrites, HandoffQueue,
    IntegrationRepository, IntegrationWriteError, PortError, ScheduleManager, StoredIntegration,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

mod data_files;
mod dynamo_exchanges;
mod endpoints;
mod events;
mod integrations;
mod job_runs;
mod jq_sandbox;
mod moto_launcher;
mod queues;
mod schedules;
mod unrouted;

/// The moto endpoint of this test binary.
fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        if let Some(ep) = std::env::var("HANDOFF_TEST_AWS_ENDPOINT").ok().filter(|s| !s.trim().is_empty()) {
            return ep;
        }
        // moto lives on a thread (and runtime) of its own so that it outlives every test's
        // runtime; the server is killed when the process exits (PR_SET_PDEATHSIG).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("moto".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match MotoServer::start().await {
                        Ok(server) => {
                            let _ = tx.send(Ok(server.endpoint().to_string()));
                            std::future::pending::<()>().await;
                            drop(server);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                });
            })
            .expect("spawn moto thread");
        rx.recv().expect("moto thread ended before reporting").unwrap_or_else(|e| panic!("moto failed to start: {e}"))
    })
}

/// SDK configuration for moto. Built per test: SDK clients hold connections of the runtime
/// that opened them and must not be shared across test runtimes.
async fn sdk() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region("us-east-1")
        .test_credentials()
        .load()
        .await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A fresh table of the run, created from `infra/template.yaml`'s `logical_id` (the schema is
/// not written a second time here).
async fn template_table(logical_id: &str, prefix: &str) -> String {
    let table = unique(prefix);
    handoff_emulator::provision::create_template_table(&sdk().await, logical_id, &table)
        .await
        .unwrap_or_else(|e| panic!("creating {logical_id}: {e}"));
    table
}

/// The exchanges table as `infra/template.yaml` declares it.
async fn exchanges_table() -> String {
    template_table("ExchangesTable", "exchanges").await
}

async fn integrations_table() -> String {
    template_table("IntegrationsTable", "integrations").await
}

async fn exchange_repo() -> DynamoExchangeRepository {
    let client = aws_sdk_dynamodb::Client::new(&sdk().await);
    let table = exchanges_table().await;
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
        recoveries: 0,
        parent: None,
        result: None,
        trigger: Some(handoff_core::exchange::Trigger::api("e2e-caller")),
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
            started_at: None,
            completed_at: None,
            sub_exchanges: None,
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
        started_at: None,
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
    StepCommit { step: Some(step), ..StepCommit::new(id.clone(), 0, exchange, now) }
}
