//! The jq sandbox (`handoff_app::jq_sandbox`) against real child processes of the tests'
//! `handoff-jq-sandbox` binary: what a program yields comes back, and every way a hostile
//! program can misbehave ends as the error that names its limit, without harming the
//! caller or the programs running beside it.

use handoff_app::jq_sandbox::JqSandbox;
use handoff_core::expression::{ExpressionError, ExpressionVars, JqRunner, OutputLimits, SandboxLimits};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_millis(1500);

fn sandbox() -> JqSandbox {
    sandbox_of(2)
}

fn sandbox_of(max_processes: usize) -> JqSandbox {
    JqSandbox::new(
        PathBuf::from(env!("CARGO_BIN_EXE_handoff-jq-sandbox")),
        SandboxLimits {
            outputs: OutputLimits { max_outputs: 1000, max_output_bytes: 1024 * 1024 },
            timeout: TIMEOUT,
            max_memory_mb: 96,
            max_processes,
        },
    )
}

fn vars() -> ExpressionVars {
    ExpressionVars { parameters: json!({"region": "north"}), exchange: json!({"exchangeId": "x1"}) }
}

fn run(sandbox: &JqSandbox, program: &str, input: Value) -> Result<Vec<Value>, ExpressionError> {
    sandbox.run(program, &input, &vars())
}

#[test]
fn a_program_yields_its_values_and_sees_its_variables() {
    let sandbox = sandbox();
    assert_eq!(run(&sandbox, ".[] | . * 2", json!([1, 2])), Ok(vec![json!(2), json!(4)]));
    assert_eq!(run(&sandbox, "$parameters.region", json!(null)), Ok(vec![json!("north")]));
    let batch = sandbox.run_batch(".a", &[json!({"a": 1}), json!(5), json!({"a": 3})], &vars());
    assert_eq!(batch.len(), 3);
    assert_eq!(batch[0], Ok(vec![json!(1)]));
    assert!(matches!(&batch[1], Err(ExpressionError::Runtime { message }) if message.contains("cannot index number")));
    assert_eq!(batch[2], Ok(vec![json!(3)]), "one record's error leaves the others alone");
}

#[test]
fn a_program_that_never_yields_is_killed_at_its_deadline_and_the_next_run_works() {
    let sandbox = sandbox();
    let started = Instant::now();
    assert_eq!(run(&sandbox, "last(range(1e15))", json!(null)), Err(ExpressionError::TimedOut { limit_ms: 1500 }));
    let took = started.elapsed();
    assert!(took >= TIMEOUT && took < TIMEOUT * 4, "stopped after {took:?}");
    assert_eq!(run(&sandbox, ". + 1", json!(1)), Ok(vec![json!(2)]));
}

#[test]
fn an_endless_generator_stops_at_the_output_cap() {
    assert_eq!(run(&sandbox(), "repeat(.)", json!(1)), Err(ExpressionError::TooManyOutputs { limit: 1000 }));
    assert_eq!(
        run(&sandbox(), "range(10) | \"x\" * 200000", json!(null)),
        Err(ExpressionError::OutputTooLarge { limit_bytes: 1024 * 1024 })
    );
}

#[test]
fn endless_recursion_and_a_growing_array_end_as_out_of_resources() {
    let sandbox = sandbox();
    for program in ["def f: 1 + f; f", "[range(1e10)]"] {
        assert_eq!(
            run(&sandbox, program, json!(1)),
            Err(ExpressionError::OutOfResources { limit_mb: 96 }),
            "{program}"
        );
    }
    assert_eq!(run(&sandbox, "length", json!([1, 2, 3])), Ok(vec![json!(3)]), "the sandbox recovers");
}

#[test]
fn a_runaway_program_does_not_hold_up_one_beside_it() {
    let sandbox = std::sync::Arc::new(sandbox());
    let runaway = {
        let sandbox = sandbox.clone();
        std::thread::spawn(move || run(&sandbox, "last(range(1e15))", json!(null)))
    };
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(run(&sandbox, ".a", json!({"a": "ok"})), Ok(vec![json!("ok")]));
    assert!(started.elapsed() < TIMEOUT, "the quick program waited {:?}", started.elapsed());
    assert_eq!(runaway.join().unwrap(), Err(ExpressionError::TimedOut { limit_ms: 1500 }));
}

#[test]
fn no_more_than_max_processes_run_at_once_and_the_others_wait_their_turn() {
    let sandbox = std::sync::Arc::new(sandbox_of(1));
    let runaway = {
        let sandbox = sandbox.clone();
        std::thread::spawn(move || run(&sandbox, "last(range(1e15))", json!(null)))
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(run(&sandbox, ". + 1", json!(1)), Ok(vec![json!(2)]));
    assert!(started.elapsed() >= TIMEOUT / 2, "it waited for the only process ({:?})", started.elapsed());
    assert_eq!(runaway.join().unwrap(), Err(ExpressionError::TimedOut { limit_ms: 1500 }));
}

#[test]
fn an_executable_that_is_not_a_sandbox_is_reported_not_run_as_one() {
    // The test binary itself: libtest refuses the sandbox argument and exits.
    let wrong = JqSandbox::new(std::env::current_exe().unwrap(), SandboxLimits::default());
    let Err(ExpressionError::Unavailable { message }) = run(&wrong, ".", json!(1)) else {
        panic!("a test binary must not pass for a sandbox");
    };
    assert!(message.contains("did not start as a jq sandbox"), "{message}");
    let missing = JqSandbox::new(PathBuf::from("/nonexistent/handoff"), SandboxLimits::default());
    assert!(matches!(run(&missing, ".", json!(1)), Err(ExpressionError::Unavailable { .. })));
}
