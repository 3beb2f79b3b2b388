//! The suite's short chaos run: a few hundred exchanges of every pipeline of the mix, a few
//! SIGKILLs of the gateway, every fault type of the proxy and the targets; then nothing may be
//! lost, applied twice or left stuck (see `handoff_e2e::chaos`). The bench runs the same with
//! 10,000 exchanges.

use handoff_e2e::chaos::{self, ChaosConfig};
use std::time::Duration;

/// `HANDOFF_CHAOS_SEED` replays a run.
fn seed() -> u64 {
    std::env::var("HANDOFF_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261207)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_chaos_run_loses_nothing_applies_nothing_twice_and_leaves_nothing_stuck() {
    let work_dir = handoff_emulator::moto::state_dir().join(format!("chaos-test-{}", std::process::id()));
    let mut config = ChaosConfig::new(240, seed(), work_dir.clone(), env!("CARGO_BIN_EXE_chaos").into());
    config.rate_per_second = 8.0;
    config.kills = 3;
    // Higher rates than the bench's, so that a short run meets every fault type.
    config.proxy_faults.request_fault_rate = 0.03;
    config.proxy_faults.duplicate_delivery_rate = 0.05;
    config.target_fault_rate = 0.10;
    config.callback_timeout_seconds = 15;
    config.visibility_cap_seconds = 15;
    config.drain = Duration::from_secs(240);
    let report = chaos::run(config).await.expect("the chaos run ran");
    println!("{report}");
    assert!(report.passed(), "{report}\n(gateway log: {})", work_dir.join("gateway.log").display());
    assert_eq!(report.kills.len(), 3, "{report}");
    for fault in [
        "dynamodb: ProvisionedThroughputExceededException",
        "dynamodb: ThrottlingException",
        "sqs: RequestThrottled",
        "dynamodb: 5xx",
        "sqs: reset",
        "dynamodb: executed, answer lost",
        "sqs: delete lost (duplicate delivery)",
        "target: 503",
        "target: slow answer",
        "target: reset",
        "target: applied, answer lost",
    ] {
        assert!(report.faults.get(fault).copied().unwrap_or(0) > 0, "no {fault} injected: {report}");
    }
    assert!(report.callbacks.get("late").copied().unwrap_or(0) > 0, "{report}");
    assert!(report.callbacks.get("twice").copied().unwrap_or(0) > 0, "{report}");
    assert!(report.callbacks.get("never").copied().unwrap_or(0) > 0, "{report}");
    assert!(report.exchanges > report.accepted, "scheduled and sub-exchanges ran too: {report}");
    let _ = std::fs::remove_dir_all(&work_dir);
}
