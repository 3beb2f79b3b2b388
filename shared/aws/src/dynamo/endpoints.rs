//! [`EndpointStore`] on the exchanges table: one item per integration code,
//! `pk=ENDPOINT#<code>`, `sk=ENDPOINT`, outside every index; attributes `code`, `status`
//! (its name), `since` (RFC 3339), `reason`, `changedBy`, `queueStatus`, `onSystemFailure`
//! (absent: the default for the integration's kind) and `revision` (number). A first write
//! is a put on condition `attribute_not_exists(pk)`, a later one a put on
//! `revision = :expected`.
//!
//! The endpoint log shares it too: `sk=LOG#<at, RFC 3339 nanoseconds>#<what>`, attributes
//! `body` (the [`EndpointLogEntry`] JSON) and `expiresAt` (the table's TTL, epoch seconds),
//! read newest first; the cursor is the base64url of the last sort key handed out.
//!
//! Held handoffs share the endpoint's partition: `sk=HELD#<exchangeId>#<stepId>#<attempt>`,
//! attributes `body` (the [`HeldHandoff`] JSON). Holding is one TransactWriteItems: a
//! condition check that the endpoint is still held at the revision read, and the put.
//!
//! Endpoints live with the exchanges, not the definitions: they are runtime state that the
//! workers move (a failing endpoint), while workers only read the integrations table.

use super::exchanges::Item;
use crate::error;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use handoff_core::endpoint::{Endpoint, EndpointEvent, EndpointLogEntry, EndpointStatus, HeldHandoff};
use handoff_core::ids::IntegrationCode;
use handoff_ports::{EndpointStore, EndpointWriteError, PortError, PortResult};
use std::collections::HashMap;

const SERVICE: &str = "dynamodb";
const SORT_KEY: &str = "ENDPOINT";
const HELD_PREFIX: &str = "HELD#";
const LOG_PREFIX: &str = "LOG#";
/// Most log lines one page reads.
const MAX_LOG_PAGE: u32 = 1000;

fn log_sort_key(entry: &EndpointLogEntry) -> String {
    let what = match &entry.event {
        EndpointEvent::Invoked { exchange_id, .. } => format!("invoked#{exchange_id}"),
        EndpointEvent::Skipped { .. } => "skipped".into(),
        EndpointEvent::StatusChanged { to, .. } => format!("status#{}", to.name()),
    };
    format!("{LOG_PREFIX}{}#{what}", entry.at.to_rfc3339_opts(SecondsFormat::Nanos, true))
}

pub fn endpoint_pk(code: &IntegrationCode) -> String {
    format!("ENDPOINT#{code}")
}

fn key(code: &IntegrationCode) -> Item {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(endpoint_pk(code))),
        ("sk".to_string(), AttributeValue::S(SORT_KEY.into())),
    ])
}

fn held_key(held: &HeldHandoff) -> Item {
    let m = &held.message;
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(endpoint_pk(&m.integration_code))),
        ("sk".to_string(), AttributeValue::S(format!("{HELD_PREFIX}{}#{}#{}", m.exchange_id, m.step_id, m.attempt))),
    ])
}

fn held_to_item(held: &HeldHandoff) -> PortResult<Item> {
    let body =
        serde_json::to_string(held).map_err(|e| error::fault(SERVICE, format!("cannot encode held handoff: {e}")))?;
    let mut item = held_key(held);
    item.insert("body".into(), AttributeValue::S(body));
    Ok(item)
}

fn held_from_item(item: &Item) -> PortResult<HeldHandoff> {
    let body = item
        .get("body")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| error::fault(SERVICE, "stored held handoff has no body"))?;
    serde_json::from_str(body).map_err(|e| error::fault(SERVICE, format!("stored held handoff is malformed: {e}")))
}

fn to_item(endpoint: &Endpoint) -> PortResult<Item> {
    let mut item: Item =
        serde_dynamo::to_item(endpoint).map_err(|e| error::fault(SERVICE, format!("cannot encode endpoint: {e}")))?;
    item.extend(key(&endpoint.code));
    Ok(item)
}

fn from_item(mut item: Item) -> PortResult<Endpoint> {
    item.remove("pk");
    item.remove("sk");
    serde_dynamo::from_item(item).map_err(|e| error::fault(SERVICE, format!("stored endpoint is malformed: {e}")))
}

fn condition_failed(error: Option<&TransactWriteItemsError>) -> bool {
    let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) = error else { return false };
    cancel.cancellation_reasons().iter().any(|r| r.code() == Some("ConditionalCheckFailed"))
}

/// Endpoints in the exchanges table.
#[derive(Debug, Clone)]
pub struct DynamoEndpointStore {
    client: Client,
    table: String,
}

impl DynamoEndpointStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }
}

