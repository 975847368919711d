//! Every API call a reconcile makes goes through [`Writer`]: one place that sets the field
//! manager and wraps the call in a child span with its method, resource, name and HTTP
//! status, so tracing (and counting) a write can never be forgotten at a call site.

use std::fmt::Debug;
use std::future::Future;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, GetParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::field::Empty;
use tracing::{Instrument, debug, info_span, warn};

use crate::cache::{CachedKind, Raw};
use crate::children::FIELD_MANAGER;

/// What the operator writes: a namespaced Kubernetes object with a static type.
pub trait Child:
    CachedKind
    + Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
{
}

impl<K> Child for K where
    K: CachedKind
        + Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug
{
}

/// The field manager that keeps a Deployment's replicas where they are when its set stops
/// setting them (see [`Writer::hand_over_replicas`]).
pub const HANDOVER_MANAGER: &str = "vecodex-operator-handover";

#[derive(Clone)]
pub struct Writer {
    client: Client,
}

/// The HTTP status of a failed API call, when there was one.
pub fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Errors that retrying the same request cannot fix: the object itself is rejected as
/// malformed or invalid. A 403 (a quota, a missing permission, a webhook's denial) can pass
/// once the cluster changes, and is retried with backoff instead.
pub fn is_rejection(err: &kube::Error) -> bool {
    matches!(status_code(err), Some(400 | 422))
}

/// The namespace is being deleted: the API server refuses new objects in it (403 from its
/// NamespaceLifecycle admission), and the set goes with the namespace.
pub fn is_namespace_terminating(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => {
            status.code == 403 && status.message.contains("because it is being terminated")
        }
        _ => false,
    }
}

/// Runs one API call in a child span (`otel.kind = client`) with the method, resource, name
/// and HTTP status; an error marks the span failed with its message.
async fn traced<T>(
    method: &'static str,
    ok_code: impl Fn(&T) -> u16,
    resource: &str,
    ns: &str,
    name: &str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    let span = info_span!(
        "k8s.request",
        otel.name = %format!("{method} {resource}"),
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_message = Empty,
        "http.request.method" = method,
        "k8s.resource" = resource,
        "k8s.namespace.name" = ns,
        "k8s.object.name" = name,
        "http.response.status_code" = Empty,
    );
    let result = call.instrument(span.clone()).await;
    match &result {
        Ok(_) => {
            if let Ok(v) = &result {
                span.record("http.response.status_code", i64::from(ok_code(v)));
            }
            debug!(parent: &span, method, resource, namespace = ns, name, "request succeeded");
        }
        Err(e) => {
            if let Some(code) = status_code(e) {
                span.record("http.response.status_code", i64::from(code));
            }
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_message", e.to_string().as_str());
            warn!(parent: &span, method, resource, namespace = ns, name, code = status_code(e), error = %e, "request failed");
        }
    }
    result
}

impl Writer {
    pub fn new(client: Client) -> Self {
        Writer { client }
    }

    /// Reads an object's metadata (not a write; here so that every API call of a reconcile is
    /// traced). Served from the API server's watch cache (`resourceVersion=0`): this read only
    /// guards against adopting a foreign object of the same name, and a watch-cache read costs
    /// the API server a fraction of a quorum read from etcd. An object created in the last
    /// instant may be missed; if it has a controller the apply is then rejected anyway (an
    /// object can have only one).
    pub async fn get_metadata_opt<K>(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<ObjectMeta>, kube::Error>
    where
        K: CachedKind
            + Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let api = Api::<K>::namespaced(self.client.clone(), ns);
        // get_metadata_opt_with turns a 404 into None.
        let code = |found: &Option<ObjectMeta>| if found.is_some() { 200 } else { 404 };
        let call = async {
            Ok(api
                .get_metadata_opt_with(name, &GetParams::any())
                .await?
                .map(|m| m.metadata))
        };
        traced("GET", code, &K::kind(&()), ns, name, call).await
    }

