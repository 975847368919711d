//! Multi-tenant safety on a real control plane, with real RBAC: a tenant's ServiceAccount may
//! only create, update and delete VecodexSets in its own namespace. With that token it cannot
//! take another namespace's Ingress host, inject an ingress-nginx snippet, get a Secret into a
//! pod under a policy that denies Secret references, or get a pod that breaks the restricted
//! Pod Security Standard. When the holder of a host lets go, the next claimant gets it; a
//! fixed spec recovers, and so does a set the policy refused once the policy changes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Replica, ReplicaOptions, client, kubectl, seed_example, token_kubeconfig, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ApiResource;
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};
use vecodex_operator::children::pod_security::restricted_violations;
use vecodex_operator::crd::VecodexSet;

const WAIT: Duration = Duration::from_secs(60);
const HOLDER_NS: &str = "tenant-a";
const TENANT_NS: &str = "tenant-b";
const HOST: &str = "search.example.com";

fn sets(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<VecodexSet>(&()))
}

async fn client_from(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// The tenant: a ServiceAccount in `TENANT_NS` whose Role allows VecodexSets there and
/// nothing else; a client with its token.
async fn tenant_client() -> Client {
    let rbac = format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: tenant, namespace: {TENANT_NS}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: vecodexset-editor, namespace: {TENANT_NS}}}
rules:
  - apiGroups: [apps.vecodex.link]
    resources: [vecodexsets]
    verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: tenant-vecodexsets, namespace: {TENANT_NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: vecodexset-editor}}
