//! jq expressions (via the `jaq` crates). Compiled once when a definition is parsed so a
//! broken program is a 400 at `POST /integrations`, never a surprise at run time.
//!
//! Running a program is behind [`JqRunner`]: a program is hostile input (`repeat(.)`,
//! `def f: 1 + f; f`), so a deployment runs it in a sandbox process that adds a deadline and
//! memory and stack limits; [`InProcess`] is the evaluation itself, with the caps on what a
//! run may yield, and is what the sandbox runs inside. Runtime errors are redacted here: jq's
//! own messages embed the values they failed on, and those are payload contents.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

/// Variables visible to every expression: `$parameters` and `$exchange`.
const GLOBAL_VARS: [&str; 2] = ["$parameters", "$exchange"];

/// Longest runtime error text kept (the rest is cut on a character boundary).
const MAX_ERROR_TEXT_BYTES: usize = 512;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ExpressionError {
    #[error("invalid jq program: {message}")]
    Invalid { message: String },
    /// What went wrong, with the types involved but never the values (see [`redact`]).
    #[error("jq program failed: {message}")]
    Runtime { message: String },
    #[error("jq program must yield exactly one value, it yielded {count}")]
    NotSingle { count: usize },
    #[error("jq program yielded a value that is not JSON: {message}")]
    NotJson { message: String },
    #[error("jq program yielded more than {limit} values (the limit is the JqMaxOutputs parameter)")]
    TooManyOutputs { limit: usize },
    #[error("jq program yielded more than {limit_bytes} bytes (the limit is the JqMaxOutputBytes parameter)")]
    OutputTooLarge { limit_bytes: usize },
    #[error("jq program ran longer than {limit_ms} ms and was stopped (the limit is the JqTimeoutMs parameter)")]
    TimedOut { limit_ms: u64 },
    #[error(
        "jq program exhausted its memory ({limit_mb} MB, the JqMaxMemoryMB parameter) or its stack (recursion too deep) and was stopped"
    )]
    OutOfResources { limit_mb: u64 },
    /// Not the program's fault: the sandbox could not be started or talked to. Retrying can help.
    #[error("the jq sandbox is unavailable: {message}")]
    Unavailable { message: String },
}

impl ExpressionError {
    /// The program (or its input) is at fault, so retrying gives the same answer.
    pub fn is_program_error(&self) -> bool {
        !matches!(self, ExpressionError::Unavailable { .. })
    }

    /// Its catalogue code: the program's own failure, or a limit of the deployment it hit.
    pub fn code(&self) -> crate::error_code::ErrorCode {
        use crate::error_code::ErrorCode;
        match self {
            Self::Invalid { .. } | Self::Runtime { .. } | Self::NotSingle { .. } | Self::NotJson { .. } => {
                ErrorCode::ExpressionFailed
            }
            Self::TooManyOutputs { .. }
            | Self::OutputTooLarge { .. }
            | Self::TimedOut { .. }
            | Self::OutOfResources { .. } => ErrorCode::ExpressionLimit,
            Self::Unavailable { .. } => ErrorCode::Unavailable,
        }
    }
}

/// What an expression sees besides its input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExpressionVars {
    pub parameters: Value,
    pub exchange: Value,
}

/// Caps on what one run may yield: counted and measured as it yields, so an endless
/// generator stops at the cap instead of filling memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputLimits {
    pub max_outputs: usize,
    /// The outputs' total size as JSON text.
    pub max_output_bytes: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        Self { max_outputs: 100_000, max_output_bytes: 64 * 1024 * 1024 }
    }
}

/// Where programs run. Called from blocking threads only: a run may take until its deadline.
pub trait JqRunner: Send + Sync {
    /// All values `source` (an already compiled [`Expression`]'s source) yields for `input`.
    fn run(&self, source: &str, input: &Value, vars: &ExpressionVars) -> Result<Vec<Value>, ExpressionError>;

    /// Several inputs with the same program and variables, one result each (a streamed
    /// transformation's records: one round trip to the sandbox for many records).
    fn run_batch(
        &self,
        source: &str,
        inputs: &[Value],
        vars: &ExpressionVars,
    ) -> Vec<Result<Vec<Value>, ExpressionError>> {
        inputs.iter().map(|input| self.run(source, input, vars)).collect()
    }
}

/// Runs programs on the calling thread with the output caps, and nothing else: no deadline,
/// no memory or stack limit. The sandbox process runs programs with it; tests and fakes use
/// it directly.
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcess {
    pub limits: OutputLimits,
}

thread_local! {
    /// The program compiled last on this thread (a record stream runs one program many
    /// times; jaq's filters are not `Send`, so the cache is per thread).
    static COMPILED: RefCell<Option<(String, Filter)>> = const { RefCell::new(None) };
}

