//! The file descriptor table, grown once at start. Linux grows a process's table by
//! doubling as descriptors are opened, and once the process has a second thread it waits
//! for an RCU grace period to do so (`expand_files` -> `synchronize_rcu`). On a busy machine
//! that wait took 0.5-3 s, in the thread calling `accept`, and every task queued behind it
//! stood still: the router stalled once per bands pass as its queued connections passed
//! 256, and interactive requests took 1.5-5 s to their first token instead of 0.3
//! (BENCHMARKS.md, flow control). Grown before any thread starts, it costs no wait.

/// Descriptors the table is grown to at most (8 bytes each, plus two bits).
pub const FD_TABLE_MAX: u64 = 16_384;

/// Raises the soft open-file limit to the hard one (at most [`FD_TABLE_MAX`]), as Go's
/// runtime does, so the default `--max-connections` fits, and grows the descriptor table
/// to that many, so that no later descriptor grows it. Call first in `main`, before any
/// thread starts. Returns the table's size, or `None` where this is not Linux or no
/// descriptor could be duplicated (nothing changes then but the limit).
pub fn presize_fd_table() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on this process's own limits and descriptors; `fd` is one
        // this function opened and nothing else holds.
        unsafe {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            let want = lim.rlim_max.min(FD_TABLE_MAX);
            if lim.rlim_cur < want {
                let raised = libc::rlimit { rlim_cur: want, rlim_max: lim.rlim_max };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = want;
                }
            }
            let size = lim.rlim_cur.min(FD_TABLE_MAX);
            let highest = libc::c_int::try_from(size.checked_sub(1)?).ok()?;
            // The lowest free descriptor at or above `highest`: the table grows to hold it.
            let fd = libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, highest);
            if fd < 0 {
                return None;
            }
            libc::close(fd);
            Some(size)
        }
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The table's size as the kernel reports it.
    fn fd_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        line["FDSize:".len()..].trim().parse().unwrap()
    }

    #[test]
    fn the_table_is_grown_to_the_open_file_limit_at_most_the_cap() {
        let size = super::presize_fd_table().expect("stderr can be duplicated");
        assert!(size <= super::FD_TABLE_MAX);
        assert!(fd_size() >= size, "FDSize {} below {size}", fd_size());
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: reads this process's limit into a local.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(size, lim.rlim_cur.min(super::FD_TABLE_MAX));
    }
}
