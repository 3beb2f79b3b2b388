//! The jq sandbox: every program a definition brings runs in a child process of the
//! function, because a program is hostile input that no in-process check can bound —
//! `last(range(1e15))` never yields, `[repeat(.)]` fills memory, `def f: 1 + f; f`
//! overflows the stack, and none of them can be interrupted on a thread.
//!
//! The child is the function's own executable started with [`SANDBOX_ARG`] (so a Lambda
//! package needs nothing extra): it limits its data segment (`RLIMIT_DATA`, heap and
//! stacks), dies with its parent, runs programs on one thread with a bounded stack through
//! [`InProcess`] (which caps what a run yields) and answers one JSON line per request. The
//! parent ([`JqSandbox`]) keeps a few idle children, kills one that misses its deadline and
//! reads a child's death as the program exhausting its memory or stack. Callers are on
//! blocking threads: a run may take until its deadline, and the async executor never waits
//! for it.

use handoff_core::expression::{ExpressionError, ExpressionVars, InProcess, JqRunner, OutputLimits, SandboxLimits};
use rustix::process::{Resource, Rlimit, Signal};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The first argument that turns a Handoff executable into a sandbox child. A test
/// binary given it exits at once ("unrecognized option"), which the parent reports.
pub const SANDBOX_ARG: &str = "--handoff-jq-sandbox";
/// What a child says first, so a wrong executable is told apart from a slow program.
const READY: &str = "handoff-jq-sandbox/1 ready";
/// How long a new child may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The stack of the thread that runs programs (counted in the memory limit).
const PROGRAM_STACK_BYTES: usize = 32 * 1024 * 1024;
/// Children kept alive between runs (at most `max_processes` are alive at once).
const MAX_IDLE: usize = 4;

const ENV_MAX_OUTPUTS: &str = "HANDOFF_JQ_SANDBOX_MAX_OUTPUTS";
const ENV_MAX_OUTPUT_BYTES: &str = "HANDOFF_JQ_SANDBOX_MAX_OUTPUT_BYTES";
const ENV_MAX_MEMORY_MB: &str = "HANDOFF_JQ_SANDBOX_MAX_MEMORY_MB";

/// A request as the parent writes it…
#[derive(Serialize)]
struct Request<'a> {
    program: &'a str,
    vars: &'a ExpressionVars,
    inputs: &'a [Value],
}

/// …and as the child reads it: inputs stay JSON text until the program parses them.
#[derive(Deserialize)]
struct ReceivedRequest {
    program: String,
    vars: ExpressionVars,
    inputs: Vec<Box<RawValue>>,
}

/// One result per input, in order.
type Reply = Vec<Result<Vec<Value>, ExpressionError>>;
type SentReply = Vec<Result<Vec<Box<RawValue>>, ExpressionError>>;

/// What a child says once it holds a whole request: from here the deadline runs (moving a
/// large document through the pipe is not the program's time).
const RUNNING: &str = "running";
/// How long a child may take to read a request before it says [`RUNNING`].
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs programs in child processes under [`SandboxLimits`].
pub struct JqSandbox {
    executable: PathBuf,
    limits: SandboxLimits,
    pool: Mutex<Pool>,
    freed: Condvar,
}

#[derive(Default)]
struct Pool {
    idle: Vec<SandboxChild>,
    alive: usize,
}

impl std::fmt::Debug for JqSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JqSandbox").field("executable", &self.executable).field("limits", &self.limits).finish()
    }
}

impl JqSandbox {
    /// Children are `executable` started with [`SANDBOX_ARG`]: a Handoff binary whose `main`
    /// calls [`serve_if_requested`] first.
    pub fn new(executable: PathBuf, limits: SandboxLimits) -> Self {
        Self { executable, limits, pool: Mutex::new(Pool::default()), freed: Condvar::new() }
    }

