//! [`ExchangeRepository`] on one DynamoDB table (single-table design, `infra/template.yaml`
//! `ExchangesTable`).
//!
//! # Key design
//!
//! | item | `pk` | `sk` | index keys |
//! |---|---|---|---|
//! | exchange | `EX#<exchangeId>` | `EXCHANGE` | `gsi1pk=INT#<code>`, `gsi2pk=STATUS#<statusName>`, `gsi3pk=EXCHANGES`; every `gsiNsk=<createdAt RFC 3339, UTC, millis>#<exchangeId>`; sub-exchanges also `gsi6pk=PARENT#<parentId>`, `gsi6sk=<parent stepId>#<index, 8 digits>` |
//! | step | `EX#<exchangeId>` | `STEP#<stepId>` (zero-padded, e.g. `STEP#0003`) | none (steps stay out of the sparse indexes) |
//! | error | `EX#<exchangeId>` | `ERROR#<at RFC 3339 millis>#<stepId or ->#<n>` | `gsi5pk=ERRORS`, `gsi5sk=<at RFC 3339 millis>#<exchangeId>#<n>` |
//! | timer | `EX#<exchangeId>` | `TIMER#<timer name>` | `gsi4pk=TIMERS`, `gsi4sk=<due epoch millis, 15 digits>#<exchangeId>#<name>` (removed once taken) |
//! | callback token | `TOKEN#<hash>` | `TOKEN` | none |
//!
//! * Exchange attributes: every [`Exchange`] field in camelCase (`status` as its name, e.g.
//!   `Started`; timestamps as RFC 3339 strings; `integrationVersion` a number or NULL;
//!   `error` a map; `recoveries` a number, 0 at creation), except `parameters`, kept as a
//!   JSON string (no nesting limit, exact numbers). `gsi2pk` changes with `status`.
//!   Items written before `recoveries` existed count as generation 0. A sub-exchange has
//!   `parent` (a [`ParentLink`] map); a completed exchange may have `result` (a payload map).
//! * Step attributes: every [`ExchangeStep`] field in camelCase (`status` as its name,
//!   `payload`/`lastError` maps) plus the bookkeeping `completedAttempt` (number, 0 at
//!   creation), `claimedAttempt` (0), `leaseUntil` (epoch millis, 0) and `logs` (list of
//!   [`LogLine`] maps, appended by commits). A `ControlSubflow` step also has `subTotal`,
//!   `subCompleted` and `subFailed` (numbers, [`SubExchangeCounts`]) once its total is set;
//!   only `set_sub_exchange_total`, the tallies of commits and recoveries change them.
//! * Error attributes: every [`ErrorRecord`] field in camelCase (`classification` as
//!   `business`/`system`).
//! * Timer attributes: `body` (the [`Timer`] JSON), `exchangeId`, and `expiresAt` (epoch
//!   seconds, the table's TTL attribute: due + 7 days).
//! * Token attributes: `body` (the [`CallbackToken`] JSON), `exchangeId`, `tokenExpiresAt`
//!   (the token's own expiry, epoch millis, absent if none), `usedAt` (epoch millis, set
//!   while consumed) and `expiresAt` (TTL, epoch seconds: expiry + 7 days, or 30 days after
//!   it was stored).
//! * Indexes (all projecting everything): `byIntegration` (gsi1), `byStatus` (gsi2),
//!   `byCreation` (gsi3), read newest first (`ScanIndexForward=false`); `byDue` (gsi4,
//!   sparse: timers not yet taken), read oldest first; `byError` (gsi5, sparse: errors),
//!   read newest first; `byParent` (gsi6, sparse: sub-exchanges), read in index order
//!   (the parent's step, then the sibling index: creation order).
//!
//! # Operations
//! * `get`: one consistent Query on `pk` (paginated): the exchange, its steps in sequence
//!   order and their log lines in time order (error and timer items are skipped).
//! * `list`: Query on the index that fits the filter (parent → `byParent`, ascending, with
//!   filters on status and code if given; code → `byIntegration`, with a filter on status if
//!   both are given; status only → `byStatus`; neither → `byCreation`). The cursor is the
//!   base64url JSON of the index name and the last evaluated key.
//! * `create`: BatchWriteItem in chunks of ≤ 25 puts (steps first, the exchange item last,
//!   so a listed exchange always has its steps), retrying unprocessed items with backoff.
//!   `create_many` packs the items of many exchanges (in the same order) into the chunks.
//! * `statuses`: BatchGetItem (consistent) of ≤ 100 exchange keys a request, projecting the
//!   keys and `status`, retrying unprocessed keys with backoff.
//! * `set_sub_exchange_total`: an UpdateItem of the (existing) step setting `subTotal`, and
//!   the two counts to 0 unless present.
//! * `claim`: one TransactWriteItems: the conditional step update and a condition check that
//!   the exchange is not final and at the claim's recovery generation.
//! * `commit`: one TransactWriteItems: the step update (if any), the skips, the check that
//!   `require_done` is `Done`, the error and timer puts, a condition check or conditional
//!   update of the exchange item (always requiring its recovery generation; an update
//!   whenever a `result` is stored), and for a sub-exchange's tally an `ADD subCompleted` /
//!   `ADD subFailed` of 1 on the parent's (existing) step: counted exactly once, with the
//!   child's own conditional change.
//! * `recover`: one TransactWriteItems: the exchange back to `Started` at the next
//!   generation (only from `Failed`/`TimedOut` at the given one) and the step resets; the
//!   step of `clear_sub_failures` gets `subFailed = 0` within its reset (or in an update of
//!   its own if it is not reset).
//! * `errors`: Query on `byError` (`gsi5sk >= since`), filtering on classification and code;
//!   the cursor works like `list`'s.
//! * `due_timers` / `take_timer`: Query on `byDue` up to a time; a conditional UpdateItem
//!   that removes the timer's index keys (only one sweeper wins).
//! * Tokens: a conditional PutItem; consuming is a conditional UpdateItem that sets `usedAt`
//!   (once, before expiry) and returns the token; releasing removes `usedAt`.

use crate::error::{self, ErrorKind};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, KeysAndAttributes, Put, PutRequest, TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use handoff_core::commit::{
    claim_preconditions, Conflict, ErrorRecord, ExchangeChange, ItemRef, ParentTally, Precondition, RecoveryCommit,
    StepChange, StepCommit,
};
use handoff_core::exchange::{
    Exchange, ExchangeError, ExchangeStatus, ExchangeStep, LogLine, ParentLink, Payload, StepError, StepStatus,
    SubExchangeCounts,
};
use handoff_core::exchange::{ExchangeDetail, ExchangeEvent};
use handoff_core::handoff::{CallbackToken, Timer};
use handoff_core::ids::{ExchangeId, IntegrationCode, IntegrationVersion, StepId};
use handoff_core::plan::SubStep;
use handoff_ports::{ErrorFilter, ErrorPage, ExchangeFilter, ExchangePage, ExchangeRepository, PortError, PortResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const SERVICE: &str = "dynamodb";
pub(crate) type Item = HashMap<String, AttributeValue>;

pub const INDEX_BY_INTEGRATION: &str = "byIntegration";
pub const INDEX_BY_STATUS: &str = "byStatus";
pub const INDEX_BY_CREATION: &str = "byCreation";
pub const INDEX_BY_DUE: &str = "byDue";
pub const INDEX_BY_ERROR: &str = "byError";
pub const INDEX_BY_PARENT: &str = "byParent";
const EXCHANGE_SK: &str = "EXCHANGE";
const STEP_SK_PREFIX: &str = "STEP#";
const TOKEN_SK: &str = "TOKEN";
/// How long DynamoDB keeps a timer after it was due, and a token after it expired.
const KEEP_AFTER_EXPIRY: TimeDelta = TimeDelta::days(7);
/// How long DynamoDB keeps a token that never expires.
const KEEP_TOKEN_WITHOUT_EXPIRY: TimeDelta = TimeDelta::days(30);
/// DynamoDB's limit of actions in one TransactWriteItems.
const MAX_TRANSACTION_ACTIONS: usize = 100;
/// DynamoDB's limit of requests in one BatchWriteItem.
const MAX_BATCH_WRITE: usize = 25;
/// DynamoDB's limit of keys in one BatchGetItem.
const MAX_BATCH_GET: usize = 100;
const MAX_LIST_LIMIT: u32 = 1000;
/// Step attributes of a `ControlSubflow` step (see [`SubExchangeCounts`]).
const SUB_TOTAL: &str = "subTotal";
const SUB_COMPLETED: &str = "subCompleted";
const SUB_FAILED: &str = "subFailed";

// ------------------------------------------------------------------ keys

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

fn millis_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}
/// Sort key of an error item: `ERROR#<at>#<stepId or ->#<n>`.
pub fn error_sk(record: &ErrorRecord, n: usize) -> String {
    let step = record.step_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
    format!("ERROR#{}#{step}#{n}", millis_text(record.at))
}
/// `byError` sort key: `<at>#<exchangeId>#<n>` (newest first when read backwards).
pub fn error_gsi_sk(record: &ErrorRecord, n: usize) -> String {
    format!("{}#{}#{n}", millis_text(record.at), record.exchange_id)
}
/// The lowest `byError` sort key at or after `since`.
pub fn error_since_key(since: DateTime<Utc>) -> String {
    millis_text(since)
}
pub fn timer_sk(timer: &Timer) -> String {
    format!("TIMER#{}", timer.name())
}
/// Epoch millis, zero-padded to 15 digits so that they sort as text (times before 1970 count as 0).
fn padded_millis(at: DateTime<Utc>) -> String {
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

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn exchange_key(id: &ExchangeId) -> Item {
    HashMap::from([("pk".to_string(), s(exchange_pk(id))), ("sk".to_string(), s(EXCHANGE_SK))])
}
fn step_key(id: &ExchangeId, step: StepId) -> Item {
    HashMap::from([("pk".to_string(), s(exchange_pk(id))), ("sk".to_string(), s(step_sk(step)))])
}
fn timer_key(timer: &Timer) -> Item {
    HashMap::from([("pk".to_string(), s(exchange_pk(&timer.exchange_id))), ("sk".to_string(), s(timer_sk(timer)))])
}
fn token_key(hash: &str) -> Item {
    HashMap::from([("pk".to_string(), s(token_pk(hash))), ("sk".to_string(), s(TOKEN_SK))])
}

fn to_av<T: Serialize>(value: &T) -> PortResult<AttributeValue> {
    serde_dynamo::to_attribute_value(value).map_err(|e| error::fault(SERVICE, format!("cannot encode attribute: {e}")))
}

// ------------------------------------------------------------------ items

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExchangeItem {
    pk: String,
    sk: String,
    gsi1pk: String,
    gsi1sk: String,
    gsi2pk: String,
    gsi2sk: String,
    gsi3pk: String,
    gsi3sk: String,
    exchange_id: ExchangeId,
    integration_code: IntegrationCode,
    integration_version: IntegrationVersion,
    status: ExchangeStatus,
    /// JSON text.
    #[serde(default)]
    parameters: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ExchangeError>,
    /// Absent on items written before recoveries existed: generation 0.
    #[serde(default)]
    recoveries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<ParentLink>,
    /// Sub-exchanges by parent (sparse index `byParent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gsi6pk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gsi6sk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Payload>,
}

pub(crate) fn exchange_to_item(exchange: &Exchange) -> PortResult<Item> {
    let sort = creation_sort_key(exchange.created_at, &exchange.exchange_id);
    let parameters = serde_json::to_string(&exchange.parameters)
        .map_err(|e| error::fault(SERVICE, format!("cannot encode parameters: {e}")))?;
    let item = ExchangeItem {
        pk: exchange_pk(&exchange.exchange_id),
        sk: EXCHANGE_SK.to_string(),
        gsi1pk: integration_gsi_pk(&exchange.integration_code),
        gsi1sk: sort.clone(),
        gsi2pk: status_gsi_pk(exchange.status),
        gsi2sk: sort.clone(),
        gsi3pk: CREATION_GSI_PK.to_string(),
        gsi3sk: sort,
        exchange_id: exchange.exchange_id.clone(),
        integration_code: exchange.integration_code.clone(),
        integration_version: exchange.integration_version,
        status: exchange.status,
        parameters: Some(parameters),
        created_at: exchange.created_at,
        updated_at: exchange.updated_at,
        completed_at: exchange.completed_at,
        error: exchange.error.clone(),
        recoveries: exchange.recoveries,
        gsi6pk: exchange.parent.as_ref().map(|p| parent_gsi_pk(&p.exchange_id)),
        gsi6sk: exchange.parent.as_ref().map(parent_gsi_sk),
        parent: exchange.parent.clone(),
        result: exchange.result.clone(),
    };
    serde_dynamo::to_item(item).map_err(|e| error::fault(SERVICE, format!("cannot encode exchange: {e}")))
}

pub(crate) fn exchange_from_item(item: Item) -> PortResult<Exchange> {
    let item: ExchangeItem = serde_dynamo::from_item(item)
        .map_err(|e| error::fault(SERVICE, format!("stored exchange is malformed: {e}")))?;
    let parameters = match item.parameters.as_deref() {
        None | Some("") => serde_json::Value::Null,
        Some(text) => serde_json::from_str(text)
            .map_err(|e| error::fault(SERVICE, format!("stored exchange parameters are malformed: {e}")))?,
    };
    Ok(Exchange {
        exchange_id: item.exchange_id,
        integration_code: item.integration_code,
        integration_version: item.integration_version,
        status: item.status,
        parameters,
        created_at: item.created_at,
        updated_at: item.updated_at,
        completed_at: item.completed_at,
        error: item.error,
        recoveries: item.recoveries,
        parent: item.parent,
        result: item.result,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StepItem {
    pk: String,
    sk: String,
    step_id: StepId,
    sequence: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    integration_step: Option<String>,
    sub_step: SubStep,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    destination: Option<usize>,
    status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<Payload>,
    attempts: u32,
    max_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<StepError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_retry_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    completed_attempt: u32,
    #[serde(default)]
    claimed_attempt: u32,
    #[serde(default)]
    lease_until: i64,
    #[serde(default)]
    logs: Vec<LogLine>,
    /// `ControlSubflow` steps: how many sub-exchanges, and how many ended which way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub_total: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub_completed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub_failed: Option<u32>,
}

pub(crate) fn step_to_item(exchange_id: &ExchangeId, step: &ExchangeStep) -> PortResult<Item> {
    let item = StepItem {
        pk: exchange_pk(exchange_id),
        sk: step_sk(step.step_id),
        step_id: step.step_id,
        sequence: step.sequence,
        integration_step: step.integration_step.clone(),
        sub_step: step.sub_step,
        destination: step.destination,
        status: step.status,
        payload: step.payload.clone(),
        attempts: step.attempts,
        max_attempts: step.max_attempts,
        last_error: step.last_error.clone(),
        next_retry_at: step.next_retry_at,
        completed_at: step.completed_at,
        completed_attempt: 0,
        claimed_attempt: 0,
        lease_until: 0,
        logs: Vec::new(),
        sub_total: None,
        sub_completed: None,
        sub_failed: None,
    };
    serde_dynamo::to_item(item).map_err(|e| error::fault(SERVICE, format!("cannot encode step: {e}")))
}

pub(crate) fn step_from_item(item: Item) -> PortResult<(ExchangeStep, Vec<LogLine>)> {
    let item: StepItem =
        serde_dynamo::from_item(item).map_err(|e| error::fault(SERVICE, format!("stored step is malformed: {e}")))?;
    Ok((
        ExchangeStep {
            step_id: item.step_id,
            sequence: item.sequence,
            integration_step: item.integration_step,
            sub_step: item.sub_step,
            destination: item.destination,
            status: item.status,
            payload: item.payload,
            attempts: item.attempts,
            max_attempts: item.max_attempts,
            last_error: item.last_error,
            next_retry_at: item.next_retry_at,
            completed_at: item.completed_at,
            sub_exchanges: item.sub_total.map(|total| SubExchangeCounts {
                total,
                completed: item.sub_completed.unwrap_or(0),
                failed: item.sub_failed.unwrap_or(0),
            }),
        },
        item.logs,
    ))
}

/// The item of the `n`th error of a commit on exchange `exchange_id`.
pub(crate) fn error_to_item(exchange_id: &ExchangeId, record: &ErrorRecord, n: usize) -> PortResult<Item> {
    let mut item: Item =
        serde_dynamo::to_item(record).map_err(|e| error::fault(SERVICE, format!("cannot encode error record: {e}")))?;
    item.insert("pk".into(), s(exchange_pk(exchange_id)));
    item.insert("sk".into(), s(error_sk(record, n)));
    item.insert("gsi5pk".into(), s(ERRORS_GSI_PK));
    item.insert("gsi5sk".into(), s(error_gsi_sk(record, n)));
    Ok(item)
}

pub(crate) fn error_from_item(mut item: Item) -> PortResult<ErrorRecord> {
    for key in ["pk", "sk", "gsi5pk", "gsi5sk"] {
        item.remove(key);
    }
    serde_dynamo::from_item(item).map_err(|e| error::fault(SERVICE, format!("stored error record is malformed: {e}")))
}

fn json_text<T: Serialize>(value: &T, what: &str) -> PortResult<String> {
    serde_json::to_string(value).map_err(|e| error::fault(SERVICE, format!("cannot encode {what}: {e}")))
}

fn json_body<T: serde::de::DeserializeOwned>(item: &Item, what: &str) -> PortResult<T> {
    let body = attr_str(item, "body").ok_or_else(|| error::fault(SERVICE, format!("stored {what} has no body")))?;
    serde_json::from_str(body).map_err(|e| error::fault(SERVICE, format!("stored {what} is malformed: {e}")))
}

/// The item of a timer on exchange `exchange_id`, on the due index until taken.
pub(crate) fn timer_to_item(exchange_id: &ExchangeId, timer: &Timer) -> PortResult<Item> {
    Ok(HashMap::from([
        ("pk".to_string(), s(exchange_pk(exchange_id))),
        ("sk".to_string(), s(timer_sk(timer))),
        ("gsi4pk".to_string(), s(TIMERS_GSI_PK)),
        ("gsi4sk".to_string(), s(timer_gsi_sk(timer))),
        ("exchangeId".to_string(), s(timer.exchange_id.to_string())),
        ("body".to_string(), s(json_text(timer, "timer")?)),
        ("expiresAt".to_string(), n((timer.due + KEEP_AFTER_EXPIRY).timestamp())),
    ]))
}

pub(crate) fn timer_from_item(item: &Item) -> PortResult<Timer> {
    json_body(item, "timer")
}

/// The item of a callback token stored at `now`.
pub(crate) fn token_to_item(token: &CallbackToken, now: DateTime<Utc>) -> PortResult<Item> {
    let keep_until = match token.expires_at {
        Some(at) => at + KEEP_AFTER_EXPIRY,
        None => now + KEEP_TOKEN_WITHOUT_EXPIRY,
    };
    let mut item = HashMap::from([
        ("pk".to_string(), s(token_pk(&token.hash))),
        ("sk".to_string(), s(TOKEN_SK)),
        ("exchangeId".to_string(), s(token.exchange_id.to_string())),
        ("body".to_string(), s(json_text(token, "callback token")?)),
        ("expiresAt".to_string(), n(keep_until.timestamp())),
    ]);
    if let Some(at) = token.expires_at {
        item.insert("tokenExpiresAt".into(), n(at.timestamp_millis()));
    }
    Ok(item)
}

pub(crate) fn token_from_item(item: &Item) -> PortResult<CallbackToken> {
    json_body(item, "callback token")
}

fn attr_str<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

// ------------------------------------------------------------------ expressions

/// Collects the parts of an update/condition expression with placeholder names and values.
#[derive(Debug, Default)]
pub(crate) struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    set: Vec<String>,
    remove: Vec<String>,
    add: Vec<String>,
}

impl Expr {
    fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#{attribute}");
        self.names.insert(placeholder.clone(), attribute.to_string());
        placeholder
    }
    fn value(&mut self, placeholder: &str, value: AttributeValue) -> String {
        let placeholder = format!(":{placeholder}");
        self.values.insert(placeholder.clone(), value);
        placeholder
    }
    fn set(&mut self, attribute: &str, placeholder: &str, value: AttributeValue) {
        let name = self.name(attribute);
        let value = self.value(placeholder, value);
        self.set.push(format!("{name} = {value}"));
    }
    fn remove(&mut self, attribute: &str) {
        let name = self.name(attribute);
        self.remove.push(name);
    }
    /// `ADD attribute :placeholder` (a number: created at the value if absent).
    fn add(&mut self, attribute: &str, placeholder: &str, value: AttributeValue) {
        let name = self.name(attribute);
        let value = self.value(placeholder, value);
        self.add.push(format!("{name} {value}"));
    }
    fn update_expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.remove.is_empty() {
            parts.push(format!("REMOVE {}", self.remove.join(", ")));
        }
        if !self.add.is_empty() {
            parts.push(format!("ADD {}", self.add.join(", ")));
        }
        parts.join(" ")
    }
    /// `#status IN (:p0, :p1, ...)`.
    fn status_in(&mut self, prefix: &str, statuses: &[ExchangeStatus]) -> String {
        let name = self.name("status");
        let values: Vec<String> =
            statuses.iter().enumerate().map(|(i, st)| self.value(&format!("{prefix}{i}"), s(st.name()))).collect();
        format!("{name} IN ({})", values.join(", "))
    }
    fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }
    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

fn build_fault(e: impl std::fmt::Display) -> PortError {
    error::fault(SERVICE, format!("cannot build request: {e}"))
}

fn status_name(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Initial => "Initial",
        StepStatus::Skipped => "Skipped",
        StepStatus::Failed => "Failed",
        StepStatus::Done => "Done",
    }
}

