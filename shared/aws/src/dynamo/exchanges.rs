//! [`ExchangeRepository`] on one DynamoDB table (single-table design, `infra/template.yaml`
//! `ExchangesTable`).
//!
//! # Key design
//!
//! | item | `pk` | `sk` | index keys |
//! |---|---|---|---|
//! | exchange | `EX#<exchangeId>` | `EXCHANGE` | `gsi1pk=INT#<code>`, `gsi2pk=STATUS#<statusName>`, `gsi3pk=EXCHANGES`; every `gsiNsk=<createdAt RFC 3339, UTC, millis>#<exchangeId>` |
//! | step | `EX#<exchangeId>` | `STEP#<stepId>` (zero-padded, e.g. `STEP#0003`) | none (steps stay out of the sparse indexes) |
//!
//! * Exchange attributes: every [`Exchange`] field in camelCase (`status` as its name, e.g.
//!   `Started`; timestamps as RFC 3339 strings; `integrationVersion` a number or NULL;
//!   `error` a map), except `parameters`, kept as a JSON string (no nesting limit, exact
//!   numbers). `gsi2pk` changes with `status`.
//! * Step attributes: every [`ExchangeStep`] field in camelCase (`status` as its name,
//!   `payload`/`lastError` maps) plus the bookkeeping `completedAttempt` (number, 0 at
//!   creation), `claimedAttempt` (0), `leaseUntil` (epoch millis, 0) and `logs` (list of
//!   [`LogLine`] maps, appended by commits).
//! * Indexes (all projecting everything): `byIntegration` (gsi1), `byStatus` (gsi2),
//!   `byCreation` (gsi3); all read newest first (`ScanIndexForward=false`).
//!
//! # Operations
//! * `get`: one consistent Query on `pk` (paginated): the exchange, its steps in sequence
//!   order and their log lines in time order.
//! * `list`: Query on the index that fits the filter (code → `byIntegration`, with a filter
//!   on status if both are given; status only → `byStatus`; neither → `byCreation`). The
//!   cursor is the base64url JSON of the index name and the last evaluated key.
//! * `create`: BatchWriteItem in chunks of ≤ 25 puts (steps first, the exchange item last,
//!   so a listed exchange always has its steps), retrying unprocessed items with backoff.
//! * `claim`: one conditional UpdateItem on the step.
//! * `commit`: one TransactWriteItems: the step update, the skips, and a condition check or
//!   conditional update of the exchange item.

use crate::error::{self, ErrorKind};
use crate::ports::{
    ClaimOutcome, CommitOutcome, ExchangeChange, ExchangeDetail, ExchangeFilter, ExchangePage, ExchangeRepository,
    PortError, PortResult, StepChange, StepCommit,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, PutRequest, TransactWriteItem, Update, WriteRequest};
use aws_sdk_dynamodb::Client;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use handoff_core::exchange::{
    Exchange, ExchangeError, ExchangeStatus, ExchangeStep, LogLine, Payload, StepError, StepStatus,
};
use handoff_core::ids::{ExchangeId, IntegrationCode, IntegrationVersion, StepId};
use handoff_core::plan::SubStep;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const SERVICE: &str = "dynamodb";
pub(crate) type Item = HashMap<String, AttributeValue>;

pub const INDEX_BY_INTEGRATION: &str = "byIntegration";
pub const INDEX_BY_STATUS: &str = "byStatus";
pub const INDEX_BY_CREATION: &str = "byCreation";
const EXCHANGE_SK: &str = "EXCHANGE";
const STEP_SK_PREFIX: &str = "STEP#";
/// DynamoDB's limit of actions in one TransactWriteItems.
const MAX_TRANSACTION_ACTIONS: usize = 100;
/// DynamoDB's limit of requests in one BatchWriteItem.
const MAX_BATCH_WRITE: usize = 25;
const MAX_LIST_LIMIT: u32 = 1000;

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
        },
        item.logs,
    ))
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
    fn update_expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.remove.is_empty() {
            parts.push(format!("REMOVE {}", self.remove.join(", ")));
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

    let status = e.name("status");
    e.value("initial", s("Initial"));
    let mut condition = format!("{status} = :initial AND {completed} < :attempt");
    if change.claimed {
        let claimed = e.name("claimedAttempt");
        condition.push_str(&format!(" AND {claimed} = :attempt"));
    }
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
    let status = e.name("status");
    e.value("initial", s("Initial"));
    Update::builder()
        .table_name(table)
        .set_key(Some(step_key(exchange_id, step)))
        .update_expression(e.update_expression())
        .condition_expression(format!("{status} = :initial"))
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(build_fault)
}

