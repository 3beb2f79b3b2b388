//! Deliveries beyond REST — SFTP, multipart file upload, on-premise agents — and custom
//! data collection. Each destination of a delivery step is its own sub-step (the main one
//! first, SPEC §2), so every destination has its own attempts and its own status.

use super::{ExecutionContext, Extras, StepOutput};
use crate::payloads::PAYLOAD_FILE;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{stream, StreamExt};
use handoff_core::definition::{Destination, DestinationTarget, StepAction};
use handoff_core::error_code::ErrorCode;
use handoff_core::exchange::Payload;
use handoff_core::plan::SubStep;
use handoff_core::retry::Failure;
use handoff_ports::ByteStream;

mod agent;
mod custom;
mod file_upload;
mod sftp;

/// The sub-steps this module executes.
pub(super) fn handles(sub_step: SubStep) -> bool {
    matches!(
        sub_step,
        SubStep::DeliverSftp
            | SubStep::DeliverFileUpload
            | SubStep::CheckAgentHealth
            | SubStep::InvokeAgent
            | SubStep::ReceiveAgentNotification
            | SubStep::InvokeCustom
    )
}

/// Delivers over SFTP. Handed to [`run`] as a function pointer returning a boxed future, so
/// that a function not given it holds no SFTP future, not even in its executor's drop glue,
/// and links no SSH code.
pub(super) type SftpDeliverer = for<'a, 'b> fn(
    &'a ExecutionContext<'b>,
    &'a DestinationTarget,
    &'a mut Vec<String>,
) -> BoxFuture<'a, Result<StepOutput, Failure>>;

/// The SFTP delivery (see [`SftpDeliverer`]).
pub(super) fn deliver_sftp<'a, 'b>(
    cx: &'a ExecutionContext<'b>,
    target: &'a DestinationTarget,
    logs: &'a mut Vec<String>,
) -> BoxFuture<'a, Result<StepOutput, Failure>> {
    Box::pin(sftp::deliver(cx, target, logs))
}

/// Runs one of these sub-steps; SFTP deliveries with `sftp` (without it, this function does
/// not deliver over SFTP and says so).
pub(super) async fn run(
    cx: &ExecutionContext<'_>,
    logs: &mut Vec<String>,
    user_logs: &mut Vec<String>,
    extras: &mut Extras,
    sftp: Option<SftpDeliverer>,
) -> Result<StepOutput, Failure> {
    let sub_step = cx.planned.sub_step;
    if sub_step == SubStep::InvokeCustom {
        return custom::collect(cx, logs).await;
    }
    let destination = destination(cx)?;
    match (sub_step, &destination.target) {
        (SubStep::DeliverSftp, DestinationTarget::Sftp { .. }) => match sftp {
            Some(deliver) => deliver(cx, &destination.target, logs).await,
            None => Err(Failure::system("this function does not deliver over SFTP (the deliver-sftp worker does)")),
        },
        (SubStep::DeliverFileUpload, DestinationTarget::FileUpload { request, field_name }) => {
            file_upload::deliver(cx, request, field_name, logs).await
        }
        (SubStep::CheckAgentHealth, DestinationTarget::Agent { health_url, .. }) => {
            agent::check_health(cx, health_url, logs).await
        }
        (SubStep::InvokeAgent, DestinationTarget::Agent { request, .. }) => agent::invoke(cx, request, logs).await,
        (SubStep::ReceiveAgentNotification, DestinationTarget::Agent { .. }) => {
            agent::receive(cx, logs, user_logs, extras).await
        }
        (other, _) => Err(Failure::system(format!("sub-step {other} does not match the kind of its destination"))),
    }
}

/// The destination this sub-step delivers to.
fn destination<'a>(cx: &'a ExecutionContext<'_>) -> Result<&'a Destination, Failure> {
    match cx.action() {
        Some(StepAction::Delivery { destinations }) => cx.planned.destination.and_then(|d| destinations.get(d)),
        _ => None,
    }
    .ok_or_else(|| Failure::system(format!("sub-step {} has no destination in its step", cx.planned.sub_step)))
}

/// One file of the payload being delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeliveryFile {
    name: String,
    content_type: String,
    size: u64,
}

/// The files of the step's input: an inline payload is one file named `payload`; a data file
/// set is each of its files. Nothing to deliver is the data's problem, not ours.
async fn delivery_files(cx: &ExecutionContext<'_>) -> Result<Vec<DeliveryFile>, Failure> {
    match cx.message.input.as_ref() {
        None => Err(Failure::business(
            ErrorCode::NothingToDeliver,
            "there is no payload to deliver (the steps before produced none)",
        )),
        Some(Payload::Raw { raw }) => Ok(vec![DeliveryFile {
            name: PAYLOAD_FILE.to_string(),
            content_type: sniff_content_type(raw).to_string(),
            size: raw.len() as u64,
        }]),
        Some(Payload::DataFileSet { data_file_set_id }) => {
            let files = cx
                .app
                .ports
                .files
                .list(data_file_set_id)
                .await
                .map_err(|e| Failure::transient(format!("listing data file set {data_file_set_id}: {e}")))?;
            if files.is_empty() {
                return Err(Failure::business(
                    ErrorCode::NothingToDeliver,
                    format!("data file set {data_file_set_id} holds no file to deliver"),
                ));
            }
            Ok(files
                .into_iter()
                .map(|f| DeliveryFile { name: f.name, content_type: f.content_type, size: f.size })
                .collect())
        }
    }
}

/// Opens one file of the input as a stream (from object storage for a data file set).
async fn open_file(cx: &ExecutionContext<'_>, file: &DeliveryFile) -> Result<ByteStream, Failure> {
    match cx.message.input.as_ref() {
        Some(Payload::Raw { raw }) => {
            let bytes = Bytes::from(raw.clone());
            Ok(stream::once(async move { Ok(bytes) }).boxed())
        }
        Some(Payload::DataFileSet { data_file_set_id }) => cx
            .app
            .ports
            .files
            .read(data_file_set_id, &file.name)
            .await
            .map_err(|e| Failure::transient(format!("reading {} of data file set {data_file_set_id}: {e}", file.name)))?
            .map(|(_, body)| body)
            .ok_or_else(|| Failure::system(format!("data file set {data_file_set_id} lost its file {}", file.name))),
        None => Err(Failure::business(ErrorCode::NothingToDeliver, "there is no payload to deliver")),
    }
}

/// Inline payloads carry no content type: JSON is recognised, anything else is text.
fn sniff_content_type(raw: &str) -> &'static str {
    if serde_json::from_str::<serde::de::IgnoredAny>(raw).is_ok() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_payloads_are_typed_by_their_content() {
        assert_eq!(sniff_content_type(r#"[{"a": 1}]"#), "application/json");
        assert_eq!(sniff_content_type("a,b\n1,2\n"), "text/plain; charset=utf-8");
    }

    #[test]
    fn every_delivery_sub_step_is_handled_here() {
        for s in [
            SubStep::DeliverSftp,
            SubStep::DeliverFileUpload,
            SubStep::CheckAgentHealth,
            SubStep::InvokeAgent,
            SubStep::ReceiveAgentNotification,
            SubStep::InvokeCustom,
        ] {
            assert!(handles(s), "{s}");
        }
        assert!(!handles(SubStep::DeliverRest));
    }
}
