//! Creates the template's resources in the AWS emulator.
//!
//! Order follows references (a queue's dead-letter queue is created before the queue whose
//! RedrivePolicy names it). Every step is idempotent: an emulator reused through
//! `HANDOFF_AWS_ENDPOINT` may already hold the resources, and that is fine.

use crate::template::{yaml_to_json, Identities, Template, TemplateError};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use serde_json::Value as Json;
use std::collections::{BTreeSet, HashMap};

/// Role used for schedules when the template names none (moto does not check it).
const DEFAULT_SCHEDULER_ROLE: &str = "arn:aws:iam::123456789012:role/handoff-scheduler";

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("provisioning {logical_id} ({kind}): {message}")]
    Resource { logical_id: String, kind: String, message: String },
}

/// AWS SDK clients of the services the template uses.
#[derive(Clone, Debug)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub scheduler: aws_sdk_scheduler::Client,
}

impl Clients {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        let s3_conf = aws_sdk_s3::config::Builder::from(sdk).force_path_style(true).build();
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
            scheduler: aws_sdk_scheduler::Client::new(sdk),
        }
    }
}

fn sdk_message<E>(e: &E) -> String
where
    E: std::error::Error,
{
    aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()
}

/// Provisions every supported resource and the schedules declared by functions'
/// `ScheduleV2` events. Updates `ids` with the queue URLs the emulator returned.
pub async fn provision(template: &Template, ids: &mut Identities, clients: &Clients) -> Result<(), ProvisionError> {
    for logical_id in creation_order(template) {
        let Some(r) = template.resource(&logical_id) else {
            continue;
        };
        let fail = |message: String| ProvisionError::Resource {
            logical_id: logical_id.clone(),
            kind: r.kind.clone(),
            message,
        };
        let props = yaml_to_json(&ids.resolve(&r.properties)?);
        match r.kind.as_str() {
            "AWS::DynamoDB::Table" => {
                let name = ids.ref_value(&logical_id)?;
                create_table(clients, &name, &props).await.map_err(fail)?;
            }
            "AWS::SQS::Queue" => {
                let name = ids.attribute(&logical_id, "QueueName")?;
                let url = create_queue(clients, &name, &props).await.map_err(fail)?;
                ids.set_ref(&logical_id, url);
            }
            "AWS::S3::Bucket" => {
                let name = ids.ref_value(&logical_id)?;
                create_bucket(clients, &name, &props).await.map_err(fail)?;
            }
            "AWS::Scheduler::ScheduleGroup" => {
                let name = ids.ref_value(&logical_id)?;
                ensure_schedule_group(clients, &name).await.map_err(fail)?;
            }
            "AWS::Scheduler::Schedule" => {
                let name = ids.ref_value(&logical_id)?;
                let s = |k: &str| props.get(k).and_then(json_scalar);
                let target = props.get("Target").cloned().unwrap_or(Json::Null);
                let target_arn =
                    target.get("Arn").and_then(json_scalar).ok_or_else(|| fail("Target.Arn missing".into()))?;
                let def = ScheduleDef {
                    name,
                    group: s("GroupName").unwrap_or_else(|| "default".into()),
                    expression: s("ScheduleExpression").ok_or_else(|| fail("ScheduleExpression missing".into()))?,
                    timezone: s("ScheduleExpressionTimezone"),
                    target_arn,
                    role_arn: target.get("RoleArn").and_then(json_scalar),
                    input: target.get("Input").and_then(json_scalar),
                    enabled: s("State").is_none_or(|st| st != "DISABLED"),
                };
                put_schedule(clients, &def).await.map_err(fail)?;
            }
            _ => {}
        }
    }
    for f in template.functions(ids)? {
        for s in &f.schedules {
            let def = ScheduleDef {
                name: s.name.clone(),
                group: s.group.clone(),
                expression: s.expression.clone(),
                timezone: s.timezone.clone(),
                target_arn: f.arn.clone(),
                role_arn: s.role_arn.clone(),
                input: s.input.clone(),
                enabled: s.enabled,
            };
            put_schedule(clients, &def).await.map_err(|message| ProvisionError::Resource {
                logical_id: format!("{}.{}", f.logical_id, s.event_name),
                kind: "ScheduleV2".into(),
                message,
            })?;
        }
    }
    Ok(())
}

