//! What the owner of an integration and its monitors are told when something ends badly
//! (issue 11, points 1 and 8): which commits end an exchange and how ([`ExchangeEnd`]), the
//! heartbeat ping a scheduled integration's run sends when it ends, the `notify` targets a
//! definition names, and the short [`Notice`] they receive — the integration code, the
//! exchange, the error code with its action and a link, never a payload value nor the
//! failure's own text (which may quote the data).

use crate::commit::{ExchangeChange, StepCommit};
use crate::error_code::ErrorCode;
use crate::exchange::{ExchangeError, ExchangeStatus};
use crate::heartbeat::Ping;
use crate::ids::{ExchangeId, IntegrationCode};
use crate::reader::{FieldError, FieldResult, ObjectReader};
use crate::retry::ErrorClassification;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// The most `notify` targets one integration may name.
pub const MAX_NOTIFY_TARGETS: usize = 5;
/// The longest subject SNS accepts (and e-mail clients show).
pub const MAX_SUBJECT_CHARS: usize = 100;

/// What a notice tells of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NoticeEvent {
    /// An exchange failed, and nothing will re-drive it on its own.
    ExchangeFailed,
    /// An exchange timed out (its SLA, a callback or a sign-off did not come in time).
    ExchangeTimedOut,
    /// A system failure halted the integration's endpoint: its exchanges are held.
    EndpointHalted,
}

impl NoticeEvent {
    pub const ALL: [NoticeEvent; 3] = [Self::ExchangeFailed, Self::ExchangeTimedOut, Self::EndpointHalted];

    pub fn name(self) -> &'static str {
        match self {
            Self::ExchangeFailed => "exchangeFailed",
            Self::ExchangeTimedOut => "exchangeTimedOut",
            Self::EndpointHalted => "endpointHalted",
        }
    }

    fn headline(self) -> &'static str {
        match self {
            Self::ExchangeFailed => "exchange failed",
            Self::ExchangeTimedOut => "exchange timed out",
            Self::EndpointHalted => "endpoint halted",
        }
    }
}

/// Where a notice goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    /// POSTed as JSON (`{"webhook": "https://…"}`). Stored in the definition, so visible to
    /// whoever may read it; never logged whole.
    Webhook(url::Url),
    /// Published to an SNS topic (`{"snsTopicArn": "arn:aws:sns:…"}`), whose subscribers
    /// (mail, chat, a queue) take it from there.
    SnsTopic(String),
}

impl NotifyTarget {
    /// What logs may show of the target: a webhook's scheme and host only (its path is
    /// often the credential, as with chat webhooks); a topic's ARN.
    pub fn redacted(&self) -> String {
        match self {
            Self::Webhook(url) => format!("{}://{}/…", url.scheme(), url.host_str().unwrap_or("")),
            Self::SnsTopic(arn) => arn.clone(),
        }
    }
}

/// One entry of `notify`: a target and the events it wants (all of them by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub target: NotifyTarget,
    pub on: Vec<NoticeEvent>,
}

/// Reads `"notify": [{"webhook": URL | "snsTopicArn": ARN, "on": [events]}]`.
pub fn parse_notify(root: &ObjectReader) -> FieldResult<Vec<Notify>> {
    let Some(value) = root.get("notify") else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = value else {
        return Err(FieldError::new(
            "notify",
            "must be a list of targets ({\"webhook\": URL} or {\"snsTopicArn\": ARN})",
        ));
    };
    if items.len() > MAX_NOTIFY_TARGETS {
        return Err(FieldError::new("notify", format!("names {} targets; at most {MAX_NOTIFY_TARGETS}", items.len())));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let entry = ObjectReader::new(format!("notify[{i}]"), item)?;
            entry.deny_unknown(&["webhook", "snsTopicArn", "on"])?;
            let target = match (entry.optional_str("webhook")?, entry.optional_str("snsTopicArn")?) {
                (Some(url), None) => NotifyTarget::Webhook(
                    parse_webhook(url).map_err(|p| FieldError::new(entry.field_path("webhook"), p))?,
                ),
                (None, Some(arn)) => NotifyTarget::SnsTopic(
                    parse_topic_arn(arn).map_err(|p| FieldError::new(entry.field_path("snsTopicArn"), p))?,
                ),
                _ => return Err(FieldError::new(entry.path(), "names exactly one of webhook or snsTopicArn")),
            };
            let on = match entry.get("on") {
                None => NoticeEvent::ALL.to_vec(),
                Some(Value::Array(events)) if !events.is_empty() => events
                    .iter()
                    .enumerate()
                    .map(|(j, e)| {
                        let name = e.as_str().unwrap_or_default();
                        NoticeEvent::ALL.into_iter().find(|n| n.name() == name).ok_or_else(|| {
                            FieldError::new(
                                format!("{}[{j}]", entry.field_path("on")),
                                "must be exchangeFailed, exchangeTimedOut or endpointHalted",
                            )
                        })
                    })
                    .collect::<FieldResult<Vec<_>>>()?,
                Some(_) => return Err(FieldError::new(entry.field_path("on"), "must be a non-empty list of events")),
            };
            Ok(Notify { target, on })
        })
        .collect()
}

