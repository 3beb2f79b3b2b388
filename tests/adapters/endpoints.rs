//! The endpoint store (DynamoDB, on the exchanges table): the contract run on moto and on
//! the in-memory fake — first write only once, later writes only at the revision read.

use super::*;
use handoff_aws::dynamo::DynamoEndpointStore;
use handoff_core::endpoint::{Endpoint, EndpointStatus, OnSystemFailure};
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

mod endpoint_contract_on_moto {
    use super::*;

    #[tokio::test]
    async fn endpoints_are_written_once_then_only_at_the_revision_read() {
        let store = DynamoEndpointStore::new(aws_sdk_dynamodb::Client::new(&sdk().await), exchanges_table().await);
        super::endpoints_are_written_once_then_only_at_the_revision_read(&store).await
    }
}

mod endpoint_contract_in_memory {
    #[tokio::test]
    async fn endpoints_are_written_once_then_only_at_the_revision_read() {
        let store = handoff_ports::memory::MemoryEndpoints::default();
        super::endpoints_are_written_once_then_only_at_the_revision_read(&store).await
    }
}
