//! The errors operators and customers work through (`/errors`): one entry per failing step
//! of an exchange (or the exchange itself, for an SLA), open until someone resolves it with
//! a note, open again when that step fails again. The error-processing job then
//! re-processes each resolution once (see [`reprocess`]). Pure rules; the stores apply
//! them under the preconditions named here.

use crate::commit::ErrorRecord;
use crate::exchange::{Exchange, ExchangeStatus};
use crate::ids::{ExchangeId, StepId};
use crate::recovery::ResumeFrom;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifies an entry: `<exchangeId>.<stepId>`, or `<exchangeId>.exchange` for a failure
/// of the exchange as a whole. Derived from what failed, so the same step failing again
/// finds (and re-opens) the same entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorId {
    pub exchange_id: ExchangeId,
    pub step_id: Option<StepId>,
}

const WHOLE_EXCHANGE: &str = "exchange";

impl ErrorId {
    pub fn of(record: &ErrorRecord) -> Self {
        Self { exchange_id: record.exchange_id.clone(), step_id: record.step_id }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("'{text}' is not an error id (<exchangeId>.<stepId> or <exchangeId>.exchange)");
        let (exchange, step) = text.rsplit_once('.').ok_or_else(invalid)?;
        let exchange_ok = !exchange.is_empty()
            && exchange.len() <= 128
            && exchange.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !exchange_ok {
            return Err(invalid());
        }
        let step_id = match step {
            WHOLE_EXCHANGE => None,
            digits if !digits.is_empty() && digits.len() <= 6 && digits.chars().all(|c| c.is_ascii_digit()) => {
                Some(StepId::from_sequence(digits.parse().map_err(|_| invalid())?))
            }
            _ => return Err(invalid()),
        };
        Ok(Self { exchange_id: ExchangeId::new(exchange), step_id })
    }
}

impl fmt::Display for ErrorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.step_id {
            Some(step) => write!(f, "{}.{}", self.exchange_id, step.sequence()),
            None => write!(f, "{}.{WHOLE_EXCHANGE}", self.exchange_id),
        }
    }
}

impl utoipa::PartialSchema for ErrorId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("`<exchangeId>.<step sequence>`, or `<exchangeId>.exchange`."))
            .into()
    }
}

impl utoipa::ToSchema for ErrorId {}

impl Serialize for ErrorId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ErrorId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorState {
    /// Someone has to act.
    Open,
    /// Someone said the cause is fixed (with a note); the error job takes it from there.
    Resolved,
}

impl ErrorState {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "open" => Ok(Self::Open),
            "resolved" => Ok(Self::Resolved),
            other => Err(format!("'{other}' is not an error state (open or resolved)")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Resolved => "resolved",
        }
    }
}

/// Who resolved an entry, when, and what they did about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resolution {
    pub by: String,
    pub note: String,
    pub at: DateTime<Utc>,
}

/// What the error job did with a resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reprocessing {
    /// The resolution it acted on (its `at`): each resolution is re-processed once.
    pub resolution_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
    /// What it did, in words (`recovered at generation 2 from step 1`).
    pub outcome: String,
}

/// An entry as stored and listed: the last failure of its step, and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredError {
    pub error_id: ErrorId,
    #[serde(flatten)]
    pub record: ErrorRecord,
    pub state: ErrorState,
    /// How often the step failed this way (a failure after a resolution re-opens the entry).
    pub occurrences: u32,
    /// The latest resolution (kept when the entry re-opens, so the history shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprocessing: Option<Reprocessing>,
}

impl StoredError {
    /// A first failure of its step: open.
    pub fn first(record: ErrorRecord) -> Self {
        Self {
            error_id: ErrorId::of(&record),
            record,
            state: ErrorState::Open,
            occurrences: 1,
            resolution: None,
            reprocessing: None,
        }
    }

    /// The same step failed again: the newer failure, open again, its history kept.
    pub fn recurred(self, record: ErrorRecord) -> Self {
        Self { record, state: ErrorState::Open, occurrences: self.occurrences + 1, ..self }
    }

