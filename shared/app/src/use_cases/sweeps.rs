//! The two scheduled jobs of a deployment (as in the Avni operations guide): the regular job
//! sweeps durable timers whose time has come within reach of a delayed message and starts
//! again exchanges left `New` (their creator stopped before handing them off) and handoffs
//! left held at an endpoint that runs again; the
//! error-processing job re-processes resolved errors ([`crate::use_cases::errors`]) and
//! re-drives exchanges whose failure was a retryable system error.
//!
//! Each sweep works within the run's time budget ([`Sweeps::until`]): after its first page
//! or item it checks the clock before the next, and stops there, leaving the rest to the
//! next run. No cursor is kept: what a sweep handles mostly leaves its list (a timer taken
//! off the index, a held handoff sent on, a failure recovered), so the next run starts
//! where this one stopped, earliest first on the timer index. Two lists keep what was
//! handled at their head: an exchange started again stays `New` until its first worker
//! runs, and a failure not eligible for re-driving stays `Failed`. With more of those than
//! one budget covers, later runs handle the same head again and the tail waits (a duplicate
//! start is harmless; the wait is the limit).

use crate::context::AppContext;
use crate::use_cases::endpoints::release_held;
use crate::use_cases::errors::{reprocess_resolved, Reprocessed};
use crate::use_cases::invoke::{start_again, Starting};
use crate::use_cases::recover::{recover_exchange, Recovering};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use handoff_core::exchange::ExchangeStatus;
use handoff_core::ids::{ExchangeId, IntegrationCode};
use handoff_core::machine::delay_until;
use handoff_core::notice::redriven_automatically;
use handoff_core::recovery::ResumeFrom;
use handoff_ports::{ErrorStore, ExchangeFilter, PortError, TimerStore};

/// Timers due within this many periods of the regular job are handed to SQS now: the next
/// run may come a little late, and a timer must never wait for the run after it.
const SWEEP_PERIODS_AHEAD: i32 = 2;

/// How far ahead a sweep hands timers on when the regular job runs every `every`.
pub fn sweep_lookahead(every: std::time::Duration) -> ChronoDuration {
    let every = ChronoDuration::from_std(every).unwrap_or(ChronoDuration::minutes(1)).max(ChronoDuration::minutes(1));
    every * SWEEP_PERIODS_AHEAD
}
/// Who asked, in the log of an exchange the error-processing job recovers.
const AUTO_RECOVERY: &str = "the error-processing job (a retryable system error)";
const PAGE: u32 = 100;
/// An exchange still `New` this long after its creation was never handed off. (Creation and
/// the first handoff are one API call apart; a live creator is long done by then.)
const UNSTARTED_AFTER_SECONDS: i64 = 120;
/// A handoff held at a running endpoint this long was missed by an interrupted release.
const STRANDED_AFTER_SECONDS: i64 = 60;

/// The ports the jobs use: the timer index, and what starting and recovering use.
pub struct Sweeps<'a> {
    pub timers: &'a dyn TimerStore,
    pub errors: &'a dyn ErrorStore,
    pub starting: Starting<'a>,
    pub recovering: Recovering<'a>,
    /// How often the error-processing job re-drives one exchange at most.
    pub auto_recovery_limit: u32,
    /// How far ahead [`Self::sweep_timers`] hands timers on ([`sweep_lookahead`]).
    pub lookahead: ChronoDuration,
    /// When the run's budget is spent: a sweep stops at the first check past it (each
    /// handles at least one page or item, so every run makes progress). `None`: no budget.
    pub until: Option<DateTime<Utc>>,
}

/// What one sweep did, and whether it reached the end of its list within the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub handled: usize,
    /// False when it stopped at the budget with more left for the next run.
    pub complete: bool,
}

/// What one error-processing run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    pub recovered: Vec<ExchangeId>,
    /// Failed exchanges it left for an operator (not a retryable system error, or re-driven
    /// as often as allowed).
    pub left: usize,
    /// False when it stopped at the budget before the end of the Failed list.
    pub complete: bool,
}

impl<'a> Sweeps<'a> {
    pub fn of(ctx: &'a AppContext, regular_every: std::time::Duration) -> Self {
        Self {
            timers: ctx.ports.exchanges.as_ref(),
            errors: ctx.ports.exchanges.as_ref(),
            starting: Starting::of(ctx),
            recovering: Recovering::of(ctx),
            auto_recovery_limit: ctx.settings.auto_recovery_limit,
            lookahead: sweep_lookahead(regular_every),
            until: None,
        }
    }

    /// The sweeps of a run that may take `budget` from now.
    pub fn within(self, budget: std::time::Duration) -> Self {
        let budget = ChronoDuration::from_std(budget).unwrap_or(ChronoDuration::MAX);
        let until = self.starting.effects.clock.now().checked_add_signed(budget);
        Self { until, ..self }
    }

    fn out_of_time(&self) -> bool {
        self.until.is_some_and(|until| self.starting.effects.clock.now() >= until)
    }

    /// Sends every stored timer due within the lookahead, delayed to its due time, earliest
    /// first. Sent first, taken off the index after: a crash in between sends a timer twice,
    /// which its handler tolerates, rather than never.
    pub async fn sweep_timers(&self) -> Result<Swept, PortError> {
        let mut sent = 0;
        loop {
            let now = self.starting.effects.clock.now();
            let due = self.timers.due_timers(now + self.lookahead, PAGE).await?;
            let count = due.len();
            for timer in due {
                self.starting.effects.queue.send_timer(&timer, delay_until(now, timer.due)).await?;
                if self.timers.take_timer(&timer).await? {
                    sent += 1;
                }
            }
            if count < PAGE as usize {
                return Ok(Swept { handled: sent, complete: true });
            }
            if self.out_of_time() {
                return Ok(Swept { handled: sent, complete: false });
            }
        }
    }

