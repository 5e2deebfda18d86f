//! The standard process metrics, read from Linux's `/proc/self` at each scrape: resident
//! memory, open descriptors, threads and the start time. Elsewhere (no `/proc`) each is
//! left out of the scrape rather than reported wrong.

use std::fs;

/// What a scrape reports of the process.
#[derive(Debug, Default)]
pub struct ProcessValues {
    pub resident_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub threads: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// The kernel's clock ticks per second in `/proc/*/stat` (`USER_HZ`): 100 on every Linux
/// architecture in use, fixed by the kernel's user-space ABI.
const USER_HZ: f64 = 100.0;

pub fn read() -> ProcessValues {
    let status = fs::read_to_string("/proc/self/status").ok();
    let field = |name: &str| {
        status.as_deref().and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse::<u64>().ok())
        })
    };
    ProcessValues {
        resident_memory_bytes: field("VmRSS:").map(|kib| kib * 1024),
        threads: field("Threads:"),
        open_fds: fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64),
        start_time_seconds: start_time(),
    }
}

/// Boot time (`btime` in `/proc/stat`) plus the process's start in ticks after boot (the
/// 22nd field of `/proc/self/stat`, counted after the command name, which may hold spaces).
fn start_time() -> Option<f64> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start with the 3rd (state): the 22nd is the 20th of these.
    let ticks: f64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let boot: f64 = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot + ticks / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reads_itself_on_linux() {
        let values = read();
        if !std::path::Path::new("/proc/self/status").exists() {
            return;
        }
        assert!(values.resident_memory_bytes.unwrap() > 0);
        assert!(values.threads.unwrap() >= 1);
        assert!(values.open_fds.unwrap() >= 3);
        let started = values.start_time_seconds.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(started <= now + 1.0 && started > now - 86_400.0 * 365.0);
    }
}
