//! Small statistics for the benchmark report.

use serde::Serialize;
use std::time::Duration;

/// A measured throughput.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rate {
    pub items: usize,
    pub seconds: f64,
    pub items_per_sec: f64,
}

impl Rate {
    /// `items` in `elapsed`.
    pub fn new(items: usize, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Rate {
            items,
            seconds,
            items_per_sec: items as f64 / seconds,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `samples`.
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[index].as_secs_f64() * 1000.0
        };
        Latency {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// A Prometheus histogram's running totals, summed over the series whose
/// labels include all of those asked for.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Totals {
    pub sum: f64,
    pub count: f64,
}

/// The samples of a text exposition whose labels include `labels`, as
/// (metric name, value).
fn samples<'a>(
    exposition: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    exposition.lines().filter_map(move |line| {
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.parse::<f64>().ok()?;
        let (metric, series_labels) = series.split_once('{').unwrap_or((series, ""));
        labels
            .iter()
            .all(|(key, wanted)| series_labels.contains(&format!("{key}=\"{wanted}\"")))
            .then_some((metric, value))
    })
}

/// The sum of counter `name`'s series with `labels` in a text exposition.
pub fn counter_total(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(exposition, labels)
        .filter(|(metric, _)| *metric == name)
        // (`sum()` of no f64 is -0.0.)
        .fold(0.0, |total, (_, value)| total + value)
}

impl Totals {
    /// Reads `name`'s `_sum` and `_count` from a text exposition.
    pub fn read(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Totals {
        let mut totals = Totals::default();
        for (metric, value) in samples(exposition, labels) {
            match metric.strip_prefix(name) {
                Some("_sum") => totals.sum += value,
                Some("_count") => totals.count += value,
                _ => {}
            }
        }
        totals
    }

    /// The mean, in milliseconds, of what was recorded since `earlier`.
    pub fn mean_ms_since(&self, earlier: Totals) -> Option<f64> {
        let count = self.count - earlier.count;
        (count > 0.0).then(|| (self.sum - earlier.sum) / count * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(sum: f64, count: f64) -> Totals {
        Totals { sum, count }
    }

    const EXPOSITION: &str = "\
# TYPE sync_publish_confirm_seconds summary
sync_publish_confirm_seconds{outcome=\"ack\",quantile=\"0.5\"} 0.09
sync_publish_confirm_seconds_sum{outcome=\"ack\"} 12.5
sync_publish_confirm_seconds_count{outcome=\"ack\"} 100
sync_publish_confirm_seconds_sum{outcome=\"timeout\"} 30
sync_publish_confirm_seconds_count{outcome=\"timeout\"} 3
sync_http_request_duration_seconds_sum{method=\"POST\",route=\"/api/v1/sync/{entity}\"} 4
sync_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/sync/{entity}\"} 20
sync_http_request_duration_seconds_sum{method=\"GET\",route=\"/healthz\"} 1
sync_http_request_duration_seconds_count{method=\"GET\",route=\"/healthz\"} 50
";

    #[test]
    fn histogram_totals_are_read_for_the_labels_asked() {
        let ack = Totals::read(
            EXPOSITION,
            "sync_publish_confirm_seconds",
            &[("outcome", "ack")],
        );
        assert_eq!(ack, totals(12.5, 100.0));
        let all = Totals::read(EXPOSITION, "sync_publish_confirm_seconds", &[]);
        assert_eq!(all, totals(42.5, 103.0));
        let posts = Totals::read(
            EXPOSITION,
            "sync_http_request_duration_seconds",
            &[("method", "POST")],
        );
        assert_eq!(posts, totals(4.0, 20.0));
        assert_eq!(
            Totals::read(EXPOSITION, "sync_other", &[]),
            Totals::default()
        );
    }

    #[test]
    fn counters_are_summed_over_the_series_with_the_labels_asked() {
        let exposition = "\
# TYPE sync_items_applied_total counter
sync_items_applied_total{entity=\"pieces\",op=\"inserted\"} 700
sync_items_applied_total{entity=\"pieces\",op=\"updated\"} 300
sync_items_applied_total_other 5
";
        assert_eq!(
            counter_total(exposition, "sync_items_applied_total", &[]),
            1000.0
        );
        let inserted = [("op", "inserted")];
        assert_eq!(
            counter_total(exposition, "sync_items_applied_total", &inserted),
            700.0
        );
        assert_eq!(counter_total(exposition, "sync_other", &[]), 0.0);
    }

    #[test]
    fn the_mean_counts_only_what_came_after() {
        let earlier = totals(2.0, 10.0);
        let later = totals(5.0, 40.0);
        assert_eq!(later.mean_ms_since(earlier), Some(100.0));
        assert_eq!(earlier.mean_ms_since(earlier), None);
    }
}
