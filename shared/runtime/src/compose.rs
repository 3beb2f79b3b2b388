//! Composition root: builds a function (by its binary name from `infra/template.yaml`)
//! from its environment variables and an AWS SDK configuration. Lambda `main.rs` files
//! and the local emulator both go through here, so they run the same wiring.

use crate::error_tracker::SentryTracker;
use async_trait::async_trait;
use handoff_app::context::{AppContext, AppSettings, ConsoleSettings, Ports};
use handoff_app::entry::api::ApiFunction;
use handoff_app::entry::dlq::DlqFunction;
use handoff_app::entry::function::FunctionHandler;
use handoff_app::entry::jobs::{JobHeartbeats, JobsFunction};
use handoff_app::entry::trigger::TriggerFunction;
use handoff_app::entry::worker::WorkerFunction;
use handoff_app::executors::{self, Execute};
use handoff_app::jq_sandbox::JqSandbox;
use handoff_aws::dynamo::{
    DynamoEndpointStore, DynamoEventQueue, DynamoExchangeRepository, DynamoIntegrationRepository, DynamoJobRunLog,
    DynamoMappingRepository, DynamoUnroutedStore,
};
use handoff_aws::s3::S3DataFileStore;
use handoff_aws::scheduler::EventBridgeScheduleManager;
use handoff_aws::secrets::SecretsManagerStore;
use handoff_aws::sns::SnsTopicPublisher;
use handoff_aws::sqs::SqsHandoffQueue;
use handoff_core::definition::ScheduleSpec;
use handoff_core::expression::{OutputLimits, SandboxLimits};
use handoff_core::heartbeat::{HeartbeatPattern, HeartbeatUrl};
use handoff_core::ids::IntegrationCode;
use handoff_core::network::OutboundPolicy;
use handoff_core::plan::WorkerFamily;
use handoff_ports::{Clock, ErrorTracker, NoErrorTracker, PortError, PortResult, ScheduleManager};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Where the AWS services are. In Lambda: the default chain. In the emulator: moto.
#[derive(Clone)]
pub struct AwsEnvironment {
    pub sdk: aws_config::SdkConfig,
    /// moto serves buckets by path, not by virtual host.
    pub s3_force_path_style: bool,
    /// What time it is: the system clock in Lambda, the emulator's movable clock locally.
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("unknown function binary '{0}'")]
    UnknownBinary(String),
    #[error("environment variable {name} is missing or invalid: {problem}")]
    Environment { name: String, problem: String },
    #[error(transparent)]
    OutboundClient(#[from] handoff_app::outbound::ClientUnavailable),
}

/// The worker family each worker binary serves.
pub fn worker_family(binary: &str) -> Option<WorkerFamily> {
    WorkerFamily::ALL.into_iter().find(|f| binary == format!("handoff-worker-{}", f.name()))
}

fn queue_variable(family: WorkerFamily) -> String {
    format!("HANDOFF_QUEUE_{}_URL", family.name().replace('-', "_").to_ascii_uppercase())
}

#[derive(Clone, Copy)]
struct Vars<'a>(&'a HashMap<String, String>);

impl Vars<'_> {
    fn required(&self, name: &str) -> Result<String, ComposeError> {
        self.0
            .get(name)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| ComposeError::Environment { name: name.into(), problem: "missing".into() })
    }
    /// A heartbeat URL, if set (an invalid one is refused without showing it: it is a credential).
    fn heartbeat(&self, name: &str) -> Result<Option<HeartbeatUrl>, ComposeError> {
        HeartbeatUrl::parse(self.0.get(name).map_or("", String::as_str))
            .map_err(|problem| ComposeError::Environment { name: name.into(), problem })
    }
    fn number(&self, name: &str, default: u64) -> Result<u64, ComposeError> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| ComposeError::Environment {
                name: name.into(),
                problem: format!("'{v}' is not a whole number"),
            }),
        }
    }
}

/// Functions other than the api never manage schedules; saying so beats a silent no-op.
struct NoScheduleManagement;

