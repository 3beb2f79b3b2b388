//! Integration definitions (SPEC §2a): parsed from JSON and validated as a whole, every
//! error naming its field path. The JSON document stays the stored form; this is the
//! checked, typed view the planner and executors work from.

use crate::expression::Expression;
use crate::formats::{parse_input, parse_output, InputSpec, OutputSpec};
use crate::heartbeat::HeartbeatUrl;
use crate::ids::{IntegrationCode, IntegrationVersion};
use crate::mapping::MappingName;
use crate::notice::{parse_notify, Notify};
use crate::placeholder;
use crate::reader::{describe, FieldError, FieldResult, ObjectReader};
use crate::recovery::ResumeFrom;
use crate::retry::{Jitter, RetryPolicy};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct IntegrationDefinition {
    pub code: IntegrationCode,
    pub version: IntegrationVersion,
    pub enabled: bool,
    pub sla_seconds: Option<u64>,
    pub schedule: Option<ScheduleSpec>,
    /// Event-based: each exchange runs on events taken from the endpoint's queue.
    pub events: Option<EventsSpec>,
    /// Who signs an exchange off after its last step.
    pub signoff: Signoff,
    /// `"errorProcessing": {"from": "failedStep" | "collection"}`: where the error job
    /// re-processes an exchange whose error was resolved.
    pub reprocess_from: ResumeFrom,
    /// `"heartbeatUrl"`: a scheduled integration's check (healthchecks.io protocol), pinged
    /// when a scheduled run starts and when its exchange ends. Overrides the deployment's
    /// `IntegrationHeartbeatUrlPattern`.
    pub heartbeat_url: Option<HeartbeatUrl>,
    /// `"notify"`: who is told when an exchange fails for good, times out, or the endpoint
    /// halts ([`crate::notice`]).
    pub notify: Vec<Notify>,
    pub steps: Vec<IntegrationStep>,
}

/// `"signoff"`: an exchange completes after its last step (`auto`, the default), or waits
/// (`W`) for `POST /exchanges/{id}/signoff` by the requester (`requester`), at most
/// `signoffTimeoutSeconds` when given (then it fails with reason `Timeout`, recoverably).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signoff {
    #[default]
    Auto,
    Requester {
        timeout_seconds: Option<u64>,
    },
}

/// The longest `signoffTimeoutSeconds` (31 days).
pub const MAX_SIGNOFF_TIMEOUT_SECONDS: u64 = 31 * 24 * 3600;

/// `"events": {"maxPerExchange": N}`: the integration runs on its endpoint's queued events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsSpec {
    /// Most events (distinct keys) one exchange takes.
    pub max_per_exchange: u32,
}

/// How long an agent may take to report when neither the destination nor the step says.
pub const DEFAULT_AGENT_TIMEOUT_SECONDS: u64 = 3600;