subjects: [{{kind: ServiceAccount, name: tenant, namespace: {TENANT_NS}}}]
"#
    );
    let file = common::cluster().dir.join("tenant-rbac.yaml");
    std::fs::write(&file, rbac).unwrap();
    let out = kubectl(["apply".as_ref(), "-f".as_ref(), file.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl([
        "-n",
        TENANT_NS,
        "create",
        "token",
        "tenant",
        "--duration",
        "1h",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let path = common::cluster().dir.join("tenant.kubeconfig");
    token_kubeconfig(&common::cluster().kubeconfig, &token, &path);
    client_from(&path).await
}

/// The set's Ready condition once it has one matching `pred`.
async fn ready_when(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(&format!("{ns}/{name}: {what}"), WAIT, || async {
        let v = serde_json::to_value(sets(client, ns).get(name).await.ok()?).ok()?;
        let ready = v["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        (v["status"]["observedGeneration"] == v["metadata"]["generation"] && pred(&ready))
            .then_some(ready)
    })
    .await
}

/// Waits for the set (read with the tenant's `client`) to be refused for `reason`, naming
/// `field`, and for the Warning Event saying so (read as the admin: the tenant may not).
async fn refused(client: &Client, ns: &str, name: &str, reason: &str, field: &str) {
    let ready = ready_when(client, ns, name, reason, |r| r["reason"] == reason).await;
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(message.contains(field), "{name}: {message:?} names {field}");
    warning_event(ns, name, reason, field).await;
}

async fn warning_event(ns: &str, name: &str, reason: &str, text: &str) {
    let events: Api<Event> = Api::namespaced(client().await, ns);
    wait_for(&format!("{ns}/{name}: Warning {reason}"), WAIT, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .any(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.note.as_deref().unwrap_or("").contains(text)
            })
            .then_some(())
    })
    .await;
}

/// The set with the seed spec, host `host` (none: no Ingress), and `patch` merged into it.
fn set(ns: &str, name: &str, host: Option<&str>, patch: Value) -> DynamicObject {
    let mut v = seed_example(ns, name);
    match host {
        Some(h) => v["spec"]["ingress"]["host"] = h.into(),
        None => v["spec"]["ingress"] = Value::Null,
    }
    merge(&mut v, patch);
    if v["spec"]["ingress"].is_null() {
        v["spec"].as_object_mut().unwrap().remove("ingress");
    }
    serde_json::from_value(v).unwrap()
}

fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

async fn ingress(client: &Client, ns: &str, name: &str) -> Option<Ingress> {
    Api::<Ingress>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

async fn deployments(client: &Client, ns: &str) -> Vec<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

fn start_operator(identity: &str, policy: &[&str]) -> Replica {
    let opts = ReplicaOptions {
        extra_args: policy.iter().map(|s| s.to_string()).collect(),
        ..ReplicaOptions::default()
    };
    Replica::start_with(identity, "tenancy", 4, &opts)
}

#[tokio::test]
async fn a_tenant_cannot_reach_beyond_its_namespace_or_loosen_its_pods() {
    common::cluster();
    let admin = client().await;
    for ns in [HOLDER_NS, TENANT_NS] {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &obj)
            .await
            .unwrap();
    }
    let tenant = tenant_client().await;
    let operator = start_operator("strict", &["--allow-env-secret-refs=false"]);

    // The tenant's token reaches VecodexSets in its namespace, and nothing else.
    let denied = Api::<Ingress>::namespaced(tenant.clone(), TENANT_NS)
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(denied, Err(kube::Error::Api(ref e)) if e.code == 403),
        "{denied:?}"
    );
    let elsewhere = sets(&tenant, HOLDER_NS).list(&ListParams::default()).await;
    assert!(
        matches!(elsewhere, Err(kube::Error::Api(ref e)) if e.code == 403),
        "{elsewhere:?}"
    );

    // 1. A host belongs to the set that claimed it first, across namespaces.
    sets(&admin, HOLDER_NS)
        .create(
            &PostParams::default(),
            &set(HOLDER_NS, "holder", Some(HOST), json!({})),
        )
        .await
        .unwrap();
    let held = wait_for("the holder's Ingress", WAIT, || async {
        ingress(&admin, HOLDER_NS, "holder").await
    })
    .await;
    sets(&tenant, TENANT_NS)
        .create(
            &PostParams::default(),
            &set(TENANT_NS, "thief", Some(HOST), json!({})),
        )
        .await
        .unwrap();
    refused(&tenant, TENANT_NS, "thief", "HostConflict", HOLDER_NS).await;
    wait_for("the thief's other children", WAIT, || async {
        (deployments(&admin, TENANT_NS).await.len() == 3).then_some(())
    })
    .await;
    assert!(
        ingress(&admin, TENANT_NS, "thief").await.is_none(),
        "no Ingress for the later claimant"
    );
    let thief = serde_json::to_value(sets(&tenant, TENANT_NS).get("thief").await.unwrap()).unwrap();
    assert!(
        thief["status"]["ingressHost"].is_null(),
        "{}",
        thief["status"]
    );
    assert_eq!(
        ingress(&admin, HOLDER_NS, "holder")
            .await
            .unwrap()
            .resource_version(),
        held.resource_version(),
        "the holder's Ingress is untouched"
    );

    // 2. No snippet annotation: a converged set that asks for one is refused, its Ingress
    //    stays as it was.
    sets(&tenant, TENANT_NS)
        .create(
            &PostParams::default(),
            &set(TENANT_NS, "snippet", Some("b.example.com"), json!({})),
        )
        .await
        .unwrap();
    let before = wait_for("the snippet set's Ingress", WAIT, || async {
        ingress(&admin, TENANT_NS, "snippet").await
    })
    .await;
    let key = "nginx.ingress.kubernetes.io/server-snippet";
    sets(&tenant, TENANT_NS)
        .patch(
            "snippet",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"ingress": {"annotations": {key: "location / { return 200; }"}}}}),
            ),
        )
        .await
        .unwrap();
    refused(&tenant, TENANT_NS, "snippet", "PolicyViolation", key).await;
    let after = ingress(&admin, TENANT_NS, "snippet").await.unwrap();
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "the Ingress is untouched"
    );
    assert!(!after.annotations().contains_key(key));

    // 3. Under `--allow-env-secret-refs=false`, no Secret gets into a pod's env.
    let secret_env = json!({"spec": {"writer": {"env": [
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}}
    ]}}});
    sets(&tenant, TENANT_NS)
        .create(
            &PostParams::default(),
            &set(TENANT_NS, "secrets", None, secret_env),
        )
        .await
        .unwrap();
    refused(
        &tenant,
        TENANT_NS,
        "secrets",
        "PolicyViolation",
        "spec.writer.env[0].valueFrom.secretKeyRef",
    )
    .await;

    // 4. No pod that breaks the restricted profile: user 0 is refused.
    sets(&tenant, TENANT_NS)
        .create(
            &PostParams::default(),
            &set(
                TENANT_NS,
                "root",
                None,
                json!({"spec": {"searcher": {"securityContext": {"runAsUser": 0}}}}),
            ),
        )
        .await
        .unwrap();
    refused(
        &tenant,
        TENANT_NS,
        "root",
        "PolicyViolation",
        "spec.searcher.securityContext.runAsUser",
    )
    .await;
    for d in deployments(&admin, TENANT_NS).await {
        let template = &d.spec.as_ref().unwrap().template;
        assert_eq!(restricted_violations(template), vec![], "{}", d.name_any());
        let env = serde_json::to_string(&template.spec.as_ref().unwrap().containers).unwrap();
        assert!(!env.contains("secretKeyRef"), "{}: {env}", d.name_any());
        assert!(
            !d.name_any().starts_with("secrets-") && !d.name_any().starts_with("root-"),
            "refused sets get no child: {}",
            d.name_any()
        );
    }

    // 5. The holder lets go: the next claimant gets the host within seconds.
    sets(&admin, HOLDER_NS)
        .delete("holder", &DeleteParams::default())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    wait_for(
        "the thief to get the host",
        Duration::from_secs(20),
        || async {
            let ing = ingress(&admin, TENANT_NS, "thief").await?;
            let v = serde_json::to_value(sets(&tenant, TENANT_NS).get("thief").await.ok()?).ok()?;
            (ing.spec?.rules?[0].host.as_deref() == Some(HOST)
                && v["status"]["ingressHost"] == HOST)
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "the next claimant served the host {:?} after the holder was deleted",
        started.elapsed()
    );

    // 6. A fixed spec recovers.
    sets(&tenant, TENANT_NS)
        .patch(
            "snippet",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ingress": {"annotations": null}}})),
        )
        .await
        .unwrap();
    ready_when(&tenant, TENANT_NS, "snippet", "recovered", |r| {
        r["reason"] != "PolicyViolation"
    })
    .await;

    // 7. A policy change recovers a refused set nobody touched: the operator restarts with
    //    Secret references allowed and a host pattern per namespace.
    operator.signal(libc::SIGTERM);
    let _operator = start_operator(
        "relaxed",
        &[
            "--allow-env-secret-refs=true",
            "--ingress-host-pattern={namespace}.search.example.com",
        ],
    );
    ready_when(
        &tenant,
        TENANT_NS,
        "secrets",
        "recovered under the new policy",
        |r| r["reason"] != "PolicyViolation",
    )
    .await;
    let writer = wait_for("the secrets set's writer", WAIT, || async {
        Api::<Deployment>::namespaced(admin.clone(), TENANT_NS)
            .get_opt("secrets-writer")
            .await
            .ok()?
    })
    .await;
    assert!(
        serde_json::to_string(&writer.spec)
            .unwrap()
            .contains("secretKeyRef")
    );
    // The pattern: `search.example.com` is not `tenant-b.search.example.com` or below it.
    refused(
        &tenant,
        TENANT_NS,
        "thief",
        "PolicyViolation",
        "spec.ingress.host",
    )
    .await;
}
