//! Subflows: an exchange fans out into sub-exchanges and waits for all of them.
//!
//! * `CollectSubflowProperties` — the step's jq program yields one parameter object per
//!   sub-exchange.
//! * `CreateSubExchanges` — creates them in batches with deterministic ids, so a retried
//!   attempt creates no extra ones, and starts them.
//! * `ControlSubflow` — fan-in without polling: each sub-exchange counts itself on this step
//!   in the same transaction that makes it final (exactly once), and the one that completes
//!   the count hands the parent on (an effect, see [`crate::effects`]). When all are final
//!   the parent continues with their results, or fails if any of them failed.

use crate::executors::{payload_failure, store_value, ExecutionContext, StepOutput};
use crate::sub_exchanges::children;
use handoff_core::definition::{StepAction, MAX_SUBFLOW_DEPTH};
use handoff_core::error_code::ErrorCode;
use handoff_core::exchange::{Exchange, ExchangeStatus, ParentLink, Payload};
use handoff_core::ids::{ExchangeId, StepId};
use handoff_core::machine::start::new_exchange;
use handoff_core::plan::WorkerFamily;
use handoff_core::retry::{ErrorClassification, Failure};
use handoff_core::version::{select_version, VersionAvailability};
use handoff_ports::PortError;
use serde_json::Value;

/// Sub-exchanges are written and started in chunks of this many.
const CREATE_CHUNK: usize = 100;

fn transient(e: PortError) -> Failure {
    Failure::transient(e.to_string())
}

/// Deterministic: the same parent step and index always name the same sub-exchange.
pub fn child_id(parent: &ExchangeId, control_step: StepId, index: usize) -> ExchangeId {
    ExchangeId::new(format!("{parent}.{control_step}.{index:05}"))
}

pub async fn collect_properties(cx: &ExecutionContext<'_>, logs: &mut Vec<String>) -> Result<StepOutput, Failure> {
    let Some(StepAction::Subflow { function, max_sub_exchanges, .. }) = cx.action() else {
        return Err(Failure::system("sub-step CollectSubflowProperties on a step that is not a subflow"));
    };
    // Bounded before anything is created: a cap that fails here leaves no orphans.
    let depth = child_depth(cx);
    if depth > MAX_SUBFLOW_DEPTH {
        return Err(Failure::business(ErrorCode::SubflowInvalid, format!(
            "sub-exchanges would be nested {depth} deep; the limit is {MAX_SUBFLOW_DEPTH} (does a subflow cycle through other integrations?)"
        )));
    }
    let input = cx.input_json().await?;
    let values = cx.run_program(function, input, "subflow function").await?;
    let value = handoff_core::expression::single(values)
        .map_err(|e| Failure::business(ErrorCode::SubflowInvalid, format!("subflow function: {e}")))?;
    let Value::Array(items) = &value else {
        return Err(Failure::business(
            ErrorCode::SubflowInvalid,
            "subflow function must yield an array of parameter objects",
        ));
    };
    if let Some(i) = items.iter().position(|v| !v.is_object()) {
        return Err(Failure::business(
            ErrorCode::SubflowInvalid,
            format!("subflow function result [{i}] is not an object of parameters"),
        ));
    }
    if items.len() > *max_sub_exchanges as usize {
        return Err(Failure::business(
            ErrorCode::SubflowInvalid,
            format!(
                "subflow function yields {} sub-exchanges, more than maxSubExchanges {max_sub_exchanges}",
                items.len()
            ),
        ));
    }
    logs.push(format!("{} sub-exchange(s) to create", items.len()));
    store_value(cx, &value).await.map(|payload| StepOutput { payload: Some(payload), ..StepOutput::default() })
}

/// The depth of the sub-exchanges this step starts: one below its own exchange.
fn child_depth(cx: &ExecutionContext<'_>) -> u32 {
    cx.message.parent.as_ref().map_or(1, |p| p.depth + 1)
}

