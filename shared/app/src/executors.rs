//! What each sub-step does. Executors return an outcome and log lines; they never write
//! exchange state themselves (the worker commits), so every effect is decided in one place.

use crate::context::AppContext;
use crate::definitions::LoadedIntegration;
use crate::outbound::{self, OutboundBody};
use crate::payloads::{PayloadCodec, PayloadError};
use chrono::Duration as ChronoDuration;
use futures::future::BoxFuture;
use futures::TryStreamExt;
use handoff_core::definition::{DestinationTarget, RequestTemplate, StepAction};
use handoff_core::error_code::ErrorCode;
use handoff_core::exchange::{LogType, Payload};
use handoff_core::expression::{Expression, ExpressionError, ExpressionVars};
use handoff_core::handoff::{CallbackToken, HandoffMessage};
use handoff_core::ids::{DataFileSetId, StepId};
pub use handoff_core::machine::{StepOutput, Wait};
use handoff_core::notification::{Notification, NotificationStatus};
use handoff_core::placeholder::PlaceholderContext;
use handoff_core::plan::{first_after_step, PlannedSubStep, SubStep};
use handoff_core::retry::Failure;
use handoff_ports::ByteStream;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Deliveries to sftp, file upload and agent destinations, and custom data collection.
mod deliveries;
pub mod subflow;
mod transform;

pub struct Execution {
    pub outcome: Result<StepOutput, Failure>,
    pub logs: Vec<(LogType, String)>,
    /// What the next sub-step runs on when this one's input is not the pipeline's payload
    /// (a callback's notification): the payload that flows past it, on success or failure.
    pub pass_on: Option<Payload>,
    /// Problems to list for operators that do not fail the step by themselves (e.g. the
    /// files an agent rejected); recorded once the attempt is decided.
    pub recorded: Vec<Failure>,
}

pub struct ExecutionContext<'a> {
    pub app: &'a AppContext,
    pub http: &'a crate::outbound::OutboundClient,
    pub codec: &'a PayloadCodec,
    pub loaded: &'a LoadedIntegration,
    pub planned: &'a PlannedSubStep,
    pub message: &'a HandoffMessage,
}

impl ExecutionContext<'_> {
    /// `payload` as an outbound request body of `content_type`, its length sent when known.
    pub(crate) async fn payload_body(&self, payload: &Payload, content_type: String) -> Result<OutboundBody, Failure> {
        let opened = self.codec.open_sized(payload).await.map_err(payload_failure)?;
        Ok(OutboundBody::Stream { body: opened.body, content_type, length: opened.length })
    }

    /// Every value `program` yields for `input`, run where the deployment runs programs (the
    /// sandbox) on a blocking thread: a run may take until its deadline, and the other
    /// messages of the batch go on meanwhile. `what` names the program in a failure.
    pub(crate) async fn run_program(
        &self,
        program: &Expression,
        input: Value,
        what: &str,
    ) -> Result<Vec<Value>, Failure> {
        let (runner, program, vars) = (self.app.jq.clone(), program.clone(), self.vars());
        tokio::task::spawn_blocking(move || program.evaluate(runner.as_ref(), &input, &vars))
            .await
            .map_err(|e| Failure::system(format!("the {what} task failed: {e}")))?
            .map_err(|e| expression_failure(self, what, e))
    }

    fn placeholders(&self) -> PlaceholderContext {
        PlaceholderContext {
            parameters: self.message.parameters.clone(),
            exchange_id: self.message.exchange_id.to_string(),
            integration_code: self.message.integration_code.to_string(),
            integration_version: self.message.integration_version.to_string(),
        }
    }

    pub(crate) fn vars(&self) -> ExpressionVars {
        ExpressionVars {
            parameters: self.message.parameters.clone(),
            exchange: json!({
                "exchangeId": self.message.exchange_id,
                "integrationCode": self.message.integration_code,
                "integrationVersion": self.message.integration_version,
            }),
        }
    }

    pub(crate) fn action(&self) -> Option<&StepAction> {
        self.step().map(|s| &s.action)
    }

    pub(crate) fn step(&self) -> Option<&handoff_core::definition::IntegrationStep> {
        self.planned.step_index.map(|i| &self.loaded.definition.steps[i])
    }

    /// `step '<name>' ` to lead a failure message with (nothing outside a step).
    pub(crate) fn naming_the_step(&self) -> String {
        self.step().map_or_else(String::new, |s| format!("step '{}' ", s.name))
    }

    /// A link from a callback may be followed (see [`handoff_core::links`]).
    fn check_link(&self, link: &str) -> Result<(), Failure> {
        let step = self.step().ok_or_else(|| Failure::system("a callback link outside a step"))?;
        handoff_core::links::check_link(step, link).map_err(|e| Failure::business(ErrorCode::DestinationRefused, e))
    }

    /// The input as JSON (empty input reads as `null`).
    pub(crate) async fn input_json(&self) -> Result<Value, Failure> {
        let Some(payload) = &self.message.input else {
            return Ok(Value::Null);
        };
        let bytes = self.codec.load(payload).await.map_err(payload_failure)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::business(ErrorCode::InvalidPayload, format!("the payload is not valid JSON: {e}")))
    }

    fn input_stream_or_empty(&self) -> Option<&Payload> {
        self.message.input.as_ref()
    }
}

