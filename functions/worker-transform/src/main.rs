//! Lambda function `handoff-worker-transform`: wiring only; the behaviour lives in `handoff-app`.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    handoff_runtime::lambda::run("handoff-worker-transform", handoff_runtime::compose::worker).await
}
