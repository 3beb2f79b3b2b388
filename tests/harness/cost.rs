//! What an exchange costs at AWS list prices, from what the `aws-requests` bench recorded:
//! its AWS requests (as moto recorded them), the stored items' real sizes (DynamoDB's
//! capacity units follow them), and the measured duration and memory of each invocation —
//! next to AWS Step Functions Standard and Express running the same pipeline.
//!
//! Pure: the bench gathers the figures, this module prices them.

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// AWS list prices, us-east-1, on-demand, without free tiers; US dollars.
pub struct PriceTable {
    /// When these were read from the AWS pricing pages.
    pub as_of: &'static str,
    pub lambda_per_request: f64,
    pub lambda_per_gb_second: f64,
    pub sqs_per_request: f64,
    pub dynamodb_per_write_unit: f64,
    pub dynamodb_per_read_unit: f64,
    pub s3_per_put: f64,
    pub s3_per_get: f64,
    pub http_api_per_request: f64,
    pub step_functions_per_transition: f64,
    pub express_per_request: f64,
    pub express_per_gb_second: f64,
}

/// The prices the bench uses (DynamoDB on-demand after its November 2024 reduction).
pub const PRICES: PriceTable = PriceTable {
    as_of: "2026-12-07 (AWS pricing pages, us-east-1, x86 Lambda, standard queues, S3 Standard)",
    lambda_per_request: 0.20 / 1e6,
    lambda_per_gb_second: 0.000_016_666_7,
    sqs_per_request: 0.40 / 1e6,
    dynamodb_per_write_unit: 0.625 / 1e6,
    dynamodb_per_read_unit: 0.125 / 1e6,
    s3_per_put: 0.005 / 1e3,
    s3_per_get: 0.0004 / 1e3,
    http_api_per_request: 1.00 / 1e6,
    step_functions_per_transition: 0.025 / 1e3,
    express_per_request: 1.00 / 1e6,
    express_per_gb_second: 0.000_016_67,
};

/// An item's size as DynamoDB bills it: attribute names plus values (strings and binaries
/// by length, numbers about one byte per two digits plus one, maps and lists 3 bytes plus
/// their elements and one byte each, booleans and nulls one byte). `item` is DynamoDB JSON.
pub fn item_size(item: &serde_json::Map<String, Value>) -> usize {
    item.iter().map(|(name, value)| name.len() + value_size(value)).sum()
}

fn value_size(value: &Value) -> usize {
    let Some((kind, inner)) = value.as_object().and_then(|o| o.iter().next()) else { return 0 };
    match kind.as_str() {
        "S" => inner.as_str().map_or(0, str::len),
        // Binaries travel base64-encoded.
        "B" => inner.as_str().map_or(0, |b| b.len() * 3 / 4),
        "N" => inner.as_str().map_or(1, |n| n.trim_start_matches('-').replace('.', "").len().div_ceil(2) + 1),
        "BOOL" | "NULL" => 1,
        "SS" | "BS" => inner.as_array().map_or(0, |v| v.iter().filter_map(Value::as_str).map(str::len).sum()),
        "NS" => {
            inner.as_array().map_or(0, |v| v.iter().filter_map(Value::as_str).map(|n| n.len().div_ceil(2) + 1).sum())
        }
        "L" => 3 + inner.as_array().map_or(0, |v| v.iter().map(|e| 1 + value_size(e)).sum()),
        "M" => 3 + inner.as_object().map_or(0, |m| m.iter().map(|(k, v)| 1 + k.len() + value_size(v)).sum()),
        _ => 0,
    }
}

/// Stored item sizes by `(pk, sk)`, with each item's index keys (for queries on an index).
#[derive(Debug, Default)]
pub struct StoredItems {
    sizes: HashMap<(String, String), usize>,
    /// Every key value (`pk` and each `gsiNpk`) → the sizes of the items carrying it.
    by_key_value: HashMap<String, Vec<usize>>,
}

impl StoredItems {
    /// From a table scan (DynamoDB JSON items).
    pub fn from_scan(items: &[serde_json::Map<String, Value>]) -> Self {
        let mut stored = Self::default();
        for item in items {
            let size = item_size(item);
            let s = |name: &str| item.get(name).and_then(|v| v["S"].as_str()).map(str::to_string);
            if let (Some(pk), Some(sk)) = (s("pk"), s("sk")) {
                stored.sizes.insert((pk, sk), size);
            }
            for (name, value) in item {
                if name == "pk" || (name.starts_with("gsi") && name.ends_with("pk")) {
                    if let Some(v) = value["S"].as_str() {
                        stored.by_key_value.entry(v.to_string()).or_default().push(size);
                    }
                }
            }
        }
        stored
    }