pub(crate) fn payload_failure(e: PayloadError) -> Failure {
    match e {
        PayloadError::Port(p) => Failure::transient(format!("payload storage: {p}")),
        // The definition asks for one body where the data has several files: the customer's to fix.
        e @ PayloadError::SeveralFiles { .. } => Failure::business(ErrorCode::InvalidPayload, e.to_string()),
        other => Failure::system(other.to_string()),
    }
}

/// A program's failure names the step and the program; over a limit or wrong in itself it
/// is the definition's fault (business), a sandbox that cannot start is worth a retry.
fn expression_failure(cx: &ExecutionContext<'_>, what: &str, e: ExpressionError) -> Failure {
    let message = format!("{}{what}: {e}", cx.naming_the_step());
    if e.is_program_error() {
        Failure::business(e.code(), message)
    } else {
        Failure::transient(message)
    }
}

/// The key a target uses to drop duplicates: the same for every attempt of one sub-step.
pub fn idempotency_key(message: &HandoffMessage) -> String {
    let digest = Sha256::digest(format!("{}/{}", message.exchange_id, message.step_id));
    hex::encode(&digest[..16])
}

/// Runs the sub-step of a handoff. A worker function is given the executor of what its
/// family runs and links nothing more: SFTP's SSH stack is in the SFTP worker only (and in
/// the emulator, which runs every family in one process).
pub type Execute = for<'c, 'x> fn(&'c ExecutionContext<'x>) -> BoxFuture<'c, Execution>;

/// Executes any sub-step.
pub fn execute<'c, 'x>(cx: &'c ExecutionContext<'x>) -> BoxFuture<'c, Execution> {
    Box::pin(execute_with(cx, Some(deliveries::deliver_sftp)))
}

/// Executes any sub-step but an SFTP delivery, which it fails as a system error (that
/// sub-step is handed to the SFTP worker, never here).
pub fn execute_without_sftp<'c, 'x>(cx: &'c ExecutionContext<'x>) -> BoxFuture<'c, Execution> {
    Box::pin(execute_with(cx, None))
}

async fn execute_with(cx: &ExecutionContext<'_>, sftp: Option<deliveries::SftpDeliverer>) -> Execution {
    let mut lines = Vec::new();
    let mut user_lines = Vec::new();
    let mut extras = Extras::default();
    let outcome = if deliveries::handles(cx.planned.sub_step) {
        deliveries::run(cx, &mut lines, &mut user_lines, &mut extras, sftp).await
    } else {
        run(cx, &mut lines, &mut user_lines).await
    };
    if let Err(failure) = &outcome {
        lines.push(format!("Attempt {} failed: {}", cx.message.attempt, failure.message));
    }
    let logs = lines
        .into_iter()
        .map(|l| (LogType::System, l))
        .chain(user_lines.into_iter().map(|l| (LogType::User, l)))
        .collect();
    Execution { outcome, logs, pass_on: extras.pass_on, recorded: extras.recorded }
}

