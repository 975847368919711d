use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use super::*;
use crate::crd::VecodexSetSpec;

/// The seed example as the API server returns it: namespaced, with a uid and defaults.
pub(crate) fn seed_set() -> VecodexSet {
    let yaml = include_str!("../../deploy/samples/vecodexset-example.yaml");
    let mut set: VecodexSet = serde_saphyr::from_str(yaml).expect("seed example parses");
    set.meta_mut().uid = Some("0b5e7f2c-1111-2222-3333-444455556666".to_owned());
    set
}

fn with_spec(f: impl FnOnce(&mut VecodexSetSpec)) -> VecodexSet {
    let mut set = seed_set();
    f(&mut set.spec);
    set
}

#[test]
fn seed_example_yields_three_deployments_three_services_one_ingress() {
    let d = build(&seed_set()).unwrap();
    assert_eq!(d.deployments.len(), 3);
    assert_eq!(d.services.len(), 3);
    assert!(d.ingress.is_some());
    assert!(d.config_maps.is_empty(), "no config, no ConfigMap");
    let names: Vec<_> = d
        .deployments
        .iter()
        .map(|x| x.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "search-cluster-coordinator",
            "search-cluster-writer",
            "search-cluster-searcher"
        ]
    );
}

#[test]
fn every_child_is_controlled_by_the_set_and_labelled() {
    let set = seed_set();
    let d = build(&set).unwrap();
    let metas = d
        .deployments
        .iter()
        .map(|x| &x.metadata)
        .chain(d.services.iter().map(|x| &x.metadata))
        .chain(d.ingress.iter().map(|x| &x.metadata));
    for meta in metas {
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "VecodexSet");
        assert_eq!(owner.api_version, "apps.vecodex.link/v1alpha1");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(Some(&owner.uid), set.metadata.uid.as_ref());
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY);
        assert_eq!(labels[LABEL_INSTANCE], "search-cluster");
        assert_eq!(meta.namespace.as_deref(), Some("default"));
    }
}

#[test]
fn replicas_left_unset_are_not_written() {
    let mut set = seed_set();
    set.spec.searcher.replicas = None;
    let d = build(&set).unwrap();
    assert_eq!(d.deployments[2].spec.as_ref().unwrap().replicas, None);
    let json = serde_json::to_value(&d.deployments[2]).unwrap();
    assert!(json["spec"].get("replicas").is_none(), "{}", json["spec"]);
    assert_eq!(d.deployments[0].spec.as_ref().unwrap().replicas, Some(1));
}

#[test]
fn containers_can_start() {
    let d = build(&seed_set()).unwrap();
    let searcher = &d.deployments[2];
    let spec = searcher.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        c.command.as_deref(),
        Some(&[DEFAULT_COMMAND.to_owned()][..])
    );
    let args = c.args.clone().unwrap().join(" ");
    assert_eq!(
        args,
        "--mode searcher --listening-port 44400 --hostname $(POD_IP) \
         --etcd-address http://etcd:2379 --s3-host http://minio:9000"
    );
    let env = c.env.as_ref().unwrap();
    assert_eq!(env[0].name, "POD_IP");
    assert_eq!(
        env[0]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "status.podIP"
    );
    let ports: Vec<_> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [("grpc".to_owned(), 44400), ("metrics".to_owned(), 8080)]
    );
    for probe in [&c.readiness_probe, &c.liveness_probe] {
        let tcp = probe.as_ref().unwrap().tcp_socket.as_ref().unwrap();
        assert_eq!(tcp.port, IntOrString::String("grpc".to_owned()));
    }
    assert_eq!(
        c.security_context
            .as_ref()
            .unwrap()
            .allow_privilege_escalation,
        Some(false)
    );
    let annotations = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "8080");
    assert!(!annotations.contains_key(CONFIG_CHECKSUM_ANNOTATION));
}

#[test]
fn gpu_limit_reaches_the_writer_container() {
    let d = build(&seed_set()).unwrap();
    let c = &d.deployments[1]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["nvidia.com/gpu"].0, "1");
}

