//! Item codecs: exchanges, steps, errors, timers and tokens to and from DynamoDB items.

use super::*;

/// An item that cannot be encoded, or a stored item that does not decode: never worth a
/// retry (a bug or corrupt data), so a terminal fault of the port.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("cannot encode {what}: {problem}")]
    Encode { what: &'static str, problem: String },
    #[error("stored {what} is malformed: {problem}")]
    Malformed { what: &'static str, problem: String },
    #[error("stored {what} has no body")]
    NoBody { what: &'static str },
}

impl CodecError {
    fn encode(what: &'static str, problem: impl std::fmt::Display) -> Self {
        Self::Encode { what, problem: problem.to_string() }
    }
    fn malformed(what: &'static str, problem: impl std::fmt::Display) -> Self {
        Self::Malformed { what, problem: problem.to_string() }
    }
}

impl From<CodecError> for PortError {
    fn from(e: CodecError) -> Self {
        error::fault(SERVICE, e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ExchangeItem {
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trigger: Option<Trigger>,
}

pub(crate) fn exchange_to_item(exchange: &Exchange) -> Result<Item, CodecError> {
    let sort = creation_sort_key(exchange.created_at, &exchange.exchange_id);
    let parameters = serde_json::to_string(&exchange.parameters).map_err(|e| CodecError::encode("parameters", e))?;
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
        trigger: exchange.trigger.clone(),
    };
    serde_dynamo::to_item(item).map_err(|e| CodecError::encode("exchange", e))
}

pub(crate) fn exchange_from_item(item: Item) -> Result<Exchange, CodecError> {
    let item: ExchangeItem = serde_dynamo::from_item(item).map_err(|e| CodecError::malformed("exchange", e))?;
    let parameters = match item.parameters.as_deref() {
        None | Some("") => serde_json::Value::Null,
        Some(text) => serde_json::from_str(text).map_err(|e| CodecError::malformed("exchange parameters", e))?,
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
        trigger: item.trigger,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StepItem {
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
    started_at: Option<DateTime<Utc>>,
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

pub(crate) fn step_to_item(exchange_id: &ExchangeId, step: &ExchangeStep) -> Result<Item, CodecError> {
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
        started_at: step.started_at,
        completed_at: step.completed_at,
        completed_attempt: 0,
        claimed_attempt: 0,
        lease_until: 0,
        logs: Vec::new(),
        sub_total: None,
        sub_completed: None,
        sub_failed: None,
    };
    serde_dynamo::to_item(item).map_err(|e| CodecError::encode("step", e))
}

pub(crate) fn step_from_item(item: Item) -> Result<(ExchangeStep, Vec<LogLine>), CodecError> {
    let item: StepItem = serde_dynamo::from_item(item).map_err(|e| CodecError::malformed("step", e))?;
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
            started_at: item.started_at,
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

/// A commit's failure on its error entry: the first one creates it open; a later one of
/// the same step replaces the failure, opens it again and counts it, keeping the
/// resolution and re-processing history ([`StoredError::recurred`]).
pub(crate) fn error_upsert(table: &str, record: &ErrorRecord) -> PortResult<Update> {
    let id = ErrorId::of(record);
    let fields: Item = serde_dynamo::to_item(record).map_err(|e| CodecError::encode("error record", e))?;
    let mut e = Expr::default();
    for (attribute, value) in fields.iter() {
        e.set(attribute, attribute, value.clone());
    }
    for optional in ["stepId", "subStep"] {
        if !fields.contains_key(optional) {
            e.remove(optional);
        }
    }
    e.set("errorId", "errorId", s(id.to_string()));
    e.set("state", "state", s(ErrorState::Open.name()));
    let occurrences = e.name("occurrences");
    e.value("zero", n(0));
    e.value("one", n(1));
    e.set.push(format!("{occurrences} = if_not_exists({occurrences}, :zero) + :one"));
    e.set("gsi5pk", "gsi5pk", s(ERRORS_GSI_PK));
    e.set("gsi5sk", "gsi5sk", s(error_gsi_sk(record)));
    Update::builder()
        .table_name(table)
        .set_key(Some(error_key(&id)))
        .update_expression(e.update_expression())
        .set_expression_attribute_names(e.names())
        .set_expression_attribute_values(e.values())
        .build()
        .map_err(super::writes::build_fault)
}

pub(crate) fn error_from_item(mut item: Item) -> Result<StoredError, CodecError> {
    for key in ["pk", "sk", "gsi5pk", "gsi5sk"] {
        item.remove(key);
    }
    serde_dynamo::from_item(item).map_err(|e| CodecError::malformed("error entry", e))
}

pub(super) fn json_text<T: Serialize>(value: &T, what: &'static str) -> Result<String, CodecError> {
    serde_json::to_string(value).map_err(|e| CodecError::encode(what, e))
}

pub(super) fn json_body<T: serde::de::DeserializeOwned>(item: &Item, what: &'static str) -> Result<T, CodecError> {
    let body = attr_str(item, "body").ok_or(CodecError::NoBody { what })?;
    serde_json::from_str(body).map_err(|e| CodecError::malformed(what, e))
}

/// The item of a timer on exchange `exchange_id`, on the due index until taken.
pub(crate) fn timer_to_item(exchange_id: &ExchangeId, timer: &Timer) -> Result<Item, CodecError> {
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

pub(crate) fn timer_from_item(item: &Item) -> Result<Timer, CodecError> {
    json_body(item, "timer")
}

/// The item of a callback token stored at `now`.
pub(crate) fn token_to_item(token: &CallbackToken, now: DateTime<Utc>) -> Result<Item, CodecError> {
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

pub(crate) fn token_from_item(item: &Item) -> Result<CallbackToken, CodecError> {
    json_body(item, "callback token")
}

pub(super) fn attr_str<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}
