//! Definitions cached per warm function instance: a handoff should not re-read the
//! integration for every message (cost), but changes must show up within the TTL.

use crate::ttl::TtlMap;
use handoff_core::definition::{parse_definition, IntegrationDefinition};
use handoff_core::ids::{IntegrationCode, IntegrationVersion};
use handoff_core::machine::Pipeline;
use handoff_core::plan::{plan, PlannedSubStep};
use handoff_ports::{IntegrationRepository, PortError, StoredIntegration};
use std::sync::Arc;
use std::time::Duration;

/// A stored version with its parsed definition and plan.
#[derive(Debug)]
pub struct LoadedIntegration {
    pub stored: StoredIntegration,
    pub definition: IntegrationDefinition,
    pub plan: Vec<PlannedSubStep>,
}

impl LoadedIntegration {
    pub fn from_stored(stored: StoredIntegration) -> Result<Self, DefinitionLoadError> {
        let definition = parse_definition(&stored.document).map_err(|e| DefinitionLoadError::Corrupt {
            code: stored.code.clone(),
            version: stored.version,
            problem: e.to_string(),
        })?;
        let plan = plan(&definition);
        Ok(Self { stored, definition, plan })
    }

    /// The definition and plan, as the state machine takes them.
    pub fn pipeline(&self) -> Pipeline<'_> {
        Pipeline { definition: &self.definition, plan: &self.plan }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DefinitionLoadError {
    #[error("integration {code} version {version} is stored but no longer valid: {problem}")]
    Corrupt { code: IntegrationCode, version: IntegrationVersion, problem: String },
    #[error(transparent)]
    Port(#[from] PortError),
}

type Key = (IntegrationCode, IntegrationVersion);

pub struct DefinitionCache {
    repository: Arc<dyn IntegrationRepository>,
    entries: TtlMap<Key, Arc<LoadedIntegration>>,
}

impl DefinitionCache {
    pub fn new(repository: Arc<dyn IntegrationRepository>, ttl: Duration) -> Self {
        Self { repository, entries: TtlMap::new(ttl) }
    }

    pub async fn get(
        &self,
        code: &IntegrationCode,
        version: IntegrationVersion,
    ) -> Result<Option<Arc<LoadedIntegration>>, DefinitionLoadError> {
        let key = (code.clone(), version);
        if let Some(hit) = self.entries.get(&key) {
            return Ok(Some(hit));
        }
        let Some(stored) = self.repository.get(code, version).await? else {
            return Ok(None);
        };
        let loaded = Arc::new(LoadedIntegration::from_stored(stored)?);
        self.remember(loaded.clone());
        Ok(Some(loaded))
    }

    /// Stores a freshly written version so this instance sees its own writes at once.
    pub fn remember(&self, loaded: Arc<LoadedIntegration>) {
        self.entries.insert((loaded.stored.code.clone(), loaded.stored.version), loaded);
    }
}
