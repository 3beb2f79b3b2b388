//! The functions of the stack, built once and invoked like Lambda would: one JSON event,
//! one JSON response, bounded by the function's configured timeout.

use crate::template::FunctionSpec;
use async_trait::async_trait;
use handoff_app::entry::function::{FunctionHandler, InvocationError};
use handoff_runtime::compose::{AwsEnvironment, ComposeError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Builds a function handler from its binary name and environment. The default goes
/// through `handoff_runtime::compose::build_function` (the same wiring as the Lambda
/// binaries); tests substitute fakes.
#[async_trait]
pub trait FunctionFactory: Send + Sync {
    async fn build(
        &self,
        binary: &str,
        vars: &HashMap<String, String>,
        aws: &AwsEnvironment,
    ) -> Result<Arc<dyn FunctionHandler>, ComposeError>;
}

/// The production factory: `handoff_runtime::compose::build_function`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ComposeFactory;

#[async_trait]
impl FunctionFactory for ComposeFactory {
    async fn build(
        &self,
        binary: &str,
        vars: &HashMap<String, String>,
        aws: &AwsEnvironment,
    ) -> Result<Arc<dyn FunctionHandler>, ComposeError> {
        handoff_runtime::compose::build_function(binary, vars, aws).await
    }
}

/// Why an invocation produced no response.
#[derive(Debug, thiserror::Error)]
pub enum InvokeFailure {
    /// The handler reported a failed invocation (Lambda: function error).
    #[error("function error: {0}")]
    Error(#[from] InvocationError),
    /// The handler ran longer than the function's timeout (Lambda: `Task timed out`).
    #[error("task timed out after {0:?}")]
    Timeout(Duration),
}

/// A function of the stack, ready to be invoked.
pub struct Function {
    pub spec: FunctionSpec,
    /// The environment the handler was built with.
    pub vars: HashMap<String, String>,
    handler: Arc<dyn FunctionHandler>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl Function {
    pub fn new(spec: FunctionSpec, vars: HashMap<String, String>, handler: Arc<dyn FunctionHandler>) -> Self {
        Self { spec, vars, handler }
    }

    /// Invokes the handler under the function's timeout.
    pub async fn invoke(&self, event: Value) -> Result<Value, InvokeFailure> {
        self.invoke_within(event, self.spec.timeout).await
    }

    /// Invokes the handler with at most `limit` (and never more than the function's own
    /// timeout).
    pub async fn invoke_within(&self, event: Value, limit: Duration) -> Result<Value, InvokeFailure> {
        let limit = limit.min(self.spec.timeout);
        match tokio::time::timeout(limit, self.handler.invoke(event)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(InvokeFailure::Timeout(limit)),
        }
    }
}
