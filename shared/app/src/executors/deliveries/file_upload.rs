//! `fileUpload` deliveries: each file of the payload is one multipart/form-data request to
//! the endpoint, the file streamed as the part named `fieldName`. One request per file keeps
//! each upload bounded and lets every file carry its own `Idempotency-Key` (stable across
//! retries: derived from the exchange, the sub-step and the file name), so a retry after a
//! partial success re-sends the earlier files with keys the target has already seen.

use super::{delivery_files, open_file, DeliveryFile};
use crate::executors::{idempotency_key, ExecutionContext, StepOutput};
use crate::outbound::{self, OutboundBody};
use handoff_core::definition::RequestTemplate;
use handoff_core::retry::Failure;
use reqwest::multipart::{Form, Part};
use sha2::{Digest, Sha256};

pub(super) async fn deliver(
    cx: &ExecutionContext<'_>,
    request: &RequestTemplate,
    field_name: &str,
    logs: &mut Vec<String>,
) -> Result<StepOutput, Failure> {
    let files = delivery_files(cx).await?;
    let step_key = idempotency_key(cx.message);
    for file in &files {
        let rendered = outbound::render(request, &cx.placeholders())?;
        let target = format!("{} {}", rendered.method, outbound::redact_query(&rendered.url));
        let form = form_for(cx, file, field_name).await?;
        let key = file_key(&step_key, &file.name);
        let response =
            outbound::send(cx.http, rendered, OutboundBody::Multipart(form), &[("Idempotency-Key", key)]).await?;
        logs.push(format!(
            "Uploaded {} ({} bytes) to {target}: HTTP {}",
            file.name,
            file.size,
            response.status().as_u16()
        ));
    }
    Ok(StepOutput::default())
}

/// A one-part form streaming the file (its length is known, so no chunked part).
async fn form_for(cx: &ExecutionContext<'_>, file: &DeliveryFile, field_name: &str) -> Result<Form, Failure> {
    let body = open_file(cx, file).await?;
    let part = Part::stream_with_length(reqwest::Body::wrap_stream(body), file.size)
        .file_name(file.name.clone())
        .mime_str(&file.content_type)
        .map_err(|e| Failure::system(format!("stored content type '{}' of {}: {e}", file.content_type, file.name)))?;
    Ok(Form::new().part(field_name.to_string(), part))
}

/// The per-file idempotency key: the sub-step's key combined with the file name.
fn file_key(step_key: &str, file_name: &str) -> String {
    hex::encode(&Sha256::digest(format!("{step_key}/{file_name}"))[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_are_stable_and_distinct_per_file() {
        assert_eq!(file_key("k", "a.csv"), file_key("k", "a.csv"));
        assert_ne!(file_key("k", "a.csv"), file_key("k", "b.csv"));
        assert_ne!(file_key("k", "a.csv"), file_key("j", "a.csv"));
        assert_eq!(file_key("k", "a.csv").len(), 32);
    }
}