/// Compiles the preconditions a write requires of its item into its condition expression:
/// one fragment per [`Precondition`], joined with `AND`. The one place that turns the core's
/// stated preconditions into DynamoDB conditions.
pub(crate) fn condition(e: &mut Expr, required: &[Precondition]) -> String {
    required.iter().map(|p| compile(e, p)).collect::<Vec<_>>().join(" AND ")
}

fn compile(e: &mut Expr, precondition: &Precondition) -> String {
    use Precondition as P;
    match precondition {
        P::ExchangeNotFinal { recovery, .. } => {
            format!("{} AND {}", e.status_in("s", &ExchangeStatus::not_final()), recovery_condition(e, *recovery))
        }
        P::ExchangeIn { statuses, recovery, .. } => {
            format!("{} AND {}", e.status_in("from", statuses), recovery_condition(e, *recovery))
        }
        P::StepOpen { attempt, .. } => {
            let status = e.name("status");
            let completed = e.name("completedAttempt");
            let initial = e.value("initial", s(status_name(StepStatus::Initial)));
            let attempt = e.value("attempt", n(attempt));
            format!("{status} = {initial} AND {completed} < {attempt}")
        }
        P::ClaimedBy { attempt, .. } => {
            let claimed = e.name("claimedAttempt");
            format!("{claimed} = {}", e.value("attempt", n(attempt)))
        }
        P::Claimable { attempt, now, .. } => {
            let claimed = e.name("claimedAttempt");
            let lease = e.name("leaseUntil");
            let attempt = e.value("attempt", n(attempt));
            let now = e.value("now", n(now.timestamp_millis()));
            format!("({claimed} < {attempt} OR {lease} < {now})")
        }
        P::StepInitial { .. } => {
            let status = e.name("status");
            format!("{status} = {}", e.value("initial", s(status_name(StepStatus::Initial))))
        }
        P::StepDone { .. } => {
            let status = e.name("status");
            format!("{status} = {}", e.value("done", s(status_name(StepStatus::Done))))
        }
        P::StepExists { .. } => format!("attribute_exists({})", e.name("pk")),
        P::TokenUsable { now, .. } => {
            let pk = e.name("pk");
            let used = e.name("usedAt");
            let expires = e.name("tokenExpiresAt");
            let now = e.value("now", n(now.timestamp_millis()));
            format!(
                "attribute_exists({pk}) AND attribute_not_exists({used}) \
                 AND (attribute_not_exists({expires}) OR {expires} > {now})"
            )
        }
    }
}

/// One action of a transaction and the preconditions its condition encodes (what a
/// cancellation of it means).
pub(crate) type Action = (TransactWriteItem, Vec<Precondition>);

#[cfg(test)] // The transactions as the tests read them; the adapter runs the plans.
fn items(actions: Vec<Action>) -> Vec<TransactWriteItem> {
    actions.into_iter().map(|(item, _)| item).collect()
}

/// The conditional update of the committed step.
pub(crate) fn step_update(table: &str, exchange_id: &ExchangeId, change: &StepChange) -> PortResult<Update> {
    if change.attempt == 0 {
        return Err(error::fault(SERVICE, "attempt numbers start at 1"));
    }
    let mut e = Expr::default();
    e.set("status", "status", s(status_name(change.status)));
    e.set("attempts", "attempt", n(change.attempt));
    let completed = e.name("completedAttempt");
    e.set.push(format!("{completed} = :attempt"));
    e.set("maxAttempts", "maxAttempts", n(change.max_attempts));
    if let Some(payload) = &change.payload {
        e.set("payload", "payload", to_av(payload)?);
    }
    match &change.last_error {
        Some(err) => e.set("lastError", "lastError", to_av(err)?),
        None => e.remove("lastError"),
    }
    match &change.next_retry_at {
        Some(at) => e.set("nextRetryAt", "nextRetryAt", to_av(at)?),
        None => e.remove("nextRetryAt"),
    }
    if let Some(at) = &change.completed_at {
        e.set("completedAt", "completedAt", to_av(at)?);
    }
    let logs = e.name("logs");
    e.value("empty", AttributeValue::L(Vec::new()));
    e.value("logs", to_av(&change.logs)?);
    e.set.push(format!("{logs} = list_append(if_not_exists({logs}, :empty), :logs)"));

    let condition = condition(&mut e, &change.preconditions(exchange_id));
    Update::builder()
        .table_name(table)
        .set_key(Some(step_key(exchange_id, change.step_id)))
        .update_expression(e.update_expression())
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)
}

/// Marks a still-`Initial` step `Skipped`.
pub(crate) fn skip_update(table: &str, exchange_id: &ExchangeId, step: StepId) -> PortResult<Update> {
    let mut e = Expr::default();
    e.set("status", "skipped", s("Skipped"));
    let condition = condition(&mut e, &[Precondition::StepInitial { exchange: exchange_id.clone(), step }]);
    Update::builder()
        .table_name(table)
        .set_key(Some(step_key(exchange_id, step)))
        .update_expression(e.update_expression())
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)
}

/// `recoveries = :recovery`; an item without `recoveries` (written before recoveries
/// existed) is at generation 0.
fn recovery_condition(e: &mut Expr, recovery: u32) -> String {
    let name = e.name("recoveries");
    let value = e.value("recovery", n(recovery));
    if recovery == 0 {
        format!("(attribute_not_exists({name}) OR {name} = {value})")
    } else {
        format!("{name} = {value}")
    }
}

/// The check that the exchange is not final and at generation `recovery`.
fn exchange_check(table: &str, exchange_id: &ExchangeId, recovery: u32) -> PortResult<TransactWriteItem> {
    let mut e = Expr::default();
    let condition = condition(&mut e, &[Precondition::ExchangeNotFinal { exchange: exchange_id.clone(), recovery }]);
    let check = ConditionCheck::builder()
        .table_name(table)
        .set_key(Some(exchange_key(exchange_id)))
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)?;
    Ok(TransactWriteItem::builder().condition_check(check).build())
}

