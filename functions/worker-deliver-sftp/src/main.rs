//! Lambda function `handoff-worker-deliver-sftp`: wiring only; the behaviour lives in `handoff-app`.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    handoff_runtime::lambda::run("handoff-worker-deliver-sftp", handoff_runtime::compose::sftp_worker).await
}
