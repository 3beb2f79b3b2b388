//! The table's schema as keys: partition and sort keys of every item kind and their index keys.

use super::*;

pub fn exchange_pk(id: &ExchangeId) -> String {
    format!("EX#{id}")
}
pub fn step_sk(step: StepId) -> String {
    format!("{STEP_SK_PREFIX}{step}")
}
pub fn integration_gsi_pk(code: &IntegrationCode) -> String {
    format!("INT#{code}")
}
pub fn status_gsi_pk(status: ExchangeStatus) -> String {
    format!("STATUS#{}", status.name())
}
pub const CREATION_GSI_PK: &str = "EXCHANGES";
/// Sort key of all three indexes: creation time with fixed millis (sorts as text), then the id.
pub fn creation_sort_key(created_at: DateTime<Utc>, id: &ExchangeId) -> String {
    format!("{}#{id}", created_at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// `byParent` partition of the sub-exchanges of `parent`.
pub fn parent_gsi_pk(parent: &ExchangeId) -> String {
    format!("PARENT#{parent}")
}
/// `byParent` sort key: the parent's step, then the position among the siblings (8 digits).
pub fn parent_gsi_sk(link: &ParentLink) -> String {
    format!("{}#{:08}", link.step_id, link.index)
}

pub const ERRORS_GSI_PK: &str = "ERRORS";
pub const TIMERS_GSI_PK: &str = "TIMERS";

pub(super) fn millis_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}
fn failing_step(step: Option<StepId>) -> String {
    step.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
}
/// Sort key of an error item: `ERROR#<stepId or ->` (one entry per failing step).
pub fn error_sk(id: &ErrorId) -> String {
    format!("ERROR#{}", failing_step(id.step_id))
}
/// `byError` sort key: `<at of the last failure>#<exchangeId>#<stepId or ->` (newest
/// first when read backwards; it moves up when the step fails again).
pub fn error_gsi_sk(record: &ErrorRecord) -> String {
    format!("{}#{}#{}", millis_text(record.at), record.exchange_id, failing_step(record.step_id))
}
pub(super) fn error_key(id: &ErrorId) -> Item {
    HashMap::from([("pk".to_string(), s(exchange_pk(&id.exchange_id))), ("sk".to_string(), s(error_sk(id)))])
}
/// The lowest `byError` sort key at or after `since`.
pub fn error_since_key(since: DateTime<Utc>) -> String {
    millis_text(since)
}
pub fn timer_sk(timer: &Timer) -> String {
    format!("TIMER#{}", timer.name())
}
/// Epoch millis, zero-padded to 15 digits so that they sort as text (times before 1970 count as 0).
pub(super) fn padded_millis(at: DateTime<Utc>) -> String {
    format!("{:015}", at.timestamp_millis().max(0))
}
/// `byDue` sort key: `<due millis, 15 digits>#<exchangeId>#<name>`.
pub fn timer_gsi_sk(timer: &Timer) -> String {
    format!("{}#{}#{}", padded_millis(timer.due), timer.exchange_id, timer.name())
}
/// Above every `byDue` sort key of timers due at or before `until` (`~` sorts after `#`).
pub fn timers_until_key(until: DateTime<Utc>) -> String {
    format!("{}~", padded_millis(until))
}
pub fn token_pk(hash: &str) -> String {
    format!("TOKEN#{hash}")
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn exchange_key(id: &ExchangeId) -> Item {
    HashMap::from([("pk".to_string(), s(exchange_pk(id))), ("sk".to_string(), s(EXCHANGE_SK))])
}
pub(super) fn step_key(id: &ExchangeId, step: StepId) -> Item {
    HashMap::from([("pk".to_string(), s(exchange_pk(id))), ("sk".to_string(), s(step_sk(step)))])
}
pub(super) fn timer_key(timer: &Timer) -> Item {
    HashMap::from([("pk".to_string(), s(exchange_pk(&timer.exchange_id))), ("sk".to_string(), s(timer_sk(timer)))])
}
pub(super) fn token_key(hash: &str) -> Item {
    HashMap::from([("pk".to_string(), s(token_pk(hash))), ("sk".to_string(), s(TOKEN_SK))])
}

pub(super) fn to_av<T: Serialize>(value: &T) -> PortResult<AttributeValue> {
    serde_dynamo::to_attribute_value(value).map_err(|e| error::fault(SERVICE, format!("cannot encode attribute: {e}")))
}