    /// The resolution waiting for the error job, if any.
    pub fn pending_resolution(&self) -> Option<&Resolution> {
        let resolution = self.resolution.as_ref().filter(|_| self.state == ErrorState::Resolved)?;
        let done = self.reprocessing.as_ref().is_some_and(|r| r.resolution_at == resolution.at);
        (!done).then_some(resolution)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("the note is empty: say what was fixed")]
    EmptyNote,
    #[error("the note is longer than {MAX_NOTE_CHARS} characters")]
    NoteTooLong,
    #[error("the error is resolved already (by {by} at {at})")]
    AlreadyResolved { by: String, at: String },
}

/// A resolution note is kept to this many characters.
pub const MAX_NOTE_CHARS: usize = 1000;

/// `by` resolves `error` with `note`; the store writes it only while the entry is still
/// open (`state = open`), so of two resolutions at once one wins.
pub fn resolve(error: &StoredError, by: &str, note: &str, now: DateTime<Utc>) -> Result<Resolution, ResolveError> {
    let note = note.trim();
    if note.is_empty() {
        return Err(ResolveError::EmptyNote);
    }
    if note.chars().count() > MAX_NOTE_CHARS {
        return Err(ResolveError::NoteTooLong);
    }
    if error.state == ErrorState::Resolved {
        let by = error.resolution.as_ref().map_or("someone", |r| r.by.as_str()).to_string();
        let at = error.resolution.as_ref().map(|r| r.at.to_rfc3339()).unwrap_or_default();
        return Err(ResolveError::AlreadyResolved { by, at });
    }
    Ok(Resolution { by: by.to_string(), note: note.to_string(), at: now })
}

/// What the error job does with a resolved entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reprocess {
    /// Recover the exchange (it failed because of this entry and nobody has since).
    Recover(ResumeFrom),
    /// Run the failed secondary destination of the Completed exchange again.
    Reexecute(StepId),
    /// Nothing to run (recovered since, or not failed any more): only record that the
    /// resolution was seen, with why.
    RecordOnly(&'static str),
}

