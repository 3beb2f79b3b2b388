//! The planner: expands a definition into every exchange sub-step (SPEC §2 table), so
//! the whole plan is materialised — and visible — when the exchange is created.

use crate::definition::{DestinationTarget, IntegrationDefinition, ProcessKind, StepAction};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum SubStep {
    ExchangeTriggered,
    ConditionInvocation,
    InvokeExtract,
    ReceiveNotification,
    CollectData,
    CollectMessages,
    InvokeQuery,
    InvokeCustom,
    Transform,
    CheckAgentHealth,
    InvokeAgent,
    ReceiveAgentNotification,
    DeliverRest,
    /// The captured answer of a REST destination, delivered to its response address.
    DeliverResponse,
    DeliverSftp,
    DeliverFileUpload,
    InvokeActivity,
    InvokeProcess,
    CheckRecovery,
    CollectSubflowProperties,
    CreateSubExchanges,
    ControlSubflow,
    PostProcess,
    /// With `"signoff": "requester"`: the exchange waits (`W`) for the requester's sign-off
    /// (`POST /exchanges/{id}/signoff` hands off to the `ExchangeSignoff` after it).
    AwaitSignoff,
    ExchangeSignoff,
}

/// The worker function (and queue) that executes a sub-step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerFamily {
    /// Bookkeeping sub-steps without external calls.
    Control,
    Query,
    Transform,
    DeliverRest,
    /// Calls that start long-running work elsewhere (and call recovery links).
    Invoke,
    /// Downloads of what external systems offer (files, messages).
    Collect,
    DeliverSftp,
    DeliverFileUpload,
    /// Deliveries through an on-premise agent (health check and invocation).
    Agent,
    /// Creating the sub-exchanges of a subflow.
    Subflow,
}

impl WorkerFamily {
    pub const ALL: [WorkerFamily; 10] = [
        Self::Control,
        Self::Query,
        Self::Transform,
        Self::DeliverRest,
        Self::Invoke,
        Self::Collect,
        Self::DeliverSftp,
        Self::DeliverFileUpload,
        Self::Agent,
        Self::Subflow,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Query => "query",
            Self::Transform => "transform",
            Self::DeliverRest => "deliver-rest",
            Self::Invoke => "invoke",
            Self::Collect => "collect",
            Self::DeliverSftp => "deliver-sftp",
            Self::DeliverFileUpload => "deliver-file-upload",
            Self::Agent => "agent",
            Self::Subflow => "subflow",
        }
    }
}

impl SubStep {
    /// The worker function (and queue) that executes this sub-step.
    pub fn family(&self) -> WorkerFamily {
        match self {
            Self::ExchangeTriggered
            | Self::ConditionInvocation
            | Self::PostProcess
            | Self::AwaitSignoff
            | Self::ExchangeSignoff
            | Self::ReceiveNotification
            | Self::ReceiveAgentNotification
            | Self::CollectSubflowProperties
            | Self::ControlSubflow => WorkerFamily::Control,
            Self::CreateSubExchanges => WorkerFamily::Subflow,
            // A custom data collection is a jq program or one HTTP call: the query worker's kind of work.
            Self::InvokeQuery | Self::InvokeCustom => WorkerFamily::Query,
            Self::DeliverSftp => WorkerFamily::DeliverSftp,
            Self::DeliverFileUpload => WorkerFamily::DeliverFileUpload,
            Self::CheckAgentHealth | Self::InvokeAgent => WorkerFamily::Agent,
            Self::Transform => WorkerFamily::Transform,
            Self::DeliverRest | Self::DeliverResponse => WorkerFamily::DeliverRest,
            Self::InvokeExtract | Self::InvokeProcess | Self::InvokeActivity | Self::CheckRecovery => {
                WorkerFamily::Invoke
            }
            Self::CollectData | Self::CollectMessages => WorkerFamily::Collect,
        }
    }

    /// Sub-steps that fetch the data an exchange works on (queries, extracts and their
    /// downloads): where a re-collection starts again.
    pub fn collects_data(&self) -> bool {
        matches!(
            self,
            Self::InvokeQuery | Self::InvokeCustom | Self::InvokeExtract | Self::CollectData | Self::CollectMessages
        )
    }

    /// Sub-steps that send data out of the gateway (deliveries, invokes, agents): a held
    /// endpoint stops its exchanges before them.
    pub fn sends_data_out(&self) -> bool {
        matches!(
            self,
            Self::DeliverRest
                | Self::DeliverResponse
                | Self::DeliverSftp
                | Self::DeliverFileUpload
                | Self::InvokeAgent
                | Self::InvokeActivity
                | Self::InvokeProcess
        )
    }

