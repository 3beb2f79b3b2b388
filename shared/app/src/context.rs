//! Everything a function needs, wired once per warm instance.

use crate::definitions::DefinitionCache;
use crate::mappings::MappingCache;
use crate::outbound::OutboundClient;
use crate::payloads::PayloadCodec;
use crate::secrets::CachedSecrets;
use handoff_core::expression::{JqRunner, SandboxLimits};
use handoff_core::heartbeat::HeartbeatPattern;
use handoff_core::network::OutboundPolicy;
use handoff_ports::MappingRepository;
use handoff_ports::SecretStore;
use handoff_ports::{
    Clock, DataFileStore, EndpointStore, ErrorTracker, EventQueue, ExchangeReads, ExchangeRepository, HandoffQueue,
    IntegrationRepository, JobRunLog, ScheduleManager, TopicPublisher, UnroutedStore,
};
use std::sync::Arc;
use std::time::Duration;

/// How long a warm function reuses a secret it has read (a rotation shows within this).
const SECRET_CACHE_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct AppSettings {
    /// Payloads larger than this go to the data file store (keep well under SQS's 256 KB).
    pub inline_payload_limit: usize,
    /// How long a warm function reuses a definition it has read.
    pub definition_cache_ttl: Duration,
    /// Absolute base URL of the HTTP API (for callback URLs), if known.
    pub public_base_url: Option<String>,
    /// How long a claimed side-effecting attempt stays exclusively owned (≥ function timeout).
    pub claim_lease: Duration,
    /// When an outbox entry (the handoff of an accepted callback or of a recovery, stored
    /// with the state change) falls due: long enough for the handoff sent at once to take it
    /// back first; the regular job hands a lost one on after it.
    pub outbox_delay: Duration,
    /// Where sub-steps may connect (`AllowedOutboundNetworks`).
    pub outbound: OutboundPolicy,
    /// The bounds of every jq run (`JqTimeoutMs`, `JqMaxOutputs`, `JqMaxOutputBytes`, `JqMaxMemoryMB`).
    pub jq: SandboxLimits,
    /// How long a finished exchange is kept before it is deleted (`ExchangeRetentionDays`);
    /// `None` keeps finished exchanges for ever.
    pub exchange_retention: Option<chrono::Duration>,
    /// How often the error-processing job re-drives one exchange at most
    /// (`AutoRecoveryLimit`); a failure past it is one the owner is told of.
    pub auto_recovery_limit: u32,
    /// The ping URL of scheduled integrations without their own `heartbeatUrl`
    /// (`IntegrationHeartbeatUrlPattern`).
    pub integration_heartbeats: Option<HeartbeatPattern>,
    /// Where the web console signs its users in.
    pub console: ConsoleSettings,
}

/// Where the console signs its users in (`ConsoleAuthorizationEndpoint`,
/// `ConsoleTokenEndpoint`, `ConsoleClientId`): without endpoints, the console says sign-in
/// is not configured.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub client_id: String,
    /// The scopes it asks for.
    pub scope: String,
    /// The emulator's development issuer: the console offers its two identities.
    pub development_issuer: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            authorization_endpoint: None,
            token_endpoint: None,
            client_id: "handoff-console".to_string(),
            scope: "openid handoff:read handoff:invoke handoff:operate handoff:admin".to_string(),
            development_issuer: false,
        }
    }
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            inline_payload_limit: 64 * 1024,
            definition_cache_ttl: Duration::from_secs(30),
            public_base_url: None,
            claim_lease: Duration::from_secs(60),
            outbox_delay: Duration::from_secs(60),
            outbound: OutboundPolicy::default(),
            jq: SandboxLimits::default(),
            exchange_retention: None,
            auto_recovery_limit: 3,
            integration_heartbeats: None,
            console: ConsoleSettings::default(),
        }
    }
}

