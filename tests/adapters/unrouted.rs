//! Unrouted messages (DynamoDB, one partition of the exchanges table): the contract run on
//! moto and on the in-memory fake — kept once, listed newest first and paged, a replay
//! written only over the replay read.

use super::*;
use handoff_aws::dynamo::DynamoUnroutedStore;
use handoff_core::ids::UnroutedId;
use handoff_core::unrouted::{Refusal, Replay, UnroutedMessage};
use handoff_ports::{UnroutedStore, UnroutedWriteError};

fn message(n: u32) -> UnroutedMessage {
    UnroutedMessage {
        // Time-ordered as the application makes them (UUID v7 with a growing timestamp).
        unrouted_id: UnroutedId::new(format!("0190000{n}-0000-7000-8000-000000000000")),
        received_at: at(n as i64),
        caller: "partner".into(),
        integration_code: code("LATER"),
        integration_version: Some(IntegrationVersion::number(2).expect("version")),
        parameters: serde_json::json!({"region": "EU"}),
        payload: Some(Payload::raw("{\"order\": 7}")),
        refusal: Refusal { error: "NotFound".into(), message: "integration LATER does not exist".into() },
        replay: None,
    }
}

async fn kept_once_listed_newest_first_and_replayed_over_the_replay_read(store: &dyn UnroutedStore) {
    for n in 1..=3 {
        store.keep(&message(n), Some(at(86_400))).await.expect("kept");
    }
    assert!(matches!(store.keep(&message(2), None).await, Err(UnroutedWriteError::Conflict)), "kept once");
    assert_eq!(store.unrouted(&message(2).unrouted_id).await.expect("read"), Some(message(2)));
    assert_eq!(store.unrouted(&UnroutedId::new("01900009-0000-7000-8000-000000000000")).await.expect("read"), None);
    let (page, next) = store.list_unrouted(2, None).await.expect("page 1");
    assert_eq!(page, [message(3), message(2)], "newest first");
    let (rest, _) = store.list_unrouted(2, next.as_deref()).await.expect("page 2");
    assert_eq!(rest, [message(1)]);

    let replay = |exchange: &str| Replay { exchange_id: ExchangeId::new(exchange), at: at(50), by: "ops".into() };
    let first = UnroutedMessage { replay: Some(replay("x1")), ..message(1) };
    store.save_replay(&first, None).await.expect("the first replay");
    let rival = UnroutedMessage { replay: Some(replay("x2")), ..message(1) };
    assert!(matches!(store.save_replay(&rival, None).await, Err(UnroutedWriteError::Conflict)), "one replay wins");
    assert_eq!(store.unrouted(&first.unrouted_id).await.expect("read"), Some(first.clone()));
    // Taken back by the replay that wrote it (its exchange did not start).
    store.save_replay(&message(1), Some(&ExchangeId::new("x1"))).await.expect("taken back");
    assert_eq!(store.unrouted(&first.unrouted_id).await.expect("read"), Some(message(1)));
    store.save_replay(&rival, None).await.expect("free again");
    let missing = UnroutedMessage { replay: Some(replay("x3")), ..message(8) };
    assert!(matches!(store.save_replay(&missing, None).await, Err(UnroutedWriteError::Conflict)), "never kept");
}

mod unrouted_contract_on_moto {
    #[tokio::test]
    async fn kept_once_listed_newest_first_and_replayed_over_the_replay_read() {
        let client = aws_sdk_dynamodb::Client::new(&super::sdk().await);
        let store = super::DynamoUnroutedStore::new(client, super::exchanges_table().await);
        super::kept_once_listed_newest_first_and_replayed_over_the_replay_read(&store).await
    }
}

mod unrouted_contract_in_memory {
    #[tokio::test]
    async fn kept_once_listed_newest_first_and_replayed_over_the_replay_read() {
        let store = handoff_ports::memory::MemoryUnrouted::default();
        super::kept_once_listed_newest_first_and_replayed_over_the_replay_read(&store).await
    }
}