const NOT_FINAL: [ExchangeStatus; 4] = [
    ExchangeStatus::New,
    ExchangeStatus::Started,
    ExchangeStatus::WaitingOnExternalSystem,
    ExchangeStatus::WaitingForSubExchangesToFinish,
];

/// The action on the exchange item.
pub(crate) fn exchange_action(
    table: &str,
    exchange_id: &ExchangeId,
    change: &ExchangeChange,
    now: DateTime<Utc>,
) -> PortResult<TransactWriteItem> {
    match change {
        ExchangeChange::RequireNotFinal => {
            let mut e = Expr::default();
            let condition = e.status_in("s", &NOT_FINAL);
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
        ExchangeChange::SetStatus { from, to, error, completed_at } => {
            if from.is_empty() {
                return Err(error::fault(SERVICE, "SetStatus needs at least one status to move from"));
            }
            let mut e = Expr::default();
            let condition = e.status_in("from", from);
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

/// All actions of one commit, in order: the step, the skips, the exchange.
pub(crate) fn commit_actions(table: &str, commit: &StepCommit) -> PortResult<Vec<TransactWriteItem>> {
    let mut skips: Vec<StepId> = commit.skip.iter().copied().filter(|s| *s != commit.step.step_id).collect();
    skips.sort();
    skips.dedup();
    if skips.len() + 2 > MAX_TRANSACTION_ACTIONS {
        return Err(error::fault(
            SERVICE,
            format!("a commit can skip at most {} steps, not {}", MAX_TRANSACTION_ACTIONS - 2, skips.len()),
        ));
    }
    let mut actions = Vec::with_capacity(skips.len() + 2);
    actions.push(TransactWriteItem::builder().update(step_update(table, &commit.exchange_id, &commit.step)?).build());
    for step in skips {
        actions.push(TransactWriteItem::builder().update(skip_update(table, &commit.exchange_id, step)?).build());
    }
    actions.push(exchange_action(table, &commit.exchange_id, &commit.exchange, commit.now)?);
    Ok(actions)
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
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> (String, String, HashMap<String, String>, HashMap<String, AttributeValue>) {
    let mut e = Expr::default();
    e.set("claimedAttempt", "attempt", n(attempt));
    let attempts = e.name("attempts");
    e.set.push(format!("{attempts} = :attempt"));
    e.set("leaseUntil", "leaseUntil", n(lease_until.timestamp_millis()));
    // A claimed attempt is running, not waiting: a stale `nextRetryAt` would tell a
    // duplicate message that this attempt already failed.
    e.remove("nextRetryAt");
    let status = e.name("status");
    let completed = e.name("completedAttempt");
    let claimed = e.name("claimedAttempt");
    let lease = e.name("leaseUntil");
    e.value("initial", s("Initial"));
    e.value("now", n(now.timestamp_millis()));
    let condition =
        format!("{status} = :initial AND {completed} < :attempt AND ({claimed} < :attempt OR {lease} < :now)");
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
    let invalid = || error::fault(SERVICE, "invalid cursor");
    let bytes = URL_SAFE_NO_PAD.decode(cursor.trim_end_matches('=')).map_err(|_| invalid())?;
    let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if cursor.i != index {
        return Err(error::fault(SERVICE, "the cursor belongs to a different filter"));
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
        _ => ("gsi3pk", "gsi3sk"),
    }
}

/// The index, its partition key value and the status to filter on, for a filter.
pub(crate) fn list_plan(filter: &ExchangeFilter) -> (&'static str, String, Option<ExchangeStatus>) {
    match (&filter.integration_code, filter.status) {
        (Some(code), status) => (INDEX_BY_INTEGRATION, integration_gsi_pk(code), status),
        (None, Some(status)) => (INDEX_BY_STATUS, status_gsi_pk(status), None),
        (None, None) => (INDEX_BY_CREATION, CREATION_GSI_PK.to_string(), None),
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

    async fn batch_put(&self, items: Vec<Item>) -> PortResult<()> {
        for chunk in items.chunks(MAX_BATCH_WRITE) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|item| {
                    let put = PutRequest::builder().set_item(Some(item.clone())).build().map_err(build_fault)?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<PortResult<_>>()?;
            let mut delay = Duration::from_millis(50);
            let mut rounds = 0;
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
                rounds += 1;
                if rounds > 8 {
                    return Err(error::unavailable(
                        SERVICE,
                        format!("BatchWriteItem: {} items still unprocessed after retries", requests.len()),
                    ));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ExchangeRepository for DynamoExchangeRepository {
    async fn create(&self, exchange: &Exchange, steps: &[ExchangeStep]) -> PortResult<()> {
        let mut items = Vec::with_capacity(steps.len() + 1);
        for step in steps {
            items.push(step_to_item(&exchange.exchange_id, step)?);
        }
        items.push(exchange_to_item(exchange)?);
        self.batch_put(items).await
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
        let limit = limit.clamp(1, MAX_LIST_LIMIT) as usize;
        let (index, partition, status_filter) = list_plan(filter);
        let (pk_name, _) = index_keys(index);
        let mut start = match cursor {
            Some(c) if !c.is_empty() => Some(decode_cursor(index, c)?),
            _ => None,
        };
        let mut items: Vec<Item> = Vec::new();
        let mut next_key: Option<Item> = None;
        loop {
            let remaining = limit - items.len();
            // With a filter, DynamoDB's limit counts items read before filtering: read more.
            let page_limit = if status_filter.is_some() { remaining.max(100) } else { remaining };
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression("#gpk = :gpk")
                .expression_attribute_names("#gpk", pk_name)
                .expression_attribute_values(":gpk", s(partition.clone()))
                .scan_index_forward(false)
                .limit(page_limit as i32)
                .set_exclusive_start_key(start.take());
            if let Some(status) = status_filter {
                query = query
                    .filter_expression("#status = :status")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", s(status.name()));
            }
            let out = query.send().await.map_err(|e| error::sdk(SERVICE, "Query", e))?;
            let page = out.items.unwrap_or_default();
            let lek = out.last_evaluated_key.filter(|k| !k.is_empty());
            if page.len() >= remaining {
                let truncated = page.len() > remaining;
                items.extend(page.into_iter().take(remaining));
                next_key = if truncated {
                    // Resume right after the last item handed out.
                    let (gpk, gsk) = index_keys(index);
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
        let exchanges = items.into_iter().map(exchange_from_item).collect::<PortResult<Vec<_>>>()?;
        let next_cursor = match next_key {
            Some(key) => Some(encode_cursor(index, &key)?),
            None => None,
        };
        Ok(ExchangePage { items: exchanges, next_cursor })
    }

    async fn claim(
        &self,
        id: &ExchangeId,
        step: StepId,
        attempt: u32,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> PortResult<ClaimOutcome> {
        if attempt == 0 {
            return Err(error::fault(SERVICE, "attempt numbers start at 1"));
        }
        let (update, condition, names, values) = claim_update_parts(attempt, now, lease_until);
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
            Ok(_) => Ok(ClaimOutcome::Claimed),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                Ok(ClaimOutcome::NotClaimable)
            }
            Err(e) => Err(error::sdk(SERVICE, "UpdateItem", e)),
        }
    }

    async fn commit(&self, commit: &StepCommit) -> PortResult<CommitOutcome> {
        let actions = commit_actions(&self.table, commit)?;
        let result = self.client.transact_write_items().set_transact_items(Some(actions)).send().await;
        match result {
            Ok(_) => Ok(CommitOutcome::Applied),
            Err(e) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) = e.as_service_error() {
                    let reasons = cancel.cancellation_reasons();
                    let codes: Vec<Option<&str>> = reasons.iter().map(|r| r.code()).collect();
                    return match cancellation_outcome(codes.iter().copied()) {
                        Ok(()) => Ok(CommitOutcome::Conflict),
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
                        return Ok(CommitOutcome::Conflict);
                    }
                }
                Err(error::sdk(SERVICE, "TransactWriteItems", e))
            }
        }
    }

    async fn health(&self) -> PortResult<()> {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| error::sdk(SERVICE, "DescribeTable", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_core::exchange::LogType;
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
                step_id: Some(StepId::from_sequence(3)),
                sub_step: Some(SubStep::Transform),
                at: t("2026-01-02T03:05:00Z"),
            }),
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
        assert_eq!(exchange_from_item(item).expect("decode"), ex);

        let mut minimal = exchange();
        minimal.integration_version = IntegrationVersion::NULL;
        minimal.parameters = serde_json::Value::Null;
        minimal.error = None;
        minimal.completed_at = None;
        minimal.status = ExchangeStatus::New;
        let item = exchange_to_item(&minimal).expect("encode");
        assert_eq!(item.get("integrationVersion"), Some(&AttributeValue::Null(true)));
        assert_eq!(exchange_from_item(item).expect("decode"), minimal);
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
        let (back, logs) = step_from_item(item).expect("decode");
        assert_eq!(back, plain);
        assert_eq!(logs, vec![line]);
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
        let both = ExchangeFilter { integration_code: Some(code.clone()), status: Some(ExchangeStatus::Failed) };
        assert_eq!(list_plan(&both), (INDEX_BY_INTEGRATION, "INT#A".into(), Some(ExchangeStatus::Failed)));
        let status = ExchangeFilter { integration_code: None, status: Some(ExchangeStatus::Failed) };
        assert_eq!(list_plan(&status), (INDEX_BY_STATUS, "STATUS#Failed".into(), None));
        assert_eq!(list_plan(&ExchangeFilter::default()), (INDEX_BY_CREATION, "EXCHANGES".into(), None));
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

    #[test]
    fn commit_actions_order_and_limits() {
        let mut commit = StepCommit {
            exchange_id: ExchangeId::new("e"),
            step: change(false),
            skip: vec![
                StepId::from_sequence(4),
                StepId::from_sequence(3),
                StepId::from_sequence(4),
                StepId::from_sequence(2),
            ],
            exchange: ExchangeChange::SetStatus {
                from: vec![ExchangeStatus::New, ExchangeStatus::Started],
                to: ExchangeStatus::Completed,
                error: None,
                completed_at: Some(t("2026-01-02T03:04:05Z")),
            },
            now: t("2026-01-02T03:04:05Z"),
        };
        let actions = commit_actions("T", &commit).expect("actions");
        assert_eq!(actions.len(), 4, "the step itself and duplicates are not skipped");
        let ex = actions[3].update().expect("exchange update");
        assert_eq!(ex.condition_expression(), Some("#status IN (:from0, :from1)"));
        assert!(ex.update_expression().contains("#gsi2pk = :gsi2pk"));
        assert_eq!(ex.expression_attribute_values().and_then(|v| v.get(":gsi2pk")), Some(&s("STATUS#Completed")));
        assert!(!ex.update_expression().contains("REMOVE"));

        commit.exchange = ExchangeChange::RequireNotFinal;
        let actions = commit_actions("T", &commit).expect("actions");
        let check = actions[3].condition_check().expect("check");
        assert_eq!(check.condition_expression(), "#status IN (:s0, :s1, :s2, :s3)");

        commit.skip = (10..120).map(StepId::from_sequence).collect();
        assert!(matches!(commit_actions("T", &commit), Err(PortError::Fault { .. })));

        commit.skip.clear();
        commit.exchange =
            ExchangeChange::SetStatus { from: vec![], to: ExchangeStatus::Started, error: None, completed_at: None };
        assert!(commit_actions("T", &commit).is_err());
    }

    #[test]
    fn recovery_clears_error_and_completion() {
        let change = ExchangeChange::SetStatus {
            from: vec![ExchangeStatus::Failed],
            to: ExchangeStatus::Started,
            error: None,
            completed_at: None,
        };
        let action = exchange_action("T", &ExchangeId::new("e"), &change, t("2026-01-02T03:04:05Z")).expect("action");
        let expr = action.update().expect("update").update_expression().to_string();
        assert!(expr.ends_with("REMOVE #error, #completedAt"), "{expr}");
    }

    #[test]
    fn claim_condition() {
        let (update, condition, names, values) =
            claim_update_parts(2, t("2026-01-02T03:04:05Z"), t("2026-01-02T03:05:05Z"));
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