    /// Server-side apply with our field manager; `force` takes back fields another manager
    /// changed, which is how drift is repaired. `creates` says whether the object is new
    /// (the API server answers 201 then, 200 otherwise), for the span's status code.
    /// The answer is read as [`Raw`] (as the watches read objects): its managedFields are
    /// never decoded.
    pub async fn apply<K>(&self, obj: &K, creates: bool) -> Result<Raw<K>, kube::Error>
    where
        K: Child,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let api: Api<Raw<K>> = Api::namespaced(self.client.clone(), &ns);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let code = if creates { 201 } else { 200 };
        traced(
            "PATCH",
            |_| code,
            &K::kind(&()),
            &ns,
            &name,
            api.patch(&name, &params, &Patch::Apply(obj)),
        )
        .await
    }

    /// The same apply as [`apply`](Self::apply), as a server-side dry run: the API server
    /// admits, validates and merges it, and stores nothing. What it would reject is known
    /// before anything is written.
    pub async fn dry_run_apply<K>(&self, obj: &K) -> Result<(), kube::Error>
    where
        K: Child,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let api: Api<Raw<K>> = Api::namespaced(self.client.clone(), &ns);
        let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
        let resource = format!("{} (dry run)", K::kind(&()));
        let call = async {
            api.patch(&name, &params, &Patch::Apply(obj))
                .await
                .map(|_| ())
        };
        traced("PATCH", |_| 200, &resource, &ns, &name, call).await
    }

    /// Hands `spec.replicas` over before the operator stops applying them (a set left its
    /// replicas unset): [`HANDOVER_MANAGER`] server-side applies the current value alone, so
    /// it shares the field, and the operator's next apply without it then releases the field
    /// instead of removing it (which would drop the Deployment to 1). Not forced: if someone
    /// else changed the replicas meanwhile they own them already, and the API server answers
    /// 409, which is success here.
    pub async fn hand_over_replicas<K>(
        &self,
        ns: &str,
        name: &str,
        replicas: i64,
    ) -> Result<(), kube::Error>
    where
        K: CachedKind
            + Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let api: Api<Raw<K>> = Api::namespaced(self.client.clone(), ns);
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()), "kind": K::kind(&()),
            "metadata": {"name": name},
            "spec": {"replicas": replicas},
        });
        let call = async {
            match api
                .patch(
                    name,
                    &PatchParams::apply(HANDOVER_MANAGER),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                other => other.map(|_| ()),
            }
        };
        traced("PATCH", |_| 200, &K::kind(&()), ns, name, call).await
    }

    /// Deletes an object only if it is still the one we saw (same uid).
    pub async fn delete<K>(
        &self,
        ns: &str,
        name: &str,
        uid: Option<String>,
    ) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        let call = async {
            match api.delete(name, &params).await {
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                other => other.map(|_| ()),
            }
        };
        traced("DELETE", |_| 200, &K::kind(&()), ns, name, call).await
    }

    /// Server-side applies the status subresource: fields this manager set before and omits
    /// now are removed, which a merge patch would leave behind.
    pub async fn apply_status<K, S>(
        &self,
        ns: &str,
        name: &str,
        status: &S,
    ) -> Result<Raw<K>, kube::Error>
    where
        K: CachedKind
            + Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + Debug,
        S: Serialize + Debug,
    {
        let api: Api<Raw<K>> = Api::namespaced(self.client.clone(), ns);
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": { "name": name, "namespace": ns },
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let resource = format!("{}/status", K::kind(&()));
        traced(
            "PATCH",
            |_| 200,
            &resource,
            ns,
            name,
            api.patch_status(name, &params, &Patch::Apply(&body)),
        )
        .await
    }

    pub async fn create_event(&self, ns: &str, event: &Event) -> Result<(), kube::Error> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let name = event.metadata.name.clone().unwrap_or_default();
        let call = async { api.create(&PostParams::default(), event).await.map(|_| ()) };
        traced("POST", |_| 201, "Event", ns, &name, call).await
    }

    /// Counts a repeat on an Event and points its note at the latest occurrence.
    pub async fn patch_event_series(
        &self,
        ns: &str,
        name: &str,
        series: &EventSeries,
        note: &str,
    ) -> Result<(), kube::Error> {
        let api: Api<Raw<Event>> = Api::namespaced(self.client.clone(), ns);
        let body = serde_json::json!({ "series": series, "note": note });
        let call = async {
            api.patch(name, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map(|_| ())
        };
        traced("PATCH", |_| 200, "Event", ns, name, call).await
    }
}
