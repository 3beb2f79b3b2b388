//! EventBridge Scheduler schedule expressions: `cron(...)`, `rate(...)` and `at(...)`.
//!
//! AWS stores schedules but the local AWS emulator never fires them, and AWS does not
//! validate expressions the way we need for precise API errors; this module is the one
//! place that knows the syntax and the "when is the next occurrence" arithmetic. Pure: no
//! clock, no I/O — callers pass `after` and the schedule's `anchor` (creation time).

use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A parsed EventBridge Scheduler expression.
#[derive(Debug, Clone)]
pub struct ScheduleExpression {
    kind: Kind,
    source: String,
}

#[derive(Debug, Clone)]
enum Kind {
    /// AWS `cron(min hour dom month dow year)`, evaluated in the schedule's time zone.
    Cron(Box<Cron>),
    /// AWS `rate(N unit)`: every `period` counted from the schedule's anchor.
    Rate(Duration),
    /// AWS `at(yyyy-mm-ddThh:mm:ss)`: one occurrence, a wall-clock time in the time zone.
    At(NaiveDateTime),
}

/// Unit of a `rate(...)` expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    Minute,
    Hour,
    Day,
}

impl ScheduleExpression {
    /// Parses an AWS schedule expression, with an error naming the exact problem so the
    /// API can answer 400 with a message an integration engineer can act on.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let trimmed = expr.trim();
        let kind = if let Some(inner) = strip_call(trimmed, "cron") {
            Kind::Cron(Box::new(parse_cron(inner)?))
        } else if let Some(inner) = strip_call(trimmed, "rate") {
            let (n, unit) = parse_rate(inner)?;
            let n = i64::from(n);
            Kind::Rate(match unit {
                RateUnit::Minute => Duration::minutes(n),
                RateUnit::Hour => Duration::hours(n),
                RateUnit::Day => Duration::days(n),
            })
        } else if let Some(inner) = strip_call(trimmed, "at") {
            Kind::At(parse_at(inner)?)
        } else {
            return Err(format!("schedule expression must be cron(...), rate(...) or at(...), got '{trimmed}'"));
        };
        Ok(Self { kind, source: trimmed.to_string() })
    }

    /// The expression as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True for `at(...)`: fires once, then the schedule is complete.
    pub fn is_one_time(&self) -> bool {
        matches!(self.kind, Kind::At(_))
    }

    /// The first occurrence strictly after `after`.
    ///
    /// * `rate`: occurrences are `anchor + k·period` for k ≥ 1 (a schedule created at t
    ///   first fires at t + period, as EventBridge Scheduler does).
    /// * `cron`: evaluated as wall-clock time in `tz`, so "18:00 Europe/Amsterdam" stays at
    ///   18:00 local across DST changes.
    /// * `at`: the wall-clock time in `tz`, if it is after `after`.
    ///
    /// `None` when there is no further occurrence.
    pub fn next_after(&self, after: DateTime<Utc>, anchor: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Rate(period) => {
                let period_ms = period.num_milliseconds();
                if period_ms <= 0 {
                    return None;
                }
                let first = anchor + *period;
                if first > after {
                    return Some(first);
                }
                let elapsed_ms = (after - anchor).num_milliseconds();
                let k = elapsed_ms / period_ms + 1;
                let candidate = anchor + Duration::milliseconds(k.checked_mul(period_ms)?);
                // Rounding to milliseconds can land exactly on `after`; step once more.
                if candidate > after {
                    Some(candidate)
                } else {
                    Some(candidate + *period)
                }
            }
            Kind::Cron(cron) => {
                let local = after.with_timezone(&tz);
                cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
            }
            Kind::At(naive) => {
                let at = local_to_utc(naive, tz)?;
                (at > after).then_some(at)
            }
        }
    }
}

/// The next `count` runs of `spec` after `after` (fewer when it ends, none when it does not
/// parse): what an operator is shown of a schedule. `anchor` is when a `rate` schedule started.
pub fn next_runs(
    spec: &crate::definition::ScheduleSpec,
    after: DateTime<Utc>,
    anchor: DateTime<Utc>,
    count: usize,
) -> Vec<DateTime<Utc>> {
    let (Ok(expression), Ok(tz)) = (ScheduleExpression::parse(&spec.expression), parse_timezone(&spec.timezone)) else {
        return Vec::new();
    };
    std::iter::successors(expression.next_after(after, anchor, tz), |last| expression.next_after(*last, anchor, tz))
        .take(count)
        .collect()
}