impl InProcess {
    /// The outputs of `source` over `input`, both as JSON text: what the sandbox process
    /// runs, so a document is parsed once on the way in and outputs once on the way out.
    pub fn run_json(
        &self,
        source: &str,
        input: &RawValue,
        vars: &ExpressionVars,
    ) -> Result<Vec<Box<RawValue>>, ExpressionError> {
        COMPILED.with(|cell| {
            let mut cached = cell.borrow_mut();
            if cached.as_ref().is_none_or(|(s, _)| s != source) {
                *cached = Some((source.to_string(), compile_filter(source)?));
            }
            let Some((_, filter)) = cached.as_ref() else {
                return Err(ExpressionError::Unavailable { message: "the compiled program vanished".into() });
            };
            run_filter(filter, input, vars, self.limits)
        })
    }
}

impl JqRunner for InProcess {
    fn run(&self, source: &str, input: &Value, vars: &ExpressionVars) -> Result<Vec<Value>, ExpressionError> {
        let input =
            serde_json::value::to_raw_value(input).map_err(|e| ExpressionError::NotJson { message: e.to_string() })?;
        self.run_json(source, &input, vars)?
            .iter()
            .map(|out| serde_json::from_str(out.get()).map_err(|e| ExpressionError::NotJson { message: e.to_string() }))
            .collect()
    }
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
            return Err(ExpressionError::Invalid { message: "the program is empty".into() });
        }
        // Compiling is the validation; runners compile again where they run (the compiled
        // form is not `Send`, and compiling a small program costs microseconds).
        compile_filter(source)?;
        Ok(Self { source: source.to_string() })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// All values the program yields.
    pub fn evaluate(
        &self,
        runner: &dyn JqRunner,
        input: &Value,
        vars: &ExpressionVars,
    ) -> Result<Vec<Value>, ExpressionError> {
        runner.run(&self.source, input, vars)
    }

    /// Exactly one value (transformations, subflow properties, post-processing).
    pub fn evaluate_single(
        &self,
        runner: &dyn JqRunner,
        input: &Value,
        vars: &ExpressionVars,
    ) -> Result<Value, ExpressionError> {
        single(self.evaluate(runner, input, vars)?)
    }

    /// jq truthiness of the first value: `false`, `null` and no value at all are false.
    pub fn evaluate_condition(
        &self,
        runner: &dyn JqRunner,
        input: &Value,
        vars: &ExpressionVars,
    ) -> Result<bool, ExpressionError> {
        Ok(truthy(&self.evaluate(runner, input, vars)?))
    }
}

/// The one value a program must yield where exactly one is expected.
pub fn single(mut values: Vec<Value>) -> Result<Value, ExpressionError> {
    if values.len() != 1 {
        return Err(ExpressionError::NotSingle { count: values.len() });
    }
    Ok(values.remove(0))
}

/// jq truthiness of a condition's outputs: the first value, unless `false` or `null`.
pub fn truthy(values: &[Value]) -> bool {
    matches!(values.first(), Some(v) if !matches!(v, Value::Null | Value::Bool(false)))
}

/// The limits of a sandboxed run besides its output caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    pub outputs: OutputLimits,
    /// How long one run may take before its process is killed.
    pub timeout: Duration,
    /// The sandbox process's data limit (heap and stacks).
    pub max_memory_mb: u64,
    /// How many sandbox processes may run at once (each may use `max_memory_mb`); more runs
    /// wait for one to be free.
    pub max_processes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        // As the template's defaults (JqTimeoutMs, JqMaxMemoryMB).
        Self { outputs: OutputLimits::default(), timeout: Duration::from_secs(5), max_memory_mb: 128, max_processes: 8 }
    }
}

fn to_val(value: &Value) -> Result<Val, ExpressionError> {
    let text = serde_json::to_vec(value).map_err(|e| ExpressionError::NotJson { message: e.to_string() })?;
    jaq_json::read::parse_single(&text).map_err(|e| ExpressionError::NotJson { message: e.to_string() })
}

type Filter = jaq_core::Filter<data::JustLut<Val>>;

fn compile_filter(source: &str) -> Result<Filter, ExpressionError> {
    let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
    let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let program = File { code: source, path: () };
    let modules =
        loader.load(&arena, program).map_err(|errs| ExpressionError::Invalid { message: describe_errors(&errs) })?;
    Compiler::default()
        .with_funs(funs)
        .with_global_vars(GLOBAL_VARS)
        .compile(modules)
        .map_err(|errs| ExpressionError::Invalid { message: describe_errors(&errs) })
}

