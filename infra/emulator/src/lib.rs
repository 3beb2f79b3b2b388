//! The local emulator of Handoff (SPEC §5): provisions `infra/template.yaml` into an AWS
//! emulator (moto) and runs every function of the template in this process — SQS pollers
//! for the event-source mappings, an API Gateway HTTP API for the routes, a scheduler for
//! EventBridge Scheduler schedules — with the same handler code the Lambda binaries use.
//!
//! Usable in-process by the test harness: [`start`] returns a [`RunningEmulator`] whose
//! [`RunningEmulator::shutdown`] drains in-flight work and stops moto.

pub mod auth;
pub mod clock;
pub mod demo;
pub mod functions;
pub mod http;
pub mod metrics;
pub mod moto;
pub mod oidc;
pub mod provision;
pub mod scheduler;
pub mod sqs_poller;
pub mod template;
pub mod terminal;

use crate::functions::{ComposeFactory, Function, FunctionFactory};
use crate::moto::{MotoError, MotoServer};
use crate::provision::{Clients, ProvisionError};
use crate::template::{LocalUrls, Template, TemplateError};
use aws_config::BehaviorVersion;
use handoff_runtime::compose::{AwsEnvironment, ComposeError};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Environment variable naming an already-running AWS emulator to use instead of moto.
pub const AWS_ENDPOINT_ENV: &str = "HANDOFF_AWS_ENDPOINT";
/// Environment variables naming an external JWT issuer (and its audience) instead of the
/// emulator's development issuer.
pub const JWT_ISSUER_ENV: &str = "HANDOFF_JWT_ISSUER";
pub const JWT_AUDIENCE_ENV: &str = "HANDOFF_JWT_AUDIENCE";

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Moto(#[from] MotoError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("building function {function} ({binary}): {source}")]
    Compose { function: String, binary: String, source: ComposeError },
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("event source {function}.{event}: queue {queue_arn} is not a queue of the template")]
    UnknownQueue { function: String, event: String, queue_arn: String },
    #[error("route {route} of {function} names authorizer {authorizer}, which the HttpApi does not define")]
    UnknownAuthorizer { function: String, route: String, authorizer: String },
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("writing the development token to {path}: {source}")]
    DevToken { path: PathBuf, source: std::io::Error },
}

/// How to start the emulator.
#[derive(Clone)]
pub struct EmulatorOptions {
    /// HTTP API port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// An AWS emulator to use; `None` starts moto. [`Default`] reads `HANDOFF_AWS_ENDPOINT`.
    pub aws_endpoint: Option<String>,
    /// The SAM template (default `<workspace>/infra/template.yaml`).
    pub template_path: PathBuf,
    /// Merged over every function's variables (e.g. short timeouts in tests).
    pub env_overrides: BTreeMap<String, String>,
    /// Builds the handlers; default: `handoff_runtime::compose::build_function`.
    pub function_factory: Arc<dyn FunctionFactory>,
    /// Pollers per SQS event source.
    pub pollers_per_source: usize,
    /// ReceiveMessage long-poll wait (bounds shutdown latency).
    pub sqs_wait_seconds: i32,
    /// How often stored schedules are checked.
    pub scheduler_interval: Duration,
    /// API Gateway's integration timeout (30 s in AWS).
    pub http_integration_timeout: Duration,
    /// Template parameters set as `sam deploy --parameter-overrides` would. [`Default`]
    /// sets `JwtIssuer` (and `JwtAudience`) from `HANDOFF_JWT_ISSUER` / `HANDOFF_JWT_AUDIENCE`,
    /// or to the development issuer.
    pub parameter_overrides: BTreeMap<String, String>,
    /// Where the development issuer keeps its key and writes `dev-token`.
    pub state_dir: PathBuf,
    /// The Handoff binary the functions start their jq sandboxes from (its `main` calls
    /// [`serve_jq_sandbox_if_requested`] first). Default: this process's executable, right
    /// for the emulator binary and the benches; a test binary names one (libtest's `main`
    /// cannot be a sandbox).
    pub jq_sandbox_executable: PathBuf,
    /// When moto is started here: record every request it serves to this file (moto's
    /// recorder, JSON lines), from before provisioning on. Each function signs with its own
    /// access key ([`function_access_key`]), so the recording attributes every request.
    pub aws_request_recording: Option<PathBuf>,
}

impl EmulatorOptions {
    /// Polls as Lambda's event source mappings do: 20 s long polls (moto answers one as soon
    /// as a message arrives). The default 1 s wait is there to stop quickly; under load it
    /// spends a large share of moto on the idle queues' polls. For benches that run long.
    pub fn polling_like_lambda(self, pollers_per_source: usize) -> Self {
        Self { pollers_per_source, sqs_wait_seconds: 20, ..self }
    }
}