impl IntegrationDefinition {
    /// How long the callback awaited after a sub-step of step `step_index` (destination
    /// `destination`) may take: an agent destination's own timeout, else the step's (an agent
    /// always has one: [`DEFAULT_AGENT_TIMEOUT_SECONDS`]). `None`: no limit.
    pub fn callback_timeout_seconds(&self, step_index: Option<usize>, destination: Option<usize>) -> Option<u64> {
        let step = self.steps.get(step_index?)?;
        let agent_timeout = match (&step.action, destination) {
            (StepAction::Delivery { destinations }, Some(d)) => match destinations.get(d).map(|d| &d.target) {
                Some(DestinationTarget::Agent { timeout_seconds, .. }) => Some(*timeout_seconds),
                _ => None,
            },
            _ => None,
        };
        match agent_timeout {
            Some(own) => Some(own.or(step.timeout_seconds).unwrap_or(DEFAULT_AGENT_TIMEOUT_SECONDS)),
            None => step.timeout_seconds,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// EventBridge syntax: `cron(...)`, `rate(...)` or `at(...)`.
    pub expression: String,
    /// IANA time zone name; UTC when absent.
    pub timezone: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IntegrationStep {
    pub name: String,
    pub condition: Option<Expression>,
    pub post_process: Option<Expression>,
    pub retry: RetryPolicy,
    /// How long a waiting sub-step of this step may wait for its callback.
    pub timeout_seconds: Option<u64>,
    /// Hosts besides its request's that links in its callbacks may point to ([`crate::links`]).
    pub allowed_link_hosts: Vec<String>,
    pub action: StepAction,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    Query {
        request: RequestTemplate,
    },
    Extract {
        request: RequestTemplate,
        download_messages: bool,
    },
    Custom {
        function: Option<Expression>,
        request: Option<RequestTemplate>,
    },
    /// Reads `input`, applies `mapping` per record, runs `function`, writes `output`
    /// (see [`crate::formats`] for the record model and where the program runs).
    Transformation {
        function: Option<Expression>,
        input: InputSpec,
        output: OutputSpec,
        mapping: Option<MappingName>,
    },
    Delivery {
        destinations: Vec<Destination>,
    },
    InvokeProcess {
        kind: ProcessKind,
        request: RequestTemplate,
        expect_notification: bool,
        auto_recovery: bool,
        download_messages: bool,
    },
    Subflow {
        integration_code: IntegrationCode,
        function: Expression,
        /// More sub-exchanges than this fail the step before any is created.
        max_sub_exchanges: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    Activity,
    Process,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    Ndjson,
    Csv,
    Xml,
    Raw,
}

impl OutputFormat {
    pub fn content_type(&self) -> &'static str {
        match self {
            OutputFormat::Json => "application/json",
            OutputFormat::Ndjson => "application/x-ndjson",
            OutputFormat::Csv => "text/csv",
            OutputFormat::Xml => "application/xml",
            OutputFormat::Raw => "application/octet-stream",
        }
    }
}

/// An HTTP call with `{{...}}` placeholders in URL, header values and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTemplate {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// A templated body; when absent, deliveries send the payload as the body.
    pub body: Option<String>,
    /// `followRedirects`: follow up to [`MAX_REDIRECTS`] redirects, each hop checked like
    /// the first call (default: a 3xx is a business error naming its `Location`).
    pub follow_redirects: bool,
}

/// Most redirects one call follows when its request opts in.
pub const MAX_REDIRECTS: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    pub main: bool,
    pub target: DestinationTarget,
    /// What becomes of the target's answer (`"response"`, REST destinations).
    pub response: Option<ResponseHandling>,
}

/// `"response": {"capture": true, "deliverTo": {...}}`: the answer's body becomes the
/// step's output — it flows on and is the exchange's `result` (IFS inbound request) — and
/// may be delivered to a response address, a REST destination with its own attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseHandling {
    pub capture: bool,
    /// The response address: where the captured answer is delivered (sub-step
    /// `DeliverResponse` after the destination's own).
    pub deliver_to: Option<RequestTemplate>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DestinationTarget {
    Rest {
        request: RequestTemplate,
    },
    /// `path` is the remote file for a single-file payload; a multi-file data file set goes
    /// into its directory (or into `path` itself when it ends with `/`). Without
    /// `host_key_fingerprint` (OpenSSH `SHA256:...` form) any host key is accepted, with a
    /// warning in the logs.
    Sftp {
        host: String,
        port: u16,
        path: String,
        secret_ref: String,
        host_key_fingerprint: Option<String>,
    },
    FileUpload {
        request: RequestTemplate,
        field_name: String,
    },
    Agent {
        health_url: String,
        request: RequestTemplate,
        timeout_seconds: Option<u64>,
    },
}

/// Parses and validates a definition document.
/// Sub-exchanges one subflow step may start unless it says otherwise (`maxSubExchanges`).
pub const DEFAULT_MAX_SUB_EXCHANGES: u32 = 10_000;
/// The most `maxSubExchanges` may allow.
pub const MAX_SUB_EXCHANGES_LIMIT: u64 = 100_000;
/// How deep sub-exchanges may nest (a child of a root exchange is at depth 1): a cycle
/// through other integrations ends here.
pub const MAX_SUBFLOW_DEPTH: u32 = 5;

pub fn parse_definition(document: &Value) -> Result<IntegrationDefinition, FieldError> {
    let root = ObjectReader::new("", document)?;
    root.deny_unknown(&[
        "code",
        "version",
        "enabled",
        "slaSeconds",
        "schedule",
        "events",
        "signoff",
        "signoffTimeoutSeconds",
        "errorProcessing",
        "heartbeatUrl",
        "notify",
        "steps",
        "description",
    ])?;
    let code = IntegrationCode::parse(root.required_str("code")?).map_err(|e| FieldError::new("code", e))?;
    let version = parse_version(root.get("version"))?;
    let enabled = root.optional_bool("enabled")?.unwrap_or(true);
    let sla_seconds = root.optional_u64("slaSeconds", 1, 31 * 24 * 3600)?;
    let schedule = root.optional_object("schedule")?.map(|s| parse_schedule(&s)).transpose()?;
    let events = match root.optional_object("events")? {
        None => None,
        Some(e) => {
            e.deny_unknown(&["maxPerExchange"])?;
            let max = e
                .optional_u64("maxPerExchange", 1, crate::events::MAX_PER_EXCHANGE_LIMIT)?
                .ok_or_else(|| FieldError::new(e.field_path("maxPerExchange"), "is required"))?;
            Some(EventsSpec { max_per_exchange: max as u32 })
        }
    };
    let signoff_timeout = root.optional_u64("signoffTimeoutSeconds", 1, MAX_SIGNOFF_TIMEOUT_SECONDS)?;
    let signoff = match (root.optional_str("signoff")?, signoff_timeout) {
        (None | Some("auto"), None) => Signoff::Auto,
        (None | Some("auto"), Some(_)) => {
            return Err(FieldError::new("signoffTimeoutSeconds", "applies only with \"signoff\": \"requester\""))
        }
        (Some("requester"), timeout_seconds) => Signoff::Requester { timeout_seconds },
        (Some(other), _) => {
            return Err(FieldError::new("signoff", format!("'{other}' is not a sign-off (expected auto or requester)")))
        }
    };
    let reprocess_from = match root.optional_object("errorProcessing")? {
        None => ResumeFrom::FailedStep,
        Some(e) => {
            e.deny_unknown(&["from"])?;
            match e.optional_str("from")? {
                None | Some("failedStep") => ResumeFrom::FailedStep,
                Some("collection") => ResumeFrom::Collection,
                Some(other) => {
                    return Err(FieldError::new(
                        e.field_path("from"),
                        format!("'{other}' is not where re-processing starts (expected failedStep or collection)"),
                    ))
                }
            }
        }
    };
    let heartbeat_url = match root.optional_str("heartbeatUrl")? {
        None => None,
        Some(_) if schedule.is_none() => {
            return Err(FieldError::new(
                "heartbeatUrl",
                "only a scheduled integration has a heartbeat (it needs a schedule)",
            ))
        }
        Some(url) => HeartbeatUrl::parse(url).map_err(|e| FieldError::new("heartbeatUrl", e))?,
    };
    let notify = parse_notify(&root)?;
    let steps_value = root.required_array("steps")?;
    if steps_value.is_empty() {
        return Err(FieldError::new("steps", "must list at least one step"));
    }
    let mut steps = Vec::with_capacity(steps_value.len());
    for (i, step) in steps_value.iter().enumerate() {
        let parsed = parse_step(&format!("steps[{i}]"), step)?;
        if let Some(j) = steps.iter().position(|s: &IntegrationStep| s.name == parsed.name) {
            return Err(FieldError::new(
                format!("steps[{i}].name"),
                format!("'{}' is already the name of steps[{j}]", parsed.name),
            ));
        }
        if matches!(&parsed.action, StepAction::Subflow { integration_code, .. } if *integration_code == code) {
            return Err(FieldError::new(
                format!("steps[{i}].integrationCode"),
                "a subflow may not start its own integration (it would fan out without end)",
            ));
        }
        steps.push(parsed);
    }
    Ok(IntegrationDefinition {
        code,
        version,
        enabled,
        sla_seconds,
        schedule,
        events,
        signoff,
        reprocess_from,
        heartbeat_url,
        notify,
        steps,
    })
}

/// Whether a *stored* definition document (valid: it was parsed before it was stored) is
/// event-based — what [`parse_definition`]'s `events` says, read without parsing the whole
/// document again (which compiles its jq programs): listings and event intake ask it of
/// every version of a code.
pub fn declares_events(stored_document: &Value) -> bool {
    stored_document.get("events").is_some_and(|events| !events.is_null())
}

pub fn parse_version(value: Option<&Value>) -> FieldResult<IntegrationVersion> {
    match value {
        None | Some(Value::Null) => Ok(IntegrationVersion::NULL),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("must be a positive integer or null, found {v}"))
            .and_then(IntegrationVersion::number)
            .map_err(|e| FieldError::new("version", e)),
    }
}

