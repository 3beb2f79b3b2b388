//! Lambda function `handoff-worker-invoke`: wiring only; the behaviour lives in `handoff-app`.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    handoff_runtime::lambda::run("handoff-worker-invoke", handoff_runtime::compose::worker).await
}