    /// Sends on handoffs still held at an endpoint that runs (its release was interrupted:
    /// the endpoint was enabled, then the caller stopped before sending them), once they
    /// are older than [`STRANDED_AFTER_SECONDS`] so a release under way finishes first.
    pub async fn release_stranded(&self) -> Result<Swept, PortError> {
        let mut codes: Vec<IntegrationCode> =
            self.starting.integrations.all().await?.into_iter().map(|v| v.code).collect();
        codes.sort();
        codes.dedup();
        let held_before = self.starting.effects.clock.now() - ChronoDuration::seconds(STRANDED_AFTER_SECONDS);
        let mut released = 0;
        for (i, code) in codes.into_iter().enumerate() {
            if i > 0 && self.out_of_time() {
                return Ok(Swept { handled: released, complete: false });
            }
            let endpoint = self.starting.endpoints.endpoint(&code).await?;
            if endpoint.is_some_and(|e| e.status.runs()) {
                let queue = self.starting.effects.queue;
                released += release_held(self.starting.endpoints, queue, &code, Some(held_before)).await?;
            }
        }
        Ok(Swept { handled: released, complete: true })
    }

    /// Starts again every exchange left `New` for longer than [`UNSTARTED_AFTER_SECONDS`].
    pub async fn start_unstarted(&self) -> Result<Swept, PortError> {
        let cutoff = self.starting.effects.clock.now() - ChronoDuration::seconds(UNSTARTED_AFTER_SECONDS);
        let filter = ExchangeFilter { status: Some(ExchangeStatus::New), integration_code: None, parent: None };
        let (mut started, mut tried) = (0, 0);
        let mut cursor: Option<String> = None;
        loop {
            let page = self.starting.effects.exchanges.list(&filter, PAGE, cursor.as_deref()).await?;
            for exchange in page.items.iter().filter(|e| e.created_at < cutoff) {
                if tried > 0 && self.out_of_time() {
                    return Ok(Swept { handled: started, complete: false });
                }
                tried += 1;
                match start_again(&self.starting, exchange).await {
                    Ok(()) => {
                        tracing::warn!(exchangeId = %exchange.exchange_id, createdAt = %exchange.created_at, "exchange was never handed off; started again");
                        started += 1;
                    }
                    Err(e) => {
                        tracing::error!(exchangeId = %exchange.exchange_id, error = %e, "an exchange left New could not be started again")
                    }
                }
            }
            cursor = page.next_cursor;
            if cursor.is_none() {
                return Ok(Swept { handled: started, complete: true });
            }
        }
    }

    /// The regular job's three sweeps, side by side within the one budget (one sweep's
    /// backlog does not starve the others).
    pub async fn regular(&self) -> Result<(Swept, Swept, Swept), PortError> {
        let (timers, unstarted, stranded) =
            futures::join!(self.sweep_timers(), self.start_unstarted(), self.release_stranded());
        Ok((timers?, unstarted?, stranded?))
    }

    /// Runs again what failed because of an error someone has since resolved.
    pub async fn reprocess_resolved(
        &self,
        integration_code: Option<IntegrationCode>,
    ) -> Result<Reprocessed, PortError> {
        reprocess_resolved(&self.recovering, self.errors, integration_code).await
    }

    /// Recovers Failed exchanges whose error was a retryable system error, a few times each.
    pub async fn redrive_failures(&self, integration_code: Option<IntegrationCode>) -> Result<Redriven, PortError> {
        let mut recovered = Vec::new();
        let mut skipped = 0;
        let mut cursor: Option<String> = None;
        let filter = ExchangeFilter { status: Some(ExchangeStatus::Failed), integration_code, parent: None };
        let (mut complete, mut tried) = (true, 0);
        'pages: loop {
            let page = self.starting.effects.exchanges.list(&filter, PAGE, cursor.as_deref()).await?;
            for exchange in page.items {
                if tried > 0 && self.out_of_time() {
                    complete = false;
                    break 'pages;
                }
                tried += 1;
                let eligible = exchange
                    .error
                    .as_ref()
                    .is_some_and(|e| redriven_automatically(e, exchange.recoveries, self.auto_recovery_limit));
                if !eligible {
                    skipped += 1;
                    continue;
                }
                match recover_exchange(
                    &self.recovering,
                    &exchange.exchange_id,
                    None,
                    ResumeFrom::FailedStep,
                    AUTO_RECOVERY,
                )
                .await
                {
                    Ok(_) => recovered.push(exchange.exchange_id),
                    Err(e) => {
                        tracing::warn!(exchangeId = %exchange.exchange_id, error = %e, "automatic recovery failed")
                    }
                }
            }
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        Ok(Redriven { recovered, left: skipped, complete })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_sweep_looks_two_periods_of_the_regular_job_ahead_and_never_less_than_two_minutes() {
        assert_eq!(sweep_lookahead(Duration::from_secs(60)), ChronoDuration::minutes(2));
        assert_eq!(sweep_lookahead(Duration::from_secs(6 * 60)), ChronoDuration::minutes(12));
        assert_eq!(sweep_lookahead(Duration::from_secs(5)), ChronoDuration::minutes(2));
    }
}
