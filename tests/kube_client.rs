//! `watch::kube::client` against the test API server: which server and which credentials the
//! client uses for `--kubeconfig`, `--master`, and both.

mod support;

use kproxy::watch::Kind;
use kproxy::watch::kube::client;
use support::apiserver::ApiServer;
use support::objects::service;

fn kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: test, cluster: {{server: \"{server}\"}}}}]\n\
         users: [{{name: u, user: {{token: sekret}}}}]\n\
         contexts: [{{name: c, context: {{cluster: test, user: u}}}}]\n\
         current-context: c\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Lists Services once through `client` and returns the request the server saw.
async fn one_list(server: &ApiServer, client: kube::Client) -> support::apiserver::Request {
    let api: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::all(client);
    let list = api
        .list(&Default::default())
        .await
        .expect("list through the client");
    assert_eq!(list.items.len(), 1);
    server
        .requests_for(Kind::Services)
        .pop()
        .expect("a recorded request")
}

#[tokio::test]
async fn kubeconfig_credentials_are_used_and_master_overrides_its_server() {
    let server = ApiServer::start().await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    let dir = tempfile::tempdir().unwrap();

    let direct = kubeconfig(dir.path(), &server.url());
    let req = one_list(&server, client(Some(&direct), None).await.unwrap()).await;
    assert_eq!(req.header("authorization"), Some("Bearer sekret"));

    // The kubeconfig points nowhere; --master wins, the kubeconfig's credentials stay.
    let elsewhere = kubeconfig(dir.path(), "http://127.0.0.1:9");
    let req = one_list(
        &server,
        client(Some(&elsewhere), Some(&server.url())).await.unwrap(),
    )
    .await;
    assert_eq!(req.header("authorization"), Some("Bearer sekret"));

    // --master alone: no credentials at all.
    let req = one_list(&server, client(None, Some(&server.url())).await.unwrap()).await;
    assert_eq!(req.header("authorization"), None);
}