fn parse_webhook(value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value.trim()).map_err(|e| format!("must be an absolute URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http(s) URL with a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (user:password@)".into());
    }
    Ok(url)
}

/// `arn:<partition>:sns:<region>:<account>:<topic>`, as SNS names its topics.
fn parse_topic_arn(value: &str) -> Result<String, String> {
    let parts: Vec<&str> = value.split(':').collect();
    let valid = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "sns"
        && !parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && !parts[5].is_empty()
        && parts[5].len() <= 256
        && parts[5].chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if valid {
        Ok(value.to_string())
    } else {
        Err("must be an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:TOPIC)".into())
    }
}

/// How an exchange ended, read from the commit that ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeEnd {
    pub exchange_id: ExchangeId,
    pub status: ExchangeStatus,
    pub error: Option<ExchangeError>,
    /// The recovery generation it ended in.
    pub recovery: u32,
}

impl ExchangeEnd {
    /// The end `commit` makes, if it makes the exchange final.
    pub fn of(commit: &StepCommit) -> Option<Self> {
        match &commit.exchange {
            ExchangeChange::SetStatus { to, error, .. } if to.is_final() => Some(Self {
                exchange_id: commit.exchange_id.clone(),
                status: *to,
                error: error.clone(),
                recovery: commit.recovery,
            }),
            _ => None,
        }
    }

    /// What the run's heartbeat is told: success, or a failure naming the exchange and its
    /// error code (not the error's text, which may quote the data).
    pub fn ping(&self) -> Ping {
        match self.status {
            ExchangeStatus::Completed => Ping::Success,
            status => {
                let code = self.error.as_ref().map_or(ErrorCode::Unclassified, |e| e.code);
                Ping::failed(&format!(
                    "exchange {} {}: {}. {}",
                    self.exchange_id,
                    status.name(),
                    code.name(),
                    code.action()
                ))
            }
        }
    }

    /// The notice the owner gets for this end, if any: a timeout always, a failure only when
    /// nothing re-drives it on its own ([`redriven_automatically`]).
    pub fn notice(
        &self,
        code: &IntegrationCode,
        auto_recovery_limit: u32,
        base_url: Option<&str>,
        at: DateTime<Utc>,
    ) -> Option<Notice> {
        let event = match self.status {
            ExchangeStatus::TimedOut => NoticeEvent::ExchangeTimedOut,
            ExchangeStatus::Failed
                if !self
                    .error
                    .as_ref()
                    .is_some_and(|e| redriven_automatically(e, self.recovery, auto_recovery_limit)) =>
            {
                NoticeEvent::ExchangeFailed
            }
            _ => return None,
        };
        let error_code = self.error.as_ref().map_or(ErrorCode::Unclassified, |e| e.code);
        Some(Notice {
            event,
            integration_code: code.clone(),
            exchange_id: Some(self.exchange_id.clone()),
            error_code: error_code.name(),
            action: error_code.action().to_string(),
            link: base_url.map(|base| format!("{}/exchanges/{}", base.trim_end_matches('/'), self.exchange_id)),
            at,
        })
    }
}

/// Whether the error-processing job re-drives a failed exchange on its own: a retryable
/// system error, while the exchange has been recovered fewer than `limit` times. The one
/// rule of the job's re-drive and of who is told that an exchange failed for good.
pub fn redriven_automatically(error: &ExchangeError, recoveries: u32, limit: u32) -> bool {
    error.retryable && error.classification == ErrorClassification::System && recoveries < limit
}

