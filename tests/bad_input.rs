//! The bad-input corpus (`tests/bad-input/`): every malformed object gets the error its header
//! names. `# expect: schema <text>`: the API server rejects it with that text.
//! `# expect: invalid <field>`: it is accepted, the operator sets `Ready=False/InvalidSpec`
//! naming the field, emits a Warning Event and creates no child of any kind; with the seed
//! spec put back it converges; then the same bad spec, as an update of the converged set, is
//! refused again and every child (Deployments, Services, ConfigMaps, Ingress) keeps its
//! resourceVersion, and the seed spec recovers it once more. A bad name cannot be fixed in
//! place: the same spec under a valid name converges. `# expect: policy <field>`: the same
//! with `PolicyViolation`, for what the default admin policy refuses. `# expect: unknown <path>`: an unknown field; `kubectl apply` rejects it
//! naming the field and creates nothing, and sent past kubectl (a client, or
//! `--validate=false`) the API server prunes it: the stored set lacks it and converges.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::{client, kubectl, operator, repo_root, seed_example, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use vecodex_operator::crd::VecodexSet;

const WAIT: Duration = Duration::from_secs(60);

enum Expect {
    Schema(String),
    /// Refused by the operator with this reason, naming the field.
    Refused(&'static str, String),
    Unknown(String),
}

fn corpus() -> Vec<(String, Expect, Value, PathBuf)> {
    let dir = repo_root().join("tests/bad-input");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let header = text.lines().next().unwrap_or("");
            let expect = if let Some(t) = header.strip_prefix("# expect: schema ") {
                Expect::Schema(t.trim().to_owned())
            } else if let Some(f) = header.strip_prefix("# expect: invalid ") {
                Expect::Refused("InvalidSpec", f.trim().to_owned())
            } else if let Some(f) = header.strip_prefix("# expect: policy ") {
                Expect::Refused("PolicyViolation", f.trim().to_owned())
            } else if let Some(p) = header.strip_prefix("# expect: unknown ") {
                Expect::Unknown(p.trim().to_owned())
            } else {
                panic!(
                    "{name}: the first line must be `# expect: schema …`, `# expect: invalid …`, \
                     `# expect: policy …` or `# expect: unknown …`"
                );
            };
            let value: Value =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, expect, value, path)
        })
        .collect()
}

#[test]
fn the_corpus_is_large_and_well_formed() {
    let corpus = corpus();
    assert!(
        corpus.len() >= 40,
        "at least 40 malformed objects, found {}",
        corpus.len()
    );
    let count = |kind: fn(&Expect) -> bool| corpus.iter().filter(|c| kind(&c.1)).count();
    let schema = count(|e| matches!(e, Expect::Schema(_)));
    let invalid = count(|e| matches!(e, Expect::Refused("InvalidSpec", _)));
    let policy = count(|e| matches!(e, Expect::Refused("PolicyViolation", _)));
    let unknown = count(|e| matches!(e, Expect::Unknown(_)));
    assert!(
        schema >= 10 && invalid >= 20 && policy >= 5 && unknown >= 3,
        "{schema} schema cases, {invalid} semantic, {policy} policy, {unknown} unknown fields"
    );
}

