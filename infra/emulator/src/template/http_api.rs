//! The HTTP API's `Auth`: its JWT authorizers (`JwtConfiguration` issuer and audience,
//! resolved) and which one guards routes that name none.

use super::*;

/// A SAM HttpApi JWT authorizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthorizerSpec {
    pub issuer: String,
    pub audience: Vec<String>,
}

/// `Auth` of the template's `AWS::Serverless::HttpApi`.
#[derive(Debug, Clone, Default)]
pub struct HttpApiAuth {
    pub default_authorizer: Option<String>,
    pub authorizers: BTreeMap<String, JwtAuthorizerSpec>,
}

impl Template {
    /// The HTTP API's authorizers (none when the template has no HttpApi or no `Auth`).
    pub fn http_api_auth(&self, ids: &Identities) -> Result<HttpApiAuth, TemplateError> {
        let Some(api) = self.resources_of("AWS::Serverless::HttpApi").next() else {
            return Ok(HttpApiAuth::default());
        };
        let Some(auth) = api.property("Auth") else {
            return Ok(HttpApiAuth::default());
        };
        let auth = ids.resolve(auth)?;
        let mut out = HttpApiAuth {
            default_authorizer: auth.get("DefaultAuthorizer").and_then(scalar_string),
            authorizers: BTreeMap::new(),
        };
        for (name, spec) in auth.get("Authorizers").and_then(Value::as_mapping).into_iter().flatten() {
            let name = key_string(name)?;
            let invalid = |what: &str| TemplateError::Invalid(format!("HttpApi authorizer {name}: {what}"));
            let jwt = spec.get("JwtConfiguration").ok_or_else(|| invalid("only JWT authorizers are emulated"))?;
            let issuer =
                jwt.get("issuer").and_then(scalar_string).ok_or_else(|| invalid("JwtConfiguration needs issuer"))?;
            let audience: Vec<String> = match jwt.get("audience") {
                Some(Value::Sequence(items)) => items.iter().filter_map(scalar_string).collect(),
                Some(one) => {
                    scalar_string(one).map(|a| a.split(',').map(|s| s.trim().to_string()).collect()).unwrap_or_default()
                }
                None => Vec::new(),
            };
            if audience.is_empty() {
                return Err(invalid("JwtConfiguration needs an audience"));
            }
            out.authorizers.insert(name, JwtAuthorizerSpec { issuer, audience });
        }
        if let Some(default) = &out.default_authorizer {
            if !out.authorizers.contains_key(default) {
                return Err(TemplateError::Invalid(format!(
                    "HttpApi DefaultAuthorizer {default} is not one of its Authorizers"
                )));
            }
        }
        Ok(out)
    }
}
