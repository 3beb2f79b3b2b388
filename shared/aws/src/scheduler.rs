//! [`ScheduleManager`] on EventBridge Scheduler: one schedule per integration code, named
//! [`schedule_name`] in the configured group, targeting the trigger function with the input
//! `{"integrationCode": "<code>"}` ([`ScheduledTrigger`]).

use crate::error;
use async_trait::async_trait;
use aws_sdk_scheduler::types::{FlexibleTimeWindow, FlexibleTimeWindowMode, ScheduleState, Target};
use aws_sdk_scheduler::Client;
use handoff_core::definition::ScheduleSpec;
use handoff_core::ids::IntegrationCode;
use handoff_ports::{PortResult, ScheduleManager, ScheduledTrigger};
use sha2::{Digest, Sha256};

const SERVICE: &str = "scheduler";
/// Scheduler's limit on schedule names.
const MAX_NAME: usize = 64;

/// `handoff-<code>`; codes too long for Scheduler's 64 characters are shortened and made
/// unique with a hash suffix.
pub fn schedule_name(code: &IntegrationCode) -> String {
    let name = format!("handoff-{code}");
    if name.len() <= MAX_NAME {
        return name;
    }
    let hash = hex::encode(Sha256::digest(code.as_str().as_bytes()));
    let keep = MAX_NAME - "handoff-".len() - 1 - 8;
    // Codes are ASCII, so byte slicing is safe.
    format!("handoff-{}-{}", &code.as_str()[..keep], &hash[..8])
}

/// Schedules of integrations in one schedule group.
#[derive(Debug, Clone)]
pub struct EventBridgeScheduleManager {
    client: Client,
    group_name: String,
    target_function_arn: String,
    role_arn: String,
}

impl EventBridgeScheduleManager {
    pub fn new(client: Client, group_name: String, target_function_arn: String, role_arn: String) -> Self {
        Self { client, group_name, target_function_arn, role_arn }
    }

    fn parts(&self, code: &IntegrationCode) -> PortResult<(FlexibleTimeWindow, Target)> {
        let input = serde_json::to_string(&ScheduledTrigger { integration_code: code.clone() })
            .map_err(|e| error::fault(SERVICE, format!("cannot encode schedule input: {e}")))?;
        let window = FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
            .map_err(|e| error::fault(SERVICE, format!("cannot build schedule: {e}")))?;
        let target = Target::builder()
            .arn(&self.target_function_arn)
            .role_arn(&self.role_arn)
            .input(input)
            .build()
            .map_err(|e| error::fault(SERVICE, format!("cannot build schedule target: {e}")))?;
        Ok((window, target))
    }
}

fn timezone(spec: &ScheduleSpec) -> &str {
    if spec.timezone.is_empty() {
        "UTC"
    } else {
        &spec.timezone
    }
}

#[async_trait]
impl ScheduleManager for EventBridgeScheduleManager {
    async fn upsert(&self, code: &IntegrationCode, schedule: &ScheduleSpec) -> PortResult<()> {
        let name = schedule_name(code);
        let (window, target) = self.parts(code)?;
        let created = self
            .client
            .create_schedule()
            .group_name(&self.group_name)
            .name(&name)
            .schedule_expression(&schedule.expression)
            .schedule_expression_timezone(timezone(schedule))
            .flexible_time_window(window.clone())
            .target(target.clone())
            .state(ScheduleState::Enabled)
            .description(format!("Starts exchanges of integration {code}"))
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conflict_exception()) => self
                .client
                .update_schedule()
                .group_name(&self.group_name)
                .name(&name)
                .schedule_expression(&schedule.expression)
                .schedule_expression_timezone(timezone(schedule))
                .flexible_time_window(window)
                .target(target)
                .state(ScheduleState::Enabled)
                .description(format!("Starts exchanges of integration {code}"))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| error::sdk(SERVICE, "UpdateSchedule", e)),
            Err(e) => Err(error::sdk(SERVICE, "CreateSchedule", e)),
        }
    }

    async fn remove(&self, code: &IntegrationCode) -> PortResult<()> {
        match self.client.delete_schedule().group_name(&self.group_name).name(schedule_name(code)).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_resource_not_found_exception()) => Ok(()),
            Err(e) => Err(error::sdk(SERVICE, "DeleteSchedule", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_scheduler_limits() {
        assert_eq!(schedule_name(&IntegrationCode::parse("PROVIDER_IMPORT").expect("code")), "handoff-PROVIDER_IMPORT");
        let long_a = IntegrationCode::parse(&"A".repeat(64)).expect("code");
        let long_b = IntegrationCode::parse(&format!("{}B", "A".repeat(63))).expect("code");
        let (a, b) = (schedule_name(&long_a), schedule_name(&long_b));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}
