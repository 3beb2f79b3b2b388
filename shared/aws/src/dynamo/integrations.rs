//! [`IntegrationRepository`] on the integrations table (`infra/template.yaml`
//! `IntegrationsTable`).
//!
//! One item per version: `pk=INT#<code>`, `sk=`[`IntegrationVersion::sort_key`] (`V#0000000000`
//! for `null`, `V#0000000002` for 2); attributes `code`, `version` (number or NULL),
//! `enabled` (bool), `document` (the definition as JSON text: no nesting limit, exact
//! numbers), `revision` (number), `createdAt`, `updatedAt` (RFC 3339). Creation is a put on
//! condition `attribute_not_exists(pk)`; replacement a put on condition
//! `revision = :expected` (optimistic concurrency).

use super::exchanges::Item;
use crate::error;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use handoff_core::ids::{IntegrationCode, IntegrationVersion};
use handoff_ports::{IntegrationRepository, IntegrationWriteError, PortResult, StoredIntegration};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const SERVICE: &str = "dynamodb";

pub fn integration_pk(code: &IntegrationCode) -> String {
    format!("INT#{code}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IntegrationItem {
    pk: String,
    sk: String,
    code: IntegrationCode,
    version: IntegrationVersion,
    enabled: bool,
    /// JSON text.
    document: String,
    revision: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updated_by: Option<String>,
}

pub(crate) fn integration_to_item(integration: &StoredIntegration) -> PortResult<Item> {
    let document = serde_json::to_string(&integration.document)
        .map_err(|e| error::fault(SERVICE, format!("cannot encode definition: {e}")))?;
    let item = IntegrationItem {
        pk: integration_pk(&integration.code),
        sk: integration.version.sort_key(),
        code: integration.code.clone(),
        version: integration.version,
        enabled: integration.enabled,
        document,
        revision: integration.revision,
        created_at: integration.created_at,
        updated_at: integration.updated_at,
        created_by: integration.created_by.clone(),
        updated_by: integration.updated_by.clone(),
    };
    serde_dynamo::to_item(item).map_err(|e| error::fault(SERVICE, format!("cannot encode integration: {e}")))
}

pub(crate) fn integration_from_item(item: Item) -> PortResult<StoredIntegration> {
    let item: IntegrationItem = serde_dynamo::from_item(item)
        .map_err(|e| error::fault(SERVICE, format!("stored integration is malformed: {e}")))?;
    let document = serde_json::from_str(&item.document)
        .map_err(|e| error::fault(SERVICE, format!("stored definition is malformed: {e}")))?;
    Ok(StoredIntegration {
        code: item.code,
        version: item.version,
        enabled: item.enabled,
        document,
        revision: item.revision,
        created_at: item.created_at,
        updated_at: item.updated_at,
        created_by: item.created_by,
        updated_by: item.updated_by,
    })
}

fn key(code: &IntegrationCode, version: IntegrationVersion) -> Item {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(integration_pk(code))),
        ("sk".to_string(), AttributeValue::S(version.sort_key())),
    ])
}

/// Integration versions in the integrations table.
#[derive(Debug, Clone)]
pub struct DynamoIntegrationRepository {
    client: Client,
    table: String,
}

impl DynamoIntegrationRepository {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }
}

#[async_trait]
impl IntegrationRepository for DynamoIntegrationRepository {
    async fn create(&self, integration: &StoredIntegration) -> Result<(), IntegrationWriteError> {
        let item = integration_to_item(integration)?;
        let request = self.client.put_item().table_name(&self.table).set_item(Some(item));
        let result = super::at_revision(request, None).send().await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                Err(IntegrationWriteError::AlreadyExists {
                    code: integration.code.clone(),
                    version: integration.version,
                })
            }
            Err(e) => Err(error::sdk(SERVICE, "PutItem", e).into()),
        }
    }

    async fn versions(&self, code: &IntegrationCode) -> PortResult<Vec<StoredIntegration>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(integration_pk(code)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| error::sdk(SERVICE, "Query", e))?;
            for item in page.items.unwrap_or_default() {
                out.push(integration_from_item(item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn all(&self) -> PortResult<Vec<StoredIntegration>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                // The table also holds metadata mappings (`MAPPING#…`).
                .filter_expression("begins_with(pk, :prefix)")
                .expression_attribute_values(":prefix", AttributeValue::S("INT#".into()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| error::sdk(SERVICE, "Scan", e))?;
            for item in page.items.unwrap_or_default() {
                out.push(integration_from_item(item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn get(&self, code: &IntegrationCode, version: IntegrationVersion) -> PortResult<Option<StoredIntegration>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(code, version)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "GetItem", e))?;
        match out.item {
            Some(item) if !item.is_empty() => Ok(Some(integration_from_item(item)?)),
            _ => Ok(None),
        }
    }

    async fn replace(
        &self,
        integration: &StoredIntegration,
        expected_revision: u64,
    ) -> Result<(), IntegrationWriteError> {
        let item = integration_to_item(integration)?;
        let request = self.client.put_item().table_name(&self.table).set_item(Some(item));
        let result = super::at_revision(request, Some(expected_revision)).send().await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                Err(IntegrationWriteError::RevisionConflict)
            }
            Err(e) => Err(error::sdk(SERVICE, "PutItem", e).into()),
        }
    }

    async fn health(&self) -> PortResult<()> {
        super::table_health(&self.client, &self.table).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integration_item_round_trips() {
        let at = DateTime::parse_from_rfc3339("2026-03-04T05:06:07.123Z").map(|d| d.with_timezone(&Utc)).expect("time");
        for version in [IntegrationVersion::NULL, IntegrationVersion::number(12).expect("version")] {
            let stored = StoredIntegration {
                code: IntegrationCode::parse("PROVIDER_IMPORT").expect("code"),
                version,
                enabled: true,
                document: serde_json::json!({"code": "PROVIDER_IMPORT", "steps": [{"n": 1.25, "big": u64::MAX}]}),
                revision: 7,
                created_at: at,
                updated_at: at,
                created_by: Some("alice".into()),
                updated_by: None,
            };
            let item = integration_to_item(&stored).expect("encode");
            assert_eq!(item.get("pk"), Some(&AttributeValue::S("INT#PROVIDER_IMPORT".into())));
            assert_eq!(item.get("sk"), Some(&AttributeValue::S(version.sort_key())));
            assert_eq!(item.get("enabled"), Some(&AttributeValue::Bool(true)));
            assert_eq!(item.get("revision"), Some(&AttributeValue::N("7".into())));
            assert_eq!(integration_from_item(item).expect("decode"), stored);
        }
    }
}
