//! The process's open-file limit: raised once at start, read to bound the connection cap.
//!
//! systemd starts services with a soft `RLIMIT_NOFILE` of 1024 and a hard one far above; a
//! node that kept 1024 would stop near 1000 devices. [`raise_nofile_limit`] lifts the soft
//! limit to the hard one; the connection cap then stays [`crate::conn::FD_RESERVE`] below
//! whatever soft limit is in force, so the admin endpoint and upstream connections always
//! find a descriptor.

use std::io;

use rlimit::Resource;

/// The open-file limits around [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimits {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (unchanged).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (or the kernel's per-process maximum,
/// if lower). Call once, at start, before anything is bound.
pub fn raise_nofile_limit() -> io::Result<NofileLimits> {
    let (before, hard) = Resource::NOFILE.get()?;
    let soft = rlimit::increase_nofile_limit(hard)?;
    Ok(NofileLimits { before, soft, hard })
}

/// The soft open-file limit in force; None if it cannot be read or is unlimited.
pub(crate) fn nofile_soft() -> Option<u64> {
    Resource::NOFILE
        .get()
        .ok()
        .map(|(soft, _)| soft)
        .filter(|&soft| soft != rlimit::INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limits = raise_nofile_limit().unwrap();
        assert!(limits.before <= limits.soft);
        assert!(limits.soft <= limits.hard);
        assert_eq!(nofile_soft(), Some(limits.soft));
    }
}
