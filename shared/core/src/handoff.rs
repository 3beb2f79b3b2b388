//! What travels between sub-steps: the handoff message, the durable timers that stand in
//! for messages due later than a queue can delay them (and the outbox entries that make a
//! send survive a crash), and the single-use callback tokens a waiting step hands out.

use crate::exchange::{Exchange, Payload};
use crate::ids::{ExchangeId, IntegrationCode, IntegrationVersion, StepId};
use crate::plan::{PlannedSubStep, SubStep};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a durable timer does when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum TimerKind {
    /// A waiting step got no callback in time.
    #[serde(rename_all = "camelCase")]
    StepTimeout { step_id: StepId },
    /// The exchange ran past the integration's `slaSeconds`.
    Sla,
    /// A handoff to send when due: a retry later than SQS can delay a message, or a
    /// callback's handoff kept until it is on its way (an outbox entry).
    #[serde(rename_all = "camelCase")]
    Handoff { message: Box<HandoffMessage> },
    /// The parent of a sub-exchange timed out; so does the sub-exchange.
    #[serde(rename_all = "camelCase")]
    ParentTimedOut { parent: ExchangeId },
    /// The finished exchange has been kept as long as the deployment keeps finished
    /// exchanges (`ExchangeRetentionDays`): it is deleted, with everything stored under it,
    /// unless it was recovered meanwhile.
    Retention,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timer {
    pub exchange_id: ExchangeId,
    pub recovery: u32,
    pub due: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: TimerKind,
}

impl Timer {
    /// Identifies the timer within its exchange (a re-armed timer replaces the old one).
    pub fn name(&self) -> String {
        match &self.kind {
            TimerKind::StepTimeout { step_id } => format!("timeout#{step_id}"),
            TimerKind::Sla => "sla".into(),
            TimerKind::Handoff { message } => format!("handoff#{}#{}", message.step_id, message.attempt),
            TimerKind::ParentTimedOut { .. } => "parent-timed-out".into(),
            TimerKind::Retention => "retention".into(),
        }
    }
}

/// The outbox entry of `message`: stored with the state change that decides to send it, due
/// `delay` later, taken back once the message is sent — so a crash in between loses nothing.
pub fn outbox_entry(message: &HandoffMessage, now: DateTime<Utc>, delay: std::time::Duration) -> Timer {
    Timer {
        exchange_id: message.exchange_id.clone(),
        recovery: message.recovery,
        due: now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::seconds(60)),
        kind: TimerKind::Handoff { message: Box::new(message.clone()) },
    }
}

/// A single-use callback token. Only its hash is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackToken {
    pub hash: String,
    pub exchange_id: ExchangeId,
    pub integration_code: IntegrationCode,
    pub integration_version: IntegrationVersion,
    /// The waiting step the callback completes.
    pub step_id: StepId,
    pub sub_step: SubStep,
    pub recovery: u32,
    #[serde(default)]
    pub parameters: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::exchange::ParentLink>,
}

/// The message that hands an exchange from one sub-step to the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffMessage {
    pub exchange_id: ExchangeId,
    pub integration_code: IntegrationCode,
    pub integration_version: IntegrationVersion,
    pub step_id: StepId,
    pub sub_step: SubStep,
    pub attempt: u32,
    /// The sub-step's input (the previous output), so a handoff needs no read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Payload>,
    #[serde(default)]
    pub parameters: Value,
    /// Not to run before this time (delays longer than SQS's 15 minutes hop until due).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// The exchange's recovery generation this handoff belongs to.
    #[serde(default)]
    pub recovery: u32,
    /// For a sub-exchange: the parent step that counts it when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::exchange::ParentLink>,
    /// Who asked for this attempt to run now (a manual retry: the caller's `sub`), logged on
    /// the step with the attempt. Never carried on to later handoffs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// A failed secondary destination of a Completed exchange, run again: it runs on the
    /// Completed exchange, and nothing follows it (the exchange ran on long ago).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reexecution: bool,
}

