//! What the scenarios read from /proc (CPU time, RSS, the server's pid) and
//! the tool's own open-file limit.

use anyhow::{bail, Context as _};
use std::time::Duration;

/// `(comm, utime + stime)` from a `/proc/<pid>/stat` file (clock ticks of 10 ms).
pub fn proc_cpu(path: &str) -> Option<(String, Duration)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    // After the comm: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, Duration::from_millis((utime + stime) * 10)))
}

/// CPU time (all threads) of a process, or of this one with `None`.
pub fn cpu_of(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    proc_cpu(&path).map(|(_, time)| time)
}

/// The CPUs this process may run on (`taskset`), as /proc prints them.
pub fn cpus_allowed() -> String {
    cpus_allowed_of("self").unwrap_or_else(|| "?".into())
}

pub fn cpus_allowed_of(pid: &str) -> Option<String> {
    status_field(pid, "Cpus_allowed_list:").map(|v| v.trim().to_string())
}

fn status_field(pid: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key).map(str::to_string))
}

/// Resident set size in KiB (`VmRSS` of /proc/PID/status): what the idle
/// scenario charges to the connections.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let value = status_field(&pid.to_string(), "VmRSS:")
        .with_context(|| format!("no VmRSS in /proc/{pid}/status (is the server running?)"))?;
    let kib = value.trim().trim_end_matches("kB").trim();
    kib.parse()
        .with_context(|| format!("VmRSS of {pid} is not a number: {value:?}"))
}

/// The server to measure: `--server-pid`, else `--pid-file`, else the one
/// process named `confab` (the common case: one server on the machine).
pub fn server_pid(pid: Option<u32>, pid_file: Option<&str>) -> anyhow::Result<u32> {
    if let Some(pid) = pid {
        return Ok(pid);
    }
    if let Some(path) = pid_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        return text
            .trim()
            .parse()
            .with_context(|| format!("{path} does not hold a pid: {:?}", text.trim()));
    }
    let found = processes_named("confab");
    match found.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!("no process named confab; give --server-pid or --pid-file"),
        many => bail!("several processes named confab ({many:?}); give --server-pid"),
    }
}

/// Like [`server_pid`] but optional: CPU figures are extra, not required.
pub fn server_pid_optional(pid: Option<u32>, pid_file: Option<&str>) -> Option<u32> {
    if pid.is_some() || pid_file.is_some() {
        return server_pid(pid, pid_file).ok();
    }
    match processes_named("confab").as_slice() {
        [pid] => Some(*pid),
        _ => None,
    }
}

fn processes_named(name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                if comm.trim_end() == name {
                    found.push(pid);
                }
            }
        }
    }
    found
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit (thousands of
/// sockets need thousands of descriptors) and returns the new soft limit.
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}
