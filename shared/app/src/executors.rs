//! What each sub-step does. Executors return an outcome and log lines; they never write
//! exchange state themselves (the worker commits), so every effect is decided in one place.

use crate::definitions::LoadedIntegration;
use crate::outbound::{self, OutboundBody};
use crate::payloads::{PayloadCodec, PayloadError};
use crate::ports::{ByteStream, HandoffMessage};
use futures::TryStreamExt;
use handoff_core::definition::{DestinationTarget, OutputFormat, StepAction};
use handoff_core::exchange::Payload;
use handoff_core::expression::{Expression, ExpressionVars};
use handoff_core::placeholder::PlaceholderContext;
use handoff_core::plan::{first_after_step, PlannedSubStep, SubStep};
use handoff_core::retry::Failure;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A successful sub-step: its output (if it produced one; otherwise its input flows on)
/// and, for a false condition, where the exchange continues.
#[derive(Debug, Default)]
pub struct StepOutput {
    pub payload: Option<Payload>,
    pub skip_to: Option<u32>,
}

pub struct Execution {
    pub outcome: Result<StepOutput, Failure>,
    pub logs: Vec<String>,
}

pub struct ExecutionContext<'a> {
    pub http: &'a reqwest::Client,
    pub codec: &'a PayloadCodec,
    pub loaded: &'a LoadedIntegration,
    pub planned: &'a PlannedSubStep,
    pub message: &'a HandoffMessage,
}

impl ExecutionContext<'_> {
    fn placeholders(&self) -> PlaceholderContext {
        PlaceholderContext {
            parameters: self.message.parameters.clone(),
            exchange_id: self.message.exchange_id.to_string(),
            integration_code: self.message.integration_code.to_string(),
            integration_version: self.message.integration_version.to_string(),
        }
    }

    fn vars(&self) -> ExpressionVars {
        ExpressionVars {
            parameters: self.message.parameters.clone(),
            exchange: json!({
                "exchangeId": self.message.exchange_id,
                "integrationCode": self.message.integration_code,
                "integrationVersion": self.message.integration_version,
            }),
        }
    }

    fn action(&self) -> Option<&StepAction> {
        self.planned.step_index.map(|i| &self.loaded.definition.steps[i].action)
    }

    /// The input as JSON (empty input reads as `null`).
    async fn input_json(&self) -> Result<Value, Failure> {
        let Some(payload) = &self.message.input else {
            return Ok(Value::Null);
        };
        let bytes = self.codec.load(payload).await.map_err(payload_failure)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| Failure::business(format!("the payload is not valid JSON: {e}")))
    }

    fn input_stream_or_empty(&self) -> Option<&Payload> {
        self.message.input.as_ref()
    }
}

fn payload_failure(e: PayloadError) -> Failure {
    match e {
        PayloadError::Port(p) => Failure::transient(format!("payload storage: {p}")),
        other => Failure::system(other.to_string()),
    }
}

fn expression_failure(what: &str, e: handoff_core::expression::ExpressionError) -> Failure {
    Failure::business(format!("{what}: {e}"))
}

/// The key a target uses to drop duplicates: the same for every attempt of one sub-step.
pub fn idempotency_key(message: &HandoffMessage) -> String {
    let digest = Sha256::digest(format!("{}/{}", message.exchange_id, message.step_id));
    hex::encode(&digest[..16])
}

pub async fn execute(cx: &ExecutionContext<'_>) -> Execution {
    let mut logs = Vec::new();
    let outcome = run(cx, &mut logs).await;
    if let Err(failure) = &outcome {
        logs.push(format!("Attempt {} failed: {}", cx.message.attempt, failure.message));
    }
    Execution { outcome, logs }
}

