//! Proves the template's IAM policies match what the code does: every AWS request the
//! end-to-end suite made (recorded by moto; each function signs with its own access key,
//! its logical id) is mapped to the IAM actions and resources AWS would evaluate, and each
//! must be allowed by that function's `Policies` in `infra/template.yaml`. Grants no request
//! used are listed.
//!
//! `cargo run -p handoff-e2e --bin iam-check [-- RECORDING [TEMPLATE]]` (after `cargo test
//! -p handoff-e2e --test e2e`, which writes the recordings of its two emulators next to the
//! test binaries). Exits
//! non-zero when a request is not allowed or cannot be mapped.
//!
//! The mapping follows the Service Authorization Reference: a `TransactWriteItems` needs the
//! action of each of its items (`ConditionCheckItem`, `PutItem`, `UpdateItem`,
//! `DeleteItem`) on that item's table, not an action of its own; a `Query` on an index needs
//! the index's ARN; S3 multipart parts are `PutObject`, an abort `AbortMultipartUpload`, a
//! `HEAD` `GetObject`, a listing `ListBucket` on the bucket; a batch SQS send `SendMessage`;
//! creating a schedule also passes its role (`iam:PassRole`). Requests signed with another
//! key (the emulator provisioning, the event source mappings' pollers, the scheduler) are the
//! platform's: SAM grants a function's pollers their queue itself.

use anyhow::{anyhow, bail, Context, Result};
use handoff_e2e::recording::{body, header};
use handoff_emulator::template::{yaml_to_json, LocalUrls, Template};
use handoff_emulator::EmulatorOptions;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";

/// One statement of a function's policy, resolved to plain strings.
#[derive(Debug, Clone)]
struct Statement {
    allow: bool,
    actions: Vec<String>,
    resources: Vec<String>,
}

/// An IAM action on a resource, as AWS evaluates a request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    action: String,
    resource: String,
}

fn main() -> Result<()> {
    let verbose = std::env::args().any(|a| a == "--verbose");
    let mut args = std::env::args().skip(1).filter(|a| a != "--verbose");
    // Both of the suite's emulators record: the shared one and the one whose clock moves.
    let recordings = match args.next() {
        Some(path) => vec![PathBuf::from(path)],
        None => vec![handoff_e2e::aws_request_recording(), handoff_e2e::clock_aws_request_recording()],
    };
    let template_path = args.next().map(PathBuf::from).unwrap_or_else(|| EmulatorOptions::default().template_path);
    let policies = function_policies(&template_path)?;
    let mut text = String::new();
    for recording in &recordings {
        text += &std::fs::read_to_string(recording)
            .with_context(|| format!("reading {} (run the e2e tests first)", recording.display()))?;
        text.push('\n');
    }

    // function → access → how many requests needed it
    let mut used: BTreeMap<String, BTreeMap<Access, usize>> = BTreeMap::new();
    let mut unmapped: BTreeMap<String, usize> = BTreeMap::new();
    let (mut platform, mut total) = (0usize, 0usize);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let request: Value = serde_json::from_str(line).context("a recording line is not JSON")?;
        total += 1;
        let Some((key, service)) = signer(&request) else {
            *unmapped.entry("unsigned request".into()).or_default() += 1;
            continue;
        };
        if !policies.contains_key(&key) {
            platform += 1;
            continue;
        }
        match accesses(&service, &request) {
            Ok(list) => {
                for access in list {
                    *used.entry(key.clone()).or_default().entry(access).or_default() += 1;
                }
            }
            Err(what) => *unmapped.entry(format!("{key}: {what}")).or_default() += 1,
        }
    }

    let mut denied = 0;
    println!("{total} AWS requests recorded; {platform} by the platform (provisioning, pollers, scheduler).");
    for (function, statements) in &policies {
        let accesses = used.get(function).cloned().unwrap_or_default();
        let requests: usize = accesses.values().sum();
        println!("\n{function}: {requests} action checks over {} distinct accesses", accesses.len());
        for (access, count) in &accesses {
            if !allowed(statements, access) {
                denied += 1;
                println!("  DENIED {} on {} ({count}×)", access.action, access.resource);
            } else if verbose {
                println!("  allowed {} on {} ({count}×)", access.action, access.resource);
            }
        }
        for grant in unused_grants(statements, accesses.keys()) {
            println!("  unused grant: {grant}");
        }
    }
    for (what, count) in &unmapped {
        println!("UNMAPPED ({count}×): {what}");
    }
    if denied > 0 || !unmapped.is_empty() {
        bail!(
            "{denied} access(es) not allowed by the template's policies, {} kind(s) of request not mapped",
            unmapped.len()
        );
    }
    println!("\nEvery request is allowed by its function's policy.");
    Ok(())
}

