//! The figures the gateway reports, through the `metrics` facade: one function per figure,
//! so every name and label is written once. The recorder behind the facade (CloudWatch
//! embedded-metric-format lines in Lambda, and Prometheus text as well in the emulator) is
//! installed by `handoff-runtime`; without one (unit tests), recording does nothing.
//!
//! Labels stay few and bounded (integration codes, sub-step kinds, error codes, job
//! names): each distinct set is its own CloudWatch metric. The alarms of
//! `infra/template.yaml` read [`SYSTEM_FAILURES`] and [`JOB_RUNS_COMPLETED`].

use handoff_core::commit::{ExchangeChange, StepCommit};
use handoff_core::exchange::{ExchangeStatus, TriggerKind};
use handoff_core::ids::IntegrationCode;
use handoff_core::plan::{SubStep, WorkerFamily};
use handoff_core::retry::ErrorClassification;
use std::time::Duration;

pub const EXCHANGES_STARTED: &str = "ExchangesStarted";
pub const EXCHANGES_COMPLETED: &str = "ExchangesCompleted";
pub const EXCHANGES_FAILED: &str = "ExchangesFailed";
pub const EXCHANGES_TIMED_OUT: &str = "ExchangesTimedOut";
/// Failures recorded (an error entry written), by classification and code.
pub const FAILURES: &str = "Failures";
/// System failures alone, without labels: what the SystemErrors alarm sums.
pub const SYSTEM_FAILURES: &str = "SystemFailures";
pub const SUB_STEP_ATTEMPTS: &str = "SubStepAttempts";
pub const SUB_STEP_DURATION: &str = "SubStepDurationMs";
pub const CALLBACK_WAIT: &str = "CallbackWaitSeconds";
pub const DEAD_LETTERS: &str = "DeadLetters";
pub const JOB_RUNS: &str = "JobRuns";
/// Runs that completed, by job: what the job alarms expect at least once a period.
pub const JOB_RUNS_COMPLETED: &str = "JobRunsCompleted";
pub const JOB_DURATION: &str = "JobDurationMs";

fn trigger_name(trigger: Option<TriggerKind>) -> &'static str {
    trigger.map_or("unknown", TriggerKind::name)
}

/// A sub-step kind as its label: its name in plans and the API (`DeliverRest`).
fn sub_step_name(sub_step: SubStep) -> String {
    format!("{sub_step:?}")
}

/// An exchange was created and handed off.
pub fn exchange_started(code: &IntegrationCode, trigger: Option<TriggerKind>) {
    metrics::counter!(EXCHANGES_STARTED, "IntegrationCode" => code.to_string(), "Trigger" => trigger_name(trigger))
        .increment(1);
}

/// What an applied commit of an exchange of `code` tells: the failures it listed, and the
/// exchange's end if it ended it. (Ends are counted by integration only: the handoff that
/// ends an exchange does not carry its trigger.)
pub fn commit_applied(code: &IntegrationCode, commit: &StepCommit) {
    for error in &commit.errors {
        let classification = match error.classification {
            ErrorClassification::Business => "business",
            ErrorClassification::System => "system",
        };
        metrics::counter!(FAILURES, "Classification" => classification, "Code" => error.code.name()).increment(1);
        if error.classification == ErrorClassification::System {
            metrics::counter!(SYSTEM_FAILURES).increment(1);
        }
    }
    let ExchangeChange::SetStatus { to, .. } = &commit.exchange else { return };
    let name = match to {
        ExchangeStatus::Completed => EXCHANGES_COMPLETED,
        ExchangeStatus::Failed => EXCHANGES_FAILED,
        ExchangeStatus::TimedOut => EXCHANGES_TIMED_OUT,
        _ => return,
    };
    metrics::counter!(name, "IntegrationCode" => code.to_string()).increment(1);
}

/// One attempt of a sub-step ran for `took`.
pub fn attempt_ran(sub_step: SubStep, took: Duration) {
    let kind = sub_step_name(sub_step);
    metrics::counter!(SUB_STEP_ATTEMPTS, "SubStep" => kind.clone()).increment(1);
    metrics::histogram!(SUB_STEP_DURATION, "SubStep" => kind).record(took.as_secs_f64() * 1000.0);
}

/// A callback arrived `waited` after its wait was armed.
pub fn callback_arrived(waited: Duration) {
    metrics::histogram!(CALLBACK_WAIT).record(waited.as_secs_f64());
}

/// A handoff message of `family`'s queue reached its dead-letter queue.
pub fn dead_lettered(family: WorkerFamily) {
    metrics::counter!(DEAD_LETTERS, "Queue" => family.name()).increment(1);
}

/// A run of the scheduled job `job` ended after `took`.
pub fn job_ran(job: &'static str, took: Duration, completed: bool) {
    let outcome = if completed { "completed" } else { "failed" };
    metrics::counter!(JOB_RUNS, "Job" => job, "Outcome" => outcome).increment(1);
    if completed {
        metrics::counter!(JOB_RUNS_COMPLETED, "Job" => job).increment(1);
    }
    metrics::histogram!(JOB_DURATION, "Job" => job).record(took.as_secs_f64() * 1000.0);
}
