//! The emulator's clock: real time plus an offset that only moves forward, so schedule and
//! timer tests jump to 18:00 tomorrow instead of waiting for it. Every function of the
//! stack and the scheduler read it; the route `POST /_emulator/clock` (emulator only, not
//! in the template) moves it.
//!
//! What it does not move: JWT expiry (the authorizer checks tokens against real time, as a
//! token minted now must keep working), messages SQS already holds with a delay (they
//! arrive on real time, at most the 15 minutes SQS allows) and moto's own timestamps —
//! those the scheduler translates with [`EmulatorClock::emulated`].

use chrono::{DateTime, Duration, Utc};
use handoff_ports::Clock;
use std::sync::Mutex;
use tokio::sync::watch;

/// The longest single move, so a typo cannot send the stack into the next century.
pub const MAX_ADVANCE: Duration = Duration::days(400);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockError {
    #[error("the clock only moves forward: {requested} is before the emulator's now ({now})")]
    Backwards { requested: DateTime<Utc>, now: DateTime<Utc> },
    #[error("a move of more than {} days at once is refused", MAX_ADVANCE.num_days())]
    TooFar,
}

/// Real time plus an offset, with the history of its moves.
pub struct EmulatorClock {
    /// (real time of the move, offset from then on), oldest first; starts with (-∞, 0).
    moves: Mutex<Vec<(DateTime<Utc>, Duration)>>,
    /// The emulated time at which the scheduler last finished a tick.
    ticked: watch::Sender<DateTime<Utc>>,
}

impl std::fmt::Debug for EmulatorClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorClock").field("offset", &self.offset()).finish()
    }
}

impl Default for EmulatorClock {
    fn default() -> Self {
        Self {
            moves: Mutex::new(vec![(DateTime::<Utc>::MIN_UTC, Duration::zero())]),
            ticked: watch::channel(DateTime::<Utc>::MIN_UTC).0,
        }
    }
}

impl EmulatorClock {
    /// How far ahead of real time the emulator is.
    pub fn offset(&self) -> Duration {
        let moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        moves.last().map_or(Duration::zero(), |(_, o)| *o)
    }

    /// The emulated time of a real instant (e.g. a timestamp moto recorded): real time plus
    /// the offset that was in effect then, so a schedule changed before a move keeps the
    /// time it was changed at.
    pub fn emulated(&self, real: DateTime<Utc>) -> DateTime<Utc> {
        let moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        let offset = moves.iter().rev().find(|(at, _)| *at <= real).map_or(Duration::zero(), |(_, o)| *o);
        real + offset
    }

    /// Moves the clock forward to `to`; refuses to go back or to jump more than [`MAX_ADVANCE`].
    pub fn advance_to(&self, to: DateTime<Utc>) -> Result<DateTime<Utc>, ClockError> {
        let mut moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        let real = Utc::now();
        let offset = moves.last().map_or(Duration::zero(), |(_, o)| *o);
        let now = real + offset;
        if to < now {
            return Err(ClockError::Backwards { requested: to, now });
        }
        if to - now > MAX_ADVANCE {
            return Err(ClockError::TooFar);
        }
        moves.push((real, to - real));
        Ok(to)
    }

    /// Moves the clock forward by `by`.
    pub fn advance_by(&self, by: Duration) -> Result<DateTime<Utc>, ClockError> {
        if by < Duration::zero() {
            return Err(ClockError::Backwards { requested: self.now() + by, now: self.now() });
        }
        if by > MAX_ADVANCE {
            return Err(ClockError::TooFar);
        }
        self.advance_to(self.now() + by)
    }

    /// The scheduler says it finished a tick at emulated time `at`.
    pub fn tick_finished(&self, at: DateTime<Utc>) {
        self.ticked.send_if_modified(|last| {
            let later = at > *last;
            if later {
                *last = at;
            }
            later
        });
    }

    /// Waits until the scheduler has finished a tick at or after `at` (so everything due by
    /// then has been fired), or `timeout` passed; says which.
    pub async fn wait_for_tick(&self, at: DateTime<Utc>, timeout: std::time::Duration) -> bool {
        let mut ticks = self.ticked.subscribe();
        let caught_up = tokio::time::timeout(timeout, ticks.wait_for(|t| *t >= at)).await;
        matches!(caught_up, Ok(Ok(_)))
    }
}

impl Clock for EmulatorClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_forward_and_keeps_the_history_of_moves() {
        let clock = EmulatorClock::default();
        let before = Utc::now();
        assert!(clock.now() >= before && clock.now() - before < Duration::seconds(5));
        let target = before + Duration::days(1);
        clock.advance_to(target).expect("forward");
        assert!(clock.now() >= target);
        assert!(clock.offset() > Duration::hours(23));
        // A real instant from before the move keeps the offset of its time (none).
        assert_eq!(clock.emulated(before - Duration::seconds(1)), before - Duration::seconds(1));
        // One after it is shifted.
        let after = Utc::now();
        assert_eq!(clock.emulated(after), after + clock.offset());
    }

    #[test]
    fn refuses_to_go_back_or_too_far() {
        let clock = EmulatorClock::default();
        assert!(matches!(clock.advance_to(Utc::now() - Duration::hours(1)), Err(ClockError::Backwards { .. })));
        assert!(matches!(clock.advance_by(Duration::seconds(-1)), Err(ClockError::Backwards { .. })));
        assert_eq!(clock.advance_by(MAX_ADVANCE + Duration::days(1)), Err(ClockError::TooFar));
        assert_eq!(clock.offset(), Duration::zero());
    }

    #[tokio::test]
    async fn waits_for_a_tick_at_or_after_a_time() {
        let clock = std::sync::Arc::new(EmulatorClock::default());
        let at = clock.now();
        assert!(!clock.wait_for_tick(at, std::time::Duration::from_millis(20)).await);
        let ticking = clock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            ticking.tick_finished(at + Duration::seconds(1));
        });
        assert!(clock.wait_for_tick(at, std::time::Duration::from_secs(5)).await);
    }
}