async fn check(
    client: Client,
    index: usize,
    (file, expect, mut object, path): (String, Expect, Value, PathBuf),
) {
    let ns = format!("bad-{index}-{}", std::process::id() % 10_000);
    let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
    object["metadata"]["namespace"] = json!(ns);
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let sets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<VecodexSet>(&()));
    if let Expect::Unknown(field) = &expect {
        // kubectl first, as a user would: it must refuse and create nothing.
        let out = kubectl([
            "apply".as_ref(),
            "-n".as_ref(),
            ns.as_ref(),
            "-f".as_ref(),
            path.as_os_str(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let (parent, leaf) = field.rsplit_once('.').unwrap_or(("", field));
        let named = format!("ValidationError(VecodexSet.{parent}): unknown field \"{leaf}\"");
        assert!(
            !out.status.success() && stderr.contains(&named),
            "{file}: kubectl apply must refuse it with {named:?}; it said {stderr:?}"
        );
        assert!(
            sets.get_opt(&name).await.unwrap().is_none(),
            "{file}: kubectl created the set although it refused it"
        );
    }
    let bad_spec = object["spec"].clone();
    let dynamic: DynamicObject = serde_json::from_value(object).unwrap();
    let created = sets.create(&PostParams::default(), &dynamic).await;
    match expect {
        Expect::Schema(text) => {
            let err = created.expect_err(&format!("{file}: the API server must reject it"));
            assert!(
                err.to_string().contains(&text),
                "{file}: rejection {err} should mention {text:?}"
            );
        }
        Expect::Unknown(field) => {
            created.unwrap_or_else(|e| panic!("{file}: the API server must accept it: {e}"));
            let stored = serde_json::to_value(sets.get(&name).await.unwrap()).unwrap();
            let pointer = format!("/{}", field.replace('.', "/"));
            assert!(
                stored.pointer(&pointer).is_none(),
                "{file}: the API server must prune {field}: {stored}"
            );
            let converged = format!("{file}: converged without {field}");
            wait_for(&converged, WAIT, || async {
                let v = serde_json::to_value(sets.get(&name).await.ok()?).ok()?;
                let observed = v["status"]["observedGeneration"] == v["metadata"]["generation"];
                let searcher = Api::<Deployment>::namespaced(client.clone(), &ns)
                    .get(&format!("{name}-searcher"))
                    .await
                    .ok()?;
                // The seed's 3 searchers, not the 5 of a pruned field.
                let replicas = searcher.spec?.replicas;
                (observed && replicas == Some(3)).then_some(())
            })
            .await;
        }
        Expect::Refused(reason, field) => {
            created.unwrap_or_else(|e| panic!("{file}: the API server must accept it: {e}"));
            // 1. As a new set: refused, naming the field, and no child of any kind.
            refused(&client, &ns, &name, &file, (reason, &field), 0).await;
            let children = children_versions(&client, &ns).await;
            assert!(
                children.is_empty(),
                "{file}: no child for a refused set: {children:?}"
            );
            let seed = seed_example(&ns, &name);
            if !field.starts_with("spec") {
                // A name cannot be fixed in place: the same spec under a valid name converges.
                let mut renamed = seed_example(&ns, "renamed");
                renamed["spec"] = object_spec(&sets, &name).await;
                let fixed: DynamicObject = serde_json::from_value(renamed).unwrap();
                sets.create(&PostParams::default(), &fixed).await.unwrap();
                converged(&client, &ns, "renamed", &file).await;
                return;
            }
            // Fixed: the seed's spec put back, the set converges.
            set_spec(&sets, &name, seed["spec"].clone(), &file).await;
            converged(&client, &ns, &name, &file).await;
            // 2. As an update of the converged set: refused again, and every child keeps its
            //    resourceVersion.
            let before = children_versions(&client, &ns).await;
            assert_eq!(
                before.len(),
                7,
                "{file}: the converged set's children: {before:?}"
            );
            let reported = warnings(&client, &ns, reason, &field).await;
            set_spec(&sets, &name, bad_spec.clone(), &file).await;
            refused(&client, &ns, &name, &file, (reason, &field), reported).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(
                children_versions(&client, &ns).await,
                before,
                "{file}: a refused update changes no child"
            );
            set_spec(&sets, &name, seed["spec"].clone(), &file).await;
            converged(&client, &ns, &name, &file).await;
        }
    }
}

/// How often a Warning Event with `reason` naming `field` was reported in `ns` (a repeat is a
/// series count on the same Event).
async fn warnings(client: &Client, ns: &str, reason: &str, field: &str) -> i32 {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some(reason)
                && e.note.as_deref().unwrap_or("").contains(field)
        })
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

/// Waits for the set to be refused with `reason` for its current generation, naming `field`
/// in its Ready condition and in a Warning Event reported after `before` others.
async fn refused(
    client: &Client,
    ns: &str,
    name: &str,
    file: &str,
    (reason, field): (&str, &str),
    before: i32,
) {
    let sets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<VecodexSet>(&()));
    let message = wait_for(&format!("{file}: {reason}"), WAIT, || async {
        let v = serde_json::to_value(sets.get(name).await.ok()?).ok()?;
        let ready = v["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        (ready["reason"] == reason
            && v["status"]["observedGeneration"] == v["metadata"]["generation"])
            .then(|| ready["message"].as_str().unwrap_or("").to_owned())
    })
    .await;
    assert!(
        message.contains(field),
        "{file}: {message:?} should name {field}"
    );
    wait_for(&format!("{file}: Warning Event"), WAIT, || async {
        (warnings(client, ns, reason, field).await > before).then_some(())
    })
    .await;
}

