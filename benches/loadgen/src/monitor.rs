//! Process monitoring: broker RSS / CPU from /proc, our own CPU from
//! getrusage, sampled every 100 ms on a plain OS thread (so a busy tokio
//! worker cannot delay the samples). Also raises RLIMIT_NOFILE.

use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// utime + stime of `pid` in seconds.
pub fn proc_cpu_s(pid: u32) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime/stime are fields 14/15.
    let rest = s.rsplit_once(')').map(|x| x.1).context("bad stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf is thread-safe and has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// CPU seconds (user + system) used by this process.
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Per-CPU (busy, total) jiffies from /proc/stat; busy includes irq and
/// softirq time, which per-process accounting misses (on loopback much of
/// the TCP work is done in softirq), and excludes niced user time.
pub fn cpu_ticks() -> Vec<(u64, u64)> {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in s.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let Some(Ok(idx)) = it.next().map(|c| c.parse::<usize>()) else {
            continue; // the aggregate "cpu" line
        };
        let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
        if v.len() < 5 {
            continue;
        }
        // user nice system idle iowait irq softirq steal: busy excludes
        // nice, so niced background jobs (e.g. a build) don't count.
        let total: u64 = v.iter().take(8).sum();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        let busy = at(0) + at(2) + at(5) + at(6);
        if out.len() <= idx {
            out.resize(idx + 1, (0, 0));
        }
        out[idx] = (busy, total);
    }
    out
}

/// CPUs a process may run on (`None` = this process), from Cpus_allowed_list.
pub fn allowed_cpus(pid: Option<u32>) -> Option<Vec<usize>> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let s = std::fs::read_to_string(path).ok()?;
    let list = s
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<usize>().ok()?..=b.trim().parse().ok()?),
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub rss_kib: Option<u64>,
    pub broker_cpu_s: Option<f64>,
    pub self_cpu_s: f64,
    pub cores: Vec<(u64, u64)>,
}

fn sample(pid: Option<u32>) -> Sample {
    Sample {
        at: Instant::now(),
        rss_kib: pid.and_then(|p| rss_kib(p).ok()),
        broker_cpu_s: pid.and_then(|p| proc_cpu_s(p).ok()),
        self_cpu_s: self_cpu_s(),
        cores: cpu_ticks(),
    }
}

/// Background sampler, every 100 ms until stopped (or `max` elapsed).
pub struct Monitor {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Sample>>,
}

impl Monitor {
    pub fn start(pid: Option<u32>, max: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut out = vec![sample(pid)];
            while !flag.load(Ordering::Relaxed) && t0.elapsed() < max {
                std::thread::sleep(Duration::from_millis(100));
                out.push(sample(pid));
            }
            out
        });
        Self { stop, handle }
    }

    pub fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        Report {
            samples: self.handle.join().unwrap_or_default(),
        }
    }
}

pub struct Report {
    pub samples: Vec<Sample>,
}

impl Report {
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.samples.iter().filter_map(|s| s.rss_kib).max()
    }

    /// Samples taken within [from, to] (inclusive), first and last.
    fn window(&self, from: Instant, to: Instant) -> Option<(&Sample, &Sample)> {
        let a = self.samples.iter().find(|s| s.at >= from)?;
        let b = self.samples.iter().rev().find(|s| s.at <= to)?;
        (b.at > a.at).then_some((a, b))
    }

    /// (generator %, broker %) CPU over the window; 100 = one full core.
    pub fn cpu_pct(&self, from: Instant, to: Instant) -> (Option<f64>, Option<f64>) {
        let Some((a, b)) = self.window(from, to) else {
            return (None, None);
        };
        let dt = (b.at - a.at).as_secs_f64();
        let gen = (b.self_cpu_s - a.self_cpu_s) / dt * 100.0;
        let brk = match (a.broker_cpu_s, b.broker_cpu_s) {
            (Some(x), Some(y)) => Some((y - x) / dt * 100.0),
            _ => None,
        };
        (Some(gen), brk)
    }
}

impl Report {
    /// Average busy % (incl. irq/softirq) of `cpus` over the window.
    pub fn cores_busy_pct(&self, cpus: &[usize], from: Instant, to: Instant) -> Option<f64> {
        let (a, b) = self.window(from, to)?;
        let (mut busy, mut total) = (0u64, 0u64);
        for &c in cpus {
            let (b0, t0) = *a.cores.get(c)?;
            let (b1, t1) = *b.cores.get(c)?;
            busy += b1.saturating_sub(b0);
            total += t1.saturating_sub(t0);
        }
        (total > 0).then(|| busy as f64 * 100.0 / total as f64)
    }
}

/// Describe a CPU list compactly, e.g. "0" or "0,1".
pub fn cpus_str(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Raise the soft RLIMIT_NOFILE to the hard limit; fail if below `need`.
pub fn raise_nofile(need: u64) -> Result<u64> {
    // SAFETY: plain syscalls on a local struct.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!(
            "getrlimit(RLIMIT_NOFILE) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    if lim.rlim_max < need {
        // Privileged processes may raise the hard limit too (up to fs.nr_open).
        let want = libc::rlimit {
            rlim_cur: need as libc::rlim_t,
            rlim_max: need as libc::rlim_t,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim = want;
        }
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let have = lim.rlim_cur;
    if have < need {
        bail!(
            "RLIMIT_NOFILE is {have} (hard limit {}), need at least {need} file descriptors: \
             raise it (e.g. `ulimit -Hn {need}` as root, or lower --conns)",
            lim.rlim_max
        );
    }
    Ok(have)
}