    /// Sub-steps whose effect is outside our system: they claim their attempt before acting,
    /// so a duplicate message never repeats the call.
    pub fn has_external_effect(&self) -> bool {
        !matches!(
            self,
            Self::ExchangeTriggered
                | Self::ConditionInvocation
                | Self::ReceiveNotification
                | Self::ReceiveAgentNotification
                | Self::Transform
                | Self::PostProcess
                | Self::AwaitSignoff
                | Self::ExchangeSignoff
                | Self::CollectSubflowProperties
                | Self::ControlSubflow
        )
    }
}

impl std::fmt::Display for SubStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// One sub-step of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedSubStep {
    pub sequence: u32,
    /// Index into `definition.steps`; `None` for `ExchangeTriggered` and `ExchangeSignoff`.
    pub step_index: Option<usize>,
    /// Name of the integration step; `None` for `ExchangeTriggered` and `ExchangeSignoff`.
    pub integration_step: Option<String>,
    pub sub_step: SubStep,
    /// For delivery sub-steps: which destination of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<usize>,
}

pub fn plan(definition: &IntegrationDefinition) -> Vec<PlannedSubStep> {
    let mut planned = Vec::new();
    let mut push = |step_index: Option<usize>, sub_step: SubStep, destination: Option<usize>| {
        planned.push(PlannedSubStep {
            sequence: planned.len() as u32,
            step_index,
            integration_step: step_index.map(|i| definition.steps[i].name.clone()),
            sub_step,
            destination,
        });
    };
    push(None, SubStep::ExchangeTriggered, None);
    for (i, step) in definition.steps.iter().enumerate() {
        let at = Some(i);
        if step.condition.is_some() {
            push(at, SubStep::ConditionInvocation, None);
        }
        match &step.action {
            StepAction::Extract { download_messages, .. } => {
                push(at, SubStep::InvokeExtract, None);
                push(at, SubStep::ReceiveNotification, None);
                push(at, SubStep::CollectData, None);
                if *download_messages {
                    push(at, SubStep::CollectMessages, None);
                }
            }
            StepAction::Query { .. } => push(at, SubStep::InvokeQuery, None),
            StepAction::Custom { .. } => push(at, SubStep::InvokeCustom, None),
            StepAction::Transformation { .. } => push(at, SubStep::Transform, None),
            StepAction::Delivery { destinations } => {
                // The main destination runs first: its outcome decides the step.
                let mut order: Vec<usize> = (0..destinations.len()).collect();
                order.sort_by_key(|&d| !destinations[d].main);
                for d in order {
                    match destinations[d].target {
                        DestinationTarget::Rest { .. } => {
                            push(at, SubStep::DeliverRest, Some(d));
                            if destinations[d].response.as_ref().is_some_and(|r| r.deliver_to.is_some()) {
                                push(at, SubStep::DeliverResponse, Some(d));
                            }
                        }
                        DestinationTarget::Sftp { .. } => push(at, SubStep::DeliverSftp, Some(d)),
                        DestinationTarget::FileUpload { .. } => push(at, SubStep::DeliverFileUpload, Some(d)),
                        DestinationTarget::Agent { .. } => {
                            push(at, SubStep::CheckAgentHealth, Some(d));
                            push(at, SubStep::InvokeAgent, Some(d));
                            push(at, SubStep::ReceiveAgentNotification, Some(d));
                        }
                    }
                }
            }
            StepAction::InvokeProcess { kind, expect_notification, auto_recovery, download_messages, .. } => {
                push(
                    at,
                    match kind {
                        ProcessKind::Activity => SubStep::InvokeActivity,
                        ProcessKind::Process => SubStep::InvokeProcess,
                    },
                    None,
                );
                if *expect_notification {
                    push(at, SubStep::ReceiveNotification, None);
                    push(at, SubStep::CollectData, None);
                }
                if *auto_recovery {
                    push(at, SubStep::CheckRecovery, None);
                }
                if *download_messages {
                    push(at, SubStep::CollectMessages, None);
                }
            }
            StepAction::Subflow { .. } => {
                push(at, SubStep::CollectSubflowProperties, None);
                push(at, SubStep::CreateSubExchanges, None);
                push(at, SubStep::ControlSubflow, None);
            }
        }
        if step.post_process.is_some() {
            push(at, SubStep::PostProcess, None);
        }
    }
    if matches!(definition.signoff, crate::definition::Signoff::Requester { .. }) {
        push(None, SubStep::AwaitSignoff, None);
    }
    push(None, SubStep::ExchangeSignoff, None);
    planned
}

