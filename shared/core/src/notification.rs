//! The callback an external system posts to `POST /notifications/{token}`.

use crate::reader::{FieldError, ObjectReader};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationStatus {
    Success,
    Failure,
}

/// A file the external system offers for download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationFile {
    pub name: String,
    pub url: String,
}

/// A recovery link an `autoRecovery` step calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryLink {
    pub url: String,
    #[serde(default = "post")]
    pub method: String,
}

fn post() -> String {
    "POST".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub status: NotificationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<NotificationFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovery_links: Vec<RecoveryLink>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Value>,
}

/// Parses a callback body, naming the field of any problem.
pub fn parse_notification(body: &Value) -> Result<Notification, FieldError> {
    let r = ObjectReader::new("", body)?;
    r.deny_unknown(&["status", "reason", "data", "files", "recoveryLinks", "messages"])?;
    let status = match r.required_str("status")? {
        "success" => NotificationStatus::Success,
        "failure" => NotificationStatus::Failure,
        other => return Err(FieldError::new("status", format!("'{other}' is not success or failure"))),
    };
    let reason = r.optional_str("reason")?.map(str::to_string);
    if status == NotificationStatus::Failure && reason.is_none() {
        return Err(FieldError::new("reason", "is required when status is failure"));
    }
    let mut files = Vec::new();
    if r.has("files") {
        for (i, f) in r.required_array("files")?.iter().enumerate() {
            let f = ObjectReader::new(format!("files[{i}]"), f)?;
            f.deny_unknown(&["name", "url"])?;
            let name = f.required_str("name")?;
            if name.contains('/') || name.starts_with('.') {
                return Err(FieldError::new(f.field_path("name"), "must be a plain file name"));
            }
            let url = f.required_str("url")?;
            url::Url::parse(url)
                .map_err(|e| FieldError::new(f.field_path("url"), format!("not an absolute URL ({e})")))?;
            files.push(NotificationFile { name: name.into(), url: url.into() });
        }
    }
    let mut recovery_links = Vec::new();
    if r.has("recoveryLinks") {
        for (i, l) in r.required_array("recoveryLinks")?.iter().enumerate() {
            let l = ObjectReader::new(format!("recoveryLinks[{i}]"), l)?;
            l.deny_unknown(&["url", "method"])?;
            let url = l.required_str("url")?;
            url::Url::parse(url)
                .map_err(|e| FieldError::new(l.field_path("url"), format!("not an absolute URL ({e})")))?;
            recovery_links.push(RecoveryLink {
                url: url.into(),
                method: l.optional_str("method")?.unwrap_or("POST").to_ascii_uppercase(),
            });
        }
    }
    let messages = if r.has("messages") { r.required_array("messages")?.clone() } else { Vec::new() };
    Ok(Notification { status, reason, data: r.get("data").cloned(), files, recovery_links, messages })
}

/// What an agent reports about a delivery in its callback's `data`:
/// `{"processed": ["a.csv"], "errors": [{"file": "b.csv", "message": "..."}]}`; both lists
/// are optional (no `data` at all reads as an empty report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentReport {
    pub processed: Vec<String>,
    pub errors: Vec<AgentFileError>,
}

/// One file the agent could not process, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFileError {
    pub file: String,
    pub message: String,
}

/// Reads an agent's report out of a notification, naming the field of any problem
/// (`data.errors[0].file`), so a malformed report is refused at the notification endpoint.
pub fn parse_agent_report(notification: &Notification) -> Result<AgentReport, FieldError> {
    let Some(data) = notification.data.as_ref().filter(|d| !d.is_null()) else {
        return Ok(AgentReport::default());
    };
    let r = ObjectReader::new("data", data)?;
    r.deny_unknown(&["processed", "errors"])?;
    let mut report = AgentReport::default();
    if r.has("processed") {
        for (i, file) in r.required_array("processed")?.iter().enumerate() {
            let name = file
                .as_str()
                .ok_or_else(|| FieldError::new(format!("data.processed[{i}]"), "must be a file name (a string)"))?;
            report.processed.push(name.to_string());
        }
    }
    if r.has("errors") {
        for (i, e) in r.required_array("errors")?.iter().enumerate() {
            let e = ObjectReader::new(format!("data.errors[{i}]"), e)?;
            e.deny_unknown(&["file", "message"])?;
            report.errors.push(AgentFileError {
                file: e.required_str("file")?.to_string(),
                message: e.required_str("message")?.to_string(),
            });
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_success_with_data_and_files() {
        let n = parse_notification(&json!({"status": "success", "data": {"a": 1},
            "files": [{"name": "out.csv", "url": "http://h.example/out.csv"}]}))
        .unwrap();
        assert_eq!(n.status, NotificationStatus::Success);
        assert_eq!(n.files[0].name, "out.csv");
    }

    #[test]
    fn agent_reports_are_read_and_their_bad_fields_named() {
        let n = |data: Value| parse_notification(&json!({"status": "success", "data": data})).unwrap();
        let report = parse_agent_report(&n(
            json!({"processed": ["a.csv"], "errors": [{"file": "b.csv", "message": "bad row 3"}]}),
        ))
        .unwrap();
        assert_eq!(report.processed, vec!["a.csv".to_string()]);
        assert_eq!(report.errors, vec![AgentFileError { file: "b.csv".into(), message: "bad row 3".into() }]);
        assert_eq!(
            parse_agent_report(&parse_notification(&json!({"status": "success"})).unwrap()).unwrap(),
            AgentReport::default()
        );
        assert_eq!(
            parse_agent_report(&n(json!({"errors": [{"file": "b.csv"}]}))).unwrap_err().path,
            "data.errors[0].message"
        );
        assert_eq!(parse_agent_report(&n(json!({"processed": [1]}))).unwrap_err().path, "data.processed[0]");
        assert_eq!(parse_agent_report(&n(json!({"done": []}))).unwrap_err().path, "data.done");
    }

    #[test]
    fn failure_needs_a_reason_and_fields_are_named() {
        assert_eq!(parse_notification(&json!({"status": "failure"})).unwrap_err().path, "reason");
        assert_eq!(parse_notification(&json!({"status": "maybe"})).unwrap_err().path, "status");
        assert_eq!(
            parse_notification(&json!({"status": "success", "files": [{"name": "../x", "url": "http://h.example"}]}))
                .unwrap_err()
                .path,
            "files[0].name"
        );
        assert_eq!(parse_notification(&json!({"status": "success", "extra": 1})).unwrap_err().path, "extra");
    }
}
