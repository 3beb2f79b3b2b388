//! `{{parameters.NAME}}` and `{{exchange.exchangeId}}` placeholders in request URLs,
//! header values and templated bodies (SPEC §2a).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    #[error("unclosed placeholder starting at '{0}'")]
    Unclosed(String),
    #[error("unknown placeholder '{{{{{0}}}}}' (use parameters.NAME, exchange.exchangeId, exchange.integrationCode or exchange.integrationVersion)")]
    Unknown(String),
    #[error("parameter '{0}' is not set for this exchange")]
    MissingParameter(String),
}

/// Values placeholders may refer to.
#[derive(Debug, Clone, Default)]
pub struct PlaceholderContext {
    pub parameters: Value,
    pub exchange_id: String,
    pub integration_code: String,
    pub integration_version: String,
}

enum Placeholder<'a> {
    Parameter(&'a str),
    Exchange(&'a str),
}

fn classify(name: &str) -> Result<Placeholder<'_>, PlaceholderError> {
    let name = name.trim();
    if let Some(param) = name.strip_prefix("parameters.") {
        if !param.is_empty() {
            return Ok(Placeholder::Parameter(param));
        }
    }
    match name {
        "exchange.exchangeId" | "exchange.integrationCode" | "exchange.integrationVersion" => {
            Ok(Placeholder::Exchange(&name["exchange.".len()..]))
        }
        _ => Err(PlaceholderError::Unknown(name.to_string())),
    }
}

/// Splits a template into literal text and placeholder names.
fn scan(template: &str) -> Result<Vec<(bool, &str)>, PlaceholderError> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        parts.push((false, &rest[..start]));
        let after = &rest[start + 2..];
        let end =
            after.find("}}").ok_or_else(|| PlaceholderError::Unclosed(rest[start..].chars().take(20).collect()))?;
        parts.push((true, &after[..end]));
        rest = &after[end + 2..];
    }
    parts.push((false, rest));
    Ok(parts)
}

/// Checks a template at definition time (syntax and known names only).
pub fn validate(template: &str) -> Result<(), PlaceholderError> {
    for (is_placeholder, text) in scan(template)? {
        if is_placeholder {
            classify(text)?;
        }
    }
    Ok(())
}

/// Fills a template. `encode` is applied to substituted values (e.g. URL encoding).
pub fn render(
    template: &str,
    ctx: &PlaceholderContext,
    encode: impl Fn(&str) -> String,
) -> Result<String, PlaceholderError> {
    let mut out = String::with_capacity(template.len());
    for (is_placeholder, text) in scan(template)? {
        if !is_placeholder {
            out.push_str(text);
            continue;
        }
        let value = match classify(text)? {
            Placeholder::Parameter(name) => match ctx.parameters.get(name) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => return Err(PlaceholderError::MissingParameter(name.to_string())),
                Some(other) => other.to_string(),
            },
            Placeholder::Exchange("exchangeId") => ctx.exchange_id.clone(),
            Placeholder::Exchange("integrationCode") => ctx.integration_code.clone(),
            Placeholder::Exchange(_) => ctx.integration_version.clone(),
        };
        out.push_str(&encode(&value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> PlaceholderContext {
        PlaceholderContext {
            parameters: json!({"region": "north west", "n": 3}),
            exchange_id: "ex-1".into(),
            integration_code: "CODE".into(),
            integration_version: "2".into(),
        }
    }

    #[test]
    fn renders_parameters_and_exchange_fields() {
        let out = render(
            "/r/{{parameters.region}}/{{ parameters.n }}?x={{exchange.exchangeId}}&c={{exchange.integrationCode}}",
            &ctx(),
            |s| s.replace(' ', "%20"),
        )
        .unwrap();
        assert_eq!(out, "/r/north%20west/3?x=ex-1&c=CODE");
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(matches!(validate("a {{parameters.x"), Err(PlaceholderError::Unclosed(_))));
        assert!(matches!(validate("{{foo}}"), Err(PlaceholderError::Unknown(_))));
        assert!(validate("plain").is_ok());
        assert!(matches!(
            render("{{parameters.missing}}", &ctx(), |s| s.to_string()),
            Err(PlaceholderError::MissingParameter(_))
        ));
    }
}
