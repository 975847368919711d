//! Every write the operator makes goes through [`Writer`]: one place that sets the field
//! manager, logs the call and (in later layers) records its span and metrics, so counting and
//! tracing writes can never be forgotten at a call site.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::children::FIELD_MANAGER;

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

/// Errors that retrying the same request cannot fix (the object itself is rejected).
pub fn is_rejection(err: &kube::Error) -> bool {
    matches!(status_code(err), Some(400 | 403 | 422))
}

impl Writer {
    pub fn new(client: Client) -> Self {
        Writer { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn log<T>(verb: &str, kind: &str, ns: &str, name: &str, result: &Result<T, kube::Error>) {
        match result {
            Ok(_) => debug!(verb, kind, namespace = ns, name, "write succeeded"),
            Err(e) => {
                warn!(verb, kind, namespace = ns, name, code = status_code(e), error = %e, "write failed")
            }
        }
    }

    /// Reads an object (not a write; here so that every API call of a reconcile has one home).
    pub async fn get_opt<K>(&self, ns: &str, name: &str) -> Result<Option<K>, kube::Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + Debug,
    {
        Api::<K>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
    }

    /// Server-side apply with our field manager; `force` takes back fields another manager
    /// changed, which is how drift is repaired.
    pub async fn apply<K>(&self, obj: &K) -> Result<K, kube::Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        let result = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(obj),
            )
            .await;
        Self::log("apply", &K::kind(&()), &ns, &name, &result);
        result
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
        let result = match api.delete(name, &params).await {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            other => other.map(|_| ()),
        };
        Self::log("delete", &K::kind(&()), ns, name, &result);
        result
    }

    /// Server-side applies the status subresource: fields this manager set before and omits
    /// now are removed, which a merge patch would leave behind.
    pub async fn apply_status<K, S>(
        &self,
        ns: &str,
        name: &str,
        status: &S,
    ) -> Result<K, kube::Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + Debug,
        S: Serialize + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": { "name": name, "namespace": ns },
            "status": status,
        });
        let result = api
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await;
        Self::log("apply_status", &K::kind(&()), ns, name, &result);
        result
    }

    pub async fn create_event(&self, ns: &str, event: &Event) -> Result<(), kube::Error> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let name = event.metadata.name.clone().unwrap_or_default();
        let result = api.create(&PostParams::default(), event).await.map(|_| ());
        Self::log("create", "Event", ns, &name, &result);
        result
    }

    pub async fn patch_event_series(
        &self,
        ns: &str,
        name: &str,
        series: &EventSeries,
    ) -> Result<(), kube::Error> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let body = serde_json::json!({ "series": series });
        let result = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map(|_| ());
        Self::log("patch", "Event", ns, name, &result);
        result
    }
}
