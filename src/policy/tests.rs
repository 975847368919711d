use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector, Toleration};

use super::*;
use crate::crd::{ComponentSecurity, VecodexSetSpec};

fn seed() -> VecodexSet {
    let yaml = include_str!("../../deploy/samples/vecodexset-example.yaml");
    let mut set: VecodexSet = serde_saphyr::from_str(yaml).expect("seed example parses");
    set.metadata.namespace = Some("tenant-7".into());
    set
}

fn broken(policy: &Policy, f: impl FnOnce(&mut VecodexSetSpec)) -> Vec<String> {
    let mut set = seed();
    f(&mut set.spec);
    check(&set, policy)
        .iter()
        .map(|e| e.field.clone())
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_seed_example_keeps_the_default_policy() {
    assert_eq!(check(&seed(), &Policy::default()), vec![]);
}

#[test]
fn snippet_annotations_are_denied_by_default_in_any_case() {
    let defaults = Policy::default();
    for key in [
        "nginx.ingress.kubernetes.io/configuration-snippet",
        "nginx.ingress.kubernetes.io/server-snippet",
        "nginx.ingress.kubernetes.io/auth-snippet",
        "nginx.ingress.kubernetes.io/stream-snippet",
        "nginx.ingress.kubernetes.io/modsecurity-snippet",
        "NGINX.ingress.kubernetes.io/Server-Snippet",
    ] {
        let fields = broken(&defaults, |s| {
            s.ingress.as_mut().unwrap().annotations = Some(map(&[(key, "return 200;")]))
        });
        assert_eq!(fields, [format!("spec.ingress.annotations.{key}")], "{key}");
    }
    // Other annotations, including the gRPC backend override, pass.
    assert!(
        broken(&defaults, |s| {
            s.ingress.as_mut().unwrap().annotations = Some(map(&[
                ("nginx.ingress.kubernetes.io/backend-protocol", "GRPCS"),
                ("nginx.ingress.kubernetes.io/proxy-body-size", "8m"),
            ]))
        })
        .is_empty()
    );
    let allowed = Policy {
        allow_snippet_annotations: true,
        ..Policy::default()
    };
    assert!(
        broken(&allowed, |s| {
            s.ingress.as_mut().unwrap().annotations =
                Some(map(&[("nginx.ingress.kubernetes.io/server-snippet", "x")]))
        })
        .is_empty()
    );
}

#[test]
fn annotation_allow_and_deny_lists() {
    let policy = Policy {
        ingress_annotations_allowed: vec!["nginx.ingress.kubernetes.io/*".into()],
        ingress_annotations_denied: vec![
            "nginx.ingress.kubernetes.io/whitelist-source-range".into(),
        ],
        ..Policy::default()
    };
    let fields = broken(&policy, |s| {
        s.ingress.as_mut().unwrap().annotations = Some(map(&[
            ("nginx.ingress.kubernetes.io/proxy-body-size", "8m"),
            (
                "nginx.ingress.kubernetes.io/whitelist-source-range",
                "0.0.0.0/0",
            ),
            ("example.com/other", "x"),
        ]))
    });
    assert_eq!(
        fields,
        [
            "spec.ingress.annotations.example.com/other",
            "spec.ingress.annotations.nginx.ingress.kubernetes.io/whitelist-source-range",
        ]
    );
}

#[test]
fn reserved_pod_keys_are_denied_unless_allowed() {
    let fields = broken(&Policy::default(), |s| {
        s.searcher.pod_labels = Some(map(&[("kubernetes.io/metadata.name", "x"), ("team", "a")]));
        s.writer.pod_annotations = Some(map(&[
            ("cluster-autoscaler.kubernetes.io/safe-to-evict", "true"),
            ("node.k8s.io/x", "y"),
            ("example.com/ok", "z"),
        ]));
    });
    assert_eq!(
        fields,
        [
            "spec.writer.podAnnotations.cluster-autoscaler.kubernetes.io/safe-to-evict",
            "spec.writer.podAnnotations.node.k8s.io/x",
            "spec.searcher.podLabels.kubernetes.io/metadata.name",
        ]
    );
    let policy = Policy {
        reserved_pod_keys_allowed: vec!["cluster-autoscaler.kubernetes.io/safe-to-evict".into()],
        ..Policy::default()
    };
    assert!(
        broken(&policy, |s| s.writer.pod_annotations = Some(map(&[(
            "cluster-autoscaler.kubernetes.io/safe-to-evict",
            "true"
        )])))
        .is_empty()
    );
    assert!(!is_reserved_key("notkubernetes.io/x"));
    assert!(!is_reserved_key("no-slash"));
}

#[test]
fn secret_references_are_allowed_by_default_and_can_be_denied() {
    let secret_env = |s: &mut VecodexSetSpec| {
        s.writer.env = Some(vec![EnvVar {
            name: "AWS_SECRET_ACCESS_KEY".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "s3".into(),
                    key: "secret".into(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
        }]);
        s.image_pull_secrets = Some(vec![Default::default()]);
        s.ingress.as_mut().unwrap().tls_secret_name = Some("tls".into());
    };
    assert!(broken(&Policy::default(), secret_env).is_empty());
    let deny = Policy {
        allow_env_secret_refs: false,
        allow_image_pull_secrets: false,
        allow_tls_secrets: false,
        ..Policy::default()
    };
    assert_eq!(
        broken(&deny, secret_env),
        [
            "spec.writer.env[0].valueFrom.secretKeyRef",
            "spec.ingress.tlsSecretName",
            "spec.imagePullSecrets",
        ]
    );
}

#[test]
fn images_must_be_under_an_allowed_prefix_at_a_boundary() {
    let policy = Policy {
        allowed_image_prefixes: vec!["registry.example.com/vecodex".into()],
        ..Policy::default()
    };
    let with = |image: &str| {
        let image = image.to_owned();
        broken(&policy, move |s| s.searcher.image = image)
    };
    assert!(
        with("registry.example.com/vecodex/app:1.0").contains(&"spec.coordinator.image".to_owned())
    );
    let mut ok = seed();
    for spec in [
        &mut ok.spec.coordinator,
        &mut ok.spec.writer,
        &mut ok.spec.searcher,
    ] {
        spec.image = "registry.example.com/vecodex/app:1.0".into();
    }
    assert!(check(&ok, &policy).is_empty());
    ok.spec.searcher.image = "registry.example.com/vecodex-evil/app:1.0".into();
    assert_eq!(
        check(&ok, &policy)
            .iter()
            .map(|e| e.field.as_str())
            .collect::<Vec<_>>(),
        ["spec.searcher.image"]
    );
    ok.spec.searcher.image = "registry.example.com/vecodex:2.0".into();
    assert!(check(&ok, &policy).is_empty());
    // A registry prefix does not admit the same host on another port.
    let registry = Policy {
        allowed_image_prefixes: vec!["registry.example.com".into()],
        ..Policy::default()
    };
    ok.spec.searcher.image = "registry.example.com:5000/vecodex/app:1.0".into();
    assert_eq!(
        check(&ok, &registry)
            .iter()
            .map(|e| e.field.as_str())
            .collect::<Vec<_>>(),
        ["spec.searcher.image"]
    );
}

#[test]
fn toleration_keys_and_root_and_hosts() {
    let policy = Policy {
        allowed_toleration_keys: vec!["nvidia.com/gpu".into()],
        ingress_host_pattern: Some("{namespace}.search.example.com".into()),
        ..Policy::default()
    };
    let fields = broken(&policy, |s| {
        s.searcher.tolerations = Some(vec![
            Toleration {
                key: Some("nvidia.com/gpu".into()),
                operator: Some("Exists".into()),
                ..Toleration::default()
            },
            Toleration {
                operator: Some("Exists".into()),
                ..Toleration::default()
            },
        ]);
        s.writer.security_context = Some(ComponentSecurity {
            run_as_user: Some(0),
            ..ComponentSecurity::default()
        });
        s.ingress.as_mut().unwrap().host = "other.search.example.com".into();
    });
    assert_eq!(
        fields,
        [
            "spec.writer.securityContext.runAsUser",
            "spec.searcher.tolerations[1].key",
            "spec.ingress.host",
        ]
    );
    for host in [
        "tenant-7.search.example.com",
        "a.tenant-7.search.example.com",
        "*.tenant-7.search.example.com",
    ] {
        let host = host.to_owned();
        assert!(broken(&policy, move |s| s.ingress.as_mut().unwrap().host = host).is_empty());
    }
    let root = Policy {
        allow_run_as_root: true,
        ..Policy::default()
    };
    assert!(
        broken(&root, |s| s.writer.security_context =
            Some(ComponentSecurity {
                run_as_user: Some(0),
                ..ComponentSecurity::default()
            }))
        .is_empty()
    );
}
