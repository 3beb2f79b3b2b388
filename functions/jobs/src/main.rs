//! Lambda function `handoff-jobs`: wiring only; the behaviour lives in `handoff-app`.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    handoff_runtime::lambda::run("handoff-jobs", handoff_runtime::compose::jobs).await
}
