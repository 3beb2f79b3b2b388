//! The emulator's CloudWatch for metrics: it reads the embedded-metric-format documents the
//! functions flush (as CloudWatch Logs would extract them), keeps the recent ones, and sums
//! them per metric and dimension set — served at the emulator-only `GET /_emulator/metrics`
//! in Prometheus text format and `GET /_emulator/metrics/emf` as the documents themselves.
//! One store per process: every function of every emulator flushes into the same recorder.

use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

/// How many documents `/_emulator/metrics/emf` keeps (the oldest go first).
const KEPT_DOCUMENTS: usize = 5000;

/// A series: one metric under one set of dimension values.
type SeriesKey = (String, Vec<(String, String)>);

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Series {
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct State {
    series: BTreeMap<SeriesKey, Series>,
    documents: VecDeque<String>,
}

#[derive(Default)]
pub struct MetricStore {
    state: Mutex<State>,
}

/// The process's store, receiving every flushed document from first use on.
pub fn store() -> Arc<MetricStore> {
    static STORE: OnceLock<Arc<MetricStore>> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let store = Arc::new(MetricStore::default());
            let receiver = store.clone();
            handoff_runtime::metrics::install(handoff_runtime::metrics::DEFAULT_NAMESPACE)
                .send_to(Arc::new(move |document| receiver.ingest(document)));
            store
        })
        .clone()
}

impl MetricStore {
    /// Reads one EMF document: each metric of its directive, under its dimensions. A value
    /// is a number (a count, or one sample) or an array of samples. Not EMF: ignored.
    pub fn ingest(&self, document: &str) {
        let Ok(doc) = serde_json::from_str::<Value>(document) else { return };
        let Some(directives) = doc["_aws"]["CloudWatchMetrics"].as_array() else { return };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for directive in directives {
            let dimensions: Vec<(String, String)> = directive["Dimensions"]
                .as_array()
                .and_then(|sets| sets.first())
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|name| (name.to_string(), doc[name].as_str().unwrap_or_default().to_string()))
                .collect();
            for metric in directive["Metrics"].as_array().into_iter().flatten() {
                let Some(name) = metric["Name"].as_str() else { continue };
                let samples: Vec<f64> = match &doc[name] {
                    Value::Array(values) => values.iter().filter_map(Value::as_f64).collect(),
                    value => value.as_f64().into_iter().collect(),
                };
                let series = state.series.entry((name.to_string(), dimensions.clone())).or_default();
                series.sum += samples.iter().sum::<f64>();
                series.count += samples.len() as u64;
            }
        }
        if state.documents.len() == KEPT_DOCUMENTS {
            state.documents.pop_front();
        }
        state.documents.push_back(document.to_string());
    }

    /// The documents kept, oldest first, one JSON object a line.
    pub fn documents(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.documents.iter().map(|d| format!("{d}\n")).collect()
    }

    /// Every series as a Prometheus summary without quantiles: `handoff_<name>_sum` (the
    /// total: a counter's count, a histogram's sum) and `handoff_<name>_count` (samples).
    pub fn prometheus(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let mut last_name = None;
        for ((name, dimensions), series) in &state.series {
            let metric = format!("handoff_{}", snake(name));
            if last_name.as_deref() != Some(name.as_str()) {
                out.push_str(&format!("# TYPE {metric} summary\n"));
                last_name = Some(name.clone());
            }
            let labels: Vec<String> =
                dimensions.iter().map(|(k, v)| format!("{}=\"{}\"", snake(k), escape(v))).collect();
            let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
            out.push_str(&format!("{metric}_sum{labels} {}\n", series.sum));
            out.push_str(&format!("{metric}_count{labels} {}\n", series.count));
        }
        out
    }
}

/// `SubStepDurationMs` → `sub_step_duration_ms`.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let chars: Vec<char> = name.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let after_lower = i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
            let before_lower =
                i > 0 && chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase()) && chars[i - 1].is_ascii_uppercase();
            if after_lower || before_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(*c);
        } else {
            out.push('_');
        }
    }
    out
}

/// A label value as Prometheus text requires (backslash, quote and newline escaped).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_summed_per_metric_and_dimensions_and_rendered_for_prometheus() {
        let store = MetricStore::default();
        let doc = |code: &str, completed: u64, durations: &str| {
            format!(
                r#"{{"_aws":{{"Timestamp":1,"CloudWatchMetrics":[{{"Namespace":"Handoff","Dimensions":[["IntegrationCode"]],"Metrics":[{{"Name":"ExchangesCompleted"}},{{"Name":"SubStepDurationMs"}}]}}]}},"IntegrationCode":"{code}","ExchangesCompleted":{completed},"SubStepDurationMs":{durations}}}"#
            )
        };
        store.ingest(&doc("A", 1, "[10.5, 20]"));
        store.ingest(&doc("A", 2, "[1]"));
        store.ingest(&doc("B\\\"x", 1, "[]"));
        store.ingest("not json");
        store.ingest(r#"{"level": "info"}"#);
        let text = store.prometheus();
        assert!(text.contains("# TYPE handoff_exchanges_completed summary\n"), "{text}");
        assert!(text.contains("handoff_exchanges_completed_sum{integration_code=\"A\"} 3\n"), "{text}");
        assert!(text.contains("handoff_exchanges_completed_count{integration_code=\"A\"} 2\n"), "{text}");
        assert!(text.contains("handoff_exchanges_completed_sum{integration_code=\"B\\\"x\"} 1\n"), "{text}");
        assert!(text.contains("handoff_sub_step_duration_ms_sum{integration_code=\"A\"} 31.5\n"), "{text}");
        assert!(text.contains("handoff_sub_step_duration_ms_count{integration_code=\"A\"} 3\n"), "{text}");
        assert_eq!(store.documents().lines().count(), 3, "every EMF document is kept as it came, nothing else");
    }

    #[test]
    fn names_become_snake_case() {
        assert_eq!(snake("SubStepDurationMs"), "sub_step_duration_ms");
        assert_eq!(snake("JobRunsCompleted"), "job_runs_completed");
        assert_eq!(snake("IntegrationCode"), "integration_code");
        assert_eq!(snake("Failures"), "failures");
    }
}
