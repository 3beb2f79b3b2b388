//! What the API answers, as types: each view is built from the domain's own types and
//! serialised as is, and the same types generate the OpenAPI document's schemas
//! ([`super::openapi`]), so the document cannot say one thing while the API sends another.

use super::destinations::DestinationView;
use crate::use_cases::integrations::ScheduleState;
use chrono::{DateTime, Utc};
use handoff_core::endpoint::{EndpointLogEntry, EndpointStatus, OnSystemFailure, QueueStatus, Retrying, SystemFailure};
use handoff_core::error_list::StoredError;
use handoff_core::exchange::{
    Exchange, ExchangeError, ExchangeStatus, ExchangeStep, LogLine, ParentLink, Payload, StepError, StepStatus,
    SubExchangeCounts, Trigger,
};
use handoff_core::ids::{DataFileSetId, ExchangeId, IntegrationCode, IntegrationVersion, StepId, UnroutedId};
use handoff_core::plan::SubStep;
use handoff_core::unrouted::UnroutedMessage;
use handoff_ports::{DataFileInfo, StoredIntegration, StoredMapping};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

// ------------------------------------------------------------------ errors

/// Every error answer. `error` is a stable code to branch on; `message` says what is
/// wrong in words; `field` names the request field or parameter at fault.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// A stable code: `InvalidRequest`, `NotFound`, `Unauthorized`, `Forbidden`, `InvalidState`, ….
    pub error: String,
    pub message: String,
    /// The request field (a JSON path) or parameter at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// On the gateway's own failures: the id of the log line that has the detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
    /// A refused request that was kept, to be replayed by an operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrouted_id: Option<UnroutedId>,
    /// The exchange a replay already started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange_id: Option<ExchangeId>,
    /// Why a kept request still cannot be routed (`NotFound`, `VersionDisabled`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

// ------------------------------------------------------------------ integrations

/// One stored version of an integration.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationView {
    pub code: IntegrationCode,
    pub version: IntegrationVersion,
    pub enabled: bool,
    /// Increases with every change of this version.
    pub revision: u64,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The definition document (SPEC §3).
    pub definition: Value,
}

impl From<&StoredIntegration> for IntegrationView {
    fn from(i: &StoredIntegration) -> Self {
        Self {
            code: i.code.clone(),
            version: i.version,
            enabled: i.enabled,
            revision: i.revision,
            created_by: i.created_by.clone(),
            updated_by: i.updated_by.clone(),
            created_at: i.created_at,
            updated_at: i.updated_at,
            definition: i.document.clone(),
        }
    }
}

/// A version as a definition or change left it, with its code's endpoint and schedule.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefinedView {
    #[serde(flatten)]
    pub integration: IntegrationView,
    pub endpoint: EndpointBrief,
    pub schedule: ScheduleStateView,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointBrief {
    pub status: EndpointStatus,
    pub since: DateTime<Utc>,
    pub changed_by: Option<String>,
}

/// Whether the code's schedule matches what the change asked for.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum ScheduleStateView {
    /// Armed, from the highest enabled version with a schedule.
    #[serde(rename_all = "camelCase")]
    Active { expression: String, timezone: String, follows_version: Option<IntegrationVersion> },
    /// No enabled version has a schedule.
    None,
    /// The change is stored, but the schedule could not be made to match it (see the log
    /// line `errorId`); the next change or the sweep job tries again.
    #[serde(rename_all = "camelCase")]
    OutOfSync { error_id: String },
}

impl ScheduleStateView {
    /// `OutOfSync` logs its cause under a fresh id (`what` says what failed).
    pub fn of(state: &ScheduleState, what: &str) -> Self {
        match state {
            ScheduleState::Active { spec, follows } => Self::Active {
                expression: spec.expression.clone(),
                timezone: spec.timezone.clone(),
                follows_version: *follows,
            },
            ScheduleState::None => Self::None,
            ScheduleState::OutOfSync(e) => Self::OutOfSync { error_id: super::logged_error_id(what, e) },
        }
    }
}

/// A version in the list, with its code's endpoint.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListedIntegration {
    #[serde(flatten)]
    pub integration: IntegrationView,
    pub endpoint: EndpointView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationList {
    /// By code, then newest version first.
    pub items: Vec<ListedIntegration>,
}

/// A code: its endpoint and every version, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationDetail {
    pub code: IntegrationCode,
    pub endpoint: EndpointView,
    pub versions: Vec<IntegrationView>,
}

// ------------------------------------------------------------------ endpoints

/// An integration code's endpoint as operators read it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub status: EndpointStatus,
    /// When the status last changed.
    pub since: DateTime<Utc>,
    pub reason: Option<String>,
    pub changed_by: Option<String>,
    pub queue_status: QueueStatus,
    pub on_system_failure: OnSystemFailure,
    /// While `FailedRetrying`: the retry that shows it.
    pub retrying: Option<Retrying>,
    /// The last system failure of one of its exchanges.
    pub last_failure: Option<SystemFailure>,
    /// The exchanges whose failures halted it.
    pub halted_by: Vec<ExchangeId>,
    pub schedule: EndpointSchedule,
    /// After a command: whether it changed anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// After `resume` with `recoverFailed`: each exchange that had halted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<Vec<RecoveredExchange>>,
}

