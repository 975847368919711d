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
        errors_of(|s| s.searcher.replicas = 11),
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
        s.searcher.replicas = 1000;
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
