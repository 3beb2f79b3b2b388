//! The AWS emulator (moto) as a child process.
//!
//! SPEC §5: a fresh machine needs no manual step, so moto is installed on first use into a
//! project-local virtual environment (`<workspace>/.venv`, or `HANDOFF_VENV`) and started
//! on a free loopback port. Several test binaries may start at once, so the install is
//! guarded by an exclusive file lock. The child gets `PR_SET_PDEATHSIG` so that it dies
//! with us even if we are killed without a chance to clean up.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts moto_server with DynamoDB requests serialized: moto's DynamoDB backend loses
/// concurrent writes when a transaction fails (see the script).
const LAUNCHER: &str = include_str!("../python/moto_server.py");

/// The moto release installed: the launcher patches its internals (see the script), so it
/// is the version those patches were written and tested against.
const MOTO_VERSION: &str = "5.2.5";

/// moto logs older than this are deleted when another moto starts (one is written per start).
const KEEP_LOGS: Duration = Duration::from_secs(24 * 3600);

/// How long moto may take to answer HTTP after start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    #[error("I/O error while {action}: {source}")]
    Io { action: String, source: std::io::Error },
    #[error("installing moto failed: `{command}` exited with {status}; see {log}")]
    Install { command: String, status: std::process::ExitStatus, log: PathBuf },
    #[error("moto_server did not answer on {endpoint} within {seconds} s; its log is {log}")]
    NotReady { endpoint: String, seconds: u64, log: PathBuf },
    #[error("moto_server exited early with {status}; its log is {log}")]
    Exited { status: std::process::ExitStatus, log: PathBuf },
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> MotoError {
    let action = action.into();
    move |source| MotoError::Io { action, source }
}

/// The workspace root (this crate lives at `<root>/infra/emulator`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The virtual environment moto lives in: `HANDOFF_VENV` or `<root>/.venv`.
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("HANDOFF_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => workspace_root().join(".venv"),
    }
}

/// Where moto's logs and the install log go (`<root>/.handoff`, git-ignored).
pub fn state_dir() -> PathBuf {
    workspace_root().join(".handoff")
}

/// Installs moto into the venv unless `moto_server` is already there. Blocking: call it
/// from `spawn_blocking`.
pub fn ensure_installed() -> Result<PathBuf, MotoError> {
    let venv = venv_dir();
    let server = venv.join("bin").join("moto_server");
    if server.exists() {
        return Ok(server);
    }
    let parent = venv.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&parent).map_err(io(format!("creating {}", parent.display())))?;
    let lock_path = parent.join(format!("{}.lock", venv.file_name().and_then(|n| n.to_str()).unwrap_or("venv")));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(format!("opening {}", lock_path.display())))?;
    tracing::info!(lock = %lock_path.display(), "waiting for the moto install lock");
    lock.lock().map_err(io("locking the moto install lock"))?;
    // Another process may have finished the install while we waited.
    if server.exists() {
        return Ok(server);
    }
    let logs = state_dir();
    std::fs::create_dir_all(&logs).map_err(io(format!("creating {}", logs.display())))?;
    let log_path = logs.join("moto-install.log");
    if !venv.join("bin").join("pip").exists() {
        eprintln!("handoff-emulator: creating Python virtual environment {}", venv.display());
        run_logged(Command::new("python3").arg("-m").arg("venv").arg(&venv), &log_path)?;
    }
    eprintln!("handoff-emulator: installing moto[server] {MOTO_VERSION} into {} (first run only)", venv.display());
    run_logged(
        Command::new(venv.join("bin").join("pip")).args([
            "install",
            "--disable-pip-version-check",
            &format!("moto[server]=={MOTO_VERSION}"),
        ]),
        &log_path,
    )?;
    eprintln!("handoff-emulator: moto installed");
    drop(lock);
    Ok(server)
}

fn run_logged(cmd: &mut Command, log_path: &Path) -> Result<(), MotoError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(io(format!("opening {}", log_path.display())))?;
    let err_log = log.try_clone().map_err(io("duplicating the install log handle"))?;
    let command = format!("{cmd:?}");
    let status =
        cmd.stdout(Stdio::from(log)).stderr(Stdio::from(err_log)).status().map_err(io(format!("running {command}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(MotoError::Install { command, status, log: log_path.to_path_buf() })
    }
}

/// Picks a free loopback port by binding port 0 and releasing it.
pub fn free_port() -> Result<u16, MotoError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    let port = l.local_addr().map_err(io("reading the bound port"))?.port();
    Ok(port)
}

