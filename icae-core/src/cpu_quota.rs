//! The CPUs a container may use. libtorch sizes its thread pool by the cores of the machine;
//! in a pod limited to 2 CPUs on a 64-core node that is 64 threads contending for 2 CPUs'
//! worth of time (throttled by the kernel every period). The cgroup's CPU quota says what
//! the container really has.

use std::path::Path;

/// The CPU limit of this process's cgroup, rounded up to whole CPUs; None without one.
pub fn cgroup_cpu_limit() -> Option<usize> {
    cpu_limit_under(Path::new("/sys/fs/cgroup"))
}

/// The CPU limit recorded under a cgroup file system mounted at `root`: cgroup v2's
/// `cpu.max`, else cgroup v1's `cpu.cfs_quota_us` and `cpu.cfs_period_us`.
pub fn cpu_limit_under(root: &Path) -> Option<usize> {
    let read = |name: &str| std::fs::read_to_string(root.join(name)).ok();
    if let Some(max) = read("cpu.max") {
        return parse_cpu_max(&max);
    }
    for v1 in ["cpu", "cpu,cpuacct"] {
        let quota = read(&format!("{v1}/cpu.cfs_quota_us"));
        let period = read(&format!("{v1}/cpu.cfs_period_us"));
        if let (Some(quota), Some(period)) = (quota, period) {
            return parse_cfs(&quota, &period);
        }
    }
    None
}

/// cgroup v2 `cpu.max`: "QUOTA PERIOD" in microseconds, or "max PERIOD" for no limit.
pub fn parse_cpu_max(contents: &str) -> Option<usize> {
    let mut fields = contents.split_whitespace();
    let quota = fields.next()?.parse().ok()?;
    let period = fields.next()?.parse().ok()?;
    whole_cpus(quota, period)
}

/// cgroup v1 CFS quota and period in microseconds; a quota of -1 is no limit.
pub fn parse_cfs(quota: &str, period: &str) -> Option<usize> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: u64 = period.trim().parse().ok()?;
    whole_cpus(u64::try_from(quota).ok()?, period)
}

/// A quota of 1.5 CPUs gets 2 threads: the half CPU is still time a thread can use.
fn whole_cpus(quota: u64, period: u64) -> Option<usize> {
    if quota == 0 || period == 0 {
        return None;
    }
    usize::try_from(quota.div_ceil(period)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_quota_is_rounded_up_and_max_is_no_limit() {
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cpu_max("0 100000"), None);
    }

    #[test]
    fn cgroup_v1_quota_of_minus_one_is_no_limit() {
        assert_eq!(parse_cfs("400000\n", "100000\n"), Some(4));
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("junk", "100000"), None);
    }

    #[test]
    fn the_limit_is_read_from_either_layout() {
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cpu.max"), "300000 100000\n").unwrap();
        assert_eq!(cpu_limit_under(v2.path()), Some(3));

        let v1 = tempfile::tempdir().unwrap();
        std::fs::create_dir(v1.path().join("cpu,cpuacct")).unwrap();
        std::fs::write(v1.path().join("cpu,cpuacct/cpu.cfs_quota_us"), "100000\n").unwrap();
        std::fs::write(v1.path().join("cpu,cpuacct/cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(cpu_limit_under(v1.path()), Some(1));

        let none = tempfile::tempdir().unwrap();
        assert_eq!(cpu_limit_under(none.path()), None);
    }
}
