//! Defining integrations: a new version (valid, its mappings present), a change to a stored
//! version (only what [`handoff_core::amendment`] allows), and the schedule, which follows
//! the highest enabled version of a code while its endpoint runs. A new code gets its
//! endpoint, `Disabled` unless the request asks `"endpointStatus": "Enabled"`.

use crate::context::AppContext;
use crate::definitions::{DefinitionCache, LoadedIntegration};
use crate::mappings::{MappingCache, MappingLoadError};
use handoff_core::amendment::amended;
use handoff_core::definition::{parse_definition, ScheduleSpec, StepAction};
use handoff_core::endpoint::{Endpoint, EndpointStatus};
use handoff_core::ids::{IntegrationCode, IntegrationVersion};
use handoff_core::reader::FieldError;
use handoff_ports::{
    Clock, EndpointStore, EndpointWriteError, HandoffQueue, IntegrationRepository, IntegrationWriteError, PortError,
    ScheduleManager, StoredIntegration,
};
use serde_json::{json, Value};
use std::sync::Arc;

/// The ports defining integrations uses.
pub struct Integrations<'a> {
    pub integrations: &'a dyn IntegrationRepository,
    /// This instance sees its own writes at once.
    pub definitions: &'a DefinitionCache,
    pub mappings: &'a MappingCache,
    pub schedules: &'a dyn ScheduleManager,
    pub endpoints: &'a dyn EndpointStore,
    /// Handoffs held at an endpoint go out again when it runs again.
    pub queue: &'a dyn HandoffQueue,
    pub clock: &'a dyn Clock,
}

