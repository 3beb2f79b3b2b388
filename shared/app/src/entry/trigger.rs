//! The trigger function: an EventBridge Scheduler schedule fired; start an exchange.

use crate::context::AppContext;
use crate::entry::function::{FunctionHandler, InvocationError};
use crate::use_cases::invoke::{invoke_exchange, InvokeError, InvokeRequest, Starting};
use async_trait::async_trait;
use handoff_core::exchange::Trigger;
use handoff_ports::ScheduledTrigger;
use serde_json::{json, Value};
use std::sync::Arc;

pub struct TriggerFunction {
    ctx: Arc<AppContext>,
}

impl TriggerFunction {
    pub fn new(ctx: Arc<AppContext>) -> Self {
        Self { ctx }
    }
}

#[async_trait]
impl FunctionHandler for TriggerFunction {
    async fn invoke(&self, event: Value) -> Result<Value, InvocationError> {
        let trigger: ScheduledTrigger = serde_json::from_value(event).map_err(|e| {
            InvocationError::new("InvalidEvent", format!("schedule input must be {{\"integrationCode\": ...}}: {e}"))
        })?;
        let request = InvokeRequest {
            integration_code: trigger.integration_code.clone(),
            integration_version: None,
            parameters: json!({}),
            payload: None,
            trigger: Trigger::schedule(),
            exchange_id: None,
        };
        match invoke_exchange(&Starting::of(&self.ctx), request).await {
            Ok(exchange) => {
                tracing::info!(exchangeId = %exchange.exchange_id, integrationCode = %exchange.integration_code, "scheduled exchange started");
                Ok(json!({"exchangeId": exchange.exchange_id}))
            }
            // A schedule of a code with nothing enabled, or of a held endpoint, has nothing
            // to run; not an error to retry.
            Err(
                e @ (InvokeError::NotFound { .. }
                | InvokeError::Disabled { .. }
                | InvokeError::EndpointHeld { .. }
                | InvokeError::Events { .. }),
            ) => {
                tracing::warn!(integrationCode = %trigger.integration_code, reason = %e, "scheduled run skipped");
                Ok(json!({"skipped": e.to_string()}))
            }
            Err(e) => Err(InvocationError::new("TriggerFailed", e.to_string())),
        }
    }
}
