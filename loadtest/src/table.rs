//! The markdown comparison from a directory of results named
//! `<path>-b<rows>-c<concurrency>[-r<round>].json` (as `run-benchmarks.sh`
//! writes them).
//!
//! On a small shared machine one run's numbers drift by tens of percent from
//! one minute to the next, so the script repeats every measurement in
//! interleaved rounds. The table shows the median over rounds with the
//! range, and compares paths *within* a round (paired), taking the median
//! of those per-round ratios and differences.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, ensure};

use crate::report::Report;

/// Target: gateway throughput at least this share of the floor's (c32, 1 row).
const THROUGHPUT_TARGET: f64 = 0.70;
/// Target: gateway p50 at most this much above in-process p50 (c1, 1 row).
const LATENCY_TARGET_US: f64 = 100.0;
/// The closed-loop concurrencies the table compares.
const HIGH: usize = 32;
const LOW: usize = 1;

#[derive(clap::Args)]
pub struct Args {
    /// Directory holding the JSON results.
    #[arg(long)]
    dir: PathBuf,
}

/// (path, rows per request, concurrency).
type Key = (String, usize, usize);
/// Key → round → result.
type Results = BTreeMap<Key, BTreeMap<usize, Report>>;

fn parse_name(stem: &str) -> Option<(Key, usize)> {
    let (stem, round) = match stem.rsplit_once("-r") {
        Some((rest, r)) if r.parse::<usize>().is_ok() => (rest, r.parse().ok()?),
        _ => (stem, 0),
    };
    let (rest, conc) = stem.rsplit_once("-c")?;
    let (path, rows) = rest.rsplit_once("-b")?;
    Some((
        (path.to_owned(), rows.parse().ok()?, conc.parse().ok()?),
        round,
    ))
}

