//! The emulator's moto launcher: a failed transaction undoes no concurrent write, and a
//! Query that reads one partition (or scans an index without sorting the table first)
//! answers as DynamoDB does.

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

/// The launcher makes a Query on the table's key read only its partition, and a Query on an
/// index skip moto's sort of the whole table. What they return must not change: the
/// partition's items in sort-key order either way, key conditions applied, pages joined
/// without a gap or a repeat; an index's items in the index's sort-key order.
#[tokio::test]
async fn queries_read_their_partition_in_order_across_pages() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let client = aws_sdk_dynamodb::Client::new(&sdk().await);
    let table = exchanges_table().await;
    let s = |v: &str| AttributeValue::S(v.to_string());
    let partitions = ["qa", "qb", "qc"];
    // Written out of order: i * 7 mod 30 visits every number below 30 once.
    for n in (0..30).map(|i| i * 7 % 30) {
        let (partition, sk) = (partitions[n % 3], format!("k{:02}", n / 3));
        client
            .put_item()
            .table_name(&table)
            .item("pk", s(partition))
            .item("sk", s(&sk))
            .item("gsi1pk", s("launcher-index"))
            // The index orders the items differently from the table: by 29 - n.
            .item("gsi1sk", s(&format!("{:02}", 29 - n)))
            .item("n", AttributeValue::N(n.to_string()))
            .send()
            .await
            .expect("put");
    }
    let numbers = |items: &[HashMap<String, AttributeValue>]| -> Vec<usize> {
        items.iter().map(|item| item["n"].as_n().expect("n").parse().expect("a number")).collect()
    };
    // Every page of a query, joined.
    let all_pages = |index: Option<&'static str>,
                     condition: &'static str,
                     values: Vec<(&'static str, AttributeValue)>,
                     forward: bool,
                     limit: i32| {
        let (client, table) = (client.clone(), table.clone());
        async move {
            let mut items = Vec::new();
            let mut start = None;
            loop {
                let mut query = client
                    .query()
                    .table_name(&table)
                    .set_index_name(index.map(str::to_string))
                    .key_condition_expression(condition)
                    .scan_index_forward(forward)
                    .limit(limit)
                    .set_exclusive_start_key(start);
                for (name, value) in &values {
                    query = query.expression_attribute_values(*name, value.clone());
                }
                let page = query.send().await.expect("query");
                items.extend(page.items().iter().cloned());
                start = page.last_evaluated_key().cloned();
                if start.is_none() {
                    break;
                }
            }
            items
        }
    };
    let qb = all_pages(None, "pk = :p", vec![(":p", s("qb"))], true, 3).await;
    assert_eq!(numbers(&qb), vec![1, 4, 7, 10, 13, 16, 19, 22, 25, 28], "partition qb, sort-key order, 4 pages");
    let qb_back = all_pages(None, "pk = :p", vec![(":p", s("qb"))], false, 4).await;
    assert_eq!(numbers(&qb_back), vec![28, 25, 22, 19, 16, 13, 10, 7, 4, 1]);
    let between = all_pages(
        None,
        "pk = :p AND sk BETWEEN :from AND :to",
        vec![(":p", s("qc")), (":from", s("k03")), (":to", s("k06"))],
        false,
        10,
    )
    .await;
    assert_eq!(numbers(&between), vec![20, 17, 14, 11]);
    let prefix =
        all_pages(None, "pk = :p AND begins_with(sk, :k)", vec![(":p", s("qa")), (":k", s("k0"))], true, 10).await;
    assert_eq!(numbers(&prefix), vec![0, 3, 6, 9, 12, 15, 18, 21, 24, 27]);
    let none = all_pages(None, "pk = :p", vec![(":p", s("qz"))], true, 10).await;
    assert!(none.is_empty(), "no such partition");
    let by_index = all_pages(Some("byIntegration"), "gsi1pk = :g", vec![(":g", s("launcher-index"))], true, 7).await;
    assert_eq!(numbers(&by_index), (0..30).rev().collect::<Vec<_>>(), "index order, across 5 pages");
    let by_index_back = all_pages(
        Some("byIntegration"),
        "gsi1pk = :g AND gsi1sk < :to",
        vec![(":g", s("launcher-index")), (":to", s("05"))],
        false,
        2,
    )
    .await;
    assert_eq!(numbers(&by_index_back), vec![25, 26, 27, 28, 29]);
}