/// The decision for `error` (resolved, not yet re-processed) given its exchange as it is now.
pub fn reprocess(error: &StoredError, exchange: &Exchange, from: ResumeFrom) -> Reprocess {
    let record = &error.record;
    if exchange.recoveries != record.recovery {
        return Reprocess::RecordOnly("the exchange was recovered since it failed");
    }
    match (exchange.status, record.exchange_failed, record.step_id) {
        (ExchangeStatus::Failed | ExchangeStatus::TimedOut, true, _) => Reprocess::Recover(from),
        (ExchangeStatus::Completed, false, Some(step)) => Reprocess::Reexecute(step),
        _ => Reprocess::RecordOnly("the exchange is not failed because of this error any more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_code::ErrorCode;
    use crate::ids::IntegrationCode;
    use crate::retry::Failure;
    use proptest::prelude::*;

    fn record(step: Option<u32>, recovery: u32, exchange_failed: bool) -> ErrorRecord {
        let failure = Failure::business(ErrorCode::TargetRejected, "target answered HTTP 422");
        let step = step.map(|s| (StepId::from_sequence(s), crate::plan::SubStep::DeliverRest));
        let code = IntegrationCode::parse("ORDERS").expect("code");
        ErrorRecord {
            recovery,
            ..ErrorRecord::of(&ExchangeId::new("ex-1"), &code, step, &failure, exchange_failed, Utc::now())
        }
    }

    fn exchange(status: ExchangeStatus, recoveries: u32) -> Exchange {
        let now = Utc::now();
        Exchange {
            exchange_id: ExchangeId::new("ex-1"),
            integration_code: IntegrationCode::parse("ORDERS").expect("code"),
            integration_version: crate::ids::IntegrationVersion::number(1).expect("version"),
            status,
            parameters: serde_json::Value::Null,
            created_at: now,
            updated_at: now,
            completed_at: None,
            error: None,
            recoveries,
            parent: None,
            result: None,
            trigger: None,
        }
    }

    #[test]
    fn an_id_names_the_exchange_and_the_step_and_reads_back() {
        let at_step = ErrorId::of(&record(Some(3), 0, true));
        assert_eq!(at_step.to_string(), "ex-1.3");
        assert_eq!(ErrorId::parse("ex-1.3"), Ok(at_step));
        let whole = ErrorId::of(&record(None, 0, true));
        assert_eq!(whole.to_string(), "ex-1.exchange");
        assert_eq!(ErrorId::parse("ex-1.exchange"), Ok(whole));
        for bad in ["", "ex-1", "ex-1.", ".3", "ex-1.x", "ex/1.3", "ex-1.1234567", "ex-1.-3"] {
            assert!(ErrorId::parse(bad).is_err(), "{bad} parsed");
        }
    }

    proptest! {
        #[test]
        fn every_id_reads_back_as_itself(exchange in "[A-Za-z0-9_-]{1,40}", step in proptest::option::of(0u32..10_000)) {
            let id = ErrorId { exchange_id: ExchangeId::new(&exchange), step_id: step.map(StepId::from_sequence) };
            prop_assert_eq!(ErrorId::parse(&id.to_string()), Ok(id));
        }
    }

    #[test]
    fn resolving_needs_a_note_and_an_open_entry() {
        let open = StoredError::first(record(Some(2), 0, true));
        let now = Utc::now();
        assert_eq!(resolve(&open, "alice", "  ", now), Err(ResolveError::EmptyNote));
        assert_eq!(resolve(&open, "alice", &"x".repeat(MAX_NOTE_CHARS + 1), now), Err(ResolveError::NoteTooLong));
        let resolution = resolve(&open, "alice", " fixed the postcode ", now).expect("resolves");
        assert_eq!(resolution.note, "fixed the postcode");
        let resolved = StoredError { state: ErrorState::Resolved, resolution: Some(resolution), ..open };
        assert!(
            matches!(resolve(&resolved, "bob", "again", now), Err(ResolveError::AlreadyResolved { by, .. }) if by == "alice")
        );
    }

    #[test]
    fn a_resolution_is_pending_until_reprocessed_and_a_recurrence_reopens_with_history() {
        let open = StoredError::first(record(Some(2), 0, true));
        assert_eq!(open.pending_resolution(), None);
        let resolution = resolve(&open, "alice", "fixed", Utc::now()).expect("resolves");
        let resolved = StoredError { state: ErrorState::Resolved, resolution: Some(resolution.clone()), ..open };
        assert_eq!(resolved.pending_resolution(), Some(&resolution));
        let reprocessing = Reprocessing { resolution_at: resolution.at, at: Utc::now(), outcome: "recovered".into() };
        let done = StoredError { reprocessing: Some(reprocessing), ..resolved };
        assert_eq!(done.pending_resolution(), None);
        let again = done.recurred(record(Some(2), 1, true));
        assert_eq!((again.state, again.occurrences, again.record.recovery), (ErrorState::Open, 2, 1));
        assert_eq!(again.resolution.as_ref().map(|r| r.by.as_str()), Some("alice"));
        assert_eq!(again.pending_resolution(), None);
    }

    #[test]
    fn the_job_recovers_only_what_failed_because_of_the_entry_at_its_generation() {
        let failed_here = StoredError::first(record(Some(2), 1, true));
        let from = ResumeFrom::Collection;
        assert_eq!(reprocess(&failed_here, &exchange(ExchangeStatus::Failed, 1), from), Reprocess::Recover(from));
        assert_eq!(reprocess(&failed_here, &exchange(ExchangeStatus::TimedOut, 1), from), Reprocess::Recover(from));
        assert!(matches!(
            reprocess(&failed_here, &exchange(ExchangeStatus::Failed, 2), from),
            Reprocess::RecordOnly(_)
        ));
        assert!(matches!(
            reprocess(&failed_here, &exchange(ExchangeStatus::Completed, 1), from),
            Reprocess::RecordOnly(_)
        ));
        let secondary = StoredError::first(record(Some(4), 0, false));
        assert_eq!(
            reprocess(&secondary, &exchange(ExchangeStatus::Completed, 0), from),
            Reprocess::Reexecute(StepId::from_sequence(4))
        );
        assert!(matches!(reprocess(&secondary, &exchange(ExchangeStatus::Started, 0), from), Reprocess::RecordOnly(_)));
    }
}
