//! The standard Prometheus process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_start_time_seconds`), read
//! from /proc every few seconds: the names every process dashboard already queries.

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, Unit};

const CPU_SECONDS: &str = "process_cpu_seconds_total";
const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
const OPEN_FDS: &str = "process_open_fds";
const START_TIME: &str = "process_start_time_seconds";

/// How often the values are read (a scrape every 15 s sees values at most this old).
const PERIOD: Duration = Duration::from_secs(5);

/// Describe the metrics and update them from now on (Linux only; elsewhere nothing).
pub fn spawn() {
    describe_counter!(
        CPU_SECONDS,
        Unit::Seconds,
        "User and system CPU time spent, in seconds."
    );
    describe_gauge!(
        RESIDENT_MEMORY,
        Unit::Bytes,
        "Resident memory size, in bytes."
    );
    describe_gauge!(OPEN_FDS, Unit::Count, "Open file descriptors.");
    describe_gauge!(
        START_TIME,
        Unit::Seconds,
        "Start time of the process since the Unix epoch, in seconds."
    );
    let Some(sample) = ProcessSample::read() else {
        return;
    };
    metrics::gauge!(START_TIME).set(sample.start_time_seconds);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tick.tick().await;
            if let Some(sample) = ProcessSample::read() {
                metrics::counter!(CPU_SECONDS).absolute(sample.cpu_seconds as u64);
                metrics::gauge!(RESIDENT_MEMORY).set(sample.resident_bytes as f64);
                metrics::gauge!(OPEN_FDS).set(sample.open_fds as f64);
            }
        }
    });
}

struct ProcessSample {
    cpu_seconds: f64,
    resident_bytes: u64,
    open_fds: usize,
    start_time_seconds: f64,
}

impl ProcessSample {
    fn read() -> Option<ProcessSample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces), numbered from 3 (state).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3)?.parse::<f64>().ok();
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK) as f64,
                libc::sysconf(libc::_SC_PAGESIZE) as u64,
            )
        };
        let boot_time: f64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(ProcessSample {
            cpu_seconds: (field(14)? + field(15)?) / ticks,
            resident_bytes: field(24)? as u64 * page,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count(),
            start_time_seconds: boot_time + field(22)? / ticks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_from_proc() {
        let sample = ProcessSample::read().expect("a Linux /proc");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Started before now, and not before the test binary could have been built.
        assert!(
            sample.start_time_seconds <= now + 1.0,
            "{}",
            sample.start_time_seconds
        );
        assert!(sample.start_time_seconds > now - 24.0 * 3600.0);
        // A test process holds megabytes and its standard streams.
        assert!(sample.resident_bytes > 1 << 20, "{}", sample.resident_bytes);
        assert!(sample.open_fds >= 3);
        assert!(sample.cpu_seconds >= 0.0);
    }
}
