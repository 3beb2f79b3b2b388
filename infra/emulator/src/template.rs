//! Reading `infra/template.yaml` (AWS SAM) and resolving its intrinsic functions.
//!
//! The template is the single source of truth for the topology (SPEC §1): the emulator
//! derives every table, queue, bucket, route, event-source mapping and schedule from it,
//! so nothing here may name a concrete resource. Physical names are derived
//! deterministically from the stack name and logical id (as CloudFormation would, minus
//! the random suffix), so a reused AWS emulator (`HANDOFF_AWS_ENDPOINT`) finds the same
//! resources again.

use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `${AWS::StackName}` of the local stack.
pub const STACK_NAME: &str = "handoff";
/// `${AWS::Region}`: moto's default region, also used for the SDK.
pub const REGION: &str = "us-east-1";
/// `${AWS::AccountId}`: moto's default account.
pub const ACCOUNT_ID: &str = "123456789012";
/// `${AWS::Partition}`.
pub const PARTITION: &str = "aws";

/// Lambda's default timeout when neither the function nor Globals set one.
const DEFAULT_TIMEOUT_SECONDS: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read template {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("template is not valid YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("template: {0}")]
    Invalid(String),
    #[error("template: unresolved reference '{0}' (no such parameter, resource or pseudo parameter)")]
    UnknownReference(String),
    #[error("template: attribute '{attribute}' of '{logical_id}' is not supported by the emulator")]
    UnknownAttribute { logical_id: String, attribute: String },
    #[error("template: intrinsic function {0} is not supported by the emulator")]
    UnsupportedIntrinsic(String),
}

/// One entry of `Resources`.
#[derive(Debug, Clone)]
pub struct Resource {
    pub logical_id: String,
    /// e.g. `AWS::SQS::Queue`.
    pub kind: String,
    /// Unresolved `Properties` (tags intact).
    pub properties: Value,
    /// Unresolved `Metadata`.
    pub metadata: Value,
}

impl Resource {
    /// An unresolved property by name.
    pub fn property(&self, name: &str) -> Option<&Value> {
        self.properties.get(name)
    }
}

/// The parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    /// Parameter name → default value (as CloudFormation passes it: a string).
    pub parameters: BTreeMap<String, String>,
    /// `Globals.Function` (unresolved), merged under every serverless function.
    pub globals_function: Mapping,
    /// Resources in template order.
    pub resources: Vec<Resource>,
}