/// The notice that a system failure of `exchange_id` (`code`) halted the endpoint of
/// `integration`.
pub fn endpoint_halted(
    integration: &IntegrationCode,
    exchange_id: &ExchangeId,
    code: ErrorCode,
    base_url: Option<&str>,
    at: DateTime<Utc>,
) -> Notice {
    Notice {
        event: NoticeEvent::EndpointHalted,
        integration_code: integration.clone(),
        exchange_id: Some(exchange_id.clone()),
        error_code: code.name(),
        action: format!(
            "{} Its exchanges are held until the endpoint is resumed (POST /integrations/{integration}/resume).",
            code.action()
        ),
        link: base_url.map(|base| format!("{}/integrations/{integration}", base.trim_end_matches('/'))),
        at,
    }
}

/// A short message for people and their tools: what happened, to which exchange, the error
/// code and what fixes it, and where to look. It carries no payload value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    pub event: NoticeEvent,
    pub integration_code: IntegrationCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange_id: Option<ExchangeId>,
    pub error_code: &'static str,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub at: DateTime<Utc>,
}

impl Notice {
    /// One line, at most [`MAX_SUBJECT_CHARS`] (an SNS subject, a mail's subject).
    pub fn subject(&self) -> String {
        let subject = format!("Handoff: {} {} ({})", self.integration_code, self.event.headline(), self.error_code);
        subject.chars().take(MAX_SUBJECT_CHARS).collect()
    }

    /// The text a person reads (an SNS message to a mail subscriber).
    pub fn text(&self) -> String {
        let mut text = format!("{}\n\nIntegration: {}\n", self.subject(), self.integration_code);
        if let Some(id) = &self.exchange_id {
            text.push_str(&format!("Exchange: {id}\n"));
        }
        text.push_str(&format!("Error code: {}\nWhat to do: {}\n", self.error_code, self.action));
        if let Some(link) = &self.link {
            text.push_str(&format!("Link: {link}\n"));
        }
        text.push_str(&format!("At: {}\n", self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
        text
    }
}

/// The most characters of a failure's text an error report carries.
pub const MAX_REPORT_MESSAGE_CHARS: usize = 500;

/// A system failure (or a panic) as an error tracker receives it: what kind, the gateway's
/// own text of it, and where it happened — never the data the exchange carried. (A system
/// failure's text is written by the gateway about its infrastructure; a business failure,
/// whose text may quote the data, is not reported.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReport {
    /// The exception type: the failure's code name, or `Panic`.
    pub kind: String,
    pub message: String,
    pub exchange_id: Option<ExchangeId>,
    pub integration_code: Option<IntegrationCode>,
    pub step_id: Option<crate::ids::StepId>,
    pub sub_step: Option<crate::plan::SubStep>,
    pub attempt: Option<u32>,
    /// Where the exchange is shown (`<base>/exchanges/<id>`).
    pub link: Option<String>,
}

impl ErrorReport {
    /// One report per system failure `commit` lists.
    pub fn system_failures(commit: &StepCommit, base_url: Option<&str>) -> Vec<Self> {
        commit
            .errors
            .iter()
            .filter(|e| e.classification == ErrorClassification::System)
            .map(|e| Self {
                kind: e.code.name().to_string(),
                message: e.message.chars().take(MAX_REPORT_MESSAGE_CHARS).collect(),
                exchange_id: Some(e.exchange_id.clone()),
                integration_code: Some(e.integration_code.clone()),
                step_id: e.step_id,
                sub_step: e.sub_step,
                attempt: commit.step.as_ref().filter(|s| Some(s.step_id) == e.step_id).map(|s| s.attempt),
                link: base_url.map(|base| format!("{}/exchanges/{}", base.trim_end_matches('/'), e.exchange_id)),
            })
            .collect()
    }