/// The schedule of the version that runs, or why there is none.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EndpointSchedule {
    #[serde(rename_all = "camelCase")]
    Scheduled {
        expression: String,
        timezone: String,
        next_runs: Vec<DateTime<Utc>>,
        /// Set while the endpoint is held: its runs are skipped and logged.
        #[serde(skip_serializing_if = "Option::is_none")]
        runs: Option<String>,
    },
    /// `not scheduled`, and why.
    NotScheduled(String),
    /// A command's schedule change did not reach the scheduler (see `errorId`).
    #[serde(rename_all = "camelCase")]
    OutOfSync { state: String, error_id: String },
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveredExchange {
    pub exchange_id: ExchangeId,
    pub recovered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<StepId>,
    /// Why it was not recovered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointAnswer {
    pub code: IntegrationCode,
    pub endpoint: EndpointView,
}

/// The endpoint log, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointLogPage {
    pub code: IntegrationCode,
    pub items: Vec<EndpointLogEntry>,
    pub next_cursor: Option<String>,
}

// ------------------------------------------------------------------ events

/// What became of the events sent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsAccepted {
    pub accepted: usize,
    pub discarded: usize,
    pub event_ids: Vec<String>,
    /// Set when the endpoint discards events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An endpoint's event queue, oldest event first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventQueue {
    pub code: IntegrationCode,
    pub pending: u64,
    pub oldest_age_seconds: Option<i64>,
    pub discarded: u64,
    /// The exchange that holds the events it took.
    pub taken_by: Option<ExchangeId>,
    pub items: Vec<EventView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub event_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    pub data: Value,
    pub received_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taken_by: Option<ExchangeId>,
}

// ------------------------------------------------------------------ exchanges

/// An exchange as lists and its detail show it: its stored fields, and what an operator
/// asks first — whether it is `final`, whether it is `recoverable`, and how long it took.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeSummary {
    pub exchange_id: ExchangeId,
    pub integration_code: IntegrationCode,
    pub integration_version: IntegrationVersion,
    pub status: ExchangeStatus,
    /// The status's one-letter code.
    pub status_code: String,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub recoverable: bool,
    pub parameters: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// From creation to its end, once final (for a Failed or TimedOut exchange, to when it
    /// became so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ExchangeError>,
    pub recoveries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Payload>,
    /// What started it, and who.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
}

impl From<&Exchange> for ExchangeSummary {
    fn from(e: &Exchange) -> Self {
        Self {
            exchange_id: e.exchange_id.clone(),
            integration_code: e.integration_code.clone(),
            integration_version: e.integration_version,
            status: e.status,
            status_code: e.status.code().to_string(),
            is_final: e.status.is_final(),
            recoverable: e.status.is_recoverable(),
            parameters: e.parameters.clone(),
            created_at: e.created_at,
            updated_at: e.updated_at,
            completed_at: e.completed_at,
            duration_ms: e
                .status
                .is_final()
                .then(|| duration_ms(Some(e.created_at), e.completed_at.or(Some(e.updated_at))))
                .flatten(),
            error: e.error.clone(),
            recoveries: e.recoveries,
            parent: e.parent.clone(),
            result: e.result.clone(),
            trigger: e.trigger.clone(),
        }
    }
}

/// Milliseconds from `from` to `to`, when both are known.
fn duration_ms(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Option<i64> {
    Some((to? - from?).num_milliseconds().max(0))
}

/// An exchange with its steps.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeView {
    #[serde(flatten)]
    pub summary: ExchangeSummary,
    /// In plan order.
    pub steps: Vec<StepView>,
    /// One per destination of each delivery step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destinations: Option<Vec<DestinationView>>,
    /// A parent's sub-exchanges, over all its subflow steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_exchanges: Option<CountsView>,
    /// Held at its endpoint: where, since when and why (it keeps its place).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldView {
    pub step_id: StepId,
    pub sub_step: SubStep,
    pub since: DateTime<Utc>,
    pub reason: String,
}

/// Sub-exchange counts, with how many still run.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct CountsView {
    pub total: u32,
    pub completed: u32,
    pub failed: u32,
    pub running: u32,
}

impl From<&SubExchangeCounts> for CountsView {
    fn from(c: &SubExchangeCounts) -> Self {
        Self { total: c.total, completed: c.completed, failed: c.failed, running: c.running() }
    }
}

/// One sub-step of an exchange's plan.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub step_id: StepId,
    pub sequence: u32,
    pub integration_step: Option<String>,
    pub sub_step: SubStep,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<usize>,
    pub status: StepStatus,
    pub status_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
    pub attempts: u32,
    pub max_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<StepError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<DateTime<Utc>>,
    /// When its first attempt began (kept through retries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// From its first attempt's start to its end (for a failed step, its last failure):
    /// retries and their waits included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_exchanges: Option<CountsView>,
}

