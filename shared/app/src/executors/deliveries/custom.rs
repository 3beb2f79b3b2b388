//! `dataCollection` / `custom`: either a jq program over the payload (with `$parameters`
//! and `$exchange`), whose result becomes the payload, or one HTTP call, whose answer does.
//! The call sends its templated body if it has one; otherwise, for methods that carry a
//! body (POST, PUT, PATCH), the current payload; GET and the rest send none.

use crate::executors::{describe_payload, run_jq, store_response, store_value, ExecutionContext, StepOutput};
use crate::outbound::{self, OutboundBody};
use handoff_core::definition::StepAction;
use handoff_core::retry::Failure;

pub(super) async fn collect(cx: &ExecutionContext<'_>, logs: &mut Vec<String>) -> Result<StepOutput, Failure> {
    let Some(StepAction::Custom { function, request }) = cx.action() else {
        return Err(Failure::system("sub-step InvokeCustom on a step that is not a custom data collection"));
    };
    if let Some(program) = function {
        let value = run_jq(cx, program, "custom data collection").await?;
        let payload = store_value(cx, &value).await?;
        logs.push(format!("Custom data collected by jq: {}", describe_payload(&payload)));
        return Ok(StepOutput { payload: Some(payload), ..StepOutput::default() });
    }
    let request = request
        .as_ref()
        .ok_or_else(|| Failure::system("a custom data collection declares neither function nor request"))?;
    let rendered = outbound::render(request, &cx.placeholders())?;
    let target = format!("{} {}", rendered.method, outbound::redact_query(&rendered.url));
    let sends_payload = request.body.is_none() && sends_body(&rendered.method);
    let body = match cx.message.input.as_ref() {
        Some(payload) if sends_payload => cx.payload_body(payload, "application/json".into()).await?,
        _ => OutboundBody::Empty,
    };
    let response = outbound::send(cx.http, rendered, body, &[]).await?;
    let status = response.status().as_u16();
    let payload = store_response(cx, response).await?;
    logs.push(format!("Custom data collected from {target}: HTTP {status}, {}", describe_payload(&payload)));
    Ok(StepOutput { payload: Some(payload), ..StepOutput::default() })
}

fn sends_body(method: &reqwest::Method) -> bool {
    matches!(*method, reqwest::Method::POST | reqwest::Method::PUT | reqwest::Method::PATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_methods_with_a_body_send_the_payload() {
        assert!(sends_body(&reqwest::Method::POST));
        assert!(!sends_body(&reqwest::Method::GET));
        assert!(!sends_body(&reqwest::Method::DELETE));
    }
}