/// Creates the table `logical_id` of the project's `infra/template.yaml` under `name`, with
/// exactly the key schema, attributes and indexes the stack gets: adapter tests give each
/// run its own table this way instead of writing the schema a second time.
pub async fn create_template_table(
    sdk: &aws_config::SdkConfig,
    logical_id: &str,
    name: &str,
) -> Result<(), ProvisionError> {
    let template = Template::load(&crate::moto::workspace_root().join("infra").join("template.yaml"))?;
    let urls = crate::template::LocalUrls { aws_endpoint: String::new(), api_url: String::new() };
    let ids = template.identities(&urls)?;
    let fail = |message: String| ProvisionError::Resource {
        logical_id: logical_id.to_string(),
        kind: "AWS::DynamoDB::Table".into(),
        message,
    };
    let table = template
        .resource(logical_id)
        .filter(|r| r.kind == "AWS::DynamoDB::Table")
        .ok_or_else(|| fail("the template has no such table".into()))?;
    let props = yaml_to_json(&ids.resolve(&table.properties)?);
    create_table(&Clients::new(sdk), name, &props).await.map_err(fail)
}

/// Logical ids in an order where every resource comes after the resources it refers to
/// (template order among independent ones).
pub fn creation_order(template: &Template) -> Vec<String> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut order = Vec::new();
    fn visit(
        t: &Template,
        id: &str,
        done: &mut BTreeSet<String>,
        visiting: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if done.contains(id) || !visiting.insert(id.to_string()) {
            return; // done, or a cycle (functions ↔ roles): break it here
        }
        if let Some(r) = t.resource(id) {
            for dep in t.dependencies(r) {
                visit(t, &dep, done, visiting, order);
            }
        }
        visiting.remove(id);
        done.insert(id.to_string());
        order.push(id.to_string());
    }
    for r in &template.resources {
        let mut visiting = BTreeSet::new();
        visit(template, &r.logical_id, &mut done, &mut visiting, &mut order);
    }
    order
}

fn json_scalar(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        Json::Null => None,
        other => Some(other.to_string()),
    }
}