/// The action on the exchange item (always requiring generation `recovery`), storing
/// `result` on it if given: a condition check, or a conditional update.
pub(crate) fn exchange_action(
    table: &str,
    exchange_id: &ExchangeId,
    change: &ExchangeChange,
    recovery: u32,
    now: DateTime<Utc>,
    result: Option<&Payload>,
) -> PortResult<TransactWriteItem> {
    match change {
        ExchangeChange::RequireNotFinal => {
            let Some(result) = result else { return exchange_check(table, exchange_id, recovery) };
            // Same condition as the check, but writing the result.
            let mut e = Expr::default();
            let condition = condition(&mut e, &[change.precondition(exchange_id, recovery)]);
            e.set("result", "result", to_av(result)?);
            let update = Update::builder()
                .table_name(table)
                .set_key(Some(exchange_key(exchange_id)))
                .update_expression(e.update_expression())
                .condition_expression(condition)
                .set_expression_attribute_names(e.names())
                .set_expression_attribute_values(e.values())
                .build()
                .map_err(build_fault)?;
            Ok(TransactWriteItem::builder().update(update).build())
        }
        ExchangeChange::SetStatus { from, to, error, completed_at } => {
            if from.is_empty() {
                return Err(error::fault(SERVICE, "SetStatus needs at least one status to move from"));
            }
            let mut e = Expr::default();
            let condition = condition(&mut e, &[change.precondition(exchange_id, recovery)]);
            e.set("status", "to", s(to.name()));
            e.set("gsi2pk", "gsi2pk", s(status_gsi_pk(*to)));
            e.set("updatedAt", "now", to_av(&now)?);
            match error {
                Some(err) => e.set("error", "error", to_av(err)?),
                // A running exchange carries no error of an earlier run (recovery).
                None if !to.is_final() => e.remove("error"),
                None => {}
            }
            match completed_at {
                Some(at) => e.set("completedAt", "completedAt", to_av(at)?),
                None if !to.is_final() => e.remove("completedAt"),
                None => {}
            }
            if let Some(result) = result {
                e.set("result", "result", to_av(result)?);
            }
            let update = Update::builder()
                .table_name(table)
                .set_key(Some(exchange_key(exchange_id)))
                .update_expression(e.update_expression())
                .condition_expression(condition)
                .set_expression_attribute_names(e.names())
                .set_expression_attribute_values(e.values())
                .build()
                .map_err(build_fault)?;
            Ok(TransactWriteItem::builder().update(update).build())
        }
    }
}

/// Checks that a step is `Done`.
pub(crate) fn done_check(table: &str, exchange_id: &ExchangeId, step: StepId) -> PortResult<TransactWriteItem> {
    let mut e = Expr::default();
    let condition = condition(&mut e, &[Precondition::StepDone { exchange: exchange_id.clone(), step }]);
    let check = ConditionCheck::builder()
        .table_name(table)
        .set_key(Some(step_key(exchange_id, step)))
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)?;
    Ok(TransactWriteItem::builder().condition_check(check).build())
}

/// Counts one more final sub-exchange on the parent's step (which must exist).
pub(crate) fn tally_update(table: &str, tally: &ParentTally) -> PortResult<Update> {
    let mut e = Expr::default();
    let counter = if tally.completed { SUB_COMPLETED } else { SUB_FAILED };
    e.add(counter, "one", n(1));
    let condition =
        condition(&mut e, &[Precondition::StepExists { exchange: tally.parent.clone(), step: tally.step_id }]);
    Update::builder()
        .table_name(table)
        .set_key(Some(step_key(&tally.parent, tally.step_id)))
        .update_expression(e.update_expression())
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)
}

fn put_action(table: &str, item: Item) -> PortResult<TransactWriteItem> {
    let put = Put::builder().table_name(table).set_item(Some(item)).build().map_err(build_fault)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// All actions of one commit, in order: the step, the skips, the `require_done` check, the
/// error puts, the timer puts, the exchange (with the result), the parent tally.
#[cfg(test)] // The transactions as the tests read them; the adapter runs the plans.
pub(crate) fn commit_actions(table: &str, commit: &StepCommit) -> PortResult<Vec<TransactWriteItem>> {
    commit_plan(table, commit).map(items)
}

/// [`commit_actions`] with the preconditions each action encodes.
pub(crate) fn commit_plan(table: &str, commit: &StepCommit) -> PortResult<Vec<Action>> {
    let id = &commit.exchange_id;
    let changed = commit.step.as_ref().map(|c| c.step_id);
    let skips = commit.skipped_steps();
    if commit.tally.as_ref().is_some_and(|t| t.parent == *id) {
        return Err(error::fault(SERVICE, "an exchange cannot be its own parent"));
    }
    if let Some(done) = commit.require_done {
        // One transaction cannot touch an item twice, and these could never apply anyway.
        if Some(done) == changed || skips.contains(&done) {
            return Err(error::fault(
                SERVICE,
                format!("step {done} cannot be both required done and changed in one commit"),
            ));
        }
    }
    let mut timer_names: Vec<String> = commit.timers.iter().map(Timer::name).collect();
    timer_names.sort();
    timer_names.dedup();
    if timer_names.len() != commit.timers.len() {
        return Err(error::fault(SERVICE, "a commit cannot store two timers of the same name"));
    }
    let count = usize::from(changed.is_some())
        + skips.len()
        + usize::from(commit.require_done.is_some())
        + commit.errors.len()
        + commit.timers.len()
        + 1
        + usize::from(commit.tally.is_some());
    if count > MAX_TRANSACTION_ACTIONS {
        return Err(error::fault(
            SERVICE,
            format!("a commit of {count} writes exceeds DynamoDB's {MAX_TRANSACTION_ACTIONS} per transaction"),
        ));
    }
    let mut actions: Vec<Action> = Vec::with_capacity(count);
    if let Some(change) = &commit.step {
        let update = TransactWriteItem::builder().update(step_update(table, id, change)?).build();
        actions.push((update, change.preconditions(id)));
    }
    for step in skips {
        let update = TransactWriteItem::builder().update(skip_update(table, id, step)?).build();
        actions.push((update, vec![Precondition::StepInitial { exchange: id.clone(), step }]));
    }
    if let Some(step) = commit.require_done {
        actions.push((done_check(table, id, step)?, vec![Precondition::StepDone { exchange: id.clone(), step }]));
    }
    for (i, record) in commit.errors.iter().enumerate() {
        actions.push((put_action(table, error_to_item(id, record, i)?)?, Vec::new()));
    }
    for timer in &commit.timers {
        actions.push((put_action(table, timer_to_item(id, timer)?)?, Vec::new()));
    }
    let exchange = exchange_action(table, id, &commit.exchange, commit.recovery, commit.now, commit.result.as_ref())?;
    actions.push((exchange, vec![commit.exchange.precondition(id, commit.recovery)]));
    if let Some(tally) = &commit.tally {
        let update = TransactWriteItem::builder().update(tally_update(table, tally)?).build();
        actions.push((update, vec![Precondition::StepExists { exchange: tally.parent.clone(), step: tally.step_id }]));
    }
    Ok(actions)
}

/// The claim: the conditional step update, then the exchange check.
#[cfg(test)] // The transactions as the tests read them; the adapter runs the plans.
pub(crate) fn claim_actions(
    table: &str,
    id: &ExchangeId,
    step: StepId,
    attempt: u32,
    recovery: u32,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> PortResult<Vec<TransactWriteItem>> {
    claim_plan(table, id, step, attempt, recovery, now, lease_until).map(items)
}

/// [`claim_actions`] with the preconditions each action encodes.
pub(crate) fn claim_plan(
    table: &str,
    id: &ExchangeId,
    step: StepId,
    attempt: u32,
    recovery: u32,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> PortResult<Vec<Action>> {
    if attempt == 0 {
        return Err(error::fault(SERVICE, "attempt numbers start at 1"));
    }
    let (on_step, on_exchange): (Vec<Precondition>, Vec<Precondition>) =
        claim_preconditions(id, step, attempt, recovery, now)
            .into_iter()
            .partition(|p| p.item() == ItemRef::Step(id.clone(), step));
    let claim = conditional_update(table, step_key(id, step), claim_update_parts(attempt, lease_until, &on_step))?;
    Ok(vec![(claim, on_step), (exchange_check(table, id, recovery)?, on_exchange)])
}

/// A transaction's update of `key` from its expression parts (update, condition, names, values).
fn conditional_update(
    table: &str,
    key: Item,
    (update, condition, names, values): (String, String, HashMap<String, String>, HashMap<String, AttributeValue>),
) -> PortResult<TransactWriteItem> {
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(key))
        .update_expression(update)
        .condition_expression(condition)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .build()
        .map_err(build_fault)?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// A recovery: the exchange update, then one reset per step (the step whose sub-exchange
/// failures are cleared within its reset, or on its own after the resets).
#[cfg(test)] // The transactions as the tests read them; the adapter runs the plans.
pub(crate) fn recover_actions(table: &str, commit: &RecoveryCommit) -> PortResult<Vec<TransactWriteItem>> {
    recover_plan(table, commit).map(items)
}

/// [`recover_actions`] with the preconditions each action encodes.
pub(crate) fn recover_plan(table: &str, commit: &RecoveryCommit) -> PortResult<Vec<Action>> {
    let id = &commit.exchange_id;
    let reset = commit.reset_steps();
    let clear_alone = commit.clear_alone();
    let count = reset.len() + 1 + usize::from(clear_alone.is_some()) + commit.timers.len();
    if count > MAX_TRANSACTION_ACTIONS {
        return Err(error::fault(
            SERVICE,
            format!(
                "a recovery can write at most {MAX_TRANSACTION_ACTIONS} items (the exchange, its steps and timers), not {count}"
            ),
        ));
    }
    let recoverable = Precondition::ExchangeIn {
        exchange: id.clone(),
        statuses: ExchangeEvent::RecoveryRequested.applies_in(),
        recovery: commit.recovery,
    };
    let mut e = Expr::default();
    let condition = condition(&mut e, std::slice::from_ref(&recoverable));
    e.set("status", "to", s(ExchangeStatus::Started.name()));
    e.set("gsi2pk", "gsi2pk", s(status_gsi_pk(ExchangeStatus::Started)));
    e.set("updatedAt", "now", to_av(&commit.now)?);
    let recoveries = e.name("recoveries");
    e.value("zero", n(0));
    e.value("one", n(1));
    e.set.push(format!("{recoveries} = if_not_exists({recoveries}, :zero) + :one"));
    if let Some(version) = &commit.integration_version {
        e.set("integrationVersion", "integrationVersion", to_av(version)?);
    }
    e.remove("error");
    e.remove("completedAt");
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(exchange_key(id)))
        .update_expression(e.update_expression())
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)?;
    let exists = |step: StepId| vec![Precondition::StepExists { exchange: id.clone(), step }];
    let mut actions: Vec<Action> = Vec::with_capacity(count);
    actions.push((TransactWriteItem::builder().update(update).build(), vec![recoverable]));
    for step in reset {
        let clear = commit.clear_sub_failures == Some(step);
        let update = TransactWriteItem::builder().update(reset_update(table, id, step, clear)?).build();
        actions.push((update, exists(step)));
    }
    if let Some(step) = clear_alone {
        let update = TransactWriteItem::builder().update(clear_sub_failures_update(table, id, step)?).build();
        actions.push((update, exists(step)));
    }
    for timer in &commit.timers {
        actions.push((put_action(table, timer_to_item(id, timer)?)?, Vec::new()));
    }
    Ok(actions)
}

/// A step back to `Initial` with no attempts, claims, errors, retry time or output; with
/// `clear_sub_failures`, its failed sub-exchanges count zero again. The sub-exchange total
/// and completions stay.
pub(crate) fn reset_update(
    table: &str,
    exchange_id: &ExchangeId,
    step: StepId,
    clear_sub_failures: bool,
) -> PortResult<Update> {
    let mut e = Expr::default();
    e.set("status", "initial", s(status_name(StepStatus::Initial)));
    e.value("zero", n(0));
    let mut zeroed = vec!["attempts", "completedAttempt", "claimedAttempt", "leaseUntil"];
    if clear_sub_failures {
        zeroed.push(SUB_FAILED);
    }
    for attribute in zeroed {
        let name = e.name(attribute);
        e.set.push(format!("{name} = :zero"));
    }
    for attribute in ["nextRetryAt", "lastError", "completedAt", "payload"] {
        e.remove(attribute);
    }
    // Never create a step that does not exist.
    let condition = condition(&mut e, &[Precondition::StepExists { exchange: exchange_id.clone(), step }]);
    Update::builder()
        .table_name(table)
        .set_key(Some(step_key(exchange_id, step)))
        .update_expression(e.update_expression())
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)
}

/// A step's failed sub-exchanges count zero again (the step must exist).
pub(crate) fn clear_sub_failures_update(table: &str, exchange_id: &ExchangeId, step: StepId) -> PortResult<Update> {
    let mut e = Expr::default();
    e.set(SUB_FAILED, "zero", n(0));
    let condition = condition(&mut e, &[Precondition::StepExists { exchange: exchange_id.clone(), step }]);
    Update::builder()
        .table_name(table)
        .set_key(Some(step_key(exchange_id, step)))
        .update_expression(e.update_expression())
        .condition_expression(condition)
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)
}

/// The preconditions of the actions whose conditions failed (`codes` are the cancellation
/// reasons, one per action in order).
pub(crate) fn conflict_of(codes: &[Option<&str>], required: Vec<Vec<Precondition>>) -> Conflict {
    let failed = codes
        .iter()
        .zip(required)
        .filter(|(code, _)| **code == Some("ConditionalCheckFailed"))
        .flat_map(|(_, required)| required)
        .collect();
    Conflict { failed }
}

/// What a cancelled transaction means.
pub(crate) fn cancellation_outcome<'a>(reasons: impl IntoIterator<Item = Option<&'a str>>) -> Result<(), ErrorKind> {
    let codes: Vec<&str> = reasons.into_iter().map(|c| c.unwrap_or("None")).collect();
    if codes.contains(&"ValidationError") {
        return Err(ErrorKind::Fault);
    }
    if codes.contains(&"ConditionalCheckFailed") {
        return Ok(());
    }
    Err(ErrorKind::Unavailable)
}

/// The claim update: see [`ExchangeRepository::claim`].
pub(crate) fn claim_update_parts(
    attempt: u32,
    lease_until: DateTime<Utc>,
    required: &[Precondition],
) -> (String, String, HashMap<String, String>, HashMap<String, AttributeValue>) {
    let mut e = Expr::default();
    e.set("claimedAttempt", "attempt", n(attempt));
    let attempts = e.name("attempts");
    e.set.push(format!("{attempts} = :attempt"));
    e.set("leaseUntil", "leaseUntil", n(lease_until.timestamp_millis()));
    // A claimed attempt is running, not waiting: a stale `nextRetryAt` would tell a
    // duplicate message that this attempt already failed.
    e.remove("nextRetryAt");
    let condition = condition(&mut e, required);
    (e.update_expression(), condition, e.names, e.values)
}

