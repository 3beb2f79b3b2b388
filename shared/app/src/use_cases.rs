//! Use cases shared by the entry points: starting an exchange (API, schedule, subflow),
//! accepting a callback, recovering an exchange (API, error-processing job).
pub mod callback;
pub mod dead_letter;
pub mod handoff;
pub mod invoke;
pub mod recover;
pub mod sweeps;
pub mod timer;
