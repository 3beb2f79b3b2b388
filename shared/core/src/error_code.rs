//! The error catalogue: one stable code per kind of failure, and the sentence that tells
//! whoever must act what to fix. Every [`crate::retry::Failure`] carries a code; the step,
//! the exchange and `/errors` keep it, and `/errors` shows the action beside it. This
//! table is the one place the wording lives (the README's catalogue is checked against it).

use crate::retry::ErrorClassification;
use serde::{Deserialize, Serialize};

/// What went wrong, in words a customer can look up. Stable: stored with every error and
/// matched on by whoever automates around them; a new kind of failure gets a new code.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
pub enum ErrorCode {
    /// A target answered 4xx (other than 429): it refuses this data.
    TargetRejected,
    /// The payload is not in the format the step reads, or is several files where one
    /// body is expected.
    InvalidPayload,
    /// One record of the data is invalid (a required field, a wrong type, a bad value).
    InvalidRecord,
    /// A request names a parameter the exchange does not have, or its value cannot be used.
    InvalidParameters,
    /// A value has no translation in the value mapping the step uses.
    UnmappedValue,
    /// The step names a value mapping that does not exist.
    MappingMissing,
    /// A jq program of the integration failed on the data.
    ExpressionFailed,
    /// A jq program went over a limit of the deployment (time, memory, outputs, size).
    ExpressionLimit,
    /// The external system (or agent) reported that the work failed.
    CallbackFailure,
    /// No callback arrived before the step's timeout.
    CallbackTimeout,
    /// The requester did not sign the exchange off in time.
    SignoffTimeout,
    /// The exchange ran longer than its SLA (or its parent's).
    SlaExceeded,
    /// An address the integration calls is not allowed or not valid (network policy, URL,
    /// redirect).
    DestinationRefused,
    /// A delivery had nothing to deliver: the steps before produced no payload.
    NothingToDeliver,
    /// An SFTP server refused the login or the operation.
    SftpRefused,
    /// A subflow's function or sub-integration is not usable.
    SubflowInvalid,
    /// Sub-exchanges of a subflow did not complete.
    SubExchangesFailed,
    /// A system could not be reached or was overloaded (connection, timeout, 429, 5xx, AWS
    /// throttling): worth another attempt.
    Unavailable,
    /// The gateway's side is broken in a way a retry does not fix: a secret, a permission,
    /// a setting of the deployment, or a bug.
    SystemFault,
    /// Recorded before errors carried codes. (Keep it last: the catalogue is in this order.)
    #[default]
    Unclassified,
}

/// One row of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub code: ErrorCode,
    /// Who usually acts: the customer (business) or the operators (system).
    pub classification: ErrorClassification,
    /// What happened, in one line.
    pub meaning: &'static str,
    /// What to do about it, addressed to whoever must act.
    pub action: &'static str,
}

use ErrorClassification::{Business, System};