/// What an executor reports besides its outcome and logs (see [`Execution`]).
#[derive(Debug, Default)]
struct Extras {
    pass_on: Option<Payload>,
    recorded: Vec<Failure>,
}

async fn run(
    cx: &ExecutionContext<'_>,
    logs: &mut Vec<String>,
    user_logs: &mut Vec<String>,
) -> Result<StepOutput, Failure> {
    let step = cx.planned.step_index.map(|i| &cx.loaded.definition.steps[i]);
    match cx.planned.sub_step {
        SubStep::ExchangeTriggered => {
            logs.push(format!(
                "Exchange of {} version {} triggered",
                cx.message.integration_code, cx.message.integration_version
            ));
            Ok(StepOutput::default())
        }
        SubStep::AwaitSignoff => {
            let timeout_seconds = match cx.loaded.definition.signoff {
                handoff_core::definition::Signoff::Requester { timeout_seconds } => timeout_seconds,
                handoff_core::definition::Signoff::Auto => None,
            };
            let timeout_at = timeout_seconds.map(|s| cx.app.ports.clock.now() + ChronoDuration::seconds(s as i64));
            logs.push(match timeout_at {
                Some(at) => format!("Waiting for the requester's sign-off (POST /exchanges/{{id}}/signoff) until {at}"),
                None => "Waiting for the requester's sign-off (POST /exchanges/{id}/signoff)".into(),
            });
            let signoff = StepId::from_sequence(cx.planned.sequence + 1);
            Ok(StepOutput { wait: Some(Wait { step_id: signoff, timeout_at }), ..StepOutput::default() })
        }
        SubStep::ExchangeSignoff => {
            logs.push(match &cx.message.requested_by {
                Some(by) => format!("Exchange signed off by {by}"),
                _ => "Exchange signed off".into(),
            });
            Ok(StepOutput::default())
        }
        SubStep::ConditionInvocation => {
            let condition =
                step.and_then(|s| s.condition.as_ref()).ok_or_else(|| Failure::system("step has no condition"))?;
            let input = cx.input_json().await?;
            let holds = handoff_core::expression::truthy(&cx.run_program(condition, input, "condition").await?);
            if holds {
                logs.push("Condition is true: the step runs".into());
                Ok(StepOutput::default())
            } else {
                let index = cx.planned.step_index.unwrap_or_default();
                logs.push("Condition is false: the step is skipped".into());
                Ok(StepOutput { skip_to: Some(first_after_step(&cx.loaded.plan, index)), ..StepOutput::default() })
            }
        }
        SubStep::PostProcess => {
            let program =
                step.and_then(|s| s.post_process.as_ref()).ok_or_else(|| Failure::system("step has no postProcess"))?;
            let output = run_jq(cx, program, "postProcess").await?;
            logs.push("Post-processing applied".into());
            Ok(StepOutput { payload: Some(store_value(cx, &output).await?), ..StepOutput::default() })
        }
        SubStep::Transform => transform::transform(cx, logs).await,
        SubStep::InvokeQuery => {
            let Some(StepAction::Query { request }) = cx.action() else {
                return Err(Failure::system("sub-step InvokeQuery on a step that is not a query"));
            };
            let rendered = outbound::render(request, &cx.placeholders())?;
            let target = format!("{} {}", rendered.method, outbound::redact_query(&rendered.url));
            let response = outbound::send(cx.http, rendered, OutboundBody::Empty, &[]).await?;
            let status = response.status().as_u16();
            let payload = store_response(cx, response).await?;
            logs.push(format!("Queried {target}: HTTP {status}, {}", describe_payload(&payload)));
            Ok(StepOutput { payload: Some(payload), ..StepOutput::default() })
        }
        SubStep::DeliverRest | SubStep::DeliverResponse => {
            let destination = cx
                .action()
                .and_then(|a| match a {
                    StepAction::Delivery { destinations } => cx.planned.destination.and_then(|d| destinations.get(d)),
                    _ => None,
                })
                .ok_or_else(|| Failure::system(format!("sub-step {} without a destination", cx.planned.sub_step)))?;
            let DestinationTarget::Rest { request } = &destination.target else {
                return Err(Failure::system(format!(
                    "sub-step {} on a destination that is not rest",
                    cx.planned.sub_step
                )));
            };
            let response_address = destination.response.as_ref().and_then(|r| r.deliver_to.as_ref());
            let (request, what) = match cx.planned.sub_step {
                SubStep::DeliverResponse => (
                    response_address.ok_or_else(|| Failure::system("sub-step DeliverResponse without a deliverTo"))?,
                    "Delivered the answer to its response address",
                ),
                _ => (request, "Delivered to"),
            };
            let rendered = outbound::render(request, &cx.placeholders())?;
            let target = format!("{} {}", rendered.method, outbound::redact_query(&rendered.url));
            let body = match cx.input_stream_or_empty() {
                Some(payload) => cx.payload_body(payload, "application/json".into()).await?,
                None => OutboundBody::Empty,
            };
            let key = idempotency_key(cx.message);
            let response = outbound::send(cx.http, rendered, body, &[("Idempotency-Key", key)]).await?;
            let status = response.status().as_u16();
            let captures =
                cx.planned.sub_step == SubStep::DeliverRest && destination.response.as_ref().is_some_and(|r| r.capture);
            if captures {
                // The answer is the step's output: it flows on and becomes the exchange's result.
                let payload = store_response(cx, response).await?;
                logs.push(format!("{what} {target}: HTTP {status}, answer kept ({})", describe_payload(&payload)));
                return Ok(StepOutput { payload: Some(payload), ..StepOutput::default() });
            }
            logs.push(format!("{what} {target}: HTTP {status}"));
            Ok(StepOutput::default())
        }
        SubStep::InvokeProcess | SubStep::InvokeActivity | SubStep::InvokeExtract => {
            let (request, waits) = match cx.action() {
                Some(StepAction::InvokeProcess { request, expect_notification, .. }) => (request, *expect_notification),
                Some(StepAction::Extract { request, .. }) => (request, true),
                _ => {
                    return Err(Failure::system(format!(
                        "sub-step {} on a step that does not invoke",
                        cx.planned.sub_step
                    )))
                }
            };
            invoke_external(cx, request, waits, logs).await
        }
        SubStep::ReceiveNotification => {
            let notification = notification_from(cx).await?;
            match notification.status {
                NotificationStatus::Success => {
                    logs.push(format!(
                        "Callback: success ({} file(s), {} recovery link(s))",
                        notification.files.len(),
                        notification.recovery_links.len()
                    ));
                    Ok(StepOutput { payload: cx.message.input.clone(), ..StepOutput::default() })
                }
                NotificationStatus::Failure => {
                    let reason = notification.reason.unwrap_or_else(|| "no reason given".into());
                    Err(Failure::business(
                        ErrorCode::CallbackFailure,
                        format!("the external system reported failure: {reason}"),
                    ))
                }
            }
        }
        SubStep::CollectData => {
            let notification = notification_from(cx).await?;
            if notification.files.is_empty() {
                logs.push("No files to collect".into());
                let payload = match notification.data {
                    Some(data) => Some(store_value(cx, &data).await?),
                    None => None,
                };
                return Ok(StepOutput { payload, ..StepOutput::default() });
            }
            let set = DataFileSetId::new(format!("dfs-{}", uuid::Uuid::now_v7()));
            for file in &notification.files {
                cx.check_link(&file.url)?;
                let response = outbound::send(
                    cx.http,
                    outbound::RenderedRequest {
                        method: reqwest::Method::GET,
                        url: file.url.clone(),
                        headers: Vec::new(),
                        body: None,
                        // Checked against the step's host: a redirect would leave that check behind.
                        follow_redirects: false,
                    },
                    OutboundBody::Empty,
                    &[],
                )
                .await?;
                let (content_type, body) = response_stream(response);
                let info = cx
                    .app
                    .ports
                    .files
                    .write(&set, &file.name, &content_type, body)
                    .await
                    .map_err(|e| Failure::transient(format!("storing {}: {e}", file.name)))?;
                logs.push(format!("Collected {} ({} bytes)", info.name, info.size));
            }
            Ok(StepOutput { payload: Some(Payload::DataFileSet { data_file_set_id: set }), ..StepOutput::default() })
        }
        SubStep::CheckRecovery => {
            let notification = stored_notification(cx).await?;
            if notification.recovery_links.is_empty() {
                logs.push("No recovery links in the notification".into());
            }
            for link in &notification.recovery_links {
                cx.check_link(&link.url)?;
                let method = reqwest::Method::from_bytes(link.method.as_bytes()).map_err(|_| {
                    Failure::business(
                        ErrorCode::CallbackFailure,
                        format!("recovery link method {} is not HTTP", link.method),
                    )
                })?;
                let request = outbound::RenderedRequest {
                    method,
                    url: link.url.clone(),
                    headers: Vec::new(),
                    body: None,
                    follow_redirects: false,
                };
                let response = outbound::send(
                    cx.http,
                    request,
                    OutboundBody::Empty,
                    &[("Idempotency-Key", idempotency_key(cx.message))],
                )
                .await?;
                logs.push(format!(
                    "Recovery link {} {}: HTTP {}",
                    link.method,
                    outbound::redact_query(&link.url),
                    response.status().as_u16()
                ));
            }
            Ok(StepOutput::default())
        }
        SubStep::CollectMessages => {
            let notification = stored_notification(cx).await?;
            logs.push(format!("Collected {} message(s) from the external system", notification.messages.len()));
            for message in &notification.messages {
                let text = match message {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                user_logs.push(text.chars().take(1000).collect());
            }
            Ok(StepOutput::default())
        }
        SubStep::CollectSubflowProperties => crate::executors::subflow::collect_properties(cx, logs).await,
        SubStep::CreateSubExchanges => crate::executors::subflow::create_sub_exchanges(cx, logs).await,
        SubStep::ControlSubflow => crate::executors::subflow::control(cx, logs).await,
        other => Err(Failure::system(format!("sub-step {other} has no executor in this release"))),
    }
}

/// Calls an external process. When it answers by callback, the call carries a fresh
/// single-use token's URL in `X-Handoff-Callback-Url` (stored before the call, so even an
/// instant callback finds it).
async fn invoke_external(
    cx: &ExecutionContext<'_>,
    request: &RequestTemplate,
    waits: bool,
    logs: &mut Vec<String>,
) -> Result<StepOutput, Failure> {
    let rendered = outbound::render(request, &cx.placeholders())?;
    let target = format!("{} {}", rendered.method, outbound::redact_query(&rendered.url));
    let mut headers = vec![("Idempotency-Key", idempotency_key(cx.message))];
    let mut wait = None;
    if waits {
        let (callback_url, armed) = arm_callback(cx).await?;
        headers.push((outbound::CALLBACK_HEADER, callback_url));
        wait = Some(armed);
    }
    let body = match cx.input_stream_or_empty() {
        Some(payload) if request.body.is_none() => cx.payload_body(payload, "application/json".into()).await?,
        _ => OutboundBody::Empty,
    };
    let response = outbound::send(cx.http, rendered, body, &headers).await?;
    logs.push(format!(
        "Invoked {target}: HTTP {}{}",
        response.status().as_u16(),
        if wait.is_some() { "; waiting for its callback" } else { "" }
    ));
    Ok(StepOutput { wait, ..StepOutput::default() })
}

/// Stores a fresh single-use callback token for the sub-step after this one (the one that
/// takes the callback) and returns its absolute callback URL and the armed wait. Stored
/// before the call, so even an instant callback finds it.
async fn arm_callback(cx: &ExecutionContext<'_>) -> Result<(String, Wait), Failure> {
    let timeout_seconds = cx.loaded.definition.callback_timeout_seconds(cx.planned.step_index, cx.planned.destination);
    let waiting_step = StepId::from_sequence(cx.planned.sequence + 1);
    let base =
        cx.app.settings.public_base_url.as_deref().ok_or_else(|| {
            Failure::system("HANDOFF_PUBLIC_BASE_URL is not configured: no callback URL can be given")
        })?;
    let timeout_at = timeout_seconds.map(|s| cx.app.ports.clock.now() + ChronoDuration::seconds(s as i64));
    let secret = new_token();
    let token = CallbackToken {
        hash: CallbackToken::hash_of(&secret),
        exchange_id: cx.message.exchange_id.clone(),
        integration_code: cx.message.integration_code.clone(),
        integration_version: cx.message.integration_version,
        step_id: waiting_step,
        sub_step: cx
            .loaded
            .plan
            .get(waiting_step.sequence() as usize)
            .map_or(SubStep::ReceiveNotification, |p| p.sub_step),
        recovery: cx.message.recovery,
        parameters: cx.message.parameters.clone(),
        expires_at: timeout_at,
        parent: cx.message.parent.clone(),
    };
    cx.app
        .ports
        .exchanges
        .put_token(&token)
        .await
        .map_err(|e| Failure::transient(format!("storing the callback token: {e}")))?;
    let url = format!("{}/notifications/{secret}", base.trim_end_matches('/'));
    Ok((url, Wait { step_id: waiting_step, timeout_at }))
}

/// An unguessable token: 256 random bits, hex.
pub fn new_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The notification this sub-step runs on (its input).
async fn notification_from(cx: &ExecutionContext<'_>) -> Result<Notification, Failure> {
    let value = cx.input_json().await?;
    serde_json::from_value(value)
        .map_err(|e| Failure::system(format!("the stored callback is not a notification: {e}")))
}

/// The notification stored on the waiting step of this integration step (later sub-steps
/// run on collected data, not on the notification).
async fn stored_notification(cx: &ExecutionContext<'_>) -> Result<Notification, Failure> {
    let receive = cx
        .loaded
        .plan
        .iter()
        .find(|p| p.step_index == cx.planned.step_index && p.sub_step == SubStep::ReceiveNotification)
        .ok_or_else(|| Failure::system("no ReceiveNotification sub-step precedes this one"))?;
    let step = cx
        .app
        .ports
        .exchanges
        .get_step(&cx.message.exchange_id, StepId::from_sequence(receive.sequence))
        .await
        .map_err(|e| Failure::transient(format!("reading the notification: {e}")))?
        .ok_or_else(|| Failure::system("the waiting step is missing"))?;
    let payload = step.payload.ok_or_else(|| Failure::system("the waiting step holds no notification"))?;
    let bytes = cx.codec.load(&payload).await.map_err(payload_failure)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure::system(format!("the stored callback is not a notification: {e}")))
}

