//! The jobs function: decodes which scheduled job to run, runs it
//! ([`crate::use_cases::sweeps`]) and answers what it did.

use crate::context::AppContext;
use crate::entry::function::{FunctionHandler, InvocationError};
use crate::use_cases::sweeps::Sweeps;
use async_trait::async_trait;
use handoff_core::ids::IntegrationCode;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JobInput {
    job: Job,
    /// Limit the error-processing job to one integration (operators re-driving one partner).
    #[serde(default)]
    integration_code: Option<IntegrationCode>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Job {
    Regular,
    ErrorProcessing,
}

pub struct JobsFunction {
    ctx: Arc<AppContext>,
    /// How often the error-processing job re-drives one exchange at most.
    auto_recovery_limit: u32,
}

impl JobsFunction {
    pub fn new(ctx: Arc<AppContext>, auto_recovery_limit: u32) -> Self {
        Self { ctx, auto_recovery_limit }
    }
}

#[async_trait]
impl FunctionHandler for JobsFunction {
    async fn invoke(&self, event: Value) -> Result<Value, InvocationError> {
        let input: JobInput = serde_json::from_value(event).map_err(|e| {
            InvocationError::new(
                "InvalidEvent",
                format!("expected {{\"job\": \"regular\" | \"errorProcessing\"}}: {e}"),
            )
        })?;
        let sweeps = Sweeps::of(&self.ctx, self.auto_recovery_limit);
        let outcome = match input.job {
            Job::Regular => {
                match (sweeps.sweep_timers().await, sweeps.start_unstarted().await, sweeps.release_stranded().await) {
                    (Ok(sent), Ok(started), Ok(released)) => {
                        Ok(json!({"timersSent": sent, "exchangesStarted": started, "heldReleased": released}))
                    }
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
                }
            }
            Job::ErrorProcessing => sweeps
                .redrive_failures(input.integration_code)
                .await
                .map(|done| json!({"recovered": done.recovered, "left": done.left})),
        };
        outcome.map_err(|e| InvocationError::new("JobFailed", e.to_string()))
    }
}