/// The ports of a deployment, listed once: the composition root wires them, use cases
/// borrow the few they use.
pub struct Ports {
    pub integrations: Arc<dyn IntegrationRepository>,
    pub exchanges: Arc<dyn ExchangeRepository>,
    pub queue: Arc<dyn HandoffQueue>,
    pub files: Arc<dyn DataFileStore>,
    pub schedules: Arc<dyn ScheduleManager>,
    /// Credentials named by `secretRef` (Secrets Manager).
    pub secrets: Arc<dyn SecretStore>,
    /// Metadata mappings (`PUT /mappings/{name}`).
    pub mappings: Arc<dyn MappingRepository>,
    /// Each integration code's endpoint status (enabled, disabled, failed).
    pub endpoints: Arc<dyn EndpointStore>,
    /// Each endpoint's queue of events.
    pub events: Arc<dyn EventQueue>,
    /// Requests the API could not route, kept for replay.
    pub unrouted: Arc<dyn UnroutedStore>,
    /// What time it is (the emulator's clock moves when its time control says so).
    pub clock: Arc<dyn Clock>,
    /// Where system failures and panics are reported (none unless a DSN is configured).
    pub tracker: Arc<dyn ErrorTracker>,
    /// SNS topics `notify` targets name.
    pub topics: Arc<dyn TopicPublisher>,
    /// The scheduled jobs' last runs (for `GET /health/components`).
    pub job_runs: Arc<dyn JobRunLog>,
}

/// The ports with what a warm function instance keeps between invocations (caches, the
/// HTTP client) and its settings.
pub struct AppContext {
    /// Secrets here are the cached view: a warm function remembers one briefly.
    pub ports: Ports,
    pub settings: AppSettings,
    pub definitions: DefinitionCache,
    /// Metadata mappings, cached like definitions (same TTL).
    pub mappings: MappingCache,
    /// The guarded client of sub-steps' outbound calls.
    pub http: OutboundClient,
    /// Where jq programs run: the sandbox in a deployment (`crate::jq_sandbox`).
    pub jq: Arc<dyn JqRunner>,
}

impl AppContext {
    pub fn new(ports: Ports, settings: AppSettings, jq: Arc<dyn JqRunner>) -> Arc<Self> {
        let definitions = DefinitionCache::new(ports.integrations.clone(), settings.definition_cache_ttl);
        let mappings = MappingCache::new(ports.mappings.clone(), settings.definition_cache_ttl);
        let secrets: Arc<dyn SecretStore> = Arc::new(CachedSecrets::new(ports.secrets, SECRET_CACHE_TTL));
        let http = OutboundClient::new(settings.outbound.clone());
        Arc::new(Self { ports: Ports { secrets, ..ports }, mappings, settings, definitions, http, jq })
    }

    /// Payloads as this deployment stores them (inline up to the limit, else a data file).
    pub fn codec(&self) -> PayloadCodec {
        PayloadCodec::new(self.ports.files.clone(), self.settings.inline_payload_limit)
    }

    /// What running a decision's effects needs.
    pub fn effects(&self) -> EffectPorts<'_> {
        EffectPorts {
            exchanges: self.ports.exchanges.as_ref(),
            queue: self.ports.queue.as_ref(),
            endpoints: self.ports.endpoints.as_ref(),
            events: self.ports.events.as_ref(),
            clock: self.ports.clock.as_ref(),
            definitions: &self.definitions,
            http: &self.http,
            tracker: self.ports.tracker.as_ref(),
            topics: self.ports.topics.as_ref(),
            settings: &self.settings,
        }
    }
}

/// The ports effects touch: sending to the queues, reading a parent or its children, the
/// endpoints attempts tell of and their event queues; and what telling people of a write
/// needs ([`crate::telling`]): definitions, the outbound client, the error tracker, topics.
#[derive(Clone, Copy)]
pub struct EffectPorts<'a> {
    pub exchanges: &'a dyn ExchangeReads,
    pub queue: &'a dyn HandoffQueue,
    pub endpoints: &'a dyn EndpointStore,
    pub events: &'a dyn EventQueue,
    pub clock: &'a dyn Clock,
    pub definitions: &'a DefinitionCache,
    pub http: &'a OutboundClient,
    pub tracker: &'a dyn ErrorTracker,
    pub topics: &'a dyn TopicPublisher,
    pub settings: &'a AppSettings,
}
