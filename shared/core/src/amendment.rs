//! What may change in a stored integration version. A version is immutable in what it does:
//! only `enabled`, `slaSeconds`, `schedule`, `description` and the steps' `retry` policies
//! (read live by running exchanges) change in place; anything else needs a new version, so
//! every exchange keeps running the steps it started with.

use crate::reader::{FieldError, ObjectReader};
use serde_json::Value;

/// Fields of a stored version that a change may name.
pub const MUTABLE_FIELDS: [&str; 5] = ["enabled", "slaSeconds", "schedule", "description", "steps"];

/// `current` with `patch` merged in (a `null` removes a field), or the field the patch may
/// not change.
pub fn amended(current: &Value, patch: &Value) -> Result<Value, FieldError> {
    let reader = ObjectReader::new("", patch)?;
    reader.deny_unknown(&MUTABLE_FIELDS)?;
    let mut document = current.clone();
    if let (Value::Object(doc), Value::Object(changes)) = (&mut document, patch) {
        for (key, value) in changes {
            if value.is_null() {
                doc.remove(key);
            } else {
                doc.insert(key.clone(), value.clone());
            }
        }
    }
    if without_retry(document.get("steps")) != without_retry(current.get("steps")) {
        return Err(FieldError::new(
            "steps",
            "only the retry policies of steps can change; define a new version for anything else",
        ));
    }
    Ok(document)
}

/// The steps with their retry policies taken out, to compare everything else.
fn without_retry(steps: Option<&Value>) -> Value {
    let mut steps = steps.cloned().unwrap_or(Value::Null);
    if let Value::Array(items) = &mut steps {
        for step in items {
            if let Value::Object(fields) = step {
                fields.remove("retry");
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored() -> Value {
        json!({"code": "C", "version": 1, "enabled": true, "description": "old", "steps": [
            {"name": "t", "type": "transformation", "function": {"jq": "."}, "retry": {"maxAttempts": 2}}]})
    }

    #[test]
    fn mutable_fields_merge_and_null_removes() {
        let out = amended(&stored(), &json!({"enabled": false, "description": null})).expect("allowed");
        assert_eq!(out["enabled"], json!(false));
        assert!(out.get("description").is_none());
        assert_eq!(out["code"], json!("C"));
    }

    #[test]
    fn a_retry_policy_may_change_but_nothing_else_in_steps() {
        let mut steps = stored()["steps"].clone();
        steps[0]["retry"] = json!({"maxAttempts": 5});
        let out = amended(&stored(), &json!({"steps": steps})).expect("retry only");
        assert_eq!(out["steps"][0]["retry"]["maxAttempts"], json!(5));
        steps[0]["function"] = json!({"jq": "map(.)"});
        let error = amended(&stored(), &json!({"steps": steps})).expect_err("the function changed");
        assert_eq!(error.path, "steps");
    }

    #[test]
    fn immutable_fields_are_named() {
        let error = amended(&stored(), &json!({"code": "D"})).expect_err("code is fixed");
        assert_eq!(error.path, "code");
        let error = amended(&stored(), &json!([1])).expect_err("not an object");
        assert!(error.to_string().contains("object"), "{error}");
    }
}
