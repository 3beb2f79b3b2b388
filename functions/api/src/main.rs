//! Lambda function `handoff-api`: wiring only; the behaviour lives in `handoff-app`.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    handoff_runtime::lambda::run("handoff-api", handoff_runtime::compose::api).await
}
