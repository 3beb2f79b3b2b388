//! [`ExchangeRepository`] on one DynamoDB table (single-table design, `infra/template.yaml`
//! `ExchangesTable`).
//!
//! # Key design
//!
//! | item | `pk` | `sk` | index keys |
//! |---|---|---|---|
//! | exchange | `EX#<exchangeId>` | `EXCHANGE` | `gsi1pk=INT#<code>`, `gsi2pk=STATUS#<statusName>`, `gsi3pk=EXCHANGES`; every `gsiNsk=<createdAt RFC 3339, UTC, millis>#<exchangeId>`; sub-exchanges also `gsi6pk=PARENT#<parentId>`, `gsi6sk=<parent stepId>#<index, 8 digits>` |
//! | step | `EX#<exchangeId>` | `STEP#<stepId>` (zero-padded, e.g. `STEP#0003`) | none (steps stay out of the sparse indexes) |
//! | error entry | `EX#<exchangeId>` | `ERROR#<stepId or ->` | `gsi5pk=ERRORS`, `gsi5sk=<last failure's at, RFC 3339 millis>#<exchangeId>#<stepId or ->` |
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
//!   A waiting step whose callback was accepted has `callbackAcceptedAt` (epoch millis): its
//!   timeout then no longer fails it (a reset removes it).
//! * Error attributes: every [`StoredError`] field in camelCase: the last failure's
//!   [`ErrorRecord`] fields (`classification` as `business`/`system`, `code` its name),
//!   `errorId`, `state` (`open`/`resolved`), `occurrences`, and the maps `resolution` and
//!   `reprocessing` once written.
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
//! * `delete_finished` (retention): a conditional UpdateItem marking the exchange item
//!   `deletingAt` (only while final at the given generation; recoveries require its absence),
//!   then BatchWriteItem deletes of every other item under its `pk`, then the exchange item
//!   itself. Repeated after a crash, it finds the mark and finishes.
//! * `errors`: Query on `byError` (`gsi5sk >= since`), filtering on classification, code
//!   and state; the cursor works like `list`'s. A commit's failure is an UpdateItem of its
//!   entry in the commit's transaction (fields replaced, `state = open`, `occurrences + 1`).
//! * `resolve_error`: an UpdateItem setting `state = resolved` and `resolution`, only while
//!   `state = open`; `record_reprocessing`: an UpdateItem setting `reprocessing`, only while
//!   resolved by that very resolution (`resolution.at`) and not yet re-processed for it.
//! * `due_timers` / `take_timer`: Query on `byDue` up to a time; a conditional UpdateItem
//!   that removes the timer's index keys (only one sweeper wins).
//! * Tokens: a conditional PutItem; consuming is a conditional UpdateItem that sets `usedAt`
//!   (once, before expiry) and returns the token; releasing removes `usedAt`.