impl Template {
    /// Reads and parses a template file.
    pub fn load(path: &Path) -> Result<Self, TemplateError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TemplateError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text)
    }

    /// Parses template text. YAML anchors/aliases (`&WorkerPolicies`) are expanded by
    /// serde_yaml; CloudFormation short tags stay as `Value::Tagged` until resolution.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let root: Value = serde_yaml::from_str(text)?;
        let mut parameters = BTreeMap::new();
        if let Some(params) = root.get("Parameters").and_then(Value::as_mapping) {
            for (name, spec) in params {
                let name = key_string(name)?;
                if let Some(default) = spec.get("Default") {
                    let value = scalar_string(default)
                        .ok_or_else(|| TemplateError::Invalid(format!("parameter {name}: Default must be a scalar")))?;
                    parameters.insert(name, value);
                }
            }
        }
        let globals_function = root
            .get("Globals")
            .and_then(|g| g.get("Function"))
            .and_then(Value::as_mapping)
            .cloned()
            .unwrap_or_default();
        let mut resources = Vec::new();
        let res = root
            .get("Resources")
            .and_then(Value::as_mapping)
            .ok_or_else(|| TemplateError::Invalid("no Resources section".into()))?;
        for (id, body) in res {
            let logical_id = key_string(id)?;
            let kind = body
                .get("Type")
                .and_then(Value::as_str)
                .ok_or_else(|| TemplateError::Invalid(format!("resource {logical_id} has no Type")))?
                .to_string();
            resources.push(Resource {
                logical_id,
                kind,
                properties: body.get("Properties").cloned().unwrap_or(Value::Null),
                metadata: body.get("Metadata").cloned().unwrap_or(Value::Null),
            });
        }
        Ok(Self { parameters, globals_function, resources })
    }

    /// A resource by logical id.
    pub fn resource(&self, logical_id: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.logical_id == logical_id)
    }

    /// Resources of one type, in template order.
    pub fn resources_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Resource> + 'a {
        self.resources.iter().filter(move |r| r.kind == kind)
    }

    /// Computes the physical identity (Ref value and attributes) of every resource.
    ///
    /// Names may themselves use intrinsics (`Name: !Sub "${AWS::StackName}-x"`), so this
    /// iterates to a fixpoint; a reference cycle is reported as an unresolved reference.
    pub fn identities(&self, urls: &LocalUrls) -> Result<Identities, TemplateError> {
        let mut ids = Identities { parameters: self.parameters.clone(), refs: HashMap::new(), attrs: HashMap::new() };
        let mut pending: Vec<&Resource> = self.resources.iter().collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            let mut last_err = None;
            for r in pending.iter().copied() {
                match ids.identify(r, urls) {
                    Ok(()) => {}
                    Err(e @ TemplateError::UnknownReference(_)) => {
                        last_err = Some(e);
                        still.push(r);
                    }
                    Err(e) => return Err(e),
                }
            }
            if still.len() == pending.len() {
                return Err(last_err.unwrap_or_else(|| TemplateError::Invalid("cannot resolve resource names".into())));
            }
            pending = still;
        }
        Ok(ids)
    }

    /// Logical ids this resource refers to (through Ref, GetAtt or Sub), used to
    /// provision dead-letter queues before the queues that name them.
    pub fn dependencies(&self, resource: &Resource) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        collect_refs(&resource.properties, &mut out);
        out.retain(|id| id != &resource.logical_id && self.resource(id).is_some());
        out
    }

    /// Every serverless function with its resolved configuration and events.
    pub fn functions(&self, ids: &Identities) -> Result<Vec<FunctionSpec>, TemplateError> {
        self.resources_of("AWS::Serverless::Function").map(|r| self.function_spec(r, ids)).collect()
    }

    fn function_spec(&self, r: &Resource, ids: &Identities) -> Result<FunctionSpec, TemplateError> {
        let id = &r.logical_id;
        let binary = r
            .metadata
            .get("BuildProperties")
            .and_then(|b| b.get("Binary"))
            .map(|v| ids.resolve_string(v))
            .transpose()?
            .ok_or_else(|| TemplateError::Invalid(format!("function {id} has no Metadata.BuildProperties.Binary")))?;
        let global = Value::Mapping(self.globals_function.clone());
        let lookup = |name: &str| r.property(name).or_else(|| global.get(name));
        let timeout = match lookup("Timeout") {
            Some(v) => ids
                .resolve_string(v)?
                .parse::<u64>()
                .map_err(|_| TemplateError::Invalid(format!("function {id}: Timeout is not a whole number")))?,
            None => DEFAULT_TIMEOUT_SECONDS,
        };
        // Globals' variables first, the function's own override them (SAM merges maps).
        let mut env = BTreeMap::new();
        for source in [global.get("Environment"), r.property("Environment")].into_iter().flatten() {
            if let Some(vars) = source.get("Variables").and_then(Value::as_mapping) {
                for (k, v) in vars {
                    env.insert(key_string(k)?, ids.resolve_string(v)?);
                }
            }
        }
        let mut spec = FunctionSpec {
            logical_id: id.clone(),
            name: ids.ref_value(id)?,
            arn: ids.attribute(id, "Arn")?,
            binary,
            timeout: Duration::from_secs(timeout),
            env,
            sqs_events: Vec::new(),
            http_routes: Vec::new(),
            schedules: Vec::new(),
        };
        if let Some(events) = r.property("Events").and_then(Value::as_mapping) {
            for (name, ev) in events {
                let event_name = key_string(name)?;
                let kind = ev.get("Type").and_then(Value::as_str).unwrap_or_default();
                let props = ev.get("Properties").cloned().unwrap_or(Value::Null);
                let props = ids.resolve(&props)?;
                let ctx = |what: &str| format!("function {id}, event {event_name}: {what}");
                match kind {
                    "SQS" => {
                        let queue_arn = props
                            .get("Queue")
                            .and_then(scalar_string)
                            .ok_or_else(|| TemplateError::Invalid(ctx("SQS event needs Queue")))?;
                        let batch_size = match props.get("BatchSize") {
                            Some(v) => scalar_string(v)
                                .and_then(|s| s.parse::<u32>().ok())
                                .ok_or_else(|| TemplateError::Invalid(ctx("BatchSize is not a number")))?,
                            None => 10,
                        };
                        let report_batch_item_failures = props
                            .get("FunctionResponseTypes")
                            .and_then(Value::as_sequence)
                            .is_some_and(|s| s.iter().any(|v| v.as_str() == Some("ReportBatchItemFailures")));
                        let enabled = props.get("Enabled").and_then(scalar_string).is_none_or(|s| s != "false");
                        spec.sqs_events.push(SqsEventSource {
                            event_name,
                            queue_arn,
                            batch_size,
                            report_batch_item_failures,
                            enabled,
                        });
                    }
                    "HttpApi" => {
                        let method = props
                            .get("Method")
                            .and_then(scalar_string)
                            .map(|m| m.to_ascii_uppercase())
                            .unwrap_or_else(|| "ANY".to_string());
                        let path = props.get("Path").and_then(scalar_string);
                        spec.http_routes.push(HttpRouteSpec {
                            event_name,
                            method: if method == "X-AMAZON-APIGATEWAY-ANY-METHOD" { "ANY".into() } else { method },
                            path,
                        });
                    }
                    "ScheduleV2" => {
                        let s = |k: &str| props.get(k).and_then(scalar_string);
                        let expression = s("ScheduleExpression")
                            .ok_or_else(|| TemplateError::Invalid(ctx("ScheduleV2 needs ScheduleExpression")))?;
                        let input = match props.get("Input") {
                            None | Some(Value::Null) => None,
                            Some(Value::String(s)) => Some(s.clone()),
                            Some(other) => Some(
                                serde_json::to_string(&yaml_to_json(other))
                                    .map_err(|e| TemplateError::Invalid(ctx(&e.to_string())))?,
                            ),
                        };
                        let mut name = s("Name").unwrap_or_else(|| format!("{id}{event_name}"));
                        name.truncate(64);
                        spec.schedules.push(ScheduleSpec {
                            event_name,
                            name,
                            group: s("GroupName").unwrap_or_else(|| "default".to_string()),
                            expression,
                            timezone: s("ScheduleExpressionTimezone"),
                            input,
                            enabled: s("State").is_none_or(|st| st != "DISABLED"),
                            role_arn: s("RoleArn"),
                        });
                    }
                    _ => {
                        tracing::warn!(function = %id, event = %event_name, kind, "event type not emulated; ignored");
                    }
                }
            }
        }
        Ok(spec)
    }
}

