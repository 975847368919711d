//! Semantic checks the CRD schema cannot express. A set that fails them gets no child
//! changed, a `Ready=False/InvalidSpec` condition naming the field, and a Warning Event.

use std::collections::{BTreeMap, HashSet};

use kube::ResourceExt;

use crate::children::RESERVED_LABELS;
use crate::crd::{Component, ComponentSpec, VecodexSet};
use crate::quantity::Quantity;

/// One problem: the field path (as `kubectl explain` spells it) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Limits set by the operator's configuration rather than the schema.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_replicas: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_replicas: 100 }
    }
}

/// All problems of a set, in field order; empty when the set is valid.
pub fn validate(set: &VecodexSet, limits: &Limits) -> Vec<FieldError> {
    let mut errors = Errors::default();
    let name = set.name_any();
    if !is_dns1035_label_prefix(&name) {
        errors.push(
            "metadata.name",
            "must consist of lower case letters, digits and '-', start with a letter and end \
             with a letter or digit (it names Services, which are DNS-1035 labels)",
        );
    }
    for component in Component::ALL {
        component_errors(
            &mut errors,
            &format!("spec.{component}"),
            set.spec.component(component),
            limits,
        );
    }
    if let Some(ingress) = &set.spec.ingress {
        if !is_ingress_host(&ingress.host) {
            errors.push(
                "spec.ingress.host",
                format!("{:?} is not a DNS name (lower case, e.g. search.example.com, optionally *.example.com)", ingress.host),
            );
        }
        if let Some(class) = &ingress.class_name
            && !is_dns1123_subdomain(class)
        {
            errors.push(
                "spec.ingress.className",
                format!("{class:?} is not a DNS-1123 subdomain"),
            );
        }
        if let Some(secret) = &ingress.tls_secret_name
            && !is_dns1123_subdomain(secret)
        {
            errors.push(
                "spec.ingress.tlsSecretName",
                format!("{secret:?} is not a valid Secret name"),
            );
        }
        annotation_errors(
            &mut errors,
            "spec.ingress.annotations",
            ingress.annotations.as_ref(),
        );
    }
    for (field, value) in [
        ("spec.etcdEndpoint", &set.spec.etcd_endpoint),
        ("spec.s3Endpoint", &set.spec.s3_endpoint),
    ] {
        if !is_http_url(value) {
            errors.push(
                field,
                format!("{value:?} must be an http:// or https:// URL"),
            );
        }
    }
    for (i, secret) in set.spec.image_pull_secrets.iter().flatten().enumerate() {
        if !is_dns1123_subdomain(&secret.name) {
            errors.push(
                format!("spec.imagePullSecrets[{i}].name"),
                format!("{:?} is not a valid Secret name", secret.name),
            );
        }
    }
    errors.0
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

fn component_errors(errors: &mut Errors, path: &str, spec: &ComponentSpec, limits: &Limits) {
    if let Err(why) = check_image(&spec.image) {
        errors.push(
            format!("{path}.image"),
            format!("{:?} is not a valid image reference: {why}", spec.image),
        );
    }
    if let Some(replicas) = spec.replicas
        && replicas > limits.max_replicas
    {
        errors.push(
            format!("{path}.replicas"),
            format!(
                "{replicas} is above the operator's limit of {} (--max-replicas)",
                limits.max_replicas
            ),
        );
    }
    if spec.port == spec.metrics_port {
        errors.push(
            format!("{path}.metricsPort"),
            format!("must differ from port ({})", spec.port),
        );
    }
    if let Some(resources) = &spec.resources {
        let parse_all = |kind: &str,
                         map: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >,
                         errors: &mut Errors| {
            let mut parsed = BTreeMap::new();
            for (name, q) in map.iter().flatten() {
                match Quantity::parse(&q.0) {
                    Some(v) if v >= Quantity::ZERO => {
                        parsed.insert(name.clone(), v);
                    }
                    Some(_) => errors.push(
                        format!("{path}.resources.{kind}.{name}"),
                        "must not be negative",
                    ),
                    None => errors.push(
                        format!("{path}.resources.{kind}.{name}"),
                        format!("{:?} is not a quantity (e.g. 500m, 1, 128Mi)", q.0),
                    ),
                }
            }
            parsed
        };
        let requests = parse_all("requests", &resources.requests, errors);
        let limits_ = parse_all("limits", &resources.limits, errors);
        for (name, request) in &requests {
            if let Some(limit) = limits_.get(name)
                && request > limit
            {
                errors.push(
                    format!("{path}.resources.requests.{name}"),
                    "must be less than or equal to the limit".to_owned(),
                );
            }
        }
    }
    if let Some(config) = &spec.config
        && !config.is_object()
    {
        errors.push(format!("{path}.config"), "must be a JSON object");
    }
    if let Some(labels) = &spec.pod_labels {
        for (key, value) in labels {
            if RESERVED_LABELS.contains(&key.as_str()) {
                errors.push(
                    format!("{path}.podLabels.{key}"),
                    "is reserved for the operator's selectors",
                );
            } else if !is_qualified_name(key) {
                errors.push(
                    format!("{path}.podLabels"),
                    format!("{key:?} is not a valid label key"),
                );
            } else if !is_label_value(value) {
                errors.push(
                    format!("{path}.podLabels.{key}"),
                    format!("{value:?} is not a valid label value"),
                );
            }
        }
    }
    if let Some(selector) = &spec.node_selector {
        for (key, value) in selector {
            if !is_qualified_name(key) || !is_label_value(value) {
                errors.push(
                    format!("{path}.nodeSelector.{key}"),
                    "is not a valid label key and value",
                );
            }
        }
    }
    annotation_errors(
        errors,
        &format!("{path}.podAnnotations"),
        spec.pod_annotations.as_ref(),
    );
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        let operator = t.operator.as_deref().unwrap_or("Equal");
        if !matches!(operator, "Equal" | "Exists") {
            errors.push(
                format!("{path}.tolerations[{i}].operator"),
                format!("{operator:?} must be Equal or Exists"),
            );
        } else if operator == "Exists" && t.value.as_deref().is_some_and(|v| !v.is_empty()) {
            errors.push(
                format!("{path}.tolerations[{i}].value"),
                "must be empty when operator is Exists",
            );
        }
        if let Some(effect) = t.effect.as_deref()
            && !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute")
        {
            errors.push(
                format!("{path}.tolerations[{i}].effect"),
                format!("{effect:?} must be NoSchedule, PreferNoSchedule or NoExecute"),
            );
        }
    }
    let mut seen = HashSet::from(["POD_IP"]);
    for (i, env) in spec.env.iter().flatten().enumerate() {
        if !is_env_name(&env.name) {
            errors.push(
                format!("{path}.env[{i}].name"),
                format!("{:?} is not a valid variable name", env.name),
            );
        } else if !seen.insert(env.name.as_str()) {
            errors.push(
                format!("{path}.env[{i}].name"),
                format!(
                    "{:?} is set twice (POD_IP is set by the operator)",
                    env.name
                ),
            );
        }
    }
}

