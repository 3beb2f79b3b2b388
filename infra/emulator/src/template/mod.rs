//! Reading `infra/template.yaml` (AWS SAM): parsing (here), physical names (`names`),
//! intrinsic functions (`intrinsics`), functions and their events (`functions`).
//!
//! The template is the single source of truth for the topology (SPEC §1): the emulator
//! derives every table, queue, bucket, route, event-source mapping and schedule from it,
//! so nothing here may name a concrete resource. Physical names are derived
//! deterministically from the stack name and logical id (as CloudFormation would, minus
//! the random suffix), so a reused AWS emulator (`HANDOFF_AWS_ENDPOINT`) finds the same
//! resources again.

mod functions;
mod http_api;
mod intrinsics;
mod names;
#[cfg(test)]
mod tests;

pub use functions::{FunctionSpec, HttpRouteSpec, RouteAuth, RouteAuthorizer, ScheduleSpec, SqsEventSource};
pub use http_api::{HttpApiAuth, JwtAuthorizerSpec};
use intrinsics::*;
use names::*;
pub use names::{physical_name, Identities, LocalUrls};
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
    /// `Mappings` (unresolved), read by `!FindInMap`.
    pub mappings: Value,
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
        let mappings = root.get("Mappings").cloned().unwrap_or(Value::Null);
        Ok(Self { parameters, globals_function, resources, mappings })
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
        let mut ids = Identities {
            parameters: self.parameters.clone(),
            mappings: self.mappings.clone(),
            refs: HashMap::new(),
            attrs: HashMap::new(),
        };
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
}

pub(super) fn key_string(k: &Value) -> Result<String, TemplateError> {
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
