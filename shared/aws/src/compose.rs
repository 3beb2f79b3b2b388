//! Composition root: builds a function (by its binary name from `infra/template.yaml`)
//! from its environment variables and an AWS SDK configuration. Lambda `main.rs` files
//! and the local emulator both go through here, so they run the same wiring.

use handoff_app::function::FunctionHandler;
use std::collections::HashMap;
use std::sync::Arc;

/// Where the AWS services are. In Lambda: the default chain. In the emulator: moto.
#[derive(Clone, Debug)]
pub struct AwsEnvironment {
    pub sdk: aws_config::SdkConfig,
    /// moto serves buckets by path, not by virtual host.
    pub s3_force_path_style: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("unknown function binary '{0}'")]
    UnknownBinary(String),
    #[error("environment variable {name} is missing or invalid: {problem}")]
    Environment { name: String, problem: String },
}

/// Builds the function named by `binary` (e.g. `handoff-api`).
pub async fn build_function(
    binary: &str,
    vars: &HashMap<String, String>,
    aws: &AwsEnvironment,
) -> Result<Arc<dyn FunctionHandler>, ComposeError> {
    let _ = (vars, aws);
    Err(ComposeError::UnknownBinary(binary.to_string()))
}
