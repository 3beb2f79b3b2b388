//! Unrouted messages (issue 10, point 5; IFS's ERROR queue): a `POST /exchanges` that
//! cannot be routed — unknown code, unknown or disabled version, endpoint Disabled or
//! Failed — is answered 404/409 *and* kept, so nothing refused is dropped. This module owns
//! what is kept and when a kept message may be replayed; the application layer stores it
//! and runs the replay.

use crate::exchange::{ExchangeStatus, Payload};
use crate::ids::{ExchangeId, IntegrationCode, IntegrationVersion, UnroutedId};
use crate::machine::start::never_started;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request that could not be routed, as it came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnroutedMessage {
    pub unrouted_id: UnroutedId,
    pub received_at: DateTime<Utc>,
    /// The caller's `sub`.
    pub caller: String,
    pub integration_code: IntegrationCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration_version: Option<IntegrationVersion>,
    pub parameters: Value,
    /// Inline when small, a data file set when large (as an exchange's input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
    /// Why it was refused: the API's error code (`NotFound`, `VersionDisabled`,
    /// `EndpointDisabled`, `EndpointFailed`) and message.
    pub refusal: Refusal,
    /// Its replay, once one started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    pub error: String,
    pub message: String,
}

/// A replay: the exchange it starts (its id promised before it is written), when, by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replay {
    pub exchange_id: ExchangeId,
    pub at: DateTime<Utc>,
    pub by: String,
}

/// Whether a kept message may be replayed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFate {
    /// Never replayed, or a replay that never started its exchange: replay it.
    Replay,
    /// Replayed: exchange `0` runs (or ran) it. A message is replayed once.
    Replayed(ExchangeId),
    /// A replay is starting its exchange right now.
    Replaying(ExchangeId),
}

/// The fate of a replay request for `message`, whose last replay's exchange is found at
/// `replay_status` (`None`: not found, or never replayed).
pub fn replay_fate(message: &UnroutedMessage, replay_status: Option<ExchangeStatus>, now: DateTime<Utc>) -> ReplayFate {
    match (&message.replay, replay_status) {
        (None, _) => ReplayFate::Replay,
        (Some(replay), Some(_)) => ReplayFate::Replayed(replay.exchange_id.clone()),
        (Some(replay), None) if never_started(replay.at, now) => ReplayFate::Replay,
        (Some(replay), None) => ReplayFate::Replaying(replay.exchange_id.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use serde_json::json;

    fn message(replay: Option<Replay>) -> UnroutedMessage {
        UnroutedMessage {
            unrouted_id: UnroutedId::new("u1"),
            received_at: Utc::now(),
            caller: "partner".into(),
            integration_code: IntegrationCode::parse("ORDERS").expect("code"),
            integration_version: None,
            parameters: json!({}),
            payload: Some(Payload::raw("[1]")),
            refusal: Refusal { error: "NotFound".into(), message: "integration ORDERS does not exist".into() },
            replay,
        }
    }

    #[test]
    fn a_message_is_replayed_once_unless_its_replay_never_started() {
        let now = Utc::now();
        assert_eq!(replay_fate(&message(None), None, now), ReplayFate::Replay);
        let replay = Replay { exchange_id: ExchangeId::new("x1"), at: now, by: "ops".into() };
        let replayed = message(Some(replay.clone()));
        assert_eq!(
            replay_fate(&replayed, Some(ExchangeStatus::Failed), now),
            ReplayFate::Replayed(ExchangeId::new("x1")),
            "a failed replay is recovered as an exchange, not replayed again"
        );
        assert_eq!(replay_fate(&replayed, None, now), ReplayFate::Replaying(ExchangeId::new("x1")));
        assert_eq!(replay_fate(&replayed, None, now + Duration::minutes(5)), ReplayFate::Replay);
    }

    #[test]
    fn a_kept_message_reads_back_as_written() {
        let m = message(Some(Replay { exchange_id: ExchangeId::new("x1"), at: Utc::now(), by: "ops".into() }));
        let text = serde_json::to_string(&m).expect("json");
        assert_eq!(serde_json::from_str::<UnroutedMessage>(&text).expect("read"), m);
    }
}
