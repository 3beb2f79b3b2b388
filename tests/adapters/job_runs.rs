//! The jobs' last runs (DynamoDB, on the exchanges table): the contract run on moto and on
//! the in-memory fake — each job keeps its latest run, and an older one never replaces it.

use super::*;
use handoff_aws::dynamo::DynamoJobRunLog;
use handoff_core::job_run::JobRun;
use handoff_ports::JobRunLog;

fn run(job: &str, started: i64, millis: i64, succeeded: bool) -> JobRun {
    JobRun {
        job: job.into(),
        started_at: at(started) + chrono::Duration::milliseconds(millis),
        duration_ms: 42,
        succeeded,
    }
}

async fn each_job_keeps_its_latest_run(log: &dyn JobRunLog) {
    assert_eq!(log.last("regular").await.expect("read"), None);
    log.record(&run("regular", 10, 0, true)).await.expect("record");
    log.record(&run("errorProcessing", 11, 0, false)).await.expect("record");
    // A later run replaces it, even one only milliseconds later.
    let later = run("regular", 10, 250, false);
    log.record(&later).await.expect("record");
    assert_eq!(log.last("regular").await.expect("read"), Some(later.clone()));
    // A run that started earlier but is written late does not.
    log.record(&run("regular", 9, 0, true)).await.expect("an older run is not an error");
    assert_eq!(log.last("regular").await.expect("read"), Some(later));
    assert_eq!(log.last("errorProcessing").await.expect("read"), Some(run("errorProcessing", 11, 0, false)));
}

mod job_run_contract_on_moto {
    #[tokio::test]
    async fn each_job_keeps_its_latest_run() {
        let log = super::DynamoJobRunLog::new(
            aws_sdk_dynamodb::Client::new(&super::sdk().await),
            super::exchanges_table().await,
        );
        super::each_job_keeps_its_latest_run(&log).await
    }
}

mod job_run_contract_in_memory {
    #[tokio::test]
    async fn each_job_keeps_its_latest_run() {
        super::each_job_keeps_its_latest_run(&handoff_ports::memory::MemoryJobRuns::default()).await
    }
}