/// Everything the control queue carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QueueMessage {
    /// A durable timer fired (distinguished by its `timer` field).
    Timer {
        timer: Timer,
    },
    Handoff(HandoffMessage),
}

impl CallbackToken {
    /// The stored form of a token handed out: only its SHA-256 (hex) is kept, so the table
    /// never holds a usable credential.
    pub fn hash_of(token: &str) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(token.as_bytes()))
    }
}

impl HandoffMessage {
    /// The message that starts `exchange`: its first sub-step, on the invocation's payload.
    pub fn start(exchange: &Exchange, first: &PlannedSubStep, input: Option<Payload>) -> Self {
        Self::at_step(exchange, StepId::from_sequence(first.sequence), first.sub_step, 1, input)
    }

    /// Attempt `attempt` of step `step_id` of `exchange` as it stands (its version, its
    /// recovery generation, its parameters and parent).
    pub fn at_step(
        exchange: &Exchange,
        step_id: StepId,
        sub_step: SubStep,
        attempt: u32,
        input: Option<Payload>,
    ) -> Self {
        Self {
            exchange_id: exchange.exchange_id.clone(),
            integration_code: exchange.integration_code.clone(),
            integration_version: exchange.integration_version,
            step_id,
            sub_step,
            attempt,
            input,
            parameters: exchange.parameters.clone(),
            not_before: None,
            recovery: exchange.recoveries,
            parent: exchange.parent.clone(),
            requested_by: None,
            reexecution: false,
        }
    }

    /// The handoff from this sub-step to the planned sub-step `next`, on `input`.
    pub fn next(&self, next: &PlannedSubStep, input: Option<Payload>) -> Self {
        Self {
            step_id: StepId::from_sequence(next.sequence),
            sub_step: next.sub_step,
            attempt: 1,
            input,
            not_before: None,
            requested_by: None,
            ..self.clone()
        }
    }

    /// Attempt `attempt` of this same sub-step, not to run before `due`.
    /// What this handoff requires of its exchange: running — or, re-executing a secondary
    /// destination, Completed.
    pub fn exchange_requirement(&self) -> crate::commit::ExchangeChange {
        if self.reexecution {
            crate::commit::ExchangeChange::RequireIn(vec![crate::exchange::ExchangeStatus::Completed])
        } else {
            crate::commit::ExchangeChange::RequireNotFinal
        }
    }

    /// Whether this handoff may still do its work on an exchange in `status`.
    pub fn runs_in(&self, status: crate::exchange::ExchangeStatus) -> bool {
        if self.reexecution {
            status == crate::exchange::ExchangeStatus::Completed
        } else {
            !status.is_final()
        }
    }

    pub fn retry(&self, attempt: u32, due: DateTime<Utc>) -> Self {
        Self { attempt, not_before: Some(due), requested_by: None, ..self.clone() }
    }

    /// The handoff of an accepted callback to the step waiting for it, on the notification.
    pub fn callback(token: &CallbackToken, notification: Payload) -> Self {
        Self {
            exchange_id: token.exchange_id.clone(),
            integration_code: token.integration_code.clone(),
            integration_version: token.integration_version,
            step_id: token.step_id,
            sub_step: token.sub_step,
            attempt: 1,
            input: Some(notification),
            parameters: token.parameters.clone(),
            not_before: None,
            recovery: token.recovery,
            parent: token.parent.clone(),
            requested_by: None,
            reexecution: false,
        }
    }
}

/// The SLA timer of `exchange` (at its current generation) started at `now`, if it has one.
pub fn sla_timer(exchange: &Exchange, sla_seconds: Option<u64>, now: DateTime<Utc>) -> Option<Timer> {
    sla_seconds.map(|seconds| Timer {
        exchange_id: exchange.exchange_id.clone(),
        recovery: exchange.recoveries,
        due: now + chrono::Duration::seconds(seconds as i64),
        kind: TimerKind::Sla,
    })
}