#[async_trait]
impl ScheduleManager for NoScheduleManagement {
    async fn upsert(&self, _: &IntegrationCode, _: &ScheduleSpec) -> PortResult<()> {
        Err(PortError::Fault {
            service: "scheduler",
            message: "this function is not configured to manage schedules".into(),
        })
    }
    async fn remove(&self, _: &IntegrationCode) -> PortResult<()> {
        Err(PortError::Fault {
            service: "scheduler",
            message: "this function is not configured to manage schedules".into(),
        })
    }
}

/// The error tracker `HANDOFF_ERROR_TRACKER` (`on` / `off`) asks for, reporting as `binary`.
fn error_tracker(vars: &Vars, aws: &AwsEnvironment, binary: &str) -> Result<Arc<dyn ErrorTracker>, ComposeError> {
    match vars.0.get("HANDOFF_ERROR_TRACKER").map_or("off", String::as_str) {
        "off" | "" => Ok(Arc::new(NoErrorTracker)),
        "on" => {
            let secret = vars.required("HANDOFF_ERROR_TRACKER_DSN_SECRET")?;
            let secrets = Arc::new(SecretsManagerStore::new(aws_sdk_secretsmanager::Client::new(&aws.sdk)));
            Ok(Arc::new(SentryTracker::new(secrets, secret, binary.to_string())))
        }
        other => Err(ComposeError::Environment {
            name: "HANDOFF_ERROR_TRACKER".into(),
            problem: format!("'{other}' is not on or off"),
        }),
    }
}