/// Runs a compiled filter, counting and measuring outputs as they come.
fn run_filter(
    filter: &Filter,
    input: &RawValue,
    vars: &ExpressionVars,
    limits: OutputLimits,
) -> Result<Vec<Box<RawValue>>, ExpressionError> {
    let globals = [to_val(&vars.parameters)?, to_val(&vars.exchange)?];
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new(globals));
    let input = jaq_json::read::parse_single(input.get().as_bytes())
        .map_err(|e| ExpressionError::NotJson { message: e.to_string() })?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for result in filter.id.run((ctx, input)).map(unwrap_valr) {
        let value = result.map_err(|e| ExpressionError::Runtime { message: redact(&e.to_string()) })?;
        if out.len() == limits.max_outputs {
            return Err(ExpressionError::TooManyOutputs { limit: limits.max_outputs });
        }
        let text = value.to_string();
        bytes = bytes.saturating_add(text.len());
        if bytes > limits.max_output_bytes {
            return Err(ExpressionError::OutputTooLarge { limit_bytes: limits.max_output_bytes });
        }
        // Checked as JSON here: jq can yield what JSON cannot say (NaN, say).
        out.push(RawValue::from_string(text).map_err(|e| ExpressionError::NotJson { message: e.to_string() })?);
    }
    Ok(out)
}

fn describe_errors<T: fmt::Debug>(errs: &[T]) -> String {
    errs.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join("; ")
}

/// jq's runtime errors with every value they quote replaced by its type: `cannot index
/// "123-45-6789" with "a"` becomes `cannot index string with string`. jaq renders an error
/// as fixed text around values shown as JSON, so each value is found by parsing JSON where
/// one starts. A program's own `error("…")` message is the author's text and is kept; an
/// `error` with any other value shows only its type. Cut to a bounded length either way.
pub fn redact(text: &str) -> String {
    const TEMPLATES: [(&str, &[&str]); 4] = [
        ("cannot index ", &[" with "]),
        ("cannot use ", &[" as "]),
        ("cannot calculate ", &[" ", " "]),
        ("invalid path expression with input ", &[]),
    ];
    let known = TEMPLATES.iter().find_map(|(prefix, separators)| {
        let rest = text.strip_prefix(prefix)?;
        // A value we cannot delimit is withheld with the rest of the message.
        Some(redact_template(prefix, separators, rest).unwrap_or_else(|| format!("{prefix}(values withheld)")))
    });
    let redacted = known.unwrap_or_else(|| match serde_json::from_str::<Value>(text) {
        // `error("…")`: the author's message.
        Ok(Value::String(message)) => message,
        // `error(v)` with another value: its type only.
        Ok(value) => format!("error with {}", type_name(&value)),
        // Text jaq wrote itself without quoting a value.
        Err(_) => text.to_string(),
    });
    crate::retry::bounded_to(redacted, MAX_ERROR_TEXT_BYTES)
}

/// `prefix v1 sep1 x sep2 v2…`: values at the odd places, fixed text between. The separator
/// after `cannot calculate`'s first value is followed by an operator, not a value.
fn redact_template(prefix: &str, separators: &[&str], rest: &str) -> Option<String> {
    let mut out = prefix.to_string();
    let (value, mut rest) = leading_value(rest)?;
    out.push_str(type_name(&value));
    if prefix == "cannot calculate " {
        // `l op r`: the operator is a word between two spaces.
        let after = rest.strip_prefix(' ')?;
        let (op, after) = after.split_once(' ')?;
        let (value, after) = leading_value(after)?;
        if !after.is_empty() {
            return None;
        }
        out.push_str(&format!(" {op} {}", type_name(&value)));
        return Some(out);
    }
    for separator in separators {
        rest = rest.strip_prefix(separator)?;
        out.push_str(separator);
        if *separator == " as " {
            // The type jq wanted is fixed text.
            out.push_str(rest);
            return Some(out);
        }
        let (value, after) = leading_value(rest)?;
        out.push_str(type_name(&value));
        rest = after;
    }
    rest.is_empty().then_some(out)
}

