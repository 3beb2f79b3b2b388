//! Use cases, one module each: starting an exchange (API, schedule) and starting it again,
//! handling a handoff message, firing a timer, recording a dead letter, recovering and
//! retrying (API, error-processing job), accepting a callback, the jobs' sweeps, defining
//! integrations and holding their endpoints. Each takes a small struct of the ports it
//! uses, built from the [`crate::context::AppContext`] by its `of`.
pub mod callback;
pub mod dead_letter;
pub mod endpoints;
pub mod errors;
pub mod events;
pub mod handoff;
pub mod integrations;
pub mod invoke;
pub mod recover;
pub mod sweeps;
pub mod timer;
pub mod unrouted;
