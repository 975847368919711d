//! Test data: namespaces named as multi-tenant clusters name them, and replica identities as
//! the chart makes them. Deterministic, so a failure replays.

use super::hash::mix;

/// A deterministic stream of 64-bit values (splitmix64).
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` namespaces of each naming family: prefix-N, N-suffix, zero-padded prefix-NNNN,
/// prefix-N-suffix, random DNS labels and UUIDs.
pub fn families(n: usize) -> Vec<(&'static str, Vec<String>)> {
    let mut random = Stream(0x5eed);
    let dns: Vec<String> = (0..n)
        .map(|_| {
            let len = 3 + random.below(12);
            (0..len)
                .map(|_| (b'a' + random.below(26) as u8) as char)
                .collect()
        })
        .collect();
    let uuids: Vec<String> = (0..n)
        .map(|_| {
            let (a, b) = (random.next(), random.next());
            format!(
                "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xfff,
                0x8000 | (b >> 48) & 0x3fff,
                b & 0xffff_ffff_ffff
            )
        })
        .collect();
    vec![
        ("prefix-N", (0..n).map(|i| format!("tenant-{i}")).collect()),
        ("N-suffix", (0..n).map(|i| format!("{i}-tenant")).collect()),
        (
            "prefix-NNNN",
            (0..n).map(|i| format!("ns-{i:04}")).collect(),
        ),
        (
            "prefix-N-suffix",
            (0..n).map(|i| format!("team-{i}-prod")).collect(),
        ),
        ("dns-label", dns),
        ("uuid", uuids),
    ]
}

/// `trials` lists of `n` replica identities: a pod name and a random suffix, as
/// `default_identity` makes them.
pub fn identities(trials: usize, n: usize) -> Vec<Vec<String>> {
    let mut random = Stream(0x1d);
    (0..trials)
        .map(|_| {
            let pod = format!("vecodex-operator-{:010x}", random.next() & 0xff_ffff_ffff);
            (0..n)
                .map(|_| {
                    format!(
                        "{pod}-{:05x}-{:06x}",
                        random.next() & 0xf_ffff,
                        random.next() & 0xff_ffff
                    )
                })
                .collect()
        })
        .collect()
}
