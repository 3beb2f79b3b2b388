//! Use cases shared by the entry points: starting an exchange (API, schedule, subflow),
//! accepting a callback, recovering an exchange (API, error-processing job).
pub mod callback;
pub mod invoke;
pub mod recover;
