//! [`EventQueue`] on the exchanges table, in the endpoint's partition (`pk=ENDPOINT#<code>`):
//!
//! * an event: `sk=EVENT#<position>` (position = arrival time, microseconds, `#` event id:
//!   the sort key is the arrival order), attribute `body` (the [`QueuedEvent`] JSON);
//! * the claim: `sk=EVENTCLAIM`, attributes `exchangeId` and `body` (the [`EventClaim`]
//!   JSON), put on condition `attribute_not_exists(pk)` and deleted on condition that it is
//!   still the same exchange's;
//! * the discarded count: `sk=EVENTSTATS`, attribute `discarded`, raised with `ADD`.
//!
//! Events carry no TTL: they wait as long as it takes. Consuming deletes the claimed events
//! first (BatchWriteItem; deleting one already gone is no error), then the claim — so a crash
//! between them leaves a claim the next call finishes.

use super::endpoints::endpoint_pk;
use super::exchanges::Item;
use crate::error;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, Select, WriteRequest};
use aws_sdk_dynamodb::Client;
use handoff_core::events::{EventClaim, QueuedEvent};
use handoff_core::ids::IntegrationCode;
use handoff_ports::{EventClaimError, EventQueue, EventQueueSummary, PortResult};
use std::collections::HashMap;

const SERVICE: &str = "dynamodb";
const EVENT_PREFIX: &str = "EVENT#";
const CLAIM_KEY: &str = "EVENTCLAIM";
const STATS_KEY: &str = "EVENTSTATS";
/// Most events one page reads.
const MAX_PAGE: usize = 1000;

fn key(code: &IntegrationCode, sk: String) -> Item {
    HashMap::from([("pk".to_string(), AttributeValue::S(endpoint_pk(code))), ("sk".to_string(), AttributeValue::S(sk))])
}

fn event_key(code: &IntegrationCode, position: &str) -> Item {
    key(code, format!("{EVENT_PREFIX}{position}"))
}

fn body_of<T: serde::de::DeserializeOwned>(item: &Item, what: &str) -> PortResult<T> {
    let body = item
        .get("body")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| error::fault(SERVICE, format!("stored {what} has no body")))?;
    serde_json::from_str(body).map_err(|e| error::fault(SERVICE, format!("stored {what} is malformed: {e}")))
}

fn encode<T: serde::Serialize>(value: &T, what: &str) -> PortResult<AttributeValue> {
    serde_json::to_string(value)
        .map(AttributeValue::S)
        .map_err(|e| error::fault(SERVICE, format!("cannot encode {what}: {e}")))
}

fn build_fault(e: aws_sdk_dynamodb::error::BuildError) -> handoff_ports::PortError {
    error::fault(SERVICE, format!("cannot build request: {e}"))
}

/// Event queues in the exchanges table.
#[derive(Debug, Clone)]
pub struct DynamoEventQueue {
    client: Client,
    table: String,
}

impl DynamoEventQueue {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    fn events_query(&self, code: &IntegrationCode) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :event)")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#sk", "sk")
            .expression_attribute_values(":pk", AttributeValue::S(endpoint_pk(code)))
            .expression_attribute_values(":event", AttributeValue::S(EVENT_PREFIX.into()))
            .consistent_read(true)
    }

    /// Deletes the claim if it is still `claim`'s exchange's.
    async fn delete_claim(&self, code: &IntegrationCode, claim: &EventClaim) -> PortResult<()> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(code, CLAIM_KEY.into())))
            .condition_expression("#exchangeId = :exchangeId")
            .expression_attribute_names("#exchangeId", "exchangeId")
            .expression_attribute_values(":exchangeId", AttributeValue::S(claim.exchange_id.to_string()))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            // Gone already, or another exchange's since: nothing of this claim is left.
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(error::sdk(SERVICE, "DeleteItem", e)),
        }
    }
}

