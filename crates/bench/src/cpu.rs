//! CPU time the processes of a phase spent, per item.
//!
//! Rates on a 2-core machine move with whatever else it is doing (the raw
//! publish rate alone swings by a third between runs); the CPU each process
//! spends per item hardly moves, so it is the figure that shows what an
//! optimisation bought and which process a phase is short of cores for.
//!
//! The whole machine's CPU is counted too (`machine`: every process and
//! the kernel's own threads), with how busy the cores were while a phase
//! ran: a phase whose cores were all busy is bound by CPU, not by the
//! service's design, and its ratio to a raw limit that left cores idle
//! says so. Linux only (`/proc`); elsewhere the figures are absent.

use serde::Serialize;
use std::collections::BTreeMap;

/// Clock ticks per second of `/proc/*/stat` times. `USER_HZ` is part of
/// Linux's user-space ABI and 100 on every architecture it runs on.
const TICKS_PER_SEC: f64 = 100.0;

/// The process that runs RabbitMQ when the broker is on this machine.
const BROKER_COMMAND: &str = "beam.smp";

/// A process's `/proc/PID/stat` fields after the command name (which may
/// hold spaces): index 0 is the state, 1 the parent's pid, 11–14 utime,
/// stime, cutime and cstime.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_command = stat.rsplit_once(')')?.1;
    // The state is a letter: read as 0, it is never used.
    Some(
        after_command
            .split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect(),
    )
}

/// User + system ticks from a process's [`stat_fields`].
fn own_ticks(fields: &[u64]) -> Option<u64> {
    Some(fields.get(11)? + fields.get(12)?)
}

/// Total user + system CPU seconds of a process, all threads included.
fn cpu_seconds(pid: u32) -> Option<f64> {
    Some(own_ticks(&stat_fields(pid)?)? as f64 / TICKS_PER_SEC)
}

/// CPU seconds of a server that forks a process per connection, as
/// PostgreSQL does: the parent's own, its exited children's (added to its
/// `cutime`/`cstime` when it reaps them) and its running children's. A
/// child's time moves from the last to the second when it exits, so the sum
/// only grows by work done.
fn family_seconds(parent: u32) -> Option<f64> {
    let own = stat_fields(parent)?;
    let reaped: u64 = own.get(11..15)?.iter().sum();
    let running: u64 = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat_fields)
        .filter(|fields| fields.get(1) == Some(&u64::from(parent)))
        .filter_map(|fields| own_ticks(&fields))
        .sum();
    Some((reaped + running) as f64 / TICKS_PER_SEC)
}

/// Where a role's CPU time is read.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// One process, all its threads.
    Process(u32),
    /// A parent and every process it forks (see [`family_seconds`]).
    Family(u32),
}

impl Source {
    fn seconds(self) -> Option<f64> {
        match self {
            Source::Process(pid) => cpu_seconds(pid),
            Source::Family(parent) => family_seconds(parent),
        }
    }
}

/// The PostgreSQL server behind `pool`, when it runs on this machine: the
/// parent of the backend serving this connection.
pub async fn postgres(pool: &sqlx::PgPool) -> Option<Source> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .ok()?;
    let parent = *stat_fields(u32::try_from(backend).ok()?)?.get(1)?;
    Some(Source::Family(u32::try_from(parent).ok()?))
}

/// CPU clock ticks of the whole machine, all cores together, from the
/// first line of `/proc/stat` (whole numbers: differences are exact).
#[derive(Debug, Clone, Copy, PartialEq)]
struct MachineTimes {
    /// Running anything: user, nice, system, irq, softirq.
    busy: f64,
    /// Of which in the kernel: system, irq, softirq.
    kernel: f64,
    /// Everything, idle, I/O wait and time stolen by a hypervisor included.
    all: f64,
}

impl MachineTimes {
    fn read() -> Option<MachineTimes> {
        MachineTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<MachineTimes> {
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let ticks: Vec<f64> = line
            .split_whitespace()
            .map(|field| field.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal; guest time is
        // already counted in user and nice.
        let [user, nice, system, idle, iowait, irq, softirq, steal] = *ticks.first_chunk()?;
        let kernel = system + irq + softirq;
        Some(MachineTimes {
            busy: user + nice + kernel,
            kernel,
            all: user + nice + kernel + idle + iowait + steal,
        })
    }
}

/// How busy the machine's cores were over a stretch of time, as shares of
/// all their time (1.0: every core busy throughout).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MachineLoad {
    pub busy: f64,
    pub kernel: f64,
}

impl MachineLoad {
    fn between(start: MachineTimes, end: MachineTimes) -> Option<MachineLoad> {
        let all = end.all - start.all;
        (all > 0.0).then(|| MachineLoad {
            busy: (end.busy - start.busy) / all,
            kernel: (end.kernel - start.kernel) / all,
        })
    }

