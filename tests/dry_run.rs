//! Property test: every spec the generator calls valid passes `validate`, and the API server
//! accepts the set and every child built from it (server-side dry run, nothing persisted).
//!
//! Strings are never empty: the locally built v1.20.2 API server turns `""` inside custom
//! objects into `null` and then rejects it against the schema (see README, known limits).

mod common;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::core::v1::{EnvVar, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::json;
use vecodex_operator::children::{self, FIELD_MANAGER};
use vecodex_operator::crd::{
    ComponentSecurity, ComponentSpec, ImagePullPolicy, IngressSpec, VecodexSet, VecodexSetSpec,
};
use vecodex_operator::validate::{Limits, validate};

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,10}[a-z0-9])?"
}

fn image() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop_oneof![
            Just("ghcr.io/".to_owned()),
            Just("localhost:5000/".to_owned()),
            Just("registry.example.com/".to_owned())
        ]),
        "[a-z0-9]{1,8}(/[a-z0-9]{1,8}([._-][a-z0-9]{1,4})?){0,2}",
        prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}"),
    )
        .prop_map(|(registry, path, tag)| {
            format!(
                "{}{}{}",
                registry.unwrap_or_default(),
                path,
                tag.map(|t| format!(":{t}")).unwrap_or_default()
            )
        })
}

fn resources() -> impl Strategy<Value = Option<ResourceRequirements>> {
    prop::option::of(
        (1u32..4000, 0u32..4000, 1u32..4096, prop::bool::ANY).prop_map(|(cpu, extra, mem, gpu)| {
            let mut limits = BTreeMap::from([
                ("cpu".to_owned(), Quantity(format!("{}m", cpu + extra))),
                ("memory".to_owned(), Quantity(format!("{mem}Mi"))),
            ]);
            if gpu {
                limits.insert("nvidia.com/gpu".to_owned(), Quantity("1".to_owned()));
            }
            ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_owned(), Quantity(format!("{cpu}m"))),
                    ("memory".to_owned(), Quantity(format!("{mem}Mi"))),
                ])),
                limits: Some(limits),
                ..Default::default()
            }
        }),
    )
}

fn component() -> impl Strategy<Value = ComponentSpec> {
    (
        image(),
        prop::option::of(0i32..=20),
        resources(),
        prop::option::of(prop_oneof![
            Just(ImagePullPolicy::Always),
            Just(ImagePullPolicy::IfNotPresent),
            Just(ImagePullPolicy::Never)
        ]),
        prop::collection::btree_map("[A-Z][A-Z0-9_]{0,8}", "[ -~]{1,12}", 0..3),
        prop::collection::btree_map(dns_label(), dns_label(), 0..3),
        (1i32..=65535, 1i32..=65535).prop_filter("ports differ", |(a, b)| a != b),
        prop::option::of(prop::collection::btree_map("[a-z_]{1,8}", 0i64..100, 0..3)),
        prop::bool::ANY,
        prop::option::of((
            prop::option::of(1i64..2_000_000),
            prop::option::of(0i64..2_000_000),
            prop::option::of(0i64..2_000_000),
        )),
    )
        .prop_map(
            |(
                image,
                replicas,
                resources,
                pull,
                env,
                labels,
                (port, metrics_port),
                config,
                tolerate,
                security,
            )| ComponentSpec {
                image,
                replicas,
                resources,
                image_pull_policy: pull,
                command: None,
                args: None,
                env: (!env.is_empty()).then(|| {
                    env.into_iter()
                        .filter(|(k, _)| k != "POD_IP")
                        .map(|(name, value)| EnvVar {
                            name,
                            value: Some(value),
                            value_from: None,
                        })
                        .collect()
                }),
                node_selector: (!labels.is_empty()).then(|| labels.clone()),
                tolerations: tolerate.then(|| {
                    vec![Toleration {
                        key: Some("nvidia.com/gpu".to_owned()),
                        operator: Some("Exists".to_owned()),
                        effect: Some("NoSchedule".to_owned()),
                        ..Default::default()
                    }]
                }),
                affinity: None,
                pod_annotations: (!labels.is_empty()).then(|| {
                    labels
                        .iter()
                        .map(|(k, v)| (format!("example.com/{k}"), v.clone()))
                        .collect()
                }),
                pod_labels: (!labels.is_empty()).then_some(labels),
                port,
                metrics_port,
                config: config.map(|c| json!(c)),
                security_context: security.map(|(run_as_user, run_as_group, fs_group)| {
                    ComponentSecurity {
                        run_as_user,
                        run_as_group,
                        fs_group,
                    }
                }),
            },
        )
}

