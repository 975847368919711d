use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{BuildError, child_meta, child_name, selector_labels};
use crate::crd::{Component, VecodexSet};

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: number,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// ClusterIP Service of one component, with ports `grpc` and `metrics`.
pub fn service(set: &VecodexSet, component: Component) -> Result<Service, BuildError> {
    let set_name = set.name_any();
    let spec = set.spec.component(component);
    Ok(Service {
        metadata: child_meta(
            set,
            child_name(&set_name, component.as_str()),
            Some(component),
        )?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(&set_name, component)),
            ports: Some(vec![
                port("grpc", spec.port),
                port("metrics", spec.metrics_port),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}