#[test]
fn selectors_use_only_immutable_labels() {
    let set = with_spec(|s| {
        s.searcher.pod_labels = Some([("team".to_owned(), "a".to_owned())].into());
    });
    let d = build(&set).unwrap();
    let spec = d.deployments[2].spec.as_ref().unwrap();
    let selector = spec.selector.match_labels.as_ref().unwrap();
    assert_eq!(
        selector,
        &selector_labels("search-cluster", Component::Searcher)
    );
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    assert_eq!(pod_labels["team"], "a");
    assert_eq!(
        d.services[2].spec.as_ref().unwrap().selector.as_ref(),
        Some(selector)
    );
}

#[test]
fn config_becomes_a_mounted_config_map_with_a_checksum() {
    let set = with_spec(|s| s.searcher.config = Some(serde_json::json!({"indexes": [{"id": 1}]})));
    let d = build(&set).unwrap();
    assert_eq!(d.config_maps.len(), 1);
    let cm = &d.config_maps[0];
    assert_eq!(
        cm.metadata.name.as_deref(),
        Some("search-cluster-searcher-config")
    );
    let content = &cm.data.as_ref().unwrap()[CONFIG_FILE];
    let parsed: serde_json::Value = serde_json::from_str(content).unwrap();
    assert_eq!(parsed, serde_json::json!({"indexes": [{"id": 1}]}));

    let spec = d.deployments[2].spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    assert_eq!(
        args[args.len() - 2..],
        [
            "--config-path".to_owned(),
            "/etc/vecodex/config.json".to_owned()
        ]
    );
    assert_eq!(
        pod.volumes.as_ref().unwrap()[0]
            .config_map
            .as_ref()
            .unwrap()
            .name,
        "search-cluster-searcher-config"
    );
    let annotations = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(annotations[CONFIG_CHECKSUM_ANNOTATION], checksum(content));

    let changed =
        with_spec(|s| s.searcher.config = Some(serde_json::json!({"indexes": [{"id": 2}]})));
    let d2 = build(&changed).unwrap();
    let a2 = d2.deployments[2]
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap();
    assert_ne!(
        a2[CONFIG_CHECKSUM_ANNOTATION], annotations[CONFIG_CHECKSUM_ANNOTATION],
        "a config change rolls the pods"
    );
}

#[test]
fn services_expose_grpc_and_metrics() {
    let d = build(&seed_set()).unwrap();
    let svc = d.services[0].spec.as_ref().unwrap();
    assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
    let ports: Vec<_> = svc
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.port))
        .collect();
    assert_eq!(
        ports,
        [("grpc".to_owned(), 44400), ("metrics".to_owned(), 8080)]
    );
}

#[test]
fn ingress_routes_grpc_to_the_coordinator() {
    let set = with_spec(|s| {
        let ing = s.ingress.as_mut().unwrap();
        ing.class_name = Some("nginx".to_owned());
        ing.tls_secret_name = Some("search-tls".to_owned());
    });
    let ing = build(&set).unwrap().ingress.unwrap();
    assert_eq!(ing.metadata.name.as_deref(), Some("search-cluster"));
    assert_eq!(
        ing.metadata.annotations.as_ref().unwrap()[GRPC_BACKEND_ANNOTATION.0],
        "GRPC"
    );
    let spec = ing.spec.unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let rule = &spec.rules.unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("search.vecodex.link"));
    let backend = rule.http.as_ref().unwrap().paths[0]
        .backend
        .service
        .clone()
        .unwrap();
    assert_eq!(backend.name, "search-cluster-coordinator");
    assert_eq!(backend.port.unwrap().name.as_deref(), Some("grpc"));
    let tls = &spec.tls.unwrap()[0];
    assert_eq!(tls.secret_name.as_deref(), Some("search-tls"));

    let no_ingress = with_spec(|s| s.ingress = None);
    assert!(build(&no_ingress).unwrap().ingress.is_none());
}

#[test]
fn long_names_stay_within_dns_label_limits() {
    let long = "a".repeat(60);
    let name = child_name(&long, "coordinator-config");
    assert!(name.len() <= 63, "{name}");
    assert!(name.ends_with("-coordinator-config"));
    assert_ne!(
        child_name(&long, "writer"),
        child_name(&format!("{long}b"), "writer")
    );
    assert_eq!(child_name("short", "writer"), "short-writer");
    let label = instance_label(&"b".repeat(100));
    assert!(label.len() <= 63);
}

