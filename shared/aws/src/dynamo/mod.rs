//! DynamoDB adapters: [`DynamoExchangeRepository`] (exchanges table, single-table design —
//! see [`exchanges`]), [`DynamoIntegrationRepository`] and [`DynamoMappingRepository`]
//! (integrations table), [`DynamoEndpointStore`] (exchanges table).
mod backoff;
pub mod endpoints;
pub mod exchanges;
pub mod integrations;
pub mod mappings;

pub use endpoints::DynamoEndpointStore;
pub use exchanges::DynamoExchangeRepository;
pub use integrations::DynamoIntegrationRepository;
pub use mappings::DynamoMappingRepository;

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
