//! [`EndpointStore`] on the exchanges table: one item per integration code,
//! `pk=ENDPOINT#<code>`, `sk=ENDPOINT`, outside every index; attributes `code`, `status`
//! (its name), `since` (RFC 3339), `reason`, `changedBy`, `queueStatus`, `onSystemFailure`
//! (absent: the default for the integration's kind) and `revision` (number). A first write
//! is a put on condition `attribute_not_exists(pk)`, a later one a put on
//! `revision = :expected`.
//!
//! Endpoints live with the exchanges, not the definitions: they are runtime state that the
//! workers move (a failing endpoint), while workers only read the integrations table.

use super::exchanges::Item;
use crate::error;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use handoff_core::endpoint::Endpoint;
use handoff_core::ids::IntegrationCode;
use handoff_ports::{EndpointStore, EndpointWriteError, PortResult};
use std::collections::HashMap;

const SERVICE: &str = "dynamodb";
const SORT_KEY: &str = "ENDPOINT";

pub fn endpoint_pk(code: &IntegrationCode) -> String {
    format!("ENDPOINT#{code}")
}

fn key(code: &IntegrationCode) -> Item {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(endpoint_pk(code))),
        ("sk".to_string(), AttributeValue::S(SORT_KEY.into())),
    ])
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
        let request = match endpoint.revision {
            0 => request.condition_expression("attribute_not_exists(pk)"),
            revision => request
                .condition_expression("#revision = :expected")
                .expression_attribute_names("#revision", "revision")
                .expression_attribute_values(":expected", AttributeValue::N(revision.to_string())),
        };
        match request.send().await {
            Ok(_) => Ok(stored),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                Err(EndpointWriteError::RevisionConflict)
            }
            Err(e) => Err(error::sdk(SERVICE, "PutItem", e).into()),
        }
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
