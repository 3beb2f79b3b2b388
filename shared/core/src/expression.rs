//! jq expressions (via the `jaq` crates). Compiled once when a definition is parsed so a
//! broken program is a 400 at `POST /integrations`, never a surprise at run time.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;
use serde_json::Value;
use std::fmt;

/// Variables visible to every expression: `$parameters` and `$exchange`.
const GLOBAL_VARS: [&str; 2] = ["$parameters", "$exchange"];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExpressionError {
    #[error("invalid jq program: {0}")]
    Invalid(String),
    #[error("jq program failed: {0}")]
    Runtime(String),
    #[error("jq program must yield exactly one value, it yielded {0}")]
    NotSingle(usize),
    #[error("jq program yielded a value that is not JSON: {0}")]
    NotJson(String),
}

/// What an expression sees besides its input.
#[derive(Debug, Clone, Default)]
pub struct ExpressionVars {
    pub parameters: Value,
    pub exchange: Value,
}

/// A validated jq program.
#[derive(Clone, PartialEq, Eq)]
pub struct Expression {
    source: String,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expression({:?})", self.source)
    }
}

impl Expression {
    pub fn compile(source: &str) -> Result<Self, ExpressionError> {
        if source.trim().is_empty() {
            return Err(ExpressionError::Invalid("the program is empty".into()));
        }
        // Compiling is the validation; the compiled form is rebuilt per evaluation because
        // jaq's filters are not `Send` and compiling a small program costs microseconds.
        run_compiled(source, None)?;
        Ok(Self { source: source.to_string() })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// All values the program yields.
    pub fn evaluate(&self, input: &Value, vars: &ExpressionVars) -> Result<Vec<Value>, ExpressionError> {
        run_compiled(&self.source, Some((input, vars))).map(|out| out.unwrap_or_default())
    }

    /// Exactly one value (transformations, subflow properties, post-processing).
    pub fn evaluate_single(&self, input: &Value, vars: &ExpressionVars) -> Result<Value, ExpressionError> {
        let mut values = self.evaluate(input, vars)?;
        if values.len() != 1 {
            return Err(ExpressionError::NotSingle(values.len()));
        }
        Ok(values.remove(0))
    }

    /// jq truthiness of the first value: `false`, `null` and no value at all are false.
    pub fn evaluate_condition(&self, input: &Value, vars: &ExpressionVars) -> Result<bool, ExpressionError> {
        let values = self.evaluate(input, vars)?;
        Ok(matches!(values.first(), Some(v) if !matches!(v, Value::Null | Value::Bool(false))))
    }
}

fn to_val(value: &Value) -> Result<Val, ExpressionError> {
    let text = serde_json::to_vec(value).map_err(|e| ExpressionError::NotJson(e.to_string()))?;
    jaq_json::read::parse_single(&text).map_err(|e| ExpressionError::NotJson(e.to_string()))
}

fn from_val(value: &Val) -> Result<Value, ExpressionError> {
    serde_json::from_str(&value.to_string()).map_err(|e| ExpressionError::NotJson(e.to_string()))
}

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// A program compiled once and run over many records (streamed transformations run it
/// per record, where compiling each time would cost more than running). Not `Send`: it
/// lives on the thread that converts the stream.
pub struct RecordProgram {
    filter: Filter,
    globals: [Val; 2],
}

impl Expression {
    /// Compiles the program for repeated runs with the same variables.
    pub fn for_records(&self, vars: &ExpressionVars) -> Result<RecordProgram, ExpressionError> {
        Ok(RecordProgram {
            filter: compile_filter(&self.source)?,
            globals: [to_val(&vars.parameters)?, to_val(&vars.exchange)?],
        })
    }
}

impl RecordProgram {
    /// All values the program yields for `input` (none filters the record out).
    pub fn run(&self, input: &Value) -> Result<Vec<Value>, ExpressionError> {
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new(self.globals.clone()));
        let mut out = Vec::new();
        for result in self.filter.id.run((ctx, to_val(input)?)).map(unwrap_valr) {
            let value = result.map_err(|e| ExpressionError::Runtime(e.to_string()))?;
            out.push(from_val(&value)?);
        }
        Ok(out)
    }
}

fn compile_filter(source: &str) -> Result<Filter, ExpressionError> {
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let program = File { code: source, path: () };
    let modules = loader.load(&arena, program).map_err(|errs| ExpressionError::Invalid(describe_errors(&errs)))?;
    Compiler::default()
        .with_funs(funs)
        .with_global_vars(GLOBAL_VARS)
        .compile(modules)
        .map_err(|errs| ExpressionError::Invalid(describe_errors(&errs)))
}

/// Compiles `source`; with an input, also runs it and collects the outputs.
fn run_compiled(source: &str, run: Option<(&Value, &ExpressionVars)>) -> Result<Option<Vec<Value>>, ExpressionError> {
    let filter = compile_filter(source)?;
    let Some((input, vars)) = run else {
        return Ok(None);
    };
    let globals = [to_val(&vars.parameters)?, to_val(&vars.exchange)?];
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new(globals));
    let mut out = Vec::new();
    for result in filter.id.run((ctx, to_val(input)?)).map(unwrap_valr) {
        let value = result.map_err(|e| ExpressionError::Runtime(e.to_string()))?;
        out.push(from_val(&value)?);
    }
    Ok(Some(out))
}

fn describe_errors<T: fmt::Debug>(errs: &[T]) -> String {
    errs.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> ExpressionVars {
        ExpressionVars { parameters: json!({"region": "north"}), exchange: json!({"exchangeId": "x1"}) }
    }

    #[test]
    fn maps_objects() {
        let e = Expression::compile("map({id: .providerId, name: .displayName})").unwrap();
        let out = e.evaluate_single(&json!([{"providerId": 1, "displayName": "A"}]), &vars()).unwrap();
        assert_eq!(out, json!([{"id": 1, "name": "A"}]));
    }

    #[test]
    fn sees_parameters_and_exchange() {
        let e = Expression::compile("{r: $parameters.region, x: $exchange.exchangeId, s: \"q\\\"\"}").unwrap();
        assert_eq!(e.evaluate_single(&json!(null), &vars()).unwrap(), json!({"r": "north", "x": "x1", "s": "q\""}));
    }

    #[test]
    fn conditions_follow_jq_truthiness() {
        let e = Expression::compile("length > 0").unwrap();
        assert!(e.evaluate_condition(&json!([1]), &vars()).unwrap());
        assert!(!e.evaluate_condition(&json!([]), &vars()).unwrap());
        let empty = Expression::compile("empty").unwrap();
        assert!(!empty.evaluate_condition(&json!(1), &vars()).unwrap());
    }

    #[test]
    fn invalid_programs_are_rejected_at_compile_time() {
        assert!(matches!(Expression::compile("map("), Err(ExpressionError::Invalid(_))));
        assert!(matches!(Expression::compile("nosuchfn(1)"), Err(ExpressionError::Invalid(_))));
        assert!(matches!(Expression::compile("$undefined"), Err(ExpressionError::Invalid(_))));
        assert!(matches!(Expression::compile("  "), Err(ExpressionError::Invalid(_))));
    }

    #[test]
    fn runtime_errors_are_reported() {
        let e = Expression::compile(".a").unwrap();
        assert!(matches!(e.evaluate(&json!([1]), &vars()), Err(ExpressionError::Runtime(_))));
        let many = Expression::compile(".[]").unwrap();
        assert_eq!(many.evaluate_single(&json!([1, 2]), &vars()), Err(ExpressionError::NotSingle(2)));
    }
}
