//! The jobs function: decodes which scheduled job to run, runs it
//! ([`crate::use_cases::sweeps`]) between its heartbeat pings ([`crate::telling::ping`]) and
//! answers what it did.

use crate::context::AppContext;
use crate::entry::function::{FunctionHandler, InvocationError};
use crate::use_cases::sweeps::Sweeps;
use async_trait::async_trait;
use handoff_core::heartbeat::{HeartbeatUrl, Ping};
use handoff_core::ids::IntegrationCode;
use handoff_core::job_run::JobRun;
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

/// Where each job reports its runs (healthchecks.io protocol); none: not monitored.
#[derive(Debug, Clone, Default)]
pub struct JobHeartbeats {
    pub regular: Option<HeartbeatUrl>,
    pub error_processing: Option<HeartbeatUrl>,
}

pub struct JobsFunction {
    ctx: Arc<AppContext>,
    /// How often the regular job runs (the deployment's RegularJobEveryMinutes).
    regular_every: std::time::Duration,
    /// How long one run sweeps before it leaves the rest to the next (well inside the
    /// function's timeout, so that a backlog never times a run out with nothing recorded).
    budget: std::time::Duration,
    heartbeats: JobHeartbeats,
}

/// Half the template's function timeout (120 s).
pub const DEFAULT_JOB_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);

impl JobsFunction {
    pub fn new(ctx: Arc<AppContext>) -> Self {
        let regular_every = std::time::Duration::from_secs(60);
        Self { ctx, regular_every, budget: DEFAULT_JOB_BUDGET, heartbeats: JobHeartbeats::default() }
    }

    /// The regular job runs every `every`: its sweeps look two periods ahead.
    pub fn running_every(self, every: std::time::Duration) -> Self {
        Self { regular_every: every, ..self }
    }

    /// Each run sweeps for `budget` at most ([`Sweeps::within`]).
    pub fn within(self, budget: std::time::Duration) -> Self {
        Self { budget, ..self }
    }

    pub fn with_heartbeats(self, heartbeats: JobHeartbeats) -> Self {
        Self { heartbeats, ..self }
    }

    async fn ping(&self, heartbeat: Option<&HeartbeatUrl>, ping: Ping) {
        if let Some(url) = heartbeat {
            crate::telling::ping(&self.ctx.http, url, &ping).await;
        }
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
        let sweeps = Sweeps::of(&self.ctx, self.regular_every).within(self.budget);
        let heartbeat = match input.job {
            Job::Regular => self.heartbeats.regular.as_ref(),
            Job::ErrorProcessing => self.heartbeats.error_processing.as_ref(),
        };
        self.ping(heartbeat, Ping::Start).await;
        let started = std::time::Instant::now();
        let started_at = self.ctx.ports.clock.now();
        let outcome = match input.job {
            Job::Regular => sweeps.regular().await.map(|(timers, unstarted, stranded)| {
                let complete = timers.complete && unstarted.complete && stranded.complete;
                if !complete {
                    tracing::warn!(budget = ?self.budget, "the regular job's budget ran out; the next run sweeps the rest");
                }
                json!({
                    "timersSent": timers.handled,
                    "exchangesStarted": unstarted.handled,
                    "heldReleased": stranded.handled,
                    "complete": complete,
                })
            }),
            // Resolutions first: an exchange they recover is not re-driven a second time.
            Job::ErrorProcessing => match sweeps.reprocess_resolved(input.integration_code.clone()).await {
                Err(e) => Err(e),
                Ok(reprocessed) => sweeps.redrive_failures(input.integration_code).await.map(|done| {
                    let rerun: Vec<String> = reprocessed.rerun.iter().map(ToString::to_string).collect();
                    json!({
                        "reprocessed": rerun,
                        "resolutionsRecorded": reprocessed.recorded,
                        "recovered": done.recovered,
                        "left": done.left,
                        "complete": done.complete,
                    })
                }),
            },
        };
        let job = match input.job {
            Job::Regular => "regular",
            Job::ErrorProcessing => "errorProcessing",
        };
        crate::metrics::job_ran(job, started.elapsed(), outcome.is_ok());
        let run = JobRun {
            job: job.to_string(),
            started_at,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            succeeded: outcome.is_ok(),
        };
        // What the health view shows; the job's own outcome does not depend on it.
        if let Err(e) = self.ctx.ports.job_runs.record(&run).await {
            tracing::warn!(job, error = %e, "the job's run could not be recorded");
        }
        match outcome {
            Ok(done) => {
                self.ping(heartbeat, Ping::Success).await;
                Ok(done)
            }
            Err(e) => {
                self.ping(heartbeat, Ping::failed(&e.to_string())).await;
                Err(InvocationError::new("JobFailed", e.to_string()))
            }
        }
    }
}
