//! [`UnroutedStore`] on the exchanges table, in one partition (`pk=UNROUTED`,
//! `sk=UNROUTED#<id>`; ids are time-ordered, so a backwards Query lists newest first):
//! attributes `body` (the [`UnroutedMessage`] JSON), `replayExchangeId` (the condition two
//! replays race on) and `expiresAt` (the table's TTL). One partition is enough for refused
//! requests (about 1,000 writes a second); a flood of them is throttled there, away from
//! the exchanges.

use super::exchanges::Item;
use crate::error;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use handoff_core::ids::{ExchangeId, UnroutedId};
use handoff_core::unrouted::UnroutedMessage;
use handoff_ports::{PortResult, UnroutedStore, UnroutedWriteError};
use std::collections::HashMap;

const SERVICE: &str = "dynamodb";
const PK: &str = "UNROUTED";
const SK_PREFIX: &str = "UNROUTED#";
const MAX_PAGE: usize = 200;

fn key(id: &str) -> Item {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(PK.into())),
        ("sk".to_string(), AttributeValue::S(format!("{SK_PREFIX}{id}"))),
    ])
}

fn from_item(item: &Item) -> PortResult<UnroutedMessage> {
    let body = item
        .get("body")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| error::fault(SERVICE, "stored unrouted message has no body"))?;
    serde_json::from_str(body).map_err(|e| error::fault(SERVICE, format!("stored unrouted message is malformed: {e}")))
}

fn body(message: &UnroutedMessage) -> PortResult<AttributeValue> {
    serde_json::to_string(message)
        .map(AttributeValue::S)
        .map_err(|e| error::fault(SERVICE, format!("cannot encode unrouted message: {e}")))
}

/// A conditional write's outcome: its condition failing is a [`UnroutedWriteError::Conflict`].
fn conditional<E>(
    result: Result<impl Sized, aws_sdk_dynamodb::error::SdkError<E>>,
    operation: &'static str,
    is_conditional: impl Fn(&E) -> bool,
) -> Result<(), UnroutedWriteError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(&is_conditional) => Err(UnroutedWriteError::Conflict),
        Err(e) => Err(error::sdk(SERVICE, operation, e).into()),
    }
}

/// Unrouted messages in the exchanges table.
#[derive(Debug, Clone)]
pub struct DynamoUnroutedStore {
    client: Client,
    table: String,
}

impl DynamoUnroutedStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }
}

#[async_trait]
impl UnroutedStore for DynamoUnroutedStore {
    async fn keep(
        &self,
        message: &UnroutedMessage,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), UnroutedWriteError> {
        let mut item = key(message.unrouted_id.as_str());
        item.insert("body".into(), body(message)?);
        if let Some(replay) = &message.replay {
            item.insert("replayExchangeId".into(), AttributeValue::S(replay.exchange_id.to_string()));
        }
        if let Some(at) = expires_at {
            item.insert("expiresAt".into(), AttributeValue::N(at.timestamp().to_string()));
        }
        match super::put_if_absent(&self.client, &self.table, item).await? {
            true => Ok(()),
            false => Err(UnroutedWriteError::Conflict),
        }
    }

    async fn unrouted(&self, id: &UnroutedId) -> PortResult<Option<UnroutedMessage>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(id.as_str())))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "GetItem", e))?;
        out.item.filter(|item| !item.is_empty()).map(|item| from_item(&item)).transpose()
    }

    async fn list_unrouted(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> PortResult<(Vec<UnroutedMessage>, Option<String>)> {
        let limit = limit.clamp(1, MAX_PAGE);
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#sk", "sk")
            .expression_attribute_values(":pk", AttributeValue::S(PK.into()))
            .expression_attribute_values(":prefix", AttributeValue::S(SK_PREFIX.into()))
            .scan_index_forward(false)
            .limit(limit as i32)
            .set_exclusive_start_key(after.map(key))
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "Query", e))?;
        let messages = out.items.unwrap_or_default().iter().map(from_item).collect::<PortResult<Vec<_>>>()?;
        let next = match out.last_evaluated_key {
            Some(k) if !k.is_empty() => messages.last().map(|m| m.unrouted_id.to_string()),
            _ => None,
        };
        Ok((messages, next))
    }

    async fn save_replay(
        &self,
        message: &UnroutedMessage,
        expected: Option<&ExchangeId>,
    ) -> Result<(), UnroutedWriteError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(message.unrouted_id.as_str())))
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#body", "body")
            .expression_attribute_names("#replay", "replayExchangeId")
            .expression_attribute_values(":body", body(message)?);
        update = match &message.replay {
            Some(replay) => update
                .update_expression("SET #body = :body, #replay = :replay")
                .expression_attribute_values(":replay", AttributeValue::S(replay.exchange_id.to_string())),
            None => update.update_expression("SET #body = :body REMOVE #replay"),
        };
        update = match expected {
            None => update.condition_expression("attribute_exists(#pk) AND attribute_not_exists(#replay)"),
            Some(id) => update
                .condition_expression("attribute_exists(#pk) AND #replay = :expected")
                .expression_attribute_values(":expected", AttributeValue::S(id.to_string())),
        };
        conditional(update.send().await, "UpdateItem", |e| e.is_conditional_check_failed_exception())
    }
}
