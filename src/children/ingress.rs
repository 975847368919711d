use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use kube::ResourceExt;

use super::{BuildError, child_meta, child_name};
use crate::crd::{Component, VecodexSet};

/// Vecodex speaks insecure gRPC; ingress-nginx must be told so.
pub const GRPC_BACKEND_ANNOTATION: (&str, &str) =
    ("nginx.ingress.kubernetes.io/backend-protocol", "GRPC");

/// The Ingress `<set>` routing `ingress.host` to the coordinator's gRPC port, if requested.
pub fn ingress(set: &VecodexSet) -> Result<Option<Ingress>, BuildError> {
    let Some(spec) = &set.spec.ingress else {
        return Ok(None);
    };
    let set_name = set.name_any();
    let mut meta = child_meta(set, set_name.clone(), None)?;
    let mut annotations = BTreeMap::from([(
        GRPC_BACKEND_ANNOTATION.0.to_owned(),
        GRPC_BACKEND_ANNOTATION.1.to_owned(),
    )]);
    annotations.extend(spec.annotations.clone().unwrap_or_default());
    meta.annotations = Some(annotations);

    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: child_name(&set_name, Component::Coordinator.as_str()),
            port: Some(ServiceBackendPort {
                name: Some("grpc".to_owned()),
                number: None,
            }),
        }),
        resource: None,
    };
    Ok(Some(Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend,
                    }],
                }),
            }]),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            default_backend: None,
        }),
        status: None,
    }))
}