pub fn build_context(
    binary: &str,
    vars: &HashMap<String, String>,
    aws: &AwsEnvironment,
) -> Result<Arc<AppContext>, ComposeError> {
    let vars = Vars(vars);
    let dynamo = aws_sdk_dynamodb::Client::new(&aws.sdk);
    let s3_config = aws_sdk_s3::config::Builder::from(&aws.sdk).force_path_style(aws.s3_force_path_style).build();
    let s3 = aws_sdk_s3::Client::from_conf(s3_config);
    let sqs = aws_sdk_sqs::Client::new(&aws.sdk);
    let mut queue_urls = HashMap::new();
    for family in WorkerFamily::ALL {
        queue_urls.insert(family, vars.required(&queue_variable(family))?);
    }
    let schedules: Arc<dyn ScheduleManager> = match vars.0.get("HANDOFF_SCHEDULE_GROUP") {
        Some(group) => Arc::new(EventBridgeScheduleManager::new(
            aws_sdk_scheduler::Client::new(&aws.sdk),
            group.clone(),
            vars.required("HANDOFF_TRIGGER_FUNCTION_ARN")?,
            vars.required("HANDOFF_SCHEDULER_ROLE_ARN")?,
        )),
        None => Arc::new(NoScheduleManagement),
    };
    let ports = Ports {
        integrations: Arc::new(DynamoIntegrationRepository::new(
            dynamo.clone(),
            vars.required("HANDOFF_INTEGRATIONS_TABLE")?,
        )),
        exchanges: Arc::new(DynamoExchangeRepository::new(dynamo.clone(), vars.required("HANDOFF_EXCHANGES_TABLE")?)),
        queue: Arc::new(SqsHandoffQueue::new(sqs, queue_urls)),
        files: Arc::new(S3DataFileStore::new(s3, vars.required("HANDOFF_DATA_BUCKET")?)),
        schedules,
        secrets: Arc::new(SecretsManagerStore::new(aws_sdk_secretsmanager::Client::new(&aws.sdk))),
        mappings: Arc::new(DynamoMappingRepository::new(dynamo.clone(), vars.required("HANDOFF_INTEGRATIONS_TABLE")?)),
        endpoints: Arc::new(DynamoEndpointStore::new(dynamo.clone(), vars.required("HANDOFF_EXCHANGES_TABLE")?)),
        events: Arc::new(DynamoEventQueue::new(dynamo.clone(), vars.required("HANDOFF_EXCHANGES_TABLE")?)),
        unrouted: Arc::new(DynamoUnroutedStore::new(dynamo.clone(), vars.required("HANDOFF_EXCHANGES_TABLE")?)),
        clock: aws.clock.clone(),
        tracker: error_tracker(&vars, aws, binary)?,
        topics: Arc::new(SnsTopicPublisher::new(aws_sdk_sns::Client::new(&aws.sdk))),
        job_runs: Arc::new(DynamoJobRunLog::new(dynamo.clone(), vars.required("HANDOFF_EXCHANGES_TABLE")?)),
    };
    let defaults = AppSettings::default();
    let jq = SandboxLimits {
        outputs: OutputLimits {
            max_outputs: vars.number("HANDOFF_JQ_MAX_OUTPUTS", defaults.jq.outputs.max_outputs as u64)? as usize,
            max_output_bytes: vars.number("HANDOFF_JQ_MAX_OUTPUT_BYTES", defaults.jq.outputs.max_output_bytes as u64)?
                as usize,
        },
        timeout: Duration::from_millis(vars.number("HANDOFF_JQ_TIMEOUT_MS", defaults.jq.timeout.as_millis() as u64)?),
        max_memory_mb: vars.number("HANDOFF_JQ_MAX_MEMORY_MB", defaults.jq.max_memory_mb)?,
        max_processes: defaults.jq.max_processes,
    };
    // In Lambda the sandboxes share the function's memory: give them at most half of it, so
    // a batch of runaway programs cannot get the whole function killed.
    let jq = match vars.0.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").and_then(|mb| mb.parse::<u64>().ok()) {
        Some(function_mb) => SandboxLimits {
            max_processes: usize::try_from(function_mb / 2 / jq.max_memory_mb.max(1)).unwrap_or(1).max(1),
            ..jq
        },
        None => jq,
    };
    let settings = AppSettings {
        inline_payload_limit: vars.number("HANDOFF_INLINE_PAYLOAD_LIMIT_BYTES", defaults.inline_payload_limit as u64)?
            as usize,
        definition_cache_ttl: Duration::from_secs(
            vars.number("HANDOFF_DEFINITION_CACHE_SECONDS", defaults.definition_cache_ttl.as_secs())?,
        ),
        public_base_url: vars.0.get("HANDOFF_PUBLIC_BASE_URL").cloned(),
        claim_lease: Duration::from_secs(vars.number("HANDOFF_CLAIM_LEASE_SECONDS", defaults.claim_lease.as_secs())?),
        outbox_delay: Duration::from_secs(vars.number("HANDOFF_OUTBOX_SECONDS", defaults.outbox_delay.as_secs())?),
        outbound: OutboundPolicy::parse(vars.0.get("HANDOFF_ALLOWED_OUTBOUND_NETWORKS").map_or("", String::as_str))
            .map_err(|problem| ComposeError::Environment {
                name: "HANDOFF_ALLOWED_OUTBOUND_NETWORKS".into(),
                problem,
            })?,
        jq,
        exchange_retention: match vars.number("HANDOFF_EXCHANGE_RETENTION_DAYS", 0)? {
            0 => None,
            // The template caps it at 36,500 days (a century).
            days => Some(chrono::Duration::days(days.min(36_500) as i64)),
        },
        auto_recovery_limit: vars.number("HANDOFF_AUTO_RECOVERY_LIMIT", defaults.auto_recovery_limit as u64)? as u32,
        integration_heartbeats: HeartbeatPattern::parse(
            vars.0.get("HANDOFF_INTEGRATION_HEARTBEAT_URL_PATTERN").map_or("", String::as_str),
        )
        .map_err(|problem| ComposeError::Environment {
            name: "HANDOFF_INTEGRATION_HEARTBEAT_URL_PATTERN".into(),
            problem,
        })?,
        console: console_settings(&vars),
    };
    Ok(AppContext::new(ports, settings, Arc::new(JqSandbox::new(sandbox_executable(&vars)?, jq))))
}

