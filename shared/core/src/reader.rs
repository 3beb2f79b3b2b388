//! A small reader over `serde_json::Value` that tracks the field path, so every
//! definition error names exactly where it is (`steps[2].destinations[0].request.url`).

use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// A definition error: where, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct FieldError {
    pub path: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { path: path.into(), problem: problem.into() }
    }
}

pub type FieldResult<T> = Result<T, FieldError>;

/// An object being read, with the path that leads to it and the keys it may contain.
pub struct ObjectReader<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

pub fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> ObjectReader<'a> {
    pub fn new(path: impl Into<String>, value: &'a Value) -> FieldResult<Self> {
        let path = path.into();
        match value {
            Value::Object(map) => Ok(Self { path, map }),
            other => Err(FieldError::new(
                if path.is_empty() { "(document)".to_string() } else { path },
                format!("must be an object, found {}", describe(other)),
            )),
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn field_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Rejects keys outside `allowed`: a typo in a definition must not be silently ignored.
    pub fn deny_unknown(&self, allowed: &[&str]) -> FieldResult<()> {
        let allowed: BTreeSet<&str> = allowed.iter().copied().collect();
        match self.map.keys().find(|k| !allowed.contains(k.as_str())) {
            Some(key) => Err(FieldError::new(
                self.field_path(key),
                format!("unknown field (expected one of: {})", allowed.iter().copied().collect::<Vec<_>>().join(", ")),
            )),
            None => Ok(()),
        }
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn required(&self, key: &str) -> FieldResult<&'a Value> {
        self.get(key).ok_or_else(|| FieldError::new(self.field_path(key), "is required"))
    }

    pub fn required_str(&self, key: &str) -> FieldResult<&'a str> {
        let value = self.required(key)?;
        let s = value.as_str().ok_or_else(|| {
            FieldError::new(self.field_path(key), format!("must be a string, found {}", describe(value)))
        })?;
        if s.trim().is_empty() {
            return Err(FieldError::new(self.field_path(key), "must not be empty"));
        }
        Ok(s)
    }

    pub fn optional_str(&self, key: &str) -> FieldResult<Option<&'a str>> {
        if self.has(key) {
            self.required_str(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn optional_bool(&self, key: &str) -> FieldResult<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => {
                Err(FieldError::new(self.field_path(key), format!("must be a boolean, found {}", describe(other))))
            }
        }
    }

    pub fn optional_u64(&self, key: &str, min: u64, max: u64) -> FieldResult<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => match value.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                Some(n) => {
                    Err(FieldError::new(self.field_path(key), format!("must be between {min} and {max}, found {n}")))
                }
                None => Err(FieldError::new(self.field_path(key), format!("must be a whole number, found {value}"))),
            },
        }
    }

    pub fn optional_f64(&self, key: &str, min: f64, max: f64) -> FieldResult<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => match value.as_f64() {
                Some(n) if n >= min && n <= max => Ok(Some(n)),
                _ => Err(FieldError::new(
                    self.field_path(key),
                    format!("must be a number between {min} and {max}, found {value}"),
                )),
            },
        }
    }

    pub fn optional_object(&self, key: &str) -> FieldResult<Option<ObjectReader<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => ObjectReader::new(self.field_path(key), value).map(Some),
        }
    }

    pub fn required_object(&self, key: &str) -> FieldResult<ObjectReader<'a>> {
        ObjectReader::new(self.field_path(key), self.required(key)?)
    }

    pub fn required_array(&self, key: &str) -> FieldResult<&'a Vec<Value>> {
        let value = self.required(key)?;
        value.as_array().ok_or_else(|| {
            FieldError::new(self.field_path(key), format!("must be an array, found {}", describe(value)))
        })
    }

    /// A map of string to string (HTTP headers).
    pub fn optional_string_map(&self, key: &str) -> FieldResult<Vec<(String, String)>> {
        let Some(obj) = self.optional_object(key)? else {
            return Ok(Vec::new());
        };
        obj.map
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(s) => Ok((k.clone(), s.to_string())),
                None => Err(FieldError::new(obj.field_path(k), format!("must be a string, found {}", describe(v)))),
            })
            .collect()
    }
}