/// URLs only known at run time that appear in resolved values.
#[derive(Debug, Clone)]
pub struct LocalUrls {
    /// The AWS emulator endpoint (queue URLs are `<endpoint>/<account>/<name>`).
    pub aws_endpoint: String,
    /// Base URL of the local HTTP API (`HttpApi.ApiEndpoint`).
    pub api_url: String,
}

/// A serverless function as the emulator runs it.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub logical_id: String,
    /// Physical function name.
    pub name: String,
    pub arn: String,
    /// `Metadata.BuildProperties.Binary`, the name `build_function` understands.
    pub binary: String,
    /// Lambda timeout (function or Globals).
    pub timeout: Duration,
    /// Globals' variables merged with the function's, intrinsics resolved.
    pub env: BTreeMap<String, String>,
    pub sqs_events: Vec<SqsEventSource>,
    pub http_routes: Vec<HttpRouteSpec>,
    pub schedules: Vec<ScheduleSpec>,
}

/// A SAM `Type: SQS` event (an event-source mapping).
#[derive(Debug, Clone)]
pub struct SqsEventSource {
    pub event_name: String,
    pub queue_arn: String,
    pub batch_size: u32,
    pub report_batch_item_failures: bool,
    pub enabled: bool,
}

/// A SAM `Type: HttpApi` event. `path = None` is the `$default` catch-all route.
#[derive(Debug, Clone)]
pub struct HttpRouteSpec {
    pub event_name: String,
    /// Upper-case method or `ANY`.
    pub method: String,
    pub path: Option<String>,
}