#[async_trait]
impl EndpointStore for DynamoEndpointStore {
    async fn endpoint(&self, code: &IntegrationCode) -> PortResult<Option<Endpoint>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(code)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "GetItem", e))?;
        match out.item {
            Some(item) if !item.is_empty() => Ok(Some(from_item(item)?)),
            _ => Ok(None),
        }
    }

    async fn save_endpoint(&self, endpoint: &Endpoint) -> Result<Endpoint, EndpointWriteError> {
        let stored = Endpoint { revision: endpoint.revision + 1, ..endpoint.clone() };
        let request = self.client.put_item().table_name(&self.table).set_item(Some(to_item(&stored)?));
        let expected = (endpoint.revision > 0).then_some(endpoint.revision);
        match super::at_revision(request, expected).send().await {
            Ok(_) => Ok(stored),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                Err(EndpointWriteError::RevisionConflict)
            }
            Err(e) => Err(error::sdk(SERVICE, "PutItem", e).into()),
        }
    }

    async fn hold(&self, held: &HeldHandoff, endpoint_revision: u64) -> Result<(), EndpointWriteError> {
        let build =
            |e: aws_sdk_dynamodb::error::BuildError| error::fault(SERVICE, format!("cannot build request: {e}"));
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key(&held.message.integration_code)))
            .condition_expression("#revision = :revision AND #status IN (:disabled, :failed)")
            .expression_attribute_names("#revision", "revision")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":revision", AttributeValue::N(endpoint_revision.to_string()))
            .expression_attribute_values(":disabled", AttributeValue::S(EndpointStatus::Disabled.name().into()))
            .expression_attribute_values(":failed", AttributeValue::S(EndpointStatus::Failed.name().into()))
            .build()
            .map_err(build)?;
        let put = Put::builder().table_name(&self.table).set_item(Some(held_to_item(held)?)).build().map_err(build)?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().condition_check(check).build())
            .transact_items(TransactWriteItem::builder().put(put).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Only the endpoint's check has a condition: its failure means the endpoint moved.
            Err(e) if condition_failed(e.as_service_error()) => Err(EndpointWriteError::RevisionConflict),
            Err(e) => Err(error::sdk(SERVICE, "TransactWriteItems", e).into()),
        }
    }

    async fn held(&self, code: &IntegrationCode) -> PortResult<Vec<HeldHandoff>> {
        let request = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :held)")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#sk", "sk")
            .expression_attribute_values(":pk", AttributeValue::S(endpoint_pk(code)))
            .expression_attribute_values(":held", AttributeValue::S(HELD_PREFIX.into()))
            .consistent_read(true);
        let mut held = super::query_all(request).await?.iter().map(held_from_item).collect::<PortResult<Vec<_>>>()?;
        held.sort_by_key(|h| h.held_at);
        Ok(held)
    }

    async fn append_log(
        &self,
        code: &IntegrationCode,
        entry: &EndpointLogEntry,
        expires_at: Option<DateTime<Utc>>,
    ) -> PortResult<()> {
        let body =
            serde_json::to_string(entry).map_err(|e| error::fault(SERVICE, format!("cannot encode log line: {e}")))?;
        let mut item: Item = HashMap::from([
            ("pk".to_string(), AttributeValue::S(endpoint_pk(code))),
            ("sk".to_string(), AttributeValue::S(log_sort_key(entry))),
            ("body".to_string(), AttributeValue::S(body)),
        ]);
        if let Some(at) = expires_at {
            item.insert("expiresAt".into(), AttributeValue::N(at.timestamp().to_string()));
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| error::sdk(SERVICE, "PutItem", e))
    }

    async fn log(
        &self,
        code: &IntegrationCode,
        limit: u32,
        cursor: Option<&str>,
    ) -> PortResult<(Vec<EndpointLogEntry>, Option<String>)> {
        let start = match cursor.filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => {
                let bad = || PortError::InvalidCursor("invalid cursor".into());
                let sk = URL_SAFE_NO_PAD.decode(c).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
                if !sk.starts_with(LOG_PREFIX) {
                    return Err(bad());
                }
                Some(HashMap::from([
                    ("pk".to_string(), AttributeValue::S(endpoint_pk(code))),
                    ("sk".to_string(), AttributeValue::S(sk)),
                ]))
            }
        };
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :log)")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#sk", "sk")
            .expression_attribute_values(":pk", AttributeValue::S(endpoint_pk(code)))
            .expression_attribute_values(":log", AttributeValue::S(LOG_PREFIX.into()))
            .scan_index_forward(false)
            .limit(limit.clamp(1, MAX_LOG_PAGE) as i32)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "Query", e))?;
        let mut lines = Vec::new();
        for item in out.items.unwrap_or_default() {
            let body = item
                .get("body")
                .and_then(|v| v.as_s().ok())
                .ok_or_else(|| error::fault(SERVICE, "stored log line has no body"))?;
            lines.push(
                serde_json::from_str(body)
                    .map_err(|e| error::fault(SERVICE, format!("stored log line is malformed: {e}")))?,
            );
        }
        let next = out
            .last_evaluated_key
            .and_then(|key| key.get("sk").and_then(|v| v.as_s().ok()).map(|sk| URL_SAFE_NO_PAD.encode(sk)));
        Ok((lines, next))
    }

    async fn release(&self, held: &HeldHandoff) -> PortResult<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(held_key(held)))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| error::sdk(SERVICE, "DeleteItem", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_core::endpoint::{EndpointStatus, OnSystemFailure};

    #[test]
    fn endpoint_item_round_trips_outside_every_index() {
        let mut endpoint = Endpoint::new(
            IntegrationCode::parse("ORDERS").expect("code"),
            EndpointStatus::Disabled,
            "admin",
            chrono::DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z").expect("time").with_timezone(&chrono::Utc),
        );
        endpoint.on_system_failure = Some(OnSystemFailure::Halt);
        endpoint.revision = 4;
        let item = to_item(&endpoint).expect("encode");
        assert_eq!(item.get("pk"), Some(&AttributeValue::S("ENDPOINT#ORDERS".into())));
        assert_eq!(item.get("status"), Some(&AttributeValue::S("Disabled".into())));
        assert!(!item.keys().any(|k| k.starts_with("gsi")), "{item:?}");
        assert_eq!(from_item(item).expect("decode"), endpoint);
    }
}