fn parse_schedule(s: &ObjectReader) -> FieldResult<ScheduleSpec> {
    s.deny_unknown(&["expression", "timezone"])?;
    let expression = s.required_str("expression")?;
    crate::schedule::ScheduleExpression::parse(expression)
        .map_err(|e| FieldError::new(s.field_path("expression"), e))?;
    let timezone = s.optional_str("timezone")?.unwrap_or("UTC");
    crate::schedule::parse_timezone(timezone).map_err(|e| FieldError::new(s.field_path("timezone"), e))?;
    Ok(ScheduleSpec { expression: expression.to_string(), timezone: timezone.to_string() })
}

const COMMON_STEP_FIELDS: [&str; 8] =
    ["name", "type", "condition", "postProcess", "retry", "timeoutSeconds", "description", "allowedLinkHosts"];

fn allowed(extra: &[&'static str]) -> Vec<&'static str> {
    COMMON_STEP_FIELDS.iter().chain(extra).copied().collect()
}

fn parse_step(path: &str, value: &Value) -> FieldResult<IntegrationStep> {
    let step = ObjectReader::new(path, value)?;
    let name = step.required_str("name")?.to_string();
    let step_type = step.required_str("type")?;
    let condition = parse_expression(&step, "condition")?;
    let post_process = parse_expression(&step, "postProcess")?;
    let retry = match step.optional_object("retry")? {
        Some(r) => parse_retry(&r)?,
        None => RetryPolicy::default(),
    };
    let timeout_seconds = step.optional_u64("timeoutSeconds", 1, 7 * 24 * 3600)?;
    let allowed_link_hosts = crate::links::parse_allowed_link_hosts(&step)?;
    let action = match step_type {
        "dataCollection" => {
            let kind = step.required_str("kind")?;
            match kind {
                "query" => {
                    step.deny_unknown(&allowed(&["kind", "request"]))?;
                    StepAction::Query { request: parse_request(&step.required_object("request")?)? }
                }
                "extract" => {
                    step.deny_unknown(&allowed(&["kind", "request", "downloadMessages"]))?;
                    StepAction::Extract {
                        request: parse_request(&step.required_object("request")?)?,
                        download_messages: step.optional_bool("downloadMessages")?.unwrap_or(false),
                    }
                }
                "custom" => {
                    step.deny_unknown(&allowed(&["kind", "request", "function"]))?;
                    let function = parse_function(&step)?;
                    let request = step.optional_object("request")?.map(|r| parse_request(&r)).transpose()?;
                    if function.is_none() == request.is_none() {
                        return Err(FieldError::new(
                            step.path(),
                            "a custom data collection declares exactly one of 'function' or 'request'",
                        ));
                    }
                    StepAction::Custom { function, request }
                }
                other => return Err(unknown_kind(&step, other, &["query", "extract", "custom"])),
            }
        }
        "transformation" => {
            step.deny_unknown(&allowed(&["function", "input", "output", "mapping"]))?;
            let input = step.optional_object("input")?.map(|i| parse_input(&i)).transpose()?.unwrap_or_default();
            let output = step.optional_object("output")?.map(|o| parse_output(&o)).transpose()?.unwrap_or_default();
            let mapping = step
                .optional_str("mapping")?
                .map(|m| MappingName::parse(m).map_err(|e| FieldError::new(step.field_path("mapping"), e)))
                .transpose()?;
            StepAction::Transformation { function: parse_function(&step)?, input, output, mapping }
        }
        "delivery" => {
            step.deny_unknown(&allowed(&["destinations"]))?;
            StepAction::Delivery { destinations: parse_destinations(&step)? }
        }
        "invokeProcess" => {
            step.deny_unknown(&allowed(&["kind", "request", "expectNotification", "autoRecovery", "downloadMessages"]))?;
            let kind = match step.required_str("kind")? {
                "activity" => ProcessKind::Activity,
                "process" => ProcessKind::Process,
                other => return Err(unknown_kind(&step, other, &["activity", "process"])),
            };
            StepAction::InvokeProcess {
                kind,
                request: parse_request(&step.required_object("request")?)?,
                expect_notification: step.optional_bool("expectNotification")?.unwrap_or(false),
                auto_recovery: step.optional_bool("autoRecovery")?.unwrap_or(false),
                download_messages: step.optional_bool("downloadMessages")?.unwrap_or(false),
            }
        }
        "subflow" => {
            step.deny_unknown(&allowed(&["integrationCode", "function", "maxSubExchanges"]))?;
            let integration_code = IntegrationCode::parse(step.required_str("integrationCode")?)
                .map_err(|e| FieldError::new(step.field_path("integrationCode"), e))?;
            let function = parse_function(&step)?
                .ok_or_else(|| FieldError::new(step.field_path("function"), "is required"))?;
            let max_sub_exchanges = step
                .optional_u64("maxSubExchanges", 1, MAX_SUB_EXCHANGES_LIMIT)?
                .map_or(DEFAULT_MAX_SUB_EXCHANGES, |m| m as u32);
            StepAction::Subflow { integration_code, function, max_sub_exchanges }
        }
        other => {
            return Err(FieldError::new(
                step.field_path("type"),
                format!("unknown step type '{other}' (expected dataCollection, transformation, delivery, invokeProcess or subflow)"),
            ))
        }
    };
    Ok(IntegrationStep { name, condition, post_process, retry, timeout_seconds, allowed_link_hosts, action })
}

fn unknown_kind(step: &ObjectReader, kind: &str, expected: &[&str]) -> FieldError {
    FieldError::new(step.field_path("kind"), format!("unknown kind '{kind}' (expected {})", expected.join(", ")))
}

fn parse_expression(obj: &ObjectReader, key: &str) -> FieldResult<Option<Expression>> {
    obj.optional_str(key)?
        .map(|src| Expression::compile(src).map_err(|e| FieldError::new(obj.field_path(key), e.to_string())))
        .transpose()
}

/// `function: {jq: "..."}` — the one function language is jq.
fn parse_function(step: &ObjectReader) -> FieldResult<Option<Expression>> {
    let Some(function) = step.optional_object("function")? else {
        return Ok(None);
    };
    function.deny_unknown(&["jq"])?;
    parse_expression(&function, "jq")?
        .ok_or_else(|| FieldError::new(function.field_path("jq"), "is required"))
        .map(Some)
}

fn parse_retry(r: &ObjectReader) -> FieldResult<RetryPolicy> {
    r.deny_unknown(&["maxAttempts", "intervalSeconds", "backoffRate", "maxIntervalSeconds", "jitter"])?;
    let defaults = RetryPolicy::default();
    let jitter = match r.optional_str("jitter")? {
        None | Some("none") => Jitter::None,
        Some("full") => Jitter::Full,
        Some(other) => {
            return Err(FieldError::new(
                r.field_path("jitter"),
                format!("unknown jitter '{other}' (expected none or full)"),
            ))
        }
    };
    let policy = RetryPolicy {
        max_attempts: r.optional_u64("maxAttempts", 1, 100)?.map_or(defaults.max_attempts, |n| n as u32),
        interval_seconds: r.optional_u64("intervalSeconds", 0, 86_400)?.unwrap_or(defaults.interval_seconds),
        backoff_rate: r.optional_f64("backoffRate", 1.0, 10.0)?.unwrap_or(defaults.backoff_rate),
        max_interval_seconds: r
            .optional_u64("maxIntervalSeconds", 1, 7 * 86_400)?
            .unwrap_or(defaults.max_interval_seconds),
        jitter,
    };
    if policy.max_interval_seconds < policy.interval_seconds {
        return Err(FieldError::new(r.field_path("maxIntervalSeconds"), "must not be smaller than intervalSeconds"));
    }
    Ok(policy)
}

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

fn parse_request(r: &ObjectReader) -> FieldResult<RequestTemplate> {
    r.deny_unknown(&["method", "url", "headers", "body", "followRedirects"])?;
    let method = r.optional_str("method")?.unwrap_or("GET").to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return Err(FieldError::new(
            r.field_path("method"),
            format!("unknown HTTP method '{method}' (expected one of {})", METHODS.join(", ")),
        ));
    }
    let url = r.required_str("url")?;
    validate_url(&r.field_path("url"), url)?;
    let headers = r.optional_string_map("headers")?;
    for (name, value) in &headers {
        let path = format!("{}.{name}", r.field_path("headers"));
        http_header_name_ok(name).map_err(|e| FieldError::new(path.clone(), e))?;
        placeholder::validate(value).map_err(|e| FieldError::new(path, e.to_string()))?;
    }
    let body = match r.get("body") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        // A JSON body is kept as its text; placeholders inside strings still apply.
        Some(other @ (Value::Object(_) | Value::Array(_))) => Some(other.to_string()),
        Some(other) => {
            return Err(FieldError::new(
                r.field_path("body"),
                format!("must be a string or a JSON object, found {}", describe(other)),
            ))
        }
    };
    if let Some(body) = &body {
        placeholder::validate(body).map_err(|e| FieldError::new(r.field_path("body"), e.to_string()))?;
    }
    let follow_redirects = r.optional_bool("followRedirects")?.unwrap_or(false);
    Ok(RequestTemplate { method, url: url.to_string(), headers, body, follow_redirects })
}