/// Serves as a jq sandbox when this process was started as one, else returns at once:
/// every binary that runs the emulator calls it first.
pub use handoff_app::jq_sandbox::serve_if_requested as serve_jq_sandbox_if_requested;

impl Default for EmulatorOptions {
    fn default() -> Self {
        Self {
            port: 0,
            aws_endpoint: std::env::var(AWS_ENDPOINT_ENV).ok().filter(|s| !s.trim().is_empty()),
            template_path: moto::workspace_root().join("infra").join("template.yaml"),
            env_overrides: BTreeMap::new(),
            function_factory: Arc::new(ComposeFactory),
            pollers_per_source: 2,
            sqs_wait_seconds: 1,
            scheduler_interval: Duration::from_secs(1),
            http_integration_timeout: http::INTEGRATION_TIMEOUT,
            parameter_overrides: issuer_parameters(),
            state_dir: moto::workspace_root().join(".handoff"),
            jq_sandbox_executable: std::env::current_exe().unwrap_or_default(),
            aws_request_recording: None,
        }
    }
}

/// `JwtIssuer`/`JwtAudience` from the environment, or the development issuer's; loopback
/// opened to outbound calls.
fn issuer_parameters() -> BTreeMap<String, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let mut parameters = BTreeMap::new();
    parameters.insert("JwtIssuer".to_string(), env(JWT_ISSUER_ENV).unwrap_or_else(|| auth::DEV_ISSUER.to_string()));
    if let Some(audience) = env(JWT_AUDIENCE_ENV) {
        parameters.insert("JwtAudience".to_string(), audience);
    }
    // Local source and target systems run on loopback; everything else keeps the guard.
    parameters.insert("AllowedOutboundNetworks".to_string(), "127.0.0.0/8,::1/128".to_string());
    parameters
}

impl std::fmt::Debug for EmulatorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorOptions")
            .field("port", &self.port)
            .field("aws_endpoint", &self.aws_endpoint)
            .field("template_path", &self.template_path)
            .field("env_overrides", &self.env_overrides)
            .field("jq_sandbox_executable", &self.jq_sandbox_executable)
            .finish_non_exhaustive()
    }
}

/// A running emulator. Dropping it cancels its tasks and kills moto; prefer
/// [`RunningEmulator::shutdown`], which waits for in-flight work first.
pub struct RunningEmulator {
    api_url: String,
    /// A token with every scope from the development issuer (none with an external issuer).
    dev_token: Option<String>,
    dev_token_path: Option<PathBuf>,
    aws_endpoint: String,
    sdk: aws_config::SdkConfig,
    functions: Vec<Arc<Function>>,
    clock: Arc<clock::EmulatorClock>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    moto: Option<MotoServer>,
}