/// The access key (the function's logical id in the emulator) and service of a SigV4
/// request: signed in its `Authorization` header, or presigned in its query
/// (`X-Amz-Credential`, an S3 download link the api function handed out).
fn signer(request: &Value) -> Option<(String, String)> {
    let credential = match header(request, "authorization") {
        Some(authorization) => authorization.split("Credential=").nth(1)?.split(',').next()?.to_string(),
        None => {
            let (_, query) = path_and_query(request);
            let encoded = query.split('&').find_map(|kv| kv.strip_prefix("X-Amz-Credential="))?;
            encoded.replace("%2F", "/").replace("%2f", "/")
        }
    };
    let mut parts = credential.split('/');
    let key = parts.next()?.to_string();
    let service = parts.nth(2)?.to_string();
    Some((key, service))
}

/// Each function's policy statements, intrinsics resolved as the emulator resolves them.
fn function_policies(path: &std::path::Path) -> Result<BTreeMap<String, Vec<Statement>>> {
    let mut template = Template::load(path).map_err(|e| anyhow!("{e}"))?;
    template.parameters.extend(EmulatorOptions::default().parameter_overrides);
    let ids = template
        .identities(&LocalUrls { aws_endpoint: "http://127.0.0.1:1".into(), api_url: "http://127.0.0.1:2".into() })
        .map_err(|e| anyhow!("{e}"))?;
    let mut out = BTreeMap::new();
    for resource in template.resources_of("AWS::Serverless::Function") {
        let Some(policies) = resource.property("Policies") else {
            out.insert(resource.logical_id.clone(), Vec::new());
            continue;
        };
        let resolved = yaml_to_json(&ids.resolve(policies).map_err(|e| anyhow!("{}: {e}", resource.logical_id))?);
        let mut statements = Vec::new();
        for policy in resolved.as_array().cloned().unwrap_or_else(|| vec![resolved.clone()]) {
            let document = policy.get("PolicyDocument").unwrap_or(&policy);
            let Some(list) = document.get("Statement") else {
                bail!("{}: only inline policy documents are understood, not {policy}", resource.logical_id);
            };
            for statement in list.as_array().cloned().unwrap_or_else(|| vec![list.clone()]) {
                statements.push(Statement {
                    allow: statement["Effect"] == "Allow",
                    actions: strings(&statement["Action"]),
                    resources: strings(&statement["Resource"]),
                });
            }
        }
        out.insert(resource.logical_id.clone(), statements);
    }
    Ok(out)
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

/// IAM's wildcard match: `*` any run of characters, `?` one.
fn glob(pattern: &str, text: &str, case_insensitive: bool) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = if case_insensitive {
        (pattern.to_lowercase().chars().collect(), text.to_lowercase().chars().collect())
    } else {
        (pattern.chars().collect(), text.chars().collect())
    };
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn matches(statement: &Statement, access: &Access) -> bool {
    statement.actions.iter().any(|a| glob(a, &access.action, true))
        && statement.resources.iter().any(|r| glob(r, &access.resource, false))
}

fn allowed(statements: &[Statement], access: &Access) -> bool {
    !statements.iter().any(|s| !s.allow && matches(s, access))
        && statements.iter().any(|s| s.allow && matches(s, access))
}

/// Each (action, resource) pair a statement grants that no access used.
fn unused_grants<'a>(statements: &[Statement], used: impl Iterator<Item = &'a Access> + Clone) -> BTreeSet<String> {
    let mut unused = BTreeSet::new();
    for statement in statements.iter().filter(|s| s.allow) {
        for action in &statement.actions {
            for resource in &statement.resources {
                let hit = used.clone().any(|a| glob(action, &a.action, true) && glob(resource, &a.resource, false));
                if !hit {
                    unused.insert(format!("{action} on {resource}"));
                }
            }
        }
    }
    unused
}

