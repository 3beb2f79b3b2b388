//! AWS adapters of Handoff: the ports of `handoff-ports` over DynamoDB, SQS, S3,
//! EventBridge Scheduler, Secrets Manager and SNS.
//!
//! * [`DynamoIntegrationRepository`] — integration versions (DynamoDB)
//! * [`DynamoExchangeRepository`] — exchanges, steps and logs (DynamoDB single table)
//! * [`SqsHandoffQueue`] — hand-off messages (SQS, one queue per worker family)
//! * [`S3DataFileStore`] — data file sets (S3, streamed, multipart)
//! * [`EventBridgeScheduleManager`] — integration schedules (EventBridge Scheduler)
//! * [`SecretsManagerStore`] — delivery credentials (Secrets Manager)
//! * [`SnsTopicPublisher`] — notices to `notify` topics (SNS)
pub mod dynamo;
mod error;
pub mod s3;
pub mod scheduler;
pub mod secrets;
pub mod sns;
pub mod sqs;

pub use dynamo::{DynamoExchangeRepository, DynamoIntegrationRepository};
pub use s3::S3DataFileStore;
pub use scheduler::EventBridgeScheduleManager;
pub use secrets::SecretsManagerStore;
pub use sns::SnsTopicPublisher;
pub use sqs::SqsHandoffQueue;