    /// A panic of the function's code, with its message (the panic's own text).
    pub fn panic(message: &str) -> Self {
        Self {
            kind: "Panic".into(),
            message: message.chars().take(MAX_REPORT_MESSAGE_CHARS).collect(),
            exchange_id: None,
            integration_code: None,
            step_id: None,
            sub_step: None,
            attempt: None,
            link: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn notify(value: Value) -> FieldResult<Vec<Notify>> {
        let doc = json!({"notify": value});
        parse_notify(&ObjectReader::new("", &doc).expect("object"))
    }

    fn error(classification: ErrorClassification, code: ErrorCode, retryable: bool) -> ExchangeError {
        ExchangeError {
            classification,
            code,
            message: "customer 'Jane Roe' has no account".into(),
            retryable,
            step_id: None,
            sub_step: None,
            at: Utc::now(),
        }
    }

    fn end(status: ExchangeStatus, error: Option<ExchangeError>, recovery: u32) -> ExchangeEnd {
        ExchangeEnd { exchange_id: ExchangeId::new("01JEXCHANGE"), status, error, recovery }
    }

    #[test]
    fn notify_targets_are_read_with_their_events_and_refused_with_the_field_named() {
        let parsed = notify(json!([
            {"webhook": "https://hooks.example.com/T/B/secret"},
            {"snsTopicArn": "arn:aws:sns:eu-west-1:123456789012:handoff-notify-orders", "on": ["endpointHalted"]}
        ]))
        .expect("valid");
        assert_eq!(parsed[0].on, NoticeEvent::ALL.to_vec());
        assert_eq!(parsed[0].target.redacted(), "https://hooks.example.com/…");
        assert_eq!(parsed[1].on, vec![NoticeEvent::EndpointHalted]);
        for (bad, path) in [
            (json!({"webhook": "x"}), "notify"),
            (json!([{"webhook": "ftp://h/x"}]), "notify[0].webhook"),
            (json!([{"webhook": "https://u:p@h/x"}]), "notify[0].webhook"),
            (json!([{"snsTopicArn": "arn:aws:sqs:eu-west-1:123456789012:q"}]), "notify[0].snsTopicArn"),
            (json!([{"webhook": "https://h/x", "snsTopicArn": "arn:aws:sns:eu-west-1:123456789012:t"}]), "notify[0]"),
            (json!([{}]), "notify[0]"),
            (json!([{"webhook": "https://h/x", "on": ["exchangeDone"]}]), "notify[0].on[0]"),
            (json!([{"webhook": "https://h/x", "on": []}]), "notify[0].on"),
            (json!([{"webhook": "https://h/x", "to": "me"}]), "notify[0].to"),
            (json!(vec![json!({"webhook": "https://h/x"}); 6]), "notify"),
        ] {
            let e = notify(bad.clone()).expect_err(&bad.to_string());
            assert_eq!(e.path, path, "{bad}: {e:?}");
        }
    }

    #[test]
    fn a_failure_the_error_job_redrives_is_not_told_until_the_job_gives_up() {
        let code = IntegrationCode::parse("ORDERS").expect("code");
        let at = Utc::now();
        let transient =
            end(ExchangeStatus::Failed, Some(error(ErrorClassification::System, ErrorCode::Unavailable, true)), 0);
        assert_eq!(transient.notice(&code, 3, None, at), None, "the job re-drives it");
        let exhausted = ExchangeEnd { recovery: 3, ..transient };
        assert_eq!(exhausted.notice(&code, 3, None, at).expect("told").event, NoticeEvent::ExchangeFailed);
        let business =
            end(ExchangeStatus::Failed, Some(error(ErrorClassification::Business, ErrorCode::UnmappedValue, false)), 0);
        let notice = business.notice(&code, 3, Some("https://gw.example.com/"), at).expect("told");
        assert_eq!(notice.error_code, "UnmappedValue");
        assert_eq!(notice.action, ErrorCode::UnmappedValue.action());
        assert_eq!(notice.link, Some(format!("https://gw.example.com/exchanges/{}", business.exchange_id)));
        let timed_out =
            end(ExchangeStatus::TimedOut, Some(error(ErrorClassification::Business, ErrorCode::SlaExceeded, false)), 0);
        assert_eq!(timed_out.notice(&code, 3, None, at).expect("told").event, NoticeEvent::ExchangeTimedOut);
        assert_eq!(end(ExchangeStatus::Completed, None, 0).notice(&code, 3, None, at), None);
    }

    #[test]
    fn neither_a_notice_nor_a_ping_quotes_the_failure_text() {
        let code = IntegrationCode::parse("ORDERS").expect("code");
        let failed =
            end(ExchangeStatus::Failed, Some(error(ErrorClassification::Business, ErrorCode::InvalidRecord, false)), 0);
        let notice = failed.notice(&code, 3, None, Utc::now()).expect("told");
        let json = serde_json::to_string(&notice).expect("json");
        for shown in [json, notice.text(), notice.subject(), failed.ping().body().to_string()] {
            assert!(!shown.contains("Jane Roe"), "{shown}");
        }
        assert!(failed.ping().body().contains("InvalidRecord"));
        assert_eq!(end(ExchangeStatus::Completed, None, 0).ping(), Ping::Success);
        let halted = endpoint_halted(&code, &failed.exchange_id, ErrorCode::Unavailable, None, Utc::now());
        assert!(halted.action.contains("/integrations/ORDERS/resume"), "{}", halted.action);
        assert!(halted.subject().chars().count() <= MAX_SUBJECT_CHARS);
    }
}