pub async fn create_sub_exchanges(cx: &ExecutionContext<'_>, logs: &mut Vec<String>) -> Result<StepOutput, Failure> {
    let Some(StepAction::Subflow { integration_code, .. }) = cx.action() else {
        return Err(Failure::system("sub-step CreateSubExchanges on a step that is not a subflow"));
    };
    let app = cx.app;
    let parameters = match cx.input_json().await? {
        Value::Array(items) => items,
        _ => return Err(Failure::system("CreateSubExchanges needs the parameter objects of CollectSubflowProperties")),
    };
    let versions = app.ports.integrations.versions(integration_code).await.map_err(transient)?;
    let available: Vec<VersionAvailability> =
        versions.iter().map(|v| VersionAvailability { version: v.version, enabled: v.enabled }).collect();
    let version = select_version(&available, None).map_err(|e| {
        Failure::business(ErrorCode::SubflowInvalid, format!("sub-integration {integration_code}: {e}"))
    })?;
    let child =
        app.definitions.get(integration_code, version).await.map_err(|e| Failure::system(e.to_string()))?.ok_or_else(
            || {
                Failure::business(
                    ErrorCode::SubflowInvalid,
                    format!("sub-integration {integration_code} version {version} vanished"),
                )
            },
        )?;
    let control = StepId::from_sequence(cx.planned.sequence + 1);
    let parent = &cx.message.exchange_id;
    // The total is known before any sub-exchange can finish and count itself.
    app.ports.exchanges.set_sub_exchange_total(parent, control, parameters.len() as u32).await.map_err(transient)?;

    let now = app.ports.clock.now();
    let mut created = 0;
    for (chunk_index, chunk) in parameters.chunks(CREATE_CHUNK).enumerate() {
        let ids: Vec<ExchangeId> =
            (0..chunk.len()).map(|i| child_id(parent, control, chunk_index * CREATE_CHUNK + i)).collect();
        let existing = app.ports.exchanges.statuses(&ids).await.map_err(transient)?;
        let mut new = Vec::new();
        let mut start = Vec::new();
        for (i, (id, params)) in ids.iter().zip(chunk).enumerate() {
            let link = ParentLink {
                exchange_id: parent.clone(),
                step_id: control,
                index: (chunk_index * CREATE_CHUNK + i) as u32,
                depth: child_depth(cx),
            };
            let fresh = new_exchange(child.pipeline(), id.clone(), params.clone(), None, Some(link), now);
            match existing.iter().find(|(e, _)| e == id) {
                None => {
                    start.push(fresh.first.clone());
                    new.push((fresh.exchange, fresh.steps));
                }
                // Created by an earlier attempt that may have stopped before starting it.
                Some((_, ExchangeStatus::New)) => start.push(fresh.first),
                Some(_) => {}
            }
        }
        app.ports.exchanges.create_many(&new).await.map_err(transient)?;
        for (child, _) in &new {
            crate::metrics::exchange_started(
                &child.integration_code,
                Some(handoff_core::exchange::TriggerKind::Subflow),
            );
        }
        app.ports.queue.send_many(WorkerFamily::Control, &start).await.map_err(transient)?;
        created += new.len();
    }
    logs.push(format!(
        "Created {created} of {} sub-exchange(s) of {integration_code} version {version}",
        parameters.len()
    ));
    Ok(StepOutput::default())
}

pub async fn control(cx: &ExecutionContext<'_>, logs: &mut Vec<String>) -> Result<StepOutput, Failure> {
    let app = cx.app;
    let step = app
        .ports
        .exchanges
        .get_step(&cx.message.exchange_id, cx.message.step_id)
        .await
        .map_err(transient)?
        .ok_or_else(|| Failure::system("the ControlSubflow step is missing"))?;
    let counts = step.sub_exchanges.ok_or_else(|| Failure::system("no sub-exchanges were created for this step"))?;
    if !counts.all_final() {
        logs.push(format!(
            "Waiting for {} of {} sub-exchange(s) ({} completed, {} failed)",
            counts.running(),
            counts.total,
            counts.completed,
            counts.failed
        ));
        return Ok(StepOutput { wait_for_sub_exchanges: true, ..StepOutput::default() });
    }
    let mine: Vec<Exchange> = children(app.ports.exchanges.as_ref(), &cx.message.exchange_id)
        .await
        .map_err(transient)?
        .into_iter()
        .filter(|c| c.parent.as_ref().is_some_and(|p| p.step_id == cx.message.step_id))
        .collect();
    // The listing comes from an index, which in AWS trails the table a little: insist on
    // seeing every sub-exchange final before reading their results, else try again shortly.
    if mine.len() != counts.total as usize || mine.iter().any(|c| !c.status.is_final()) {
        return Err(Failure::transient(format!(
            "the sub-exchange index shows {} of {} sub-exchange(s) final; reading again",
            mine.iter().filter(|c| c.status.is_final()).count(),
            counts.total
        )));
    }
    if counts.failed > 0 {
        let first = mine.iter().find(|c| matches!(c.status, ExchangeStatus::Failed | ExchangeStatus::TimedOut));
        let classification =
            first.and_then(|c| c.error.as_ref()).map_or(ErrorClassification::System, |e| e.classification);
        let detail = first
            .map(|c| {
                format!(
                    " (first: {} {}: {})",
                    c.exchange_id,
                    c.status.name(),
                    c.error.as_ref().map_or("", |e| e.message.as_str())
                )
            })
            .unwrap_or_default();
        return Err(Failure {
            classification,
            retryable: false,
            code: ErrorCode::SubExchangesFailed,
            message: format!("{} of {} sub-exchange(s) did not complete{detail}", counts.failed, counts.total),
        });
    }
    let mut results = Vec::with_capacity(mine.len());
    for child in &mine {
        results.push(match &child.result {
            None => Value::Null,
            Some(Payload::DataFileSet { data_file_set_id }) => serde_json::json!({"dataFileSetId": data_file_set_id}),
            Some(payload @ Payload::Raw { raw }) => {
                let bytes = cx.codec.load(payload).await.map_err(payload_failure)?;
                serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(raw.clone()))
            }
        });
    }
    logs.push(format!("All {} sub-exchange(s) completed", counts.total));
    store_value(cx, &Value::Array(results))
        .await
        .map(|payload| StepOutput { payload: Some(payload), ..StepOutput::default() })
}
