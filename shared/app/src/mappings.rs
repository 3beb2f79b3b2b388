//! Metadata mappings (named field/value translation tables, see
//! [`handoff_core::mapping`]): a per-warm-function cache in front of the storage port so a
//! transformation does not read its mapping for every message, while a `PUT` shows up
//! within the cache's TTL.

use crate::ttl::TtlMap;
use handoff_core::mapping::{parse_mapping, Mapping, MappingName};
use handoff_ports::{MappingRepository, PortError};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MappingLoadError {
    #[error("mapping '{name}' is stored but no longer valid: {problem}")]
    Corrupt { name: MappingName, problem: String },
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Parsed mappings, remembered for `ttl` per warm function.
pub struct MappingCache {
    repository: Arc<dyn MappingRepository>,
    entries: TtlMap<MappingName, Arc<Mapping>>,
}

impl MappingCache {
    pub fn new(repository: Arc<dyn MappingRepository>, ttl: Duration) -> Self {
        Self { repository, entries: TtlMap::new(ttl) }
    }

    /// The store behind the cache (the API reads and writes through it).
    pub fn repository(&self) -> &Arc<dyn MappingRepository> {
        &self.repository
    }

    /// The mapping, parsed; `None` if no mapping has that name.
    pub async fn get(&self, name: &MappingName) -> Result<Option<Arc<Mapping>>, MappingLoadError> {
        if let Some(hit) = self.entries.get(name) {
            return Ok(Some(hit));
        }
        let Some(stored) = self.repository.get(name).await? else {
            return Ok(None);
        };
        let mapping = parse_mapping(name.clone(), &stored.document)
            .map_err(|e| MappingLoadError::Corrupt { name: name.clone(), problem: e.to_string() })?;
        let mapping = Arc::new(mapping);
        self.remember(mapping.clone());
        Ok(Some(mapping))
    }

    /// Stores a freshly written mapping so this instance sees its own writes at once.
    pub fn remember(&self, mapping: Arc<Mapping>) {
        self.entries.insert(mapping.name.clone(), mapping);
    }
}
