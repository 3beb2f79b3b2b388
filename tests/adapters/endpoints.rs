//! The endpoint store (DynamoDB, on the exchanges table): the contract run on moto and on
//! the in-memory fake — first write only once, later writes only at the revision read.

use super::*;
use handoff_aws::dynamo::DynamoEndpointStore;
use handoff_core::endpoint::{Endpoint, EndpointStatus, HeldHandoff, OnSystemFailure};
use handoff_ports::{EndpointStore, EndpointWriteError};

async fn endpoints_are_written_once_then_only_at_the_revision_read(store: &dyn EndpointStore) {
    let code = code("ORDERS");
    assert!(store.endpoint(&code).await.expect("read").is_none());
    let new = Endpoint::new(code.clone(), EndpointStatus::Disabled, "admin", at(0));
    let stored = store.save_endpoint(&new).await.expect("first write");
    assert_eq!(stored.revision, 1);
    assert_eq!(store.endpoint(&code).await.expect("read"), Some(stored.clone()));
    // A second creator loses: the endpoint stands as the first wrote it.
    assert!(matches!(store.save_endpoint(&new).await, Err(EndpointWriteError::RevisionConflict)));

    let enabled = Endpoint {
        status: EndpointStatus::Enabled,
        since: at(5),
        changed_by: Some("ops".into()),
        on_system_failure: Some(OnSystemFailure::Halt),
        ..stored.clone()
    };
    let saved = store.save_endpoint(&enabled).await.expect("at revision 1");
    assert_eq!((saved.revision, saved.status), (2, EndpointStatus::Enabled));
    // A change decided on the endpoint as it was (revision 1) is refused.
    let stale = Endpoint { status: EndpointStatus::Disabled, ..stored };
    assert!(matches!(store.save_endpoint(&stale).await, Err(EndpointWriteError::RevisionConflict)));
    assert_eq!(store.endpoint(&code).await.expect("read"), Some(saved));
}

fn handoff(exchange: &str, step: u32) -> HandoffMessage {
    HandoffMessage {
        exchange_id: ExchangeId::new(exchange),
        integration_code: code("HOLDING"),
        integration_version: IntegrationVersion::number(1).expect("version"),
        step_id: StepId::from_sequence(step),
        sub_step: SubStep::DeliverRest,
        attempt: 1,
        input: Some(Payload::raw("[1]")),
        parameters: serde_json::json!({"region": "EU"}),
        not_before: None,
        recovery: 0,
        parent: None,
        requested_by: None,
        reexecution: false,
    }
}

async fn handoffs_are_held_only_while_the_endpoint_is_held_as_read(store: &dyn EndpointStore) {
    let held_at = |n: i64, exchange: &str| HeldHandoff {
        message: handoff(exchange, 2),
        held_at: at(n),
        reason: "held before DeliverRest: the endpoint is Disabled".into(),
    };
    // No endpoint stored: it runs, nothing can be held.
    assert!(matches!(store.hold(&held_at(1, "a"), 0).await, Err(EndpointWriteError::RevisionConflict)));
    let disabled = store
        .save_endpoint(&Endpoint::new(code("HOLDING"), EndpointStatus::Disabled, "ops", at(0)))
        .await
        .expect("save");
    store.hold(&held_at(2, "b"), disabled.revision).await.expect("held");
    store.hold(&held_at(1, "a"), disabled.revision).await.expect("held");
    store.hold(&held_at(1, "a"), disabled.revision).await.expect("held again: one kept");
    let held = store.held(&code("HOLDING")).await.expect("held");
    assert_eq!(held.iter().map(|h| h.message.exchange_id.as_str()).collect::<Vec<_>>(), ["a", "b"], "oldest first");
    assert_eq!(held[0], held_at(1, "a"));
    assert!(store.held(&code("OTHER")).await.expect("held").is_empty());

    // Enabled since it was read: holding is refused, so the release cannot miss it.
    let enabled =
        store.save_endpoint(&Endpoint { status: EndpointStatus::Enabled, ..disabled.clone() }).await.expect("enable");
    assert!(matches!(store.hold(&held_at(3, "c"), disabled.revision).await, Err(EndpointWriteError::RevisionConflict)));
    assert!(matches!(store.hold(&held_at(3, "c"), enabled.revision).await, Err(EndpointWriteError::RevisionConflict)));
    store.release(&held[0]).await.expect("release");
    store.release(&held[0]).await.expect("release twice");
    let left = store.held(&code("HOLDING")).await.expect("held");
    assert_eq!(left.iter().map(|h| h.message.exchange_id.as_str()).collect::<Vec<_>>(), ["b"]);
}

mod endpoint_contract_on_moto {
    use super::*;

    #[tokio::test]
    async fn endpoints_are_written_once_then_only_at_the_revision_read() {
        let store = DynamoEndpointStore::new(aws_sdk_dynamodb::Client::new(&sdk().await), exchanges_table().await);
        super::endpoints_are_written_once_then_only_at_the_revision_read(&store).await
    }

    #[tokio::test]
    async fn handoffs_are_held_only_while_the_endpoint_is_held_as_read() {
        let store = DynamoEndpointStore::new(aws_sdk_dynamodb::Client::new(&sdk().await), exchanges_table().await);
        super::handoffs_are_held_only_while_the_endpoint_is_held_as_read(&store).await
    }
}

mod endpoint_contract_in_memory {
    #[tokio::test]
    async fn endpoints_are_written_once_then_only_at_the_revision_read() {
        let store = handoff_ports::memory::MemoryEndpoints::default();
        super::endpoints_are_written_once_then_only_at_the_revision_read(&store).await
    }

    #[tokio::test]
    async fn handoffs_are_held_only_while_the_endpoint_is_held_as_read() {
        let store = handoff_ports::memory::MemoryEndpoints::default();
        super::handoffs_are_held_only_while_the_endpoint_is_held_as_read(&store).await
    }
}
