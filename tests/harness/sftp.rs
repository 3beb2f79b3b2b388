//! A real SFTP server on loopback for the end-to-end tests: `asyncssh` (PyPI) in the
//! project's virtual environment, running `sftp_server.py` with password login, chrooted to
//! a fresh temporary directory, so a test can read back exactly what arrived.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct SftpServer {
    pub port: u16,
    /// The host key's OpenSSH fingerprint (`SHA256:...`).
    pub fingerprint: String,
    pub username: String,
    pub password: String,
    /// The server's `/`.
    pub root: PathBuf,
    child: Child,
}

impl SftpServer {
    /// Starts a server whose root holds an empty `/in` directory.
    pub async fn start() -> Self {
        tokio::task::spawn_blocking(Self::start_blocking).await.expect("sftp server start task")
    }

    fn start_blocking() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let python =
            ensure_python_package("asyncssh", "asyncssh==2.*").unwrap_or_else(|e| panic!("installing asyncssh: {e}"));
        let root = std::env::temp_dir().join(format!(
            "handoff-sftp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("in")).expect("create sftp root");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness").join("sftp_server.py");
        let (username, password) = ("handoff".to_string(), format!("pw-{}", uuid_like()));
        let mut child = Command::new(python)
            .arg(&script)
            .arg(&root)
            .arg(&username)
            .arg(&password)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sftp_server.py");
        let stdout = child.stdout.take().expect("sftp server stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read sftp server banner");
        let mut words = line.split_whitespace();
        let (port, fingerprint) = match (words.next(), words.next(), words.next(), words.next()) {
            (Some("PORT"), Some(port), Some("FINGERPRINT"), Some(fp)) => (port.parse().expect("port"), fp.to_string()),
            _ => panic!("sftp server did not start: {line:?}"),
        };
        Self { port, fingerprint, username, password, root, child }
    }

    /// The content of a file on the server, by its SFTP path (`/in/x.json`).
    pub fn file(&self, remote: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(remote.trim_start_matches('/'))).ok()
    }

    /// The names in a directory on the server, sorted.
    pub fn list(&self, remote: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join(remote.trim_start_matches('/')))
            .map(|entries| {
                entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The secret JSON a destination's `secretRef` should hold to log in.
    pub fn secret_json(&self) -> String {
        serde_json::json!({"username": self.username, "password": self.password}).to_string()
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn uuid_like() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos)
}

/// Makes sure the project's virtual environment (the one moto lives in) can import
/// `module`, installing `requirement` with its pip under the same lock the moto install
/// takes. Returns the venv's python.
pub fn ensure_python_package(module: &str, requirement: &str) -> Result<PathBuf, String> {
    handoff_emulator::moto::ensure_installed().map_err(|e| e.to_string())?;
    let venv = handoff_emulator::moto::venv_dir();
    let python = venv.join("bin").join("python");
    let importable = || {
        Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let parent = venv.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let lock_path = parent.join(format!("{}.lock", venv.file_name().and_then(|n| n.to_str()).unwrap_or("venv")));
    crate::install_once(&lock_path, importable, || {
        let output = Command::new(venv.join("bin").join("pip"))
            .args(["install", "--disable-pip-version-check", "--quiet", requirement])
            .output()
            .map_err(|e| format!("running pip: {e}"))?;
        if !output.status.success() {
            return Err(format!("pip install {requirement} failed: {}", String::from_utf8_lossy(&output.stderr)));
        }
        Ok(())
    })?;
    Ok(python)
}
