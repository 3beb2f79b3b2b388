//! How answers look to people: aligned tables (coloured at a terminal), times relative to
//! now, durations in units a person reads. `--output json` bypasses all of it.

use chrono::{DateTime, Utc};
use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Color, ContentArrangement, Table};
use serde_json::Value;
use std::io::IsTerminal;

/// A borderless table with a header row.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_content_arrangement(ContentArrangement::Disabled);
    if !std::io::stdout().is_terminal() {
        table.force_no_tty();
    }
    table.set_header(header.iter().map(|h| Cell::new(h.to_uppercase())));
    table
}

/// Prints `table` with its columns aligned (no margin, no trailing blanks).
pub(crate) fn print(table: &Table) {
    for line in table.lines() {
        let line = line.strip_prefix(' ').unwrap_or(&line);
        println!("{}", line.trim_end());
    }
}

/// A status, coloured by what it means (at a terminal).
pub(crate) fn status_cell(status: &str) -> Cell {
    let colour = match status {
        "Completed" | "Done" | "Enabled" | "ok" | "resolved" => Some(Color::Green),
        "Failed" | "TimedOut" | "Disabled" | "open" | "down" => Some(Color::Red),
        "WaitingOnExternalSystem" | "WaitingForSubExchangesToFinish" | "FailedRetrying" | "Started" => {
            Some(Color::Yellow)
        }
        _ => None,
    };
    match colour {
        Some(c) => Cell::new(status).fg(c),
        None => Cell::new(status),
    }
}

/// `3m ago`, `in 2h`, `just now`; the raw text when it is not a time.
pub(crate) fn relative(value: &Value, now: DateTime<Utc>) -> String {
    let Some(text) = value.as_str() else { return String::new() };
    let Ok(at) = DateTime::parse_from_rfc3339(text) else { return text.to_string() };
    let seconds = (now - at.with_timezone(&Utc)).num_seconds();
    let span = human_span(seconds.unsigned_abs());
    match seconds {
        -1..=1 => "just now".to_string(),
        s if s > 0 => format!("{span} ago"),
        _ => format!("in {span}"),
    }
}

fn human_span(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        3600..=86_399 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// `850ms`, `4.2s`, `3m 5s`; empty when unknown.
pub(crate) fn duration(value: &Value) -> String {
    let Some(ms) = value.as_i64() else { return String::new() };
    match ms {
        ..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// A JSON value as a table cell: strings bare, nothing for null.
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints `value` as indented JSON (for `--output json`).
pub(crate) fn json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_read_relative_to_now() {
        let now = DateTime::parse_from_rfc3339("2026-12-03T12:00:00Z").expect("time").with_timezone(&Utc);
        assert_eq!(relative(&json!("2026-12-03T11:57:00Z"), now), "3m ago");
        assert_eq!(relative(&json!("2026-12-03T14:00:00Z"), now), "in 2h");
        assert_eq!(relative(&json!("2026-12-03T12:00:00Z"), now), "just now");
        assert_eq!(relative(&json!("2026-11-30T12:00:00Z"), now), "3d ago");
        assert_eq!(relative(&Value::Null, now), "");
    }

    #[test]
    fn durations_read_in_their_unit() {
        assert_eq!(duration(&json!(850)), "850ms");
        assert_eq!(duration(&json!(4200)), "4.2s");
        assert_eq!(duration(&json!(185_000)), "3m 5s");
        assert_eq!(duration(&Value::Null), "");
    }
}
