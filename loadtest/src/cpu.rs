//! CPU time spent during a run's measured window (Linux `/proc`): by the
//! server process under test (all of its threads), and by the whole machine
//! (load generator included).
//!
//! On a small shared VM, throughput moves by tens of percent from one
//! minute to the next, and the floor and the gateway do not move together.
//! The CPU a server spends per request moves much less: it is the cost the
//! request path puts on the machine, whatever the machine's phase, so two
//! builds or configurations can be told apart by a few percent where their
//! throughput cannot.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU time over one measured window.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct CpuUse {
    /// Seconds of CPU the server process used (every thread).
    pub process_s: f64,
    /// Seconds of CPU the machine used, all processes (not idle, not
    /// waiting for I/O, not stolen by the hypervisor).
    pub machine_s: f64,
    /// Seconds the hypervisor ran something else while a vCPU wanted to run.
    pub steal_s: f64,
}

/// The machine's CPU counters (`/proc/stat`, first line), in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct MachineTimes {
    busy: f64,
    steal: f64,
}

fn machine_times(stat: &str) -> anyhow::Result<MachineTimes> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no `cpu` line")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("a /proc/stat counter"))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(f.len() >= 8, "/proc/stat `cpu` line too short");
    // user nice system idle iowait irq softirq steal (guest time is
    // already in user and nice).
    let busy = f[0] + f[1] + f[2] + f[5] + f[6];
    Ok(MachineTimes {
        busy: busy as f64 / USER_HZ,
        steal: f[7] as f64 / USER_HZ,
    })
}

/// Seconds of CPU the process's threads have run (`schedstat`, nanoseconds),
/// summed over the threads alive now.
fn process_seconds(pid: u32) -> anyhow::Result<f64> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let mut ns: u64 = 0;
    for task in std::fs::read_dir(&tasks)
        .with_context(|| format!("reading {}: is process {pid} running?", tasks.display()))?
        .flatten()
    {
        // A thread that ended between the listing and the read is skipped.
        let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        ns += s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(ns as f64 / 1e9)
}

/// Both counters at one moment.
#[derive(Clone, Copy)]
struct Sample {
    process: f64,
    machine: MachineTimes,
}

fn sample(pid: u32) -> anyhow::Result<Sample> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    Ok(Sample {
        process: process_seconds(pid)?,
        machine: machine_times(&stat)?,
    })
}

impl CpuUse {
    fn between(a: Sample, b: Sample) -> CpuUse {
        CpuUse {
            process_s: (b.process - a.process).max(0.0),
            machine_s: (b.machine.busy - a.machine.busy).max(0.0),
            steal_s: (b.machine.steal - a.machine.steal).max(0.0),
        }
    }
}

/// Samples process `pid` and the machine at `from` and at `to` on a thread of
/// its own (the load generator's threads are busy loading); join it after
/// the run.
pub struct Meter(std::thread::JoinHandle<anyhow::Result<CpuUse>>);

impl Meter {
    pub fn start(pid: u32, from: Instant, to: Instant) -> anyhow::Result<Meter> {
        // Fails now, not after the run, when the process is not there.
        sample(pid)?;
        let handle = std::thread::Builder::new()
            .name("cpu-meter".into())
            .spawn(move || {
                sleep_until(from);
                let a = sample(pid)?;
                sleep_until(to);
                let b = sample(pid)?;
                Ok(CpuUse::between(a, b))
            })
            .context("starting the CPU meter thread")?;
        Ok(Meter(handle))
    }

    pub fn finish(self) -> anyhow::Result<CpuUse> {
        self.0
            .join()
            .map_err(|_| anyhow::anyhow!("the CPU meter thread panicked"))?
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn machine_times_add_busy_fields_and_keep_steal_apart() {
        let stat = "cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 50 2 25 500 10 1 1 3 0 0\n";
        let t = machine_times(stat).unwrap();
        assert!((t.busy - 1.60).abs() < 1e-9, "{t:?}");
        assert!((t.steal - 0.07).abs() < 1e-9, "{t:?}");
        assert!(machine_times("intr 1 2 3\n").is_err());
        assert!(machine_times("cpu  1 2 3\n").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_metered_while_it_works() {
        let pid = std::process::id();
        let from = Instant::now() + Duration::from_millis(20);
        let to = from + Duration::from_millis(200);
        let meter = Meter::start(pid, from, to).unwrap();
        // Keep one thread busy across the window.
        let mut x: u64 = 1;
        while Instant::now() < to + Duration::from_millis(20) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            std::hint::black_box(x);
        }
        let used = meter.finish().unwrap();
        // How much CPU the thread got depends on the machine's load; that
        // it got some inside the window, and the machine too, does not.
        assert!(used.process_s > 0.0, "{used:?}");
        assert!(used.machine_s > 0.0, "{used:?}");
        assert!(Meter::start(u32::MAX, from, to).is_err(), "no such process");
    }
}
