//! DynamoDB adapters: [`DynamoExchangeRepository`] (exchanges table, single-table design —
//! see [`exchanges`]), [`DynamoIntegrationRepository`] and [`DynamoMappingRepository`]
//! (integrations table).
pub mod exchanges;
pub mod integrations;
pub mod mappings;

pub use exchanges::DynamoExchangeRepository;
pub use integrations::DynamoIntegrationRepository;
pub use mappings::DynamoMappingRepository;
