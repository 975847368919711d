use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use super::{BuildError, child_meta, child_name};
use crate::crd::{Component, ComponentSpec, VecodexSet};

/// Where the rendered config is mounted, and its file name (`--config-path` points at it).
pub const CONFIG_MOUNT_PATH: &str = "/etc/vecodex";
pub const CONFIG_FILE: &str = "config.json";

pub fn config_map_name(set: &str, component: Component) -> String {
    child_name(set, &format!("{}-config", component.as_str()))
}

/// The config file of a component: its `config` object as JSON with sorted keys (stable, so
/// its checksum only changes when the content does). `None` when there is no object config.
pub fn render_config(spec: &ComponentSpec) -> Option<String> {
    match &spec.config {
        Some(value @ serde_json::Value::Object(_)) => serde_json::to_string_pretty(value).ok(),
        _ => None,
    }
}

pub fn config_map(
    set: &VecodexSet,
    component: Component,
    rendered: String,
) -> Result<ConfigMap, BuildError> {
    Ok(ConfigMap {
        metadata: child_meta(
            set,
            config_map_name(&set.name_any(), component),
            Some(component),
        )?,
        data: Some(BTreeMap::from([(CONFIG_FILE.to_owned(), rendered)])),
        ..ConfigMap::default()
    })
}
