//! `--namespace a,b` watches exactly those namespaces (the chart's `watchNamespaces`).

mod common;

use std::time::Duration;

use common::{client, seed_example, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::ApiResource;
use serde_json::json;
use vecodex_operator::crd::VecodexSet;

#[tokio::test]
async fn only_the_listed_namespaces_are_reconciled() {
    let cluster = common::cluster();
    let client = client().await;
    for ns in ["team-a", "team-b", "team-c"] {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &obj)
            .await
            .unwrap();
        let sets: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<VecodexSet>(&()));
        sets.create(
            &PostParams::default(),
            &serde_json::from_value(seed_example(ns, "s")).unwrap(),
        )
        .await
        .unwrap();
    }
    let log = cluster.dir.join("namespaces-operator.log");
    let mut operator =
        common::spawn_operator(&cluster.kubeconfig, &log, &["--namespace", "team-a,team-b"]);
    let deployments = |ns: &str| Api::<Deployment>::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels("app.kubernetes.io/instance=s");
    wait_for(
        "both listed namespaces reconciled",
        Duration::from_secs(30),
        || async {
            let a = deployments("team-a").list(&lp).await.ok()?.items.len();
            let b = deployments("team-b").list(&lp).await.ok()?.items.len();
            (a == 3 && b == 3).then_some(())
        },
    )
    .await;
    // Give it every chance to (wrongly) touch the third one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        deployments("team-c")
            .list(&lp)
            .await
            .unwrap()
            .items
            .is_empty(),
        "team-c is not watched"
    );
    common::shared::signal(&operator, libc::SIGTERM);
    assert!(operator.wait().unwrap().success());

    // A child deleted while the operator is down is back once it runs again.
    deployments("team-a")
        .delete("s-writer", &Default::default())
        .await
        .unwrap();
    let log = cluster.dir.join("namespaces-operator-2.log");
    let mut operator =
        common::spawn_operator(&cluster.kubeconfig, &log, &["--namespace", "team-a,team-b"]);
    wait_for(
        "the deleted child recreated after a restart",
        Duration::from_secs(60),
        || async {
            deployments("team-a")
                .get_opt("s-writer")
                .await
                .ok()?
                .map(|_| ())
        },
    )
    .await;
    common::shared::signal(&operator, libc::SIGTERM);
    assert!(operator.wait().unwrap().success());
}