fn annotation_errors(
    errors: &mut Errors,
    path: &str,
    annotations: Option<&BTreeMap<String, String>>,
) {
    for key in annotations.into_iter().flat_map(|a| a.keys()) {
        if !is_qualified_name(key) {
            errors.push(path, format!("{key:?} is not a valid annotation key"));
        }
    }
}

fn is_label_part(s: &str) -> bool {
    // ([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9], at most 63
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label or annotation key: `[prefix/]name`.
pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_label_part(name),
        None => is_label_part(s),
    }
}

pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_part(s)
}

/// A part of a DNS-1123 subdomain between dots. (Kubernetes' `IsDNS1123Subdomain` limits only
/// the whole name, to 253 characters, not each part.)
fn is_dns1123_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_part)
}

/// A DNS-1035 label of any length (derived names are shortened with a hash when needed).
fn is_dns1035_label_prefix(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// An Ingress host: a DNS-1123 subdomain, optionally with a leading `*.` wildcard.
pub fn is_ingress_host(s: &str) -> bool {
    let rest = s.strip_prefix("*.").unwrap_or(s);
    rest.contains(|c: char| c.is_ascii_alphabetic()) && is_dns1123_subdomain(rest)
}

fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.contains(|c: char| c.is_whitespace() || c.is_control()))
}

/// Checks an image reference against the distribution reference grammar:
/// `[domain[:port]/]path[:tag][@digest]`, path components lower case.
pub fn check_image(image: &str) -> Result<(), &'static str> {
    if image.is_empty() {
        return Err("empty");
    }
    if image.len() > 512 {
        return Err("longer than 512 characters");
    }
    if image.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("contains white space");
    }
    let (name_tag, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let (algo, hex) = digest
            .split_once(':')
            .ok_or("digest must be algorithm:hex")?;
        if algo.is_empty()
            || !algo
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'_' | b'-'))
            || hex.len() < 32
            || !hex.bytes().all(|c| c.is_ascii_hexdigit())
        {
            return Err("invalid digest");
        }
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let b = tag.as_bytes();
        if b.is_empty()
            || b.len() > 128
            || !(b[0].is_ascii_alphanumeric() || b[0] == b'_')
            || !b
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        {
            return Err("invalid tag");
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        let looks_like_domain = first.contains(['.', ':'])
            || first == "localhost"
            || first.bytes().any(|c| c.is_ascii_uppercase());
        if looks_like_domain {
            let (host, port) = first.split_once(':').unwrap_or((first, ""));
            let host_ok = !host.is_empty()
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            let port_ok =
                port.is_empty() || (port.len() <= 5 && port.bytes().all(|c| c.is_ascii_digit()));
            if !host_ok || !port_ok {
                return Err("invalid registry host");
            }
            parts.remove(0);
        }
    }
    for part in parts {
        if !is_path_component(part) {
            return Err(
                "repository path components must be lower case letters, digits and separators (. _ __ -)",
            );
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

#[cfg(test)]
mod tests;
