//! Sends a job's heartbeat pings ([`handoff_core::heartbeat`]). A ping that cannot be
//! delivered is retried briefly and then logged — never a reason to fail the job it reports
//! on — and its URL is logged only redacted.

use crate::outbound::OutboundClient;
use handoff_core::heartbeat::{HeartbeatUrl, Ping};
use std::time::Duration;

/// How often one ping is tried, and how long each try may take.
const PING_ATTEMPTS: u32 = 3;
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const PING_BACKOFF: Duration = Duration::from_millis(200);

/// Sends `ping` to `url` (if a heartbeat is configured).
pub async fn ping(http: &OutboundClient, url: Option<&HeartbeatUrl>, ping: Ping) {
    let Some(url) = url else { return };
    let target = url.url_for(&ping);
    let body = ping.body().to_string();
    for attempt in 1..=PING_ATTEMPTS {
        // Content-Length is known: reqwest sends it for a byte body.
        let sent = http
            .http
            .post(&target)
            .timeout(PING_TIMEOUT)
            .header("content-type", "text/plain; charset=utf-8")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => {
                tracing::warn!(heartbeat = %url.redacted(), ping = ping.name(), status = response.status().as_u16(), attempt, "heartbeat ping refused")
            }
            Err(e) => {
                // The error may name the URL: only its kind is logged.
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                tracing::warn!(heartbeat = %url.redacted(), ping = ping.name(), error = kind, attempt, "heartbeat ping not sent")
            }
        }
        tokio::time::sleep(PING_BACKOFF * attempt).await;
    }
}
