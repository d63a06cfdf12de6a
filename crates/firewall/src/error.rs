//! What can go wrong: all of it is the environment's fault (no nft, no permission, a table
//! in a shape we did not make) or a bad config; none of it is the peer's.

/// A firewall error. The caller keeps enforcing bans in-process when it gets one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings cannot be written into a script.
    #[error("firewall config: {0}")]
    Config(String),
    /// `nft` ran and failed for a reason that is not one element (no permission, a set
    /// with other flags than ours, a syntax our nft does not know).
    #[error("`{command}` failed ({status}): {stderr}")]
    Nft {
        /// The command line, e.g. `nft -f -`.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// `nft` printed something we could not read.
    #[error("`{command}` printed output we cannot read: {reason}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong with it.
        reason: String,
    },
    /// `nft` could not be started (not installed, not in `PATH`) or talked to.
    #[error("could not run `{command}`: {source} (is the nftables package installed?)")]
    Spawn {
        /// The command line.
        command: String,
        /// The error from the OS.
        #[source]
        source: std::io::Error,
    },
}
