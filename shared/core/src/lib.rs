//! The pure domain core of Handoff: definitions, version selection, the planner, and the
//! exchange/step state machines. No AWS, no I/O — every function here is deterministic.
pub mod amendment;
pub mod commit;
pub mod definition;
pub mod endpoint;
pub mod events;
pub mod exchange;
pub mod expression;
pub mod formats;
pub mod handoff;
pub mod heartbeat;
pub mod identity;
pub mod ids;
pub mod links;
pub mod machine;
pub mod mapping;
pub mod network;
pub mod notification;
pub mod placeholder;
pub mod plan;
pub mod reader;
pub mod recovery;
pub mod retry;
pub mod schedule;
pub mod unrouted;
pub mod version;