fn access(action: impl Into<String>, resource: impl Into<String>) -> Access {
    Access { action: action.into(), resource: resource.into() }
}

/// What AWS would evaluate for one request of `service`.
fn accesses(service: &str, request: &Value) -> Result<Vec<Access>, String> {
    match service {
        "dynamodb" => dynamodb(request),
        "sqs" => sqs(request),
        "s3" => s3(request),
        "secretsmanager" => secrets(request),
        "scheduler" => scheduler(request),
        "sns" => sns(request),
        other => Err(format!("service {other}")),
    }
}

fn json_body(request: &Value) -> Result<Value, String> {
    let text = body(request);
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| format!("a body that is not JSON ({e})"))
}

/// The operation of a JSON-protocol request (`X-Amz-Target: Prefix.Operation`).
fn target(request: &Value) -> Result<String, String> {
    header(request, "x-amz-target")
        .and_then(|t| t.rsplit('.').next())
        .map(str::to_string)
        .ok_or_else(|| "a JSON request without X-Amz-Target".to_string())
}

fn table_arn(name: &str) -> String {
    format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}")
}

fn dynamodb(request: &Value) -> Result<Vec<Access>, String> {
    let operation = target(request)?;
    let body = json_body(request)?;
    let table = || body["TableName"].as_str().map(table_arn).ok_or_else(|| format!("{operation} without TableName"));
    let per_table = |action: &str| -> Result<Vec<Access>, String> {
        let items = body["RequestItems"].as_object().ok_or_else(|| format!("{operation} without RequestItems"))?;
        Ok(items.keys().map(|t| access(format!("dynamodb:{action}"), table_arn(t))).collect())
    };
    match operation.as_str() {
        "GetItem" | "PutItem" | "UpdateItem" | "DeleteItem" | "DescribeTable" => {
            Ok(vec![access(format!("dynamodb:{operation}"), table()?)])
        }
        "Query" | "Scan" => {
            let resource = match body["IndexName"].as_str() {
                Some(index) => format!("{}/index/{index}", table()?),
                None => table()?,
            };
            Ok(vec![access(format!("dynamodb:{operation}"), resource)])
        }
        "BatchGetItem" | "BatchWriteItem" => per_table(&operation),
        "TransactWriteItems" | "TransactGetItems" => {
            let items = body["TransactItems"].as_array().ok_or("TransactItems missing")?;
            items
                .iter()
                .map(|item| {
                    let (kind, inner) = item
                        .as_object()
                        .and_then(|o| o.iter().next())
                        .ok_or_else(|| "an empty transaction item".to_string())?;
                    let action = match kind.as_str() {
                        "ConditionCheck" => "ConditionCheckItem",
                        "Put" => "PutItem",
                        "Update" => "UpdateItem",
                        "Delete" => "DeleteItem",
                        "Get" => "GetItem",
                        other => return Err(format!("transaction item {other}")),
                    };
                    let name = inner["TableName"].as_str().ok_or("a transaction item without TableName")?;
                    Ok(access(format!("dynamodb:{action}"), table_arn(name)))
                })
                .collect()
        }
        other => Err(format!("DynamoDB {other}")),
    }
}