async fn run(cx: &ExecutionContext<'_>, logs: &mut Vec<String>) -> Result<StepOutput, Failure> {
    let step = cx.planned.step_index.map(|i| &cx.loaded.definition.steps[i]);
    match cx.planned.sub_step {
        SubStep::ExchangeTriggered => {
            logs.push(format!(
                "Exchange of {} version {} triggered",
                cx.message.integration_code, cx.message.integration_version
            ));
            Ok(StepOutput::default())
        }
        SubStep::ExchangeSignoff => {
            logs.push("Exchange signed off".into());
            Ok(StepOutput::default())
        }
        SubStep::ConditionInvocation => {
            let condition = step.and_then(|s| s.condition.as_ref()).ok_or_else(|| Failure::system("step has no condition"))?;
            let input = cx.input_json().await?;
            let holds = condition
                .evaluate_condition(&input, &cx.vars())
                .map_err(|e| expression_failure("condition", e))?;
            if holds {
                logs.push("Condition is true: the step runs".into());
                Ok(StepOutput::default())
            } else {
                let index = cx.planned.step_index.unwrap_or_default();
                logs.push("Condition is false: the step is skipped".into());
                Ok(StepOutput { payload: None, skip_to: Some(first_after_step(&cx.loaded.plan, index)) })
            }
        }
        SubStep::PostProcess => {
            let program = step.and_then(|s| s.post_process.as_ref()).ok_or_else(|| Failure::system("step has no postProcess"))?;
            let output = run_jq(cx, program, "postProcess").await?;
            logs.push("Post-processing applied".into());
            store_json(cx, &output, OutputFormat::Json).await
        }
        SubStep::Transform => {
            let Some(StepAction::Transformation { function, output }) = cx.action() else {
                return Err(Failure::system("sub-step Transform on a step that is not a transformation"));
            };
            let value = match function {
                Some(program) => run_jq(cx, program, "transformation").await?,
                None => cx.input_json().await?,
            };
            logs.push(format!("Transformed to {}", format_name(*output)));
            store_json(cx, &value, *output).await
        }
        SubStep::InvokeQuery => {
            let Some(StepAction::Query { request }) = cx.action() else {
                return Err(Failure::system("sub-step InvokeQuery on a step that is not a query"));
            };
            let rendered = outbound::render(request, &cx.placeholders())?;
            let target = format!("{} {}", rendered.method, outbound::redact_query(&rendered.url));
            let response = outbound::send(cx.http, rendered, OutboundBody::Empty, &[]).await?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_string();
            let body: ByteStream = Box::pin(response.bytes_stream().map_err(std::io::Error::other));
            let payload = cx.codec.store_stream(body, &content_type).await.map_err(payload_failure)?;
            logs.push(format!("Queried {target}: HTTP {status}, {}", describe_payload(&payload)));
            Ok(StepOutput { payload: Some(payload), skip_to: None })
        }
        SubStep::DeliverRest => {
            let destination = cx
                .action()
                .and_then(|a| match a {
                    StepAction::Delivery { destinations } => cx.planned.destination.and_then(|d| destinations.get(d)),
                    _ => None,
                })
                .ok_or_else(|| Failure::system("sub-step DeliverRest without a destination"))?;
            let DestinationTarget::Rest { request } = &destination.target else {
                return Err(Failure::system("sub-step DeliverRest on a destination that is not rest"));
            };
            let rendered = outbound::render(request, &cx.placeholders())?;
            let target = format!("{} {}", rendered.method, outbound::redact_query(&rendered.url));
            let body = match cx.input_stream_or_empty() {
                Some(payload) => OutboundBody::Stream {
                    body: cx.codec.open(payload).await.map_err(payload_failure)?,
                    content_type: "application/json".into(),
                },
                None => OutboundBody::Empty,
            };
            let key = idempotency_key(cx.message);
            let response = outbound::send(cx.http, rendered, body, &[("Idempotency-Key", key)]).await?;
            logs.push(format!("Delivered to {target}: HTTP {}", response.status().as_u16()));
            Ok(StepOutput::default())
        }
        other => Err(Failure::system(format!("sub-step {other} has no executor in this release"))),
    }
}

async fn run_jq(cx: &ExecutionContext<'_>, program: &Expression, what: &str) -> Result<Value, Failure> {
    let input = cx.input_json().await?;
    program.evaluate_single(&input, &cx.vars()).map_err(|e| expression_failure(what, e))
}

fn format_name(format: OutputFormat) -> &'static str {
    match format {
        OutputFormat::Json => "json",
        OutputFormat::Ndjson => "ndjson",
        OutputFormat::Csv => "csv",
        OutputFormat::Xml => "xml",
        OutputFormat::Raw => "raw",
    }
}

async fn store_json(cx: &ExecutionContext<'_>, value: &Value, format: OutputFormat) -> Result<StepOutput, Failure> {
    let bytes = match format {
        OutputFormat::Json => serde_json::to_vec(value).map_err(|e| Failure::system(e.to_string()))?,
        OutputFormat::Ndjson => {
            let items = match value {
                Value::Array(items) => items.as_slice(),
                single => std::slice::from_ref(single),
            };
            let mut out = Vec::new();
            for item in items {
                serde_json::to_writer(&mut out, item).map_err(|e| Failure::system(e.to_string()))?;
                out.push(b'\n');
            }
            out
        }
        OutputFormat::Raw => match value {
            Value::String(s) => s.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        },
        OutputFormat::Csv | OutputFormat::Xml => {
            return Err(Failure::system(format!("output format {} is not implemented in this release", format_name(format))))
        }
    };
    let payload = cx.codec.store(bytes.into(), format.content_type()).await.map_err(payload_failure)?;
    Ok(StepOutput { payload: Some(payload), skip_to: None })
}

fn describe_payload(payload: &Payload) -> String {
    match payload {
        Payload::Raw { raw } => format!("{} bytes inline", raw.len()),
        Payload::DataFileSet { data_file_set_id } => format!("stored as data file set {data_file_set_id}"),
    }
}
