//! What the API accepts, as the OpenAPI document describes it: query parameters (whose
//! names are also the only ones a listing accepts, see [`super::only_parameters`]) and
//! request bodies. Bodies are read field by field with [`handoff_core::reader`], so that
//! every refusal names its field; these types say the same for clients and fuzzers.
#![allow(dead_code)] // Fields are read by the schema derive, not by code.

use chrono::{DateTime, Utc};
use handoff_core::endpoint::{OnSystemFailure, QueueStatus};
use handoff_core::error_list::ErrorState;
use handoff_core::exchange::ExchangeStatus;
use handoff_core::ids::{IntegrationCode, IntegrationVersion};
use handoff_core::retry::ErrorClassification;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// A page of a listing.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Paging {
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The previous page's `nextCursor`.
    cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub(super) struct ExchangeQuery {
    integration_code: Option<IntegrationCode>,
    status: Option<ExchangeStatus>,
    /// The sub-exchanges of this parent.
    parent_exchange_id: Option<String>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub(super) struct ErrorQuery {
    classification: Option<ErrorClassification>,
    integration_code: Option<IntegrationCode>,
    /// Only errors at or after this time (RFC 3339).
    since: Option<DateTime<Utc>>,
    state: Option<ErrorState>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `POST /exchanges`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ExchangeRequest {
    integration_code: IntegrationCode,
    /// The version to run; the highest enabled one when absent.
    integration_version: Option<IntegrationVersion>,
    /// The exchange's parameters (`$.parameters` in expressions).
    parameters: Option<Map<String, Value>>,
    /// The input: a string is taken as text, anything else as JSON.
    payload: Option<Value>,
    /// Answer when the exchange is final, waiting at most this long (capped at 25 s).
    #[schema(minimum = 0, maximum = 3600)]
    wait_seconds: Option<u64>,
}

/// An integration definition (SPEC §3): `code`, `version`, `enabled`, `steps`, and
/// optionally `schedule`, `parameters`, `notify`, `heartbeatUrl`, …
#[derive(Deserialize, ToSchema)]
pub(super) struct IntegrationDefinition(Map<String, Value>);

/// `PATCH /integrations/{code}/versions/{version}`: what to change on one version.
#[derive(Deserialize, ToSchema)]
pub(super) struct IntegrationPatch(Map<String, Value>);

/// `PATCH /integrations/{code}`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EndpointPatch {
    on_system_failure: Option<OnSystemFailure>,
    queue_status: Option<QueueStatus>,
}

/// `POST /integrations/{code}/enable|disable` (the body is optional).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EndpointCommand {
    /// Shown in the endpoint and its log.
    #[schema(max_length = 1024)]
    reason: Option<String>,
}

/// `POST /integrations/{code}/resume` (the body is optional).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ResumeCommand {
    #[schema(max_length = 1024)]
    reason: Option<String>,
    /// Also recover the exchanges whose failures halted it.
    recover_failed: Option<bool>,
}

/// `POST /exchanges/{id}/recover` (the body is optional).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RecoverRequest {
    /// Recover onto this version instead of the exchange's own.
    integration_version: Option<IntegrationVersion>,
}

/// `POST /errors/{errorId}/resolve`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResolveRequest {
    /// What was fixed.
    #[schema(min_length = 1, max_length = 1000)]
    note: String,
}

/// An event: `data`, with an optional `key` (events of one key keep their order) and `type`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Event {
    #[schema(max_length = 256)]
    key: Option<String>,
    #[serde(rename = "type")]
    #[schema(max_length = 256)]
    event_type: Option<String>,
    data: Value,
}

/// `POST /integrations/{code}/events`: one event, an array of them, or `{"events": [...]}`.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(super) enum Events {
    One(Event),
    Many(Vec<Event>),
    Wrapped { events: Vec<Event> },
}

/// The callback an external system sends to a waiting step.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Notification {
    status: NotificationStatus,
    /// Required when `status` is `failure`.
    reason: Option<String>,
    data: Option<Value>,
    files: Option<Vec<NotificationFile>>,
    recovery_links: Option<Vec<RecoveryLink>>,
    messages: Option<Vec<Value>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum NotificationStatus {
    Success,
    Failure,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NotificationFile {
    /// A plain file name.
    name: String,
    /// An absolute URL the gateway downloads it from.
    url: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RecoveryLink {
    url: String,
    /// `POST` when absent.
    method: Option<String>,
}

/// A metadata mapping document (see `handoff_core::mapping`).
#[derive(Deserialize, ToSchema)]
pub(super) struct MappingDocument(Map<String, Value>);

// ------------------------------------------------------------------ path parameters
// Their patterns are what the handlers accept, so that a client (or a fuzzer) that follows
// the document is not refused for the form of an id.

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct CodePath {
    /// An integration code.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    code: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct VersionPath {
    /// An integration code.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    code: String,
    /// A positive integer, or `null`.
    #[param(pattern = "^(null|[1-9][0-9]{0,8})$")]
    version: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct ExchangePath {
    /// An exchange id.
    id: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[serde(rename_all = "camelCase")]
pub(super) struct StepPath {
    /// An exchange id.
    id: String,
    /// A step id (`0003`).
    #[param(pattern = "^[0-9]{1,9}$")]
    step_id: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[serde(rename_all = "camelCase")]
pub(super) struct ErrorPath {
    /// `<exchangeId>.<step sequence>`, or `<exchangeId>.exchange`.
    #[param(pattern = "^[A-Za-z0-9_-]{1,128}[.](exchange|[0-9]{1,6})$")]
    error_id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct UnroutedPath {
    /// An unrouted message id.
    id: uuid::Uuid,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct DataFileSetPath {
    /// A data file set id (a step's payload names it).
    #[param(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    id: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct DataFilePath {
    /// A data file set id (a step's payload names it).
    #[param(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    id: String,
    /// A plain file name.
    #[param(pattern = "^[^./\\x00-\\x1f\\x7f][^/\\x00-\\x1f\\x7f]{0,127}$")]
    name: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct MappingPath {
    /// A mapping name.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    name: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct TokenPath {
    /// The callback token the waiting step sent out.
    token: String,
}
