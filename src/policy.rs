//! The admin's policy: what a set may ask for beyond what is valid. The safe defaults hold
//! unless an operator flag (a Helm value) relaxes them; a set that breaks the policy gets no
//! child changed, `Ready=False/PolicyViolation` naming the field and the rule, and a
//! Warning Event.

use crate::crd::{Component, ComponentSpec, VecodexSet};
use crate::validate::FieldError;

/// Prefixes of label and annotation keys that belong to Kubernetes itself.
const RESERVED_DOMAINS: [&str; 2] = ["kubernetes.io", "k8s.io"];
/// ingress-nginx's annotations that splice raw configuration into the shared controller.
const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";
const SNIPPET_SUFFIX: &str = "-snippet";

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Image references must start with one of these (at a `/`, `:` or `@` boundary unless
    /// the prefix ends with `/`); empty: any image.
    pub allowed_image_prefixes: Vec<String>,
    /// `env[].valueFrom.secretKeyRef` in a component.
    pub allow_env_secret_refs: bool,
    /// `spec.imagePullSecrets`.
    pub allow_image_pull_secrets: bool,
    /// `spec.ingress.tlsSecretName`.
    pub allow_tls_secrets: bool,
    /// ingress-nginx's `*-snippet` annotations (CVE-2021-25742).
    pub allow_snippet_annotations: bool,
    /// Ingress annotation keys allowed (exact, or a prefix ending in `*`); empty: any key
    /// the other rules allow.
    pub ingress_annotations_allowed: Vec<String>,
    /// Ingress annotation keys denied (exact, or a prefix ending in `*`).
    pub ingress_annotations_denied: Vec<String>,
    /// Pod label and annotation keys under `kubernetes.io/` or `k8s.io/` (and their
    /// subdomains) a set may still set (exact keys).
    pub reserved_pod_keys_allowed: Vec<String>,
    /// Toleration keys allowed; empty: any.
    pub allowed_toleration_keys: Vec<String>,
    /// Whether a component may run as user 0 (its pods then fail "restricted").
    pub allow_run_as_root: bool,
    /// The hosts a namespace's sets may serve: this host with `{namespace}` replaced, and its
    /// subdomains; none: any host.
    pub ingress_host_pattern: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_image_prefixes: Vec::new(),
            allow_env_secret_refs: true,
            allow_image_pull_secrets: true,
            allow_tls_secrets: true,
            allow_snippet_annotations: false,
            ingress_annotations_allowed: Vec::new(),
            ingress_annotations_denied: Vec::new(),
            reserved_pod_keys_allowed: Vec::new(),
            allowed_toleration_keys: Vec::new(),
            allow_run_as_root: false,
            ingress_host_pattern: None,
        }
    }
}

/// Whether `key` matches a list entry: exactly (ignoring case), or by prefix when the entry
/// ends in `*`.
fn listed(entries: &[String], key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    entries.iter().any(|e| {
        let e = e.to_ascii_lowercase();
        match e.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == e,
        }
    })
}

/// Whether a label or annotation key is under a domain Kubernetes reserves.
pub fn is_reserved_key(key: &str) -> bool {
    let Some((domain, _)) = key.split_once('/') else {
        return false;
    };
    let domain = domain.to_ascii_lowercase();
    RESERVED_DOMAINS
        .iter()
        .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
}

/// Whether an Ingress annotation key is one of ingress-nginx's snippets, in any case.
pub fn is_snippet_annotation(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.starts_with(NGINX_PREFIX) && key.ends_with(SNIPPET_SUFFIX)
}

/// Whether `image` starts with `prefix` at a boundary of its reference: a `/`, or, once the
/// prefix names a repository (it has a `/`), a tag's `:` or a digest's `@`. A registry host
/// alone is not followed by `:`, which would be a port: another registry endpoint.
fn under_prefix(image: &str, prefix: &str) -> bool {
    match image.strip_prefix(prefix) {
        Some(rest) => {
            prefix.ends_with('/')
                || rest.is_empty()
                || rest.starts_with('/')
                || (prefix.contains('/') && rest.starts_with([':', '@']))
        }
        None => false,
    }
}

/// The host a namespace's sets may serve under `pattern`, and whether `host` is it or a
/// subdomain of it.
fn host_allowed(pattern: &str, namespace: &str, host: &str) -> bool {
    let base = pattern
        .replace("{namespace}", namespace)
        .to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    host == base || host.ends_with(&format!(".{base}"))
}

