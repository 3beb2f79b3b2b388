//! The gateway's logs during a test run: written as JSON lines to a file under `target/`,
//! so a failing wait can show what the functions said about its exchange.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

static LOG_FILE: OnceLock<PathBuf> = OnceLock::new();

/// How many lines a failure report quotes at most, of each kind.
const QUOTED: usize = 40;

/// Sends this test binary's logs (the emulator's and the functions') to a file of its own.
/// Once per binary, however many emulators it starts.
pub(crate) fn capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(install);
}

fn install() {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("e2e-logs");
    prune(&dir);
    let path = dir.join(format!("{}.log", std::process::id()));
    let file = std::fs::create_dir_all(&dir).and_then(|_| File::create(&path));
    let Ok(file) = file else {
        eprintln!("gateway logs are not captured: cannot create {}", path.display());
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,handoff_app=info,handoff_aws=info,handoff_emulator=info")
    });
    let installed = tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(Mutex::new(file)).try_init();
    if installed.is_ok() {
        let _ = LOG_FILE.set(path);
    }
}

/// Deletes the logs of runs more than a day old (one file is written per test binary run).
fn prune(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if age.is_some_and(|age| age.as_secs() > 24 * 3600) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The captured lines naming `exchange_id`, then the warnings and errors of the run (the
/// emulator's own do not name exchanges), each list cut to its last lines.
pub(crate) fn about(exchange_id: &str) -> String {
    let Some(path) = LOG_FILE.get() else {
        return "(gateway logs were not captured)".into();
    };
    let Ok(file) = File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    let mut naming = Vec::new();
    let mut warnings = Vec::new();
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        if line.contains(exchange_id) {
            naming.push(line);
        } else if line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\"") {
            warnings.push(line);
        }
    }
    let tail = |lines: &[String]| lines[lines.len().saturating_sub(QUOTED)..].join("\n");
    format!(
        "gateway log lines naming {exchange_id} (all in {}):\n{}\nother warnings and errors:\n{}",
        path.display(),
        tail(&naming),
        tail(&warnings)
    )
}
