//! Event queues (issue 10, point 3): events sent to an endpoint wait, durably and in
//! arrival order, until an exchange of an event-based integration takes them. This module
//! owns what an event is (and what a request may send), which pending events an exchange
//! takes (the latest per key, up to `maxPerExchange`), and what becomes of a claim an
//! exchange holds on them — pure decisions the application layer carries out.

use crate::exchange::ExchangeStatus;
use crate::ids::ExchangeId;
use crate::machine::start::never_started;
use crate::reader::{describe, FieldError, FieldResult, ObjectReader};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

/// Most events one request may send.
pub const MAX_EVENTS_PER_REQUEST: usize = 100;
/// Most bytes of one event's `data` (as JSON): an event is a DynamoDB item (400 KB at most).
pub const MAX_EVENT_DATA_BYTES: usize = 64 * 1024;
/// Longest `key` and `type`.
pub const MAX_EVENT_KEY_CHARS: usize = 256;
/// The most `maxPerExchange` may allow.
pub const MAX_PER_EXCHANGE_LIMIT: u64 = 1000;
/// How many of the oldest pending events one exchange looks at when it takes its events
/// (superseded ones included): bounds the read and the claim's size.
pub const MAX_EVENTS_CONSIDERED: usize = 1000;

/// One event as sent: `{key?, type?, data}`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub key: Option<String>,
    pub event_type: Option<String>,
    pub data: Value,
}

/// An event in an endpoint's queue. `position` orders the queue (arrival order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueuedEvent {
    pub event_id: String,
    pub position: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    pub data: Value,
    pub received_at: DateTime<Utc>,
}

impl QueuedEvent {
    /// The events of one request, queued at `now` in the order sent: `request_id` (unique,
    /// e.g. a UUID) keeps two requests of the same instant apart.
    pub fn queue(events: Vec<NewEvent>, now: DateTime<Utc>, request_id: &str) -> Vec<QueuedEvent> {
        let at = now.to_rfc3339_opts(SecondsFormat::Micros, true);
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let event_id = format!("{request_id}-{i:03}");
                QueuedEvent {
                    position: format!("{at}#{event_id}"),
                    event_id,
                    key: e.key,
                    event_type: e.event_type,
                    data: e.data,
                    received_at: now,
                }
            })
            .collect()
    }

    /// The event as an element of its exchange's input.
    pub fn as_input(&self) -> Value {
        let mut v = serde_json::json!({"eventId": self.event_id, "data": self.data, "receivedAt": self.received_at});
        if let Some(key) = &self.key {
            v["key"] = Value::String(key.clone());
        }
        if let Some(t) = &self.event_type {
            v["type"] = Value::String(t.clone());
        }
        v
    }
}

/// The events of a `POST /integrations/{code}/events` body: one event object, an array of
/// them, or `{"events": [...]}`; each `{key?, type?, data}` with `data` required.
pub fn parse_events(body: &Value) -> FieldResult<Vec<NewEvent>> {
    let (path, list): (&str, Vec<&Value>) = match body {
        Value::Array(items) => ("", items.iter().collect()),
        Value::Object(map) if map.contains_key("events") => match &map["events"] {
            Value::Array(items) => {
                if map.len() > 1 {
                    let other = map.keys().find(|k| *k != "events").cloned().unwrap_or_default();
                    return Err(FieldError::new(other, "unknown field next to events"));
                }
                ("events", items.iter().collect())
            }
            other => return Err(FieldError::new("events", format!("must be an array, found {}", describe(other)))),
        },
        Value::Object(_) => return parse_event("", body).map(|e| vec![e]),
        other => {
            return Err(FieldError::new(
                "(document)",
                format!("must be an event object or an array of them, found {}", describe(other)),
            ))
        }
    };
    if list.is_empty() {
        return Err(FieldError::new(if path.is_empty() { "(document)" } else { path }, "must hold at least one event"));
    }
    if list.len() > MAX_EVENTS_PER_REQUEST {
        return Err(FieldError::new(
            if path.is_empty() { "(document)" } else { path },
            format!("holds {} events; one request may send at most {MAX_EVENTS_PER_REQUEST}", list.len()),
        ));
    }
    list.into_iter().enumerate().map(|(i, e)| parse_event(&format!("{path}[{i}]"), e)).collect()
}

