//! Functions and their events: each serverless function merged with `Globals`, resolved, with
//! its SQS event sources, HTTP routes and schedules.

use super::*;

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
    /// The route's `Auth`: which authorizer, and the scopes it requires (any one of them).
    pub auth: RouteAuth,
}

/// Which authorizer guards a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAuthorizer {
    /// The API's `DefaultAuthorizer` (none if it has none).
    Default,
    /// `Authorizer: NONE`: a public route.
    Public,
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAuth {
    pub authorizer: RouteAuthorizer,
    pub scopes: Vec<String>,
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

impl Template {
    /// Every serverless function with its resolved configuration and events.
    pub fn functions(&self, ids: &Identities) -> Result<Vec<FunctionSpec>, TemplateError> {
        self.resources_of("AWS::Serverless::Function").map(|r| self.function_spec(r, ids)).collect()
    }

    pub(super) fn function_spec(&self, r: &Resource, ids: &Identities) -> Result<FunctionSpec, TemplateError> {
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
                        let auth = props.get("Auth");
                        let authorizer = match auth.and_then(|a| a.get("Authorizer")).and_then(scalar_string) {
                            None => RouteAuthorizer::Default,
                            Some(name) if name == "NONE" => RouteAuthorizer::Public,
                            Some(name) => RouteAuthorizer::Named(name),
                        };
                        let scopes = auth
                            .and_then(|a| a.get("AuthorizationScopes"))
                            .and_then(Value::as_sequence)
                            .map(|s| s.iter().filter_map(scalar_string).collect())
                            .unwrap_or_default();
                        spec.http_routes.push(HttpRouteSpec {
                            event_name,
                            method: if method == "X-AMAZON-APIGATEWAY-ANY-METHOD" { "ANY".into() } else { method },
                            path,
                            auth: RouteAuth { authorizer, scopes },
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
