//! The Lambda entry point every `functions/*/main.rs` calls.

use crate::compose::{build_with, AwsEnvironment, Builder};
use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;

/// Runs the function named `binary`, built by `builder` (its kind's, from
/// [`crate::compose`]), under the Lambda runtime, configured from the environment.
pub async fn run(binary: &str, builder: Builder) -> Result<(), lambda_runtime::Error> {
    // Started as its own jq sandbox (`handoff_app::jq_sandbox`): serve that and exit.
    handoff_app::jq_sandbox::serve_if_requested();
    lambda_runtime::tracing::init_default_subscriber();
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let aws =
        AwsEnvironment { sdk, s3_force_path_style: false, clock: std::sync::Arc::new(handoff_ports::SystemClock) };
    let vars = std::env::vars().collect();
    let function = build_with(builder, binary, &vars, &aws).await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let function = function.clone();
        async move {
            function
                .invoke(event.payload)
                .await
                .map_err(|e| Diagnostic { error_type: e.error_type, error_message: e.message })
        }
    }))
    .await
}
