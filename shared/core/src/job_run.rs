//! The scheduled jobs' runs as the health view shows them: when each job last ran, how
//! long it took and whether it succeeded — what an operator checks before the monitor
//! (the jobs' heartbeat pings) says the same. Its failure text stays in the log: it may
//! name tables or hosts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The jobs, by the name their schedule's input gives them.
pub const JOBS: [&str; 2] = ["regular", "errorProcessing"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRun {
    /// `regular` or `errorProcessing`.
    pub job: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub succeeded: bool,
}
