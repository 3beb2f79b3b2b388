//! AWS adapters of Handoff and the composition root that wires them into functions.
pub mod compose;