/// The executable jq sandboxes are started from: `HANDOFF_JQ_SANDBOX_EXE` (the emulator and
/// tests name a Handoff binary), else this process's own (a Lambda function's `bootstrap`).
/// The console's sign-in (`HANDOFF_CONSOLE_*`, from the template's `Console*` parameters).
fn console_settings(vars: &Vars) -> ConsoleSettings {
    let set = |name: &str| vars.0.get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let defaults = ConsoleSettings::default();
    ConsoleSettings {
        authorization_endpoint: set("HANDOFF_CONSOLE_AUTHORIZATION_ENDPOINT"),
        token_endpoint: set("HANDOFF_CONSOLE_TOKEN_ENDPOINT"),
        client_id: set("HANDOFF_CONSOLE_CLIENT_ID").unwrap_or(defaults.client_id),
        scope: set("HANDOFF_CONSOLE_SCOPE").unwrap_or(defaults.scope),
        development_issuer: set("HANDOFF_CONSOLE_DEVELOPMENT_ISSUER").is_some_and(|v| v == "true"),
    }
}

fn sandbox_executable(vars: &Vars) -> Result<std::path::PathBuf, ComposeError> {
    match vars.0.get(SANDBOX_EXE_VARIABLE).filter(|v| !v.is_empty()) {
        Some(path) => Ok(path.into()),
        None => std::env::current_exe().map_err(|e| ComposeError::Environment {
            name: SANDBOX_EXE_VARIABLE.into(),
            problem: format!("unset, and this process's executable is unknown: {e}"),
        }),
    }
}

/// Names the executable of jq sandboxes (see [`sandbox_executable`]).
pub const SANDBOX_EXE_VARIABLE: &str = "HANDOFF_JQ_SANDBOX_EXE";

/// What a function is built from: its binary name, environment and context.
pub struct FunctionParts<'a> {
    pub binary: &'a str,
    vars: Vars<'a>,
    pub ctx: Arc<AppContext>,
}