#[async_trait]
impl EventQueue for DynamoEventQueue {
    async fn append(&self, code: &IntegrationCode, events: &[QueuedEvent]) -> PortResult<()> {
        let requests = events
            .iter()
            .map(|event| {
                let mut item = event_key(code, &event.position);
                item.insert("body".into(), encode(event, "event")?);
                let put =
                    aws_sdk_dynamodb::types::PutRequest::builder().set_item(Some(item)).build().map_err(build_fault)?;
                Ok(WriteRequest::builder().put_request(put).build())
            })
            .collect::<PortResult<Vec<_>>>()?;
        super::batch_write(&self.client, &self.table, requests).await
    }

    async fn count_discarded(&self, code: &IntegrationCode, count: u64) -> PortResult<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(code, STATS_KEY.into())))
            .update_expression("ADD #discarded :count")
            .expression_attribute_names("#discarded", "discarded")
            .expression_attribute_values(":count", AttributeValue::N(count.to_string()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| error::sdk(SERVICE, "UpdateItem", e))
    }

    async fn pending(
        &self,
        code: &IntegrationCode,
        limit: usize,
        after: Option<&str>,
    ) -> PortResult<(Vec<QueuedEvent>, Option<String>)> {
        let limit = limit.clamp(1, MAX_PAGE);
        let start = after.map(|position| event_key(code, position));
        let out = self
            .events_query(code)
            .limit(limit as i32)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "Query", e))?;
        let events = out
            .items
            .unwrap_or_default()
            .iter()
            .map(|item| body_of(item, "event"))
            .collect::<PortResult<Vec<QueuedEvent>>>()?;
        let next = match out.last_evaluated_key {
            Some(k) if !k.is_empty() => events.last().map(|e| e.position.clone()),
            _ => None,
        };
        Ok((events, next))
    }

    async fn summary(&self, code: &IntegrationCode) -> PortResult<EventQueueSummary> {
        let mut pending = 0u64;
        let mut start = None;
        loop {
            let out = self
                .events_query(code)
                .select(Select::Count)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| error::sdk(SERVICE, "Query", e))?;
            pending += out.count.max(0) as u64;
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        let (oldest, _) = self.pending(code, 1, None).await?;
        let stats = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(code, STATS_KEY.into())))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "GetItem", e))?;
        let discarded = stats
            .item
            .and_then(|item| item.get("discarded").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()))
            .unwrap_or(0);
        Ok(EventQueueSummary { pending, oldest: oldest.first().map(|e| e.received_at), discarded })
    }

    async fn claim(&self, code: &IntegrationCode) -> PortResult<Option<EventClaim>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(code, CLAIM_KEY.into())))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "GetItem", e))?;
        match out.item {
            Some(item) if !item.is_empty() => Ok(Some(body_of(&item, "event claim")?)),
            _ => Ok(None),
        }
    }

    async fn take(&self, code: &IntegrationCode, claim: &EventClaim) -> Result<(), EventClaimError> {
        let mut item = key(code, CLAIM_KEY.into());
        item.insert("exchangeId".into(), AttributeValue::S(claim.exchange_id.to_string()));
        item.insert("body".into(), encode(claim, "event claim")?);
        if super::put_if_absent(&self.client, &self.table, item).await? {
            Ok(())
        } else {
            Err(EventClaimError::Taken)
        }
    }

    async fn consume(&self, code: &IntegrationCode, claim: &EventClaim) -> PortResult<()> {
        let deletes = claim
            .taken
            .iter()
            .map(|position| {
                let delete =
                    DeleteRequest::builder().set_key(Some(event_key(code, position))).build().map_err(build_fault)?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            })
            .collect::<PortResult<Vec<_>>>()?;
        super::batch_write(&self.client, &self.table, deletes).await?;
        self.delete_claim(code, claim).await
    }

    async fn let_go(&self, code: &IntegrationCode, claim: &EventClaim) -> PortResult<()> {
        self.delete_claim(code, claim).await
    }
}