    /// `cores 97% busy (kernel 45%)`, for the console.
    pub fn describe(load: Option<MachineLoad>) -> String {
        load.map_or_else(
            || "cores n/a".into(),
            |l| {
                format!(
                    "cores {:.0}% busy (kernel {:.0}%)",
                    l.busy * 100.0,
                    l.kernel * 100.0
                )
            },
        )
    }
}

/// The local broker's process, if there is one.
pub fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let command = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (command.trim() == BROKER_COMMAND).then_some(pid)
        })
}

/// How long to wait for the processes to go quiet, in steps.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
const SETTLE_STEP: std::time::Duration = std::time::Duration::from_millis(200);
/// Quiet: all processes together use less than this share of one core.
const QUIET_SHARE: f64 = 0.1;

/// CPU microseconds per item, by process role (`api`, `broker`, `bench` …).
pub type CpuPerItem = BTreeMap<&'static str, f64>;

/// CPU clocks of a few processes and of the machine, started at one moment.
pub struct CpuMeter {
    start: Vec<(&'static str, Source, f64)>,
    machine: Option<MachineTimes>,
}

impl CpuMeter {
    /// Starts counting for these (role, pid) pairs; unreadable ones are left
    /// out.
    pub fn start(processes: impl IntoIterator<Item = (&'static str, Option<u32>)>) -> Self {
        let start = processes
            .into_iter()
            .filter_map(|(role, pid)| {
                let source = Source::Process(pid?);
                Some((role, source, source.seconds()?))
            })
            .collect();
        CpuMeter {
            start,
            machine: MachineTimes::read(),
        }
    }

    /// The usual cast: this benchmark process and the local broker.
    pub fn bench_and_broker(broker: Option<u32>) -> Self {
        CpuMeter::start([("bench", Some(std::process::id())), ("broker", broker)])
    }

    /// Adds a process to count from now.
    pub fn with(mut self, role: &'static str, pid: Option<u32>) -> Self {
        self.start.extend(CpuMeter::start([(role, pid)]).start);
        self
    }

    /// Adds the local PostgreSQL server (every backend) to count from now.
    pub fn with_postgres(mut self, server: Option<Source>) -> Self {
        let start = server.and_then(|server| Some(("postgres", server, server.seconds()?)));
        self.start.extend(start);
        self
    }

    /// CPU spent since the start, in microseconds per item, read once the
    /// processes have gone quiet: a broker confirms a message once it is in
    /// its log and writes it on afterwards, so work a phase caused goes on
    /// for a moment after the phase (up to `SETTLE_LIMIT`).
    pub async fn settled_per_item(&self, items: usize) -> CpuPerItem {
        self.quiet().await;
        self.per_item(items)
    }

    /// Waits until the processes have gone quiet (up to `SETTLE_LIMIT`).
    pub async fn quiet(&self) {
        let started = std::time::Instant::now();
        let mut last = self.total();
        while started.elapsed() < SETTLE_LIMIT {
            tokio::time::sleep(SETTLE_STEP).await;
            let now = self.total();
            if now - last < QUIET_SHARE * SETTLE_STEP.as_secs_f64() {
                break;
            }
            last = now;
        }
    }

    fn total(&self) -> f64 {
        self.start
            .iter()
            .filter_map(|&(_, source, _)| source.seconds())
            .sum()
    }

    /// How busy the machine's cores have been since the start: read it
    /// when a phase's work ends.
    pub fn load(&self) -> Option<MachineLoad> {
        MachineLoad::between(self.machine?, MachineTimes::read()?)
    }

    /// CPU spent since the start, in microseconds per item: each process's,
    /// and the whole machine's as `machine`.
    pub fn per_item(&self, items: usize) -> CpuPerItem {
        let items = items.max(1) as f64;
        let machine = self.machine.zip(MachineTimes::read()).map(|(start, now)| {
            let spent = (now.busy - start.busy) / TICKS_PER_SEC;
            ("machine", spent * 1e6 / items)
        });
        self.start
            .iter()
            .filter_map(|&(role, source, start)| {
                let spent = source.seconds()? - start;
                Some((role, spent * 1e6 / items))
            })
            .chain(machine)
            .collect()
    }
}

/// Waits until the broker has gone quiet before a measured run: it goes on
/// writing (and, for deleted queues, cleaning up) for a while after a run,
/// and the next run would otherwise pay for the last one's work in its CPU
/// figures and its rate.
pub async fn broker_quiet(broker: Option<u32>) {
    CpuMeter::start([("broker", broker)]).quiet().await;
}

/// A phase's CPU per item and its cores' load, for the console.
pub fn describe_phase(cpu: &CpuPerItem, load: Option<MachineLoad>) -> String {
    format!("{}; {}", describe(cpu), MachineLoad::describe(load))
}

/// `api 2.10, broker 1.30, bench 0.20 µs/item`, for the console.
pub fn describe(cpu: &CpuPerItem) -> String {
    if cpu.is_empty() {
        return "n/a".into();
    }
    let parts: Vec<String> = cpu
        .iter()
        .map(|(role, us)| format!("{role} {us:.2}"))
        .collect();
    format!("{} µs CPU/item", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until `meter` shows `us` µs of this process's CPU (however
    /// busy the machine is with other tests), or 20 s have passed; the
    /// meter's reading then.
    fn spin(meter: &CpuMeter, us: f64) -> CpuPerItem {
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while meter.per_item(1)["bench"] < us
            && started.elapsed() < std::time::Duration::from_secs(20)
        {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        meter.per_item(1)
    }

    #[test]
    fn this_process_spends_cpu_when_it_works() {
        let meter = CpuMeter::start([("bench", Some(std::process::id()))]);
        assert!(meter.per_item(1)["bench"] < 50_000.0);
        let cpu = spin(&meter, 50_000.0);
        assert!(cpu["bench"] >= 50_000.0, "{cpu:?}");
        assert!(describe(&cpu).starts_with("bench "), "{cpu:?}");
    }

    /// The state letter of a process (`Z` once it has exited, unreaped).
    fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    #[test]
    fn a_family_counts_its_children_running_and_exited() {
        let me = std::process::id();
        let family = Source::Family(me);
        let own = Source::Process(me);
        let before = (family.seconds().unwrap(), own.seconds().unwrap());
        // A child that works for about half a second of CPU.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done"])
            .spawn()
            .expect("sh runs");
        let pid = child.id();
        while state(pid).is_some_and(|s| s != 'Z') {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Exited, not yet reaped: still read as a running child.
        let spent = cpu_seconds(pid).unwrap();
        assert!(spent >= 0.05, "the child worked {spent} s");
        // Other tests' threads spend this process's own CPU meanwhile: the
        // own time is read before the family's (and after it at the start)
        // so that what they spend between the two reads cannot be taken off
        // the child's.
        let gained = || {
            let own_now = own.seconds().unwrap();
            (family.seconds().unwrap() - before.0) - (own_now - before.1)
        };
        let unreaped = gained();
        assert!(unreaped >= spent - 0.011, "{unreaped} < {spent}");
        // Reaped: its time has moved to this process's children's.
        child.wait().expect("reaped");
        let reaped = gained();
        assert!(reaped >= spent - 0.011, "{reaped} < {spent}");
    }

    #[test]
    fn a_missing_process_is_left_out() {
        let meter = CpuMeter::start([("gone", Some(u32::MAX))]);
        let cpu = meter.per_item(10);
        assert_eq!(cpu.keys().copied().collect::<Vec<_>>(), ["machine"]);
        assert_eq!(describe(&CpuPerItem::new()), "n/a");
    }

    #[test]
    fn machine_times_add_up_from_proc_stat() {
        let stat = "cpu  100 20 30 400 50 6 4 10 7 0\ncpu0 50 10 15 200 25 3 2 5 3 0\n";
        let times = MachineTimes::parse(stat).unwrap();
        // busy: user + nice + system + irq + softirq; all adds idle,
        // iowait and steal; guest (already in user) is not added again.
        assert_eq!(
            times,
            MachineTimes {
                busy: 160.0,
                kernel: 40.0,
                all: 620.0
            }
        );
        assert_eq!(MachineTimes::parse("intr 1 2 3\n"), None);
        assert_eq!(MachineTimes::parse("cpu  1 2 3\n"), None);

        let later = MachineTimes {
            busy: 260.0,
            kernel: 90.0,
            all: 820.0,
        };
        assert_eq!(
            MachineLoad::between(times, later),
            Some(MachineLoad {
                busy: 0.5,
                kernel: 0.25
            })
        );
        assert_eq!(MachineLoad::between(times, times), None);
        let load = MachineLoad::between(times, later);
        assert_eq!(MachineLoad::describe(load), "cores 50% busy (kernel 25%)");
        assert_eq!(MachineLoad::describe(None), "cores n/a");
    }

    #[test]
    fn the_machine_shows_this_process_working() {
        let meter = CpuMeter::start([("bench", Some(std::process::id()))]);
        let cpu = spin(&meter, 300_000.0);
        // The machine spent at least what this process did; the two clocks
        // are read in 10 ms ticks, sampled apart, so a few ticks may differ.
        assert!(cpu["bench"] >= 300_000.0, "{cpu:?}");
        assert!(cpu["machine"] >= cpu["bench"] - 50_000.0, "{cpu:?}");
        let load = meter.load().expect("a Linux machine");
        assert!(load.busy > 0.0 && load.busy <= 1.0, "{load:?}");
        assert!(load.kernel <= load.busy, "{load:?}");
    }
}
