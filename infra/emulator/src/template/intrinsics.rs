//! Intrinsic functions (`Ref`, `GetAtt`, `Sub`, `Join`, `If`, …) and the references a value makes.

use super::*;

impl Identities {
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

    pub(super) fn intrinsic(&self, function: &str, arg: &Value) -> Result<Value, TemplateError> {
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
            "Fn::FindInMap" => {
                let v = self.resolve(arg)?;
                let keys: Vec<String> = v.as_sequence().into_iter().flatten().filter_map(scalar_string).collect();
                let [map, top, second] = keys.as_slice() else {
                    return Err(TemplateError::Invalid(
                        "!FindInMap needs [MapName, TopLevelKey, SecondLevelKey]".into(),
                    ));
                };
                let found = self
                    .mappings
                    .get(map.as_str())
                    .and_then(|m| m.get(top.as_str()))
                    .and_then(|t| t.get(second.as_str()));
                found.cloned().ok_or_else(|| {
                    TemplateError::Invalid(format!("!FindInMap [{map}, {top}, {second}]: no such entry"))
                })
            }
            other => Err(TemplateError::UnsupportedIntrinsic(other.to_string())),
        }
    }

    pub(super) fn substitute(&self, text: &str, vars: &HashMap<String, String>) -> Result<String, TemplateError> {
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

pub(super) fn is_no_value(v: &Value) -> bool {
    match v {
        Value::Tagged(t) => t.tag == "Ref" && t.value.as_str() == Some("AWS::NoValue"),
        Value::Mapping(m) => m.len() == 1 && m.get("Ref").and_then(Value::as_str) == Some("AWS::NoValue"),
        _ => false,
    }
}

pub(super) fn collect_refs(v: &Value, out: &mut BTreeSet<String>) {
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

pub(super) fn sub_refs(text: &str, out: &mut BTreeSet<String>) {
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
