//! Deliveries through an on-premise agent: `CheckAgentHealth` (GET the health URL; any
//! 2xx is healthy, anything else — including a 4xx — is retried, since an agent that is
//! down or restarting answers all sorts of things), `InvokeAgent` (POST the delivery with a
//! callback URL; only `201 Created` accepts it, any other 2xx is a business error) and
//! `ReceiveAgentNotification` (the agent's report).
//!
//! Per-file errors in the report are recorded on the step — one user log line and one
//! business error record (not failing the exchange) per file. They fail the step only when
//! the agent processed no file at all: a partial delivery is a success with known rejects,
//! which the customer fixes in the data, while nothing delivered is a failed delivery. A
//! `failure` notification fails the step; no answer within the agent's `timeoutSeconds`
//! (else the step's, else [`handoff_core::definition::DEFAULT_AGENT_TIMEOUT_SECONDS`]) fails it with `Timeout`
//! (recoverable: recovery calls the agent again).

use super::{delivery_files, DeliveryFile};
use crate::executors::{arm_callback, idempotency_key, notification_from, ExecutionContext, Extras, StepOutput};
use crate::outbound::{self, OutboundBody};
use handoff_core::definition::RequestTemplate;
use handoff_core::error_code::ErrorCode;
use handoff_core::exchange::Payload;
use handoff_core::notification::{parse_agent_report, AgentReport, NotificationStatus};
use handoff_core::recovery::input_before;
use handoff_core::retry::Failure;
use serde_json::json;

/// Longest per-file message kept in logs and error records.
const MAX_MESSAGE_CHARS: usize = 1000;

pub(super) async fn check_health(
    cx: &ExecutionContext<'_>,
    health_url: &str,
    logs: &mut Vec<String>,
) -> Result<StepOutput, Failure> {
    let template = RequestTemplate {
        method: "GET".into(),
        url: health_url.to_string(),
        headers: Vec::new(),
        body: None,
        follow_redirects: false,
    };
    let rendered = outbound::render(&template, &cx.placeholders())?;
    let target = outbound::redact_query(&rendered.url).to_string();
    let response = outbound::send(cx.http, rendered, OutboundBody::Empty, &[])
        .await
        .map_err(|f| Failure::transient(format!("agent health check: {}", f.message)))?;
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(Failure::transient(format!("agent health check GET {target} answered HTTP {status}")));
    }
    logs.push(format!("Agent at {target} is healthy (HTTP {status})"));
    Ok(StepOutput::default())
}