fn queue_arn(url: &str) -> Option<String> {
    let name = url.trim_end_matches('/').rsplit('/').next()?;
    Some(format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"))
}

fn sqs(request: &Value) -> Result<Vec<Access>, String> {
    let operation = target(request)?;
    let body = json_body(request)?;
    let queue = body["QueueUrl"]
        .as_str()
        .and_then(queue_arn)
        .or_else(|| body["QueueName"].as_str().map(|n| format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{n}")))
        .ok_or_else(|| format!("SQS {operation} without a queue"))?;
    let action = match operation.as_str() {
        "SendMessage" | "SendMessageBatch" => "SendMessage",
        "DeleteMessage" | "DeleteMessageBatch" => "DeleteMessage",
        "ChangeMessageVisibility" | "ChangeMessageVisibilityBatch" => "ChangeMessageVisibility",
        "ReceiveMessage" | "GetQueueAttributes" | "GetQueueUrl" | "PurgeQueue" => operation.as_str(),
        other => return Err(format!("SQS {other}")),
    };
    Ok(vec![access(format!("sqs:{action}"), queue)])
}

fn path_and_query(request: &Value) -> (String, String) {
    let url = request["url"].as_str().unwrap_or_default();
    let after_host = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_host.find('/').map_or("/", |i| &after_host[i..]);
    match path.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (path.to_string(), String::new()),
    }
}

fn has_param(query: &str, name: &str) -> bool {
    query.split('&').any(|kv| kv.split('=').next() == Some(name))
}

fn s3(request: &Value) -> Result<Vec<Access>, String> {
    let method = request["method"].as_str().unwrap_or_default();
    let (path, query) = path_and_query(request);
    let trimmed = path.trim_start_matches('/');
    let (bucket, key) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let object_arn = format!("arn:aws:s3:::{bucket}/{key}");
    let on_object = |action: &str| Ok(vec![access(format!("s3:{action}"), object_arn.clone())]);
    if key.is_empty() {
        return match method {
            "GET" | "HEAD" => Ok(vec![access("s3:ListBucket", bucket_arn)]),
            // DeleteObjects: one DeleteObject per key (the body lists them; the bucket's
            // objects stand for them).
            "POST" if has_param(&query, "delete") => Ok(vec![access("s3:DeleteObject", format!("{bucket_arn}/*"))]),
            _ => Err(format!("S3 {method} on a bucket")),
        };
    }
    match method {
        "GET" | "HEAD" => on_object("GetObject"),
        "PUT" | "POST" => {
            let mut list = vec![access("s3:PutObject", object_arn.clone())];
            if let Some(source) = header(request, "x-amz-copy-source") {
                let source = source.trim_start_matches('/');
                list.push(access("s3:GetObject", format!("arn:aws:s3:::{source}")));
            }
            Ok(list)
        }
        "DELETE" if has_param(&query, "uploadId") => on_object("AbortMultipartUpload"),
        "DELETE" => on_object("DeleteObject"),
        other => Err(format!("S3 {other} on an object")),
    }
}

fn secrets(request: &Value) -> Result<Vec<Access>, String> {
    let operation = target(request)?;
    let body = json_body(request)?;
    let id = body["SecretId"].as_str().ok_or_else(|| format!("Secrets Manager {operation} without SecretId"))?;
    // AWS names a secret's ARN after it with six characters of its own.
    let arn = if id.starts_with("arn:") {
        id.to_string()
    } else {
        format!("arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{id}-AbCdEf")
    };
    Ok(vec![access(format!("secretsmanager:{operation}"), arn)])
}

/// SNS speaks the query protocol: a form body naming the `Action` and its `TopicArn`.
fn sns(request: &Value) -> Result<Vec<Access>, String> {
    let text = body(request);
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(text.as_bytes()).into_owned().collect();
    let action = form.get("Action").ok_or("an SNS request without an Action")?;
    let topic = form.get("TopicArn").ok_or_else(|| format!("SNS {action} without a TopicArn"))?;
    Ok(vec![access(format!("sns:{action}"), topic.clone())])
}

fn scheduler(request: &Value) -> Result<Vec<Access>, String> {
    let method = request["method"].as_str().unwrap_or_default();
    let (path, query) = path_and_query(request);
    let body = json_body(request)?;
    let Some(name) = path.strip_prefix("/schedules/").filter(|n| !n.is_empty()) else {
        return match (method, path.as_str()) {
            ("GET", "/schedules") => {
                Ok(vec![access("scheduler:ListSchedules", format!("arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/*"))])
            }
            _ => Err(format!("Scheduler {method} {path}")),
        };
    };
    let group = body["GroupName"]
        .as_str()
        .map(str::to_string)
        .or_else(|| query.split('&').find_map(|kv| kv.strip_prefix("groupName=").map(str::to_string)))
        .unwrap_or_else(|| "default".into());
    let arn = format!("arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/{group}/{name}");
    let action = match method {
        "POST" => "CreateSchedule",
        "PUT" => "UpdateSchedule",
        "GET" => "GetSchedule",
        "DELETE" => "DeleteSchedule",
        other => return Err(format!("Scheduler {other} on a schedule")),
    };
    let mut list = vec![access(format!("scheduler:{action}"), arn)];
    if let Some(role) = body["Target"]["RoleArn"].as_str() {
        list.push(access("iam:PassRole", role));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(method: &str, url: &str, target: Option<&str>, body: Value) -> Value {
        let mut headers = json!({"Authorization": "AWS4-HMAC-SHA256 Credential=WorkerQueryFunction/20261202/us-east-1/dynamodb/aws4_request, SignedHeaders=host"});
        if let Some(t) = target {
            headers["X-Amz-Target"] = json!(t);
        }
        json!({"method": method, "url": url, "headers": headers, "body": body.to_string(), "body_encoded": false})
    }

    #[test]
    fn wildcards_match_as_iam_matches_them() {
        assert!(glob("dynamodb:*", "dynamodb:GetItem", true));
        assert!(glob("arn:aws:s3:::b/*", "arn:aws:s3:::b/dfs/x/payload", false));
        assert!(!glob("arn:aws:s3:::b/*", "arn:aws:s3:::b", false));
        assert!(glob(
            "arn:aws:secretsmanager:r:a:secret:handoff/*",
            "arn:aws:secretsmanager:r:a:secret:handoff/x-AbCdEf",
            false
        ));
        assert!(!glob(
            "arn:aws:secretsmanager:r:a:secret:handoff/*",
            "arn:aws:secretsmanager:r:a:secret:other-AbCdEf",
            false
        ));
        assert!(glob("a?c", "abc", false) && !glob("a?c", "ac", false));
    }

    #[test]
    fn a_transaction_needs_the_action_of_each_item_and_an_index_query_the_index() {
        let body = json!({"TransactItems": [
            {"ConditionCheck": {"TableName": "E", "Key": {}}},
            {"Update": {"TableName": "E", "Key": {}}},
            {"Put": {"TableName": "I", "Item": {}}}]});
        let r = request("POST", "http://x/", Some("DynamoDB_20120810.TransactWriteItems"), body);
        let actions: Vec<_> = dynamodb(&r).unwrap().into_iter().map(|a| a.action).collect();
        assert_eq!(actions, ["dynamodb:ConditionCheckItem", "dynamodb:UpdateItem", "dynamodb:PutItem"]);
        let q = request(
            "POST",
            "http://x/",
            Some("DynamoDB_20120810.Query"),
            json!({"TableName": "E", "IndexName": "byParent"}),
        );
        assert_eq!(dynamodb(&q).unwrap()[0].resource, format!("{}/index/byParent", table_arn("E")));
    }

    #[test]
    fn s3_requests_map_to_object_and_bucket_actions() {
        let action = |method: &str, url: &str| s3(&request(method, url, None, Value::Null)).unwrap()[0].action.clone();
        assert_eq!(action("DELETE", "http://x/b/k?uploadId=1"), "s3:AbortMultipartUpload");
        assert_eq!(action("PUT", "http://x/b/k?partNumber=2&uploadId=1"), "s3:PutObject");
        assert_eq!(action("HEAD", "http://x/b/k"), "s3:GetObject");
        assert_eq!(action("GET", "http://x/b?list-type=2&prefix=dfs/"), "s3:ListBucket");
    }

    #[test]
    fn a_denying_statement_wins_and_nothing_is_allowed_unless_granted() {
        let grant = Statement { allow: true, actions: vec!["sqs:*".into()], resources: vec!["*".into()] };
        let deny = Statement { allow: false, actions: vec!["sqs:SendMessage".into()], resources: vec!["arn:q".into()] };
        let send = access("sqs:SendMessage", "arn:q");
        assert!(allowed(std::slice::from_ref(&grant), &send));
        assert!(!allowed(&[grant, deny], &send));
        assert!(!allowed(&[], &send));
    }
}
