//! Application layer of Handoff, written against the ports of `handoff-ports` (the AWS
//! adapters implement them) and deciding nothing itself: the state machine in
//! `handoff_core::machine` does. Laid out by role, each depending only on the ones below it:
//!
//! * [`entry`] — the functions' entry points (HTTP routes, sub-step workers, DLQ handler,
//!   jobs, trigger): they decode an event, call a use case or the state machine, encode.
//! * [`use_cases`] — starting an exchange, recovering it.
//! * [`executors`] — what each sub-step does; they only produce outputs (the worker records them).
//! * [`effects`] — the one runner of the effects a decision names; [`telling`] — who is told
//!   of a write that applied (metrics, the error tracker, heartbeats, `notify` targets).
//! * support: [`context`] (the wired ports and settings), [`definitions`] and [`mappings`]
//!   (caches), [`payloads`], [`outbound`] (HTTP requests of sub-steps), [`jq_sandbox`] (where
//!   jq programs run), [`secrets`],
//!   [`sub_exchanges`] (reading a parent's sub-exchanges), [`ttl`].
pub mod context;
pub mod definitions;
pub mod effects;
pub mod entry;
pub mod executors;
pub mod jq_sandbox;
pub mod mappings;
pub mod metrics;
pub mod outbound;
pub mod payloads;
pub mod secrets;
pub mod sub_exchanges;
pub mod telling;
pub mod ttl;
pub mod use_cases;
