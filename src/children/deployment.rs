use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecurityContext, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    BuildError, CONFIG_CHECKSUM_ANNOTATION, CONFIG_FILE, CONFIG_MOUNT_PATH, child_meta, child_name,
    configmap::config_map_name, labels, selector_labels,
};
use crate::crd::{
    Component, ComponentSpec, DEFAULT_FS_GROUP, DEFAULT_RUN_AS_GROUP, DEFAULT_RUN_AS_USER,
    VecodexSet,
};

/// The original Vecodex images start `./app/cmake/build/vecodex-app coordinator`; we keep the
/// binary and replace the arguments with ones that let the process actually start.
pub const DEFAULT_COMMAND: &str = "./app/cmake/build/vecodex-app";
const CONFIG_VOLUME: &str = "config";

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// Arguments passing everything the process needs as flags (flags win over the config file).
fn default_args(set: &VecodexSet, component: Component, has_config: bool) -> Vec<String> {
    let spec = set.spec.component(component);
    let mut args = vec![
        "--mode".to_owned(),
        component.as_str().to_owned(),
        "--listening-port".to_owned(),
        spec.port.to_string(),
        "--hostname".to_owned(),
        "$(POD_IP)".to_owned(),
        "--etcd-address".to_owned(),
        set.spec.etcd_endpoint.clone(),
        "--s3-host".to_owned(),
        set.spec.s3_endpoint.clone(),
    ];
    if has_config {
        args.push("--config-path".to_owned());
        args.push(format!("{CONFIG_MOUNT_PATH}/{CONFIG_FILE}"));
    }
    args
}

/// The pod's security context: the restricted Pod Security Standard (non-root, the runtime's
/// seccomp profile) with the component's user and groups. `runAsNonRoot` is dropped only
/// for user 0, which policy refuses unless the admin allows it.
fn pod_security(spec: &ComponentSpec) -> PodSecurityContext {
    let chosen = spec.security_context.clone().unwrap_or_default();
    let user = chosen.run_as_user.unwrap_or(DEFAULT_RUN_AS_USER);
    PodSecurityContext {
        run_as_non_root: Some(user != 0),
        run_as_user: Some(user),
        run_as_group: Some(chosen.run_as_group.unwrap_or(DEFAULT_RUN_AS_GROUP)),
        fs_group: Some(chosen.fs_group.unwrap_or(DEFAULT_FS_GROUP)),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// The container's security context: no privilege escalation, every capability dropped.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

fn tcp_probe(initial_delay: i32, period: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("grpc".to_owned()),
            host: None,
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

/// The Deployment of one component. `config_checksum` is set when a config file is mounted.
pub fn deployment(
    set: &VecodexSet,
    component: Component,
    config_checksum: Option<&str>,
) -> Result<Deployment, BuildError> {
    let set_name = set.name_any();
    let spec = set.spec.component(component);
    let has_config = config_checksum.is_some();

    let mut env = vec![EnvVar {
        name: "POD_IP".to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: "status.podIP".to_owned(),
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }];
    env.extend(spec.env.iter().flatten().cloned());

    let container = Container {
        name: component.as_str().to_owned(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        command: Some(
            spec.command
                .clone()
                .unwrap_or_else(|| vec![DEFAULT_COMMAND.to_owned()]),
        ),
        args: Some(
            spec.args
                .clone()
                .unwrap_or_else(|| default_args(set, component, has_config)),
        ),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".to_owned()),
                container_port: spec.port,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("metrics".to_owned()),
                container_port: spec.metrics_port,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        resources: spec.resources.clone(),
        // Vecodex has no health service: an open gRPC port is the honest readiness signal.
        readiness_probe: Some(tcp_probe(5, 10)),
        liveness_probe: Some(tcp_probe(20, 20)),
        security_context: Some(container_security()),
        volume_mounts: has_config.then(|| {
            vec![VolumeMount {
                name: CONFIG_VOLUME.to_owned(),
                mount_path: CONFIG_MOUNT_PATH.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]
        }),
        ..Container::default()
    };

    // User labels first, so the selector labels always win.
    let mut pod_labels: BTreeMap<String, String> = spec.pod_labels.clone().unwrap_or_default();
    pod_labels.extend(labels(&set_name, Some(component)));

    let mut pod_annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        (
            "prometheus.io/port".to_owned(),
            spec.metrics_port.to_string(),
        ),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ]);
    pod_annotations.extend(spec.pod_annotations.clone().unwrap_or_default());
    if let Some(sum) = config_checksum {
        pod_annotations.insert(CONFIG_CHECKSUM_ANNOTATION.to_owned(), sum.to_owned());
    }

    let volumes = has_config.then(|| {
        vec![Volume {
            name: CONFIG_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&set_name, component),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }]
    });

    Ok(Deployment {
        metadata: child_meta(
            set,
            child_name(&set_name, component.as_str()),
            Some(component),
        )?,
        spec: Some(DeploymentSpec {
            replicas: spec.replicas,
            selector: LabelSelector {
                match_labels: Some(selector_labels(&set_name, component)),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    node_selector: spec.node_selector.clone().filter(|m| !m.is_empty()),
                    tolerations: spec.tolerations.clone().and_then(non_empty),
                    affinity: spec.affinity.clone(),
                    image_pull_secrets: set.spec.image_pull_secrets.clone().and_then(non_empty),
                    volumes,
                    // Service env vars of a busy namespace only slow pod start-up.
                    enable_service_links: Some(false),
                    // The Vecodex processes never call the Kubernetes API.
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security(spec)),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}