/// Builds one kind of function from its parts. There is one per kind ([`api`], [`trigger`],
/// [`dlq`], [`jobs`], [`worker`], [`sftp_worker`]): a Lambda binary names its own, and so
/// links that function's code and no other's (`functions/*/main.rs`).
pub type Builder = fn(FunctionParts<'_>) -> Result<Arc<dyn FunctionHandler>, ComposeError>;

/// The HTTP API.
pub fn api(parts: FunctionParts<'_>) -> Result<Arc<dyn FunctionHandler>, ComposeError> {
    Ok(Arc::new(ApiFunction::new(parts.ctx)))
}

/// What EventBridge Scheduler invokes for a scheduled integration.
pub fn trigger(parts: FunctionParts<'_>) -> Result<Arc<dyn FunctionHandler>, ComposeError> {
    Ok(Arc::new(TriggerFunction::new(parts.ctx)))
}

/// The dead-letter queues' consumer.
pub fn dlq(parts: FunctionParts<'_>) -> Result<Arc<dyn FunctionHandler>, ComposeError> {
    Ok(Arc::new(DlqFunction::new(parts.ctx)))
}

/// The regular and error-processing jobs, with their heartbeats.
pub fn jobs(parts: FunctionParts<'_>) -> Result<Arc<dyn FunctionHandler>, ComposeError> {
    let heartbeats = JobHeartbeats {
        regular: parts.vars.heartbeat("HANDOFF_REGULAR_JOB_HEARTBEAT_URL")?,
        error_processing: parts.vars.heartbeat("HANDOFF_ERROR_JOB_HEARTBEAT_URL")?,
    };
    let regular_every = parts.vars.number("HANDOFF_REGULAR_JOB_EVERY_MINUTES", 1)?.max(1);
    let budget =
        parts.vars.number("HANDOFF_JOB_BUDGET_SECONDS", handoff_app::entry::jobs::DEFAULT_JOB_BUDGET.as_secs())?.max(1);
    if heartbeats.regular.is_some() || heartbeats.error_processing.is_some() {
        // Every run pings its monitor.
        parts.ctx.http.warm()?;
    }
    let jobs = JobsFunction::new(parts.ctx)
        .running_every(std::time::Duration::from_secs(regular_every * 60))
        .within(std::time::Duration::from_secs(budget))
        .with_heartbeats(heartbeats);
    Ok(Arc::new(jobs))
}

/// A sub-step worker of the family its binary names, without SFTP deliveries.
pub fn worker(parts: FunctionParts<'_>) -> Result<Arc<dyn FunctionHandler>, ComposeError> {
    worker_with(parts, executors::execute_without_sftp)
}

/// The SFTP delivery worker (the one that links the SSH stack).
pub fn sftp_worker(parts: FunctionParts<'_>) -> Result<Arc<dyn FunctionHandler>, ComposeError> {
    worker_with(parts, executors::execute)
}

fn worker_with(parts: FunctionParts<'_>, execute: Execute) -> Result<Arc<dyn FunctionHandler>, ComposeError> {
    let family = worker_family(parts.binary).ok_or_else(|| ComposeError::UnknownBinary(parts.binary.to_string()))?;
    if calls_out_over_http(family) {
        parts.ctx.http.warm()?;
    }
    Ok(Arc::new(WorkerFunction::new(parts.ctx, family, execute)))
}

/// Whether `family`'s sub-steps call external systems over HTTP. Those workers build their
/// HTTP client (which loads the system's root certificates) at start rather than in their
/// first call; the others never build it unless an effect needs it (a notify webhook).
fn calls_out_over_http(family: WorkerFamily) -> bool {
    !matches!(
        family,
        WorkerFamily::Control | WorkerFamily::Transform | WorkerFamily::Subflow | WorkerFamily::DeliverSftp
    )
}

/// The builder of the function named `binary` (e.g. `handoff-api`): what the emulator, which
/// runs every function in one process, builds them with.
pub fn builder_of(binary: &str) -> Result<Builder, ComposeError> {
    Ok(match binary {
        "handoff-api" => api,
        "handoff-trigger" => trigger,
        "handoff-dlq" => dlq,
        "handoff-jobs" => jobs,
        "handoff-worker-deliver-sftp" => sftp_worker,
        other if worker_family(other).is_some() => worker,
        other => return Err(ComposeError::UnknownBinary(other.to_string())),
    })
}

/// Builds the function named by `binary` (e.g. `handoff-api`) with its [`builder_of`].
pub async fn build_function(
    binary: &str,
    vars: &HashMap<String, String>,
    aws: &AwsEnvironment,
) -> Result<Arc<dyn FunctionHandler>, ComposeError> {
    build_with(builder_of(binary)?, binary, vars, aws).await
}

/// Builds the function named by `binary` with `builder`: its context from `vars` and `aws`,
/// metered and reporting its failures.
pub async fn build_with(
    builder: Builder,
    binary: &str,
    vars: &HashMap<String, String>,
    aws: &AwsEnvironment,
) -> Result<Arc<dyn FunctionHandler>, ComposeError> {
    let ctx = build_context(binary, vars, aws)?;
    let namespace = vars.get("HANDOFF_METRICS_NAMESPACE").map_or(crate::metrics::DEFAULT_NAMESPACE, String::as_str);
    let metrics = crate::metrics::install(namespace);
    let tracker = ctx.ports.tracker.clone();
    let inner = builder(FunctionParts { binary, vars: Vars(vars), ctx })?;
    Ok(Arc::new(crate::metrics::Metered { inner, metrics, tracker }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binary_of_the_template_has_a_builder_and_only_the_sftp_worker_delivers_over_sftp() {
        for family in WorkerFamily::ALL {
            let binary = format!("handoff-worker-{}", family.name());
            let builder = builder_of(&binary).expect("a worker's builder");
            let expected: Builder = if family == WorkerFamily::DeliverSftp { sftp_worker } else { worker };
            assert!(std::ptr::fn_addr_eq(builder, expected), "{binary}");
        }
        for binary in ["handoff-api", "handoff-trigger", "handoff-dlq", "handoff-jobs"] {
            assert!(builder_of(binary).is_ok(), "{binary}");
        }
        assert!(matches!(builder_of("handoff-nothing"), Err(ComposeError::UnknownBinary(_))));
    }

    #[test]
    fn worker_binaries_map_to_families_and_queue_variables() {
        assert_eq!(worker_family("handoff-worker-deliver-rest"), Some(WorkerFamily::DeliverRest));
        assert_eq!(worker_family("handoff-worker-control"), Some(WorkerFamily::Control));
        assert_eq!(worker_family("handoff-api"), None);
        assert_eq!(queue_variable(WorkerFamily::DeliverRest), "HANDOFF_QUEUE_DELIVER_REST_URL");
    }
}
