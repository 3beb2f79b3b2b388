//! Lambda function `handoff-worker-deliver-file-upload`: wiring only; the behaviour lives in `handoff-app`.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    handoff_runtime::lambda::run("handoff-worker-deliver-file-upload", handoff_runtime::compose::worker).await
}