/// A SAM `Type: ScheduleV2` event (an EventBridge Scheduler schedule).
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    pub event_name: String,
    pub name: String,
    pub group: String,
    pub expression: String,
    pub timezone: Option<String>,
    /// The target Input, as a JSON string.
    pub input: Option<String>,
    pub enabled: bool,
    pub role_arn: Option<String>,
}

/// Physical identities of the stack: what `!Ref` and `!GetAtt` evaluate to.
#[derive(Debug, Clone)]
pub struct Identities {
    parameters: BTreeMap<String, String>,
    refs: HashMap<String, String>,
    attrs: HashMap<(String, String), String>,
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

    fn identify(&mut self, r: &Resource, urls: &LocalUrls) -> Result<(), TemplateError> {
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

    /// Resolves every intrinsic function in `value`; the result has no tags left.
    pub fn resolve(&self, value: &Value) -> Result<Value, TemplateError> {
        match value {
            Value::Tagged(t) => {
                let tag = t.tag.to_string();
                let name = tag.trim_start_matches('!');
                let full = if name == "Ref" { "Ref".to_string() } else { format!("Fn::{name}") };
                self.intrinsic(&full, &t.value)
            }
            Value::Mapping(m) => {
                if m.len() == 1 {
                    if let Some((Value::String(k), v)) = m.iter().next() {
                        if k == "Ref" || k.starts_with("Fn::") {
                            return self.intrinsic(k, v);
                        }
                    }
                }
                let mut out = Mapping::new();
                for (k, v) in m {
                    // `!Ref AWS::NoValue` removes the property.
                    if is_no_value(v) {
                        continue;
                    }
                    out.insert(k.clone(), self.resolve(v)?);
                }
                Ok(Value::Mapping(out))
            }
            Value::Sequence(s) => Ok(Value::Sequence(
                s.iter().filter(|v| !is_no_value(v)).map(|v| self.resolve(v)).collect::<Result<_, _>>()?,
            )),
            other => Ok(other.clone()),
        }
    }

    /// Resolves `value` and renders it as a string (environment variables, names).
    pub fn resolve_string(&self, value: &Value) -> Result<String, TemplateError> {
        let v = self.resolve(value)?;
        scalar_string(&v).ok_or_else(|| TemplateError::Invalid(format!("expected a scalar, got {v:?}")))
    }

    fn intrinsic(&self, function: &str, arg: &Value) -> Result<Value, TemplateError> {
        match function {
            "Ref" => {
                let name = self.resolve_string(arg)?;
                Ok(Value::String(self.ref_value(&name)?))
            }
            "Fn::GetAtt" => {
                let (id, attr) = match self.resolve(arg)? {
                    Value::String(s) => match s.split_once('.') {
                        Some((a, b)) => (a.to_string(), b.to_string()),
                        None => return Err(TemplateError::Invalid(format!("!GetAtt {s}: expected Logical.Attribute"))),
                    },
                    Value::Sequence(s) if s.len() == 2 => {
                        (scalar_string(&s[0]).unwrap_or_default(), scalar_string(&s[1]).unwrap_or_default())
                    }
                    other => return Err(TemplateError::Invalid(format!("!GetAtt: bad argument {other:?}"))),
                };
                Ok(Value::String(self.attribute(&id, &attr)?))
            }
            "Fn::Sub" => {
                let (text, vars) = match arg {
                    Value::Sequence(s) if s.len() == 2 => {
                        let text = self.resolve_string(&s[0])?;
                        let mut vars = HashMap::new();
                        if let Some(m) = s[1].as_mapping() {
                            for (k, v) in m {
                                vars.insert(key_string(k)?, self.resolve_string(v)?);
                            }
                        }
                        (text, vars)
                    }
                    other => (self.resolve_string(other)?, HashMap::new()),
                };
                Ok(Value::String(self.substitute(&text, &vars)?))
            }
            "Fn::Join" => {
                let v = self.resolve(arg)?;
                let parts = v
                    .as_sequence()
                    .filter(|s| s.len() == 2)
                    .ok_or_else(|| TemplateError::Invalid("!Join needs [delimiter, [values]]".into()))?;
                let delim = scalar_string(&parts[0]).unwrap_or_default();
                let items: Vec<String> =
                    parts[1].as_sequence().map(|s| s.iter().filter_map(scalar_string).collect()).unwrap_or_default();
                Ok(Value::String(items.join(&delim)))
            }
            "Fn::Select" => {
                let v = self.resolve(arg)?;
                let parts = v
                    .as_sequence()
                    .filter(|s| s.len() == 2)
                    .ok_or_else(|| TemplateError::Invalid("!Select needs [index, [values]]".into()))?;
                let idx: usize = scalar_string(&parts[0])
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| TemplateError::Invalid("!Select index is not a number".into()))?;
                parts[1]
                    .as_sequence()
                    .and_then(|s| s.get(idx))
                    .cloned()
                    .ok_or_else(|| TemplateError::Invalid("!Select index out of range".into()))
            }
            other => Err(TemplateError::UnsupportedIntrinsic(other.to_string())),
        }
    }

