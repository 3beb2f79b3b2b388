//! The pure domain core of Handoff: no AWS, no I/O.
pub mod expression;
pub mod ids;