fn http_header_name_ok(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("'{name}' is not a valid HTTP header name"))
    }
}

/// A URL must be absolute http(s) once placeholders are filled; it is checked with every
/// placeholder replaced by a neutral token, since parameters are unknown at definition time.
fn validate_url(path: &str, url: &str) -> FieldResult<()> {
    placeholder::validate(url).map_err(|e| FieldError::new(path, e.to_string()))?;
    // Where a call goes is the definition's, never the data's: a parameter may fill the
    // path and query, not the scheme or the host.
    let authority_end = url.find("://").map_or(0, |at| {
        let after = at + 3;
        after + url[after..].find(['/', '?', '#']).unwrap_or(url.len() - after)
    });
    if url[..authority_end].contains("{{") || url.starts_with("{{") {
        return Err(FieldError::new(
            path,
            format!("'{url}': placeholders may fill the path and query of a URL, not its scheme or host"),
        ));
    }
    let mut probe = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(start) = rest.find("{{") {
        probe.push_str(&rest[..start]);
        probe.push('p');
        rest = rest[start..].split_once("}}").map_or("", |(_, after)| after);
    }
    probe.push_str(rest);
    let parsed =
        url::Url::parse(&probe).map_err(|e| FieldError::new(path, format!("'{url}' is not an absolute URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(FieldError::new(path, format!("'{url}' must use http or https")));
    }
    Ok(())
}

/// A REST destination's `response` (`destinations` = how many the step has: one answer
/// can be the step's output only when there is one destination).
fn parse_response(r: &ObjectReader, destinations: usize) -> FieldResult<ResponseHandling> {
    r.deny_unknown(&["capture", "deliverTo"])?;
    let capture = r.optional_bool("capture")?.unwrap_or(false);
    if capture && destinations > 1 {
        return Err(FieldError::new(
            r.field_path("capture"),
            "a step with several destinations has no single answer: capture needs the step's only destination",
        ));
    }
    let deliver_to = match r.optional_object("deliverTo")? {
        None => None,
        Some(to) => {
            if !capture {
                return Err(FieldError::new(
                    r.field_path("deliverTo"),
                    "delivers the captured answer: it needs \"capture\": true",
                ));
            }
            match to.required_str("kind")? {
                "rest" => {}
                other => {
                    return Err(FieldError::new(
                        to.field_path("kind"),
                        format!("a response address of kind '{other}' is not supported yet (only rest)"),
                    ))
                }
            }
            to.deny_unknown(&["kind", "request"])?;
            let request_object = to.required_object("request")?;
            let mut request = parse_request(&request_object)?;
            // It is handed the answer: without a method it is a POST.
            if !request_object.has("method") {
                request.method = "POST".into();
            }
            Some(request)
        }
    };
    Ok(ResponseHandling { capture, deliver_to })
}

fn parse_destinations(step: &ObjectReader) -> FieldResult<Vec<Destination>> {
    let list = step.required_array("destinations")?;
    if list.is_empty() {
        return Err(FieldError::new(step.field_path("destinations"), "must list at least one destination"));
    }
    let mut destinations = Vec::with_capacity(list.len());
    for (i, value) in list.iter().enumerate() {
        let d = ObjectReader::new(format!("{}[{i}]", step.field_path("destinations")), value)?;
        let main = d.optional_bool("main")?.unwrap_or(list.len() == 1);
        let target = match d.required_str("kind")? {
            "rest" => {
                d.deny_unknown(&["kind", "main", "request", "response"])?;
                DestinationTarget::Rest { request: parse_request(&d.required_object("request")?)? }
            }
            "sftp" => {
                d.deny_unknown(&["kind", "main", "host", "port", "path", "credentials", "hostKeyFingerprint"])?;
                let host = d.required_str("host")?;
                if host.trim().is_empty() || host.contains(['/', ' ']) {
                    return Err(FieldError::new(d.field_path("host"), format!("'{host}' is not a host name")));
                }
                let path = d.required_str("path")?;
                if !path.starts_with('/') {
                    return Err(FieldError::new(d.field_path("path"), format!("'{path}' must be an absolute path")));
                }
                placeholder::validate(path).map_err(|e| FieldError::new(d.field_path("path"), e.to_string()))?;
                let host_key_fingerprint = d.optional_str("hostKeyFingerprint")?;
                if let Some(fp) = host_key_fingerprint {
                    if !fp.starts_with("SHA256:") || fp.len() < 20 {
                        return Err(FieldError::new(
                            d.field_path("hostKeyFingerprint"),
                            "must be an OpenSSH SHA-256 fingerprint ('SHA256:' followed by base64)",
                        ));
                    }
                }
                let credentials = d.required_object("credentials")?;
                credentials.deny_unknown(&["secretRef"])?;
                let secret_ref = credentials.required_str("secretRef")?;
                if secret_ref.trim().is_empty() {
                    return Err(FieldError::new(credentials.field_path("secretRef"), "must name a secret"));
                }
                DestinationTarget::Sftp {
                    host: host.to_string(),
                    port: d.optional_u64("port", 1, 65_535)?.unwrap_or(22) as u16,
                    path: path.to_string(),
                    secret_ref: secret_ref.to_string(),
                    host_key_fingerprint: host_key_fingerprint.map(str::to_string),
                }
            }
            "fileUpload" => {
                d.deny_unknown(&["kind", "main", "request", "fieldName"])?;
                let request_object = d.required_object("request")?;
                let mut request = parse_request(&request_object)?;
                // An upload sends a body: without a method it is a POST.
                if !request_object.has("method") {
                    request.method = "POST".into();
                }
                if !matches!(request.method.as_str(), "POST" | "PUT" | "PATCH") {
                    return Err(FieldError::new(
                        format!("{}.method", d.field_path("request")),
                        format!("a file upload sends a body: {} is not POST, PUT or PATCH", request.method),
                    ));
                }
                if request.body.is_some() {
                    return Err(FieldError::new(
                        format!("{}.body", d.field_path("request")),
                        "a file upload sends the payload's files; it takes no body",
                    ));
                }
                let field_name = d.optional_str("fieldName")?.unwrap_or("file");
                if field_name.is_empty() || field_name.contains(['"', '\r', '\n']) {
                    return Err(FieldError::new(
                        d.field_path("fieldName"),
                        format!("'{field_name}' is not a usable form field name"),
                    ));
                }
                DestinationTarget::FileUpload { request, field_name: field_name.to_string() }
            }
            "agent" => {
                d.deny_unknown(&["kind", "main", "healthUrl", "request", "timeoutSeconds"])?;
                let health_url = d.required_str("healthUrl")?;
                validate_url(&d.field_path("healthUrl"), health_url)?;
                let request_object = d.required_object("request")?;
                let mut request = parse_request(&request_object)?;
                // The agent is handed a delivery: without a method it is a POST.
                if !request_object.has("method") {
                    request.method = "POST".into();
                }
                DestinationTarget::Agent {
                    health_url: health_url.to_string(),
                    request,
                    timeout_seconds: d.optional_u64("timeoutSeconds", 1, 7 * 24 * 3600)?,
                }
            }
            other => {
                return Err(FieldError::new(
                    d.field_path("kind"),
                    format!("unknown destination kind '{other}' (expected rest, sftp, fileUpload or agent)"),
                ))
            }
        };
        let response = match d.optional_object("response")? {
            None => None,
            Some(r) => Some(parse_response(&r, list.len())?),
        };
        destinations.push(Destination { main, target, response });
    }
    let mains: Vec<usize> = destinations.iter().enumerate().filter(|(_, d)| d.main).map(|(i, _)| i).collect();
    if mains.len() != 1 {
        return Err(FieldError::new(
            step.field_path("destinations"),
            format!("exactly one destination must be main: true, found {}", mains.len()),
        ));
    }
    Ok(destinations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec_example() -> Value {
        json!({
          "code": "PROVIDER_IMPORT", "version": 2, "enabled": true, "slaSeconds": 3600,
          "schedule": {"expression": "cron(0 18 * * ? *)", "timezone": "Europe/Amsterdam"},
          "steps": [
            {"name": "fetch", "type": "dataCollection", "kind": "query",
             "request": {"method": "GET", "url": "https://source.example/providers", "headers": {"Accept": "application/json"}},
             "retry": {"maxAttempts": 5, "intervalSeconds": 2, "backoffRate": 2.0}},
            {"name": "map", "type": "transformation", "condition": "length > 0",
             "function": {"jq": "map({id: .providerId, name: .displayName})"}, "output": {"format": "json"}},
            {"name": "send", "type": "delivery", "destinations": [
               {"kind": "rest", "main": true, "request": {"method": "POST", "url": "https://target.example/providers"}},
               {"kind": "sftp", "host": "sftp.example", "port": 22, "path": "/in/providers.json", "credentials": {"secretRef": "sftp-target"}}]},
            {"name": "settle", "type": "invokeProcess", "kind": "process",
             "request": {"method": "POST", "url": "https://target.example/jobs"},
             "expectNotification": true, "timeoutSeconds": 900, "autoRecovery": true},
            {"name": "perRegion", "type": "subflow", "integrationCode": "REGION_SYNC",
             "function": {"jq": "[.[] | .region] | unique | map({region: .})"}}
          ]
        })
    }

    fn error_of(doc: Value) -> FieldError {
        parse_definition(&doc).expect_err("definition should be rejected")
    }

    #[test]
    fn parses_the_spec_example() {
        let d = parse_definition(&spec_example()).unwrap();
        assert_eq!(d.code.as_str(), "PROVIDER_IMPORT");
        assert_eq!(d.version, IntegrationVersion::number(2).unwrap());
        assert_eq!(d.steps.len(), 5);
        assert_eq!(d.steps[0].retry.max_attempts, 5);
        assert!(d.steps[1].condition.is_some());
        assert!(matches!(&d.steps[2].action, StepAction::Delivery { destinations } if destinations.len() == 2));
    }

    #[test]
    fn callback_timeouts_come_from_the_agent_then_the_step() {
        let mut doc = spec_example();
        let agent =
            json!({"kind": "agent", "healthUrl": "http://a.example/health", "request": {"url": "http://a.example"}});
        doc["steps"][2]["destinations"].as_array_mut().unwrap().push(agent.clone());
        let mut timed = agent;
        timed["timeoutSeconds"] = json!(120);
        doc["steps"][2]["destinations"].as_array_mut().unwrap().push(timed);
        let d = parse_definition(&doc).unwrap();
        assert_eq!(d.callback_timeout_seconds(Some(3), None), Some(900), "the step's own");
        assert_eq!(d.callback_timeout_seconds(Some(0), None), None, "no limit unless set");
        assert_eq!(
            d.callback_timeout_seconds(Some(2), Some(2)),
            Some(DEFAULT_AGENT_TIMEOUT_SECONDS),
            "an agent always has one"
        );
        assert_eq!(d.callback_timeout_seconds(Some(2), Some(3)), Some(120), "the agent's own");
        assert_eq!(d.callback_timeout_seconds(Some(2), Some(0)), None, "a REST destination waits for nothing");
        assert_eq!(d.callback_timeout_seconds(None, None), None);
        doc["steps"][2]["timeoutSeconds"] = json!(60);
        let d = parse_definition(&doc).unwrap();
        assert_eq!(d.callback_timeout_seconds(Some(2), Some(2)), Some(60), "else the step's");
        assert_eq!(d.callback_timeout_seconds(Some(2), Some(3)), Some(120));
    }

    #[test]
    fn a_request_opts_in_to_redirects_with_a_boolean() {
        let d = parse_definition(&spec_example()).unwrap();
        let StepAction::Delivery { destinations } = &d.steps[2].action else { panic!("a delivery") };
        let DestinationTarget::Rest { request } = &destinations[0].target else { panic!("rest") };
        assert!(!request.follow_redirects, "not followed unless asked");
        let mut doc = spec_example();
        doc["steps"][2]["destinations"][0]["request"]["followRedirects"] = json!(true);
        let d = parse_definition(&doc).unwrap();
        let StepAction::Delivery { destinations } = &d.steps[2].action else { panic!("a delivery") };
        assert!(matches!(&destinations[0].target, DestinationTarget::Rest { request } if request.follow_redirects));
        doc["steps"][2]["destinations"][0]["request"]["followRedirects"] = json!("yes");
        let e = error_of(doc);
        assert_eq!(e.path, "steps[2].destinations[0].request.followRedirects");
    }

    #[test]
    fn missing_url_names_the_field() {
        let mut doc = spec_example();
        doc["steps"][2]["destinations"][0]["request"].as_object_mut().unwrap().remove("url");
        let e = error_of(doc);
        assert_eq!(e.path, "steps[2].destinations[0].request.url");
        assert_eq!(e.problem, "is required");
    }

    #[test]
    fn unknown_step_type_is_named() {
        let mut doc = spec_example();
        doc["steps"][1]["type"] = json!("teleport");
        let e = error_of(doc);
        assert_eq!(e.path, "steps[1].type");
        assert!(e.problem.contains("unknown step type 'teleport'"));
    }

    #[test]
    fn two_main_destinations_are_rejected() {
        let mut doc = spec_example();
        doc["steps"][2]["destinations"][1]["main"] = json!(true);
        let e = error_of(doc);
        assert_eq!(e.path, "steps[2].destinations");
        assert!(e.problem.contains("exactly one"));
    }

    #[test]
    fn invalid_jq_is_rejected_at_definition_time() {
        let mut doc = spec_example();
        doc["steps"][1]["function"]["jq"] = json!("map(");
        assert_eq!(error_of(doc).path, "steps[1].function.jq");
    }

    #[test]
    fn unknown_fields_and_formats_are_rejected() {
        let mut doc = spec_example();
        doc["steps"][0]["requets"] = json!({});
        assert_eq!(error_of(doc).path, "steps[0].requets");
        let mut doc = spec_example();
        doc["steps"][1]["output"]["format"] = json!("yaml");
        assert_eq!(error_of(doc).path, "steps[1].output.format");
    }

    #[test]
    fn bad_scalars_are_named() {
        let mut doc = spec_example();
        doc["version"] = json!(0);
        assert_eq!(error_of(doc).path, "version");
        let mut doc = spec_example();
        doc["steps"][0]["request"]["url"] = json!("not a url");
        assert_eq!(error_of(doc).path, "steps[0].request.url");
        let mut doc = spec_example();
        doc["steps"][0]["request"]["url"] = json!("https://x.example/{{parameters.id}}?e={{exchange.exchangeId}}");
        assert!(parse_definition(&doc).is_ok());
        let mut doc = spec_example();
        doc["steps"][0]["request"]["url"] = json!("https://x.example/{{nope}}");
        assert_eq!(error_of(doc).path, "steps[0].request.url");
        let mut doc = spec_example();
        doc.as_object_mut().unwrap().remove("code");
        assert_eq!(error_of(doc).path, "code");
        assert_eq!(error_of(json!([])).path, "(document)");
    }

    fn with_destination(destination: Value) -> Value {
        let mut doc = spec_example();
        doc["steps"][2]["destinations"][1] = destination;
        doc
    }

    #[test]
    fn destinations_of_every_kind_name_their_bad_field() {
        let sftp = json!({"kind": "sftp", "host": "h", "path": "/in/x", "credentials": {"secretRef": "s"}});
        let cases = [
            (
                json!({"kind": "sftp", "host": "h", "path": "/in/x", "credentials": {}}),
                "steps[2].destinations[1].credentials.secretRef",
            ),
            (json!({"kind": "sftp", "host": "h", "path": "/in/x"}), "steps[2].destinations[1].credentials"),
            (
                json!({"kind": "sftp", "host": "h", "path": "in/x", "credentials": {"secretRef": "s"}}),
                "steps[2].destinations[1].path",
            ),
            (
                json!({"kind": "sftp", "path": "/in/x", "credentials": {"secretRef": "s"}}),
                "steps[2].destinations[1].host",
            ),
            (
                json!({"kind": "sftp", "host": "h", "path": "/in/x", "hostKeyFingerprint": "md5:aa", "credentials": {"secretRef": "s"}}),
                "steps[2].destinations[1].hostKeyFingerprint",
            ),
            (json!({"kind": "fileUpload", "request": {"method": "POST"}}), "steps[2].destinations[1].request.url"),
            (
                json!({"kind": "fileUpload", "request": {"method": "GET", "url": "http://u.example"}}),
                "steps[2].destinations[1].request.method",
            ),
            (
                json!({"kind": "fileUpload", "request": {"url": "http://u.example", "body": "x"}}),
                "steps[2].destinations[1].request.body",
            ),
            (json!({"kind": "agent", "request": {"url": "http://a.example"}}), "steps[2].destinations[1].healthUrl"),
            (
                json!({"kind": "agent", "healthUrl": "ftp://a.example", "request": {"url": "http://a.example"}}),
                "steps[2].destinations[1].healthUrl",
            ),
            (
                json!({"kind": "agent", "healthUrl": "http://a.example", "request": {"url": "http://a.example"}, "timeoutSeconds": 0}),
                "steps[2].destinations[1].timeoutSeconds",
            ),
        ];
        for (destination, path) in cases {
            assert_eq!(error_of(with_destination(destination.clone())).path, path, "{destination}");
        }
        let d = parse_definition(&with_destination(sftp)).unwrap();
        let StepAction::Delivery { destinations } = &d.steps[2].action else { panic!("delivery") };
        assert!(matches!(
            &destinations[1].target,
            DestinationTarget::Sftp { port: 22, host_key_fingerprint: None, .. }
        ));
    }

    #[test]
    fn transformation_formats_and_mapping_are_validated() {
        let mut doc = spec_example();
        doc["steps"][1]["input"] = json!({"format": "csv", "delimiter": ";"});
        doc["steps"][1]["output"] = json!({"format": "xml", "root": "providers"});
        doc["steps"][1]["mapping"] = json!("provider-codes");
        let d = parse_definition(&doc).unwrap();
        let StepAction::Transformation { input, output, mapping, .. } = &d.steps[1].action else {
            panic!("not a transformation")
        };
        assert_eq!(input.csv.delimiter, b';');
        assert_eq!(output.xml.root, "providers");
        assert_eq!(mapping.as_ref().map(|m| m.as_str()), Some("provider-codes"));
        let mut doc = spec_example();
        doc["steps"][1]["mapping"] = json!("no/such");
        assert_eq!(error_of(doc).path, "steps[1].mapping");
        let mut doc = spec_example();
        doc["steps"][1]["input"] = json!({"format": "xlsx"});
        assert_eq!(error_of(doc).path, "steps[1].input.format");
        let mut doc = spec_example();
        doc["steps"][1]["output"] = json!({"format": "csv", "quote": "'"});
        assert_eq!(error_of(doc).path, "steps[1].output.quote");
    }

    #[test]
    fn duplicate_step_names_are_rejected() {
        let mut doc = spec_example();
        doc["steps"][1]["name"] = json!("fetch");
        assert_eq!(error_of(doc).path, "steps[1].name");
    }

    #[test]
    fn schedule_is_validated() {
        let mut doc = spec_example();
        doc["schedule"]["timezone"] = json!("Mars/Olympus");
        assert_eq!(error_of(doc).path, "schedule.timezone");
        let mut doc = spec_example();
        doc["schedule"]["expression"] = json!("every day");
        assert_eq!(error_of(doc).path, "schedule.expression");
    }

    #[test]
    fn events_make_an_integration_event_based() {
        let mut doc = spec_example();
        doc["events"] = json!({"maxPerExchange": 50});
        let parsed = parse_definition(&doc).expect("event-based");
        assert_eq!(parsed.events, Some(EventsSpec { max_per_exchange: 50 }));
        doc["events"] = json!({});
        assert_eq!(error_of(doc.clone()).path, "events.maxPerExchange");
        doc["events"] = json!({"maxPerExchange": 0});
        assert_eq!(error_of(doc.clone()).path, "events.maxPerExchange");
        doc["events"] = json!({"maxPerExchange": 5, "batch": true});
        assert_eq!(error_of(doc).path, "events.batch");
        assert_eq!(parse_definition(&spec_example()).expect("plain").events, None);
        // Read from a stored document, the same answer without parsing it.
        let mut stored = spec_example();
        assert!(!declares_events(&stored));
        stored["events"] = json!(null);
        assert!(!declares_events(&stored) && parse_definition(&stored).expect("valid").events.is_none());
        stored["events"] = json!({"maxPerExchange": 5});
        assert!(declares_events(&stored) && parse_definition(&stored).expect("valid").events.is_some());
    }

    #[test]
    fn a_captured_answer_needs_a_single_destination_and_its_response_address_a_capture() {
        let delivery = |destinations: Value| json!({"code": "C", "version": 1, "steps": [{"name": "send", "type": "delivery", "destinations": destinations}]});
        let rest =
            |response: Value| json!({"kind": "rest", "request": {"url": "https://t.example/in"}, "response": response});
        let parsed = parse_definition(&delivery(json!([rest(
            json!({"capture": true, "deliverTo": {"kind": "rest", "request": {"url": "https://caller.example/answers"}}})
        )])))
        .expect("valid");
        let StepAction::Delivery { destinations } = &parsed.steps[0].action else { panic!("a delivery") };
        let response = destinations[0].response.as_ref().expect("response");
        assert!(response.capture);
        assert_eq!(response.deliver_to.as_ref().map(|r| r.method.as_str()), Some("POST"), "a POST by default");
        let two = |first: Value| {
            let mut first = rest(first);
            first["main"] = json!(true);
            delivery(json!([first, {"kind": "rest", "request": {"url": "https://u.example/in"}}]))
        };
        assert_eq!(error_of(two(json!({"capture": true}))).path, "steps[0].destinations[0].response.capture");
        let uncaptured =
            delivery(json!([rest(json!({"deliverTo": {"kind": "rest", "request": {"url": "https://c.example"}}}))]));
        assert_eq!(error_of(uncaptured).path, "steps[0].destinations[0].response.deliverTo");
        let sftp = json!({"capture": true, "deliverTo": {"kind": "sftp", "host": "h", "path": "/in"}});
        assert_eq!(error_of(delivery(json!([rest(sftp)]))).path, "steps[0].destinations[0].response.deliverTo.kind");
        assert_eq!(
            error_of(delivery(json!([rest(json!({"keep": true}))]))).path,
            "steps[0].destinations[0].response.keep"
        );
    }

    #[test]
    fn a_requester_signoff_may_have_a_timeout_and_only_then() {
        let mut doc = spec_example();
        assert_eq!(parse_definition(&doc).expect("plain").signoff, Signoff::Auto);
        doc["signoff"] = json!("requester");
        assert_eq!(parse_definition(&doc).expect("ok").signoff, Signoff::Requester { timeout_seconds: None });
        doc["signoffTimeoutSeconds"] = json!(600);
        assert_eq!(parse_definition(&doc).expect("ok").signoff, Signoff::Requester { timeout_seconds: Some(600) });
        doc["signoff"] = json!("auto");
        assert_eq!(error_of(doc.clone()).path, "signoffTimeoutSeconds");
        doc["signoff"] = json!("partner");
        assert_eq!(error_of(doc.clone()).path, "signoff");
        doc["signoff"] = json!("requester");
        doc["signoffTimeoutSeconds"] = json!(0);
        assert_eq!(error_of(doc).path, "signoffTimeoutSeconds");
    }

    #[test]
    fn error_processing_starts_at_the_failed_step_unless_it_says_collection() {
        let mut doc = spec_example();
        assert_eq!(parse_definition(&doc).expect("plain").reprocess_from, ResumeFrom::FailedStep);
        doc["errorProcessing"] = json!({"from": "collection"});
        assert_eq!(parse_definition(&doc).expect("ok").reprocess_from, ResumeFrom::Collection);
        doc["errorProcessing"] = json!({"from": "failedStep"});
        assert_eq!(parse_definition(&doc).expect("ok").reprocess_from, ResumeFrom::FailedStep);
        doc["errorProcessing"] = json!({"from": "start"});
        assert_eq!(error_of(doc.clone()).path, "errorProcessing.from");
        doc["errorProcessing"] = json!({"from": "collection", "every": 5});
        assert_eq!(error_of(doc).path, "errorProcessing.every");
    }

    #[test]
    fn a_heartbeat_url_needs_a_schedule_and_notify_targets_are_read() {
        let mut doc =
            json!({"code": "HB", "steps": [{"name": "a", "type": "transformation", "function": {"jq": "."}}]});
        doc["heartbeatUrl"] = json!("https://hc-ping.com/abc");
        assert_eq!(parse_definition(&doc).expect_err("no schedule").path, "heartbeatUrl");
        doc["schedule"] = json!({"expression": "rate(1 hour)"});
        let parsed = parse_definition(&doc).expect("scheduled");
        assert!(parsed.heartbeat_url.is_some());
        doc["heartbeatUrl"] = json!("https://hc-ping.com/abc?x=1");
        assert_eq!(parse_definition(&doc).expect_err("query").path, "heartbeatUrl");
        doc["heartbeatUrl"] = json!("https://hc-ping.com/abc");
        doc["notify"] = json!([{"webhook": "https://hooks.example.com/x"}]);
        assert_eq!(parse_definition(&doc).expect("notify").notify.len(), 1);
        doc["notify"] = json!([{"webhook": 3}]);
        assert_eq!(parse_definition(&doc).expect_err("bad").path, "notify[0].webhook");
    }

    #[test]
    fn a_subflow_is_bounded_and_may_not_start_its_own_integration() {
        let subflow = |target: &str, extra: Value| {
            let mut step =
                json!({"name": "fan", "type": "subflow", "integrationCode": target, "function": {"jq": "."}});
            if let (Value::Object(step), Value::Object(extra)) = (&mut step, extra) {
                step.extend(extra);
            }
            json!({"code": "SELF", "version": 1, "steps": [step]})
        };
        let error = parse_definition(&subflow("SELF", json!({}))).expect_err("self-recursive");
        assert_eq!(error.path, "steps[0].integrationCode");
        let parsed = parse_definition(&subflow("OTHER", json!({}))).expect("valid");
        assert!(matches!(
            parsed.steps[0].action,
            StepAction::Subflow { max_sub_exchanges: DEFAULT_MAX_SUB_EXCHANGES, .. }
        ));
        let parsed = parse_definition(&subflow("OTHER", json!({"maxSubExchanges": 3}))).expect("valid");
        assert!(matches!(parsed.steps[0].action, StepAction::Subflow { max_sub_exchanges: 3, .. }));
        let error = parse_definition(&subflow("OTHER", json!({"maxSubExchanges": 0}))).expect_err("zero");
        assert_eq!(error.path, "steps[0].maxSubExchanges");
        let error = parse_definition(&subflow("OTHER", json!({"maxSubExchanges": 1_000_000}))).expect_err("too many");
        assert_eq!(error.path, "steps[0].maxSubExchanges");
    }

    #[test]
    fn placeholders_may_not_choose_where_a_call_goes() {
        let with_url = |url: &str| {
            json!({"code": "C", "version": 1, "steps": [
                {"name": "send", "type": "delivery", "destinations": [{"kind": "rest", "request": {"url": url}}]}]})
        };
        for url in [
            "https://{{parameters.host}}/in",
            "{{parameters.url}}",
            "https://api.{{parameters.tenant}}.example/x",
            "https://user:{{parameters.p}}@host/x",
        ] {
            let error = parse_definition(&with_url(url)).expect_err(url);
            assert_eq!(error.path, "steps[0].destinations[0].request.url", "{url}");
            assert!(error.problem.contains("not its scheme or host"), "{url}: {error}");
        }
        for url in ["https://target.example/{{parameters.region}}/in?tenant={{parameters.t}}", "http://127.0.0.1:9/x"] {
            assert!(parse_definition(&with_url(url)).is_ok(), "{url}");
        }
    }
}