impl std::fmt::Debug for RunningEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningEmulator")
            .field("api_url", &self.api_url)
            .field("aws_endpoint", &self.aws_endpoint)
            .finish_non_exhaustive()
    }
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT` of the HTTP API.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// A token with every scope, from the development issuer (`None` when an external
    /// issuer is configured).
    pub fn dev_token(&self) -> Option<&str> {
        self.dev_token.as_deref()
    }

    /// An HTTP client for the API that sends the development token with every request.
    pub fn api_client(&self, timeout: Duration) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) =
            self.dev_token.as_ref().and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        reqwest::Client::builder().timeout(timeout).default_headers(headers).build().unwrap_or_default()
    }

    /// Where [`RunningEmulator::dev_token`] was written.
    pub fn dev_token_path(&self) -> Option<&std::path::Path> {
        self.dev_token_path.as_deref()
    }

    /// The AWS emulator endpoint in use.
    pub fn aws_endpoint(&self) -> &str {
        &self.aws_endpoint
    }

    /// SDK configuration pointing at the AWS emulator (S3 clients also need
    /// `force_path_style(true)`).
    pub fn sdk_config(&self) -> &aws_config::SdkConfig {
        &self.sdk
    }

    /// The emulator's clock (moved by `POST /_emulator/clock`).
    pub fn clock(&self) -> Arc<clock::EmulatorClock> {
        self.clock.clone()
    }

    /// The functions of the stack (spec, resolved variables).
    pub fn functions(&self) -> &[Arc<Function>] {
        &self.functions
    }

    /// Stops accepting work, waits for in-flight requests, batches and scheduled
    /// invocations, then stops moto (if we started it).
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down: draining in-flight work");
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let Some(mut moto) = self.moto.take() {
            let _ = tokio::task::spawn_blocking(move || moto.stop()).await;
        }
        tracing::info!("emulator stopped");
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// SDK configuration for an AWS emulator endpoint (static test credentials, us-east-1).
pub async fn sdk_config_for(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(template::REGION)
        .test_credentials()
        .load()
        .await
}

/// `sdk` signing with the function's own access key: its logical id (see [`function_sdk_config`]).
pub fn function_sdk_config(sdk: &aws_config::SdkConfig, logical_id: &str) -> aws_config::SdkConfig {
    let credentials = aws_sdk_dynamodb::config::Credentials::new(
        function_access_key(logical_id),
        "handoff-emulator-secret",
        None,
        None,
        "handoff-emulator",
    );
    sdk.to_builder().credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(credentials)).build()
}

/// The access key id a function's requests are signed with in the emulator.
pub fn function_access_key(logical_id: &str) -> String {
    logical_id.to_string()
}

/// Provisions the template and starts every function. Returns once the HTTP API
/// accepts requests.
pub async fn start(options: EmulatorOptions) -> Result<RunningEmulator, EmulatorError> {
    let mut template = Template::load(&options.template_path)?;
    template.parameters.extend(options.parameter_overrides.clone());

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
        .await
        .map_err(|source| EmulatorError::Bind { port: options.port, source })?;
    let port = listener.local_addr().map_err(|source| EmulatorError::Bind { port: options.port, source })?.port();
    let api_url = format!("http://127.0.0.1:{port}");
    // With the development issuer, the console signs in there (unless told otherwise).
    let development_issuer = template.parameters.get("JwtIssuer").map(String::as_str) == Some(auth::DEV_ISSUER);
    if development_issuer {
        for (parameter, path) in
            [("ConsoleAuthorizationEndpoint", oidc::AUTHORIZE_PATH), ("ConsoleTokenEndpoint", oidc::TOKEN_PATH)]
        {
            let value = template.parameters.entry(parameter.to_string()).or_default();
            if value.is_empty() {
                *value = format!("{api_url}{path}");
            }
        }
    }

    let mut moto = None;
    let aws_endpoint = match &options.aws_endpoint {
        Some(ep) => {
            tracing::info!(endpoint = %ep, "using the AWS emulator from {AWS_ENDPOINT_ENV}");
            ep.trim_end_matches('/').to_string()
        }
        None => {
            let server = MotoServer::start_recording(options.aws_request_recording.as_deref()).await?;
            let ep = server.endpoint().to_string();
            moto = Some(server);
            ep
        }
    };
    let sdk = sdk_config_for(&aws_endpoint).await;
    let clients = Clients::new(&sdk);

    let mut ids = template.identities(&LocalUrls { aws_endpoint: aws_endpoint.clone(), api_url: api_url.clone() })?;
    provision::provision(&template, &mut ids, &clients).await?;

    let clock = Arc::new(clock::EmulatorClock::default());
    let mut functions = Vec::new();
    for spec in template.functions(&ids)? {
        let mut vars: HashMap<String, String> = spec.env.clone().into_iter().collect();
        vars.insert("HANDOFF_PUBLIC_BASE_URL".into(), api_url.clone());
        if development_issuer {
            vars.insert("HANDOFF_CONSOLE_DEVELOPMENT_ISSUER".into(), "true".into());
        }
        vars.insert("AWS_REGION".into(), template::REGION.into());
        vars.insert("AWS_LAMBDA_FUNCTION_NAME".into(), spec.name.clone());
        vars.insert(
            handoff_runtime::compose::SANDBOX_EXE_VARIABLE.into(),
            options.jq_sandbox_executable.display().to_string(),
        );
        vars.extend(options.env_overrides.clone());
        // Each function signs with its own access key, as each has its own role in AWS: a
        // recording of the requests then says which function made each one.
        let aws_env = AwsEnvironment {
            sdk: function_sdk_config(&sdk, &spec.logical_id),
            s3_force_path_style: true,
            clock: clock.clone(),
        };
        let handler = options.function_factory.build(&spec.binary, &vars, &aws_env).await.map_err(|source| {
            EmulatorError::Compose { function: spec.logical_id.clone(), binary: spec.binary.clone(), source }
        })?;
        functions.push(Arc::new(Function::new(spec, vars, handler)));
    }

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    // SQS event-source mappings.
    for f in &functions {
        for source in f.spec.sqs_events.iter().filter(|s| s.enabled) {
            let queue_id = ids.logical_id_for_arn(&source.queue_arn).ok_or_else(|| EmulatorError::UnknownQueue {
                function: f.spec.logical_id.clone(),
                event: source.event_name.clone(),
                queue_arn: source.queue_arn.clone(),
            })?;
            let queue_url = ids.ref_value(queue_id)?;
            for _ in 0..options.pollers_per_source.max(1) {
                let poller = sqs_poller::SqsPoller {
                    sqs: clients.sqs.clone(),
                    function: f.clone(),
                    source: source.clone(),
                    queue_url: queue_url.clone(),
                    wait_seconds: options.sqs_wait_seconds,
                };
                tracker.spawn(poller.run(cancel.clone()));
            }
        }
    }

    // Schedules.
    let by_arn: HashMap<String, Arc<Function>> = functions.iter().map(|f| (f.spec.arn.clone(), f.clone())).collect();
    let sched = scheduler::Scheduler::new(clients.scheduler.clone(), by_arn, options.scheduler_interval, clock.clone());
    tracker.spawn(sched.run(cancel.clone(), tracker.clone()));

    // HTTP API, behind the template's authorizers.
    let api_auth = template.http_api_auth(&ids)?;
    let uses_dev_issuer = api_auth.authorizers.values().any(|a| a.issuer == auth::DEV_ISSUER);
    let dev_issuer = if uses_dev_issuer { Some(auth::DevIssuer::load_or_create(&options.state_dir)?) } else { None };
    let mut authorizers = BTreeMap::new();
    for (name, spec) in &api_auth.authorizers {
        let authorizer = match &dev_issuer {
            Some(dev) if spec.issuer == auth::DEV_ISSUER => {
                auth::JwtAuthorizer::local(&spec.issuer, spec.audience.clone(), dev)
            }
            _ => auth::JwtAuthorizer::discovered(&spec.issuer, spec.audience.clone()),
        };
        authorizers.insert(name.clone(), authorizer);
    }
    let mut routes = http::RouteTable::default();
    for (i, f) in functions.iter().enumerate() {
        for r in &f.spec.http_routes {
            let authorizer = match &r.auth.authorizer {
                template::RouteAuthorizer::Public => None,
                template::RouteAuthorizer::Default => api_auth.default_authorizer.clone(),
                template::RouteAuthorizer::Named(name) => Some(name.clone()),
            };
            if let Some(name) = authorizer.as_ref().filter(|n| !authorizers.contains_key(*n)) {
                return Err(EmulatorError::UnknownAuthorizer {
                    function: f.spec.logical_id.clone(),
                    route: r.event_name.clone(),
                    authorizer: name.clone(),
                });
            }
            let guard = authorizer.map(|authorizer| http::RouteGuard { authorizer, scopes: r.auth.scopes.clone() });
            routes.add_guarded(&r.method, r.path.as_deref(), i, guard);
        }
    }
    // The development token, where the README says (audience: the first the template accepts).
    let (dev_token, dev_token_path) = match &dev_issuer {
        Some(dev) => {
            let audience = api_auth.authorizers.values().find_map(|a| a.audience.first().cloned());
            let token = dev.mint(
                "developer",
                &auth::ALL_SCOPES,
                audience.as_deref().unwrap_or(auth::DEV_AUDIENCE),
                auth::DEV_TOKEN_TTL,
            )?;
            let path = options.state_dir.join("dev-token");
            auth::write_token(&path, &token)
                .map_err(|source| EmulatorError::DevToken { path: path.clone(), source })?;
            (Some(token), Some(path))
        }
        None => (None, None),
    };
    let api_id = template
        .resources_of("AWS::Serverless::HttpApi")
        .next()
        .and_then(|r| ids.ref_value(&r.logical_id).ok())
        .unwrap_or_else(|| "local".into());
    let app = http::router(http::HttpState {
        routes: Arc::new(routes),
        authorizers: Arc::new(authorizers),
        issuer_keys: dev_issuer.as_ref().map(|d| Arc::new(d.jwks())),
        functions: Arc::new(functions.clone()),
        api_id,
        integration_timeout: options.http_integration_timeout,
        clock: clock.clone(),
        scheduler_interval: options.scheduler_interval,
        metrics: metrics::store(),
        sign_in: match &dev_issuer {
            Some(_) => {
                let audience = api_auth.authorizers.values().find_map(|a| a.audience.first().cloned());
                let issuer = auth::DevIssuer::load_or_create(&options.state_dir)?;
                Some(Arc::new(oidc::DevSignIn::new(
                    issuer,
                    audience.unwrap_or_else(|| auth::DEV_AUDIENCE.into()),
                    &api_url,
                )))
            }
            None => None,
        },
    });
    let shutdown = cancel.clone();
    tracker.spawn(async move {
        let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });

    tracing::info!(api = %api_url, aws = %aws_endpoint, functions = functions.len(), "emulator started");
    Ok(RunningEmulator {
        api_url,
        dev_token,
        dev_token_path,
        aws_endpoint,
        sdk,
        functions,
        clock,
        cancel,
        tracker,
        moto,
    })
}