use crate::error::{self, ErrorKind};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, DeleteRequest, KeysAndAttributes, Put, PutRequest, TransactWriteItem, Update,
    WriteRequest,
};
use aws_sdk_dynamodb::Client;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use handoff_core::commit::{
    ClaimRequest, CommitOutcome, Conflict, ErrorRecord, ExchangeChange, ItemRef, ParentTally, Precondition,
    RecoveryCommit, ReexecutionCommit, StepChange, StepCommit,
};
use handoff_core::error_list::{ErrorId, ErrorState, Reprocessing, Resolution, StoredError};
use handoff_core::exchange::{
    Exchange, ExchangeError, ExchangeStatus, ExchangeStep, LogLine, ParentLink, Payload, StepError, StepStatus,
    SubExchangeCounts,
};
use handoff_core::exchange::{ExchangeDetail, ExchangeEvent, Trigger};
use handoff_core::handoff::{CallbackToken, Timer};
use handoff_core::ids::{ExchangeId, IntegrationCode, IntegrationVersion, StepId};
use handoff_core::plan::SubStep;
use handoff_ports::{
    ErrorFilter, ErrorPage, ErrorStore, ExchangeFilter, ExchangePage, ExchangeReads, ExchangeWrites, PortError,
    PortResult, TimerStore, TokenStore,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

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
/// DynamoDB's limit of requests in one BatchWriteItem.
pub(crate) const MAX_BATCH_WRITE: usize = 25;
/// DynamoDB's limit of keys in one BatchGetItem.
const MAX_BATCH_GET: usize = 100;
const MAX_LIST_LIMIT: u32 = 1000;
/// Step attributes of a `ControlSubflow` step (see [`SubExchangeCounts`]).
const SUB_TOTAL: &str = "subTotal";
const SUB_COMPLETED: &str = "subCompleted";
const SUB_FAILED: &str = "subFailed";
/// Set on an exchange item while the exchange is being deleted (its retention ran out).
const DELETING_AT: &str = "deletingAt";
/// Set on a waiting step when a callback for it is accepted (epoch millis); removed by a reset.
const CALLBACK_ACCEPTED_AT: &str = "callbackAcceptedAt";

mod expr;
mod items;
mod keys;
mod queries;
#[cfg(test)]
mod tests;
mod writes;

use super::backoff::Backoff;
use expr::*;
use items::*;
pub use keys::*;
use queries::*;
use writes::*;

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
        let requests = dedup_by_key(items)
            .into_iter()
            .map(|item| {
                let put = PutRequest::builder().set_item(Some(item)).build().map_err(build_fault)?;
                Ok(WriteRequest::builder().put_request(put).build())
            })
            .collect::<PortResult<Vec<_>>>()?;
        self.batch_write(requests).await
    }

    async fn batch_write(&self, requests: Vec<WriteRequest>) -> PortResult<()> {
        super::batch_write(&self.client, &self.table, requests).await
    }

    /// Whether the exchange item exists with the mark of a deletion under way.
    async fn is_being_deleted(&self, id: &ExchangeId) -> PortResult<bool> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(exchange_key(id)))
            .projection_expression("#pk, #deleting")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#deleting", DELETING_AT)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "GetItem", e))?;
        Ok(out.item.is_some_and(|item| item.contains_key(DELETING_AT)))
    }

    /// The keys of every item stored under the exchange's `pk` (consistent, paginated).
    async fn item_keys(&self, id: &ExchangeId) -> PortResult<Vec<Item>> {
        let request = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .projection_expression("#pk, #sk")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#sk", "sk")
            .expression_attribute_values(":pk", s(exchange_pk(id)))
            .consistent_read(true);
        super::query_all(request).await
    }

    /// Deletes the items of `keys`, ≤ 25 per BatchWriteItem, retrying unprocessed ones with backoff.
    async fn batch_delete(&self, keys: Vec<Item>) -> PortResult<()> {
        let requests = keys
            .into_iter()
            .map(|key| {
                let delete = DeleteRequest::builder().set_key(Some(key)).build().map_err(build_fault)?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            })
            .collect::<PortResult<Vec<_>>>()?;
        self.batch_write(requests).await
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
impl ExchangeReads for DynamoExchangeRepository {
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
        let request = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(exchange_pk(id)))
            .consistent_read(true);
        for item in super::query_all(request).await? {
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
        let exchanges = items.into_iter().map(exchange_from_item).collect::<Result<Vec<_>, _>>()?;
        Ok(ExchangePage { items: exchanges, next_cursor })
    }

    async fn health(&self) -> PortResult<()> {
        super::table_health(&self.client, &self.table).await
    }
}

#[async_trait]
impl ErrorStore for DynamoExchangeRepository {
    async fn errors(&self, filter: &ErrorFilter, limit: u32, cursor: Option<&str>) -> PortResult<ErrorPage> {
        let query = errors_query(filter)?;
        let (items, next_cursor) = self.query_page(&query, limit, cursor).await?;
        let items = items.into_iter().map(error_from_item).collect::<Result<Vec<_>, _>>()?;
        Ok(ErrorPage { items, next_cursor })
    }

    async fn error(&self, id: &ErrorId) -> PortResult<Option<StoredError>> {
        let result = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(error_key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "GetItem", e))?;
        Ok(result.item.map(error_from_item).transpose()?)
    }

    async fn resolve_error(&self, id: &ErrorId, resolution: &Resolution) -> PortResult<bool> {
        let mut e = Expr::default();
        e.set("state", "resolved", s(ErrorState::Resolved.name()));
        e.set("resolution", "resolution", to_av(resolution)?);
        let state = e.name("state");
        let open = e.value("open", s(ErrorState::Open.name()));
        self.conditional_error_update(id, e, format!("{state} = {open}")).await
    }

    async fn record_reprocessing(&self, id: &ErrorId, reprocessing: &Reprocessing) -> PortResult<bool> {
        let mut e = Expr::default();
        e.set("reprocessing", "reprocessing", to_av(reprocessing)?);
        let (state, resolution, repro, at, of) =
            (e.name("state"), e.name("resolution"), e.name("reprocessing"), e.name("at"), e.name("resolutionAt"));
        let resolved = e.value("resolved", s(ErrorState::Resolved.name()));
        let seen = e.value("seen", to_av(&reprocessing.resolution_at)?);
        let condition = format!(
            "{state} = {resolved} AND {resolution}.{at} = {seen} AND (attribute_not_exists({repro}) OR {repro}.{of} <> {seen})"
        );
        self.conditional_error_update(id, e, condition).await
    }
}

