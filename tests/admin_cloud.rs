//! Grafana Cloud dialect of the admin API (`/api/v1/accesspolicies`, `/api/v1/tokens`) over
//! real sockets: scopes, region, validation, filters, paging, tokens on the data plane, label
//! policies and subnets of org/stack realms, first/last use, deletes, restart.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;

fn cloud_policies() -> String {
    format!(
        r#"tenants:
  - name: org1-metrics
    org: "1"
    stack: "101"
  - name: org2-metrics
    org: "2"
    stack: "201"
access_policies:
  - name: admin
    scopes: [admin]
  - name: ap-read
    scopes: [accesspolicies:read]
  - name: ap-write
    scopes: [accesspolicies:read, accesspolicies:write]
  - name: ap-delete
    scopes: [accesspolicies:delete]
tokens:
  - {{name: admin, access_policy: admin, hash: "{}"}}
  - {{name: ap-read, access_policy: ap-read, hash: "{}"}}
  - {{name: ap-write, access_policy: ap-write, hash: "{}"}}
  - {{name: ap-delete, access_policy: ap-delete, hash: "{}"}}
"#,
        hash(&tok("admin")),
        hash(&tok("ap-read")),
        hash(&tok("ap-write")),
        hash(&tok("ap-delete")),
    )
}

async fn start(s: &Setup) -> (obsgate::proxy::server::Running, SocketAddr) {
    let g = s.start().await;
    let a = g.shared_addr();
    (g, a)
}

fn setup(up: &Upstream) -> Setup {
    Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &cloud_policies(),
    )
}

async fn create_policy(gw: SocketAddr, body: Value) -> Value {
    let r = call(
        gw,
        "admin",
        "POST",
        "/api/v1/accesspolicies?region=eu",
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()
}

#[tokio::test]
async fn scopes_and_region() {
    let up = Upstream::start().await;
    let s = setup(&up);
    let (g, gw) = start(&s).await;
    let body = json!({"name": "p1", "scopes": ["metrics:read"], "realms": [{"type": "org", "identifier": "1"}]});
    // region is required everywhere
    let r = call(gw, "admin", "GET", "/api/v1/accesspolicies", None).await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("region"));
    // no credentials / read-only / write / delete
    let r = send(&client(), get(gw, "/api/v1/accesspolicies?region=eu", None)).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        call(
            gw,
            "ap-read",
            "GET",
            "/api/v1/accesspolicies?region=eu",
            None
        )
        .await
        .status,
        200
    );
    let r = call(
        gw,
        "ap-read",
        "POST",
        "/api/v1/accesspolicies?region=eu",
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.error().contains("accesspolicies:write"));
    let r = call(
        gw,
        "ap-write",
        "POST",
        "/api/v1/accesspolicies?region=eu",
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200);
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let path = format!("/api/v1/accesspolicies/{id}?region=eu");
    assert_eq!(
        call(gw, "ap-write", "DELETE", &path, None).await.status,
        403
    );
    // another region does not see it
    let other = format!("/api/v1/accesspolicies/{id}?region=us");
    assert_eq!(call(gw, "ap-read", "GET", &other, None).await.status, 404);
    assert_eq!(
        call(gw, "ap-delete", "DELETE", &path, None).await.status,
        204
    );
    assert_eq!(call(gw, "ap-read", "GET", &path, None).await.status, 404);
    // data-plane tokens without these scopes are refused
    assert_eq!(
        send(
            &client(),
            get(
                gw,
                "/api/v1/tokens?region=eu",
                Some(&format!("Bearer {}", tok("nobody")))
            )
        )
        .await
        .status,
        401
    );
    g.shutdown().await;
}