impl<'a> Integrations<'a> {
    pub fn of(ctx: &'a AppContext) -> Self {
        Self {
            integrations: ctx.ports.integrations.as_ref(),
            definitions: &ctx.definitions,
            mappings: &ctx.mappings,
            schedules: ctx.ports.schedules.as_ref(),
            endpoints: ctx.ports.endpoints.as_ref(),
            queue: ctx.ports.queue.as_ref(),
            clock: ctx.ports.clock.as_ref(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DefineError {
    /// The definition is not valid (the field says where).
    #[error("{0}")]
    InvalidDefinition(FieldError),
    /// Valid as a document, but no plan can be made of it.
    #[error("{0}")]
    Unusable(String),
    /// The change names a field that may not change.
    #[error("{0}")]
    InvalidChange(FieldError),
    /// A mapping it references is stored but unusable.
    #[error("{0}")]
    MappingUnusable(String),
    #[error("integration {code} version {version} does not exist")]
    NotFound { code: IntegrationCode, version: IntegrationVersion },
    #[error(transparent)]
    Write(#[from] IntegrationWriteError),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Where a code's schedule stands after a change.
#[derive(Debug)]
pub enum ScheduleState {
    Active {
        spec: ScheduleSpec,
        follows: Option<IntegrationVersion>,
    },
    None,
    /// The change is stored but the schedule could not be made to match it.
    OutOfSync(PortError),
}

/// A stored version as a change left it, its code's endpoint and schedule.
#[derive(Debug)]
pub struct Defined {
    pub stored: StoredIntegration,
    pub endpoint: Endpoint,
    pub schedule: ScheduleState,
}

/// Stores `document` as a new version created `by` a caller (the highest enabled one is
/// what new exchanges run).
pub async fn define_integration(ctx: &Integrations<'_>, mut document: Value, by: &str) -> Result<Defined, DefineError> {
    let requested = take_endpoint_status(&mut document)?;
    let definition = parse_definition(&document).map_err(DefineError::InvalidDefinition)?;
    if let Value::Object(map) = &mut document {
        map.insert("enabled".into(), Value::Bool(definition.enabled));
        map.insert("version".into(), json!(definition.version));
    }
    let now = ctx.clock.now();
    let stored = StoredIntegration {
        code: definition.code.clone(),
        version: definition.version,
        enabled: definition.enabled,
        document,
        revision: 1,
        created_at: now,
        updated_at: now,
        created_by: Some(by.to_string()),
        updated_by: Some(by.to_string()),
    };
    let loaded = LoadedIntegration::from_stored(stored.clone()).map_err(|e| DefineError::Unusable(e.to_string()))?;
    check_mappings(ctx, &loaded).await?;
    // The endpoint before the first version: a code never runs without one saying so.
    let endpoint = match endpoint_of(ctx.endpoints, ctx.integrations, &stored.code).await? {
        Some(existing) => existing,
        None => {
            let status = requested.unwrap_or(EndpointStatus::Disabled);
            let new = Endpoint::new(stored.code.clone(), status, by, now);
            match ctx.endpoints.save_endpoint(&new).await {
                Ok(saved) => saved,
                // Another request created the code at the same moment: its endpoint stands.
                Err(EndpointWriteError::RevisionConflict) => ctx.endpoints.endpoint(&stored.code).await?.unwrap_or(new),
                Err(EndpointWriteError::Port(e)) => return Err(e.into()),
            }
        }
    };
    ctx.integrations.create(&stored).await?;
    ctx.definitions.remember(Arc::new(loaded));
    let schedule = sync_schedule(ctx, &stored.code, &endpoint).await;
    Ok(Defined { stored, endpoint, schedule })
}

/// The request's `endpointStatus` (not part of the definition): how a new code starts.
fn take_endpoint_status(document: &mut Value) -> Result<Option<EndpointStatus>, DefineError> {
    let Some(value) = document.as_object_mut().and_then(|map| map.remove("endpointStatus")) else {
        return Ok(None);
    };
    match value.as_str().and_then(EndpointStatus::parse) {
        Some(status @ (EndpointStatus::Enabled | EndpointStatus::Disabled)) => Ok(Some(status)),
        _ => Err(DefineError::InvalidDefinition(FieldError::new(
            "endpointStatus",
            format!("must be \"Enabled\" or \"Disabled\", found {value}"),
        ))),
    }
}

/// The endpoint of `code`: as stored; for a code defined before endpoints were stored,
/// running as it did; `None` when the code has neither an endpoint nor a version.
pub async fn endpoint_of(
    endpoints: &dyn EndpointStore,
    integrations: &dyn IntegrationRepository,
    code: &IntegrationCode,
) -> Result<Option<Endpoint>, PortError> {
    if let Some(stored) = endpoints.endpoint(code).await? {
        return Ok(Some(stored));
    }
    Ok(unrecorded_endpoint(code, &integrations.versions(code).await?))
}

/// The endpoint of a code with these `versions` and no stored endpoint (defined before
/// endpoints were stored): running since its first version; `None` without versions.
pub fn unrecorded_endpoint(code: &IntegrationCode, versions: &[StoredIntegration]) -> Option<Endpoint> {
    versions.iter().map(|v| v.created_at).min().map(|since| Endpoint::unrecorded(code.clone(), since))
}

/// The version new exchanges run (the highest enabled one) and its schedule, if it has one.
pub fn active_schedule(versions: &[StoredIntegration]) -> Option<(IntegrationVersion, ScheduleSpec)> {
    let active = versions.iter().filter(|v| v.enabled).max_by_key(|v| v.version)?;
    let schedule = parse_definition(&active.document).ok()?.schedule?;
    Some((active.version, schedule))
}

/// Applies `patch` to a stored version on behalf of `by` (optimistically: a concurrent
/// change is refused).
pub async fn amend_integration(
    ctx: &Integrations<'_>,
    code: &IntegrationCode,
    version: IntegrationVersion,
    patch: &Value,
    by: &str,
) -> Result<Defined, DefineError> {
    let current = ctx
        .integrations
        .get(code, version)
        .await?
        .ok_or_else(|| DefineError::NotFound { code: code.clone(), version })?;
    let document = amended(&current.document, patch).map_err(DefineError::InvalidChange)?;
    let definition = parse_definition(&document).map_err(DefineError::InvalidDefinition)?;
    let updated = StoredIntegration {
        enabled: definition.enabled,
        document,
        revision: current.revision + 1,
        updated_at: ctx.clock.now(),
        updated_by: Some(by.to_string()),
        ..current.clone()
    };
    ctx.integrations.replace(&updated, current.revision).await?;
    if let Ok(loaded) = LoadedIntegration::from_stored(updated.clone()) {
        ctx.definitions.remember(Arc::new(loaded));
    }
    let endpoint = endpoint_of(ctx.endpoints, ctx.integrations, code)
        .await?
        .unwrap_or_else(|| Endpoint::unrecorded(code.clone(), updated.created_at));
    let schedule = sync_schedule(ctx, code, &endpoint).await;
    Ok(Defined { stored: updated, endpoint, schedule })
}

/// A definition may only reference mappings that exist: a typo is refused naming the step,
/// rather than failing exchanges later.
async fn check_mappings(ctx: &Integrations<'_>, loaded: &LoadedIntegration) -> Result<(), DefineError> {
    for (index, step) in loaded.definition.steps.iter().enumerate() {
        if let StepAction::Transformation { mapping: Some(name), .. } = &step.action {
            let found = ctx.mappings.get(name).await.map_err(|e| match e {
                MappingLoadError::Port(port) => DefineError::Port(port),
                corrupt => DefineError::MappingUnusable(corrupt.to_string()),
            })?;
            if found.is_none() {
                return Err(DefineError::InvalidDefinition(FieldError::new(
                    format!("steps[{index}].mapping"),
                    format!("mapping '{name}' does not exist (PUT /mappings/{name} first)"),
                )));
            }
        }
    }
    Ok(())
}

/// The schedule follows the highest enabled version unless the endpoint is Disabled:
/// created, updated or removed to match (a disabled endpoint has no schedule, so no run
/// fires; a Failed one keeps it and logs each run it skips).
pub(crate) async fn sync_schedule(
    ctx: &Integrations<'_>,
    code: &IntegrationCode,
    endpoint: &Endpoint,
) -> ScheduleState {
    let outcome = async {
        let versions = ctx.integrations.versions(code).await?;
        let schedule = active_schedule(&versions).filter(|_| endpoint.status.keeps_schedule());
        match &schedule {
            Some((_, spec)) => ctx.schedules.upsert(code, spec).await?,
            None => ctx.schedules.remove(code).await?,
        }
        Ok::<_, PortError>(schedule.map(|(version, spec)| ScheduleState::Active { spec, follows: Some(version) }))
    }
    .await;
    match outcome {
        Ok(Some(active)) => active,
        Ok(None) => ScheduleState::None,
        Err(e) => ScheduleState::OutOfSync(e),
    }
}
