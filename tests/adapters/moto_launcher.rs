//! The emulator's moto launcher: a failed transaction undoes no concurrent write.

use super::*;

/// moto restores a whole table when a transaction fails; served concurrently, that undid
/// other requests' writes. The emulator serializes DynamoDB requests: nothing is lost.
#[tokio::test]
async fn failing_transactions_undo_no_concurrent_write() {
    use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
    let client = aws_sdk_dynamodb::Client::new(&sdk().await);
    let table = integrations_table().await;
    let s = |v: &str| AttributeValue::S(v.to_string());
    // moto copies the table at the start of a transaction: a larger table, a wider window.
    for chunk in 0..40 {
        let puts = (0..25).map(|i| {
            let put = aws_sdk_dynamodb::types::PutRequest::builder()
                .item("pk", s("filler"))
                .item("sk", s(&format!("{chunk}-{i}")))
                .item("data", s(&"x".repeat(200)))
                .build()
                .expect("put request");
            aws_sdk_dynamodb::types::WriteRequest::builder().put_request(put).build()
        });
        client.batch_write_item().request_items(&table, puts.collect()).send().await.expect("fill");
    }
    let failing = (0..4).map(|task| {
        let (client, table) = (client.clone(), table.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                let check = ConditionCheck::builder()
                    .table_name(&table)
                    .key("pk", s("missing"))
                    .key("sk", s("missing"))
                    .condition_expression("attribute_exists(pk)")
                    .build()
                    .expect("check");
                let put = Put::builder()
                    .table_name(&table)
                    .item("pk", s("never"))
                    .item("sk", s(&format!("{task}-{i}")))
                    .build()
                    .expect("put");
                let result = client
                    .transact_write_items()
                    .transact_items(TransactWriteItem::builder().put(put).build())
                    .transact_items(TransactWriteItem::builder().condition_check(check).build())
                    .send()
                    .await;
                assert!(result.is_err(), "the condition cannot hold");
            }
        })
    });
    let writing = (0..4).map(|task| {
        let (client, table) = (client.clone(), table.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                client
                    .put_item()
                    .table_name(&table)
                    .item("pk", s("kept"))
                    .item("sk", s(&format!("{task}-{i}")))
                    .send()
                    .await
                    .expect("put");
            }
        })
    });
    for task in futures::future::join_all(failing.chain(writing)).await {
        task.expect("task");
    }
    let kept = client
        .query()
        .table_name(&table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", s("kept"))
        .select(aws_sdk_dynamodb::types::Select::Count)
        .send()
        .await
        .expect("count");
    assert_eq!(kept.count(), 160, "every write survives the failed transactions");
    let never = client
        .query()
        .table_name(&table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", s("never"))
        .send()
        .await
        .expect("query");
    assert_eq!(never.count(), 0, "a failed transaction writes nothing");
}