/// Parses an IANA time zone name as EventBridge Scheduler's `ScheduleExpressionTimezone`
/// (empty means UTC, as AWS defaults it).
pub fn parse_timezone(tz: &str) -> Result<Tz, String> {
    let tz = tz.trim();
    if tz.is_empty() {
        return Ok(Tz::UTC);
    }
    tz.parse::<Tz>().map_err(|_| format!("unknown time zone '{tz}' (expected an IANA name such as Europe/Amsterdam)"))
}

/// Maps a local wall-clock time to UTC. A time skipped by a DST jump runs at the first
/// instant after the gap; an ambiguous one runs at its first occurrence.
fn local_to_utc(naive: &NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(naive) {
        chrono::LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        chrono::LocalResult::None => {
            // Walk forward minute by minute out of the gap (gaps are at most a few hours).
            (1..=24 * 60).find_map(|m| match tz.from_local_datetime(&(*naive + Duration::minutes(m))) {
                chrono::LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
                chrono::LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
                chrono::LocalResult::None => None,
            })
        }
    }
}

fn strip_call<'a>(expr: &'a str, name: &str) -> Option<&'a str> {
    let rest = expr.strip_prefix(name)?;
    let rest = rest.strip_prefix('(')?;
    rest.strip_suffix(')')
}

const CRON_FIELDS: [&str; 6] = ["minutes", "hours", "day-of-month", "month", "day-of-week", "year"];

fn parse_cron(inner: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = inner.split_whitespace().collect();
    if fields.len() != 6 {
        return Err(format!(
            "cron expression needs 6 fields (minutes hours day-of-month month day-of-week year), got {}",
            fields.len()
        ));
    }
    let dom_q = fields[2] == "?";
    let dow_q = fields[4] == "?";
    if dom_q && dow_q {
        return Err("cron expression: day-of-month and day-of-week cannot both be '?'; use '?' in exactly one of them"
            .to_string());
    }
    if !dom_q && !dow_q {
        return Err(format!(
            "cron expression: one of day-of-month ('{}') and day-of-week ('{}') must be '?'",
            fields[2], fields[4]
        ));
    }
    for (i, f) in fields.iter().enumerate() {
        if f.contains('?') && *f != "?" {
            return Err(format!("cron expression: '?' must stand alone in the {} field", CRON_FIELDS[i]));
        }
        if f.contains('?') && i != 2 && i != 4 {
            return Err(format!(
                "cron expression: '?' is only allowed in day-of-month or day-of-week, not in {}",
                CRON_FIELDS[i]
            ));
        }
    }
    let pattern = format!("0 {}", fields.join(" "));
    CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Required)
        .alternative_weekdays(true)
        .build()
        .parse(&pattern)
        .map_err(|e| format!("invalid cron expression '{}': {e}", fields.join(" ")))
}

/// Parses the inside of `rate(...)`: a positive whole number and a unit; AWS requires the
/// singular unit for 1 and the plural otherwise.
pub fn parse_rate(inner: &str) -> Result<(u32, RateUnit), String> {
    let parts: Vec<&str> = inner.split_whitespace().collect();
    if parts.len() != 2 {
        return Err(format!(
            "rate expression needs a value and a unit, e.g. rate(5 minutes), got rate({})",
            inner.trim()
        ));
    }
    let n: u32 =
        parts[0].parse().map_err(|_| format!("rate value must be a positive whole number, got '{}'", parts[0]))?;
    if n == 0 {
        return Err("rate value must be at least 1".to_string());
    }
    let (unit, plural) = match parts[1] {
        "minute" => (RateUnit::Minute, false),
        "minutes" => (RateUnit::Minute, true),
        "hour" => (RateUnit::Hour, false),
        "hours" => (RateUnit::Hour, true),
        "day" => (RateUnit::Day, false),
        "days" => (RateUnit::Day, true),
        other => return Err(format!("rate unit must be minute(s), hour(s) or day(s), got '{other}'")),
    };
    if n == 1 && plural {
        return Err(format!("rate of 1 needs the singular unit: rate(1 {})", parts[1].trim_end_matches('s')));
    }
    if n != 1 && !plural {
        return Err(format!("rate of {n} needs the plural unit: rate({n} {}s)", parts[1]));
    }
    Ok((n, unit))
}

