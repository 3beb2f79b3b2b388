//! Where the links in a partner's answer may point. A callback's `files[].url` and
//! `recoveryLinks[].url` are followed by the gateway and what they answer is stored for
//! reading: a link to any host would let whoever can post a callback make the gateway
//! fetch from anywhere. So a link must be on the host of the step's own request, or on a
//! host the step lists in `allowedLinkHosts` (e.g. the storage its partner hands out
//! presigned URLs on).

use crate::definition::{IntegrationStep, StepAction};
use crate::reader::{FieldError, FieldResult, ObjectReader};
use serde_json::Value;

/// Reads a step's `allowedLinkHosts`: host names (lower-cased), no scheme, port or path.
pub fn parse_allowed_link_hosts(step: &ObjectReader) -> FieldResult<Vec<String>> {
    let Some(value) = step.get("allowedLinkHosts") else {
        return Ok(Vec::new());
    };
    let path = step.field_path("allowedLinkHosts");
    let Value::Array(items) = value else {
        return Err(FieldError::new(path, "must be a list of host names"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let host = item.as_str().map(str::trim).filter(|h| !h.is_empty());
            let valid = host.filter(|h| h.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
            valid
                .map(str::to_ascii_lowercase)
                .ok_or_else(|| FieldError::new(format!("{path}[{i}]"), "must be a host name (no scheme, port or path)"))
        })
        .collect()
}

/// The host of the step's own request, if its action has one.
fn request_host(step: &IntegrationStep) -> Option<String> {
    let url = match &step.action {
        StepAction::Extract { request, .. } | StepAction::InvokeProcess { request, .. } => &request.url,
        StepAction::Query { request } => &request.url,
        StepAction::Custom { request: Some(request), .. } => &request.url,
        _ => return None,
    };
    // Placeholders may not fill a host (the definition refuses it), so the host is literal.
    let literal = url.split("{{").next().unwrap_or(url);
    url::Url::parse(literal).ok()?.host_str().map(str::to_ascii_lowercase)
}

/// Whether `link` may be followed for `step`; the reason when not.
pub fn check_link(step: &IntegrationStep, link: &str) -> Result<(), String> {
    let parsed = url::Url::parse(link).map_err(|_| format!("link '{}' is not an absolute URL", shown(link)))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("link '{}' must use http or https", shown(link)));
    }
    let host = parsed.host_str().map(str::to_ascii_lowercase).unwrap_or_default();
    if request_host(step).as_deref() == Some(host.as_str()) || step.allowed_link_hosts.contains(&host) {
        return Ok(());
    }
    Err(format!(
        "link '{}' is on host '{host}', neither the host of step {}'s request nor in its allowedLinkHosts",
        shown(link),
        step.name
    ))
}

/// A link as errors show it: without its query (presigned URLs carry credentials there).
fn shown(link: &str) -> &str {
    link.split('?').next().unwrap_or(link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::parse_definition;
    use serde_json::json;

    fn step(extra: Value) -> IntegrationStep {
        let mut step = json!({"name": "job", "type": "invokeProcess", "kind": "process",
                              "request": {"url": "https://partner.example/jobs/{{parameters.id}}"}, "expectNotification": true});
        if let (Value::Object(step), Value::Object(extra)) = (&mut step, extra) {
            step.extend(extra);
        }
        parse_definition(&json!({"code": "C", "version": 1, "steps": [step]})).expect("valid").steps.remove(0)
    }

    #[test]
    fn links_follow_the_step_request_host_or_its_list() {
        let plain = step(json!({}));
        assert!(check_link(&plain, "https://partner.example/files/1.csv").is_ok());
        assert!(check_link(&plain, "https://PARTNER.example/files/1.csv").is_ok(), "hosts compare case-blind");
        let error = check_link(&plain, "http://169.254.169.254/latest/meta-data?x=secret").expect_err("elsewhere");
        assert!(error.contains("169.254.169.254") && !error.contains("secret"), "{error}");
        assert!(check_link(&plain, "file:///etc/passwd").is_err());
        let listed = step(json!({"allowedLinkHosts": ["bucket.s3.amazonaws.com"]}));
        assert!(check_link(&listed, "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=1").is_ok());
        assert!(check_link(&listed, "https://other.s3.amazonaws.com/k").is_err());
    }

    #[test]
    fn allowed_hosts_are_host_names() {
        let bad = json!({"code": "C", "version": 1, "steps": [{"name": "job", "type": "invokeProcess", "kind": "process",
            "request": {"url": "https://p.example/"}, "allowedLinkHosts": ["https://x.example/"]}]});
        let error = parse_definition(&bad).expect_err("not a host");
        assert_eq!(error.path, "steps[0].allowedLinkHosts[0]");
    }
}
