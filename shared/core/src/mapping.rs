//! Metadata (field) mappings: named tables that translate one system's vocabulary into
//! another's — field names and coded values — applied record by record in a
//! transformation step (`"mapping": "<name>"`).
//!
//! A mapping document (`PUT /mappings/{name}`):
//!
//! ```json
//! {
//!   "description": "provider codes of the source ERP → the target PIM",
//!   "fields": {"providerId": "id", "statusCode": "status"},
//!   "values": {"statusCode": {"A": "active", "I": "inactive"}},
//!   "unmappedValues": "error",
//!   "unmappedFields": "keep"
//! }
//! ```
//!
//! * `fields` renames top-level fields (source name → target name). Fields not listed are
//!   kept as they are (`unmappedFields: "keep"`, the default) or dropped (`"drop"`).
//! * `values` translates the values of a field, keyed by the **source** field name (the
//!   name in the incoming record, before renaming). Strings are looked up as they are,
//!   numbers and booleans by their JSON text (`1`, `true`); the translation may be any
//!   JSON value. `null` means "no value" and is never translated.
//! * A value with no translation is a *business* error naming the record and the value
//!   (`unmappedValues: "error"`, the default: the customer fixes the data or the mapping);
//!   `"keep"` passes it through unchanged, `"null"` replaces it with `null`.

use crate::reader::{describe, FieldError, FieldResult, ObjectReader};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;

/// Where a record sits in its input: 1-based record number and, for line-oriented
/// formats, the 1-based line it starts on. Errors name it so the customer can find the row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordPosition {
    pub record: u64,
    pub line: Option<u64>,
}

impl fmt::Display for RecordPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "record {} (line {line})", self.record),
            None => write!(f, "record {}", self.record),
        }
    }
}

/// Bad data in one record: a business error (the data, not our side, is at fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{position}: {problem}")]
pub struct RecordError {
    pub position: RecordPosition,
    pub problem: String,
    /// Whether a value lacked its translation (the mapping may be what needs fixing),
    /// rather than the record being invalid in itself.
    pub unmapped: bool,
}

impl RecordError {
    /// The record is invalid in itself.
    pub fn new(position: &RecordPosition, problem: impl Into<String>) -> Self {
        Self { position: position.clone(), problem: problem.into(), unmapped: false }
    }

    /// A value of the record has no translation in the mapping.
    pub fn unmapped(position: &RecordPosition, problem: impl Into<String>) -> Self {
        Self { unmapped: true, ..Self::new(position, problem) }
    }

    pub fn code(&self) -> crate::error_code::ErrorCode {
        if self.unmapped {
            crate::error_code::ErrorCode::UnmappedValue
        } else {
            crate::error_code::ErrorCode::InvalidRecord
        }
    }
}

/// A mapping's name: what steps reference and what the API path carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MappingName(String);

