//! Entry points of the functions: decode the event, call a use case or the state machine,
//! encode the answer.
pub mod api;
pub mod apigw;
pub mod dlq;
pub mod function;
pub mod jobs;
pub mod sqs;
pub mod trigger;
pub mod worker;
