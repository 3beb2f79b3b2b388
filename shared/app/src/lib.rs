//! Application layer of Handoff: the HTTP API, the sub-step workers, the trigger and the
//! DLQ handler, written against the ports of `handoff-ports` that the AWS adapters implement.
pub mod api;
pub mod apigw;
pub mod context;
pub mod definitions;
pub mod dlq;
pub mod effects;
pub mod executors;
pub mod function;
pub mod invoke;
pub mod jobs;
pub mod mappings;
pub mod outbound;
pub mod payloads;
pub mod recover;
pub mod secrets;
pub mod sqs;
pub mod subflow;
pub mod trigger;
pub mod ttl;
pub mod worker;
