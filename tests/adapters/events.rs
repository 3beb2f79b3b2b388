//! Event queues (DynamoDB, in the endpoint's partition of the exchanges table): the contract
//! run on moto and on the in-memory fake — arrival order and paging, one claim at a time,
//! consumption that takes exactly the claimed events and can be repeated.

use super::*;
use handoff_aws::dynamo::DynamoEventQueue;
use handoff_core::events::{EventClaim, NewEvent, QueuedEvent};
use handoff_ports::{EventClaimError, EventQueue};

fn events(request: &str, seconds: i64, keys: &[&str]) -> Vec<QueuedEvent> {
    let new = keys
        .iter()
        .enumerate()
        .map(|(i, key)| NewEvent { key: Some(key.to_string()), event_type: None, data: serde_json::json!({"n": i}) })
        .collect();
    QueuedEvent::queue(new, at(seconds), request)
}

fn keys(events: &[QueuedEvent]) -> Vec<&str> {
    events.iter().filter_map(|e| e.key.as_deref()).collect()
}

fn claim_of(exchange: &str, taken: &[QueuedEvent]) -> EventClaim {
    EventClaim {
        exchange_id: ExchangeId::new(exchange),
        taken: taken.iter().map(|e| e.position.clone()).collect(),
        claimed_at: at(100),
    }
}

async fn events_are_kept_in_arrival_order_and_paged(queue: &dyn EventQueue) {
    let orders = code("ORDERS");
    assert!(queue.pending(&orders, 10, None).await.expect("read").0.is_empty());
    assert_eq!(queue.summary(&orders).await.expect("summary").pending, 0);
    // A later request, then an earlier one: the queue is in arrival time order.
    queue.append(&orders, &events("r2", 20, &["c", "d"])).await.expect("append");
    queue.append(&orders, &events("r1", 10, &["a", "b"])).await.expect("append");
    queue.append(&code("OTHER"), &events("r3", 5, &["x"])).await.expect("append");
    let (first, next) = queue.pending(&orders, 3, None).await.expect("page 1");
    assert_eq!(keys(&first), ["a", "b", "c"]);
    assert_eq!(first[0], events("r1", 10, &["a", "b"])[0], "stored as sent");
    let next = next.expect("a next page");
    let (rest, _) = queue.pending(&orders, 3, Some(&next)).await.expect("page 2");
    assert_eq!(keys(&rest), ["d"]);
    let summary = queue.summary(&orders).await.expect("summary");
    assert_eq!((summary.pending, summary.oldest, summary.discarded), (4, Some(at(10)), 0));
    queue.count_discarded(&orders, 3).await.expect("count");
    queue.count_discarded(&orders, 2).await.expect("count");
    assert_eq!(queue.summary(&orders).await.expect("summary").discarded, 5);
    assert_eq!(queue.summary(&code("OTHER")).await.expect("summary").discarded, 0);
}

async fn one_claim_at_a_time_and_consuming_takes_exactly_the_claimed_events(queue: &dyn EventQueue) {
    let stock = code("STOCK");
    let early = events("r1", 10, &["a", "b"]);
    queue.append(&stock, &early).await.expect("append");
    let first = claim_of("x1", &early);
    queue.take(&stock, &first).await.expect("the first claim");
    assert!(matches!(queue.take(&stock, &claim_of("x2", &early)).await, Err(EventClaimError::Taken)));
    assert_eq!(queue.claim(&stock).await.expect("claim"), Some(first.clone()));
    // Another exchange's claim is not let go in its name.
    queue.let_go(&stock, &claim_of("x2", &early)).await.expect("let go");
    assert_eq!(queue.claim(&stock).await.expect("claim"), Some(first.clone()));

    let later = events("r2", 20, &["a"]);
    queue.append(&stock, &later).await.expect("events arrive under a claim");
    queue.consume(&stock, &first).await.expect("consume");
    queue.consume(&stock, &first).await.expect("consume again: nothing more goes");
    assert_eq!(queue.claim(&stock).await.expect("claim"), None);
    let (left, _) = queue.pending(&stock, 10, None).await.expect("read");
    assert_eq!(left, later, "only the claimed events left the queue");

    // Letting a claim go leaves its events queued.
    let second = claim_of("x2", &later);
    queue.take(&stock, &second).await.expect("free again");
    queue.let_go(&stock, &second).await.expect("let go");
    assert_eq!(queue.claim(&stock).await.expect("claim"), None);
    assert_eq!(queue.summary(&stock).await.expect("summary").pending, 1);
}

mod event_queue_contract_on_moto {
    use super::*;

    async fn queue() -> DynamoEventQueue {
        DynamoEventQueue::new(aws_sdk_dynamodb::Client::new(&sdk().await), exchanges_table().await)
    }

    #[tokio::test]
    async fn events_are_kept_in_arrival_order_and_paged() {
        super::events_are_kept_in_arrival_order_and_paged(&queue().await).await
    }

    #[tokio::test]
    async fn one_claim_at_a_time_and_consuming_takes_exactly_the_claimed_events() {
        super::one_claim_at_a_time_and_consuming_takes_exactly_the_claimed_events(&queue().await).await
    }
}

mod event_queue_contract_in_memory {
    #[tokio::test]
    async fn events_are_kept_in_arrival_order_and_paged() {
        super::events_are_kept_in_arrival_order_and_paged(&handoff_ports::memory::MemoryEventQueues::default()).await
    }

    #[tokio::test]
    async fn one_claim_at_a_time_and_consuming_takes_exactly_the_claimed_events() {
        let queue = handoff_ports::memory::MemoryEventQueues::default();
        super::one_claim_at_a_time_and_consuming_takes_exactly_the_claimed_events(&queue).await
    }
}