    fn request(&self, request: &Request<'_>) -> Result<Reply, ExpressionError> {
        let line = serde_json::to_string(request).map_err(|e| ExpressionError::NotJson { message: e.to_string() })?;
        let mut child = self.checkout()?;
        if child.send(&line).is_err() {
            // An idle child that died meanwhile: one fresh try.
            self.release(child, false);
            child = self.checkout_fresh()?;
            if let Err(e) = child.send(&line) {
                self.release(child, false);
                return Err(unavailable(format!("writing to the sandbox: {e}")));
            }
        }
        let answer = match child.replies.recv_timeout(TRANSFER_TIMEOUT) {
            Ok(Ok(line)) if line == RUNNING => child.replies.recv_timeout(self.limits.timeout),
            Ok(Ok(_)) => {
                self.release(child, false);
                return Err(unavailable("the sandbox did not acknowledge the request".into()));
            }
            Err(RecvTimeoutError::Timeout) => {
                self.release(child, false);
                return Err(unavailable(format!("the sandbox did not take the request within {TRANSFER_TIMEOUT:?}")));
            }
            other => other,
        };
        match answer {
            Ok(Ok(answer)) => {
                let reply = serde_json::from_str::<Reply>(&answer)
                    .map_err(|e| unavailable(format!("the sandbox answered something unreadable: {e}")));
                self.release(child, reply.is_ok());
                reply
            }
            Err(RecvTimeoutError::Timeout) => {
                self.release(child, false);
                Err(ExpressionError::TimedOut { limit_ms: self.limits.timeout.as_millis() as u64 })
            }
            Ok(Err(e)) => {
                self.release(child, false);
                Err(unavailable(format!("reading the sandbox's answer: {e}")))
            }
            // Its output closed: it ended, so waiting for it returns at once.
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.reap();
                self.release(child, false);
                let resources = [Signal::ABORT, Signal::SEGV, Signal::BUS, Signal::KILL].map(Signal::as_raw);
                match status.and_then(|s| s.signal()) {
                    // Aborted (allocation failed under the limit, or the stack guard hit) or killed.
                    Some(signal) if resources.contains(&signal) => {
                        Err(ExpressionError::OutOfResources { limit_mb: self.limits.max_memory_mb })
                    }
                    _ => Err(unavailable(format!("the sandbox process ended without answering ({status:?})"))),
                }
            }
        }
    }

    /// An idle child, or a new one once fewer than `max_processes` are alive.
    fn checkout(&self) -> Result<SandboxChild, ExpressionError> {
        let mut pool = self.lock();
        loop {
            if let Some(child) = pool.idle.pop() {
                return Ok(child);
            }
            if pool.alive < self.limits.max_processes.max(1) {
                pool.alive += 1;
                drop(pool);
                return self.spawn_counted();
            }
            pool = self.freed.wait(pool).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn checkout_fresh(&self) -> Result<SandboxChild, ExpressionError> {
        let mut pool = self.lock();
        while pool.alive >= self.limits.max_processes.max(1) {
            pool = self.freed.wait(pool).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        pool.alive += 1;
        drop(pool);
        self.spawn_counted()
    }

    /// Spawns a child already counted as alive (uncounts it if it does not start).
    fn spawn_counted(&self) -> Result<SandboxChild, ExpressionError> {
        SandboxChild::spawn(&self.executable, &self.limits).inspect_err(|_| {
            self.lock().alive -= 1;
            self.freed.notify_one();
        })
    }

    /// Back to the pool when healthy, else killed.
    fn release(&self, mut child: SandboxChild, healthy: bool) {
        let mut pool = self.lock();
        if healthy && pool.idle.len() < MAX_IDLE {
            pool.idle.push(child);
        } else {
            pool.alive -= 1;
            drop(pool);
            child.kill();
        }
        self.freed.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl JqRunner for JqSandbox {
    fn run(&self, source: &str, input: &Value, vars: &ExpressionVars) -> Result<Vec<Value>, ExpressionError> {
        self.run_batch(source, std::slice::from_ref(input), vars)
            .pop()
            .unwrap_or_else(|| Err(unavailable("the sandbox answered no result".into())))
    }

    /// One request for the whole batch, under one deadline; a limit hit fails every input
    /// of the batch.
    fn run_batch(
        &self,
        source: &str,
        inputs: &[Value],
        vars: &ExpressionVars,
    ) -> Vec<Result<Vec<Value>, ExpressionError>> {
        match self.request(&Request { program: source, vars, inputs }) {
            Ok(reply) if reply.len() == inputs.len() => reply,
            Ok(reply) => vec![
                Err(unavailable(format!(
                    "the sandbox answered {} results for {} inputs",
                    reply.len(),
                    inputs.len()
                )));
                inputs.len()
            ],
            Err(e) => vec![Err(e); inputs.len()],
        }
    }
}

fn unavailable(message: String) -> ExpressionError {
    ExpressionError::Unavailable { message }
}

/// A running child: its stdin, and its stdout read line by line on a thread of its own
/// (so waiting for an answer can time out).
struct SandboxChild {
    process: Child,
    stdin: ChildStdin,
    replies: Receiver<std::io::Result<String>>,
}

impl SandboxChild {
    fn spawn(executable: &PathBuf, limits: &SandboxLimits) -> Result<Self, ExpressionError> {
        let mut process = Command::new(executable)
            .arg(SANDBOX_ARG)
            // Nothing of the function's environment (credentials, secrets' names) goes in.
            .env_clear()
            .env(ENV_MAX_OUTPUTS, limits.outputs.max_outputs.to_string())
            .env(ENV_MAX_OUTPUT_BYTES, limits.outputs.max_output_bytes.to_string())
            .env(ENV_MAX_MEMORY_MB, limits.max_memory_mb.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| unavailable(format!("starting {}: {e}", executable.display())))?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            let _ = process.kill();
            return Err(unavailable("the sandbox's pipes were not opened".into()));
        };
        let (tx, replies) = mpsc::channel();
        std::thread::Builder::new()
            .name("jq-sandbox-reader".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let failed = line.is_err();
                    if tx.send(line).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|e| unavailable(format!("starting the sandbox reader: {e}")))?;
        let mut child = Self { process, stdin, replies };
        match child.replies.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) if line == READY => Ok(child),
            other => {
                child.kill();
                Err(unavailable(format!(
                    "{} did not start as a jq sandbox ({}); HANDOFF_JQ_SANDBOX_EXE must name a Handoff function or emulator binary",
                    executable.display(),
                    match other {
                        Ok(Ok(_)) => "it printed something else".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                    }
                )))
            }
        }
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.write_all(b"\n")?;
        self.stdin.flush()
    }

    fn reap(&mut self) -> Option<std::process::ExitStatus> {
        self.process.wait().ok()
    }

    fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for SandboxChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The sandbox side: when this process was started with [`SANDBOX_ARG`], serves requests
/// on stdin until it closes and exits; otherwise returns at once. Every Handoff `main`
/// calls it first.
pub fn serve_if_requested() {
    if std::env::args_os().nth(1).is_some_and(|a| a == SANDBOX_ARG) {
        std::process::exit(serve());
    }
}

fn serve() -> i32 {
    // Die with the parent, so a killed function leaves no runaway program behind.
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        eprintln!("jq sandbox: cannot tie its life to the parent's: {e}");
        return 2;
    }
    let number = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let defaults = SandboxLimits::default();
    let outputs = OutputLimits {
        max_outputs: number(ENV_MAX_OUTPUTS, defaults.outputs.max_outputs as u64) as usize,
        max_output_bytes: number(ENV_MAX_OUTPUT_BYTES, defaults.outputs.max_output_bytes as u64) as usize,
    };
    let memory_bytes = number(ENV_MAX_MEMORY_MB, defaults.max_memory_mb).saturating_mul(1024 * 1024);
    // Before anything else allocates: the limit bounds the programs' heap and the stack of
    // the thread below alike.
    let limit = Rlimit { current: Some(memory_bytes), maximum: Some(memory_bytes) };
    if let Err(e) = rustix::process::setrlimit(Resource::Data, limit) {
        eprintln!("jq sandbox: cannot limit memory: {e}");
        return 3;
    }
    let program_thread = std::thread::Builder::new()
        .name("jq-program".into())
        .stack_size(PROGRAM_STACK_BYTES)
        .spawn(move || serve_requests(InProcess { limits: outputs }));
    match program_thread.map(|t| t.join()) {
        Ok(Ok(code)) => code,
        _ => 4,
    }
}

fn serve_requests(runner: InProcess) -> i32 {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{READY}").and_then(|()| out.flush()).is_err() {
        return 5;
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return 6 };
        let request = serde_json::from_str::<ReceivedRequest>(&line);
        if writeln!(out, "{RUNNING}").and_then(|()| out.flush()).is_err() {
            return 8;
        }
        let reply: SentReply = match request {
            Ok(request) => {
                request.inputs.iter().map(|input| runner.run_json(&request.program, input, &request.vars)).collect()
            }
            Err(e) => vec![Err(unavailable(format!("unreadable request: {e}")))],
        };
        let Ok(text) = serde_json::to_string(&reply) else { return 7 };
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return 8;
        }
    }
    0
}