/// The JSON value at the start of `text` and what follows it.
fn leading_value(text: &str) -> Option<(Value, &str)> {
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let value = values.next()?.ok()?;
    Some((value, &text[values.byte_offset()..]))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> ExpressionVars {
        ExpressionVars { parameters: json!({"region": "north"}), exchange: json!({"exchangeId": "x1"}) }
    }

    fn run() -> InProcess {
        InProcess::default()
    }

    #[test]
    fn maps_objects() {
        let e = Expression::compile("map({id: .providerId, name: .displayName})").unwrap();
        let out = e.evaluate_single(&run(), &json!([{"providerId": 1, "displayName": "A"}]), &vars()).unwrap();
        assert_eq!(out, json!([{"id": 1, "name": "A"}]));
    }

    #[test]
    fn sees_parameters_and_exchange() {
        let e = Expression::compile("{r: $parameters.region, x: $exchange.exchangeId, s: \"q\\\"\"}").unwrap();
        assert_eq!(
            e.evaluate_single(&run(), &json!(null), &vars()).unwrap(),
            json!({"r": "north", "x": "x1", "s": "q\""})
        );
    }

    #[test]
    fn conditions_follow_jq_truthiness() {
        let e = Expression::compile("length > 0").unwrap();
        assert!(e.evaluate_condition(&run(), &json!([1]), &vars()).unwrap());
        assert!(!e.evaluate_condition(&run(), &json!([]), &vars()).unwrap());
        let empty = Expression::compile("empty").unwrap();
        assert!(!empty.evaluate_condition(&run(), &json!(1), &vars()).unwrap());
    }

    #[test]
    fn invalid_programs_are_rejected_at_compile_time() {
        for source in ["map(", "nosuchfn(1)", "$undefined", "  "] {
            assert!(matches!(Expression::compile(source), Err(ExpressionError::Invalid { .. })), "{source}");
        }
    }

    #[test]
    fn runtime_errors_are_reported() {
        let e = Expression::compile(".a").unwrap();
        assert!(matches!(e.evaluate(&run(), &json!([1]), &vars()), Err(ExpressionError::Runtime { .. })));
        let many = Expression::compile(".[]").unwrap();
        assert_eq!(many.evaluate_single(&run(), &json!([1, 2]), &vars()), Err(ExpressionError::NotSingle { count: 2 }));
    }

    #[test]
    fn runtime_errors_name_types_never_values() {
        let secret = "123-45-6789";
        for (program, input, expected) in [
            (".a", json!(secret), "cannot index string with string"),
            (".a", json!([secret]), "cannot index array with string"),
            ("tonumber", json!({"ssn": secret}), "cannot use object as string"),
            (". - 1", json!(secret), "cannot calculate string - number"),
            ("error({ssn: .})", json!(secret), "error with object"),
        ] {
            let e = Expression::compile(program).unwrap();
            let Err(ExpressionError::Runtime { message }) = e.evaluate(&run(), &input, &vars()) else {
                panic!("{program} should fail at run time");
            };
            assert!(!message.contains(secret), "{program}: {message}");
            assert!(message.contains(expected), "{program}: {message} (wanted {expected})");
        }
    }

    #[test]
    fn an_authors_error_message_is_kept() {
        let e = Expression::compile(r#"error("the provider has no id")"#).unwrap();
        assert_eq!(
            e.evaluate(&run(), &json!({}), &vars()),
            Err(ExpressionError::Runtime { message: "the provider has no id".into() })
        );
    }

    #[test]
    fn redaction_withholds_what_it_cannot_delimit_and_is_bounded() {
        assert_eq!(redact("cannot index nan-ish with 1"), "cannot index (values withheld)");
        let long = format!("\"{}\"", "é".repeat(2000));
        let cut = redact(&long);
        assert!(cut.len() <= MAX_ERROR_TEXT_BYTES && cut.ends_with("(truncated)"), "{}", cut.len());
    }

    #[test]
    fn an_endless_generator_stops_at_the_output_cap() {
        let limits = OutputLimits { max_outputs: 1_000, max_output_bytes: usize::MAX };
        let e = Expression::compile("repeat(.)").unwrap();
        assert_eq!(
            e.evaluate(&InProcess { limits }, &json!(1), &vars()),
            Err(ExpressionError::TooManyOutputs { limit: 1_000 })
        );
        let exactly = Expression::compile("range(1000)").unwrap();
        assert_eq!(exactly.evaluate(&InProcess { limits }, &json!(1), &vars()).map(|v| v.len()), Ok(1_000));
    }

    #[test]
    fn outputs_are_measured_as_they_come() {
        let limits = OutputLimits { max_outputs: usize::MAX, max_output_bytes: 10_000 };
        let e = Expression::compile("repeat(.)").unwrap();
        assert_eq!(
            e.evaluate(&InProcess { limits }, &json!("x".repeat(100)), &vars()),
            Err(ExpressionError::OutputTooLarge { limit_bytes: 10_000 })
        );
    }

    #[test]
    fn errors_travel_as_json() {
        let e = ExpressionError::TimedOut { limit_ms: 250 };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"kind":"timedOut","limitMs":250}"#);
        assert_eq!(serde_json::from_str::<ExpressionError>(&text).unwrap(), e);
        assert!(!ExpressionError::Unavailable { message: "x".into() }.is_program_error());
        assert!(e.is_program_error());
    }
}