/// Stores a JSON value as the step's output (inline or as a data file set).
pub(crate) async fn store_value(cx: &ExecutionContext<'_>, value: &Value) -> Result<Payload, Failure> {
    let bytes = serde_json::to_vec(value).map_err(|e| Failure::system(e.to_string()))?;
    cx.codec.store(bytes.into(), "application/json").await.map_err(payload_failure)
}

async fn run_jq(cx: &ExecutionContext<'_>, program: &Expression, what: &str) -> Result<Value, Failure> {
    let input = cx.input_json().await?;
    let values = cx.run_program(program, input, what).await?;
    handoff_core::expression::single(values).map_err(|e| expression_failure(cx, what, e))
}

/// An external system's answer as a stream, with its content type.
pub(crate) fn response_stream(response: reqwest::Response) -> (String, ByteStream) {
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    (content_type, Box::pin(response.bytes_stream().map_err(std::io::Error::other)))
}

/// Stores an external system's answer as the step's output, streaming large ones.
pub(crate) async fn store_response(cx: &ExecutionContext<'_>, response: reqwest::Response) -> Result<Payload, Failure> {
    let (content_type, body) = response_stream(response);
    cx.codec.store_stream(body, &content_type).await.map_err(payload_failure)
}

pub(crate) fn describe_payload(payload: &Payload) -> String {
    match payload {
        Payload::Raw { raw } => format!("{} bytes inline", raw.len()),
        Payload::DataFileSet { data_file_set_id } => format!("stored as data file set {data_file_set_id}"),
    }
}
