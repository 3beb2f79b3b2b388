//! Lambda function `handoff-trigger`: wiring only; the behaviour lives in `handoff-app`.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    handoff_runtime::lambda::run("handoff-trigger", handoff_runtime::compose::trigger).await
}