/// Every code, in the order the README lists them.
pub const CATALOGUE: &[CatalogueEntry] = &[
    CatalogueEntry {
        code: ErrorCode::TargetRejected,
        classification: Business,
        meaning: "A target system refused the data (HTTP 4xx other than 429).",
        action: "Read the target's answer in the step's log, correct the record in the source system (or the mapping that produced it), then resolve the error: the error job sends it again.",
    },
    CatalogueEntry {
        code: ErrorCode::InvalidPayload,
        classification: Business,
        meaning: "The payload is not in the format the step reads, or is several files where one body is expected.",
        action: "Correct the file or message at its source, or the integration's input format, then resolve the error (with \"errorProcessing\": {\"from\": \"collection\"} the job fetches it again).",
    },
    CatalogueEntry {
        code: ErrorCode::InvalidRecord,
        classification: Business,
        meaning: "A record of the data is invalid; the message names the record and the field.",
        action: "Fix the named record in the source system, then resolve the error.",
    },
    CatalogueEntry {
        code: ErrorCode::InvalidParameters,
        classification: Business,
        meaning: "A request names a parameter the exchange was not given, or the parameter's value cannot be used there.",
        action: "Start a new exchange with the parameter set right, or correct the request in a new version of the integration and recover onto it.",
    },
    CatalogueEntry {
        code: ErrorCode::UnmappedValue,
        classification: Business,
        meaning: "A value has no translation in the value mapping the step uses.",
        action: "Add the value to the mapping (PUT /mappings/{name}) or correct it in the source record, then resolve the error.",
    },
    CatalogueEntry {
        code: ErrorCode::MappingMissing,
        classification: Business,
        meaning: "The step names a value mapping that does not exist.",
        action: "Create the mapping (PUT /mappings/{name}), then resolve the error.",
    },
    CatalogueEntry {
        code: ErrorCode::ExpressionFailed,
        classification: Business,
        meaning: "A jq program of the integration failed on the data.",
        action: "Correct the data it failed on, or the program in a new version of the integration (then recover onto that version), and resolve the error.",
    },
    CatalogueEntry {
        code: ErrorCode::ExpressionLimit,
        classification: Business,
        meaning: "A jq program went over a limit of the deployment (time, memory, number or size of outputs).",
        action: "Send less data per exchange (smaller pages, a subflow) or ask the operators to raise the Jq* limit the message names, then resolve the error.",
    },
    CatalogueEntry {
        code: ErrorCode::CallbackFailure,
        classification: Business,
        meaning: "The external system or agent reported that the work failed.",
        action: "Read its report in the step's log, fix the cause in that system, then resolve the error.",
    },
    CatalogueEntry {
        code: ErrorCode::CallbackTimeout,
        classification: System,
        meaning: "No callback arrived before the step's timeout.",
        action: "Find out in the external system why it never answered (search for the exchange id); once it can, recover the exchange or resolve the error.",
    },
    CatalogueEntry {
        code: ErrorCode::SignoffTimeout,
        classification: System,
        meaning: "The requester did not sign the exchange off in time.",
        action: "Ask the requester to sign off (or raise signoffTimeoutSeconds), then recover the exchange or resolve the error.",
    },
    CatalogueEntry {
        code: ErrorCode::SlaExceeded,
        classification: System,
        meaning: "The exchange (or its parent) ran longer than its SLA.",
        action: "Find the slow step in the exchange's steps; raise slaSeconds if the SLA is too tight, then recover the exchange.",
    },
    CatalogueEntry {
        code: ErrorCode::DestinationRefused,
        classification: Business,
        meaning: "An address the integration calls is not allowed or not valid (network policy, malformed URL, redirect).",
        action: "Correct the address in a new version of the integration (then recover onto it), or ask the operators to allow the network (AllowedOutboundNetworks).",
    },
    CatalogueEntry {
        code: ErrorCode::NothingToDeliver,
        classification: Business,
        meaning: "A delivery had nothing to deliver: the steps before it produced no payload.",
        action: "Check that the source returned data for this run (its parameters); resolve the error once it does.",
    },
    CatalogueEntry {
        code: ErrorCode::SftpRefused,
        classification: Business,
        meaning: "An SFTP server refused the login or the operation.",
        action: "Check the SFTP user, key and path (the integration and its secret) against the server, fix either side, then resolve the error.",
    },
    CatalogueEntry {
        code: ErrorCode::SubflowInvalid,
        classification: Business,
        meaning: "A subflow's function or its sub-integration cannot be used.",
        action: "Correct the subflow's function or define and enable the sub-integration it names, then resolve the error.",
    },
    CatalogueEntry {
        code: ErrorCode::SubExchangesFailed,
        classification: Business,
        meaning: "Sub-exchanges of a subflow did not complete.",
        action: "Fix the failed sub-exchanges (the children of the exchange); recovering this exchange re-drives them.",
    },
    CatalogueEntry {
        code: ErrorCode::Unavailable,
        classification: System,
        meaning: "A system could not be reached or was overloaded (connection, timeout, 429, 5xx, AWS throttling).",
        action: "Nothing to fix in the data: the error job re-drives the exchange. If it keeps happening, check the named system.",
    },
    CatalogueEntry {
        code: ErrorCode::SystemFault,
        classification: System,
        meaning: "The gateway's side is broken in a way a retry does not fix: a secret, a permission, a setting, or a bug.",
        action: "Operators: fix what the message names (or report it with the exchange id), then resolve the error so the job runs the exchange again.",
    },
    CatalogueEntry {
        code: ErrorCode::Unclassified,
        classification: System,
        meaning: "Recorded before errors carried codes.",
        action: "Read the message; recover the exchange once its cause is fixed.",
    },
];

impl ErrorCode {
    /// Its row of the [`CATALOGUE`].
    pub fn entry(self) -> &'static CatalogueEntry {
        // The table is in declaration order (a unit test holds it to that).
        let last = &CATALOGUE[CATALOGUE.len() - 1];
        CATALOGUE.get(self as usize).filter(|e| e.code == self).unwrap_or(last)
    }

    /// What to do about it.
    pub fn action(self) -> &'static str {
        self.entry().action
    }

    /// The code as stored and shown (`TargetRejected`).
    pub fn name(self) -> &'static str {
        match self {
            Self::TargetRejected => "TargetRejected",
            Self::InvalidPayload => "InvalidPayload",
            Self::InvalidRecord => "InvalidRecord",
            Self::InvalidParameters => "InvalidParameters",
            Self::UnmappedValue => "UnmappedValue",
            Self::MappingMissing => "MappingMissing",
            Self::ExpressionFailed => "ExpressionFailed",
            Self::ExpressionLimit => "ExpressionLimit",
            Self::CallbackFailure => "CallbackFailure",
            Self::CallbackTimeout => "CallbackTimeout",
            Self::SignoffTimeout => "SignoffTimeout",
            Self::SlaExceeded => "SlaExceeded",
            Self::DestinationRefused => "DestinationRefused",
            Self::NothingToDeliver => "NothingToDeliver",
            Self::SftpRefused => "SftpRefused",
            Self::SubflowInvalid => "SubflowInvalid",
            Self::SubExchangesFailed => "SubExchangesFailed",
            Self::Unavailable => "Unavailable",
            Self::SystemFault => "SystemFault",
            Self::Unclassified => "Unclassified",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_exactly_one_row_and_its_stored_name_is_its_serde_name() {
        assert_eq!(CATALOGUE.len(), ErrorCode::Unclassified as usize + 1, "a new code needs its row in CATALOGUE");
        for (position, entry) in CATALOGUE.iter().enumerate() {
            assert_eq!(entry.code as usize, position, "{} is out of declaration order", entry.code);
            assert_eq!(entry.code.entry(), entry);
            let stored = serde_json::to_value(entry.code).expect("encode");
            assert_eq!(stored, serde_json::Value::String(entry.code.name().into()));
            assert!(entry.action.ends_with('.') || entry.action.ends_with(')'), "{} action is a sentence", entry.code);
        }
    }

    #[test]
    fn the_readme_catalogue_lists_every_code_with_its_action() {
        let readme = include_str!("../../../README.md");
        for entry in CATALOGUE {
            let row = format!("| `{}` | {} | {} |", entry.code, entry.meaning, entry.action);
            assert!(readme.contains(&row), "README's error catalogue lacks or words differently:\n{row}");
        }
    }
}