/// Every managed child of the namespace, of every kind, by kind and name: its version. For a
/// Deployment its generation (the deployment controller's status writes move its
/// resourceVersion), for the rest the resourceVersion.
async fn children_versions(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=vecodex-operator");
    let mut out = BTreeMap::new();
    for d in Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .unwrap()
    {
        let generation = d.metadata.generation.unwrap_or_default();
        out.insert(
            format!("Deployment {}", d.name_any()),
            format!("generation {generation}"),
        );
    }
    macro_rules! add {
        ($kind:ty) => {
            for o in Api::<$kind>::namespaced(client.clone(), ns)
                .list(&lp)
                .await
                .unwrap()
            {
                out.insert(
                    format!("{} {}", <$kind>::kind(&()), o.name_any()),
                    o.resource_version().unwrap_or_default(),
                );
            }
        };
    }
    add!(Service);
    add!(ConfigMap);
    add!(Ingress);
    out
}

async fn object_spec(sets: &Api<DynamicObject>, name: &str) -> Value {
    sets.get(name).await.unwrap().data["spec"].clone()
}

/// Replaces the set's spec (retrying a conflict with the operator's status write).
async fn set_spec(sets: &Api<DynamicObject>, name: &str, spec: Value, file: &str) {
    wait_for(&format!("{file}: spec replaced"), WAIT, || async {
        let mut current = sets.get(name).await.ok()?;
        current.data["spec"] = spec.clone();
        sets.replace(name, &PostParams::default(), &current)
            .await
            .ok()
    })
    .await;
}

/// Waits until the set observed its generation with its 3 Deployments and 3 Services.
async fn converged(client: &Client, ns: &str, name: &str, file: &str) {
    let sets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<VecodexSet>(&()));
    wait_for(&format!("{file}: {name} converged"), WAIT, || async {
        let v = serde_json::to_value(sets.get(name).await.ok()?).ok()?;
        let observed = v["status"]["observedGeneration"] == v["metadata"]["generation"]
            && v["status"]["conditions"].as_array()?.iter().any(|c| {
                c["type"] == "Ready"
                    && c["reason"] != "InvalidSpec"
                    && c["reason"] != "PolicyViolation"
            });
        let kinds = children_versions(client, ns).await;
        let of_set = kinds
            .keys()
            .filter(|k| k.contains(&format!(" {name}-")))
            .count();
        (observed && of_set >= 6).then_some(())
    })
    .await;
}

#[tokio::test]
async fn every_malformed_object_gets_its_error() {
    operator();
    let client = client().await;
    // The API server publishes a new CRD's schema for kubectl a few seconds after the CRD;
    // before that kubectl has nothing to validate against and accepts anything.
    wait_for("the CRD's schema in /openapi/v2", WAIT, || async {
        let req = http::Request::get("/openapi/v2").body(Vec::new()).unwrap();
        let text = client.request_text(req).await.ok()?;
        text.contains("link.vecodex.apps.v1alpha1.VecodexSet")
            .then_some(())
    })
    .await;
    let checks = corpus()
        .into_iter()
        .enumerate()
        .map(|(i, case)| check(client.clone(), i, case));
    futures::future::join_all(checks).await;
}