fn parse_event(path: &str, value: &Value) -> FieldResult<NewEvent> {
    let r = ObjectReader::new(path, value)?;
    r.deny_unknown(&["key", "type", "data"])?;
    let bounded = |field: &str| -> FieldResult<Option<String>> {
        match r.optional_str(field)? {
            Some(s) if s.chars().count() > MAX_EVENT_KEY_CHARS => {
                Err(FieldError::new(r.field_path(field), format!("is longer than {MAX_EVENT_KEY_CHARS} characters")))
            }
            other => Ok(other.map(str::to_string)),
        }
    };
    let key = bounded("key")?;
    let event_type = bounded("type")?;
    let data = r.required("data")?.clone();
    let size = data.to_string().len();
    if size > MAX_EVENT_DATA_BYTES {
        return Err(FieldError::new(
            r.field_path("data"),
            format!("is {size} bytes as JSON; an event may carry at most {MAX_EVENT_DATA_BYTES}"),
        ));
    }
    Ok(NewEvent { key, event_type, data })
}

/// What an exchange takes from the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The events it runs on: per key the latest, in the order their keys first arrived.
    pub input: Vec<QueuedEvent>,
    /// Every event it takes off the queue when it completes: those above and the earlier
    /// ones of the same keys they supersede.
    pub taken: Vec<String>,
}

/// Takes up to `max` events from `pending` (oldest first): events with the same key count
/// once, with the latest value; events without a key each count. Events of keys beyond the
/// first `max` stay queued, superseded ones included.
pub fn select(pending: &[QueuedEvent], max: usize) -> Selection {
    // Groups in the order their first event arrived; each ends with its latest event.
    let mut groups: Vec<Vec<&QueuedEvent>> = Vec::new();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for event in pending.iter().take(MAX_EVENTS_CONSIDERED) {
        let known = event.key.as_deref().and_then(|key| by_key.get(key).copied());
        match known {
            Some(g) => groups[g].push(event),
            None if groups.len() == max => {}
            None => {
                if let Some(key) = event.key.as_deref() {
                    by_key.insert(key, groups.len());
                }
                groups.push(vec![event]);
            }
        }
    }
    let input = groups.iter().filter_map(|events| events.last().map(|e| (*e).clone())).collect();
    let mut taken: Vec<&QueuedEvent> = groups.iter().flatten().copied().collect();
    taken.sort_by(|a, b| a.position.cmp(&b.position));
    Selection { input, taken: taken.into_iter().map(|e| e.position.clone()).collect() }
}

/// An exchange's hold on the events it took: while it stands, no other exchange takes any
/// event of the endpoint (events of one key must not overtake each other).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventClaim {
    pub exchange_id: ExchangeId,
    /// The positions of the events it took ([`Selection::taken`]).
    pub taken: Vec<String>,
    pub claimed_at: DateTime<Utc>,
}

/// What to do with the claim an endpoint's events are under, given its exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimFate {
    /// Its exchange completed: its events leave the queue, and the claim goes.
    Consume,
    /// Its exchange never came to be (its invocation stopped first): the events are free again.
    Abandon,
    /// Its exchange runs, or failed and may be recovered on them: the events wait.
    Keep { reason: String },
}