fn parse_at(inner: &str) -> Result<NaiveDateTime, String> {
    NaiveDateTime::parse_from_str(inner.trim(), "%Y-%m-%dT%H:%M:%S")
        .map_err(|e| format!("at expression needs yyyy-mm-ddThh:mm:ss, got '{}': {e}", inner.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("test timestamp").with_timezone(&Utc)
    }

    #[test]
    fn an_operator_sees_the_next_five_runs_in_the_schedules_time_zone() {
        let spec = crate::definition::ScheduleSpec {
            expression: "cron(0 18 * * ? *)".into(),
            timezone: "Europe/Amsterdam".into(),
        };
        let runs = next_runs(&spec, utc("2026-03-27T12:00:00Z"), utc("2026-01-01T00:00:00Z"), 5);
        // 18:00 in Amsterdam: 17:00 UTC until the clocks change on 29 March, then 16:00 UTC.
        let expected = [
            "2026-03-27T17:00:00Z",
            "2026-03-28T17:00:00Z",
            "2026-03-29T16:00:00Z",
            "2026-03-30T16:00:00Z",
            "2026-03-31T16:00:00Z",
        ];
        assert_eq!(runs, expected.map(utc).to_vec());
        let once =
            crate::definition::ScheduleSpec { expression: "at(2026-04-01T09:00:00)".into(), timezone: String::new() };
        assert_eq!(
            next_runs(&once, utc("2026-03-27T12:00:00Z"), utc("2026-01-01T00:00:00Z"), 5),
            vec![utc("2026-04-01T09:00:00Z")]
        );
        let bad = crate::definition::ScheduleSpec { expression: "every day".into(), timezone: String::new() };
        assert!(next_runs(&bad, utc("2026-03-27T12:00:00Z"), utc("2026-01-01T00:00:00Z"), 5).is_empty());
    }

    fn next(expr: &str, after: &str, tz: &str) -> Option<DateTime<Utc>> {
        let e = ScheduleExpression::parse(expr).expect("parses");
        let tz = parse_timezone(tz).expect("tz");
        e.next_after(utc(after), utc(after), tz)
    }

    #[test]
    fn cron_daily_in_amsterdam_follows_dst() {
        // Winter: 18:00 CET = 17:00 UTC.
        assert_eq!(
            next("cron(0 18 * * ? *)", "2026-01-10T12:00:00Z", "Europe/Amsterdam"),
            Some(utc("2026-01-10T17:00:00Z"))
        );
        // Summer: 18:00 CEST = 16:00 UTC.
        assert_eq!(
            next("cron(0 18 * * ? *)", "2026-07-10T12:00:00Z", "Europe/Amsterdam"),
            Some(utc("2026-07-10T16:00:00Z"))
        );
        // Across the spring-forward night (29 March 2026): 28th is CET, 29th is CEST.
        assert_eq!(
            next("cron(0 18 * * ? *)", "2026-03-28T17:00:00Z", "Europe/Amsterdam"),
            Some(utc("2026-03-29T16:00:00Z"))
        );
    }

    #[test]
    fn cron_hourly_skips_the_missing_hour() {
        // 02:30 local does not exist on 2026-03-29 in Amsterdam.
        let n = next("cron(30 * * * ? *)", "2026-03-29T00:31:00Z", "Europe/Amsterdam").expect("has next");
        // 00:31Z = 01:31 CET; next :30 local is 03:30 CEST = 01:30Z.
        assert_eq!(n, utc("2026-03-29T01:30:00Z"));
    }

    #[test]
    fn cron_weekday_names_and_numbers_use_aws_numbering() {
        // 2026-01-05 is a Monday. AWS: 1 = SUN, 2 = MON.
        assert_eq!(next("cron(0 9 ? * MON-FRI *)", "2026-01-03T00:00:00Z", "UTC"), Some(utc("2026-01-05T09:00:00Z")));
        assert_eq!(next("cron(0 9 ? * 2 *)", "2026-01-03T00:00:00Z", "UTC"), Some(utc("2026-01-05T09:00:00Z")));
        assert_eq!(next("cron(0 9 ? * 1 *)", "2026-01-03T00:00:00Z", "UTC"), Some(utc("2026-01-04T09:00:00Z")));
    }

    #[test]
    fn cron_last_day_and_nth_weekday() {
        assert_eq!(next("cron(0 0 L * ? *)", "2026-02-01T00:00:00Z", "UTC"), Some(utc("2026-02-28T00:00:00Z")));
        // Second Tuesday (3#2) of February 2026 is the 10th.
        assert_eq!(next("cron(0 12 ? * 3#2 *)", "2026-02-01T00:00:00Z", "UTC"), Some(utc("2026-02-10T12:00:00Z")));
    }

    #[test]
    fn cron_year_field_limits_occurrences() {
        assert_eq!(next("cron(0 0 1 1 ? 2027)", "2026-06-01T00:00:00Z", "UTC"), Some(utc("2027-01-01T00:00:00Z")));
        assert_eq!(next("cron(0 0 1 1 ? 2025)", "2026-06-01T00:00:00Z", "UTC"), None);
    }

    #[test]
    fn cron_field_count_error_is_precise() {
        let err = ScheduleExpression::parse("cron(0 18 * * ?)").expect_err("5 fields");
        assert_eq!(err, "cron expression needs 6 fields (minutes hours day-of-month month day-of-week year), got 5");
    }

    #[test]
    fn cron_question_mark_rules() {
        let both = ScheduleExpression::parse("cron(0 18 ? * ? *)").expect_err("both ?");
        assert!(both.contains("cannot both be '?'"), "{both}");
        let none = ScheduleExpression::parse("cron(0 18 * * * *)").expect_err("no ?");
        assert!(none.contains("must be '?'"), "{none}");
        let misplaced = ScheduleExpression::parse("cron(? 18 * * ? *)").expect_err("? in minutes");
        assert!(misplaced.contains("minutes"), "{misplaced}");
    }

    #[test]
    fn cron_invalid_values_are_rejected() {
        assert!(ScheduleExpression::parse("cron(61 18 * * ? *)").is_err());
        assert!(ScheduleExpression::parse("cron(0 25 * * ? *)").is_err());
        assert!(ScheduleExpression::parse("cron(0 18 * 13 ? *)").is_err());
        assert!(ScheduleExpression::parse("cron(x 18 * * ? *)").is_err());
    }

    #[test]
    fn rate_plural_rules() {
        assert!(ScheduleExpression::parse("rate(1 minute)").is_ok());
        assert!(ScheduleExpression::parse("rate(5 minutes)").is_ok());
        assert!(ScheduleExpression::parse("rate(1 day)").is_ok());
        assert!(ScheduleExpression::parse("rate(2 hours)").is_ok());
        let e = ScheduleExpression::parse("rate(1 minutes)").expect_err("plural for 1");
        assert_eq!(e, "rate of 1 needs the singular unit: rate(1 minute)");
        let e = ScheduleExpression::parse("rate(5 minute)").expect_err("singular for 5");
        assert_eq!(e, "rate of 5 needs the plural unit: rate(5 minutes)");
        assert!(ScheduleExpression::parse("rate(0 minutes)").is_err());
        assert!(ScheduleExpression::parse("rate(-1 minutes)").is_err());
        assert!(ScheduleExpression::parse("rate(5 weeks)").is_err());
        assert!(ScheduleExpression::parse("rate(5)").is_err());
    }

    #[test]
    fn rate_counts_from_anchor() {
        let e = ScheduleExpression::parse("rate(5 minutes)").expect("parses");
        let anchor = utc("2026-01-01T10:00:30Z");
        assert_eq!(e.next_after(anchor, anchor, Tz::UTC), Some(utc("2026-01-01T10:05:30Z")));
        assert_eq!(e.next_after(utc("2026-01-01T10:05:30Z"), anchor, Tz::UTC), Some(utc("2026-01-01T10:10:30Z")));
        assert_eq!(e.next_after(utc("2026-01-01T10:07:00Z"), anchor, Tz::UTC), Some(utc("2026-01-01T10:10:30Z")));
    }

    #[test]
    fn at_fires_once_in_local_time() {
        let e = ScheduleExpression::parse("at(2026-07-01T09:00:00)").expect("parses");
        assert!(e.is_one_time());
        let tz = parse_timezone("Europe/Amsterdam").expect("tz");
        let before = utc("2026-06-30T00:00:00Z");
        assert_eq!(e.next_after(before, before, tz), Some(utc("2026-07-01T07:00:00Z")));
        let after = utc("2026-07-02T00:00:00Z");
        assert_eq!(e.next_after(after, before, tz), None);
        assert!(ScheduleExpression::parse("at(2026-07-01 09:00)").is_err());
    }

    #[test]
    fn unknown_forms_and_timezones() {
        let e = ScheduleExpression::parse("every 5 minutes").expect_err("unknown");
        assert!(e.contains("cron(...), rate(...) or at(...)"), "{e}");
        assert!(parse_timezone("Mars/Olympus").is_err());
        assert_eq!(parse_timezone("").expect("empty is UTC"), Tz::UTC);
    }
}
