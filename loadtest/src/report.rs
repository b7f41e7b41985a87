//! One result format for every load source: throughput, latency percentiles
//! (HDR histogram, microseconds) and failures counted by kind.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histogram tracks exactly (60 s); above it, saturates.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Latencies and failures seen by one worker (merged at the end).
pub struct Recorder {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static histogram bounds are valid"),
            errors: BTreeMap::new(),
        }
    }

    /// Records one successful request that took `latency`.
    pub fn success(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(us.max(1));
    }

    /// Counts one failure of kind `kind` (a short stable description).
    pub fn error(&mut self, kind: impl Into<String>) {
        self.error_n(kind, 1);
    }

    pub fn error_n(&mut self, kind: impl Into<String>, n: u64) {
        if n > 0 {
            *self.errors.entry(kind.into()).or_default() += n;
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.hist
            .add(&other.hist)
            .expect("histograms with the same bounds merge");
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
    }

    /// The report for a measurement window of `measured`.
    pub fn finish(&self, setup: Setup, measured: Duration) -> Report {
        let requests = self.hist.len();
        let secs = measured.as_secs_f64();
        let q = |p: f64| self.hist.value_at_quantile(p);
        Report {
            setup,
            measured_s: secs,
            requests,
            throughput_rps: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            latency_us: Latency {
                p50: q(0.50),
                p90: q(0.90),
                p99: q(0.99),
                p999: q(0.999),
                max: self.hist.max(),
                mean: self.hist.mean(),
            },
            error_total: self.errors.values().sum(),
            errors: self.errors.clone(),
        }
    }
}

/// What was measured, as given on the command line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Setup {
    /// `http` or `inprocess`.
    pub source: String,
    /// URL or model path.
    pub target: String,
    /// `closed` (fixed concurrency) or `open` (fixed arrival rate).
    pub mode: String,
    /// Connections (closed HTTP loop) or OS threads (in-process).
    pub concurrency: Option<usize>,
    /// Requests per second (open loop).
    pub rate: Option<f64>,
    /// Bound on outstanding requests (open loop).
    pub max_in_flight: Option<usize>,
    /// Rows per request.
    pub rows: Option<usize>,
    pub warmup_s: f64,
    pub duration_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub setup: Setup,
    /// Length of the measurement window (warm-up excluded), seconds.
    pub measured_s: f64,
    /// Successful requests completed in the measurement window.
    pub requests: u64,
    pub throughput_rps: f64,
    /// Latency of the successful measured requests, microseconds.
    pub latency_us: Latency,
    /// Failed requests over the whole run (warm-up included), by kind.
    pub errors: BTreeMap<String, u64>,
    pub error_total: u64,
}

impl Report {
    /// Prints the summary to stdout and every error kind to stderr; writes
    /// the JSON file when asked. Fails the process when any request failed.
    pub fn emit(&self, json: Option<&Path>) -> anyhow::Result<ExitCode> {
        let s = &self.setup;
        let load = match (s.mode.as_str(), s.concurrency, s.rate) {
            ("open", _, Some(rate)) => format!(
                "open loop at {rate} req/s (at most {} in flight)",
                s.max_in_flight.unwrap_or(0)
            ),
            (_, Some(c), _) if s.source == "inprocess" => format!("{c} threads"),
            (_, Some(c), _) => format!("closed loop, {c} connections"),
            _ => s.mode.clone(),
        };
        let l = &self.latency_us;
        println!(
            "{} {}: {load}, {:.1} s measured after {:.1} s warm-up",
            s.source, s.target, self.measured_s, s.warmup_s
        );
        println!(
            "  requests   {} ok, {} failed",
            self.requests, self.error_total
        );
        println!("  throughput {:.1} req/s", self.throughput_rps);
        println!(
            "  latency µs p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.1})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        if self.errors.is_empty() {
            println!("  errors     none");
        } else {
            eprintln!("  errors ({} requests failed):", self.error_total);
            for (kind, n) in &self.errors {
                eprintln!("    {n:>8}  {kind}");
            }
        }
        if let Some(path) = json {
            let text = serde_json::to_string_pretty(self)?;
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(if self.error_total == 0 && self.requests > 0 {
            ExitCode::SUCCESS
        } else {
            if self.requests == 0 {
                eprintln!("  no request succeeded in the measurement window");
            }
            ExitCode::FAILURE
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_errors_merge() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        for us in 1..=100 {
            a.success(Duration::from_micros(us));
        }
        b.success(Duration::from_micros(1000));
        b.error("status 503");
        b.error("status 503");
        a.error("transport: connection refused");
        a.merge(&b);
        let setup = Setup {
            source: "http".into(),
            target: "x".into(),
            mode: "closed".into(),
            concurrency: Some(2),
            rate: None,
            max_in_flight: None,
            rows: None,
            warmup_s: 0.0,
            duration_s: 1.0,
        };
        let r = a.finish(setup, Duration::from_secs(2));
        assert_eq!(r.requests, 101);
        assert!((r.throughput_rps - 50.5).abs() < 1e-9);
        assert_eq!(r.latency_us.p50, 51);
        assert_eq!(r.latency_us.max, 1000);
        assert_eq!(r.errors["status 503"], 2);
        assert_eq!(r.error_total, 3);
    }
}
