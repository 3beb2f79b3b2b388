//! Fires EventBridge Scheduler schedules, which the AWS emulator stores but never runs.
//!
//! Schedules come from two places — the template's `ScheduleV2` events and those the api
//! function creates for integrations at run time — so the emulator reads them back from
//! the AWS emulator every tick instead of from the template. Only what changed
//! (`LastModificationDate`) is fetched in full.

use crate::clock::EmulatorClock;
use crate::functions::Function;
use aws_sdk_scheduler::types::ScheduleState;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use handoff_core::schedule::{parse_timezone, ScheduleExpression};
use handoff_ports::Clock;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a known schedule will fire next.
#[derive(Debug, Clone)]
pub struct ScheduleEntry {
    pub last_modified: DateTime<Utc>,
    pub expression: Option<ScheduleExpression>,
    pub timezone: Tz,
    /// Rate schedules count from here (the schedule's last modification).
    pub anchor: DateTime<Utc>,
    pub target_arn: String,
    pub input: Option<String>,
    pub enabled: bool,
    pub end: Option<DateTime<Utc>>,
    pub delete_after_completion: bool,
    pub next: Option<DateTime<Utc>>,
}

impl ScheduleEntry {
    /// First fire time: the first occurrence after the schedule was created/changed, but
    /// never before the emulator started (no backlog of missed runs) nor before StartDate.
    pub fn first_fire(&self, started: DateTime<Utc>, start: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let expr = self.expression.as_ref()?;
        let mut after = self.last_modified.max(started);
        if let Some(start) = start {
            after = after.max(start - chrono::Duration::milliseconds(1));
        }
        self.bounded(expr.next_after(after, self.anchor, self.timezone))
    }

    /// The occurrence after one that fired at `fired` (skipping any missed while busy).
    pub fn after_fire(&self, fired: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let expr = self.expression.as_ref()?;
        self.bounded(expr.next_after(fired.max(now), self.anchor, self.timezone))
    }

    fn bounded(&self, t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        t.filter(|t| self.end.is_none_or(|end| *t <= end))
    }
}