async fn create_table(c: &Clients, name: &str, p: &Json) -> Result<(), String> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, LocalSecondaryIndex,
        Projection, ProjectionType, ProvisionedThroughput, ScalarAttributeType,
    };
    fn keys(v: Option<&Json>) -> Result<Vec<KeySchemaElement>, String> {
        v.and_then(Json::as_array)
            .ok_or("KeySchema missing")?
            .iter()
            .map(|k| {
                KeySchemaElement::builder()
                    .attribute_name(k.get("AttributeName").and_then(json_scalar).unwrap_or_default())
                    .key_type(KeyType::from(k.get("KeyType").and_then(Json::as_str).unwrap_or_default()))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
    fn projection(v: Option<&Json>) -> Projection {
        let mut b = Projection::builder().projection_type(ProjectionType::from(
            v.and_then(|p| p.get("ProjectionType")).and_then(Json::as_str).unwrap_or("ALL"),
        ));
        for a in v.and_then(|p| p.get("NonKeyAttributes")).and_then(Json::as_array).into_iter().flatten() {
            if let Some(a) = a.as_str() {
                b = b.non_key_attributes(a);
            }
        }
        b.build()
    }
    let provisioned = p.get("BillingMode").and_then(Json::as_str) == Some("PROVISIONED");
    let throughput = |v: Option<&Json>| {
        let n = |k: &str| v.and_then(|t| t.get(k)).and_then(json_scalar).and_then(|s| s.parse().ok()).unwrap_or(5);
        ProvisionedThroughput::builder()
            .read_capacity_units(n("ReadCapacityUnits"))
            .write_capacity_units(n("WriteCapacityUnits"))
            .build()
            .map_err(|e| e.to_string())
    };
    let mut req = c
        .dynamodb
        .create_table()
        .table_name(name)
        .set_key_schema(Some(keys(p.get("KeySchema"))?))
        .billing_mode(if provisioned { BillingMode::Provisioned } else { BillingMode::PayPerRequest });
    if provisioned {
        req = req.provisioned_throughput(throughput(p.get("ProvisionedThroughput"))?);
    }
    for a in p.get("AttributeDefinitions").and_then(Json::as_array).into_iter().flatten() {
        req = req.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(a.get("AttributeName").and_then(json_scalar).unwrap_or_default())
                .attribute_type(ScalarAttributeType::from(a.get("AttributeType").and_then(Json::as_str).unwrap_or("S")))
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    for g in p.get("GlobalSecondaryIndexes").and_then(Json::as_array).into_iter().flatten() {
        let mut b = GlobalSecondaryIndex::builder()
            .index_name(g.get("IndexName").and_then(json_scalar).unwrap_or_default())
            .set_key_schema(Some(keys(g.get("KeySchema"))?))
            .projection(projection(g.get("Projection")));
        if provisioned {
            b = b.provisioned_throughput(throughput(g.get("ProvisionedThroughput"))?);
        }
        req = req.global_secondary_indexes(b.build().map_err(|e| e.to_string())?);
    }
    for l in p.get("LocalSecondaryIndexes").and_then(Json::as_array).into_iter().flatten() {
        req = req.local_secondary_indexes(
            LocalSecondaryIndex::builder()
                .index_name(l.get("IndexName").and_then(json_scalar).unwrap_or_default())
                .set_key_schema(Some(keys(l.get("KeySchema"))?))
                .projection(projection(l.get("Projection")))
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    match req.send().await {
        Ok(_) => tracing::info!(table = name, "table created"),
        Err(e) if e.code() == Some("ResourceInUseException") => {
            tracing::info!(table = name, "table exists")
        }
        Err(e) => return Err(sdk_message(&e)),
    }
    if let Some(ttl) = p.get("TimeToLiveSpecification") {
        if ttl.get("Enabled").and_then(json_scalar).as_deref() == Some("true") {
            let spec = aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(ttl.get("AttributeName").and_then(json_scalar).unwrap_or_default())
                .build()
                .map_err(|e| e.to_string())?;
            if let Err(e) =
                c.dynamodb.update_time_to_live().table_name(name).time_to_live_specification(spec).send().await
            {
                // Already enabled on a reused emulator: not a problem.
                tracing::debug!(table = name, error = %sdk_message(&e), "time to live not updated");
            }
        }
    }
    Ok(())
}

/// SQS attributes of an `AWS::SQS::Queue`'s properties.
pub fn queue_attributes(p: &Json) -> HashMap<String, String> {
    let mut attrs = HashMap::new();
    for key in [
        "VisibilityTimeout",
        "MessageRetentionPeriod",
        "DelaySeconds",
        "MaximumMessageSize",
        "ReceiveMessageWaitTimeSeconds",
        "FifoQueue",
        "ContentBasedDeduplication",
    ] {
        if let Some(v) = p.get(key).and_then(json_scalar) {
            attrs.insert(key.to_string(), v);
        }
    }
    if let Some(r) = p.get("RedrivePolicy") {
        let count = r.get("maxReceiveCount").and_then(json_scalar).and_then(|s| s.parse::<u64>().ok());
        let arn = r.get("deadLetterTargetArn").and_then(json_scalar);
        if let (Some(count), Some(arn)) = (count, arn) {
            attrs.insert(
                "RedrivePolicy".into(),
                serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": count}).to_string(),
            );
        }
    }
    attrs
}

async fn create_queue(c: &Clients, name: &str, p: &Json) -> Result<String, String> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let attrs: HashMap<QueueAttributeName, String> =
        queue_attributes(p).into_iter().map(|(k, v)| (QueueAttributeName::from(k.as_str()), v)).collect();
    match c.sqs.create_queue().queue_name(name).set_attributes(Some(attrs.clone())).send().await {
        Ok(out) => {
            tracing::info!(queue = name, "queue created");
            out.queue_url().map(str::to_string).ok_or_else(|| "CreateQueue returned no QueueUrl".to_string())
        }
        Err(e) if e.code().is_some_and(|c| c.contains("QueueAlreadyExists") || c.contains("QueueNameExists")) => {
            let url = c
                .sqs
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| sdk_message(&e))?
                .queue_url()
                .map(str::to_string)
                .ok_or_else(|| "GetQueueUrl returned no QueueUrl".to_string())?;
            let mut settable = attrs;
            settable.remove(&QueueAttributeName::FifoQueue);
            c.sqs
                .set_queue_attributes()
                .queue_url(&url)
                .set_attributes(Some(settable))
                .send()
                .await
                .map_err(|e| sdk_message(&e))?;
            tracing::info!(queue = name, "queue exists; attributes updated");
            Ok(url)
        }
        Err(e) => Err(sdk_message(&e)),
    }
}

async fn create_bucket(c: &Clients, name: &str, p: &Json) -> Result<(), String> {
    match c.s3.create_bucket().bucket(name).send().await {
        Ok(_) => tracing::info!(bucket = name, "bucket created"),
        Err(e) if e.code().is_some_and(|c| c == "BucketAlreadyOwnedByYou" || c == "BucketAlreadyExists") => {
            tracing::info!(bucket = name, "bucket exists")
        }
        Err(e) => return Err(sdk_message(&e)),
    }
    let versioning = p.get("VersioningConfiguration").and_then(|v| v.get("Status")).and_then(Json::as_str);
    if versioning == Some("Enabled") {
        let conf = aws_sdk_s3::types::VersioningConfiguration::builder()
            .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
            .build();
        c.s3.put_bucket_versioning()
            .bucket(name)
            .versioning_configuration(conf)
            .send()
            .await
            .map_err(|e| sdk_message(&e))?;
    }
    Ok(())
}

/// Creates a schedule group unless it exists (moto's CreateScheduleGroup would silently
/// replace an existing group and drop its schedules).
async fn ensure_schedule_group(c: &Clients, name: &str) -> Result<(), String> {
    if name == "default" {
        return Ok(());
    }
    match c.scheduler.get_schedule_group().name(name).send().await {
        Ok(_) => {
            tracing::info!(group = name, "schedule group exists");
            return Ok(());
        }
        Err(e) if e.code() == Some("ResourceNotFoundException") => {}
        Err(e) => return Err(sdk_message(&e)),
    }
    c.scheduler.create_schedule_group().name(name).send().await.map_err(|e| sdk_message(&e))?;
    tracing::info!(group = name, "schedule group created");
    Ok(())
}

struct ScheduleDef {
    name: String,
    group: String,
    expression: String,
    timezone: Option<String>,
    target_arn: String,
    role_arn: Option<String>,
    input: Option<String>,
    enabled: bool,
}

async fn put_schedule(c: &Clients, d: &ScheduleDef) -> Result<(), String> {
    use aws_sdk_scheduler::types::{FlexibleTimeWindow, FlexibleTimeWindowMode, ScheduleState, Target};
    handoff_core::schedule::ScheduleExpression::parse(&d.expression)
        .map_err(|e| format!("schedule {}: {e}", d.name))?;
    if let Some(tz) = &d.timezone {
        handoff_core::schedule::parse_timezone(tz).map_err(|e| format!("schedule {}: {e}", d.name))?;
    }
    ensure_schedule_group(c, &d.group).await?;
    let target = Target::builder()
        .arn(&d.target_arn)
        .role_arn(d.role_arn.as_deref().unwrap_or(DEFAULT_SCHEDULER_ROLE))
        .set_input(d.input.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let window = FlexibleTimeWindow::builder().mode(FlexibleTimeWindowMode::Off).build().map_err(|e| e.to_string())?;
    let state = if d.enabled { ScheduleState::Enabled } else { ScheduleState::Disabled };
    let created = c
        .scheduler
        .create_schedule()
        .name(&d.name)
        .group_name(&d.group)
        .schedule_expression(&d.expression)
        .set_schedule_expression_timezone(d.timezone.clone())
        .flexible_time_window(window.clone())
        .target(target.clone())
        .state(state.clone())
        .send()
        .await;
    match created {
        Ok(_) => tracing::info!(schedule = %d.name, group = %d.group, "schedule created"),
        Err(e) if e.code() == Some("ConflictException") => {
            c.scheduler
                .update_schedule()
                .name(&d.name)
                .group_name(&d.group)
                .schedule_expression(&d.expression)
                .set_schedule_expression_timezone(d.timezone.clone())
                .flexible_time_window(window)
                .target(target)
                .state(state)
                .send()
                .await
                .map_err(|e| sdk_message(&e))?;
            tracing::info!(schedule = %d.name, group = %d.group, "schedule updated");
        }
        Err(e) => return Err(sdk_message(&e)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn dead_letter_queues_come_first() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
        let t = Template::load(&path).expect("template");
        let order = creation_order(&t);
        let pos = |id: &str| order.iter().position(|x| x == id).expect("present");
        assert!(pos("ControlDlq") < pos("ControlQueue"));
        assert!(pos("DeliverRestDlq") < pos("DeliverRestQueue"));
        assert_eq!(order.len(), t.resources.len());
    }

    #[test]
    fn redrive_policy_is_json_with_a_numeric_count() {
        let p = serde_json::json!({
            "VisibilityTimeout": 60,
            "RedrivePolicy": {"deadLetterTargetArn": "arn:aws:sqs:us-east-1:123456789012:dlq", "maxReceiveCount": "3"}
        });
        let a = queue_attributes(&p);
        assert_eq!(a.get("VisibilityTimeout").map(String::as_str), Some("60"));
        let r: Json = serde_json::from_str(a.get("RedrivePolicy").expect("policy")).expect("json");
        assert_eq!(r["maxReceiveCount"], 3);
    }
}