/// Deletes moto logs in `dir` older than [`KEEP_LOGS`]; best effort (a log in use is recent).
fn prune_old_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_moto_log =
            name.to_str().is_some_and(|n| n.starts_with("moto-") && n.ends_with(".log") && n != "moto-install.log");
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > KEEP_LOGS);
        if is_moto_log && old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes the launcher script into `dir` and returns its path. Written aside (under a name
/// unique to this start: the port) and renamed, so another emulator starting at the same
/// time, in this process or another, never runs a half-written file.
fn write_launcher(dir: &Path, port: u16) -> Result<PathBuf, MotoError> {
    let path = dir.join("moto_server.py");
    let partial = dir.join(format!("moto_server.py.{}.{port}", std::process::id()));
    std::fs::write(&partial, LAUNCHER).map_err(io(format!("writing {}", partial.display())))?;
    std::fs::rename(&partial, &path).map_err(io(format!("renaming {} to {}", partial.display(), path.display())))?;
    Ok(path)
}

/// A running moto server; killed when dropped.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl MotoServer {
    /// Installs (if needed) and starts moto on a free port and waits until it answers.
    pub async fn start() -> Result<Self, MotoError> {
        Self::start_recording(None).await
    }

    /// [`MotoServer::start`], recording every request it serves to `recording` if given
    /// (the file is emptied first).
    pub async fn start_recording(recording: Option<&Path>) -> Result<Self, MotoError> {
        let server = tokio::task::spawn_blocking(ensure_installed).await.map_err(|e| MotoError::Io {
            action: "installing moto".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
        let port = free_port()?;
        let logs = state_dir();
        std::fs::create_dir_all(&logs).map_err(io(format!("creating {}", logs.display())))?;
        prune_old_logs(&logs);
        let log_path = logs.join(format!("moto-{port}.log"));
        let log = File::create(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
        let err_log = log.try_clone().map_err(io("duplicating the moto log handle"))?;
        // moto_server's own entry point, behind the launcher that serializes DynamoDB requests.
        let python = server.with_file_name("python3");
        let launcher = write_launcher(&logs, port)?;
        let mut cmd = Command::new(&python);
        cmd.arg(&launcher)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // The launcher exits when this pipe closes: when we stop it, and when this process
            // dies without stopping it (even by SIGKILL), so no moto outlives its emulator.
            .stdin(Stdio::piped())
            .env("HANDOFF_EXIT_WITH_PARENT", "1")
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log));
        // Otherwise MOTO_ENABLE_RECORDING etc. are inherited from our environment.
        if let Some(path) = recording {
            cmd.env("MOTO_ENABLE_RECORDING", "True").env("MOTO_RECORDER_FILEPATH", path);
        }
        let child = cmd.spawn().map_err(io(format!("starting moto_server with {}", python.display())))?;
        let mut me = Self { child, endpoint: format!("http://127.0.0.1:{port}"), log: log_path };
        me.wait_ready().await?;
        if recording.is_some() {
            me.recorder("reset-recording").await?;
            me.recorder("start-recording").await?;
        }
        tracing::info!(endpoint = %me.endpoint, log = %me.log.display(), "moto started");
        Ok(me)
    }

    /// POSTs to moto's request recorder (`start-recording`, `reset-recording`, …).
    async fn recorder(&self, action: &str) -> Result<(), MotoError> {
        let url = format!("{}/moto-api/recorder/{action}", self.endpoint);
        let failed = |e: String| MotoError::Io { action: format!("POST {url}"), source: std::io::Error::other(e) };
        let response = reqwest::Client::new().post(&url).send().await.map_err(|e| failed(e.to_string()))?;
        response.error_for_status().map(|_| ()).map_err(|e| failed(e.to_string()))
    }

    async fn wait_ready(&mut self) -> Result<(), MotoError> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(|e| MotoError::Io {
            action: "building an HTTP client".into(),
            source: std::io::Error::other(e),
        })?;
        let started = Instant::now();
        let url = format!("{}/moto-api/", self.endpoint);
        while started.elapsed() < STARTUP_TIMEOUT {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(MotoError::Exited { status, log: self.log.clone() });
            }
            if client.get(&url).send().await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(MotoError::NotReady {
            endpoint: self.endpoint.clone(),
            seconds: STARTUP_TIMEOUT.as_secs(),
            log: self.log.clone(),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Stops moto (its stdin closed, then SIGKILL after a grace period).
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // Closing the launcher's stdin asks it to exit (see `start`).
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}