fn set_spec() -> impl Strategy<Value = (String, VecodexSetSpec)> {
    (
        // Up to 70 characters, to exercise the shortening of derived names.
        "[a-z]([a-z0-9-]{0,68}[a-z0-9])?",
        component(),
        component(),
        component(),
        prop::option::of((
            dns_label(),
            dns_label(),
            prop::option::of(dns_label()),
            prop::option::of(dns_label()),
        )),
    )
        .prop_map(|(name, coordinator, writer, searcher, ingress)| {
            let spec = VecodexSetSpec {
                coordinator,
                writer,
                searcher,
                ingress: ingress.map(|(a, b, class_name, tls)| IngressSpec {
                    host: format!("{a}.{b}.example"),
                    class_name,
                    annotations: None,
                    tls_secret_name: tls,
                }),
                etcd_endpoint: "http://etcd.vecodex:2379".to_owned(),
                s3_endpoint: "https://s3.example.com".to_owned(),
                image_pull_secrets: None,
            };
            (name, spec)
        })
}

async fn dry_run(
    client: &Client,
    ns: &str,
    name: &str,
    spec: &VecodexSetSpec,
) -> Result<(), String> {
    let mut set = VecodexSet::new(name, spec.clone());
    set.meta_mut().namespace = Some(ns.to_owned());
    let sets: Api<VecodexSet> = Api::namespaced(client.clone(), ns);
    let created = sets
        .create(
            &PostParams {
                dry_run: true,
                field_manager: None,
            },
            &set,
        )
        .await
        .map_err(|e| format!("set rejected: {e}"))?;
    let desired = children::build(&created).map_err(|e| e.to_string())?;
    // Every pod passes the restricted Pod Security Standard, rule by rule.
    for d in &desired.deployments {
        let template = &d.spec.as_ref().expect("a Deployment spec").template;
        let broken = children::pod_security::restricted_violations(template);
        if !broken.is_empty() {
            return Err(format!("{:?} is not restricted: {broken:?}", d.meta().name));
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    macro_rules! apply_all {
        ($kind:ty, $items:expr) => {
            for obj in $items {
                let api: Api<$kind> = Api::namespaced(client.clone(), ns);
                let obj_name = obj.meta().name.clone().unwrap();
                api.patch(&obj_name, &params, &Patch::Apply(obj))
                    .await
                    .map_err(|e| format!("{} {obj_name} rejected: {e}", stringify!($kind)))?;
            }
        };
    }
    apply_all!(k8s_openapi::api::core::v1::ConfigMap, &desired.config_maps);
    apply_all!(k8s_openapi::api::core::v1::Service, &desired.services);
    apply_all!(k8s_openapi::api::apps::v1::Deployment, &desired.deployments);
    apply_all!(
        k8s_openapi::api::networking::v1::Ingress,
        desired.ingress.iter()
    );
    Ok(())
}

#[test]
fn generated_valid_specs_are_accepted_by_the_api_server() {
    common::cluster();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(common::client());
    let ns = rt.block_on(common::namespace(&client, "dryrun"));
    let cases = std::env::var("VECODEX_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    runner
        .run(&set_spec(), |(name, spec)| {
            let mut probe = VecodexSet::new(&name, spec.clone());
            probe.meta_mut().namespace = Some(ns.clone());
            let errors = validate(&probe, &Limits::default());
            prop_assert!(
                errors.is_empty(),
                "generator made an invalid spec: {errors:?}"
            );
            let result = rt.block_on(dry_run(&client, &ns, &name, &spec));
            prop_assert!(result.is_ok(), "{}", result.unwrap_err());
            Ok(())
        })
        .unwrap();
}
