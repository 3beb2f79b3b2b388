//! The `destinations` summary of an exchange view: one entry per destination of each
//! delivery step, so a failed secondary destination (which does not fail the exchange)
//! is visible at a glance, with its error, next to the exchange's `Completed`.

use handoff_core::exchange::{ExchangeStep, StepError, StepStatus};
use handoff_core::ids::StepId;
use serde::Serialize;

/// One destination of a delivery step, over the sub-steps that deliver to it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationView {
    pub integration_step: Option<String>,
    /// Its position in the step's destinations (0: the primary).
    pub destination: usize,
    /// `Failed`, `Done`, `Skipped`, or `Pending` (running, waiting or retrying).
    pub status: String,
    pub step_ids: Vec<StepId>,
    pub last_error: Option<StepError>,
}

/// Groups delivery sub-steps by (integration step, destination), in plan order.
pub(super) fn destinations_view(steps: &[ExchangeStep]) -> Vec<DestinationView> {
    let mut groups: Vec<(&Option<String>, usize, Vec<&ExchangeStep>)> = Vec::new();
    for step in steps {
        let Some(destination) = step.destination else { continue };
        match groups.iter_mut().find(|(name, d, _)| **name == step.integration_step && *d == destination) {
            Some((_, _, members)) => members.push(step),
            None => groups.push((&step.integration_step, destination, vec![step])),
        }
    }
    groups
        .into_iter()
        .map(|(name, destination, members)| DestinationView {
            integration_step: name.clone(),
            destination,
            status: group_status(&members).to_string(),
            step_ids: members.iter().map(|s| s.step_id).collect(),
            last_error: members.iter().rev().find_map(|s| s.last_error.clone()),
        })
        .collect()
}

/// Failed if any sub-step failed; Done when all are done; Skipped when the step did not
/// run; otherwise still Pending (running, waiting or retrying).
fn group_status(members: &[&ExchangeStep]) -> &'static str {
    if members.iter().any(|s| s.status == StepStatus::Failed) {
        "Failed"
    } else if members.iter().all(|s| s.status == StepStatus::Done) {
        "Done"
    } else if members.iter().all(|s| s.status == StepStatus::Skipped) {
        "Skipped"
    } else {
        "Pending"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(
        sequence: u32,
        sub_step: &str,
        destination: Option<usize>,
        status: &str,
        error: Option<&str>,
    ) -> ExchangeStep {
        let mut v = json!({
            "stepId": format!("{sequence:04}"), "sequence": sequence, "integrationStep": "send", "subStep": sub_step,
            "status": status, "attempts": 1, "maxAttempts": 3,
        });
        if let Some(d) = destination {
            v["destination"] = json!(d);
        }
        if let Some(e) = error {
            v["lastError"] = json!({"classification": "system", "message": e, "at": "2026-01-01T00:00:00Z"});
        }
        serde_json::from_value(v).expect("step JSON")
    }

    #[test]
    fn a_failed_secondary_shows_with_its_error() {
        let steps = [
            step(0, "ExchangeTriggered", None, "Done", None),
            step(1, "DeliverRest", Some(0), "Done", None),
            step(2, "CheckAgentHealth", Some(1), "Failed", Some("agent down")),
            step(3, "InvokeAgent", Some(1), "Skipped", None),
            step(4, "ReceiveAgentNotification", Some(1), "Skipped", None),
            step(5, "DeliverSftp", Some(2), "Initial", None),
        ];
        let view = serde_json::to_value(destinations_view(&steps)).expect("json");
        let list = view.as_array().expect("array");
        assert_eq!(list.len(), 3);
        assert_eq!(list[0]["status"], "Done");
        assert_eq!(list[1]["status"], "Failed");
        assert_eq!(list[1]["lastError"]["message"], "agent down");
        assert_eq!(list[1]["stepIds"].as_array().map(Vec::len), Some(3));
        assert_eq!(list[2]["status"], "Pending");
    }
}