impl MappingName {
    /// 1–128 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or digit (it is
    /// part of a URL path and of a storage key).
    pub fn parse(name: &str) -> Result<Self, String> {
        let ok = (1..=128).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(Self(name.to_string()))
        } else {
            Err(format!(
                "'{name}' is not a valid mapping name (1-128 letters, digits, '.', '_' or '-', starting with a letter or digit)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MappingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmappedValues {
    Error,
    Keep,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmappedFields {
    Keep,
    Drop,
}

/// A validated mapping table.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub name: MappingName,
    pub fields: HashMap<String, String>,
    pub values: HashMap<String, HashMap<String, Value>>,
    pub unmapped_values: UnmappedValues,
    pub unmapped_fields: UnmappedFields,
}

/// Parses and validates a mapping document; errors name the field path.
pub fn parse_mapping(name: MappingName, document: &Value) -> FieldResult<Mapping> {
    let root = ObjectReader::new("", document)?;
    root.deny_unknown(&["description", "fields", "values", "unmappedValues", "unmappedFields"])?;
    if let Some(d) = root.get("description") {
        if !d.is_string() {
            return Err(FieldError::new("description", format!("must be a string, found {}", describe(d))));
        }
    }
    let mut fields = HashMap::new();
    let mut targets: HashMap<String, String> = HashMap::new();
    for (source, target) in root.optional_string_map("fields")? {
        let path = format!("fields.{source}");
        if source.is_empty() || target.is_empty() {
            return Err(FieldError::new(path, "field names must not be empty"));
        }
        if let Some(other) = targets.insert(target.clone(), source.clone()) {
            return Err(FieldError::new(path, format!("'{target}' is already the target of '{other}'")));
        }
        fields.insert(source, target);
    }
    let mut values = HashMap::new();
    if let Some(table) = root.optional_object("values")? {
        let Some(Value::Object(entries)) = root.get("values") else {
            return Err(FieldError::new("values", "must be an object"));
        };
        for (field, translations) in entries {
            let path = table.field_path(field);
            let Value::Object(translations) = translations else {
                return Err(FieldError::new(
                    path,
                    format!("must be an object of value translations, found {}", describe(translations)),
                ));
            };
            values.insert(field.clone(), translations.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        }
    }
    let unmapped_values = match root.optional_str("unmappedValues")? {
        None | Some("error") => UnmappedValues::Error,
        Some("keep") => UnmappedValues::Keep,
        Some("null") => UnmappedValues::Null,
        Some(other) => {
            return Err(FieldError::new(
                "unmappedValues",
                format!("unknown policy '{other}' (expected error, keep or null)"),
            ))
        }
    };
    let unmapped_fields = match root.optional_str("unmappedFields")? {
        None | Some("keep") => UnmappedFields::Keep,
        Some("drop") => UnmappedFields::Drop,
        Some(other) => {
            return Err(FieldError::new("unmappedFields", format!("unknown policy '{other}' (expected keep or drop)")))
        }
    };
    if fields.is_empty() && values.is_empty() {
        return Err(FieldError::new("(document)", "a mapping must declare 'fields', 'values' or both"));
    }
    Ok(Mapping { name, fields, values, unmapped_values, unmapped_fields })
}

impl Mapping {
    /// Renames and translates one record. Non-object records and unmapped values (under
    /// the `error` policy) are business errors naming the record.
    pub fn apply(&self, record: Value, position: &RecordPosition) -> Result<Value, RecordError> {
        let Value::Object(fields) = record else {
            return Err(RecordError::new(
                position,
                format!("is {}, but mapping '{}' applies to objects", describe(&record), self.name),
            ));
        };
        let mut out = Map::new();
        for (source, value) in fields {
            let value = match self.values.get(&source) {
                Some(table) => self.translate(table, &source, value, position)?,
                None => value,
            };
            let target = match self.fields.get(&source) {
                Some(target) => target.clone(),
                None if self.unmapped_fields == UnmappedFields::Drop => continue,
                None => source.clone(),
            };
            if out.contains_key(&target) {
                return Err(RecordError::new(
                    position,
                    format!(
                        "field '{source}' maps to '{target}', which the record already has (mapping '{}')",
                        self.name
                    ),
                ));
            }
            out.insert(target, value);
        }
        Ok(Value::Object(out))
    }

    fn translate(
        &self,
        table: &HashMap<String, Value>,
        field: &str,
        value: Value,
        position: &RecordPosition,
    ) -> Result<Value, RecordError> {
        let key = match &value {
            Value::Null => return Ok(Value::Null),
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            Value::Array(_) | Value::Object(_) => {
                return Err(RecordError::new(
                    position,
                    format!(
                        "field '{field}' holds {}; mapping '{}' translates only single values",
                        describe(&value),
                        self.name
                    ),
                ))
            }
        };
        match table.get(&key) {
            Some(translated) => Ok(translated.clone()),
            None => match self.unmapped_values {
                UnmappedValues::Error => Err(RecordError::unmapped(
                    position,
                    format!("value '{key}' of field '{field}' has no translation in mapping '{}'", self.name),
                )),
                UnmappedValues::Keep => Ok(value),
                UnmappedValues::Null => Ok(Value::Null),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(doc: Value) -> FieldResult<Mapping> {
        parse_mapping(MappingName::parse("provider-codes").unwrap(), &doc)
    }

    fn at(record: u64) -> RecordPosition {
        RecordPosition { record, line: Some(record + 1) }
    }

    #[test]
    fn renames_fields_and_translates_values() {
        let m =
            mapping(json!({"fields": {"providerId": "id"}, "values": {"status": {"A": "active", "1": true}}})).unwrap();
        let out = m.apply(json!({"providerId": "p1", "status": "A", "name": "N"}), &at(1)).unwrap();
        assert_eq!(out, json!({"id": "p1", "status": "active", "name": "N"}));
        assert_eq!(m.apply(json!({"status": 1}), &at(2)).unwrap(), json!({"status": true}));
        assert_eq!(m.apply(json!({"status": null}), &at(2)).unwrap(), json!({"status": null}));
    }

    #[test]
    fn an_unmapped_value_names_the_record_and_the_value() {
        let m = mapping(json!({"values": {"status": {"A": "active"}}})).unwrap();
        let e = m.apply(json!({"status": "X"}), &at(3)).unwrap_err();
        assert_eq!(e.position, at(3));
        assert_eq!(
            e.to_string(),
            "record 3 (line 4): value 'X' of field 'status' has no translation in mapping 'provider-codes'"
        );
        let keep = mapping(json!({"values": {"status": {"A": "active"}}, "unmappedValues": "keep"})).unwrap();
        assert_eq!(keep.apply(json!({"status": "X"}), &at(3)).unwrap(), json!({"status": "X"}));
        let null = mapping(json!({"values": {"status": {"A": "active"}}, "unmappedValues": "null"})).unwrap();
        assert_eq!(null.apply(json!({"status": "X"}), &at(3)).unwrap(), json!({"status": null}));
    }

    #[test]
    fn unmapped_fields_can_be_dropped_and_collisions_are_errors() {
        let m = mapping(json!({"fields": {"a": "x"}, "unmappedFields": "drop"})).unwrap();
        assert_eq!(m.apply(json!({"a": 1, "b": 2}), &at(1)).unwrap(), json!({"x": 1}));
        let m = mapping(json!({"fields": {"a": "b"}})).unwrap();
        assert!(m.apply(json!({"a": 1, "b": 2}), &at(1)).unwrap_err().problem.contains("already has"));
        assert!(m.apply(json!([1]), &at(1)).unwrap_err().problem.contains("applies to objects"));
    }

    #[test]
    fn documents_are_validated_with_field_paths() {
        assert_eq!(mapping(json!({"fields": {"a": "x", "b": "x"}})).unwrap_err().path, "fields.b");
        assert_eq!(mapping(json!({"fields": {"a": 1}})).unwrap_err().path, "fields.a");
        assert_eq!(mapping(json!({"values": {"s": "A"}})).unwrap_err().path, "values.s");
        assert_eq!(mapping(json!({"fields": {"a": "x"}, "colour": 1})).unwrap_err().path, "colour");
        assert_eq!(
            mapping(json!({"fields": {"a": "x"}, "unmappedValues": "ignore"})).unwrap_err().path,
            "unmappedValues"
        );
        assert_eq!(mapping(json!({})).unwrap_err().path, "(document)");
        assert!(MappingName::parse("provider-codes.v2").is_ok());
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(129)] {
            assert!(MappingName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
