//! Namespace → shard, and shard → preferred replica.
//!
//! A shard is the position of FNV-1a-64(namespace) among N equal contiguous ranges of the
//! 64-bit space: the hash and range idea of the upstream server-side shard selectors
//! (KEP-5866), so a later version can let the API server filter watches per shard.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// The shard of a namespace among `shards` (at least 1).
pub fn shard_of(namespace: &str, shards: u32) -> u32 {
    let n = u128::from(shards.max(1));
    ((u128::from(fnv1a64(namespace.as_bytes())) * n) >> 64) as u32
}

/// A 64-bit mix (splitmix64's finalizer): FNV alone spreads short similar strings poorly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Rendezvous (highest-random-weight) weight of `member` for `shard`.
pub fn weight(member: &str, shard: u32) -> u64 {
    mix(fnv1a64(member.as_bytes()) ^ mix(u64::from(shard) + 1))
}

/// The preferred owner of every shard among `members`: rendezvous hashing with bounded
/// loads, so every member gets floor or ceil of shards/members, and a join or leave moves
/// only about shards/members shards. Every replica computes the same answer from the same
/// member list. Empty when there are no members.
pub fn assign(shards: u32, members: &[String]) -> Vec<String> {
    if members.is_empty() {
        return Vec::new();
    }
    let mut members = members.to_vec();
    members.sort();
    let m = members.len() as u32;
    let floor = shards / m;
    let mut extra = shards % m; // members that may hold floor + 1
    let mut load = vec![0u32; members.len()];
    (0..shards)
        .map(|shard| {
            let mut order: Vec<usize> = (0..members.len()).collect();
            order.sort_by_key(|&i| {
                std::cmp::Reverse((weight(&members[i], shard), members[i].as_str()))
            });
            let chosen = order
                .into_iter()
                .find(|&i| load[i] < floor || (load[i] == floor && extra > 0))
                .unwrap_or(0);
            if load[chosen] == floor {
                extra -= 1;
            }
            load[chosen] += 1;
            members[chosen].clone()
        })
        .collect()
}

/// The shards whose children `me` keeps cached: those it is assigned now, and those it would
/// be assigned if any one other member left. The second kind are warm standbys: taking one
/// over after a failure then needs no list. With three members that is about twice the
/// cached children of its own shards alone (half of each peer's shards), against a takeover
/// that would otherwise wait for a list of them all. A shard assigned here but still held by
/// its previous owner (a hand-over under way) is kept warm too. Empty unless `me` is a member.
pub fn standby(shards: u32, members: &[String], me: &str) -> Vec<u32> {
    if !members.iter().any(|m| m == me) {
        return Vec::new();
    }
    let now = assign(shards, members);
    let mut out: std::collections::BTreeSet<u32> =
        (0..shards).filter(|&s| now[s as usize] == me).collect();
    for gone in members.iter().filter(|m| *m != me) {
        let rest: Vec<String> = members.iter().filter(|m| *m != gone).cloned().collect();
        for (shard, owner) in assign(shards, &rest).iter().enumerate() {
            if owner == me {
                out.insert(shard as u32);
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn shards_are_contiguous_ranges_of_the_hash() {
        assert_eq!(shard_of("anything", 1), 0);
        for ns in ["default", "tenant-a", "tenant-b", "kube-system"] {
            let h = fnv1a64(ns.as_bytes());
            assert_eq!(shard_of(ns, 2), (h >> 63) as u32, "top bit for two shards");
            assert_eq!(shard_of(ns, 16), (h >> 60) as u32, "top nibble for sixteen");
            assert!(shard_of(ns, 7) < 7);
        }
    }

    #[test]
    fn namespaces_spread_over_shards() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[shard_of(&format!("tenant-{i}"), 8) as usize] += 1;
        }
        // FNV-1a's top bits are only roughly uniform for names that differ in their last
        // characters; the mandated hash (KEP-5866's) trades balance for server-side filtering.
        assert!(
            counts.iter().all(|c| *c >= 200),
            "every shard gets namespaces: {counts:?}"
        );
    }

    fn members(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn loads(a: &[String]) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for owner in a {
            *m.entry(owner.clone()).or_insert(0) += 1;
        }
        m
    }

    #[test]
    fn every_member_holds_floor_or_ceil() {
        for (shards, n) in [(8, 3), (8, 4), (16, 3), (10, 4), (1, 3), (16, 1), (3, 5)] {
            let names: Vec<String> = (0..n)
                .map(|i| format!("vecodex-operator-{i}-abcde"))
                .collect();
            let a = assign(shards, &names);
            assert_eq!(a.len(), shards as usize);
            let l = loads(&a);
            let (lo, hi) = (shards / n, shards.div_ceil(n));
            assert!(
                l.values().all(|c| (lo..=hi).contains(c)),
                "{shards}/{n}: {l:?}"
            );
        }
    }

    #[test]
    fn a_join_moves_about_n_over_members_shards() {
        let three = members(&["op-a-1x2y", "op-b-3z4w", "op-c-5v6u"]);
        let four = members(&["op-a-1x2y", "op-b-3z4w", "op-c-5v6u", "op-d-7t8s"]);
        let (a, b) = (assign(64, &three), assign(64, &four));
        let moved = (0..64).filter(|&s| a[s] != b[s]).count();
        assert!(
            moved <= 32,
            "a join moves about 64/4 shards, not all: {moved}"
        );
        assert_eq!(assign(64, &three), a, "deterministic");
        let mut reordered = three.clone();
        reordered.reverse();
        assert_eq!(assign(64, &reordered), a, "independent of member order");
    }

    #[test]
    fn standby_covers_every_shard_a_failure_would_bring() {
        let three = members(&["op-a-1x2y", "op-b-3z4w", "op-c-5v6u"]);
        let now = assign(16, &three);
        for me in &three {
            let warm = standby(16, &three, me);
            let own: Vec<u32> = (0..16).filter(|&s| now[s as usize] == *me).collect();
            assert!(own.iter().all(|s| warm.contains(s)), "its own shards");
            for gone in three.iter().filter(|m| *m != me) {
                let rest: Vec<String> = three.iter().filter(|m| *m != gone).cloned().collect();
                let after = assign(16, &rest);
                for shard in 0..16u32 {
                    if after[shard as usize] == *me {
                        assert!(
                            warm.contains(&shard),
                            "{me} would gain {shard} if {gone} left"
                        );
                    }
                }
            }
            // About half of the other members' shards besides its own, not all of them.
            let extra = warm.len() - own.len();
            assert!((3..=8).contains(&extra), "{me}: {warm:?} (own {own:?})");
        }
        // Classic leader election: the follower keeps the one shard warm.
        let two = members(&["op-a-1x2y", "op-b-3z4w"]);
        assert_eq!(standby(1, &two, &two[0]), vec![0]);
        assert_eq!(standby(1, &two, &two[1]), vec![0]);
        assert_eq!(
            standby(16, &three[..1], &three[0]),
            (0..16).collect::<Vec<_>>(),
            "alone"
        );
        assert!(standby(16, &three, "not-a-member").is_empty());
    }
}