fn load(args: &Args) -> anyhow::Result<Results> {
    let mut out = Results::new();
    let entries =
        std::fs::read_dir(&args.dir).with_context(|| format!("reading {}", args.dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some((key, round)) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(parse_name)
        else {
            continue;
        };
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let report: Report =
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
        out.entry(key).or_default().insert(round, report);
    }
    ensure!(!out.is_empty(), "no results in {}", args.dir.display());
    Ok(out)
}

/// Median (mean of the middle two for an even count), min and max.
pub(crate) fn stats(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

/// "median (min–max)" when there are several rounds, else the value.
pub(crate) fn spread(s: (f64, f64, f64), decimals: usize) -> String {
    let (m, lo, hi) = s;
    if lo == hi {
        format!("{m:.decimals$}")
    } else {
        format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
    }
}

/// As [`spread`], with an explicit sign (for differences).
pub(crate) fn spread_signed(s: (f64, f64, f64)) -> String {
    let (m, lo, hi) = s;
    if lo == hi {
        format!("{m:+.0}")
    } else {
        format!("{m:+.0} ({lo:+.0}…{hi:+.0})")
    }
}

fn column(runs: &BTreeMap<usize, Report>, f: impl Fn(&Report) -> f64) -> (f64, f64, f64) {
    stats(runs.values().map(f).collect()).expect("a key has at least one round")
}

/// Per-round `f(a, b)` over the rounds both paths ran in.
fn paired(
    a: Option<&BTreeMap<usize, Report>>,
    b: Option<&BTreeMap<usize, Report>>,
    f: impl Fn(&Report, &Report) -> f64,
) -> Option<(f64, f64, f64)> {
    let (a, b) = (a?, b?);
    stats(
        a.iter()
            .filter_map(|(round, ra)| Some(f(ra, b.get(round)?)))
            .collect(),
    )
}

pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**not met**" }
}

fn main_table(out: &mut String, results: &Results, batches: &[usize]) {
    let paths = [
        ("gateway", "gateway"),
        ("inprocess", "in-process (no HTTP)"),
        ("floor", "HTTP + JSON floor"),
        ("gateway-1cpu", "gateway, one vCPU"),
        ("inprocess-1cpu", "in-process, one vCPU"),
        ("floor-1cpu", "floor, one vCPU"),
        ("gateway-ts", "gateway, TorchScript v4"),
        ("inprocess-ts", "in-process, TorchScript v4"),
    ];
    out.push_str(
        "| rows/request | concurrency | path | rounds | req/s | rows/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | failed |\n\
         | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for &rows in batches {
        for conc in [HIGH, LOW] {
            for (path, label) in paths {
                let Some(runs) = results.get(&(path.to_owned(), rows, conc)) else {
                    continue;
                };
                let rps = column(runs, |r| r.throughput_rps);
                let _ = writeln!(
                    out,
                    "| {rows} | {conc} | {label} | {} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                    runs.len(),
                    spread(rps, 0),
                    rps.0 * rows as f64,
                    spread(column(runs, |r| r.latency_us.p50 as f64), 0),
                    column(runs, |r| r.latency_us.p90 as f64).0,
                    column(runs, |r| r.latency_us.p99 as f64).0,
                    column(runs, |r| r.latency_us.p999 as f64).0,
                    column(runs, |r| r.latency_us.max as f64).2,
                    runs.values().map(|r| r.error_total).sum::<u64>(),
                );
            }
        }
    }
}

fn ratio_table(out: &mut String, results: &Results, batches: &[usize]) {
    let get = |path: &str, rows: usize, conc: usize| results.get(&(path.to_owned(), rows, conc));
    out.push_str(
        "\n| rows/request | gateway ÷ floor throughput (c32) | gateway p50 − in-process p50 (c1) | gateway p50 − floor p50 (c1) | gateway p50 − in-process p50 (c1, one vCPU) | gateway p50 − floor p50 (c1, one vCPU) |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for &rows in batches {
        let ratio = paired(
            get("gateway", rows, HIGH),
            get("floor", rows, HIGH),
            |g, f| 100.0 * g.throughput_rps / f.throughput_rps.max(f64::MIN_POSITIVE),
        );
        let ratio = match ratio {
            Some(s) if rows == 1 => format!(
                "{} % (target ≥ {:.0} %: {})",
                spread(s, 0),
                THROUGHPUT_TARGET * 100.0,
                verdict(s.0 >= THROUGHPUT_TARGET * 100.0)
            ),
            Some(s) => format!("{} %", spread(s, 0)),
            None => "—".into(),
        };
        let gap = |gateway: &str, base: &str| {
            paired(get(gateway, rows, LOW), get(base, rows, LOW), |g, b| {
                g.latency_us.p50 as f64 - b.latency_us.p50 as f64
            })
        };
        let target = |s: Option<(f64, f64, f64)>| match s {
            Some(s) if rows == 1 => format!(
                "{} µs (target ≤ {LATENCY_TARGET_US:.0} µs: {})",
                spread_signed(s),
                verdict(s.0 <= LATENCY_TARGET_US)
            ),
            Some(s) => format!("{} µs", spread_signed(s)),
            None => "—".into(),
        };
        let plain = |s: Option<(f64, f64, f64)>| {
            s.map_or_else(|| "—".into(), |s| format!("{} µs", spread_signed(s)))
        };
        let _ = writeln!(
            out,
            "| {rows} | {ratio} | {} | {} | {} | {} |",
            target(gap("gateway", "inprocess")),
            plain(gap("gateway", "floor")),
            target(gap("gateway-1cpu", "inprocess-1cpu")),
            plain(gap("gateway-1cpu", "floor-1cpu")),
        );
    }
}

fn execution_table(out: &mut String, results: &Results, batches: &[usize]) {
    let strategies = [
        ("gateway", "inline (`auto`, the default)"),
        ("gateway-pool", "worker pool (`execution = \"pool\"`)"),
        ("gateway-shadow", "inline + 1 shadow (v2, every request)"),
    ];
    out.push_str(
        "\n| gateway | rows/request | c32 req/s | c32 p50 µs | c32 p99 µs | c1 p50 µs | c1 p99 µs | failed |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for &rows in batches {
        if !strategies[1..]
            .iter()
            .any(|(path, _)| results.contains_key(&((*path).to_owned(), rows, HIGH)))
        {
            continue;
        }
        for (path, label) in strategies {
            let get = |conc: usize| results.get(&(path.to_owned(), rows, conc));
            let (Some(high), Some(low)) = (get(HIGH), get(LOW)) else {
                continue;
            };
            let failed: u64 = high
                .values()
                .chain(low.values())
                .map(|r| r.error_total)
                .sum();
            let _ = writeln!(
                out,
                "| {label} | {rows} | {} | {:.0} | {:.0} | {} | {:.0} | {failed} |",
                spread(column(high, |r| r.throughput_rps), 0),
                column(high, |r| r.latency_us.p50 as f64).0,
                column(high, |r| r.latency_us.p99 as f64).0,
                spread(column(low, |r| r.latency_us.p50 as f64), 0),
                column(low, |r| r.latency_us.p99 as f64).0,
            );
        }
    }
    let get = |path: &str, conc: usize| results.get(&(path.to_owned(), 1, conc));
    let rps = paired(get("gateway-pool", HIGH), get("gateway", HIGH), |p, i| {
        100.0 * p.throughput_rps / i.throughput_rps.max(f64::MIN_POSITIVE)
    });
    let p50 = paired(get("gateway-pool", LOW), get("gateway", LOW), |p, i| {
        p.latency_us.p50 as f64 - i.latency_us.p50 as f64
    });
    if let (Some(rps), Some(p50)) = (rps, p50) {
        let _ = writeln!(
            out,
            "\nPool vs inline, 1 row, paired per round: throughput at c32 {} % of inline; p50 at c1 {} µs.",
            spread(rps, 0),
            spread_signed(p50)
        );
    }
    let rps = paired(get("gateway-shadow", HIGH), get("gateway", HIGH), |s, i| {
        100.0 * s.throughput_rps / i.throughput_rps.max(f64::MIN_POSITIVE)
    });
    let p50 = paired(get("gateway-shadow", LOW), get("gateway", LOW), |s, i| {
        s.latency_us.p50 as f64 - i.latency_us.p50 as f64
    });
    if let (Some(rps), Some(p50)) = (rps, p50) {
        let _ = writeln!(
            out,
            "\nOne shadow vs none, 1 row, paired per round: throughput at c32 {} % of champion-only; p50 at c1 {} µs.",
            spread(rps, 0),
            spread_signed(p50)
        );
    }
}

/// TorchScript (`gateway-ts`, `inprocess-ts`) next to ONNX (`gateway`,
/// `inprocess`), paired per round.
fn torchscript_table(out: &mut String, results: &Results, batches: &[usize]) {
    let get = |path: &str, rows: usize, conc: usize| results.get(&(path.to_owned(), rows, conc));
    out.push_str(
        "\n| rows/request | TorchScript ÷ ONNX gateway throughput (c32) | TorchScript gateway p50 − in-process p50 (c1) | TorchScript ÷ ONNX in-process throughput (c32) | TorchScript − ONNX gateway p50 (c1) |\n\
         | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let pct = |a: &str, b: &str, rows: usize| {
        paired(get(a, rows, HIGH), get(b, rows, HIGH), |x, y| {
            100.0 * x.throughput_rps / y.throughput_rps.max(f64::MIN_POSITIVE)
        })
        .map_or_else(|| "—".into(), |s| format!("{} %", spread(s, 0)))
    };
    let gap = |a: &str, b: &str, rows: usize| {
        paired(get(a, rows, LOW), get(b, rows, LOW), |x, y| {
            x.latency_us.p50 as f64 - y.latency_us.p50 as f64
        })
        .map_or_else(|| "—".into(), |s| format!("{} µs", spread_signed(s)))
    };
    for &rows in batches {
        let _ = writeln!(
            out,
            "| {rows} | {} | {} | {} | {} |",
            pct("gateway-ts", "gateway", rows),
            gap("gateway-ts", "inprocess-ts", rows),
            pct("inprocess-ts", "inprocess", rows),
            gap("gateway-ts", "gateway", rows),
        );
    }
}

fn render(results: &Results) -> String {
    let mut batches: Vec<usize> = results.keys().map(|k| k.1).collect();
    batches.sort_unstable();
    batches.dedup();
    let mut out = String::new();
    main_table(&mut out, results, &batches);
    if results.keys().any(|k| k.0 == "floor") {
        ratio_table(&mut out, results, &batches);
    }
    if results.keys().any(|k| k.0 == "gateway-ts") {
        torchscript_table(&mut out, results, &batches);
    }
    // The execution variants of the 1-row gateway (not the TorchScript rows).
    if results
        .keys()
        .any(|k| k.0 == "gateway-pool" || k.0 == "gateway-shadow")
    {
        execution_table(&mut out, results, &batches);
    }
    out
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    print!("{}", render(&load(args)?));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_path_rows_concurrency_and_round() {
        assert_eq!(
            parse_name("gateway-b1-c32"),
            Some((("gateway".into(), 1, 32), 0))
        );
        assert_eq!(
            parse_name("gateway-pool-b32-c1-r2"),
            Some((("gateway-pool".into(), 32, 1), 2))
        );
        assert_eq!(
            parse_name("inprocess-ts-b32-c32-r1"),
            Some((("inprocess-ts".into(), 32, 32), 1))
        );
        assert_eq!(parse_name("notes"), None);
    }

    fn report(rps: f64, p50: u64) -> Report {
        serde_json::from_value(serde_json::json!({
            "setup": {"source": "http", "target": "t", "mode": "closed", "concurrency": 1,
                      "rate": null, "max_in_flight": null, "rows": 1, "warmup_s": 1.0, "duration_s": 3.0},
            "measured_s": 3.0, "requests": 1, "throughput_rps": rps,
            "latency_us": {"p50": p50, "p90": p50, "p99": p50, "p999": p50, "max": p50, "mean": p50 as f64},
            "errors": {}, "error_total": 0
        }))
        .expect("a report")
    }

    #[test]
    fn targets_are_judged_per_round_unpinned_and_on_one_vcpu() {
        let mut results = Results::new();
        let mut put = |path: &str, conc: usize, rps: f64, p50: u64| {
            results
                .entry((path.to_owned(), 1, conc))
                .or_default()
                .insert(1, report(rps, p50));
        };
        put("gateway", 32, 42_000.0, 700);
        put("floor", 32, 60_000.0, 400);
        put("gateway", 1, 7_000.0, 125);
        put("inprocess", 1, 250_000.0, 3);
        put("floor", 1, 9_000.0, 85);
        put("gateway-1cpu", 1, 14_000.0, 70);
        put("inprocess-1cpu", 1, 250_000.0, 3);
        put("floor-1cpu", 1, 27_000.0, 34);
        let table = render(&results);
        assert!(
            table.contains("| 1 | 70 % (target ≥ 70 %: met) | +122 µs (target ≤ 100 µs: **not met**) | +40 µs | +67 µs (target ≤ 100 µs: met) | +36 µs |"),
            "{table}"
        );
        assert!(
            table.contains("| 1 | 1 | gateway, one vCPU | 1 | 14000 |"),
            "{table}"
        );
    }

    #[test]
    fn medians_and_ranges() {
        assert_eq!(stats(vec![3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats(vec![4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(stats(vec![]), None);
        assert_eq!(spread((2.0, 1.0, 3.0), 0), "2 (1–3)");
        assert_eq!(spread((2.0, 2.0, 2.0), 1), "2.0");
        assert_eq!(spread_signed((2.0, -1.0, 3.0)), "+2 (-1…+3)");
    }
}
