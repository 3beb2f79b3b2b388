//! DynamoDB adapters: [`DynamoExchangeRepository`] (exchanges table, single-table design —
//! see [`exchanges`]) and [`DynamoIntegrationRepository`] (integrations table).
pub mod exchanges;
pub mod integrations;

pub use exchanges::DynamoExchangeRepository;
pub use integrations::DynamoIntegrationRepository;