/// The fate of `claim`, its exchange found at `status` (`None`: no such exchange).
pub fn claim_fate(claim: &EventClaim, status: Option<ExchangeStatus>, now: DateTime<Utc>) -> ClaimFate {
    match status {
        Some(ExchangeStatus::Completed) => ClaimFate::Consume,
        None if never_started(claim.claimed_at, now) => ClaimFate::Abandon,
        None => ClaimFate::Keep { reason: format!("exchange {} is taking the pending events", claim.exchange_id) },
        Some(status) if status.is_final() => ClaimFate::Keep {
            reason: format!(
                "the pending events wait for exchange {}, which is {} (recover it with POST /exchanges/{}/recover)",
                claim.exchange_id,
                status.name(),
                claim.exchange_id
            ),
        },
        Some(status) => ClaimFate::Keep {
            reason: format!("exchange {} ({}) is running on the pending events", claim.exchange_id, status.name()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use serde_json::json;

    fn queued(events: &[(Option<&str>, i64)]) -> Vec<QueuedEvent> {
        let start = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z").expect("t").with_timezone(&Utc);
        events
            .iter()
            .enumerate()
            .flat_map(|(i, (key, value))| {
                QueuedEvent::queue(
                    vec![NewEvent { key: key.map(str::to_string), event_type: None, data: json!(value) }],
                    start + Duration::seconds(i as i64),
                    &format!("r{i}"),
                )
            })
            .collect()
    }

    fn values(s: &Selection) -> Vec<Value> {
        s.input.iter().map(|e| e.data.clone()).collect()
    }

    #[test]
    fn the_latest_value_per_key_in_the_order_keys_arrived() {
        let pending = queued(&[(Some("a"), 1), (Some("b"), 2), (None, 3), (Some("a"), 4)]);
        let s = select(&pending, 10);
        assert_eq!(values(&s), vec![json!(4), json!(2), json!(3)]);
        assert_eq!(s.taken.len(), 4, "the superseded a=1 leaves with its successor");
    }

    #[test]
    fn at_most_max_keys_and_the_rest_stays_queued() {
        let pending = queued(&[(Some("a"), 1), (Some("b"), 2), (Some("c"), 3), (Some("a"), 4), (Some("c"), 5)]);
        let s = select(&pending, 2);
        assert_eq!(values(&s), vec![json!(4), json!(2)]);
        let left: Vec<&QueuedEvent> = pending.iter().filter(|e| !s.taken.contains(&e.position)).collect();
        assert_eq!(left.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), vec![json!(3), json!(5)]);
    }

    #[test]
    fn nothing_pending_takes_nothing() {
        let s = select(&[], 5);
        assert!(s.input.is_empty() && s.taken.is_empty());
    }

    #[test]
    fn events_of_one_request_keep_their_order_and_ids() {
        let now = Utc::now();
        let q = QueuedEvent::queue(
            (0..12).map(|i| NewEvent { key: None, event_type: None, data: json!(i) }).collect(),
            now,
            "req",
        );
        let mut sorted = q.clone();
        sorted.sort_by(|a, b| a.position.cmp(&b.position));
        assert_eq!(q, sorted);
        assert_eq!(q[11].event_id, "req-011");
    }

    #[test]
    fn bodies_name_the_field_at_fault() {
        assert_eq!(parse_events(&json!({"key": "k", "data": {"x": 1}})).expect("one").len(), 1);
        assert_eq!(parse_events(&json!([{"data": 1}, {"data": 2}])).expect("two").len(), 2);
        assert_eq!(parse_events(&json!({"events": [{"data": 1}]})).expect("wrapped").len(), 1);
        assert_eq!(parse_events(&json!([{"data": 1}, {"key": "k"}])).expect_err("no data").path, "[1].data");
        assert_eq!(
            parse_events(&json!({"events": [{"data": 1, "extra": 2}]})).expect_err("unknown").path,
            "events[0].extra"
        );
        assert_eq!(parse_events(&json!([])).expect_err("empty").path, "(document)");
        assert_eq!(parse_events(&json!("x")).expect_err("string").path, "(document)");
        let big = json!({"data": "x".repeat(MAX_EVENT_DATA_BYTES)});
        assert!(parse_events(&big).expect_err("too big").problem.contains("at most"));
        let many: Vec<Value> = (0..=MAX_EVENTS_PER_REQUEST).map(|i| json!({"data": i})).collect();
        assert!(parse_events(&Value::Array(many)).expect_err("too many").problem.contains("at most"));
        assert_eq!(parse_events(&json!({"key": 5, "data": 1})).expect_err("key type").path, "key");
    }

    #[test]
    fn a_claim_is_consumed_on_completion_kept_on_failure_and_let_go_when_abandoned() {
        let now = Utc::now();
        let claim = EventClaim { exchange_id: ExchangeId::new("x"), taken: vec![], claimed_at: now };
        assert_eq!(claim_fate(&claim, Some(ExchangeStatus::Completed), now), ClaimFate::Consume);
        assert!(
            matches!(claim_fate(&claim, Some(ExchangeStatus::Failed), now), ClaimFate::Keep { reason } if reason.contains("/recover"))
        );
        assert!(matches!(claim_fate(&claim, Some(ExchangeStatus::Started), now), ClaimFate::Keep { .. }));
        assert!(matches!(claim_fate(&claim, None, now), ClaimFate::Keep { .. }), "its exchange may be being created");
        let later = now + Duration::seconds(crate::machine::start::NEVER_STARTED_AFTER_SECONDS);
        assert_eq!(claim_fate(&claim, None, later), ClaimFate::Abandon);
    }
}