/// Every child pod template passes every rule of the restricted Pod Security Standard: the
/// samples, and variants with every optional field the CRD has.
#[test]
fn every_pod_passes_the_restricted_profile() {
    use crate::crd::ComponentSecurity;
    let gpu: VecodexSet = {
        let yaml = include_str!("../../deploy/samples/vecodexset-gpu.yaml");
        let mut set: VecodexSet = serde_saphyr::from_str(yaml).expect("GPU sample parses");
        set.meta_mut().uid = Some("u".into());
        set
    };
    let variants = [
        seed_set(),
        gpu,
        with_spec(|s| {
            s.searcher.config = Some(serde_json::json!({"indexes": []}));
            s.writer.security_context = Some(ComponentSecurity {
                run_as_user: Some(1000),
                run_as_group: Some(0),
                fs_group: Some(2000),
            });
            s.coordinator.env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
                name: "X".into(),
                value: Some("1".into()),
                value_from: None,
            }]);
            s.coordinator.pod_annotations = Some([("example.com/a".into(), "b".into())].into());
        }),
    ];
    for set in &variants {
        let built = build(set).unwrap();
        assert_eq!(built.deployments.len(), 3);
        for d in &built.deployments {
            let template = &d.spec.as_ref().unwrap().template;
            assert_eq!(
                pod_security::restricted_violations(template),
                vec![],
                "{:?}",
                d.metadata.name
            );
            let pod = template.spec.as_ref().unwrap();
            assert!(!pod_security::mounts_service_account_token(pod));
            assert!(pod.service_account_name.is_none());
        }
    }
    // The user a component chooses is the pods' user; user 0 drops runAsNonRoot and fails
    // "Running as Non-root user" (policy refuses it unless the admin allows it).
    let root = with_spec(|s| {
        s.writer.security_context = Some(ComponentSecurity {
            run_as_user: Some(0),
            ..Default::default()
        })
    });
    let built = build(&root).unwrap();
    let writer = built
        .deployments
        .iter()
        .find(|d| {
            d.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with("-writer"))
        })
        .unwrap();
    let rules: Vec<&str> =
        pod_security::restricted_violations(&writer.spec.as_ref().unwrap().template)
            .iter()
            .map(|v| v.rule)
            .collect();
    assert_eq!(rules, ["Running as Non-root", "Running as Non-root user"]);
}

#[test]
fn a_set_without_uid_is_an_error_not_a_panic() {
    let mut set = seed_set();
    set.metadata.uid = None;
    assert!(build(&set).is_err());
}

mod names {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::super::{child_name, instance_label, possible_children};
    use crate::crd::Component;
    use crate::validate::is_dns1123_subdomain;

    /// Every name a set's children get, by kind.
    fn names_of(set: &str) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = Component::ALL
            .iter()
            .flat_map(|c| {
                [
                    ("Deployment", child_name(set, c.as_str())),
                    ("Service", child_name(set, c.as_str())),
                ]
            })
            .collect();
        out.extend(
            possible_children(set)
                .config_maps
                .into_iter()
                .map(|n| ("ConfigMap", n)),
        );
        out.push(("Ingress", possible_children(set).ingress));
        out
    }

    proptest! {
        #[test]
        fn derived_names_are_valid_and_never_collide_across_sets(
            sets in prop::collection::hash_set("[a-z]([a-z0-9-]{0,80}[a-z0-9])?", 2..40)
        ) {
            let mut owner: HashMap<(&'static str, String), String> = HashMap::new();
            for set in &sets {
                prop_assert!(instance_label(set).len() <= 63);
                for (kind, name) in names_of(set) {
                    if kind == "Service" || kind == "Deployment" || kind == "ConfigMap" {
                        prop_assert!(name.len() <= 63, "{kind} {name} is too long");
                    }
                    prop_assert!(is_dns1123_subdomain(&name), "{kind} {name} is not a valid name");
                    if let Some(other) = owner.insert((kind, name.clone()), set.clone()) {
                        prop_assert!(other == *set, "{kind} {name} of {set} collides with {other}'s");
                    }
                }
            }
        }
    }
}
