//! Use cases shared by the entry points: starting an exchange (API, schedule, subflow),
//! recovering one (API, error-processing job).
pub mod invoke;
pub mod recover;
