//! Composition root: wires the AWS adapters (`handoff-aws`) into the application's
//! functions (`handoff-app`). The Lambda `main.rs` files and the local emulator both build
//! their functions here, so they run the same wiring.
pub mod compose;
pub mod error_tracker;
pub mod lambda;
pub mod metrics;