/// A schedule's own dates (StartDate, EndDate) are on the schedule's time: not translated.
fn to_utc(t: &aws_sdk_scheduler::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// The scheduler loop.
pub struct Scheduler {
    pub client: aws_sdk_scheduler::Client,
    /// Function ARN → function.
    pub functions: HashMap<String, Arc<Function>>,
    pub interval: Duration,
    pub started: DateTime<Utc>,
    /// The emulator's clock: schedules fire on its time, and moto's timestamps are
    /// translated to it.
    pub clock: Arc<EmulatorClock>,
    entries: HashMap<(String, String), ScheduleEntry>,
}

impl Scheduler {
    pub fn new(
        client: aws_sdk_scheduler::Client,
        functions: HashMap<String, Arc<Function>>,
        interval: Duration,
        clock: Arc<EmulatorClock>,
    ) -> Self {
        Self { client, functions, interval, started: clock.now(), clock, entries: HashMap::new() }
    }

    /// A moto timestamp on the emulator's clock.
    fn emulated(&self, t: &aws_sdk_scheduler::primitives::DateTime) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(t.secs(), t.subsec_nanos()).map(|real| self.clock.emulated(real))
    }

    /// Ticks until `cancel`; invocations run on `tracker` so shutdown can wait for them.
    pub async fn run(mut self, cancel: CancellationToken, tracker: TaskTracker) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = cancel.cancelled() => break,
            }
            if let Err(e) = self.tick(&tracker).await {
                if !cancel.is_cancelled() {
                    tracing::warn!(error = %e, "scheduler tick failed");
                }
            }
        }
    }

    async fn tick(&mut self, tracker: &TaskTracker) -> Result<(), String> {
        let err = |e: &dyn std::error::Error| aws_sdk_scheduler::error::DisplayErrorContext(e).to_string();
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.client.list_schedules().set_next_token(token.clone()).send().await.map_err(|e| err(&e))?;
            for s in page.schedules() {
                let (Some(name), Some(group)) = (s.name(), s.group_name()) else {
                    continue;
                };
                let key = (group.to_string(), name.to_string());
                let modified = s.last_modification_date().and_then(|t| self.emulated(t));
                let known = self.entries.get(&key).map(|e| Some(e.last_modified) == modified).unwrap_or(false);
                if !known {
                    match self.load(group, name).await {
                        Ok(Some(entry)) => {
                            self.entries.insert(key.clone(), entry);
                        }
                        Ok(None) => {
                            self.entries.remove(&key);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(schedule = name, group, error = %e, "cannot read schedule");
                            continue;
                        }
                    }
                }
                seen.push(key);
            }
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        self.entries.retain(|k, _| seen.contains(k));

        // Read after the changes are loaded: a schedule changed before a clock move is
        // replaced before the move can fire its old time.
        let now = self.clock.now();
        let mut completed = Vec::new();
        for (key, entry) in self.entries.iter_mut() {
            let Some(due) = entry.next.filter(|t| *t <= now && entry.enabled) else {
                continue;
            };
            entry.next = entry.after_fire(due, now);
            match self.functions.get(&entry.target_arn).or_else(|| {
                // A qualified ARN (…:function:name:alias) or a bare name also target the function.
                self.functions.values().find(|f| {
                    entry.target_arn == f.spec.name || entry.target_arn.starts_with(&format!("{}:", f.spec.arn))
                })
            }) {
                Some(function) => {
                    let input = match entry.input.as_deref() {
                        None | Some("") => Value::Object(Default::default()),
                        Some(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())),
                    };
                    let function = function.clone();
                    let (group, name) = key.clone();
                    tracing::info!(schedule = %name, group = %group, due = %due, function = %function.spec.logical_id, "schedule fired");
                    tracker.spawn(async move {
                        if let Err(e) = function.invoke(input).await {
                            tracing::warn!(schedule = %name, group = %group, error = %e, "scheduled invocation failed");
                        }
                    });
                }
                None => {
                    tracing::warn!(schedule = %key.1, target = %entry.target_arn, "schedule target is not a function of this stack")
                }
            }
            if entry.next.is_none() && entry.delete_after_completion {
                completed.push(key.clone());
            }
        }
        for (group, name) in completed {
            if let Err(e) = self.client.delete_schedule().group_name(&group).name(&name).send().await {
                tracing::warn!(schedule = %name, error = %err(&e), "cannot delete completed schedule");
            }
        }
        self.clock.tick_finished(now);
        Ok(())
    }

    async fn load(&self, group: &str, name: &str) -> Result<Option<ScheduleEntry>, String> {
        let s = match self.client.get_schedule().group_name(group).name(name).send().await {
            Ok(s) => s,
            Err(e) => {
                use aws_sdk_scheduler::error::ProvideErrorMetadata;
                if e.code() == Some("ResourceNotFoundException") {
                    return Ok(None);
                }
                return Err(aws_sdk_scheduler::error::DisplayErrorContext(&e).to_string());
            }
        };
        let last_modified = s
            .last_modification_date()
            .or(s.creation_date())
            .and_then(|t| self.emulated(t))
            .unwrap_or_else(|| self.clock.now());
        let expression = match s.schedule_expression().map(ScheduleExpression::parse) {
            Some(Ok(e)) => Some(e),
            Some(Err(e)) => {
                tracing::warn!(schedule = name, group, error = %e, "schedule expression is invalid; it will never fire");
                None
            }
            None => None,
        };
        let timezone = match parse_timezone(s.schedule_expression_timezone().unwrap_or("UTC")) {
            Ok(tz) => tz,
            Err(e) => {
                tracing::warn!(schedule = name, group, error = %e, "schedule time zone is invalid; using UTC");
                Tz::UTC
            }
        };
        let mut entry = ScheduleEntry {
            last_modified,
            expression,
            timezone,
            anchor: last_modified,
            target_arn: s.target().map(|t| t.arn().to_string()).unwrap_or_default(),
            input: s.target().and_then(|t| t.input()).map(str::to_string),
            enabled: s.state().is_none_or(|st| *st == ScheduleState::Enabled),
            end: s.end_date().and_then(to_utc),
            delete_after_completion: s.action_after_completion().is_some_and(|a| a.as_str() == "DELETE"),
            next: None,
        };
        entry.next = entry.first_fire(self.started, s.start_date().and_then(to_utc));
        tracing::info!(schedule = name, group, next = ?entry.next, "schedule loaded");
        Ok(Some(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    fn entry(expr: &str, modified: &str) -> ScheduleEntry {
        ScheduleEntry {
            last_modified: t(modified),
            expression: Some(ScheduleExpression::parse(expr).expect("expr")),
            timezone: Tz::UTC,
            anchor: t(modified),
            target_arn: "arn".into(),
            input: None,
            enabled: true,
            end: None,
            delete_after_completion: false,
            next: None,
        }
    }

    #[test]
    fn rate_fires_one_period_after_creation() {
        let e = entry("rate(1 minute)", "2026-01-01T10:00:10Z");
        assert_eq!(e.first_fire(t("2026-01-01T09:00:00Z"), None), Some(t("2026-01-01T10:01:10Z")));
        assert_eq!(e.after_fire(t("2026-01-01T10:01:10Z"), t("2026-01-01T10:01:11Z")), Some(t("2026-01-01T10:02:10Z")));
    }

    #[test]
    fn no_backlog_for_schedules_older_than_the_emulator() {
        let e = entry("rate(1 minute)", "2026-01-01T10:00:00Z");
        assert_eq!(e.first_fire(t("2026-01-01T12:00:30Z"), None), Some(t("2026-01-01T12:01:00Z")));
    }

    #[test]
    fn end_date_stops_the_schedule() {
        let mut e = entry("rate(1 minute)", "2026-01-01T10:00:00Z");
        e.end = Some(t("2026-01-01T10:01:30Z"));
        assert_eq!(e.after_fire(t("2026-01-01T10:01:00Z"), t("2026-01-01T10:01:00Z")), None);
    }

    #[test]
    fn start_date_delays_the_first_fire() {
        let e = entry("cron(0 * * * ? *)", "2026-01-01T10:00:00Z");
        assert_eq!(
            e.first_fire(t("2026-01-01T09:00:00Z"), Some(t("2026-01-01T13:00:00Z"))),
            Some(t("2026-01-01T13:00:00Z"))
        );
    }
}
