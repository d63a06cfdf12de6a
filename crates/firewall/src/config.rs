//! Where the table lives and how the chain hooks in.

use std::path::PathBuf;

use crate::Error;

/// The netfilter hook of the dropping chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hook {
    /// `input`: only packets addressed to this host. Use it on a host that forwards traffic
    /// a ban must not touch (stg nodes do not forward).
    Input,
    /// `prerouting` (the default): every packet that arrives, before routing. At priority
    /// -300 (`raw`) it runs before connection tracking (-200), so a flood from a banned
    /// source allocates no conntrack entry and costs no route lookup.
    #[default]
    Prerouting,
}

impl Hook {
    /// The hook's name in nft syntax.
    pub fn name(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Prerouting => "prerouting",
        }
    }
}

/// How a re-ban gives an element that is already in the kernel its new timeout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Refresh {
    /// Ask the kernel once, in [`crate::Firewall::ensure`]: [`Refresh::Add`] if it updates
    /// timeouts, [`Refresh::Replace`] otherwise (the default). [`crate::Firewall::new`],
    /// which runs nothing, takes [`Refresh::Replace`].
    #[default]
    Auto,
    /// `add element` alone: the kernel updates the timeout of an element that exists (the
    /// 6.18 kernel of our test machines does; older kernels keep the old timeout).
    Add,
    /// List the sets first, then delete and add each element that is already there. Right
    /// on every kernel, but each delete costs time proportional to the set's size in nft 1.0.
    Replace,
}

/// The firewall's settings, with defaults that suit an stg node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallConfig {
    /// The table's name in the `inet` family (default `stg`). Letters, digits and `_`, a
    /// letter first, at most 32 characters: it is written into nft scripts.
    pub table: String,
    /// The hook of the dropping chain (default [`Hook::Prerouting`]).
    ///
    /// The priority does not decide whether a banned packet is dropped: a `drop` in any base
    /// chain is final, while an `accept` in another table's chain only ends that chain, and
    /// the packet still meets ours. It decides what a banned packet costs before it dies, so
    /// the default is as early as a chain in the `inet` family gets.
    pub hook: Hook,
    /// The chain's priority (default -300, nft's `raw`: before conntrack at -200).
    pub priority: i32,
    /// The IPv6 prefix length the guard bans by (default 64): bans of exactly this length
    /// go to the hash set `banned6`, looked up with the source masked to it; other lengths
    /// go to the interval set `banned6_nets`. 1 to 128. Keep it equal to the guard's IPv6
    /// ban scope. Changing it re-masks the rule, so elements already in `banned6` would then
    /// stand for prefixes of the new length: clear the table (the operator's `remove_all`)
    /// and restore when changing it.
    pub v6_prefix: u8,
    /// How re-bans refresh timeouts (default [`Refresh::Auto`]).
    pub refresh: Refresh,
    /// The `nft` program (default `nft`, found in `PATH`).
    pub nft: PathBuf,
    /// Elements per `nft` run in [`crate::Firewall::restore`] (default 20,000: a 100,000-ban
    /// restore is five runs, each well under the default netlink buffer limits).
    pub restore_chunk: usize,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self {
            table: "stg".to_string(),
            hook: Hook::default(),
            priority: -300,
            v6_prefix: 64,
            refresh: Refresh::Auto,
            nft: PathBuf::from("nft"),
            restore_chunk: 20_000,
        }
    }
}

impl FirewallConfig {
    /// Refuses a table name that is not a plain nft identifier (it would be nft syntax in
    /// our scripts), an impossible prefix length and a zero chunk.
    pub fn validate(&self) -> Result<(), Error> {
        let t = self.table.as_bytes();
        let ident = !t.is_empty()
            && t.len() <= 32
            && t[0].is_ascii_alphabetic()
            && t.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if !ident {
            return Err(Error::Config(format!(
                "table name {:?} is not an identifier (letters, digits, `_`, a letter first, \
                 at most 32 characters)",
                self.table
            )));
        }
        if !(1..=128).contains(&self.v6_prefix) {
            return Err(Error::Config(format!(
                "v6_prefix {} is not an IPv6 prefix length (1 to 128)",
                self.v6_prefix
            )));
        }
        if self.restore_chunk == 0 {
            return Err(Error::Config(
                "restore_chunk must be at least 1".to_string(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_that_would_be_nft_syntax_are_refused() {
        let with = |t: &str| FirewallConfig {
            table: t.to_string(),
            ..FirewallConfig::default()
        };
        assert!(with("stg").validate().is_ok());
        assert!(with("stg_test2").validate().is_ok());
        for bad in [
            "",
            "2stg",
            "stg; flush ruleset",
            "a b",
            "stg{",
            &"x".repeat(33),
        ] {
            assert!(with(bad).validate().is_err(), "{bad:?} accepted");
        }
        for (len, ok) in [(0, false), (1, true), (64, true), (128, true), (129, false)] {
            let cfg = FirewallConfig {
                v6_prefix: len,
                ..FirewallConfig::default()
            };
            assert_eq!(cfg.validate().is_ok(), ok, "/{len}");
        }
    }
}
