//! Physical names: what `!Ref` and `!GetAtt` evaluate to, derived deterministically from the
//! stack name and logical id, and the pseudo parameters.

use super::*;

/// URLs only known at run time that appear in resolved values.
#[derive(Debug, Clone)]
pub struct LocalUrls {
    /// The AWS emulator endpoint (queue URLs are `<endpoint>/<account>/<name>`).
    pub aws_endpoint: String,
    /// Base URL of the local HTTP API (`HttpApi.ApiEndpoint`).
    pub api_url: String,
}

/// Physical identities of the stack: what `!Ref` and `!GetAtt` evaluate to.
#[derive(Debug, Clone)]
pub struct Identities {
    pub(super) parameters: BTreeMap<String, String>,
    /// The template's `Mappings` (for `!FindInMap`).
    pub(super) mappings: Value,
    pub(super) refs: HashMap<String, String>,
    pub(super) attrs: HashMap<(String, String), String>,
}

impl Identities {
    /// `!Ref logical` for a resource or parameter.
    pub fn ref_value(&self, name: &str) -> Result<String, TemplateError> {
        if let Some(v) = pseudo(name) {
            return Ok(v.to_string());
        }
        self.parameters
            .get(name)
            .or_else(|| self.refs.get(name))
            .cloned()
            .ok_or_else(|| TemplateError::UnknownReference(name.to_string()))
    }

    /// `!GetAtt logical.attribute`.
    pub fn attribute(&self, logical_id: &str, attribute: &str) -> Result<String, TemplateError> {
        if let Some(v) = self.attrs.get(&(logical_id.to_string(), attribute.to_string())) {
            return Ok(v.clone());
        }
        if self.refs.contains_key(logical_id) {
            Err(TemplateError::UnknownAttribute {
                logical_id: logical_id.to_string(),
                attribute: attribute.to_string(),
            })
        } else {
            Err(TemplateError::UnknownReference(format!("{logical_id}.{attribute}")))
        }
    }

    /// Overrides a resource's Ref value, e.g. with the queue URL the AWS emulator
    /// actually returned (moto derives it from the request's host).
    pub fn set_ref(&mut self, logical_id: &str, value: String) {
        self.refs.insert(logical_id.to_string(), value);
    }

    /// The logical id of the resource whose `Arn` attribute is `arn`.
    pub fn logical_id_for_arn(&self, arn: &str) -> Option<&str> {
        self.attrs.iter().find(|((_, attr), v)| attr == "Arn" && v.as_str() == arn).map(|((id, _), _)| id.as_str())
    }

    pub(super) fn identify(&mut self, r: &Resource, urls: &LocalUrls) -> Result<(), TemplateError> {
        let id = r.logical_id.as_str();
        let named = |prop: &str, lower: bool| -> Result<String, TemplateError> {
            match r.property(prop) {
                Some(v) => self.resolve_string(v),
                None => Ok(physical_name(id, lower)),
            }
        };
        let arn = |service: &str, rest: &str| format!("arn:{PARTITION}:{service}:{REGION}:{ACCOUNT_ID}:{rest}");
        let mut attrs: Vec<(&str, String)> = Vec::new();
        let reference = match r.kind.as_str() {
            "AWS::DynamoDB::Table" => {
                let name = named("TableName", false)?;
                attrs.push(("Arn", arn("dynamodb", &format!("table/{name}"))));
                attrs.push(("StreamArn", arn("dynamodb", &format!("table/{name}/stream/local"))));
                name
            }
            "AWS::SQS::Queue" => {
                let mut name = named("QueueName", false)?;
                let fifo = r.property("FifoQueue").and_then(scalar_string).is_some_and(|s| s == "true");
                if fifo && !name.ends_with(".fifo") {
                    name.push_str(".fifo");
                }
                let url = format!("{}/{ACCOUNT_ID}/{name}", urls.aws_endpoint.trim_end_matches('/'));
                attrs.push(("Arn", arn("sqs", &name)));
                attrs.push(("QueueName", name));
                attrs.push(("QueueUrl", url.clone()));
                url
            }
            "AWS::S3::Bucket" => {
                let name = named("BucketName", true)?;
                attrs.push(("Arn", format!("arn:{PARTITION}:s3:::{name}")));
                attrs.push(("DomainName", format!("{name}.s3.amazonaws.com")));
                attrs.push(("RegionalDomainName", format!("{name}.s3.{REGION}.amazonaws.com")));
                name
            }
            "AWS::Serverless::Function" | "AWS::Lambda::Function" => {
                let name = named("FunctionName", false)?;
                attrs.push(("Arn", arn("lambda", &format!("function:{name}"))));
                name
            }
            "AWS::Scheduler::ScheduleGroup" => {
                let name = named("Name", false)?;
                attrs.push(("Arn", arn("scheduler", &format!("schedule-group/{name}"))));
                name
            }
            "AWS::Scheduler::Schedule" => {
                let name = named("Name", false)?;
                let group = match r.property("GroupName") {
                    Some(v) => self.resolve_string(v)?,
                    None => "default".to_string(),
                };
                attrs.push(("Arn", arn("scheduler", &format!("schedule/{group}/{name}"))));
                name
            }
            "AWS::IAM::Role" => {
                let name = named("RoleName", false)?;
                attrs.push(("Arn", format!("arn:{PARTITION}:iam::{ACCOUNT_ID}:role/{name}")));
                attrs.push(("RoleId", format!("AROA{}", short_id(id).to_uppercase())));
                name
            }
            "AWS::Serverless::HttpApi" | "AWS::ApiGatewayV2::Api" => {
                let api_id = short_id(id);
                attrs.push(("ApiEndpoint", urls.api_url.clone()));
                attrs.push(("ApiId", api_id.clone()));
                api_id
            }
            "AWS::SecretsManager::Secret" => {
                let name = named("Name", false)?;
                let secret_arn = arn("secretsmanager", &format!("secret:{name}"));
                attrs.push(("Id", secret_arn.clone()));
                secret_arn
            }
            other => {
                // Unknown kinds still get a stable name so Ref/Arn resolve.
                let name = physical_name(id, false);
                let service = other.split("::").nth(1).unwrap_or("unknown").to_ascii_lowercase();
                attrs.push(("Arn", arn(&service, &name)));
                name
            }
        };
        self.refs.insert(id.to_string(), reference);
        for (k, v) in attrs {
            self.attrs.insert((id.to_string(), k.to_string()), v);
        }
        Ok(())
    }
}

pub(super) fn pseudo(name: &str) -> Option<&'static str> {
    match name {
        "AWS::StackName" => Some(STACK_NAME),
        "AWS::Region" => Some(REGION),
        "AWS::AccountId" => Some(ACCOUNT_ID),
        "AWS::Partition" => Some(PARTITION),
        "AWS::URLSuffix" => Some("amazonaws.com"),
        "AWS::StackId" => Some("arn:aws:cloudformation:us-east-1:123456789012:stack/handoff/local"),
        _ => None,
    }
}

/// Deterministic physical name: `<stack>-<LogicalId>` (lower-case for buckets, which
/// S3 requires).
pub fn physical_name(logical_id: &str, lower: bool) -> String {
    let name = format!("{STACK_NAME}-{logical_id}");
    if lower {
        name.to_ascii_lowercase()
    } else {
        name
    }
}

/// A 10-character id derived from the logical id (FNV-1a), like an API Gateway id.
pub(super) fn short_id(logical_id: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in STACK_NAME.bytes().chain(logical_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..10).map(|i| ALPHABET[((h >> (i * 6)) % 36) as usize] as char).collect()
}
