//! One home for the names and selectors of a group's Leases: `<group>-shard-NN` for each
//! shard, `<group>-member-<identity>` for each replica's heartbeat, all labelled
//! `app.kubernetes.io/name=<group>`.

/// The label naming a Lease's group.
pub const GROUP_LABEL: &str = "app.kubernetes.io/name";

/// The label selector of one group's Leases.
pub fn group_selector(group: &str) -> String {
    format!("{GROUP_LABEL}={group}")
}

/// `<group>-member-`: the start of every heartbeat Lease name of a group.
pub fn member_prefix(group: &str) -> String {
    format!("{group}-member-")
}

/// `<group>-shard-`: the start of every shard Lease name of a group.
pub fn shard_prefix(group: &str) -> String {
    format!("{group}-shard-")
}

/// `<group>-shard-07`: zero-padded so the Leases sort by shard.
pub fn shard_lease_name(group: &str, shard: u32, shards: u32) -> String {
    let width = (shards.max(1) - 1).to_string().len().max(2);
    format!("{}{shard:0width$}", shard_prefix(group))
}