pub(super) async fn invoke(
    cx: &ExecutionContext<'_>,
    request: &RequestTemplate,
    logs: &mut Vec<String>,
) -> Result<StepOutput, Failure> {
    let rendered = outbound::render(request, &cx.placeholders())?;
    let target = format!("{} {}", rendered.method, outbound::redact_query(&rendered.url));
    let body = if request.body.is_some() { OutboundBody::Empty } else { delivery_body(cx).await? };
    let (callback_url, wait) = arm_callback(cx).await?;
    let headers = [("Idempotency-Key", idempotency_key(cx.message)), (outbound::CALLBACK_HEADER, callback_url)];
    let response = outbound::send(cx.http, rendered, body, &headers).await?;
    let status = response.status().as_u16();
    if status != 201 {
        return Err(Failure::business(
            ErrorCode::TargetRejected,
            format!("agent {target} answered HTTP {status}; only 201 Created accepts a delivery"),
        ));
    }
    let until = wait
        .timeout_at
        .map_or_else(|| "no deadline".to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    logs.push(format!("Agent {target} accepted the delivery (HTTP 201); waiting for its report until {until}"));
    Ok(StepOutput { wait: Some(wait), ..StepOutput::default() })
}

/// What the agent is sent: the payload itself when it is one document, else a manifest of
/// the data file set's files with their download URLs on this API.
async fn delivery_body(cx: &ExecutionContext<'_>) -> Result<OutboundBody, Failure> {
    let Some(payload) = cx.message.input.as_ref() else {
        return Ok(OutboundBody::Empty);
    };
    let files = delivery_files(cx).await?;
    match (payload, files.as_slice()) {
        (Payload::DataFileSet { data_file_set_id }, files) if !is_single_payload(files) => {
            let base = cx.app.settings.public_base_url.as_deref().unwrap_or("").trim_end_matches('/');
            let manifest = json!({
                "dataFileSetId": data_file_set_id,
                "files": files.iter().map(|f| json!({
                    "name": f.name, "size": f.size, "contentType": f.content_type,
                    "url": format!("{base}/data-file-sets/{data_file_set_id}/files/{}", f.name),
                })).collect::<Vec<_>>(),
            });
            let bytes = bytes::Bytes::from(manifest.to_string());
            let length = Some(bytes.len() as u64);
            Ok(OutboundBody::Stream {
                body: Box::pin(futures::stream::once(async move { Ok(bytes) })),
                content_type: "application/vnd.handoff.manifest+json".into(),
                length,
            })
        }
        _ => {
            cx.payload_body(payload, files.first().map_or("application/json".into(), |f| f.content_type.clone())).await
        }
    }
}

fn is_single_payload(files: &[DeliveryFile]) -> bool {
    matches!(files, [only] if only.name == crate::payloads::PAYLOAD_FILE)
}

pub(super) async fn receive(
    cx: &ExecutionContext<'_>,
    logs: &mut Vec<String>,
    user_logs: &mut Vec<String>,
    extras: &mut Extras,
) -> Result<StepOutput, Failure> {
    // The input is the agent's notification; what flows on is what was delivered.
    extras.pass_on = delivered_payload(cx).await?;
    let notification = notification_from(cx).await?;
    if notification.status == NotificationStatus::Failure {
        let reason = notification.reason.unwrap_or_else(|| "no reason given".into());
        return Err(Failure::business(ErrorCode::CallbackFailure, format!("the agent reported failure: {reason}")));
    }
    let report = parse_agent_report(&notification)
        .map_err(|e| Failure::business(ErrorCode::CallbackFailure, format!("the agent's report: {e}")))?;
    let (lines, rejected) = file_errors(&report);
    user_logs.extend(lines);
    extras.recorded.extend(rejected);
    logs.push(format!("Agent reported {} file(s) processed, {} rejected", report.processed.len(), report.errors.len()));
    step_outcome(&report)
}

/// The log lines and error records of an agent's per-file errors.
fn file_errors(report: &AgentReport) -> (Vec<String>, Vec<Failure>) {
    report
        .errors
        .iter()
        .map(|e| {
            let message: String = e.message.chars().take(MAX_MESSAGE_CHARS).collect();
            (
                format!("File {}: {message}", e.file),
                Failure::business(ErrorCode::CallbackFailure, format!("the agent rejected file {}: {message}", e.file)),
            )
        })
        .unzip()
}

/// Rejects alone fail the step; some processed files make it a success (see module docs).
fn step_outcome(report: &AgentReport) -> Result<StepOutput, Failure> {
    match (report.processed.len(), report.errors.first()) {
        (0, Some(first)) => Err(Failure::business(
            ErrorCode::CallbackFailure,
            format!(
                "the agent processed none of the files: {} rejected (first: {}: {})",
                report.errors.len(),
                first.file,
                first.message.chars().take(MAX_MESSAGE_CHARS).collect::<String>()
            ),
        )),
        _ => Ok(StepOutput::default()),
    }
}

/// The payload the delivery step runs on: the output of the nearest earlier step.
async fn delivered_payload(cx: &ExecutionContext<'_>) -> Result<Option<Payload>, Failure> {
    let detail = cx
        .app
        .ports
        .exchanges
        .get(&cx.message.exchange_id)
        .await
        .map_err(|e| Failure::transient(format!("reading the exchange: {e}")))?
        .ok_or_else(|| Failure::system("the exchange is missing"))?;
    let index = detail.steps.iter().position(|s| s.step_id == cx.message.step_id).unwrap_or(detail.steps.len());
    Ok(input_before(&detail.steps, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_core::notification::AgentFileError;

    fn report(processed: &[&str], errors: &[(&str, &str)]) -> AgentReport {
        AgentReport {
            processed: processed.iter().map(|s| s.to_string()).collect(),
            errors: errors
                .iter()
                .map(|(f, m)| AgentFileError { file: f.to_string(), message: m.to_string() })
                .collect(),
        }
    }

    #[test]
    fn partial_rejects_are_recorded_and_the_step_succeeds() {
        let r = report(&["a.csv"], &[("b.csv", "bad row 3")]);
        let (lines, records) = file_errors(&r);
        assert_eq!(lines, ["File b.csv: bad row 3"]);
        assert!(records[0].message.contains("b.csv") && !records[0].retryable);
        assert!(step_outcome(&r).is_ok());
    }

    #[test]
    fn only_rejects_fail_the_step_and_an_empty_report_succeeds() {
        let failure = step_outcome(&report(&[], &[("a.csv", "x"), ("b.csv", "y")])).unwrap_err();
        assert!(failure.message.contains("2 rejected"), "{}", failure.message);
        assert!(step_outcome(&report(&[], &[])).is_ok());
    }

    #[test]
    fn a_single_payload_file_is_sent_as_is() {
        let file = |name: &str| DeliveryFile { name: name.into(), content_type: "text/csv".into(), size: 1 };
        assert!(is_single_payload(&[file("payload")]));
        assert!(!is_single_payload(&[file("a.csv")]));
        assert!(!is_single_payload(&[file("payload"), file("b.csv")]));
    }
}
