use super::*;
use crate::crd::VecodexSetSpec;

fn seed() -> VecodexSet {
    let yaml = include_str!("../../deploy/samples/vecodexset-example.yaml");
    serde_saphyr::from_str(yaml).expect("seed example parses")
}

fn errors_of(f: impl FnOnce(&mut VecodexSetSpec)) -> Vec<String> {
    let mut set = seed();
    f(&mut set.spec);
    validate(&set, &Limits { max_replicas: 10 })
        .iter()
        .map(|e| e.field.clone())
        .collect()
}

#[test]
fn seed_example_is_valid() {
    assert_eq!(validate(&seed(), &Limits::default()), vec![]);
}

#[test]
fn each_invalid_field_is_named() {
    assert_eq!(
        errors_of(|s| s.writer.image = "Bad Image!!".into()),
        ["spec.writer.image"]
    );
    assert_eq!(
        errors_of(|s| s.ingress.as_mut().unwrap().host = "not_a_host".into()),
        ["spec.ingress.host"]
    );
    assert_eq!(
        errors_of(|s| {
            let r = s.searcher.resources.as_mut().unwrap();
            r.requests.as_mut().unwrap().insert(
                "cpu".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()),
            );
        }),
        ["spec.searcher.resources.requests.cpu"]
    );
    assert_eq!(
        errors_of(|s| s.searcher.replicas = Some(11)),
        ["spec.searcher.replicas"]
    );
    assert_eq!(
        errors_of(|s| s.coordinator.config = Some(serde_json::json!("text"))),
        ["spec.coordinator.config"]
    );
    assert_eq!(
        errors_of(|s| s.coordinator.metrics_port = s.coordinator.port),
        ["spec.coordinator.metricsPort"]
    );
    assert_eq!(
        errors_of(|s| s.etcd_endpoint = "etcd:2379".into()),
        ["spec.etcdEndpoint"]
    );
    assert_eq!(
        errors_of(|s| s.writer.pod_labels =
            Some([("app.kubernetes.io/instance".into(), "x".into())].into())),
        ["spec.writer.podLabels.app.kubernetes.io/instance"]
    );
    assert_eq!(
        errors_of(|s| {
            s.writer.env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
                name: "POD_IP".into(),
                ..Default::default()
            }])
        }),
        ["spec.writer.env[0].name"]
    );
    assert_eq!(
        errors_of(|s| {
            s.searcher.tolerations = Some(vec![k8s_openapi::api::core::v1::Toleration {
                operator: Some("Sometimes".into()),
                ..Default::default()
            }])
        }),
        ["spec.searcher.tolerations[0].operator"]
    );
    let bad_quantity = errors_of(|s| {
        s.writer
            .resources
            .as_mut()
            .unwrap()
            .limits
            .as_mut()
            .unwrap()
            .insert(
                "memory".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("lots".into()),
            );
    });
    assert_eq!(bad_quantity, ["spec.writer.resources.limits.memory"]);
}

#[test]
fn several_errors_are_all_reported() {
    let errors = errors_of(|s| {
        s.writer.image = "upper/CASE".into();
        s.searcher.replicas = Some(1000);
    });
    assert_eq!(errors, ["spec.writer.image", "spec.searcher.replicas"]);
}

#[test]
fn image_references() {
    for ok in [
        "nginx",
        "nginx:1.25",
        "library/nginx:latest",
        "ghcr.io/vecodex/searcher:v1.2.3",
        "localhost:5000/a/b_c__d-e:TAG_1",
        "registry.example.com:443/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "vecodex-coordinator-image:latest",
    ] {
        assert_eq!(check_image(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "Bad Image!!",
        "nginx:",
        "nginx:-x",
        "UPPER",
        "a//b",
        "a/b/",
        "ngi$nx",
        "nginx@sha256:xyz",
        "-a",
    ] {
        assert!(check_image(bad).is_err(), "{bad} should be rejected");
    }
}

#[test]
fn ingress_hosts() {
    for ok in [
        "search.vecodex.link",
        "*.vecodex.link",
        "localhost",
        "a-b.c",
    ] {
        assert!(is_ingress_host(ok), "{ok}");
    }
    for bad in [
        "not_a_host",
        "UPPER.example.com",
        "-a.b",
        "a..b",
        "1.2.3.4",
        "",
        "*",
    ] {
        assert!(!is_ingress_host(bad), "{bad}");
    }
}

#[test]
fn set_names_must_make_valid_service_names() {
    let mut set = seed();
    set.metadata.name = Some("1cluster".into());
    let errors = validate(&set, &Limits::default());
    assert_eq!(errors[0].field, "metadata.name");
}

mod arbitrary {
    use proptest::prelude::*;

    use super::*;
    use crate::children;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

    fn component(
        image: String,
        replicas: i32,
        port: i32,
        metrics: i32,
        cpu: (String, String),
        config: Option<serde_json::Value>,
    ) -> crate::crd::ComponentSpec {
        let mut set = seed();
        let mut c = set.spec.writer.clone();
        c.image = image;
        c.replicas = Some(replicas);
        c.port = port;
        c.metrics_port = metrics;
        c.config = config;
        if let Some(r) = c.resources.as_mut() {
            r.requests
                .get_or_insert_default()
                .insert("cpu".into(), K8sQuantity(cpu.0));
            r.limits
                .get_or_insert_default()
                .insert("cpu".into(), K8sQuantity(cpu.1));
        }
        set.spec.writer = c.clone();
        c
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the API server might hand us, validation and the builders never panic, and a
        /// spec that passes validation always builds.
        #[test]
        fn no_spec_panics_validation_or_the_builders(
            name in "[a-z0-9.-]{1,80}",
            image in ".{0,40}",
            replicas in any::<i32>(),
            port in any::<i32>(),
            metrics in any::<i32>(),
            cpu in (".{0,8}", ".{0,8}"),
            config in prop::option::of(json_value()),
            host in ".{0,40}",
            user in prop::option::of(0i64..3),
        ) {
            let mut set = seed();
            set.metadata.name = Some(name);
            set.metadata.uid = Some("u".into());
            set.spec.searcher = component(image, replicas, port, metrics, cpu, config);
            set.spec.writer.security_context = Some(crate::crd::ComponentSecurity {
                run_as_user: user,
                ..Default::default()
            });
            if let Some(ingress) = set.spec.ingress.as_mut() {
                ingress.host = host;
            }
            let errors = validate(&set, &Limits::default());
            let built = children::build(&set);
            if errors.is_empty() {
                prop_assert!(built.is_ok());
                // And the default policy lets no pod break a restricted rule.
                if crate::policy::check(&set, &crate::policy::Policy::default()).is_empty() {
                    for d in &built.as_ref().unwrap().deployments {
                        let template = &d.spec.as_ref().unwrap().template;
                        let broken = children::pod_security::restricted_violations(template);
                        prop_assert!(broken.is_empty(), "{broken:?}");
                    }
                }
            }
        }
    }
}
