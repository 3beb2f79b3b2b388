//! [`MappingRepository`] on the integrations table: one item per mapping,
//! `pk=MAPPING#<name>`, `sk=MAPPING`; attributes `name`, `document` (the mapping as JSON
//! text), `revision` (number), `updatedAt` (RFC 3339). A first write is a put on condition
//! `attribute_not_exists(pk)`, a replacement a put on `revision = :expected`.
//!
//! Integration items use `pk=INT#…`; the integrations scan filters on that prefix, so the
//! two kinds share the table without seeing each other.

use super::exchanges::Item;
use crate::error;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use handoff_core::mapping::MappingName;
use handoff_ports::PortResult;
use handoff_ports::{MappingRepository, MappingWriteError, StoredMapping};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const SERVICE: &str = "dynamodb";
const SORT_KEY: &str = "MAPPING";

pub fn mapping_pk(name: &MappingName) -> String {
    format!("MAPPING#{name}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MappingItem {
    pk: String,
    sk: String,
    name: String,
    /// JSON text.
    document: String,
    revision: u64,
    updated_at: DateTime<Utc>,
}

fn to_item(mapping: &StoredMapping) -> PortResult<Item> {
    let document = serde_json::to_string(&mapping.document)
        .map_err(|e| error::fault(SERVICE, format!("cannot encode mapping: {e}")))?;
    let item = MappingItem {
        pk: mapping_pk(&mapping.name),
        sk: SORT_KEY.into(),
        name: mapping.name.to_string(),
        document,
        revision: mapping.revision,
        updated_at: mapping.updated_at,
    };
    serde_dynamo::to_item(item).map_err(|e| error::fault(SERVICE, format!("cannot encode mapping: {e}")))
}

fn from_item(item: Item) -> PortResult<StoredMapping> {
    let item: MappingItem = serde_dynamo::from_item(item)
        .map_err(|e| error::fault(SERVICE, format!("stored mapping is malformed: {e}")))?;
    let name = MappingName::parse(&item.name)
        .map_err(|e| error::fault(SERVICE, format!("stored mapping is malformed: {e}")))?;
    let document = serde_json::from_str(&item.document)
        .map_err(|e| error::fault(SERVICE, format!("stored mapping {name} is malformed: {e}")))?;
    Ok(StoredMapping { name, document, revision: item.revision, updated_at: item.updated_at })
}

/// Metadata mappings in the integrations table.
#[derive(Debug, Clone)]
pub struct DynamoMappingRepository {
    client: Client,
    table: String,
}

impl DynamoMappingRepository {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }
}

#[async_trait]
impl MappingRepository for DynamoMappingRepository {
    async fn get(&self, name: &MappingName) -> PortResult<Option<StoredMapping>> {
        let key = HashMap::from([
            ("pk".to_string(), AttributeValue::S(mapping_pk(name))),
            ("sk".to_string(), AttributeValue::S(SORT_KEY.into())),
        ]);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "GetItem", e))?;
        match out.item {
            Some(item) if !item.is_empty() => Ok(Some(from_item(item)?)),
            _ => Ok(None),
        }
    }

    async fn put(&self, mapping: &StoredMapping, expected_revision: Option<u64>) -> Result<(), MappingWriteError> {
        let request = self.client.put_item().table_name(&self.table).set_item(Some(to_item(mapping)?));
        match super::at_revision(request, expected_revision).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                Err(MappingWriteError::RevisionConflict)
            }
            Err(e) => Err(error::sdk(SERVICE, "PutItem", e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_item_round_trips() {
        let stored = StoredMapping {
            name: MappingName::parse("provider-codes").expect("name"),
            document: serde_json::json!({"fields": {"a": "b"}, "values": {"s": {"A": 1.5}}}),
            revision: 3,
            updated_at: DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
                .map(|d| d.with_timezone(&Utc))
                .expect("time"),
        };
        let item = to_item(&stored).expect("encode");
        assert_eq!(item.get("pk"), Some(&AttributeValue::S("MAPPING#provider-codes".into())));
        assert_eq!(from_item(item).expect("decode"), stored);
    }
}
