//! The expression builder: attribute-name and value placeholders, update expressions.

use super::*;

/// Collects the parts of an update/condition expression with placeholder names and values.
#[derive(Debug, Default)]
pub(crate) struct Expr {
    pub(super) names: HashMap<String, String>,
    pub(super) values: HashMap<String, AttributeValue>,
    pub(super) set: Vec<String>,
    pub(super) remove: Vec<String>,
    pub(super) add: Vec<String>,
}

impl Expr {
    pub(super) fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#{attribute}");
        self.names.insert(placeholder.clone(), attribute.to_string());
        placeholder
    }
    pub(super) fn value(&mut self, placeholder: &str, value: AttributeValue) -> String {
        let placeholder = format!(":{placeholder}");
        self.values.insert(placeholder.clone(), value);
        placeholder
    }
    pub(super) fn set(&mut self, attribute: &str, placeholder: &str, value: AttributeValue) {
        let name = self.name(attribute);
        let value = self.value(placeholder, value);
        self.set.push(format!("{name} = {value}"));
    }
    pub(super) fn remove(&mut self, attribute: &str) {
        let name = self.name(attribute);
        self.remove.push(name);
    }
    /// `ADD attribute :placeholder` (a number: created at the value if absent).
    pub(super) fn add(&mut self, attribute: &str, placeholder: &str, value: AttributeValue) {
        let name = self.name(attribute);
        let value = self.value(placeholder, value);
        self.add.push(format!("{name} {value}"));
    }
    pub(super) fn update_expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.remove.is_empty() {
            parts.push(format!("REMOVE {}", self.remove.join(", ")));
        }
        if !self.add.is_empty() {
            parts.push(format!("ADD {}", self.add.join(", ")));
        }
        parts.join(" ")
    }
    /// `#status IN (:p0, :p1, ...)`.
    pub(super) fn status_in(&mut self, prefix: &str, statuses: &[ExchangeStatus]) -> String {
        let name = self.name("status");
        let values: Vec<String> =
            statuses.iter().enumerate().map(|(i, st)| self.value(&format!("{prefix}{i}"), s(st.name()))).collect();
        format!("{name} IN ({})", values.join(", "))
    }
    pub(super) fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }
    pub(super) fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}
