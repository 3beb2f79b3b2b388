//! [`JobRunLog`] on the exchanges table: one item per job, `pk=JOB#<job>`, `sk=LAST`,
//! outside every index; attributes `job`, `startedAt` (RFC 3339), `startedAtMs` (its epoch
//! milliseconds, which the condition compares), `durationMs`, `succeeded`. A run is put on
//! condition `attribute_not_exists(pk) OR startedAtMs <= :started`, so a late writer of an
//! older run never hides a newer one.

use super::exchanges::Item;
use crate::error;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use handoff_core::job_run::JobRun;
use handoff_ports::{JobRunLog, PortResult};
use std::collections::HashMap;

const SERVICE: &str = "dynamodb";
const SORT_KEY: &str = "LAST";

fn key(job: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(format!("JOB#{job}"))),
        ("sk".to_string(), AttributeValue::S(SORT_KEY.into())),
    ])
}

fn to_item(run: &JobRun) -> PortResult<Item> {
    let mut item: Item =
        serde_dynamo::to_item(run).map_err(|e| error::fault(SERVICE, format!("cannot encode job run: {e}")))?;
    item.extend(key(&run.job));
    item.insert("startedAtMs".into(), AttributeValue::N(run.started_at.timestamp_millis().to_string()));
    Ok(item)
}

fn from_item(mut item: Item) -> PortResult<JobRun> {
    for attribute in ["pk", "sk", "startedAtMs"] {
        item.remove(attribute);
    }
    serde_dynamo::from_item(item).map_err(|e| error::fault(SERVICE, format!("stored job run is malformed: {e}")))
}

/// The jobs' last runs in the exchanges table.
#[derive(Debug, Clone)]
pub struct DynamoJobRunLog {
    client: Client,
    table: String,
}

impl DynamoJobRunLog {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }
}

#[async_trait]
impl JobRunLog for DynamoJobRunLog {
    async fn record(&self, run: &JobRun) -> PortResult<()> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(run)?))
            .condition_expression("attribute_not_exists(pk) OR startedAtMs <= :started")
            .expression_attribute_values(":started", AttributeValue::N(run.started_at.timestamp_millis().to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // A newer run is recorded already: it stays.
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(error::sdk(SERVICE, "PutItem", e)),
        }
    }

    async fn last(&self, job: &str) -> PortResult<Option<JobRun>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(job)))
            .send()
            .await
            .map_err(|e| error::sdk(SERVICE, "GetItem", e))?;
        match out.item {
            Some(item) if !item.is_empty() => Ok(Some(from_item(item)?)),
            _ => Ok(None),
        }
    }
}