    fn size_of(&self, key: &Value) -> Option<usize> {
        let s = |name: &str| key.get(name).and_then(|v| v["S"].as_str()).map(str::to_string);
        self.sizes.get(&(s("pk")?, s("sk")?)).copied()
    }
}

/// Write and read units of one DynamoDB request (`action`, its JSON body): transactional
/// writes 2 per KB of each item, standard writes 1 per KB, transactional checks 2 per 4 KB,
/// consistent reads 1 per 4 KB and eventually consistent ones half that; an update is billed
/// on the item's full size (here: as stored after the run, an upper bound).
pub fn capacity_units(action: &str, request: &Value, stored: &StoredItems) -> (f64, f64) {
    let kb = |size: usize| size.max(1).div_ceil(1024) as f64;
    let four_kb = |size: usize| size.max(1).div_ceil(4096) as f64;
    let put_size = |item: &Value| item.as_object().map_or(0, item_size);
    let stored_size = |key: &Value| stored.size_of(key).unwrap_or(1);
    let consistent = request["ConsistentRead"].as_bool() == Some(true);
    match action {
        "TransactWriteItems" => {
            let (mut writes, mut reads) = (0.0, 0.0);
            for item in request["TransactItems"].as_array().into_iter().flatten() {
                if let Some(put) = item.get("Put") {
                    writes += 2.0 * kb(put_size(&put["Item"]));
                } else if let Some(update) = item.get("Update") {
                    writes += 2.0 * kb(stored_size(&update["Key"]));
                } else if let Some(delete) = item.get("Delete") {
                    writes += 2.0 * kb(stored_size(&delete["Key"]));
                } else if let Some(check) = item.get("ConditionCheck") {
                    reads += 2.0 * four_kb(stored_size(&check["Key"]));
                }
            }
            (writes, reads)
        }
        "BatchWriteItem" => {
            let writes = request["RequestItems"]
                .as_object()
                .into_iter()
                .flat_map(|tables| tables.values())
                .flat_map(|requests| requests.as_array().into_iter().flatten())
                .map(|r| match r.get("PutRequest") {
                    Some(put) => kb(put_size(&put["Item"])),
                    None => kb(stored_size(&r["DeleteRequest"]["Key"])),
                })
                .sum();
            (writes, 0.0)
        }
        "PutItem" => (kb(put_size(&request["Item"])), 0.0),
        "UpdateItem" | "DeleteItem" => (kb(stored_size(&request["Key"])), 0.0),
        "GetItem" => (0.0, four_kb(stored_size(&request["Key"])) * if consistent { 1.0 } else { 0.5 }),
        "Query" => {
            // The items the key condition selects: those carrying its (first) key value.
            let key_value = request["ExpressionAttributeValues"]
                .as_object()
                .and_then(|values| values.values().find_map(|v| v["S"].as_str()))
                .unwrap_or_default();
            let total: usize = stored.by_key_value.get(key_value).map_or(0, |sizes| sizes.iter().sum());
            // A query costs at least one unit, even when it finds nothing.
            (0.0, four_kb(total) * if consistent { 1.0 } else { 0.5 })
        }
        _ => (0.0, 0.0),
    }
}

/// One exchange's resources, averaged over the exchanges the bench ran.
#[derive(Debug, Default, Clone)]
pub struct ExchangeUsage {
    /// Function binary → (invocations per exchange, average billed milliseconds, memory MB).
    pub lambda: BTreeMap<String, (f64, f64, u32)>,
    pub sqs_requests: f64,
    pub dynamodb_write_units: f64,
    pub dynamodb_read_units: f64,
    pub s3_puts: f64,
    pub s3_gets: f64,
    pub http_api_requests: f64,
}

impl ExchangeUsage {
    pub fn lambda_requests(&self) -> f64 {
        self.lambda.values().map(|(n, _, _)| n).sum()
    }

    pub fn lambda_gb_seconds(&self) -> f64 {
        self.lambda.values().map(|(n, ms, mb)| n * (ms / 1000.0) * (*mb as f64 / 1024.0)).sum()
    }
}

/// A line of the cost table: what, how much per exchange, dollars per million exchanges.
pub struct CostLine {
    pub item: String,
    pub per_exchange: f64,
    pub per_million: f64,
}

