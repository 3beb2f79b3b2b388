//! One backoff for retrying the unprocessed entries of DynamoDB batch requests.

use std::time::Duration;

/// Waits between retries of unprocessed batch entries: 50 ms doubling up to 2 s, 8 rounds.
pub(crate) struct Backoff {
    delay: Duration,
    rounds: u32,
}

impl Backoff {
    const MAX_ROUNDS: u32 = 8;
    pub(crate) fn new() -> Self {
        Self { delay: Duration::from_millis(50), rounds: 0 }
    }
    /// Sleeps before the next round; false once the rounds are used up.
    pub(crate) async fn wait(&mut self) -> bool {
        self.rounds += 1;
        if self.rounds > Self::MAX_ROUNDS {
            return false;
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(2));
        true
    }
}