    fn substitute(&self, text: &str, vars: &HashMap<String, String>) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end =
                after.find('}').ok_or_else(|| TemplateError::Invalid(format!("!Sub: unterminated ${{ in '{text}'")))?;
            let name = after[..end].trim();
            if let Some(literal) = name.strip_prefix('!') {
                // `${!Literal}` renders `${Literal}`.
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(v) = vars.get(name) {
                out.push_str(v);
            } else if pseudo(name).is_some() || !name.contains('.') {
                out.push_str(&self.ref_value(name)?);
            } else if let Some((id, attr)) = name.split_once('.') {
                out.push_str(&self.attribute(id, attr)?);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn pseudo(name: &str) -> Option<&'static str> {
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

fn is_no_value(v: &Value) -> bool {
    match v {
        Value::Tagged(t) => t.tag == "Ref" && t.value.as_str() == Some("AWS::NoValue"),
        Value::Mapping(m) => m.len() == 1 && m.get("Ref").and_then(Value::as_str) == Some("AWS::NoValue"),
        _ => false,
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
fn short_id(logical_id: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in STACK_NAME.bytes().chain(logical_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..10).map(|i| ALPHABET[((h >> (i * 6)) % 36) as usize] as char).collect()
}

fn collect_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Tagged(t) => {
            let tag = t.tag.to_string();
            match tag.trim_start_matches('!') {
                "Ref" => {
                    if let Some(s) = t.value.as_str() {
                        out.insert(s.to_string());
                    }
                }
                "GetAtt" => match &t.value {
                    Value::String(s) => {
                        out.insert(s.split('.').next().unwrap_or_default().to_string());
                    }
                    Value::Sequence(s) => {
                        if let Some(id) = s.first().and_then(Value::as_str) {
                            out.insert(id.to_string());
                        }
                    }
                    _ => {}
                },
                "Sub" => {
                    let text = match &t.value {
                        Value::String(s) => Some(s.as_str()),
                        Value::Sequence(s) => s.first().and_then(Value::as_str),
                        _ => None,
                    };
                    if let Some(text) = text {
                        sub_refs(text, out);
                    }
                    collect_refs(&t.value, out);
                }
                _ => collect_refs(&t.value, out),
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    (Some("Ref"), Value::String(s)) => {
                        out.insert(s.clone());
                    }
                    (Some("Fn::GetAtt"), Value::Sequence(s)) => {
                        if let Some(id) = s.first().and_then(Value::as_str) {
                            out.insert(id.to_string());
                        }
                    }
                    (Some("Fn::Sub"), Value::String(s)) => sub_refs(s, out),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

fn sub_refs(text: &str, out: &mut BTreeSet<String>) {
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.starts_with('!') {
            out.insert(name.split('.').next().unwrap_or_default().to_string());
        }
        rest = &after[end + 1..];
    }
}

fn key_string(k: &Value) -> Result<String, TemplateError> {
    scalar_string(k).ok_or_else(|| TemplateError::Invalid(format!("expected a string key, got {k:?}")))
}

/// Renders a scalar as CloudFormation would pass it (numbers and booleans as text).
pub fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Converts a resolved (tag-free) YAML value to JSON.
pub fn yaml_to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                serde_json::Value::from(i)
            } else if let Some(u) = n.as_u64() {
                serde_json::Value::from(u)
            } else {
                n.as_f64().map(serde_json::Value::from).unwrap_or(serde_json::Value::Null)
            }
        }
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Sequence(s) => serde_json::Value::Array(s.iter().map(yaml_to_json).collect()),
        Value::Mapping(m) => serde_json::Value::Object(
            m.iter().filter_map(|(k, v)| scalar_string(k).map(|k| (k, yaml_to_json(v)))).collect(),
        ),
        Value::Tagged(t) => yaml_to_json(&t.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real_template() -> Template {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
        Template::load(&path).expect("infra/template.yaml parses")
    }

    fn urls() -> LocalUrls {
        LocalUrls { aws_endpoint: "http://127.0.0.1:5000".into(), api_url: "http://127.0.0.1:8080".into() }
    }

    #[test]
    fn parameters_take_their_defaults() {
        let t = real_template();
        assert_eq!(t.parameters.get("MaxReceiveCount").map(String::as_str), Some("3"));
    }

    #[test]
    fn physical_identities_are_deterministic() {
        let t = real_template();
        let ids = t.identities(&urls()).expect("identities");
        assert_eq!(ids.ref_value("ExchangesTable").expect("ref"), "handoff-ExchangesTable");
        assert_eq!(ids.ref_value("DataBucket").expect("ref"), "handoff-databucket");
        assert_eq!(
            ids.ref_value("ControlQueue").expect("ref"),
            "http://127.0.0.1:5000/123456789012/handoff-ControlQueue"
        );
        assert_eq!(
            ids.attribute("ControlDlq", "Arn").expect("arn"),
            "arn:aws:sqs:us-east-1:123456789012:handoff-ControlDlq"
        );
        assert_eq!(ids.ref_value("IntegrationScheduleGroup").expect("ref"), "handoff-integrations");
        assert_eq!(
            ids.attribute("TriggerFunction", "Arn").expect("arn"),
            "arn:aws:lambda:us-east-1:123456789012:function:handoff-TriggerFunction"
        );
        assert_eq!(ids.logical_id_for_arn("arn:aws:sqs:us-east-1:123456789012:handoff-QueryQueue"), Some("QueryQueue"));
    }

    #[test]
    fn sub_resolves_pseudo_parameters_and_attributes() {
        let t = real_template();
        let ids = t.identities(&urls()).expect("identities");
        let v: Value = serde_yaml::from_str(
            r#"!Sub "arn:${AWS::Partition}:scheduler:${AWS::Region}:${AWS::AccountId}:schedule/${IntegrationScheduleGroup}/*""#,
        )
        .expect("yaml");
        assert_eq!(
            ids.resolve_string(&v).expect("sub"),
            "arn:aws:scheduler:us-east-1:123456789012:schedule/handoff-integrations/*"
        );
        let v: Value = serde_yaml::from_str(r#"!Sub "${DataBucket.Arn}/*""#).expect("yaml");
        assert_eq!(ids.resolve_string(&v).expect("sub"), "arn:aws:s3:::handoff-databucket/*");
        let v: Value = serde_yaml::from_str(r#"!Sub ["${X}-${!Literal}", {X: !Ref MaxReceiveCount}]"#).expect("yaml");
        assert_eq!(ids.resolve_string(&v).expect("sub"), "3-${Literal}");
        let v: Value = serde_yaml::from_str(r#"{"Fn::GetAtt": [ControlQueue, QueueName]}"#).expect("yaml");
        assert_eq!(ids.resolve_string(&v).expect("getatt"), "handoff-ControlQueue");
        let v: Value = serde_yaml::from_str("!Ref Nope").expect("yaml");
        assert!(matches!(ids.resolve(&v), Err(TemplateError::UnknownReference(_))));
    }

    #[test]
    fn functions_merge_globals_and_resolve_events() {
        let t = real_template();
        let ids = t.identities(&urls()).expect("identities");
        let fns = t.functions(&ids).expect("functions");
        let api = fns.iter().find(|f| f.binary == "handoff-api").expect("api function");
        assert_eq!(api.timeout, Duration::from_secs(29));
        assert_eq!(api.env.get("HANDOFF_EXCHANGES_TABLE").map(String::as_str), Some("handoff-ExchangesTable"));
        assert_eq!(api.env.get("HANDOFF_SCHEDULE_GROUP").map(String::as_str), Some("handoff-integrations"));
        assert_eq!(api.env.get("HANDOFF_INLINE_PAYLOAD_LIMIT_BYTES").map(String::as_str), Some("65536"));
        assert!(api.http_routes.iter().any(|r| r.method == "GET" && r.path.as_deref() == Some("/exchanges/{id}")));
        let query = fns.iter().find(|f| f.binary == "handoff-worker-query").expect("query");
        assert_eq!(query.timeout, Duration::from_secs(30));
        assert_eq!(query.sqs_events.len(), 1);
        assert_eq!(query.sqs_events[0].batch_size, 5);
        assert!(query.sqs_events[0].report_batch_item_failures);
        assert_eq!(query.sqs_events[0].queue_arn, "arn:aws:sqs:us-east-1:123456789012:handoff-QueryQueue");
        // Every queue's dead-letter queue feeds the DLQ function: no dead letter goes unseen.
        let dlq = fns.iter().find(|f| f.binary == "handoff-dlq").expect("dlq");
        let redriven: Vec<&Resource> =
            t.resources_of("AWS::SQS::Queue").filter(|q| q.property("RedrivePolicy").is_some()).collect();
        assert!(redriven.len() >= 4);
        assert_eq!(dlq.sqs_events.len(), redriven.len());
        for queue in redriven {
            let dlq_name = format!("handoff-{}", queue.logical_id.replace("Queue", "Dlq"));
            assert!(
                dlq.sqs_events.iter().any(|e| e.queue_arn.ends_with(&format!(":{dlq_name}"))),
                "{dlq_name} has no event source on the DLQ function"
            );
        }
    }

    #[test]
    fn queues_depend_on_their_dead_letter_queues() {
        let t = real_template();
        let q = t.resource("ControlQueue").expect("queue");
        assert!(t.dependencies(q).contains("ControlDlq"));
    }

    #[test]
    fn schedule_v2_events_are_read() {
        let t = Template::parse(
            r#"
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: b}}
    Properties:
      Events:
        Nightly:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: cron(0 18 * * ? *)
            ScheduleExpressionTimezone: Europe/Amsterdam
            Input: {"kind": "nightly", "fn": !Ref Fn}
"#,
        )
        .expect("parses");
        let ids = t.identities(&urls()).expect("ids");
        let fns = t.functions(&ids).expect("fns");
        let s = &fns[0].schedules[0];
        assert_eq!(s.name, "FnNightly");
        assert_eq!(s.group, "default");
        assert_eq!(s.timezone.as_deref(), Some("Europe/Amsterdam"));
        let input: serde_json::Value = serde_json::from_str(s.input.as_deref().expect("input")).expect("json");
        assert_eq!(input, serde_json::json!({"kind": "nightly", "fn": "handoff-Fn"}));
        assert_eq!(fns[0].timeout, Duration::from_secs(3));
    }
}