/// The sub-exchange total of a step: see [`ExchangeRepository::set_sub_exchange_total`]. The
/// counts start at zero but are kept if there are some already (a re-run of the step, or
/// sub-exchanges that ended before it got here): only `ADD`s and a recovery change them.
pub(crate) fn sub_total_parts(
    exchange_id: &ExchangeId,
    step: StepId,
    total: u32,
) -> (String, String, HashMap<String, String>, HashMap<String, AttributeValue>) {
    let mut e = Expr::default();
    e.set(SUB_TOTAL, "total", n(total));
    e.value("zero", n(0));
    for counter in [SUB_COMPLETED, SUB_FAILED] {
        let name = e.name(counter);
        e.set.push(format!("{name} = if_not_exists({name}, :zero)"));
    }
    // Never create a step that does not exist.
    let condition = condition(&mut e, &[Precondition::StepExists { exchange: exchange_id.clone(), step }]);
    (e.update_expression(), condition, e.names, e.values)
}

/// The token consumption and its outbox timer, one transaction: see
/// [`ExchangeRepository::consume_token`].
#[cfg(test)] // The transactions as the tests read them; the adapter runs the plans.
pub(crate) fn consume_token_actions(
    table: &str,
    hash: &str,
    now: DateTime<Utc>,
    outbox: &Timer,
) -> PortResult<Vec<TransactWriteItem>> {
    consume_token_plan(table, hash, now, outbox).map(items)
}

/// [`consume_token_actions`] with the preconditions each action encodes.
pub(crate) fn consume_token_plan(
    table: &str,
    hash: &str,
    now: DateTime<Utc>,
    outbox: &Timer,
) -> PortResult<Vec<Action>> {
    let usable = Precondition::TokenUsable { hash: hash.to_string(), now };
    Ok(vec![
        (conditional_update(table, token_key(hash), consume_token_parts(hash, now))?, vec![usable]),
        (put_action(table, timer_to_item(&outbox.exchange_id, outbox)?)?, Vec::new()),
    ])
}

/// The token consumption: see [`ExchangeRepository::consume_token`].
pub(crate) fn consume_token_parts(
    hash: &str,
    now: DateTime<Utc>,
) -> (String, String, HashMap<String, String>, HashMap<String, AttributeValue>) {
    let mut e = Expr::default();
    e.set("usedAt", "now", n(now.timestamp_millis()));
    let condition = condition(&mut e, &[Precondition::TokenUsable { hash: hash.to_string(), now }]);
    (e.update_expression(), condition, e.names, e.values)
}

// ------------------------------------------------------------------ cursors

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    /// The index the key belongs to.
    i: String,
    /// The last evaluated key (strings only).
    k: BTreeMap<String, String>,
}