#[tokio::test]
async fn tokens_work_on_the_data_plane_with_realms_label_policies_and_subnets() {
    let up = Upstream::start().await;
    let s = setup(&up);
    let (g, gw) = start(&s).await;
    let p = create_policy(
        gw,
        json!({
            "name": "stack-readers",
            "displayName": "Stack Readers",
            "scopes": ["metrics:read"],
            "realms": [{"type": "stack", "identifier": "101",
                        "labelPolicies": [{"selector": "{env != \"dev\"}"}]}],
            "conditions": {"allowedSubnets": ["10.0.0.0/8"]}
        }),
    )
    .await;
    assert_eq!(p["orgId"], "1", "the org of stack 101's tenants");
    assert_eq!(p["displayName"], "Stack Readers");
    assert_eq!(p["conditions"]["allowedSubnets"], json!(["10.0.0.0/8"]));
    let pid = p["id"].as_str().unwrap().to_string();
    let r = call(
        gw,
        "admin",
        "POST",
        "/api/v1/tokens?region=eu",
        Some(json!({"accessPolicyId": pid, "name": "mytoken"})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let t = r.json();
    let text = t["token"].as_str().unwrap().to_string();
    assert!(text.starts_with("glc_"));
    assert_eq!(t["displayName"], "mytoken", "defaults to the name");
    assert!(t["firstUsedAt"].is_null());
    let tid = t["id"].as_str().unwrap().to_string();

    let q = "/prometheus/api/v1/query?query=up";
    // from 127.0.0.1: outside the allowed subnets
    let r = send(&client(), get(gw, q, Some(&basic("org1-metrics", &text)))).await;
    assert_eq!(r.status, 403);
    // conditions {} removes them (an update is a POST to the object)
    let r = call(
        gw,
        "admin",
        "POST",
        &format!("/api/v1/accesspolicies/{pid}?region=eu"),
        Some(json!({"conditions": {}})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("conditions").is_none());
    let r = send(&client(), get(gw, q, Some(&basic("org1-metrics", &text)))).await;
    assert_eq!(r.status, 200, "{}", r.error());
    let seen = up.last();
    assert_eq!(seen.headers["x-scope-orgid"], "org1-metrics");
    assert_eq!(
        seen.headers["x-prom-label-policy"],
        "org1-metrics:%7Benv%21=%22dev%22%7D"
    );
    // the stack realm does not cover the other stack's tenant
    let r = send(&client(), get(gw, q, Some(&basic("org2-metrics", &text)))).await;
    assert_eq!(r.status, 403);

    // first/last use are reported; the token text never again
    let r = call(
        gw,
        "ap-read",
        "GET",
        &format!("/api/v1/tokens/{tid}?region=eu"),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert!(v.get("token").is_none());
    assert!(
        v["firstUsedAt"].is_string() && v["lastUsedAt"].is_string(),
        "{v}"
    );

    // expiresAt in the past: refused at once; null: never expires
    let tpath = format!("/api/v1/tokens/{tid}?region=eu");
    let r = call(
        gw,
        "admin",
        "POST",
        &tpath,
        Some(json!({"expiresAt": "2020-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        send(&client(), get(gw, q, Some(&basic("org1-metrics", &text))))
            .await
            .status,
        401
    );
    let r = call(
        gw,
        "admin",
        "POST",
        &tpath,
        Some(json!({"expiresAt": null})),
    )
    .await;
    assert!(r.json()["expiresAt"].is_null());
    assert_eq!(
        send(&client(), get(gw, q, Some(&basic("org1-metrics", &text))))
            .await
            .status,
        200
    );
    // an inactive policy: 401
    let ppath = format!("/api/v1/accesspolicies/{pid}?region=eu");
    let r = call(
        gw,
        "admin",
        "POST",
        &ppath,
        Some(json!({"status": "inactive"})),
    )
    .await;
    assert_eq!(r.json()["status"], "inactive");
    assert_eq!(
        send(&client(), get(gw, q, Some(&basic("org1-metrics", &text))))
            .await
            .status,
        401
    );
    call(
        gw,
        "admin",
        "POST",
        &ppath,
        Some(json!({"status": "active"})),
    )
    .await;
    // deleting the token: 204, then 401
    assert_eq!(call(gw, "admin", "DELETE", &tpath, None).await.status, 204);
    assert_eq!(
        send(&client(), get(gw, q, Some(&basic("org1-metrics", &text))))
            .await
            .status,
        401
    );
    assert_eq!(call(gw, "admin", "GET", &tpath, None).await.status, 404);
    g.shutdown().await;
}

#[tokio::test]
async fn validation() {
    let up = Upstream::start().await;
    let s = setup(&up);
    let (g, gw) = start(&s).await;
    let post = |body: Value| async move {
        call(
            gw,
            "admin",
            "POST",
            "/api/v1/accesspolicies?region=eu",
            Some(body),
        )
        .await
        .status
        .as_u16()
    };
    let realm = json!([{"type": "org", "identifier": "1"}]);
    assert_eq!(
        post(json!({"name": "Bad Name", "scopes": [], "realms": realm})).await,
        400
    );
    assert_eq!(
        post(json!({"name": "x", "realms": realm})).await,
        400,
        "scopes required"
    );
    assert_eq!(
        post(json!({"name": "x", "scopes": []})).await,
        400,
        "realms required"
    );
    assert_eq!(
        post(json!({"name": "x", "scopes": ["nope"], "realms": realm})).await,
        400
    );
    assert_eq!(
        post(
            json!({"name": "x", "scopes": [], "realms": [{"type": "cluster", "identifier": "1"}]})
        )
        .await,
        400
    );
    assert_eq!(
        post(json!({"name": "x", "scopes": [], "realms": [{"type": "org", "identifier": "1", "labelPolicies": [{"selector": "{env=~\"(\"}"}]}]})).await,
        400
    );
    assert_eq!(
        post(json!({"name": "x", "scopes": [], "realms": realm, "conditions": {"allowedSubnets": ["10.0.0.0/33"]}})).await,
        400
    );
    assert_eq!(
        post(json!({"name": "x", "scopes": [], "realms": realm, "displayName": ""})).await,
        400
    );
    assert_eq!(
        post(json!({"name": "ok", "scopes": [], "realms": realm})).await,
        200
    );
    assert_eq!(
        post(json!({"name": "ok", "scopes": [], "realms": realm})).await,
        409
    );
    // a file-defined policy's name
    assert_eq!(
        post(json!({"name": "ap-read", "scopes": [], "realms": realm})).await,
        409
    );
    // tokens: unknown policy, bad expiry, bad name
    let tpost = |body: Value| async move {
        call(gw, "admin", "POST", "/api/v1/tokens?region=eu", Some(body))
            .await
            .status
            .as_u16()
    };
    assert_eq!(
        tpost(json!({"name": "t", "accessPolicyId": "nope"})).await,
        400
    );
    let list = call(
        gw,
        "admin",
        "GET",
        "/api/v1/accesspolicies?region=eu&name=ok",
        None,
    )
    .await;
    let pid = list.json()["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        tpost(json!({"name": "t", "accessPolicyId": pid, "expiresAt": "later"})).await,
        400
    );
    assert_eq!(
        tpost(json!({"name": "T!", "accessPolicyId": pid})).await,
        400
    );
    assert_eq!(
        tpost(json!({"name": "t", "accessPolicyId": pid})).await,
        200
    );
    assert_eq!(
        tpost(json!({"name": "t", "accessPolicyId": pid})).await,
        409
    );
    // paging parameters
    for bad in ["pageSize=0", "pageSize=501", "pageSize=x", "pageCursor=%%%"] {
        let r = call(
            gw,
            "admin",
            "GET",
            &format!("/api/v1/accesspolicies?region=eu&{bad}"),
            None,
        )
        .await;
        assert_eq!(r.status, 400, "{bad}");
    }
    let r = call(
        gw,
        "admin",
        "GET",
        "/api/v1/accesspolicies?region=eu&realmIdentifier=1",
        None,
    )
    .await;
    assert_eq!(r.status, 400, "realmIdentifier needs realmType");
    // not JSON, methods
    let r = send(
        &client(),
        Request::post(format!("http://{gw}/api/v1/accesspolicies?region=eu"))
            .header("authorization", format!("Bearer {}", tok("admin")))
            .body(Full::new(Bytes::from_static(b"nope")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        call(gw, "admin", "PUT", "/api/v1/accesspolicies?region=eu", None)
            .await
            .status,
        405
    );
    assert_eq!(
        call(
            gw,
            "admin",
            "DELETE",
            "/api/v1/accesspolicies?region=eu",
            None
        )
        .await
        .status,
        405
    );
    g.shutdown().await;
}

#[tokio::test]
async fn filters_and_paging() {
    let up = Upstream::start().await;
    let s = setup(&up);
    let (g, gw) = start(&s).await;
    let mut ids = Vec::new();
    for (name, kind, ident) in [
        ("a-org1", "org", "1"),
        ("b-stack101", "stack", "101"),
        ("c-org2", "org", "2"),
    ] {
        let p = create_policy(
            gw,
            json!({"name": name, "scopes": ["metrics:read"], "realms": [{"type": kind, "identifier": ident}]}),
        )
        .await;
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    // a policy in another region is never listed here
    let r = call(
        gw,
        "admin",
        "POST",
        "/api/v1/accesspolicies?region=us",
        Some(json!({"name": "d-us", "scopes": [], "realms": [{"type": "org", "identifier": "1"}]})),
    )
    .await;
    assert_eq!(r.status, 200);

    let names = |r: &Reply| -> Vec<String> {
        r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    let list = |q: &'static str| async move {
        call(
            gw,
            "ap-read",
            "GET",
            &format!("/api/v1/accesspolicies?region=eu{q}"),
            None,
        )
        .await
    };
    let mut all = names(&list("").await);
    all.sort();
    assert_eq!(all, ["a-org1", "b-stack101", "c-org2"]);
    assert_eq!(names(&list("&name=c-org2").await), ["c-org2"]);
    let mut orgs = names(&list("&realmType=org").await);
    orgs.sort();
    assert_eq!(orgs, ["a-org1", "c-org2"]);
    assert_eq!(
        names(&list("&realmType=org&realmIdentifier=2").await),
        ["c-org2"]
    );
    assert_eq!(names(&list("&status=inactive").await), Vec::<String>::new());

    // pages of one, following nextPage until it is null
    let mut seen = HashSet::new();
    let mut path = "/api/v1/accesspolicies?region=eu&pageSize=1".to_string();
    for _ in 0..10 {
        let r = call(gw, "ap-read", "GET", &path, None).await;
        assert_eq!(r.status, 200, "{path}");
        let j = r.json();
        assert_eq!(j["items"].as_array().unwrap().len(), 1);
        assert_eq!(j["metadata"]["pagination"]["pageSize"], 1);
        seen.insert(j["items"][0]["name"].as_str().unwrap().to_string());
        match j["metadata"]["pagination"]["nextPage"].as_str() {
            Some(next) => path = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // tokens: filters by policy name/id, token name, expiry; a policy delete takes its tokens
    for (pid, name, exp) in [
        (&ids[0], "t1", Value::Null),
        (&ids[0], "t2", json!("2030-01-01T00:00:00Z")),
        (&ids[1], "t3", json!("2020-01-01T00:00:00Z")),
    ] {
        let r = call(
            gw,
            "admin",
            "POST",
            "/api/v1/tokens?region=eu",
            Some(json!({"accessPolicyId": pid, "name": name, "expiresAt": exp})),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let tlist = |q: String| async move {
        let r = call(
            gw,
            "ap-read",
            "GET",
            &format!("/api/v1/tokens?region=eu{q}"),
            None,
        )
        .await;
        assert_eq!(r.status, 200);
        let mut n: Vec<String> = r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(tlist(String::new()).await, ["t1", "t2", "t3"]);
    assert_eq!(tlist("&accessPolicyName=a-org1".into()).await, ["t1", "t2"]);
    assert_eq!(tlist(format!("&accessPolicyId={}", ids[1])).await, ["t3"]);
    assert_eq!(tlist("&name=t2".into()).await, ["t2"]);
    assert_eq!(
        tlist("&expiresBefore=2025-01-01T00:00:00Z".into()).await,
        ["t3"]
    );
    assert_eq!(
        tlist("&expiresAfter=2025-01-01T00:00:00Z".into()).await,
        ["t2"]
    );
    assert_eq!(
        tlist("&accessPolicyRealmType=stack&accessPolicyRealmIdentifier=101".into()).await,
        ["t3"]
    );
    let r = call(
        gw,
        "admin",
        "DELETE",
        &format!("/api/v1/accesspolicies/{}?region=eu", ids[0]),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(tlist(String::new()).await, ["t3"]);
    g.shutdown().await;
}

#[tokio::test]
async fn cloud_objects_survive_a_restart() {
    let up = Upstream::start().await;
    let s = setup(&up);
    let (g, gw) = start(&s).await;
    let p = create_policy(
        gw,
        json!({"name": "kept", "scopes": ["metrics:read"], "realms": [{"type": "org", "identifier": "2"}]}),
    )
    .await;
    let r = call(
        gw,
        "admin",
        "POST",
        "/api/v1/tokens?region=eu",
        Some(json!({"accessPolicyId": p["id"], "name": "kept-token"})),
    )
    .await;
    let text = r.json()["token"].as_str().unwrap().to_string();
    g.shutdown().await;
    let (g, gw) = start(&s).await;
    let r = send(
        &client(),
        get(
            gw,
            "/prometheus/api/v1/query?query=up",
            Some(&basic("org2-metrics", &text)),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error());
    let r = call(
        gw,
        "ap-read",
        "GET",
        &format!(
            "/api/v1/accesspolicies/{}?region=eu",
            p["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(r.json()["name"], "kept");
    g.shutdown().await;
}

#[tokio::test]
async fn policy_names_are_one_namespace_and_token_names_may_repeat() {
    let up = Upstream::start().await;
    let s = setup(&up);
    let (g, gw) = start(&s).await;
    let p = create_policy(
        gw,
        json!({"name": "shared-name", "scopes": ["metrics:read"],
               "realms": [{"type": "org", "identifier": "1"}]}),
    )
    .await;
    let pid = p["id"].as_str().unwrap().to_string();
    // the GEM v3 dialect sees the Cloud policy's name as taken
    let r = call(
        gw,
        "admin",
        "POST",
        "/admin/api/v3/accesspolicies",
        Some(json!({"name": "shared-name", "realms": [{"tenant": "org1-metrics", "cluster": "local"}],
                    "scopes": ["metrics:read"]})),
    )
    .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    // and the other way round
    let r = call(
        gw,
        "admin",
        "POST",
        "/admin/api/v3/accesspolicies",
        Some(
            json!({"name": "gem-name", "realms": [{"tenant": "org1-metrics", "cluster": "local"}],
                    "scopes": ["metrics:read"]}),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = call(
        gw,
        "admin",
        "POST",
        "/api/v1/accesspolicies?region=eu",
        Some(json!({"name": "gem-name", "scopes": ["metrics:read"],
                    "realms": [{"type": "org", "identifier": "1"}]})),
    )
    .await;
    assert_eq!(r.status, 409, "{:?}", r.body);

    // a Cloud token may carry the name of a policy-file token ("admin"): both work
    let r = call(
        gw,
        "admin",
        "POST",
        "/api/v1/tokens?region=eu",
        Some(json!({"accessPolicyId": pid, "name": "admin"})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let text = r.json()["token"].as_str().unwrap().to_string();
    let q = "/prometheus/api/v1/query?query=up";
    let r = send(&client(), get(gw, q, Some(&basic("org1-metrics", &text)))).await;
    assert_eq!(r.status, 200, "{}", r.error());
    assert_eq!(up.last().headers["x-scope-orgid"], "org1-metrics");
    let r = call(gw, "admin", "GET", "/api/v1/accesspolicies?region=eu", None).await;
    assert_eq!(r.status, 200, "the file's admin token still works");
    g.shutdown().await;
}