/// The first sequence after the sub-steps of the integration step at `step_index`
/// (where a false condition jumps to).
pub fn first_after_step(plan: &[PlannedSubStep], step_index: usize) -> u32 {
    plan.iter()
        .find(|p| p.step_index.is_none_or(|i| i > step_index) && p.sequence > 0)
        .map(|p| p.sequence)
        .unwrap_or(plan.len() as u32 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::parse_definition;
    use serde_json::json;

    fn subs(doc: serde_json::Value) -> Vec<(Option<String>, SubStep)> {
        plan(&parse_definition(&doc).unwrap()).into_iter().map(|p| (p.integration_step, p.sub_step)).collect()
    }

    fn req() -> serde_json::Value {
        json!({"url": "http://h.example/x"})
    }

    #[test]
    fn plans_every_step_type() {
        use SubStep::*;
        let doc = json!({"code": "ALL", "steps": [
            {"name": "q", "type": "dataCollection", "kind": "query", "request": req(), "condition": "true"},
            {"name": "e", "type": "dataCollection", "kind": "extract", "request": req(), "downloadMessages": true},
            {"name": "c", "type": "dataCollection", "kind": "custom", "function": {"jq": "."}},
            {"name": "t", "type": "transformation", "function": {"jq": "."}, "postProcess": "."},
            {"name": "d", "type": "delivery", "destinations": [
                {"kind": "sftp", "host": "h", "path": "/p", "credentials": {"secretRef": "s"}},
                {"kind": "rest", "main": true, "request": req()},
                {"kind": "fileUpload", "request": req()},
                {"kind": "agent", "healthUrl": "http://a.example/health", "request": req()}]},
            {"name": "a", "type": "invokeProcess", "kind": "activity", "request": req()},
            {"name": "p", "type": "invokeProcess", "kind": "process", "request": req(),
             "expectNotification": true, "autoRecovery": true, "downloadMessages": true},
            {"name": "s", "type": "subflow", "integrationCode": "CHILD", "function": {"jq": "[.]"}}
        ]});
        let got: Vec<SubStep> = subs(doc).into_iter().map(|(_, s)| s).collect();
        assert_eq!(
            got,
            vec![
                ExchangeTriggered,
                ConditionInvocation,
                InvokeQuery,
                InvokeExtract,
                ReceiveNotification,
                CollectData,
                CollectMessages,
                InvokeCustom,
                Transform,
                PostProcess,
                DeliverRest,
                DeliverSftp,
                DeliverFileUpload,
                CheckAgentHealth,
                InvokeAgent,
                ReceiveAgentNotification,
                InvokeActivity,
                InvokeProcess,
                ReceiveNotification,
                CollectData,
                CheckRecovery,
                CollectMessages,
                CollectSubflowProperties,
                CreateSubExchanges,
                ControlSubflow,
                ExchangeSignoff,
            ]
        );
    }

    #[test]
    fn a_response_address_and_a_requester_signoff_add_their_sub_steps() {
        use SubStep::*;
        let doc = json!({"code": "X", "signoff": "requester", "steps": [
            {"name": "send", "type": "delivery", "destinations": [{"kind": "rest", "request": req(),
             "response": {"capture": true, "deliverTo": {"kind": "rest", "request": req()}}}]}]});
        let got = subs(doc);
        assert_eq!(
            got.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
            [ExchangeTriggered, DeliverRest, DeliverResponse, AwaitSignoff, ExchangeSignoff]
        );
        let d = parse_definition(&json!({"code": "X", "steps": [
            {"name": "send", "type": "delivery", "destinations": [{"kind": "rest", "request": req(),
             "response": {"capture": true, "deliverTo": {"kind": "rest", "request": req()}}}]}]}))
        .expect("valid");
        let p = plan(&d);
        assert_eq!(
            (p[2].destination, p[2].sub_step.family()),
            (Some(0), WorkerFamily::DeliverRest),
            "the destination's own"
        );
    }

    #[test]
    fn sequences_are_dense_and_named() {
        let d = parse_definition(&json!({"code": "X", "steps": [
            {"name": "q", "type": "dataCollection", "kind": "query", "request": req()},
            {"name": "t", "type": "transformation", "condition": "true", "function": {"jq": "."}}]}))
        .unwrap();
        let p = plan(&d);
        assert!(p.iter().enumerate().all(|(i, s)| s.sequence == i as u32));
        assert_eq!(p[0].integration_step, None);
        assert_eq!(p[1].integration_step.as_deref(), Some("q"));
        assert_eq!(first_after_step(&p, 0), 2);
        assert_eq!(first_after_step(&p, 1), 4, "a false condition on the last step jumps to signoff");
        assert_eq!(p[4].sub_step, SubStep::ExchangeSignoff);
    }
}