impl From<&ExchangeStep> for StepView {
    fn from(s: &ExchangeStep) -> Self {
        Self {
            step_id: s.step_id,
            sequence: s.sequence,
            integration_step: s.integration_step.clone(),
            sub_step: s.sub_step,
            destination: s.destination,
            status: s.status,
            status_code: s.status.code().to_string(),
            payload: s.payload.clone(),
            attempts: s.attempts,
            max_attempts: s.max_attempts,
            last_error: s.last_error.clone(),
            next_retry_at: s.next_retry_at,
            started_at: s.started_at,
            completed_at: s.completed_at,
            // A failed step ended when it failed for the last time.
            duration_ms: duration_ms(
                s.started_at,
                s.completed_at.or(s.last_error.as_ref().filter(|_| s.status == StepStatus::Failed).map(|e| e.at)),
            ),
            sub_exchanges: s.sub_exchanges.as_ref().map(CountsView::from),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExchangePage {
    /// Newest first.
    pub items: Vec<ExchangeSummary>,
    pub next_cursor: Option<String>,
}

/// `POST /exchanges`: the exchange started (202), or with `waitSeconds` the exchange as it
/// stands when final (200) or when the wait ended (202).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum StartedExchange {
    Summary(Box<ExchangeSummary>),
    Detail(Box<ExchangeView>),
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeLogs {
    pub exchange_id: ExchangeId,
    /// In time order. Never payload contents.
    pub items: Vec<LogLine>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryAccepted {
    pub exchange_id: ExchangeId,
    pub status: ExchangeStatus,
    pub status_code: String,
    /// The step it resumes at.
    pub resumed_at: StepId,
    pub integration_version: IntegrationVersion,
    pub recoveries: u32,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryAccepted {
    pub exchange_id: ExchangeId,
    pub step_id: StepId,
    /// The attempt the retry runs as.
    pub attempt: u32,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignoffAccepted {
    pub exchange_id: ExchangeId,
    pub step_id: StepId,
    pub signed_off_by: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallbackAccepted {
    pub exchange_id: ExchangeId,
    pub step_id: StepId,
}

// ------------------------------------------------------------------ errors list

/// An error-list entry, with the catalogue's action for its code.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEntry {
    #[serde(flatten)]
    pub entry: StoredError,
    /// What fixes it (the catalogue entry of its `code`).
    pub action: String,
}

impl From<&StoredError> for ErrorEntry {
    fn from(entry: &StoredError) -> Self {
        Self { action: entry.record.code.action().to_string(), entry: entry.clone() }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorPage {
    pub items: Vec<ErrorEntry>,
    pub next_cursor: Option<String>,
}

// ------------------------------------------------------------------ unrouted

/// A request kept because it could not be routed.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnroutedView {
    #[serde(flatten)]
    pub message: UnroutedMessage,
    pub replayed: bool,
}

impl From<&UnroutedMessage> for UnroutedView {
    fn from(message: &UnroutedMessage) -> Self {
        Self { replayed: message.replay.is_some(), message: message.clone() }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnroutedPage {
    pub items: Vec<UnroutedView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayAccepted {
    #[serde(flatten)]
    pub exchange: ExchangeSummary,
    pub unrouted_id: UnroutedId,
}

// ------------------------------------------------------------------ data files, mappings, health

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataFileSetView {
    pub data_file_set_id: DataFileSetId,
    pub files: Vec<DataFileInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MappingView {
    pub name: String,
    pub revision: u64,
    pub updated_at: DateTime<Utc>,
    /// The mapping document.
    pub mapping: Value,
}

impl From<&StoredMapping> for MappingView {
    fn from(m: &StoredMapping) -> Self {
        Self {
            name: m.name.as_str().to_string(),
            revision: m.revision,
            updated_at: m.updated_at,
            mapping: m.document.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`: the function answers.
    pub status: String,
}

/// Each component the gateway depends on, and the scheduled jobs' last runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ComponentsHealth {
    /// `ok`, or `degraded` when a component is down.
    pub status: String,
    pub components: Components,
    /// The last run of each job that ran (`regular`, `errorProcessing`).
    pub jobs: Vec<handoff_core::job_run::JobRun>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Components {
    pub integrations: ComponentState,
    pub exchanges: ComponentState,
    pub queues: ComponentState,
    pub data_files: ComponentState,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentState {
    /// `ok` or `down`.
    pub status: String,
    /// When down: the log line with the cause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
}

/// Where the console signs its users in (`GET /console/config.json`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleConfig {
    /// The issuer's authorization endpoint; none: sign-in is not configured.
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub client_id: String,
    /// The scopes the console asks for.
    pub scope: String,
    /// The emulator's development issuer (it offers a read-only identity too).
    pub development_issuer: bool,
}
