//! Debian's Chromium and ChromeDriver for the console's browser test, installed with
//! `apt-get` when missing (as the harness installs moto into the venv), and a ChromeDriver
//! started on a free loopback port for one test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Installs `chromium` and `chromium-driver` unless both are there (as root, or with
/// password-less sudo); one install at a time across test processes.
pub fn ensure_chromium() -> Result<(), String> {
    let present = || Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    let lock_path = std::env::temp_dir().join("handoff-chromium-install.lock");
    crate::install_once(&lock_path, present, || {
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
        let apt = |args: &[&str]| {
            let mut command = if root { Command::new("apt-get") } else { Command::new("sudo") };
            if !root {
                command.args(["-n", "apt-get"]);
            }
            command.args(args).env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null()).output()
        };
        eprintln!("handoff-e2e: installing Debian's chromium and chromium-driver (first run only)");
        let install = ["install", "-y", "-q", "chromium", "chromium-driver"];
        let first = apt(&install).map_err(|e| format!("running apt-get: {e}"))?;
        if !first.status.success() {
            // A fresh machine may not have read the package lists yet.
            apt(&["update", "-q"]).map_err(|e| format!("running apt-get update: {e}"))?;
            let second = apt(&install).map_err(|e| format!("running apt-get: {e}"))?;
            if !second.status.success() {
                let stderr = String::from_utf8_lossy(&second.stderr);
                return Err(format!("apt-get install chromium chromium-driver failed: {stderr}"));
            }
        }
        Ok(())
    })?;
    present().then_some(()).ok_or_else(|| "chromium or chromedriver still missing after apt-get install".to_string())
}

/// A ChromeDriver process for one test, stopped when dropped.
pub struct ChromeDriver {
    pub url: String,
    child: Child,
}

impl ChromeDriver {
    pub fn start() -> Result<Self, String> {
        ensure_chromium()?;
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting chromedriver: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("chromedriver did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self { url: format!("http://127.0.0.1:{port}"), child })
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the browser test writes its screenshots: `<target>/console-screenshots`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    let dir = target.join("console-screenshots");
    let _ = std::fs::create_dir_all(&dir);
    dir
}
