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
            url::Url::parse(url).map_err(|e| FieldError::new(f.field_path("url"), format!("not an absolute URL ({e})")))?;
            files.push(NotificationFile { name: name.into(), url: url.into() });
        }
    }
    let mut recovery_links = Vec::new();
    if r.has("recoveryLinks") {
        for (i, l) in r.required_array("recoveryLinks")?.iter().enumerate() {
            let l = ObjectReader::new(format!("recoveryLinks[{i}]"), l)?;
            l.deny_unknown(&["url", "method"])?;
            let url = l.required_str("url")?;
            url::Url::parse(url).map_err(|e| FieldError::new(l.field_path("url"), format!("not an absolute URL ({e})")))?;
            recovery_links.push(RecoveryLink { url: url.into(), method: l.optional_str("method")?.unwrap_or("POST").to_ascii_uppercase() });
        }
    }
    let messages = if r.has("messages") { r.required_array("messages")?.clone() } else { Vec::new() };
    Ok(Notification { status, reason, data: r.get("data").cloned(), files, recovery_links, messages })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_success_with_data_and_files() {
        let n = parse_notification(&json!({"status": "success", "data": {"a": 1},
            "files": [{"name": "out.csv", "url": "http://h.example/out.csv"}]})).unwrap();
        assert_eq!(n.status, NotificationStatus::Success);
        assert_eq!(n.files[0].name, "out.csv");
    }

    #[test]
    fn failure_needs_a_reason_and_fields_are_named() {
        assert_eq!(parse_notification(&json!({"status": "failure"})).unwrap_err().path, "reason");
        assert_eq!(parse_notification(&json!({"status": "maybe"})).unwrap_err().path, "status");
        assert_eq!(
            parse_notification(&json!({"status": "success", "files": [{"name": "../x", "url": "http://h.example"}]})).unwrap_err().path,
            "files[0].name"
        );
        assert_eq!(parse_notification(&json!({"status": "success", "extra": 1})).unwrap_err().path, "extra");
    }
}
