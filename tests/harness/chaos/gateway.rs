//! The gateway as its own process (the emulator's functions, pollers, scheduler and HTTP API),
//! so that it can be killed with SIGKILL and started again against the same AWS emulator:
//! what a crashed Lambda host is, with the state left where it was.

use anyhow::Context as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start the gateway process: `executable gateway --port … --aws-endpoint … --template
/// … --claim-lease-seconds … --state-dir …` (the chaos binary's `gateway` mode, [`serve`]).
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    pub executable: PathBuf,
    pub port: u16,
    pub aws_endpoint: String,
    pub template: PathBuf,
    /// The claim lease of every function: the template's visibility timeouts, as capped.
    pub claim_lease_seconds: u64,
    /// SQS pollers per event source (Lambda scales its pollers out with the backlog; the
    /// emulator keeps a fixed number).
    pub pollers_per_source: usize,
    pub state_dir: PathBuf,
    /// Standard error of every start, appended.
    pub log: PathBuf,
}

pub struct GatewayProcess {
    spec: GatewaySpec,
    child: Option<Child>,
    pub starts: u32,
}

impl GatewayProcess {
    pub fn new(spec: GatewaySpec) -> Self {
        Self { spec, child: None, starts: 0 }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.spec.port)
    }

    /// Starts the process and waits until its API answers.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .with_context(|| format!("opening {}", self.spec.log.display()))?;
        let child = Command::new(&self.spec.executable)
            .arg("gateway")
            .arg("--port")
            .arg(self.spec.port.to_string())
            .arg("--aws-endpoint")
            .arg(&self.spec.aws_endpoint)
            .arg("--template")
            .arg(&self.spec.template)
            .arg("--claim-lease-seconds")
            .arg(self.spec.claim_lease_seconds.to_string())
            .arg("--pollers")
            .arg(self.spec.pollers_per_source.to_string())
            .arg("--state-dir")
            .arg(&self.spec.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.spec.executable.display()))?;
        self.child = Some(child);
        self.starts += 1;
        let probe = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!("the gateway exited at start ({status}); see {}", self.spec.log.display());
                }
            }
            if let Ok(r) = probe.get(format!("{}/openapi.json", self.url())).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "the gateway did not answer within 120 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush, in-flight invocations die where they are.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("SIGKILL to the gateway")?;
            child.wait().context("reaping the gateway")?;
        }
        Ok(())
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The `gateway` mode of the chaos binary: the emulator on `port` against `aws_endpoint`,
/// until killed.
pub async fn serve(
    port: u16,
    aws_endpoint: String,
    template: PathBuf,
    claim_lease_seconds: u64,
    pollers_per_source: usize,
    state_dir: PathBuf,
) -> anyhow::Result<()> {
    let mut options = handoff_emulator::EmulatorOptions {
        port,
        aws_endpoint: Some(aws_endpoint),
        template_path: template,
        state_dir,
        ..handoff_emulator::EmulatorOptions::default()
    }
    .polling_like_lambda(pollers_per_source);
    options.env_overrides.insert("HANDOFF_CLAIM_LEASE_SECONDS".into(), claim_lease_seconds.to_string());
    // The jobs stop sweeping at half their (capped) function timeout and leave the rest to
    // their next run, as they would at half the template's.
    options.env_overrides.insert("HANDOFF_JOB_BUDGET_SECONDS".into(), (claim_lease_seconds / 2).max(1).to_string());
    // Failures re-driven every minute, so that the drain sees them through.
    options.parameter_overrides.insert("ErrorJobEveryMinutes".into(), "1".into());
    let _emulator = handoff_emulator::start(options).await.context("starting the emulator")?;
    std::future::pending::<()>().await;
    Ok(())
}