pub(crate) fn encode_cursor(index: &str, key: &Item) -> PortResult<String> {
    let mut k = BTreeMap::new();
    for (name, value) in key {
        let value = value.as_s().map_err(|_| error::fault(SERVICE, format!("key attribute {name} is not a string")))?;
        k.insert(name.clone(), value.clone());
    }
    let json = serde_json::to_vec(&Cursor { i: index.to_string(), k })
        .map_err(|e| error::fault(SERVICE, format!("cannot encode cursor: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

pub(crate) fn decode_cursor(index: &str, cursor: &str) -> PortResult<Item> {
    let invalid = || PortError::InvalidCursor("invalid cursor".into());
    let bytes = URL_SAFE_NO_PAD.decode(cursor.trim_end_matches('=')).map_err(|_| invalid())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if cursor.i != index {
        return Err(PortError::InvalidCursor("the cursor belongs to a different filter".into()));
    }
    let expected = ["pk", "sk", index_keys(index).0, index_keys(index).1];
    if cursor.k.len() != expected.len() || !expected.iter().all(|name| cursor.k.contains_key(*name)) {
        return Err(invalid());
    }
    Ok(cursor.k.into_iter().map(|(k, v)| (k, AttributeValue::S(v))).collect())
}

fn index_keys(index: &str) -> (&'static str, &'static str) {
    match index {
        INDEX_BY_INTEGRATION => ("gsi1pk", "gsi1sk"),
        INDEX_BY_STATUS => ("gsi2pk", "gsi2sk"),
        INDEX_BY_DUE => ("gsi4pk", "gsi4sk"),
        INDEX_BY_ERROR => ("gsi5pk", "gsi5sk"),
        INDEX_BY_PARENT => ("gsi6pk", "gsi6sk"),
        _ => ("gsi3pk", "gsi3sk"),
    }
}

/// A Query on one index: the key condition, an optional filter and their placeholders.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IndexQuery {
    index: &'static str,
    key_condition: String,
    filter: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    /// Ascending sort key order (`ScanIndexForward`).
    forward: bool,
}

impl IndexQuery {
    /// `<index pk> = partition`, plus whatever the caller adds.
    fn on(index: &'static str, partition: String, forward: bool) -> (Self, Expr) {
        let mut e = Expr::default();
        let pk = e.name(index_keys(index).0);
        let value = e.value("gpk", s(partition));
        let query = Self {
            index,
            key_condition: format!("{pk} = {value}"),
            filter: None,
            names: HashMap::new(),
            values: HashMap::new(),
            forward,
        };
        (query, e)
    }
    fn finish(mut self, e: Expr) -> Self {
        self.names = e.names;
        self.values = e.values;
        self
    }
}

/// The query of [`ExchangeRepository::list`]: newest first, except sub-exchanges, which
/// come in creation order (their index order).
pub(crate) fn list_query(filter: &ExchangeFilter) -> IndexQuery {
    let (index, partition, status) = list_plan(filter);
    let (mut query, mut e) = IndexQuery::on(index, partition, index == INDEX_BY_PARENT);
    let mut conditions = Vec::new();
    if let Some(status) = status {
        let name = e.name("status");
        let value = e.value("status", s(status.name()));
        conditions.push(format!("{name} = {value}"));
    }
    if index == INDEX_BY_PARENT {
        if let Some(code) = &filter.integration_code {
            let name = e.name("integrationCode");
            let value = e.value("integrationCode", s(code.to_string()));
            conditions.push(format!("{name} = {value}"));
        }
    }
    if !conditions.is_empty() {
        query.filter = Some(conditions.join(" AND "));
    }
    query.finish(e)
}

/// The query of [`ExchangeRepository::errors`].
pub(crate) fn errors_query(filter: &ErrorFilter) -> PortResult<IndexQuery> {
    let (mut query, mut e) = IndexQuery::on(INDEX_BY_ERROR, ERRORS_GSI_PK.to_string(), false);
    if let Some(since) = filter.since {
        let sk = e.name(index_keys(INDEX_BY_ERROR).1);
        let value = e.value("since", s(error_since_key(since)));
        query.key_condition.push_str(&format!(" AND {sk} >= {value}"));
    }
    let mut conditions = Vec::new();
    if let Some(classification) = &filter.classification {
        let name = e.name("classification");
        let value = e.value("classification", to_av(classification)?);
        conditions.push(format!("{name} = {value}"));
    }
    if let Some(code) = &filter.integration_code {
        let name = e.name("integrationCode");
        let value = e.value("integrationCode", s(code.to_string()));
        conditions.push(format!("{name} = {value}"));
    }
    if !conditions.is_empty() {
        query.filter = Some(conditions.join(" AND "));
    }
    Ok(query.finish(e))
}

/// The query of [`ExchangeRepository::due_timers`]: oldest first, up to `until`.
pub(crate) fn due_query(until: DateTime<Utc>) -> IndexQuery {
    let (mut query, mut e) = IndexQuery::on(INDEX_BY_DUE, TIMERS_GSI_PK.to_string(), true);
    let sk = e.name(index_keys(INDEX_BY_DUE).1);
    let value = e.value("until", s(timers_until_key(until)));
    query.key_condition.push_str(&format!(" AND {sk} <= {value}"));
    query.finish(e)
}

/// The index, its partition key value and the status to filter on, for a filter (on
/// `byParent`, the integration code is filtered on too).
pub(crate) fn list_plan(filter: &ExchangeFilter) -> (&'static str, String, Option<ExchangeStatus>) {
    if let Some(parent) = &filter.parent {
        return (INDEX_BY_PARENT, parent_gsi_pk(parent), filter.status);
    }
    match (&filter.integration_code, filter.status) {
        (Some(code), status) => (INDEX_BY_INTEGRATION, integration_gsi_pk(code), status),
        (None, Some(status)) => (INDEX_BY_STATUS, status_gsi_pk(status), None),
        (None, None) => (INDEX_BY_CREATION, CREATION_GSI_PK.to_string(), None),
    }
}

// ------------------------------------------------------------------ batches

/// The items with each key (`pk`, `sk`) once: at its first place, with its last content.
pub(crate) fn dedup_by_key(items: Vec<Item>) -> Vec<Item> {
    let mut at: HashMap<(String, String), usize> = HashMap::with_capacity(items.len());
    let mut out: Vec<Item> = Vec::with_capacity(items.len());
    for item in items {
        let key = (
            attr_str(&item, "pk").unwrap_or_default().to_string(),
            attr_str(&item, "sk").unwrap_or_default().to_string(),
        );
        match at.get(&key) {
            Some(&i) => out[i] = item,
            None => {
                at.insert(key, out.len());
                out.push(item);
            }
        }
    }
    out
}

/// The items of `create` / `create_many`: each exchange's steps, then the exchange itself.
pub(crate) fn creation_items<'a>(
    exchanges: impl IntoIterator<Item = (&'a Exchange, &'a [ExchangeStep])>,
) -> PortResult<Vec<Item>> {
    let mut items = Vec::new();
    for (exchange, steps) in exchanges {
        for step in steps {
            items.push(step_to_item(&exchange.exchange_id, step)?);
        }
        items.push(exchange_to_item(exchange)?);
    }
    Ok(items)
}

/// Waits between retries of unprocessed batch entries: 50 ms doubling up to 2 s, 8 rounds.
struct Backoff {
    delay: Duration,
    rounds: u32,
}

impl Backoff {
    const MAX_ROUNDS: u32 = 8;
    fn new() -> Self {
        Self { delay: Duration::from_millis(50), rounds: 0 }
    }
    /// Sleeps before the next round; false once the rounds are used up.
    async fn wait(&mut self) -> bool {
        self.rounds += 1;
        if self.rounds > Self::MAX_ROUNDS {
            return false;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(2));
        true
    }
}

// ------------------------------------------------------------------ repository

/// Exchanges, steps and logs in the exchanges table.
#[derive(Debug, Clone)]
pub struct DynamoExchangeRepository {
    client: Client,
    table: String,
}

impl DynamoExchangeRepository {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    /// Runs one TransactWriteItems: `Conflict` if a condition failed, nothing written.
    /// Runs one transaction. A cancellation for failed conditions is a [`Conflict`] naming
    /// the preconditions of the actions whose conditions failed (from the cancellation
    /// reasons, one per action in order).
    async fn transact(&self, actions: Vec<Action>) -> PortResult<Result<(), Conflict>> {
        let (items, required): (Vec<TransactWriteItem>, Vec<Vec<Precondition>>) = actions.into_iter().unzip();
        let result = self.client.transact_write_items().set_transact_items(Some(items)).send().await;
        match result {
            Ok(_) => Ok(Ok(())),
            Err(e) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) = e.as_service_error() {
                    let reasons = cancel.cancellation_reasons();
                    let codes: Vec<Option<&str>> = reasons.iter().map(|r| r.code()).collect();
                    return match cancellation_outcome(codes.iter().copied()) {
                        Ok(()) => Ok(Err(conflict_of(&codes, required))),
                        Err(kind) => Err(error::make(
                            kind,
                            SERVICE,
                            format!(
                                "TransactWriteItems cancelled ({}): {}",
                                codes.iter().map(|c| c.unwrap_or("None")).collect::<Vec<_>>().join(", "),
                                cancel.message().unwrap_or_default()
                            ),
                        )),
                    };
                }
                if e.code() == Some("TransactionCanceledException") {
                    // Reasons not parsed: treat as a conflict only if the message says so.
                    if e.message().is_some_and(|m| m.contains("ConditionalCheckFailed")) {
                        return Ok(Err(Conflict::default()));
                    }
                }
                Err(error::sdk(SERVICE, "TransactWriteItems", e))
            }
        }
    }

    /// One page of up to `limit` items of an index query, resuming at `cursor`, with the
    /// cursor of the next page.
    async fn query_page(
        &self,
        query: &IndexQuery,
        limit: u32,
        cursor: Option<&str>,
    ) -> PortResult<(Vec<Item>, Option<String>)> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT) as usize;
        let start = match cursor {
            Some(c) if !c.is_empty() => Some(decode_cursor(query.index, c)?),
            _ => None,
        };
        let (items, next_key) = self.query_items(query, limit, start).await?;
        let next_cursor = match next_key {
            Some(key) => Some(encode_cursor(query.index, &key)?),
            None => None,
        };
        Ok((items, next_cursor))
    }

    /// Reads up to `limit` items of an index query from `start` on, following DynamoDB's
    /// pages; the key to resume at if there may be more.
    async fn query_items(
        &self,
        query: &IndexQuery,
        limit: usize,
        mut start: Option<Item>,
    ) -> PortResult<(Vec<Item>, Option<Item>)> {
        let mut items: Vec<Item> = Vec::new();
        let mut next_key: Option<Item> = None;
        loop {
            let remaining = limit - items.len();
            // With a filter, DynamoDB's limit counts items read before filtering: read more.
            let page_limit = if query.filter.is_some() { remaining.max(100) } else { remaining };
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(query.index)
                .key_condition_expression(&query.key_condition)
                .set_filter_expression(query.filter.clone())
                .set_expression_attribute_names(Some(query.names.clone()))
                .set_expression_attribute_values(Some(query.values.clone()))
                .scan_index_forward(query.forward)
                .limit(page_limit as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| error::sdk(SERVICE, "Query", e))?;
            let page = out.items.unwrap_or_default();
            let lek = out.last_evaluated_key.filter(|k| !k.is_empty());
            if page.len() >= remaining {
                let truncated = page.len() > remaining;
                items.extend(page.into_iter().take(remaining));
                next_key = if truncated {
                    // Resume right after the last item handed out.
                    let (gpk, gsk) = index_keys(query.index);
                    let last = items.last().cloned().unwrap_or_default();
                    Some(
                        ["pk", "sk", gpk, gsk]
                            .iter()
                            .filter_map(|k| last.get(*k).map(|v| (k.to_string(), v.clone())))
                            .collect(),
                    )
                } else {
                    lek
                };
                break;
            }
            items.extend(page);
            match lek {
                Some(key) => start = Some(key),
                None => break,
            }
        }
        Ok((items, next_key))
    }

    /// Puts the items in order, ≤ 25 per BatchWriteItem, retrying unprocessed ones with
    /// backoff. An item given twice (same key) is written once, with its last content, at its
    /// first place: one BatchWriteItem refuses duplicate keys.
    async fn batch_put(&self, items: Vec<Item>) -> PortResult<()> {
        let items = dedup_by_key(items);
        for chunk in items.chunks(MAX_BATCH_WRITE) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|item| {
                    let put = PutRequest::builder().set_item(Some(item.clone())).build().map_err(build_fault)?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<PortResult<_>>()?;
            let mut backoff = Backoff::new();
            while !requests.is_empty() {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(self.table.clone(), requests)
                    .send()
                    .await
                    .map_err(|e| error::sdk(SERVICE, "BatchWriteItem", e))?;
                requests = out.unprocessed_items.and_then(|mut m| m.remove(&self.table)).unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                if !backoff.wait().await {
                    return Err(error::unavailable(
                        SERVICE,
                        format!("BatchWriteItem: {} items still unprocessed after retries", requests.len()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The status of each exchange item found among `keys` (≤ 100), by `pk`, retrying
    /// unprocessed keys with backoff.
    async fn batch_statuses(&self, mut keys: Vec<Item>, found: &mut HashMap<String, ExchangeStatus>) -> PortResult<()> {
        let mut backoff = Backoff::new();
        while !keys.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .projection_expression("#pk, #sk, #status")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_names("#sk", "sk")
                .expression_attribute_names("#status", "status")
                .consistent_read(true)
                .build()
                .map_err(build_fault)?;
            let out = self
                .client
                .batch_get_item()
                .request_items(self.table.clone(), request)
                .send()
                .await
                .map_err(|e| error::sdk(SERVICE, "BatchGetItem", e))?;
            for item in out.responses.and_then(|mut r| r.remove(&self.table)).unwrap_or_default() {
                let pk = attr_str(&item, "pk").ok_or_else(|| error::fault(SERVICE, "stored exchange has no pk"))?;
                let status = item
                    .get("status")
                    .cloned()
                    .ok_or_else(|| error::fault(SERVICE, format!("stored exchange {pk} has no status")))?;
                let status: ExchangeStatus = serde_dynamo::from_attribute_value(status)
                    .map_err(|e| error::fault(SERVICE, format!("stored exchange {pk} has a malformed status: {e}")))?;
                found.insert(pk.to_string(), status);
            }
            keys = out
                .unprocessed_keys
                .and_then(|mut m| m.remove(&self.table))
                .map(|k| k.keys().to_vec())
                .unwrap_or_default();
            if keys.is_empty() {
                break;
            }
            if !backoff.wait().await {
                return Err(error::unavailable(
                    SERVICE,
                    format!("BatchGetItem: {} keys still unprocessed after retries", keys.len()),
                ));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ExchangeRepository for DynamoExchangeRepository {
    async fn create(&self, exchange: &Exchange, steps: &[ExchangeStep]) -> PortResult<()> {
        self.batch_put(creation_items([(exchange, steps)])?).await
    }

    async fn create_many(&self, exchanges: &[(Exchange, Vec<ExchangeStep>)]) -> PortResult<()> {
        let items = creation_items(exchanges.iter().map(|(exchange, steps)| (exchange, steps.as_slice())))?;
        self.batch_put(items).await
    }

    async fn statuses(&self, ids: &[ExchangeId]) -> PortResult<Vec<(ExchangeId, ExchangeStatus)>> {
        // One BatchGetItem refuses duplicate keys.
        let mut unique: Vec<&ExchangeId> = Vec::with_capacity(ids.len());
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for id in ids {
            if seen.insert(id) {
                unique.push(id);
            }
        }
        let mut found: HashMap<String, ExchangeStatus> = HashMap::with_capacity(unique.len());
        for chunk in unique.chunks(MAX_BATCH_GET) {
            self.batch_statuses(chunk.iter().map(|id| exchange_key(id)).collect(), &mut found).await?;
        }
        Ok(unique.into_iter().filter_map(|id| found.get(&exchange_pk(id)).map(|st| (id.clone(), *st))).collect())
    }

    async fn get(&self, id: &ExchangeId) -> PortResult<Option<ExchangeDetail>> {
        let mut exchange = None;
        let mut steps = Vec::new();
        let mut logs = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(exchange_pk(id)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| error::sdk(SERVICE, "Query", e))?;
            for item in out.items.unwrap_or_default() {
                match attr_str(&item, "sk") {
                    Some(EXCHANGE_SK) => exchange = Some(exchange_from_item(item)?),
                    Some(sk) if sk.starts_with(STEP_SK_PREFIX) => {
                        let (step, step_logs) = step_from_item(item)?;
                        steps.push(step);
                        logs.extend(step_logs);
                    }
                    _ => {}
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        let Some(exchange) = exchange else { return Ok(None) };
        steps.sort_by_key(|s| (s.sequence, s.step_id));
        // Stable: lines of one instant keep their step and append order.
        logs.sort_by_key(|l| l.timestamp);
        Ok(Some(ExchangeDetail { exchange, steps, logs }))
    }

    async fn get_step(&self, id: &ExchangeId, step: StepId) -> PortResult<Option<ExchangeStep>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(step_key(id, step)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "GetItem", e))?;
        match out.item {
            Some(item) if !item.is_empty() => Ok(Some(step_from_item(item)?.0)),
            _ => Ok(None),
        }
    }

    async fn list(&self, filter: &ExchangeFilter, limit: u32, cursor: Option<&str>) -> PortResult<ExchangePage> {
        let query = list_query(filter);
        let (items, next_cursor) = self.query_page(&query, limit, cursor).await?;
        let exchanges = items.into_iter().map(exchange_from_item).collect::<PortResult<Vec<_>>>()?;
        Ok(ExchangePage { items: exchanges, next_cursor })
    }

    async fn try_claim(
        &self,
        id: &ExchangeId,
        step: StepId,
        attempt: u32,
        recovery: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> PortResult<Result<(), Conflict>> {
        self.transact(claim_plan(&self.table, id, step, attempt, recovery, now, lease_until)?).await
    }

    async fn try_commit(&self, commit: &StepCommit) -> PortResult<Result<(), Conflict>> {
        self.transact(commit_plan(&self.table, commit)?).await
    }

    async fn try_recover(&self, commit: &RecoveryCommit) -> PortResult<Result<(), Conflict>> {
        self.transact(recover_plan(&self.table, commit)?).await
    }

    async fn errors(&self, filter: &ErrorFilter, limit: u32, cursor: Option<&str>) -> PortResult<ErrorPage> {
        let query = errors_query(filter)?;
        let (items, next_cursor) = self.query_page(&query, limit, cursor).await?;
        let items = items.into_iter().map(error_from_item).collect::<PortResult<Vec<_>>>()?;
        Ok(ErrorPage { items, next_cursor })
    }

    async fn due_timers(&self, until: DateTime<Utc>, limit: u32) -> PortResult<Vec<Timer>> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT) as usize;
        let (items, _) = self.query_items(&due_query(until), limit, None).await?;
        items.iter().map(timer_from_item).collect()
    }

    async fn take_timer(&self, timer: &Timer) -> PortResult<bool> {
        let mut e = Expr::default();
        let (gpk, gsk) = index_keys(INDEX_BY_DUE);
        e.remove(gpk);
        e.remove(gsk);
        let pk_name = e.name(gpk);
        let sk_name = e.name(gsk);
        // Only this very timer: one re-armed since it was read stays due.
        let sk_value = e.value("gsi4sk", s(timer_gsi_sk(timer)));
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(timer_key(timer)))
            .update_expression(e.update_expression())
            .condition_expression(format!("attribute_exists({pk_name}) AND {sk_name} = {sk_value}"))
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(e.values())
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(error::sdk(SERVICE, "UpdateItem", e)),
        }
    }

    async fn put_token(&self, token: &CallbackToken) -> PortResult<()> {
        let item = token_to_item(token, Utc::now())?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", "pk")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                Err(error::fault(SERVICE, "a callback token with this hash exists already"))
            }
            Err(e) => Err(error::sdk(SERVICE, "PutItem", e)),
        }
    }

    async fn usable_token(&self, hash: &str, now: DateTime<Utc>) -> PortResult<Option<CallbackToken>> {
        let result = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(token_key(hash)))
            .consistent_read(true)
            .send()
            .await;
        let item = result.map_err(|e| error::sdk(SERVICE, "GetItem", e))?.item;
        let Some(item) = item else { return Ok(None) };
        let used = item.contains_key("usedAt");
        let expired = item
            .get("tokenExpiresAt")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|at| at <= now.timestamp_millis());
        if used || expired {
            return Ok(None);
        }
        Ok(Some(token_from_item(&item)?))
    }

    async fn consume_token(&self, hash: &str, now: DateTime<Utc>, outbox: &Timer) -> PortResult<bool> {
        let actions = consume_token_plan(&self.table, hash, now, outbox)?;
        Ok(self.transact(actions).await?.is_ok())
    }

    async fn set_sub_exchange_total(&self, id: &ExchangeId, step: StepId, total: u32) -> PortResult<()> {
        let (update, condition, names, values) = sub_total_parts(id, step, total);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(step_key(id, step)))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                Err(error::fault(SERVICE, format!("exchange {id} has no step {step} to count sub-exchanges on")))
            }
            Err(e) => Err(error::sdk(SERVICE, "UpdateItem", e)),
        }
    }

    async fn health(&self) -> PortResult<()> {
        super::table_health(&self.client, &self.table).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_core::exchange::LogType;
    use handoff_core::handoff::TimerKind;
    use handoff_core::ids::DataFileSetId;
    use handoff_core::retry::ErrorClassification;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc)).expect("test time")
    }

    fn exchange() -> Exchange {
        Exchange {
            exchange_id: ExchangeId::new("01J0000000000000000000000A"),
            integration_code: IntegrationCode::parse("PROVIDER_IMPORT").expect("code"),
            integration_version: IntegrationVersion::number(2).expect("version"),
            status: ExchangeStatus::Failed,
            parameters: serde_json::json!({"region": "EU", "n": 12345678901234_i64, "x": 1.5, "deep": [[{"a": null}]]}),
            created_at: t("2026-01-02T03:04:05.678901Z"),
            updated_at: t("2026-01-02T03:05:00Z"),
            completed_at: Some(t("2026-01-02T03:05:00Z")),
            error: Some(ExchangeError {
                classification: ErrorClassification::Business,
                message: "bad data".into(),
                retryable: true,
                step_id: Some(StepId::from_sequence(3)),
                sub_step: Some(SubStep::Transform),
                at: t("2026-01-02T03:05:00Z"),
            }),
            recoveries: 3,
            parent: None,
            result: None,
        }
    }

    fn step(seq: u32) -> ExchangeStep {
        ExchangeStep {
            step_id: StepId::from_sequence(seq),
            sequence: seq,
            integration_step: Some("fetch".into()),
            sub_step: SubStep::InvokeQuery,
            destination: Some(1),
            status: StepStatus::Initial,
            payload: Some(Payload::DataFileSet { data_file_set_id: DataFileSetId::new("set-1") }),
            attempts: 2,
            max_attempts: 5,
            last_error: Some(StepError {
                classification: ErrorClassification::System,
                message: "timeout".into(),
                at: t("2026-01-02T03:04:05Z"),
            }),
            next_retry_at: Some(t("2026-01-02T03:04:09Z")),
            completed_at: None,
            sub_exchanges: None,
        }
    }

    #[test]
    fn exchange_item_round_trips() {
        let ex = exchange();
        let item = exchange_to_item(&ex).expect("encode");
        assert_eq!(attr_str(&item, "pk"), Some("EX#01J0000000000000000000000A"));
        assert_eq!(attr_str(&item, "sk"), Some("EXCHANGE"));
        assert_eq!(attr_str(&item, "status"), Some("Failed"));
        assert_eq!(attr_str(&item, "gsi1pk"), Some("INT#PROVIDER_IMPORT"));
        assert_eq!(attr_str(&item, "gsi2pk"), Some("STATUS#Failed"));
        assert_eq!(attr_str(&item, "gsi3pk"), Some("EXCHANGES"));
        assert_eq!(attr_str(&item, "gsi1sk"), Some("2026-01-02T03:04:05.678Z#01J0000000000000000000000A"));
        assert_eq!(item.get("integrationVersion"), Some(&AttributeValue::N("2".into())));
        assert_eq!(item.get("recoveries"), Some(&n(3)));
        let error = item.get("error").and_then(|e| e.as_m().ok()).expect("error map");
        assert_eq!(error.get("retryable"), Some(&AttributeValue::Bool(true)));
        assert_eq!(exchange_from_item(item.clone()).expect("decode"), ex);

        // Written before recoveries and `retryable` existed: generation 0, not retryable.
        let mut old = item;
        old.remove("recoveries");
        if let Some(AttributeValue::M(error)) = old.get_mut("error") {
            error.remove("retryable");
        }
        let back = exchange_from_item(old).expect("decode old");
        assert_eq!(back.recoveries, 0);
        assert!(!back.error.expect("error").retryable);

        let mut minimal = exchange();
        minimal.integration_version = IntegrationVersion::NULL;
        minimal.parameters = serde_json::Value::Null;
        minimal.error = None;
        minimal.completed_at = None;
        minimal.status = ExchangeStatus::New;
        minimal.recoveries = 0;
        let item = exchange_to_item(&minimal).expect("encode");
        assert_eq!(item.get("integrationVersion"), Some(&AttributeValue::Null(true)));
        assert_eq!(item.get("recoveries"), Some(&n(0)), "written at creation");
        for absent in ["parent", "result", "gsi6pk", "gsi6sk"] {
            assert!(!item.contains_key(absent), "{absent}: not a sub-exchange, no result");
        }
        assert_eq!(exchange_from_item(item).expect("decode"), minimal);

        // A completed sub-exchange: on the parent's index, with its result.
        let mut child = exchange();
        child.status = ExchangeStatus::Completed;
        child.error = None;
        child.parent =
            Some(ParentLink { exchange_id: ExchangeId::new("parent-1"), step_id: StepId::from_sequence(4), index: 17 });
        child.result = Some(Payload::raw("{\"total\":3}"));
        let item = exchange_to_item(&child).expect("encode");
        assert_eq!(attr_str(&item, "gsi6pk"), Some("PARENT#parent-1"));
        assert_eq!(attr_str(&item, "gsi6sk"), Some("0004#00000017"));
        let parent = item.get("parent").and_then(|p| p.as_m().ok()).expect("parent map");
        assert_eq!(parent.get("exchangeId"), Some(&s("parent-1")));
        assert_eq!(parent.get("index"), Some(&n(17)));
        assert!(item.get("result").is_some_and(|r| r.as_m().is_ok()), "result as a map");
        assert_eq!(exchange_from_item(item).expect("decode"), child);
        // Siblings sort by index as text.
        let link = |index| ParentLink { exchange_id: ExchangeId::new("p"), step_id: StepId::from_sequence(4), index };
        assert!(parent_gsi_sk(&link(9)) < parent_gsi_sk(&link(10)));
        assert!(
            parent_gsi_sk(&link(99_999_999))
                < parent_gsi_sk(&ParentLink { step_id: StepId::from_sequence(5), ..link(0) })
        );
    }

    #[test]
    fn step_item_round_trips_with_bookkeeping() {
        let st = step(3);
        let item = step_to_item(&ExchangeId::new("e1"), &st).expect("encode");
        assert_eq!(attr_str(&item, "sk"), Some("STEP#0003"));
        assert_eq!(attr_str(&item, "status"), Some("Initial"));
        assert_eq!(item.get("completedAttempt"), Some(&AttributeValue::N("0".into())));
        assert_eq!(item.get("claimedAttempt"), Some(&AttributeValue::N("0".into())));
        assert_eq!(item.get("leaseUntil"), Some(&AttributeValue::N("0".into())));
        assert_eq!(item.get("logs"), Some(&AttributeValue::L(vec![])));
        let (back, logs) = step_from_item(item).expect("decode");
        assert_eq!(back, st);
        assert!(logs.is_empty());

        let mut plain = step(0);
        plain.integration_step = None;
        plain.destination = None;
        plain.payload = Some(Payload::raw("{\"a\":1}"));
        plain.last_error = None;
        plain.next_retry_at = None;
        plain.completed_at = Some(t("2026-01-02T03:04:05Z"));
        let mut item = step_to_item(&ExchangeId::new("e1"), &plain).expect("encode");
        let line = LogLine {
            kind: LogType::User,
            line: "hello".into(),
            timestamp: t("2026-01-02T03:04:05.5Z"),
            step_id: StepId::from_sequence(0),
        };
        item.insert("logs".into(), to_av(&vec![line.clone()]).expect("logs"));
        let (back, logs) = step_from_item(item.clone()).expect("decode");
        assert_eq!(back, plain);
        assert_eq!(logs, vec![line]);
        for absent in ["subTotal", "subCompleted", "subFailed"] {
            assert!(!item.contains_key(absent), "{absent}: only set on subflow steps");
        }

        // A subflow step: its counts (a count not yet written is 0).
        item.insert("subTotal".into(), n(5));
        item.insert("subCompleted".into(), n(2));
        let (back, _) = step_from_item(item.clone()).expect("decode");
        assert_eq!(back.sub_exchanges, Some(SubExchangeCounts { total: 5, completed: 2, failed: 0 }));
        item.insert("subFailed".into(), n(1));
        let (back, _) = step_from_item(item).expect("decode");
        assert_eq!(back.sub_exchanges, Some(SubExchangeCounts { total: 5, completed: 2, failed: 1 }));
    }

    #[test]
    fn sub_exchange_total_keeps_counts() {
        let (update, condition, names, values) = sub_total_parts(&ExchangeId::new("e"), StepId::from_sequence(1), 7);
        assert_eq!(
            update,
            "SET #subTotal = :total, #subCompleted = if_not_exists(#subCompleted, :zero), \
             #subFailed = if_not_exists(#subFailed, :zero)"
        );
        assert_eq!(condition, "attribute_exists(#pk)");
        assert_eq!(names.get("#subFailed").map(String::as_str), Some("subFailed"));
        assert_eq!(values, HashMap::from([(":total".to_string(), n(7)), (":zero".to_string(), n(0))]));
    }

    #[test]
    fn creation_items_pack_exchanges_and_dedup() {
        let a = exchange();
        let mut b = exchange();
        b.exchange_id = ExchangeId::new("b");
        let (sa, sb) = (vec![step(0), step(1)], vec![step(0)]);
        let items = creation_items([(&a, sa.as_slice()), (&b, sb.as_slice()), (&a, sa.as_slice())]).expect("items");
        let keys = |items: &[Item]| -> Vec<String> {
            items
                .iter()
                .map(|i| format!("{}/{}", attr_str(i, "pk").unwrap_or(""), attr_str(i, "sk").unwrap_or("")))
                .collect()
        };
        assert_eq!(items.len(), 8);
        let unique = dedup_by_key(items);
        let a_pk = "EX#01J0000000000000000000000A";
        assert_eq!(
            keys(&unique),
            vec![
                format!("{a_pk}/STEP#0000"),
                format!("{a_pk}/STEP#0001"),
                format!("{a_pk}/EXCHANGE"),
                "EX#b/STEP#0000".to_string(),
                "EX#b/EXCHANGE".to_string(),
            ],
            "steps before their exchange, each key once"
        );
        let mut later = exchange();
        later.status = ExchangeStatus::Started;
        let again = creation_items([(&a, &[][..]), (&later, &[][..])]).expect("items");
        let unique = dedup_by_key(again);
        assert_eq!(unique.len(), 1);
        assert_eq!(attr_str(&unique[0], "status"), Some("Started"), "the last content wins");
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let key: Item = HashMap::from([
            ("pk".to_string(), s("EX#a")),
            ("sk".to_string(), s("EXCHANGE")),
            ("gsi2pk".to_string(), s("STATUS#New")),
            ("gsi2sk".to_string(), s("2026-01-01T00:00:00.000Z#a")),
        ]);
        let c = encode_cursor(INDEX_BY_STATUS, &key).expect("encode");
        assert!(c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'));
        assert_eq!(decode_cursor(INDEX_BY_STATUS, &c).expect("decode"), key);
        assert!(decode_cursor(INDEX_BY_CREATION, &c).is_err());
        assert!(decode_cursor(INDEX_BY_STATUS, "not a cursor!").is_err());
        assert!(decode_cursor(INDEX_BY_STATUS, &URL_SAFE_NO_PAD.encode(b"{\"i\":\"byStatus\",\"k\":{}}")).is_err());
        let numeric: Item = HashMap::from([("pk".to_string(), n(1))]);
        assert!(encode_cursor(INDEX_BY_STATUS, &numeric).is_err());
    }

    #[test]
    fn list_picks_the_index() {
        let code = IntegrationCode::parse("A").expect("code");
        let both =
            ExchangeFilter { integration_code: Some(code.clone()), status: Some(ExchangeStatus::Failed), parent: None };
        assert_eq!(list_plan(&both), (INDEX_BY_INTEGRATION, "INT#A".into(), Some(ExchangeStatus::Failed)));
        let status = ExchangeFilter { status: Some(ExchangeStatus::Failed), ..ExchangeFilter::default() };
        assert_eq!(list_plan(&status), (INDEX_BY_STATUS, "STATUS#Failed".into(), None));
        assert_eq!(list_plan(&ExchangeFilter::default()), (INDEX_BY_CREATION, "EXCHANGES".into(), None));
        let children = ExchangeFilter { parent: Some(ExchangeId::new("p")), ..both };
        assert_eq!(list_plan(&children), (INDEX_BY_PARENT, "PARENT#p".into(), Some(ExchangeStatus::Failed)));
    }

    fn change(claimed: bool) -> StepChange {
        StepChange {
            step_id: StepId::from_sequence(2),
            attempt: 3,
            claimed,
            status: StepStatus::Done,
            payload: Some(Payload::raw("x")),
            max_attempts: 5,
            last_error: None,
            next_retry_at: None,
            completed_at: Some(t("2026-01-02T03:04:05Z")),
            logs: vec![],
        }
    }

    #[test]
    fn step_update_conditions() {
        let u = step_update("T", &ExchangeId::new("e"), &change(false)).expect("update");
        assert_eq!(u.condition_expression(), Some("#status = :initial AND #completedAttempt < :attempt"));
        let expr = u.update_expression();
        assert!(
            expr.starts_with("SET #status = :status, #attempts = :attempt, #completedAttempt = :attempt"),
            "{expr}"
        );
        assert!(expr.contains("#logs = list_append(if_not_exists(#logs, :empty), :logs)"), "{expr}");
        assert!(expr.ends_with("REMOVE #lastError, #nextRetryAt"), "{expr}");
        assert_eq!(u.key().get("sk"), Some(&s("STEP#0002")));
        let values = u.expression_attribute_values().expect("values");
        assert_eq!(values.get(":attempt"), Some(&n(3)));
        assert_eq!(values.get(":status"), Some(&s("Done")));

        let u = step_update("T", &ExchangeId::new("e"), &change(true)).expect("update");
        assert_eq!(
            u.condition_expression(),
            Some("#status = :initial AND #completedAttempt < :attempt AND #claimedAttempt = :attempt")
        );
        let mut zero = change(false);
        zero.attempt = 0;
        assert!(step_update("T", &ExchangeId::new("e"), &zero).is_err());
    }

    fn error_record(at: &str, step: Option<u32>, classification: ErrorClassification) -> ErrorRecord {
        ErrorRecord {
            exchange_id: ExchangeId::new("e"),
            integration_code: IntegrationCode::parse("A").expect("code"),
            step_id: step.map(StepId::from_sequence),
            sub_step: step.map(|_| SubStep::InvokeQuery),
            classification,
            message: "503 from upstream".into(),
            retryable: true,
            exchange_failed: false,
            at: t(at),
        }
    }

    fn timer(kind: TimerKind, due: &str) -> Timer {
        Timer { exchange_id: ExchangeId::new("e"), recovery: 1, due: t(due), kind }
    }

    fn values_of(e: Option<&HashMap<String, AttributeValue>>, key: &str) -> Option<AttributeValue> {
        e.and_then(|v| v.get(key)).cloned()
    }

    #[test]
    fn commit_actions_order_and_limits() {
        let mut commit = StepCommit::new(
            ExchangeId::new("e"),
            2,
            ExchangeChange::SetStatus {
                from: vec![ExchangeStatus::New, ExchangeStatus::Started],
                to: ExchangeStatus::Completed,
                error: None,
                completed_at: Some(t("2026-01-02T03:04:05Z")),
            },
            t("2026-01-02T03:04:05Z"),
        );
        commit.step = Some(change(false));
        commit.skip = vec![
            StepId::from_sequence(4),
            StepId::from_sequence(3),
            StepId::from_sequence(4),
            StepId::from_sequence(2),
        ];
        let actions = commit_actions("T", &commit).expect("actions");
        assert_eq!(actions.len(), 4, "the step itself and duplicates are not skipped");
        let ex = actions[3].update().expect("exchange update");
        assert_eq!(ex.condition_expression(), Some("#status IN (:from0, :from1) AND #recoveries = :recovery"));
        assert_eq!(values_of(ex.expression_attribute_values(), ":recovery"), Some(n(2)));
        assert!(ex.update_expression().contains("#gsi2pk = :gsi2pk"));
        assert_eq!(ex.expression_attribute_values().and_then(|v| v.get(":gsi2pk")), Some(&s("STATUS#Completed")));
        assert!(!ex.update_expression().contains("REMOVE"));
        assert!(!ex.update_expression().contains("recoveries"), "a commit never changes the generation");

        commit.exchange = ExchangeChange::RequireNotFinal;
        let actions = commit_actions("T", &commit).expect("actions");
        let check = actions[3].condition_check().expect("check");
        assert_eq!(check.condition_expression(), "#status IN (:s0, :s1, :s2, :s3) AND #recoveries = :recovery");

        // Generation 0 also matches exchanges stored before recoveries existed.
        commit.recovery = 0;
        let actions = commit_actions("T", &commit).expect("actions");
        let check = actions[3].condition_check().expect("check");
        assert_eq!(
            check.condition_expression(),
            "#status IN (:s0, :s1, :s2, :s3) AND (attribute_not_exists(#recoveries) OR #recoveries = :recovery)"
        );
        assert_eq!(values_of(check.expression_attribute_values(), ":recovery"), Some(n(0)));

        commit.skip = (10..109).map(StepId::from_sequence).collect();
        assert!(matches!(commit_actions("T", &commit), Err(PortError::Fault { .. })), "101 actions");
        commit.skip.pop();
        assert_eq!(commit_actions("T", &commit).expect("100 actions").len(), 100);

        commit.skip.clear();
        commit.exchange =
            ExchangeChange::SetStatus { from: vec![], to: ExchangeStatus::Started, error: None, completed_at: None };
        assert!(commit_actions("T", &commit).is_err());
    }

    #[test]
    fn commit_without_step_with_extras() {
        let mut commit = StepCommit::new(
            ExchangeId::new("e"),
            1,
            ExchangeChange::SetStatus {
                from: ExchangeStatus::not_final(),
                to: ExchangeStatus::TimedOut,
                error: None,
                completed_at: Some(t("2026-01-02T03:04:05Z")),
            },
            t("2026-01-02T03:04:05Z"),
        );
        let actions = commit_actions("T", &commit).expect("actions");
        assert_eq!(actions.len(), 1, "the exchange alone");
        assert!(actions[0].update().is_some());

        commit.skip = vec![StepId::from_sequence(5)];
        commit.require_done = Some(StepId::from_sequence(2));
        commit.errors = vec![
            error_record("2026-01-02T03:04:05.123456Z", Some(3), ErrorClassification::System),
            error_record("2026-01-02T03:04:05Z", None, ErrorClassification::Business),
        ];
        commit.timers = vec![
            timer(TimerKind::Sla, "2026-01-02T04:00:00Z"),
            timer(TimerKind::StepTimeout { step_id: StepId::from_sequence(3) }, "2026-01-02T03:14:05Z"),
        ];
        let actions = commit_actions("T", &commit).expect("actions");
        assert_eq!(actions.len(), 7);
        assert!(actions[0].update().is_some(), "the skip");
        let done = actions[1].condition_check().expect("require done");
        assert_eq!(done.condition_expression(), "#status = :done");
        assert_eq!(done.key().get("sk"), Some(&s("STEP#0002")));
        assert_eq!(values_of(done.expression_attribute_values(), ":done"), Some(s("Done")));

        let err = actions[2].put().expect("error put").item();
        assert_eq!(attr_str(err, "pk"), Some("EX#e"));
        assert_eq!(attr_str(err, "sk"), Some("ERROR#2026-01-02T03:04:05.123Z#0003#0"));
        assert_eq!(attr_str(err, "gsi5pk"), Some("ERRORS"));
        assert_eq!(attr_str(err, "gsi5sk"), Some("2026-01-02T03:04:05.123Z#e#0"));
        assert_eq!(attr_str(err, "classification"), Some("system"));
        assert_eq!(attr_str(err, "integrationCode"), Some("A"));
        let err = actions[3].put().expect("error put").item();
        assert_eq!(attr_str(err, "sk"), Some("ERROR#2026-01-02T03:04:05.000Z#-#1"));
        assert_eq!(attr_str(err, "gsi5sk"), Some("2026-01-02T03:04:05.000Z#e#1"));

        let sla = actions[4].put().expect("timer put").item();
        assert_eq!(attr_str(sla, "sk"), Some("TIMER#sla"));
        assert_eq!(attr_str(sla, "gsi4pk"), Some("TIMERS"));
        assert_eq!(attr_str(sla, "gsi4sk"), Some("001767326400000#e#sla"));
        let timeout = actions[5].put().expect("timer put").item();
        assert_eq!(attr_str(timeout, "sk"), Some("TIMER#timeout#0003"));
        assert!(actions[6].update().is_some(), "the exchange last");

        // Overlaps DynamoDB would refuse (one item twice in a transaction).
        let mut both = commit.clone();
        both.skip.push(StepId::from_sequence(2));
        assert!(matches!(commit_actions("T", &both), Err(PortError::Fault { .. })));
        let mut both = commit.clone();
        both.step = Some(change(false));
        assert!(matches!(commit_actions("T", &both), Err(PortError::Fault { .. })));
        let mut twice = commit.clone();
        twice.timers.push(timer(TimerKind::Sla, "2026-01-02T05:00:00Z"));
        assert!(matches!(commit_actions("T", &twice), Err(PortError::Fault { .. })));
        let mut many = commit.clone();
        many.errors =
            (0..96).map(|_| error_record("2026-01-02T03:04:05Z", None, ErrorClassification::System)).collect();
        assert!(matches!(commit_actions("T", &many), Err(PortError::Fault { .. })), "101 actions");
        many.errors.pop();
        let actions = commit_actions("T", &many).expect("100 actions");
        let mut sks: Vec<&str> =
            actions.iter().filter_map(|a| a.put()).filter_map(|p| attr_str(p.item(), "sk")).collect();
        sks.sort();
        sks.dedup();
        assert_eq!(sks.len(), 95 + 2, "errors of one instant get distinct keys");
    }

    #[test]
    fn commit_stores_the_result_and_tallies_the_parent() {
        let now = t("2026-01-02T03:04:05Z");
        let complete = ExchangeChange::SetStatus {
            from: vec![ExchangeStatus::Started],
            to: ExchangeStatus::Completed,
            error: None,
            completed_at: Some(now),
        };
        let mut commit = StepCommit::new(ExchangeId::new("child"), 0, complete, now);
        commit.step = Some(change(false));
        commit.result = Some(Payload::raw("done"));
        commit.tally =
            Some(ParentTally { parent: ExchangeId::new("parent"), step_id: StepId::from_sequence(4), completed: true });
        let actions = commit_actions("T", &commit).expect("actions");
        assert_eq!(actions.len(), 3, "step, exchange, tally");
        let ex = actions[1].update().expect("exchange update");
        assert_eq!(ex.key().get("pk"), Some(&s("EX#child")));
        assert!(ex.update_expression().contains("#result = :result"), "{}", ex.update_expression());
        assert_eq!(
            values_of(ex.expression_attribute_values(), ":result"),
            Some(to_av(&Payload::raw("done")).expect("av"))
        );
        let tally = actions[2].update().expect("tally");
        assert_eq!(tally.key(), &step_key(&ExchangeId::new("parent"), StepId::from_sequence(4)));
        assert_eq!(tally.update_expression(), "ADD #subCompleted :one");
        assert_eq!(tally.condition_expression(), Some("attribute_exists(#pk)"));
        assert_eq!(values_of(tally.expression_attribute_values(), ":one"), Some(n(1)));
        // The step update never touches the counts.
        let step = actions[0].update().expect("step").update_expression();
        assert!(!step.contains("sub"), "{step}");

        commit.tally.as_mut().expect("tally").completed = false;
        let actions = commit_actions("T", &commit).expect("actions");
        assert_eq!(actions[2].update().expect("tally").update_expression(), "ADD #subFailed :one");

        // Without a status change, the check becomes an update with the same condition.
        commit.exchange = ExchangeChange::RequireNotFinal;
        commit.tally = None;
        let actions = commit_actions("T", &commit).expect("actions");
        let ex = actions[1].update().expect("update instead of a check");
        assert_eq!(ex.update_expression(), "SET #result = :result");
        assert_eq!(
            ex.condition_expression(),
            Some("#status IN (:s0, :s1, :s2, :s3) AND (attribute_not_exists(#recoveries) OR #recoveries = :recovery)")
        );
        commit.result = None;
        assert!(commit_actions("T", &commit).expect("actions")[1].condition_check().is_some());

        // Limits count the tally; a parent is never its own child.
        commit.tally =
            Some(ParentTally { parent: ExchangeId::new("parent"), step_id: StepId::from_sequence(4), completed: true });
        commit.skip = (10..108).map(StepId::from_sequence).collect();
        assert!(matches!(commit_actions("T", &commit), Err(PortError::Fault { .. })), "101 actions");
        commit.skip.pop();
        assert_eq!(commit_actions("T", &commit).expect("100 actions").len(), 100);
        commit.tally =
            Some(ParentTally { parent: ExchangeId::new("child"), step_id: StepId::from_sequence(2), completed: true });
        assert!(matches!(commit_actions("T", &commit), Err(PortError::Fault { .. })));
    }

    #[test]
    fn error_items_round_trip() {
        let record = error_record("2026-01-02T03:04:05.123456Z", Some(3), ErrorClassification::Business);
        let item = error_to_item(&ExchangeId::new("e"), &record, 7).expect("encode");
        assert_eq!(attr_str(&item, "sk"), Some("ERROR#2026-01-02T03:04:05.123Z#0003#7"));
        assert_eq!(item.get("retryable"), Some(&AttributeValue::Bool(true)));
        assert_eq!(item.get("exchangeFailed"), Some(&AttributeValue::Bool(false)));
        assert_eq!(attr_str(&item, "exchangeId"), Some("e"));
        assert_eq!(error_from_item(item).expect("decode"), record);
        let mut bare = error_record("2026-01-02T03:04:05Z", None, ErrorClassification::System);
        bare.exchange_failed = true;
        let item = error_to_item(&ExchangeId::new("e"), &bare, 0).expect("encode");
        assert!(!item.contains_key("stepId") && !item.contains_key("subStep"));
        assert_eq!(error_from_item(item).expect("decode"), bare);
        assert_eq!(error_since_key(t("2026-01-02T03:04:05Z")), "2026-01-02T03:04:05.000Z");
        assert!(error_since_key(t("2026-01-02T03:04:05Z")) <= error_gsi_sk(&bare, 0));
        assert!(error_since_key(t("2026-01-02T03:04:05.001Z")) > error_gsi_sk(&bare, 0));
    }

    #[test]
    fn timer_items_round_trip_and_sort_by_due() {
        let message = handoff_core::handoff::HandoffMessage {
            exchange_id: ExchangeId::new("e"),
            integration_code: IntegrationCode::parse("A").expect("code"),
            integration_version: IntegrationVersion::NULL,
            step_id: StepId::from_sequence(4),
            sub_step: SubStep::DeliverRest,
            attempt: 2,
            input: Some(Payload::raw("x")),
            parameters: serde_json::json!({"n": 12345678901234_i64, "deep": [[{"a": null}]]}),
            not_before: Some(t("2026-01-02T05:00:00Z")),
            recovery: 1,
            parent: Some(ParentLink { exchange_id: ExchangeId::new("p"), step_id: StepId::from_sequence(2), index: 3 }),
        };
        let retry = timer(TimerKind::Handoff { message: Box::new(message) }, "2026-01-02T05:00:00.5Z");
        let item = timer_to_item(&ExchangeId::new("e"), &retry).expect("encode");
        assert_eq!(attr_str(&item, "pk"), Some("EX#e"));
        assert_eq!(attr_str(&item, "sk"), Some("TIMER#handoff#0004#2"));
        assert_eq!(attr_str(&item, "gsi4sk"), Some("001767330000500#e#handoff#0004#2"));
        let expires = t("2026-01-09T05:00:00.5Z").timestamp();
        assert_eq!(item.get("expiresAt"), Some(&n(expires)));
        assert_eq!(timer_from_item(&item).expect("decode"), retry);
        assert_eq!(timer_key(&retry).get("sk"), item.get("sk"));

        // Due at the bound is included; a millisecond later is not; text order is time order.
        let until = t("2026-01-02T05:00:00.5Z");
        assert!(timer_gsi_sk(&retry) <= timers_until_key(until));
        assert!(timer_gsi_sk(&retry) > timers_until_key(t("2026-01-02T05:00:00.499Z")));
        let early = timer(TimerKind::Sla, "2001-09-09T01:46:39Z");
        let late = timer(TimerKind::Sla, "2001-09-09T01:46:40Z");
        assert!(timer_gsi_sk(&early) < timer_gsi_sk(&late), "{} < {}", timer_gsi_sk(&early), timer_gsi_sk(&late));
        assert_eq!(timers_until_key(t("1960-01-01T00:00:00Z")), "000000000000000~");
    }

    #[test]
    fn token_items_and_consumption() {
        let mut token = CallbackToken {
            hash: "abc123".into(),
            exchange_id: ExchangeId::new("e"),
            integration_code: IntegrationCode::parse("A").expect("code"),
            integration_version: IntegrationVersion::number(3).expect("version"),
            step_id: StepId::from_sequence(5),
            sub_step: SubStep::InvokeQuery,
            recovery: 2,
            parameters: serde_json::json!({"n": 12345678901234_i64, "x": 1.5}),
            expires_at: Some(t("2026-01-02T04:00:00.250Z")),
            parent: Some(ParentLink { exchange_id: ExchangeId::new("p"), step_id: StepId::from_sequence(1), index: 0 }),
        };
        let now = t("2026-01-02T03:00:00Z");
        let item = token_to_item(&token, now).expect("encode");
        assert_eq!(token_key("abc123"), HashMap::from([("pk".into(), s("TOKEN#abc123")), ("sk".into(), s("TOKEN"))]));
        assert_eq!(attr_str(&item, "pk"), Some("TOKEN#abc123"));
        assert_eq!(attr_str(&item, "sk"), Some("TOKEN"));
        assert_eq!(item.get("tokenExpiresAt"), Some(&n(t("2026-01-02T04:00:00.250Z").timestamp_millis())));
        assert_eq!(item.get("expiresAt"), Some(&n(t("2026-01-09T04:00:00.250Z").timestamp())));
        assert!(!item.contains_key("usedAt"));
        assert_eq!(token_from_item(&item).expect("decode"), token);

        token.expires_at = None;
        let item = token_to_item(&token, now).expect("encode");
        assert!(!item.contains_key("tokenExpiresAt"));
        assert_eq!(item.get("expiresAt"), Some(&n(t("2026-02-01T03:00:00Z").timestamp())));
        assert_eq!(token_from_item(&item).expect("decode"), token);

        let (update, condition, names, values) = consume_token_parts("h", now);
        assert_eq!(update, "SET #usedAt = :now");
        assert_eq!(
            condition,
            "attribute_exists(#pk) AND attribute_not_exists(#usedAt) \
             AND (attribute_not_exists(#tokenExpiresAt) OR #tokenExpiresAt > :now)"
        );
        assert_eq!(names.get("#tokenExpiresAt").map(String::as_str), Some("tokenExpiresAt"));
        assert_eq!(values, HashMap::from([(":now".to_string(), n(now.timestamp_millis()))]));

        // Accepting a callback: the conditional use and the outbox timer, in one transaction.
        let outbox = Timer { exchange_id: ExchangeId::new("e"), recovery: 0, due: now, kind: TimerKind::Sla };
        let actions = consume_token_actions("t", "abc", now, &outbox).expect("actions");
        let update = actions[0].update().expect("the token update first");
        assert_eq!(update.key().get("pk"), Some(&s("TOKEN#abc")));
        assert_eq!(update.condition_expression(), Some(condition.as_str()));
        let put = actions[1].put().expect("then the outbox timer");
        assert_eq!(put.item(), &timer_to_item(&outbox.exchange_id, &outbox).expect("timer item"));
        assert_eq!(actions.len(), 2);
    }

    #[test]
    fn recovery_actions() {
        let mut commit = RecoveryCommit {
            exchange_id: ExchangeId::new("e"),
            recovery: 1,
            integration_version: Some(IntegrationVersion::number(4).expect("version")),
            reset: vec![StepId::from_sequence(3), StepId::from_sequence(2), StepId::from_sequence(3)],
            clear_sub_failures: None,
            timers: Vec::new(),
            now: t("2026-01-02T03:04:05Z"),
        };
        let actions = recover_actions("T", &commit).expect("actions");
        assert_eq!(actions.len(), 3, "duplicates reset once");
        // Timers stored with the recovery come last, as puts.
        let sla = Timer {
            exchange_id: ExchangeId::new("e"),
            recovery: 2,
            due: t("2026-01-02T04:04:05Z"),
            kind: TimerKind::Sla,
        };
        commit.timers = vec![sla.clone()];
        let with_timer = recover_actions("T", &commit).expect("actions");
        assert_eq!(with_timer.len(), 4);
        assert_eq!(
            with_timer[3].put().expect("timer put").item(),
            &timer_to_item(&sla.exchange_id, &sla).expect("item")
        );
        commit.timers.clear();
        let ex = actions[0].update().expect("exchange update");
        assert_eq!(ex.key().get("sk"), Some(&s("EXCHANGE")));
        assert_eq!(ex.condition_expression(), Some("#status IN (:from0, :from1) AND #recoveries = :recovery"));
        assert_eq!(
            ex.update_expression(),
            "SET #status = :to, #gsi2pk = :gsi2pk, #updatedAt = :now, \
             #recoveries = if_not_exists(#recoveries, :zero) + :one, #integrationVersion = :integrationVersion \
             REMOVE #error, #completedAt"
        );
        let values = ex.expression_attribute_values();
        assert_eq!(values_of(values, ":from0"), Some(s("Failed")));
        assert_eq!(values_of(values, ":from1"), Some(s("TimedOut")));
        assert_eq!(values_of(values, ":to"), Some(s("Started")));
        assert_eq!(values_of(values, ":gsi2pk"), Some(s("STATUS#Started")));
        assert_eq!(values_of(values, ":recovery"), Some(n(1)));
        assert_eq!(values_of(values, ":integrationVersion"), Some(n(4)));

        let reset = actions[1].update().expect("reset");
        assert_eq!(reset.key().get("sk"), Some(&s("STEP#0002")));
        assert_eq!(reset.condition_expression(), Some("attribute_exists(#pk)"));
        assert_eq!(
            reset.update_expression(),
            "SET #status = :initial, #attempts = :zero, #completedAttempt = :zero, #claimedAttempt = :zero, \
             #leaseUntil = :zero REMOVE #nextRetryAt, #lastError, #completedAt, #payload"
        );
        assert_eq!(values_of(reset.expression_attribute_values(), ":initial"), Some(s("Initial")));
        assert_eq!(actions[2].update().expect("reset").key().get("sk"), Some(&s("STEP#0003")));

        commit.integration_version = Some(IntegrationVersion::NULL);
        let actions = recover_actions("T", &commit).expect("actions");
        let values = actions[0].update().expect("update").expression_attribute_values();
        assert_eq!(values_of(values, ":integrationVersion"), Some(AttributeValue::Null(true)));
        commit.integration_version = None;
        commit.recovery = 0;
        let actions = recover_actions("T", &commit).expect("actions");
        let ex = actions[0].update().expect("update");
        assert!(!ex.update_expression().contains("integrationVersion"));
        assert!(ex.condition_expression().is_some_and(|c| c.contains("attribute_not_exists(#recoveries)")));

        commit.reset = (0..100).map(StepId::from_sequence).collect();
        assert!(matches!(recover_actions("T", &commit), Err(PortError::Fault { .. })));
        commit.reset.pop();
        assert_eq!(recover_actions("T", &commit).expect("100 actions").len(), 100);
        commit.clear_sub_failures = Some(StepId::from_sequence(3));
        assert_eq!(recover_actions("T", &commit).expect("merged into a reset").len(), 100);
        commit.clear_sub_failures = Some(StepId::from_sequence(200));
        assert!(matches!(recover_actions("T", &commit), Err(PortError::Fault { .. })), "101 actions");
    }

    #[test]
    fn recovery_clears_sub_failures() {
        let mut commit = RecoveryCommit {
            exchange_id: ExchangeId::new("e"),
            recovery: 1,
            integration_version: None,
            reset: vec![StepId::from_sequence(3), StepId::from_sequence(2)],
            clear_sub_failures: Some(StepId::from_sequence(3)),
            timers: Vec::new(),
            now: t("2026-01-02T03:04:05Z"),
        };
        // Merged into the step's reset: one action per item.
        let actions = recover_actions("T", &commit).expect("actions");
        assert_eq!(actions.len(), 3);
        let plain = actions[1].update().expect("reset 2");
        assert!(!plain.update_expression().contains("subFailed"), "{}", plain.update_expression());
        let merged = actions[2].update().expect("reset 3");
        assert_eq!(merged.key().get("sk"), Some(&s("STEP#0003")));
        assert_eq!(
            merged.update_expression(),
            "SET #status = :initial, #attempts = :zero, #completedAttempt = :zero, #claimedAttempt = :zero, \
             #leaseUntil = :zero, #subFailed = :zero REMOVE #nextRetryAt, #lastError, #completedAt, #payload"
        );
        for update in [plain, merged] {
            let expr = update.update_expression();
            assert!(!expr.contains("subTotal") && !expr.contains("subCompleted"), "{expr}");
        }

        // Not reset: an update of its own, after the resets.
        commit.clear_sub_failures = Some(StepId::from_sequence(5));
        let actions = recover_actions("T", &commit).expect("actions");
        assert_eq!(actions.len(), 4);
        let clear = actions[3].update().expect("clear");
        assert_eq!(clear.key().get("sk"), Some(&s("STEP#0005")));
        assert_eq!(clear.update_expression(), "SET #subFailed = :zero");
        assert_eq!(clear.condition_expression(), Some("attribute_exists(#pk)"));
        assert_eq!(values_of(clear.expression_attribute_values(), ":zero"), Some(n(0)));
    }

    #[test]
    fn claim_is_a_transaction_with_the_exchange_check() {
        let id = ExchangeId::new("e");
        let (now, lease) = (t("2026-01-02T03:04:05Z"), t("2026-01-02T03:05:05Z"));
        let actions = claim_actions("T", &id, StepId::from_sequence(2), 3, 4, now, lease).expect("actions");
        assert_eq!(actions.len(), 2);
        let update = actions[0].update().expect("step update");
        assert_eq!(update.key().get("sk"), Some(&s("STEP#0002")));
        assert_eq!(
            update.condition_expression(),
            Some(claim_update_parts(3, lease, &on_step(&id, 2, 3, now)).1.as_str())
        );
        let check = actions[1].condition_check().expect("exchange check");
        assert_eq!(check.key().get("sk"), Some(&s("EXCHANGE")));
        assert_eq!(check.condition_expression(), "#status IN (:s0, :s1, :s2, :s3) AND #recoveries = :recovery");
        let values = check.expression_attribute_values();
        assert_eq!(values_of(values, ":recovery"), Some(n(4)));
        let statuses: Vec<_> = (0..4).filter_map(|i| values_of(values, &format!(":s{i}"))).collect();
        assert_eq!(statuses, ["New", "Started", "WaitingOnExternalSystem", "WaitingForSubExchangesToFinish"].map(s));
        assert!(claim_actions("T", &id, StepId::from_sequence(2), 0, 4, now, lease).is_err());
    }

    #[test]
    fn index_queries() {
        let q = errors_query(&ErrorFilter::default()).expect("query");
        assert_eq!(
            (q.index, q.key_condition.as_str(), q.filter.as_deref(), q.forward),
            (INDEX_BY_ERROR, "#gsi5pk = :gpk", None, false)
        );
        assert_eq!(q.values.get(":gpk"), Some(&s("ERRORS")));
        let filter = ErrorFilter {
            classification: Some(ErrorClassification::Business),
            integration_code: Some(IntegrationCode::parse("A").expect("code")),
            since: Some(t("2026-01-02T03:04:05Z")),
        };
        let q = errors_query(&filter).expect("query");
        assert_eq!(q.key_condition, "#gsi5pk = :gpk AND #gsi5sk >= :since");
        assert_eq!(
            q.filter.as_deref(),
            Some("#classification = :classification AND #integrationCode = :integrationCode")
        );
        assert_eq!(q.values.get(":since"), Some(&s("2026-01-02T03:04:05.000Z")));
        assert_eq!(q.values.get(":classification"), Some(&s("business")));
        assert_eq!(q.values.get(":integrationCode"), Some(&s("A")));
        assert_eq!(q.names.get("#gsi5sk").map(String::as_str), Some("gsi5sk"));

        let q = due_query(t("2026-01-02T04:00:00Z"));
        assert_eq!(
            (q.index, q.key_condition.as_str(), q.forward),
            (INDEX_BY_DUE, "#gsi4pk = :gpk AND #gsi4sk <= :until", true)
        );
        assert_eq!(q.values.get(":until"), Some(&s("001767326400000~")));
        assert_eq!(q.values.get(":gpk"), Some(&s("TIMERS")));

        let code = IntegrationCode::parse("A").expect("code");
        let both = ExchangeFilter { integration_code: Some(code), status: Some(ExchangeStatus::Failed), parent: None };
        let q = list_query(&both);
        assert_eq!(
            (q.index, q.key_condition.as_str(), q.filter.as_deref(), q.forward),
            (INDEX_BY_INTEGRATION, "#gsi1pk = :gpk", Some("#status = :status"), false)
        );
        assert_eq!(q.values.get(":status"), Some(&s("Failed")));
        let q = list_query(&ExchangeFilter::default());
        assert_eq!((q.index, q.filter.as_deref(), q.forward), (INDEX_BY_CREATION, None, false));

        // Sub-exchanges: in index order, the other filters on top.
        let children = ExchangeFilter { parent: Some(ExchangeId::new("p")), ..ExchangeFilter::default() };
        let q = list_query(&children);
        assert_eq!(
            (q.index, q.key_condition.as_str(), q.filter.as_deref(), q.forward),
            (INDEX_BY_PARENT, "#gsi6pk = :gpk", None, true)
        );
        assert_eq!(q.values.get(":gpk"), Some(&s("PARENT#p")));
        let q = list_query(&ExchangeFilter { parent: Some(ExchangeId::new("p")), ..both });
        assert_eq!(
            (q.index, q.filter.as_deref(), q.forward),
            (INDEX_BY_PARENT, Some("#status = :status AND #integrationCode = :integrationCode"), true)
        );
        assert_eq!(q.values.get(":integrationCode"), Some(&s("A")));
        let key: Item = HashMap::from([
            ("pk".to_string(), s("EX#c")),
            ("sk".to_string(), s("EXCHANGE")),
            ("gsi6pk".to_string(), s("PARENT#p")),
            ("gsi6sk".to_string(), s("0004#00000001")),
        ]);
        let c = encode_cursor(INDEX_BY_PARENT, &key).expect("encode");
        assert_eq!(decode_cursor(INDEX_BY_PARENT, &c).expect("decode"), key);
        assert!(decode_cursor(INDEX_BY_CREATION, &c).is_err());

        // Error cursors carry the byError keys.
        let key: Item = HashMap::from([
            ("pk".to_string(), s("EX#a")),
            ("sk".to_string(), s("ERROR#2026-01-01T00:00:00.000Z#-#0")),
            ("gsi5pk".to_string(), s("ERRORS")),
            ("gsi5sk".to_string(), s("2026-01-01T00:00:00.000Z#a#0")),
        ]);
        let c = encode_cursor(INDEX_BY_ERROR, &key).expect("encode");
        assert_eq!(decode_cursor(INDEX_BY_ERROR, &c).expect("decode"), key);
        assert!(decode_cursor(INDEX_BY_CREATION, &c).is_err());
    }

    #[test]
    fn recovery_clears_error_and_completion() {
        let change = ExchangeChange::SetStatus {
            from: vec![ExchangeStatus::Failed],
            to: ExchangeStatus::Started,
            error: None,
            completed_at: None,
        };
        let action =
            exchange_action("T", &ExchangeId::new("e"), &change, 1, t("2026-01-02T03:04:05Z"), None).expect("action");
        let expr = action.update().expect("update").update_expression().to_string();
        assert!(expr.ends_with("REMOVE #error, #completedAt"), "{expr}");
    }

    /// The preconditions a claim puts on its step.
    fn on_step(id: &ExchangeId, step: u32, attempt: u32, now: DateTime<Utc>) -> Vec<Precondition> {
        claim_preconditions(id, StepId::from_sequence(step), attempt, 0, now)
            .into_iter()
            .filter(|p| matches!(p.item(), ItemRef::Step(..)))
            .collect()
    }

    #[test]
    fn claim_condition() {
        let (update, condition, names, values) = claim_update_parts(
            2,
            t("2026-01-02T03:05:05Z"),
            &on_step(&ExchangeId::new("e"), 1, 2, t("2026-01-02T03:04:05Z")),
        );
        assert_eq!(
            update,
            "SET #claimedAttempt = :attempt, #attempts = :attempt, #leaseUntil = :leaseUntil REMOVE #nextRetryAt"
        );
        assert_eq!(
            condition,
            "#status = :initial AND #completedAttempt < :attempt AND (#claimedAttempt < :attempt OR #leaseUntil < :now)"
        );
        assert_eq!(names.get("#leaseUntil").map(String::as_str), Some("leaseUntil"));
        assert_eq!(values.get(":now"), Some(&n(t("2026-01-02T03:04:05Z").timestamp_millis())));
    }

    #[test]
    fn cancellation_reasons() {
        assert_eq!(cancellation_outcome([Some("None"), Some("ConditionalCheckFailed"), Some("None")]), Ok(()));
        assert_eq!(cancellation_outcome([Some("TransactionConflict"), None]), Err(ErrorKind::Unavailable));
        assert_eq!(cancellation_outcome([Some("ThrottlingError")]), Err(ErrorKind::Unavailable));
        assert_eq!(cancellation_outcome([Some("ValidationError")]), Err(ErrorKind::Fault));
    }
}
