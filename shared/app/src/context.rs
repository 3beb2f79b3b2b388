//! Everything a function needs, wired once per warm instance.

use crate::definitions::DefinitionCache;
use crate::ports::{DataFileStore, ExchangeRepository, HandoffQueue, IntegrationRepository, ScheduleManager};
use std::sync::Arc;
use std::time::Duration;

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
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            inline_payload_limit: 64 * 1024,
            definition_cache_ttl: Duration::from_secs(30),
            public_base_url: None,
            claim_lease: Duration::from_secs(60),
        }
    }
}

pub struct Ports {
    pub integrations: Arc<dyn IntegrationRepository>,
    pub exchanges: Arc<dyn ExchangeRepository>,
    pub queue: Arc<dyn HandoffQueue>,
    pub files: Arc<dyn DataFileStore>,
    pub schedules: Arc<dyn ScheduleManager>,
}

pub struct AppContext {
    pub integrations: Arc<dyn IntegrationRepository>,
    pub exchanges: Arc<dyn ExchangeRepository>,
    pub queue: Arc<dyn HandoffQueue>,
    pub files: Arc<dyn DataFileStore>,
    pub schedules: Arc<dyn ScheduleManager>,
    pub settings: AppSettings,
    pub definitions: DefinitionCache,
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
            settings,
            definitions,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(25))
                .build()
                .unwrap_or_default(),
        })
    }
}
