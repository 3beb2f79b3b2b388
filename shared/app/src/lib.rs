//! Application layer of Handoff: the HTTP API, the sub-step workers, the trigger and the
//! DLQ handler, written against ports (traits) that the AWS adapters implement.
pub mod function;
