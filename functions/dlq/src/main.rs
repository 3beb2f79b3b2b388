//! Lambda function `handoff-dlq`: wiring only; the behaviour lives in `handoff-app`.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    handoff_runtime::lambda::run("handoff-dlq", handoff_runtime::compose::dlq).await
}