impl DynamoExchangeRepository {
    /// An UpdateItem of an existing error entry under `condition`: `false` if it failed.
    async fn conditional_error_update(&self, id: &ErrorId, e: Expr, condition: String) -> PortResult<bool> {
        self.update_existing_if(error_key(id), e, condition).await
    }

    /// The UpdateItem `e` of the existing item `key`, only while `condition` holds: `false`
    /// (nothing written) if the item is gone or the condition failed.
    async fn update_existing_if(&self, key: Item, mut e: Expr, condition: String) -> PortResult<bool> {
        let pk = e.name("pk");
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression(e.update_expression())
            .condition_expression(format!("attribute_exists({pk}) AND {condition}"))
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
}

#[async_trait]
impl ExchangeWrites for DynamoExchangeRepository {
    async fn create(&self, exchange: &Exchange, steps: &[ExchangeStep]) -> PortResult<()> {
        self.batch_put(creation_items([(exchange, steps)])?).await
    }

    async fn create_many(&self, exchanges: &[(Exchange, Vec<ExchangeStep>)]) -> PortResult<()> {
        let items = creation_items(exchanges.iter().map(|(exchange, steps)| (exchange, steps.as_slice())))?;
        self.batch_put(items).await
    }

    async fn try_claim(&self, request: &ClaimRequest) -> PortResult<Result<(), Conflict>> {
        self.transact(claim_plan(&self.table, request)?).await
    }

    async fn try_reexecute(&self, commit: &ReexecutionCommit) -> PortResult<Result<(), Conflict>> {
        self.transact(reexecute_plan(&self.table, commit)?).await
    }

    async fn try_commit(&self, commit: &StepCommit) -> PortResult<Result<(), Conflict>> {
        self.transact(commit_plan(&self.table, commit)?).await
    }

    async fn try_recover(&self, commit: &RecoveryCommit) -> PortResult<Result<(), Conflict>> {
        self.transact(recover_plan(&self.table, commit)?).await
    }

    async fn delete_finished(&self, id: &ExchangeId, recovery: u32) -> PortResult<CommitOutcome> {
        let (update, condition, names, values) = deletion_mark_parts(id, recovery, Utc::now())?;
        let marked = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(exchange_key(id)))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match marked {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                // Either recovered (or deleted) meanwhile, or marked by a deletion a crash
                // interrupted: that one is finished now.
                if !self.is_being_deleted(id).await? {
                    return Ok(CommitOutcome::Conflict);
                }
            }
            Err(e) => return Err(error::sdk(SERVICE, "UpdateItem", e)),
        }
        let mut keys = self.item_keys(id).await?;
        let exchange_item = exchange_key(id);
        keys.retain(|key| key != &exchange_item);
        self.batch_delete(keys).await?;
        // The exchange item last: while it exists, a repeated deletion finds what is left.
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(exchange_item))
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "DeleteItem", e))?;
        Ok(CommitOutcome::Applied)
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
}

#[async_trait]
impl TimerStore for DynamoExchangeRepository {
    async fn due_timers(&self, until: DateTime<Utc>, limit: u32) -> PortResult<Vec<Timer>> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT) as usize;
        let (items, _) = self.query_items(&due_query(until), limit, None).await?;
        Ok(items.iter().map(timer_from_item).collect::<Result<_, _>>()?)
    }

    async fn take_timer(&self, timer: &Timer) -> PortResult<bool> {
        let mut e = Expr::default();
        let (gpk, gsk) = index_keys(INDEX_BY_DUE);
        e.remove(gpk);
        e.remove(gsk);
        let sk_name = e.name(gsk);
        // Only this very timer, still on the index: one re-armed since it was read stays due.
        let sk_value = e.value("gsi4sk", s(timer_gsi_sk(timer)));
        let pk_name = e.name(gpk);
        let condition = format!("attribute_exists({pk_name}) AND {sk_name} = {sk_value}");
        self.update_existing_if(timer_key(timer), e, condition).await
    }
}

#[async_trait]
impl TokenStore for DynamoExchangeRepository {
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

    async fn consume_token(&self, token: &CallbackToken, now: DateTime<Utc>, outbox: &Timer) -> PortResult<bool> {
        let actions = consume_token_plan(&self.table, token, now, outbox)?;
        Ok(self.transact(actions).await?.is_ok())
    }
}
