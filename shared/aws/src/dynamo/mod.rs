//! DynamoDB adapters: [`DynamoExchangeRepository`] (exchanges table, single-table design —
//! see [`exchanges`]), [`DynamoIntegrationRepository`] and [`DynamoMappingRepository`]
//! (integrations table), [`DynamoEndpointStore`], [`DynamoEventQueue`] and [`DynamoUnroutedStore`] (exchanges
//! table).
mod backoff;
pub mod endpoints;
pub mod events;
pub mod exchanges;
pub mod integrations;
pub mod job_runs;
pub mod mappings;
pub mod unrouted;

pub use endpoints::DynamoEndpointStore;
pub use events::DynamoEventQueue;
pub use exchanges::DynamoExchangeRepository;
pub use integrations::DynamoIntegrationRepository;
pub use job_runs::DynamoJobRunLog;
pub use mappings::DynamoMappingRepository;
pub use unrouted::DynamoUnroutedStore;

use crate::error;
use handoff_ports::PortResult;

/// A table answers: the health check every DynamoDB adapter reports.
pub(crate) async fn table_health(client: &aws_sdk_dynamodb::Client, table: &str) -> PortResult<()> {
    client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| error::sdk("dynamodb", "DescribeTable", e))
}

/// A put that applies only to the revision it was decided on: no item yet (`None`), or
/// the stored one still at `expected` (optimistic concurrency of definitions, mappings and
/// endpoints).
pub(crate) fn at_revision(
    request: aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder,
    expected: Option<u64>,
) -> aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder {
    match expected {
        None => request.condition_expression("attribute_not_exists(pk)"),
        Some(revision) => request
            .condition_expression("#revision = :expected")
            .expression_attribute_names("#revision", "revision")
            .expression_attribute_values(":expected", aws_sdk_dynamodb::types::AttributeValue::N(revision.to_string())),
    }
}

/// Puts `item` unless its key is taken: `Ok(false)` when an item with that key exists (a
/// first write that lost, a claim already held).
pub(crate) async fn put_if_absent(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    item: exchanges::Item,
) -> PortResult<bool> {
    let put = at_revision(client.put_item().table_name(table).set_item(Some(item)), None).send().await;
    match put {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(false),
        Err(e) => Err(error::sdk("dynamodb", "PutItem", e)),
    }
}

/// Every item one Query answers, following DynamoDB's pages (for a partition's items, which
/// are few: an exchange's steps, an endpoint's held handoffs).
pub(crate) async fn query_all(
    request: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
) -> PortResult<Vec<exchanges::Item>> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = request
            .clone()
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| error::sdk("dynamodb", "Query", e))?;
        items.extend(out.items.unwrap_or_default());
        match out.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok(items),
        }
    }
}

/// Sends `requests` in order, ≤ 25 per BatchWriteItem, retrying unprocessed ones with backoff.
pub(crate) async fn batch_write(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    requests: Vec<aws_sdk_dynamodb::types::WriteRequest>,
) -> PortResult<()> {
    for chunk in requests.chunks(exchanges::MAX_BATCH_WRITE) {
        let mut requests = chunk.to_vec();
        let mut backoff = backoff::Backoff::new();
        while !requests.is_empty() {
            let out = client
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .map_err(|e| error::sdk("dynamodb", "BatchWriteItem", e))?;
            requests = out.unprocessed_items.and_then(|mut m| m.remove(table)).unwrap_or_default();
            if requests.is_empty() {
                break;
            }
            if !backoff.wait().await {
                return Err(error::unavailable(
                    "dynamodb",
                    format!("BatchWriteItem: {} items still unprocessed after retries", requests.len()),
                ));
            }
        }
    }
    Ok(())
}