/// Every rule of `policy` the set breaks, in field order; empty when it keeps them all.
pub fn check(set: &VecodexSet, policy: &Policy) -> Vec<FieldError> {
    let mut out = Vec::new();
    let mut push = |field: String, message: String| out.push(FieldError { field, message });
    for component in Component::ALL {
        let path = format!("spec.{component}");
        component_rules(&mut push, &path, set.spec.component(component), policy);
    }
    if let Some(ingress) = &set.spec.ingress {
        if let Some(pattern) = &policy.ingress_host_pattern {
            let ns = set.metadata.namespace.as_deref().unwrap_or_default();
            if !host_allowed(pattern, ns, &ingress.host) {
                push(
                    "spec.ingress.host".into(),
                    format!(
                        "{:?} is not {} or a subdomain of it (--ingress-host-pattern {pattern})",
                        ingress.host,
                        pattern.replace("{namespace}", ns)
                    ),
                );
            }
        }
        for key in ingress.annotations.iter().flat_map(|a| a.keys()) {
            let field = format!("spec.ingress.annotations.{key}");
            if is_snippet_annotation(key) && !policy.allow_snippet_annotations {
                push(
                    field,
                    "ingress-nginx snippet annotations inject configuration into the shared controller; denied unless --allow-snippet-annotations".into(),
                );
            } else if listed(&policy.ingress_annotations_denied, key) {
                push(field, "denied by --ingress-annotations-denied".into());
            } else if !policy.ingress_annotations_allowed.is_empty()
                && !listed(&policy.ingress_annotations_allowed, key)
            {
                push(field, "not in --ingress-annotations-allowed".into());
            }
        }
        if ingress.tls_secret_name.is_some() && !policy.allow_tls_secrets {
            push(
                "spec.ingress.tlsSecretName".into(),
                "Secret references are denied (--allow-tls-secrets=false)".into(),
            );
        }
    }
    if set
        .spec
        .image_pull_secrets
        .as_ref()
        .is_some_and(|s| !s.is_empty())
        && !policy.allow_image_pull_secrets
    {
        push(
            "spec.imagePullSecrets".into(),
            "Secret references are denied (--allow-image-pull-secrets=false)".into(),
        );
    }
    out
}

fn component_rules(
    push: &mut impl FnMut(String, String),
    path: &str,
    spec: &ComponentSpec,
    policy: &Policy,
) {
    if !policy.allowed_image_prefixes.is_empty()
        && !policy
            .allowed_image_prefixes
            .iter()
            .any(|p| under_prefix(&spec.image, p))
    {
        push(
            format!("{path}.image"),
            format!(
                "{:?} is not under an allowed prefix (--allowed-image-prefixes: {})",
                spec.image,
                policy.allowed_image_prefixes.join(", ")
            ),
        );
    }
    if !policy.allow_env_secret_refs {
        for (i, env) in spec.env.iter().flatten().enumerate() {
            if env
                .value_from
                .as_ref()
                .is_some_and(|v| v.secret_key_ref.is_some())
            {
                push(
                    format!("{path}.env[{i}].valueFrom.secretKeyRef"),
                    "Secret references are denied (--allow-env-secret-refs=false)".into(),
                );
            }
        }
    }
    for (what, keys) in [
        ("podLabels", spec.pod_labels.as_ref()),
        ("podAnnotations", spec.pod_annotations.as_ref()),
    ] {
        for key in keys.iter().flat_map(|m| m.keys()) {
            if is_reserved_key(key) && !listed(&policy.reserved_pod_keys_allowed, key) {
                push(
                    format!("{path}.{what}.{key}"),
                    "keys under kubernetes.io/ and k8s.io/ belong to Kubernetes; denied unless in --reserved-pod-keys-allowed".into(),
                );
            }
        }
    }
    if !policy.allowed_toleration_keys.is_empty() {
        for (i, t) in spec.tolerations.iter().flatten().enumerate() {
            let key = t.key.as_deref().unwrap_or_default();
            if key.is_empty() || !policy.allowed_toleration_keys.iter().any(|k| k == key) {
                push(
                    format!("{path}.tolerations[{i}].key"),
                    format!(
                        "{key:?} is not an allowed toleration key (--allowed-toleration-keys: {}); an empty key tolerates every taint",
                        policy.allowed_toleration_keys.join(", ")
                    ),
                );
            }
        }
    }
    if !policy.allow_run_as_root
        && spec.security_context.as_ref().and_then(|s| s.run_as_user) == Some(0)
    {
        push(
            format!("{path}.securityContext.runAsUser"),
            "0 runs the pods as root, which fails the restricted Pod Security Standard; allowed only with --allow-run-as-root".into(),
        );
    }
}

#[cfg(test)]
mod tests;
