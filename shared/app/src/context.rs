//! Everything a function needs, wired once per warm instance.

use crate::definitions::DefinitionCache;
use crate::mappings::MappingCache;
use crate::secrets::CachedSecrets;
use handoff_ports::MappingRepository;
use handoff_ports::SecretStore;
use handoff_ports::{DataFileStore, ExchangeRepository, HandoffQueue, IntegrationRepository, ScheduleManager};
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
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            inline_payload_limit: 64 * 1024,
            definition_cache_ttl: Duration::from_secs(30),
            public_base_url: None,
            claim_lease: Duration::from_secs(60),
            outbox_delay: Duration::from_secs(60),
        }
    }
}

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
}

pub struct AppContext {
    pub integrations: Arc<dyn IntegrationRepository>,
    pub exchanges: Arc<dyn ExchangeRepository>,
    pub queue: Arc<dyn HandoffQueue>,
    pub files: Arc<dyn DataFileStore>,
    pub schedules: Arc<dyn ScheduleManager>,
    pub settings: AppSettings,
    /// Secrets, remembered briefly per warm function.
    pub secrets: Arc<dyn SecretStore>,
    pub definitions: DefinitionCache,
    /// Metadata mappings, cached like definitions (same TTL).
    pub mappings: MappingCache,
    pub http: reqwest::Client,
}

impl AppContext {
    pub fn new(ports: Ports, settings: AppSettings) -> Arc<Self> {
        let definitions = DefinitionCache::new(ports.integrations.clone(), settings.definition_cache_ttl);
        Arc::new(Self {
            integrations: ports.integrations,
            exchanges: ports.exchanges,
            queue: ports.queue,
            files: ports.files,
            schedules: ports.schedules,
            secrets: Arc::new(CachedSecrets::new(ports.secrets, SECRET_CACHE_TTL)),
            mappings: MappingCache::new(ports.mappings, settings.definition_cache_ttl),
            settings,
            definitions,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                // A silent peer fails after 25 s; a long transfer (a multi-GB data file
                // streamed in or out) does not — the function timeout bounds the whole.
                .read_timeout(Duration::from_secs(25))
                .build()
                .unwrap_or_default(),
        })
    }
}
