//! What the tests read about processes they started: resident memory, for the fault and soak
//! suites' memory bounds.

/// `VmRSS` of `pid` in bytes, from `/proc/<pid>/status` (Linux); `None` elsewhere or once the
/// process is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
