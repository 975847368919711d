//! Namespace → shard: the scheme every replica of a group must share.
//!
//! A shard is the position of a namespace's 64-bit hash among N equal contiguous ranges of
//! the 64-bit space. The default hash, `mixed`, is FNV-1a-64 followed by splitmix64's
//! finalizer, which avalanches: every input bit affects every output bit, so families of
//! similar names (`tenant-7`, `ns-0042`, `team-a-prod`) spread like random names. The opt-in
//! `fnv1a` is FNV-1a-64 alone, the hash of the upstream server-side shard selectors
//! (KEP-5866): its top bits hardly depend on a name's last characters, so names that differ
//! only there share a shard (`ns-0000` … `ns-0099` all land on one of 16).

use std::fmt;

/// Shards when `--shards` is not given: enough that three replicas balance their sets
/// within a few percent (see `assign`), few enough that renewing their Leases stays cheap.
pub const DEFAULT_SHARDS: u32 = 32;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// splitmix64's finalizer: a bijection of the 64-bit space in which every input bit flips
/// each output bit with probability about one half.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The namespace hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ShardHash {
    /// FNV-1a-64 with splitmix64's finalizer: similar names spread like random ones.
    #[default]
    Mixed,
    /// FNV-1a-64 alone (KEP-5866's hash): names differing only at the end cluster.
    Fnv1a,
}

impl ShardHash {
    pub fn as_str(self) -> &'static str {
        match self {
            ShardHash::Mixed => "mixed",
            ShardHash::Fnv1a => "fnv1a",
        }
    }

    pub fn hash(self, namespace: &str) -> u64 {
        let h = fnv1a64(namespace.as_bytes());
        match self {
            ShardHash::Mixed => mix(h),
            ShardHash::Fnv1a => h,
        }
    }
}

/// What maps a namespace to a shard: the hash and the shard count. Replicas of one group
/// serve shards only among replicas of the same scheme (see `manager`), since a shard
/// number means other namespaces under another scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    pub hash: ShardHash,
    /// At least 1.
    pub shards: u32,
}

impl Default for Scheme {
    fn default() -> Self {
        Scheme::new(ShardHash::default(), DEFAULT_SHARDS)
    }
}

impl Scheme {
    pub fn new(hash: ShardHash, shards: u32) -> Self {
        Scheme {
            hash,
            shards: shards.max(1),
        }
    }

    /// The shard of a namespace.
    pub fn shard_of(&self, namespace: &str) -> u32 {
        let n = u128::from(self.shards);
        ((u128::from(self.hash.hash(namespace)) * n) >> 64) as u32
    }

    /// The record on every Lease a replica writes, e.g. `mixed/32`.
    pub fn id(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hash.as_str(), self.shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn mix_matches_splitmix64() {
        // splitmix64's first outputs for seed 0 are mix(0x9e3779b97f4a7c15 * k).
        let gamma: u64 = 0x9e37_79b9_7f4a_7c15;
        assert_eq!(mix(gamma), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix(gamma.wrapping_mul(2)), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn shards_are_contiguous_ranges_of_the_hash() {
        for hash in [ShardHash::Mixed, ShardHash::Fnv1a] {
            assert_eq!(Scheme::new(hash, 1).shard_of("anything"), 0);
            for ns in ["default", "tenant-a", "tenant-b", "kube-system"] {
                let h = hash.hash(ns);
                assert_eq!(Scheme::new(hash, 2).shard_of(ns), (h >> 63) as u32);
                assert_eq!(Scheme::new(hash, 16).shard_of(ns), (h >> 60) as u32);
                assert!(Scheme::new(hash, 7).shard_of(ns) < 7);
            }
        }
        assert_eq!(Scheme::new(ShardHash::Mixed, 0).shards, 1);
        assert_eq!(Scheme::default().id(), "mixed/32");
        assert_eq!(Scheme::new(ShardHash::Fnv1a, 16).id(), "fnv1a/16");
    }

    /// Every input bit flips each of the top bits (those that pick the shard) about half the
    /// time: names that differ in one character land on unrelated shards.
    #[test]
    fn the_mixed_hash_avalanches_into_the_top_bits() {
        let inputs: Vec<String> = (0..400).map(|i| format!("tenant-{i}")).collect();
        for top in 0..8 {
            let bit = 63 - top;
            let (mut flips, mut trials) = (0u32, 0u32);
            for input in &inputs {
                let bytes = input.as_bytes();
                let h = ShardHash::Mixed.hash(input);
                for i in 0..bytes.len() {
                    for b in 0..8 {
                        let mut changed = bytes.to_vec();
                        changed[i] ^= 1 << b;
                        let Ok(changed) = String::from_utf8(changed) else {
                            continue;
                        };
                        trials += 1;
                        flips += ((h ^ ShardHash::Mixed.hash(&changed)) >> bit & 1) as u32;
                    }
                }
            }
            let rate = f64::from(flips) / f64::from(trials);
            assert!(
                (0.47..=0.53).contains(&rate),
                "output bit {bit} flips at {rate:.3}"
            );
        }
    }
}

#[cfg(test)]
mod spread {
    use super::super::families::families;
    use super::*;

    fn per_shard(scheme: Scheme, names: &[String]) -> Vec<u32> {
        let mut counts = vec![0u32; scheme.shards as usize];
        for ns in names {
            counts[scheme.shard_of(ns) as usize] += 1;
        }
        counts
    }

    /// 10,000 namespaces over 16 shards: every shard within ±15 % of the mean (about four
    /// standard deviations of a random hash, so a sound hash never fails by chance).
    #[test]
    fn every_family_spreads_like_random_names() {
        let scheme = Scheme::new(ShardHash::Mixed, 16);
        for (family, names) in families(10_000) {
            let counts = per_shard(scheme, &names);
            let mean = names.len() as f64 / 16.0;
            for (shard, c) in counts.iter().enumerate() {
                let ratio = f64::from(*c) / mean;
                assert!(
                    (0.85..=1.15).contains(&ratio),
                    "{family}: shard {shard} has {c} namespaces ({ratio:.3} of the mean): {counts:?}"
                );
            }
        }
    }

    #[test]
    fn a_hundred_namespaces_leave_at_most_one_shard_empty() {
        let scheme = Scheme::new(ShardHash::Mixed, 16);
        for (family, names) in families(100) {
            let counts = per_shard(scheme, &names);
            let empty = counts.iter().filter(|c| **c == 0).count();
            assert!(empty <= 1, "{family}: {empty} empty shards: {counts:?}");
        }
    }

    /// Why `mixed` is the default: FNV-1a alone puts a hundred zero-padded names on one shard.
    #[test]
    fn fnv1a_alone_collapses_similar_names() {
        let names: Vec<String> = (0..100).map(|i| format!("ns-{i:04}")).collect();
        let counts = per_shard(Scheme::new(ShardHash::Fnv1a, 16), &names);
        assert!(counts.iter().filter(|c| **c > 0).count() <= 2, "{counts:?}");
    }
}