/// Handoff's cost lines for `usage`, and their total per million exchanges.
pub fn handoff_cost(usage: &ExchangeUsage, p: &PriceTable) -> (Vec<CostLine>, f64) {
    let million = 1e6;
    let line = |item: &str, per_exchange: f64, unit_price: f64| CostLine {
        item: item.to_string(),
        per_exchange,
        per_million: per_exchange * unit_price * million,
    };
    let lines = vec![
        line("Lambda requests", usage.lambda_requests(), p.lambda_per_request),
        line("Lambda GB-seconds", usage.lambda_gb_seconds(), p.lambda_per_gb_second),
        line("SQS requests", usage.sqs_requests, p.sqs_per_request),
        line("DynamoDB write request units", usage.dynamodb_write_units, p.dynamodb_per_write_unit),
        line("DynamoDB read request units", usage.dynamodb_read_units, p.dynamodb_per_read_unit),
        line("S3 PUT requests", usage.s3_puts, p.s3_per_put),
        line("S3 GET requests", usage.s3_gets, p.s3_per_get),
        line("API Gateway HTTP API requests", usage.http_api_requests, p.http_api_per_request),
    ];
    let total = lines.iter().map(|l| l.per_million).sum();
    (lines, total)
}

/// Step Functions running the same pipeline, per million exchanges: Standard bills each
/// state transition (`transitions` per exchange), Express each request and its duration
/// (`workflow_ms`, billed in 100 ms steps at the 64 MB minimum). `work` is what the tasks
/// themselves cost (the same Lambda work, per million) — added to both, generously leaving
/// out everything Handoff pays for its own bookkeeping.
pub fn step_functions_cost(transitions: f64, workflow_ms: f64, work: f64, p: &PriceTable) -> (f64, f64) {
    let million = 1e6;
    let standard = transitions * p.step_functions_per_transition * million + work;
    let billed_seconds = (workflow_ms / 100.0).ceil().max(1.0) * 0.1;
    let express = (p.express_per_request + billed_seconds * (64.0 / 1024.0) * p.express_per_gb_second) * million + work;
    (standard, express)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn item_sizes_follow_dynamodbs_rules() {
        assert_eq!(item_size(&map(json!({"pk": {"S": "EX#1"}}))), 2 + 4);
        assert_eq!(item_size(&map(json!({"n": {"N": "12345"}}))), 1 + 4);
        assert_eq!(item_size(&map(json!({"b": {"BOOL": true}, "z": {"NULL": true}}))), 4);
        assert_eq!(item_size(&map(json!({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}))), 1 + 3 + (1 + 2) + (1 + 2));
        assert_eq!(item_size(&map(json!({"m": {"M": {"k": {"S": "v"}}}}))), 1 + 3 + 1 + 1 + 1);
    }

    #[test]
    fn transactions_cost_twice_and_updates_are_billed_on_the_stored_item() {
        let big = "x".repeat(1500);
        let stored =
            StoredItems::from_scan(&[map(json!({"pk": {"S": "EX#1"}, "sk": {"S": "STEP#0001"}, "body": {"S": big}}))]);
        let key = json!({"pk": {"S": "EX#1"}, "sk": {"S": "STEP#0001"}});
        let transaction = json!({"TransactItems": [
            {"Update": {"Key": key, "UpdateExpression": "SET a = :a"}},
            {"ConditionCheck": {"Key": key}},
            {"Put": {"Item": {"pk": {"S": "EX#1"}, "sk": {"S": "TIMER#x"}}}}
        ]});
        // The update: a 2 KB item, transactional; the put: under 1 KB; the check: 2 per 4 KB.
        assert_eq!(capacity_units("TransactWriteItems", &transaction, &stored), (4.0 + 2.0, 2.0));
        let get = json!({"Key": key, "ConsistentRead": true});
        assert_eq!(capacity_units("GetItem", &get, &stored), (0.0, 1.0));
        assert_eq!(capacity_units("GetItem", &json!({"Key": key}), &stored), (0.0, 0.5));
        let query = json!({"ExpressionAttributeValues": {":pk": {"S": "EX#1"}}, "ConsistentRead": true});
        assert_eq!(capacity_units("Query", &query, &stored), (0.0, 1.0));
    }

    #[test]
    fn costs_add_up_per_million() {
        let mut usage = ExchangeUsage { sqs_requests: 10.0, ..ExchangeUsage::default() };
        usage.lambda.insert("w".into(), (2.0, 50.0, 512));
        let (lines, total) = handoff_cost(&usage, &PRICES);
        let sqs = lines.iter().find(|l| l.item == "SQS requests").map(|l| l.per_million);
        assert!((sqs.unwrap_or(0.0) - 4.0).abs() < 1e-9);
        // 2 invocations of 50 ms at 0.5 GB: 0.05 GB-s.
        assert!((usage.lambda_gb_seconds() - 0.05).abs() < 1e-12);
        assert!((total - (4.0 + 0.4 + 0.05 * 16.6667)).abs() < 1e-3, "{total}");
        let (standard, express) = step_functions_cost(4.0, 250.0, 0.0, &PRICES);
        assert!((standard - 100.0).abs() < 1e-9);
        // 300 ms billed at 64 MB plus the request.
        assert!((express - (1.0 + 0.3 * 0.0625 * 16.67)).abs() < 1e-6, "{express}");
    }
}
