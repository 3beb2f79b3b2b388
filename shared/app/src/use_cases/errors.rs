//! The error list's use cases: someone resolves an entry with a note (`POST
//! /errors/{errorId}/resolve`), and the error-processing job re-processes each resolution
//! once — recovering the exchange from its failed step or its first collection step, or
//! running a failed secondary destination again (rules in [`handoff_core::error_list`]).

use crate::use_cases::recover::{recover_exchange, retry_step_now, ActionError, Recovering};
use handoff_core::error_list::{
    reprocess, resolve, ErrorId, ErrorState, Reprocess, Reprocessing, ResolveError, StoredError,
};
use handoff_core::ids::IntegrationCode;
use handoff_core::recovery::ResumeFrom;
use handoff_ports::{ErrorFilter, ErrorStore, PortError};

#[derive(Debug, thiserror::Error)]
pub enum ResolveFailure {
    #[error("error {0} does not exist")]
    Unknown(ErrorId),
    #[error(transparent)]
    Refused(ResolveError),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// `by` resolves `id` with `note`: the entry as it is then.
pub async fn resolve_error(
    store: &dyn ErrorStore,
    id: &ErrorId,
    by: &str,
    note: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<StoredError, ResolveFailure> {
    let entry = store.error(id).await?.ok_or_else(|| ResolveFailure::Unknown(id.clone()))?;
    let resolution = resolve(&entry, by, note, now).map_err(ResolveFailure::Refused)?;
    if !store.resolve_error(id, &resolution).await? {
        // Someone else resolved it between the read and the write: say who.
        let now_stored = store.error(id).await?.ok_or_else(|| ResolveFailure::Unknown(id.clone()))?;
        return Err(ResolveFailure::Refused(
            resolve(&now_stored, by, note, now)
                .err()
                .unwrap_or(ResolveError::AlreadyResolved { by: "someone".into(), at: String::new() }),
        ));
    }
    Ok(StoredError { state: ErrorState::Resolved, resolution: Some(resolution), ..entry })
}

/// What one re-processing pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reprocessed {
    /// Entries whose exchange (or destination) runs again.
    pub rerun: Vec<ErrorId>,
    /// Entries only recorded as seen (their exchange was recovered or finished meanwhile).
    pub recorded: usize,
}

/// Longest part of a resolution note quoted in the exchange's logs.
const NOTE_IN_LOG_CHARS: usize = 200;
const PAGE: u32 = 100;

/// Re-processes every resolution not yet re-processed (of one integration, if given). The
/// run goes first and its record after: a crash between them leaves an exchange recovered
/// since its failure, which the next pass only records ([`reprocess`]).
pub async fn reprocess_resolved(
    recovering: &Recovering<'_>,
    store: &dyn ErrorStore,
    integration_code: Option<IntegrationCode>,
) -> Result<Reprocessed, PortError> {
    let filter = ErrorFilter { state: Some(ErrorState::Resolved), integration_code, ..ErrorFilter::default() };
    let mut done = Reprocessed::default();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.errors(&filter, PAGE, cursor.as_deref()).await?;
        for entry in &page.items {
            let Some(resolution) = entry.pending_resolution() else { continue };
            let outcome = match reprocess_one(recovering, entry).await {
                Ok((outcome, rerun)) => {
                    if rerun {
                        done.rerun.push(entry.error_id.clone());
                    } else {
                        done.recorded += 1;
                    }
                    outcome
                }
                // Worth another pass: the next run tries again.
                Err(ActionError::Port(e)) => {
                    tracing::warn!(errorId = %entry.error_id, error = %e, "re-processing failed; the next run tries again");
                    continue;
                }
                Err(refused) => {
                    done.recorded += 1;
                    format!("not run again: {refused}")
                }
            };
            let now = recovering.effects.clock.now();
            let record = Reprocessing { resolution_at: resolution.at, at: now, outcome };
            if !store.record_reprocessing(&entry.error_id, &record).await? {
                tracing::info!(errorId = %entry.error_id, "the entry changed while it was re-processed (resolved again or re-opened)");
            }
            tracing::info!(errorId = %entry.error_id, outcome = %record.outcome, "resolved error re-processed");
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            return Ok(done);
        }
    }
}

/// Runs `entry`'s exchange again as [`reprocess`] decides: what happened, and whether
/// something runs again.
async fn reprocess_one(recovering: &Recovering<'_>, entry: &StoredError) -> Result<(String, bool), ActionError> {
    let id = &entry.error_id.exchange_id;
    let Some(detail) = recovering.effects.exchanges.get(id).await? else {
        return Ok(("the exchange no longer exists".into(), false));
    };
    let exchange = &detail.exchange;
    let from = match recovering.definitions.get(&exchange.integration_code, exchange.integration_version).await {
        Ok(Some(loaded)) => loaded.definition.reprocess_from,
        Ok(None) => ResumeFrom::FailedStep,
        Err(crate::definitions::DefinitionLoadError::Port(e)) => return Err(ActionError::Port(e)),
        Err(corrupt) => return Err(ActionError::Conflict(corrupt.to_string())),
    };
    let who = requested_by(entry);
    match reprocess(entry, exchange, from) {
        Reprocess::Recover(from) => {
            let recovered = recover_exchange(recovering, id, None, from, &who).await?;
            let whence = match from {
                ResumeFrom::FailedStep => "the failed step",
                ResumeFrom::Collection => "the first collection step",
            };
            Ok((
                format!("recovered from {whence} (step {}), generation {}", recovered.resumed_at, recovered.recoveries),
                true,
            ))
        }
        Reprocess::Reexecute(step) => {
            let attempt = retry_step_now(recovering, id, step, &who).await?;
            Ok((format!("destination step {step} runs again (attempt {attempt})"), true))
        }
        Reprocess::RecordOnly(why) => Ok((why.to_string(), false)),
    }
}

/// Who asked, in the exchange's and the endpoint's logs: the job, the entry and its resolution.
fn requested_by(entry: &StoredError) -> String {
    match &entry.resolution {
        Some(r) => {
            let note: String = r.note.chars().take(NOTE_IN_LOG_CHARS).collect();
            format!("the error-processing job (error {} resolved by {}: {note})", entry.error_id, r.by)
        }
        None => format!("the error-processing job (error {})", entry.error_id),
    }
}
