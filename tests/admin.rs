//! Admin API v3 (SPEC 9) over real sockets: authorization, create/read/update, ETag and
//! If-Match, soft delete, file-defined objects read-only, the data plane seeing changes at
//! once, persistence across a restart, and concurrent updates.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use std::net::SocketAddr;

fn admin_policies() -> String {
    format!(
        "{}  - {{name: admin-tok, access_policy: admin, hash: \"{}\"}}\n",
        policies().replace(
            "tokens:\n",
            "  - name: admin\n    scopes: [admin]\n    conditions:\n      allowed_subnets: [\"127.0.0.0/8\"]\ntokens:\n"
        ),
        hash(&tok("admin"))
    )
}

fn admin_auth() -> String {
    format!("Bearer {}", tok("admin"))
}

fn req(
    gw: SocketAddr,
    method: &str,
    path: &str,
    if_match: Option<&str>,
    body: Option<Value>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{gw}/admin/api/v3/{path}"))
        .header("authorization", admin_auth());
    if let Some(m) = if_match {
        b = b.header("if-match", m);
    }
    b.body(Full::new(Bytes::from(
        body.map(|v| v.to_string()).unwrap_or_default(),
    )))
    .unwrap()
}

async fn call(
    gw: SocketAddr,
    method: &str,
    path: &str,
    if_match: Option<&str>,
    body: Option<Value>,
) -> Reply {
    send(&client(), req(gw, method, path, if_match, body)).await
}

fn names(r: &Reply) -> Vec<String> {
    r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

/// Creates tenant `t`, a policy granting metrics:read on it, and a token; returns the token.
async fn tenant_policy_token(gw: SocketAddr, t: &str) -> String {
    let r = call(
        gw,
        "POST",
        "tenants",
        None,
        Some(json!({"name": t, "cluster": "local"})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = call(
        gw,
        "POST",
        "accesspolicies",
        None,
        Some(json!({"name": format!("{t}-read"), "realms": [{"tenant": t, "cluster": "local"}], "scopes": ["metrics:read"]})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = call(
        gw,
        "POST",
        "tokens",
        None,
        Some(json!({"name": format!("{t}-token"), "access_policy": format!("{t}-read")})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn admin_scope_is_required() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &admin_policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let r = send(&client(), get(gw, "/admin/api/v3/tenants", None)).await;
    assert_eq!(r.status, 401);
    let r = send(
        &client(),
        get(
            gw,
            "/admin/api/v3/tenants",
            Some(&format!("Bearer {}", tok("rw"))),
        ),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.error().contains("admin"), "{}", r.error());
    let r = send(
        &client(),
        get(gw, "/admin/api/v3/tenants", Some("Bearer glc_notbase64!")),
    )
    .await;
    assert_eq!(r.status, 401);
    // the admin policy only allows 127.0.0.0/8
    let r = send(
        &client_from("127.0.0.2".parse().unwrap()),
        get(gw, "/admin/api/v3/tenants", Some(&admin_auth())),
    )
    .await;
    assert_eq!(r.status, 200);
    // nothing reached the backend
    assert!(up.requests().is_empty());
    g.shutdown().await;
}

#[tokio::test]
async fn create_read_update_and_soft_delete_take_effect_on_the_data_plane() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &admin_policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();

    let token = tenant_policy_token(gw, "api-tenant").await;
    // in force at once: the new token reads the new tenant
    let q = "/prometheus/api/v1/query?query=up";
    let r = send(&client(), get(gw, q, Some(&basic("api-tenant", &token)))).await;
    assert_eq!(r.status, 200, "{}", r.error());
    assert_eq!(up.last().headers["x-scope-orgid"], "api-tenant");
    // but not a file-defined tenant its policy does not grant
    let r = send(&client(), get(gw, q, Some(&basic("team-a", &token)))).await;
    assert_eq!(r.status, 403);

    // the token text is shown once: GET has an ETag and no token
    let r = call(gw, "GET", "tokens/api-tenant-token", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["etag"], "\"1\"");
    assert!(r.json().get("token").is_none());
    assert_eq!(r.json()["access_policy"], "api-tenant-read");
    assert_eq!(r.json()["created_by"], "admin-tok");

    // mutations need If-Match: missing → 428, stale → 412, current → 200 with the next ETag
    let body = json!({"status": "inactive"});
    let r = call(
        gw,
        "PUT",
        "tokens/api-tenant-token",
        None,
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 428);
    let r = call(
        gw,
        "PUT",
        "tokens/api-tenant-token",
        Some("\"5\""),
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 412);
    let r = call(
        gw,
        "PUT",
        "tokens/api-tenant-token",
        Some("\"1\""),
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["etag"], "\"2\"");
    assert_eq!(r.json()["status"], "inactive");
    // soft-deleted: the data plane answers 401
    let r = send(&client(), get(gw, q, Some(&basic("api-tenant", &token)))).await;
    assert_eq!(r.status, 401);
    // lists hide it unless include-non-active=true
    let r = call(gw, "GET", "tokens", None, None).await;
    assert!(!names(&r).contains(&"api-tenant-token".to_string()));
    assert_eq!(r.json()["type"], "token");
    let r = call(gw, "GET", "tokens?include-non-active=true", None, None).await;
    assert!(names(&r).contains(&"api-tenant-token".to_string()));
    // re-activated with "*"
    let r = call(
        gw,
        "PUT",
        "tokens/api-tenant-token",
        Some("*"),
        Some(json!({"status": "active"})),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(&client(), get(gw, q, Some(&basic("api-tenant", &token)))).await;
    assert_eq!(r.status, 200);

    // an inactive tenant: its requests fail with 401
    let v = call(gw, "GET", "tenants/api-tenant", None, None).await;
    let etag = v.headers["etag"].to_str().unwrap().to_string();
    let r = call(
        gw,
        "PUT",
        "tenants/api-tenant",
        Some(&etag),
        Some(json!({"status": "inactive", "cluster": "local"})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = send(&client(), get(gw, q, Some(&basic("api-tenant", &token)))).await;
    assert_eq!(r.status, 401);

    // updating a policy's scopes is in force at once
    let r = call(
        gw,
        "PUT",
        "accesspolicies/api-tenant-read",
        Some("*"),
        Some(json!({"scopes": ["metrics:write"]})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["scopes"], json!(["metrics:write"]));
    // a PUT replaces the policy, as in the reference: the omitted realms are now empty
    assert_eq!(r.json()["realms"], json!([]));
    let r = send(&client(), get(gw, q, Some(&basic("api-tenant", &token)))).await;
    assert_eq!(r.status, 401, "inactive tenant");

    // a tenant too: a PUT without display_name clears it, an omitted status is kept
    let r = call(
        gw,
        "PUT",
        "tenants/api-tenant",
        Some("*"),
        Some(json!({"display_name": "API tenant", "cluster": "local"})),
    )
    .await;
    assert_eq!(r.json()["display_name"], "API tenant");
    assert_eq!(r.json()["status"], "inactive");
    let r = call(
        gw,
        "PUT",
        "tenants/api-tenant",
        Some("*"),
        Some(json!({"status": "active", "cluster": "local"})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("display_name").is_none(), "{:?}", r.body);
    assert_eq!(r.json()["status"], "active");
    g.shutdown().await;
}

#[tokio::test]
async fn validation_conflicts_and_read_only_file_objects() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &admin_policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let post =
        |path: &'static str, v: Value| async move { call(gw, "POST", path, None, Some(v)).await };

    // names
    assert_eq!(post("tenants", json!({"name": "X!"})).await.status, 400);
    assert_eq!(post("tenants", json!({"name": "ab"})).await.status, 400);
    assert_eq!(post("tenants", json!({})).await.status, 400);
    // a file-defined name, and a duplicate of an API-created one
    assert_eq!(post("tenants", json!({"name": "team-a"})).await.status, 409);
    assert_eq!(
        post("tenants", json!({"name": "new-one"})).await.status,
        200
    );
    assert_eq!(
        post("tenants", json!({"name": "new-one"})).await.status,
        409
    );
    // unknown cluster, tenant, scope, policy; bad expiration; bad JSON; wrong types
    assert_eq!(
        post("tenants", json!({"name": "other", "cluster": "mars"}))
            .await
            .status,
        400
    );
    let r = post(
        "accesspolicies",
        json!({"name": "p-ghost", "realms": [{"tenant": "ghost"}], "scopes": []}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("ghost"));
    let r = post(
        "accesspolicies",
        json!({"name": "p-scope", "realms": [], "scopes": ["metrics:reed"]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("metrics:reed"));
    assert_eq!(
        post(
            "accesspolicies",
            json!({"name": "p-wild", "realms": [{"tenant": "*"}], "scopes": ["admin"]})
        )
        .await
        .status,
        200
    );
    assert_eq!(
        post("tokens", json!({"name": "t1", "access_policy": "nope"}))
            .await
            .status,
        400
    );
    assert_eq!(
        post(
            "tokens",
            json!({"name": "t2", "access_policy": "p-wild", "expiration": "soon"})
        )
        .await
        .status,
        400
    );
    assert_eq!(
        post("tenants", json!(["not", "an", "object"])).await.status,
        400
    );
    let r = send(
        &client(),
        Request::post(format!("http://{gw}/admin/api/v3/tenants"))
            .header("authorization", admin_auth())
            .body(Full::new(Bytes::from_static(b"{\"name\": ")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 400);
    let big = "x".repeat(2 << 20);
    let r = send(
        &client(),
        Request::post(format!("http://{gw}/admin/api/v3/tenants"))
            .header("authorization", admin_auth())
            .body(Full::new(Bytes::from(big)))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 413);
    // file-defined objects are listed, readable, and read-only
    let r = call(gw, "GET", "tenants", None, None).await;
    let n = names(&r);
    assert!(n.contains(&"team-a".to_string()) && n.contains(&"new-one".to_string()));
    assert!(
        !n.contains(&"team-off".to_string()),
        "inactive hidden: {n:?}"
    );
    let r = call(gw, "GET", "accesspolicies/pol-rw", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["realms"],
        json!([{"tenant": "team-a", "cluster": "local"}])
    );
    let r = call(
        gw,
        "PUT",
        "accesspolicies/pol-rw",
        Some("*"),
        Some(json!({"status": "inactive"})),
    )
    .await;
    assert_eq!(r.status, 409);
    // unknown objects and endpoints; no DELETE in v3
    assert_eq!(
        call(gw, "GET", "tenants/ghost", None, None).await.status,
        404
    );
    assert_eq!(
        call(gw, "PUT", "tenants/ghost", Some("*"), Some(json!({})))
            .await
            .status,
        404
    );
    assert_eq!(call(gw, "GET", "widgets", None, None).await.status, 404);
    assert_eq!(
        call(gw, "DELETE", "tenants/new-one", Some("*"), None)
            .await
            .status,
        405
    );
    // clusters and features
    let r = call(gw, "GET", "clusters", None, None).await;
    assert_eq!(names(&r), vec!["local"]);
    assert_eq!(
        call(gw, "GET", "clusters/local", None, None).await.status,
        200
    );
    let r = call(gw, "GET", "features", None, None).await;
    assert_eq!(r.json()["features"]["editable_tenants"], "v1");
    g.shutdown().await;
}

#[tokio::test]
async fn objects_survive_a_restart() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &admin_policies(),
    );
    let g = s.start().await;
    let token = tenant_policy_token(g.shared_addr(), "kept").await;
    g.shutdown().await;
    assert!(s.path("data/admin-log/log").is_dir());

    let g = s.start().await;
    let gw = g.shared_addr();
    let r = send(
        &client(),
        get(
            gw,
            "/prometheus/api/v1/query?query=up",
            Some(&basic("kept", &token)),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error());
    let r = call(gw, "GET", "tokens/kept-token", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["etag"], "\"1\"");
    // and the admin store never holds the token text
    let saved = files_text(&s.path("data/admin-log"));
    assert!(saved.contains("kept-token") && !saved.contains(&token));
    g.shutdown().await;
}

#[tokio::test]
async fn two_updates_with_the_same_if_match_one_wins() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &admin_policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    assert_eq!(
        call(
            gw,
            "POST",
            "tenants",
            None,
            Some(json!({"name": "contested"}))
        )
        .await
        .status,
        200
    );
    for round in 0..5u64 {
        let etag = format!("\"{}\"", round + 1);
        let a = call(
            gw,
            "PUT",
            "tenants/contested",
            Some(&etag),
            Some(json!({"display_name": format!("a{round}")})),
        );
        let b = call(
            gw,
            "PUT",
            "tenants/contested",
            Some(&etag),
            Some(json!({"display_name": format!("b{round}")})),
        );
        let (a, b) = tokio::join!(a, b);
        let mut codes = [a.status.as_u16(), b.status.as_u16()];
        codes.sort();
        assert_eq!(codes, [200, 412], "round {round}");
    }
    g.shutdown().await;
}

#[tokio::test]
async fn api_objects_stay_in_force_across_policy_file_reloads() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(
            &backend(
                "metrics",
                "mimir",
                &up.url(),
                "    listen: \"127.0.0.1:0\"\n",
            ),
            "",
        ),
        &admin_policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    let token = tenant_policy_token(gw, "overlay").await;
    let q = "/prometheus/api/v1/query?query=up";
    let generation = g.store().snapshot().generation;
    // a policy file edit (a new file-defined tenant) is reloaded ...
    s.replace_policies(&admin_policies().replace("tenants:\n", "tenants:\n  - name: from-file\n"));
    let reloaded = eventually(std::time::Duration::from_secs(5), || async {
        g.store().snapshot().generation > generation
    })
    .await;
    assert!(reloaded.is_some(), "the edit was not reloaded");
    assert!(g.store().snapshot().tenants.contains_key("from-file"));
    // ... and the API's objects are still merged in
    let r = send(&client(), get(gw, q, Some(&basic("overlay", &token)))).await;
    assert_eq!(r.status, 200, "{}", r.error());
    // a dedicated backend listener does not serve the admin API
    let dedicated = g
        .addr_for(obsgate::config::BackendSlot::Metrics)
        .expect("dedicated listener");
    let r = send(
        &client(),
        get(dedicated, "/admin/api/v3/tenants", Some(&admin_auth())),
    )
    .await;
    assert_eq!(r.status, 404);
    g.shutdown().await;
}

async fn call_v1(
    gw: SocketAddr,
    method: &str,
    path: &str,
    if_match: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{gw}/admin/api/v1/{path}"))
        .header("authorization", admin_auth());
    if let Some(m) = if_match {
        b = b.header("if-match", m);
    }
    let req = b
        .body(Full::new(Bytes::from(
            body.map(|v| v.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    send(&client(), req).await
}

#[tokio::test]
async fn gem_v1_names_label_policies_and_delete_with_if_match() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &admin_policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();
    // instances are tenants
    let r = call_v1(
        gw,
        "POST",
        "instances",
        None,
        Some(json!({"name": "metrics-dev", "display_name": "Dev", "cluster": "local"})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = call_v1(gw, "GET", "instances", None, None).await;
    assert_eq!(r.json()["type"], "instance");
    assert!(names(&r).contains(&"metrics-dev".to_string()));
    assert_eq!(
        call(gw, "GET", "tenants/metrics-dev", None, None)
            .await
            .status,
        200,
        "the same object through v3"
    );
    // realms name an instance; label policies as matcher lists (NE is accepted for NEQ)
    let r = call_v1(
        gw,
        "POST",
        "accesspolicies",
        None,
        Some(json!({
            "name": "dev-read",
            "realms": [{"instance": "metrics-dev", "cluster": "local",
                        "label_policies": [{"selector": [
                            {"type": "EQ", "name": "job", "value": "grafana-labs"},
                            {"type": "NE", "name": "role", "value": "software-engineer"}]}]}],
            "scopes": ["metrics:read"]
        })),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.json()["realms"][0]["label_policies"][0]["selector"][1],
        json!({"type": "NEQ", "name": "role", "value": "software-engineer"})
    );
    assert_eq!(r.json()["realms"][0]["instance"], "metrics-dev");
    // a realm naming "tenant" is not v1
    let r = call_v1(
        gw,
        "POST",
        "accesspolicies",
        None,
        Some(json!({"name": "bad-realm", "realms": [{"tenant": "metrics-dev"}], "scopes": []})),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = call_v1(
        gw,
        "POST",
        "tokens",
        None,
        Some(json!({"name": "dev-token", "access_policy": "dev-read"})),
    )
    .await;
    assert_eq!(r.status, 200);
    let token = r.json()["token"].as_str().unwrap().to_string();
    let r = call_v1(gw, "GET", "tokens", None, None).await;
    assert_eq!(r.json()["type"], "key");
    // v1 policies carry an expiration ("0001-01-01T00:00:00Z" = never); v3 shows none
    let r = call_v1(gw, "GET", "accesspolicies/dev-read", None, None).await;
    assert_eq!(r.json()["expiration"], "0001-01-01T00:00:00Z");
    let r = call(gw, "GET", "accesspolicies/dev-read", None, None).await;
    assert!(r.json().get("expiration").is_none());
    // a policy that has expired: its tokens get 401, whatever their own expiration
    for (policy, expiration, status) in [
        ("old-policy", "2020-01-01T00:00:00Z", 401),
        ("new-policy", "2999-01-01T00:00:00+02:00", 200),
    ] {
        let r = call_v1(
            gw,
            "POST",
            "accesspolicies",
            None,
            Some(
                json!({"name": policy, "expiration": expiration, "scopes": ["metrics:read"],
                        "realms": [{"instance": "metrics-dev", "cluster": "local"}]}),
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(r.json()["expiration"].as_str().unwrap().ends_with('Z'));
        let r = call_v1(
            gw,
            "POST",
            "tokens",
            None,
            Some(json!({"name": format!("{policy}-token"), "access_policy": policy})),
        )
        .await;
        let t = r.json()["token"].as_str().unwrap().to_string();
        let r = send(
            &client(),
            get(
                gw,
                "/prometheus/api/v1/query?query=up",
                Some(&basic("metrics-dev", &t)),
            ),
        )
        .await;
        assert_eq!(r.status, status, "{policy}");
        // the reference's DELETE example says `/admin/api/v1/token/{name}`: it works too
        assert_eq!(
            call_v1(
                gw,
                "DELETE",
                &format!("token/{policy}-token"),
                Some("*"),
                None
            )
            .await
            .status,
            204
        );
    }
    let r = call_v1(
        gw,
        "POST",
        "accesspolicies",
        None,
        Some(json!({"name": "bad-exp", "expiration": "tomorrow", "scopes": []})),
    )
    .await;
    assert_eq!(r.status, 400);
    // the label policy reaches the backend
    let q = "/prometheus/api/v1/query?query=up";
    let r = send(&client(), get(gw, q, Some(&basic("metrics-dev", &token)))).await;
    assert_eq!(r.status, 200, "{}", r.error());
    let lp = up.last().headers["x-prom-label-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        lp.starts_with("metrics-dev:")
            && lp.contains("grafana-labs")
            && lp.contains("software-engineer"),
        "{lp}"
    );
    // DELETE needs If-Match: missing 428, stale 412, current 204; then the token gets 401
    assert_eq!(
        call_v1(gw, "DELETE", "tokens/dev-token", None, None)
            .await
            .status,
        428
    );
    assert_eq!(
        call_v1(gw, "DELETE", "tokens/dev-token", Some("\"9\""), None)
            .await
            .status,
        412
    );
    assert_eq!(
        call_v1(gw, "DELETE", "tokens/dev-token", Some("\"1\""), None)
            .await
            .status,
        204
    );
    let r = send(&client(), get(gw, q, Some(&basic("metrics-dev", &token)))).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        call_v1(gw, "GET", "tokens/dev-token", None, None)
            .await
            .status,
        404
    );
    // file-defined objects cannot be deleted; v3 has no DELETE
    assert_eq!(
        call_v1(gw, "DELETE", "instances/team-a", Some("*"), None)
            .await
            .status,
        409
    );
    assert_eq!(
        call(gw, "DELETE", "accesspolicies/dev-read", Some("*"), None)
            .await
            .status,
        405
    );
    assert_eq!(
        call_v1(gw, "DELETE", "accesspolicies/dev-read", Some("*"), None)
            .await
            .status,
        204
    );
    // v3 accepts label policies too, as selector text
    let r = call(
        gw,
        "POST",
        "accesspolicies",
        None,
        Some(json!({"name": "v3-lp", "realms": [{"tenant": "metrics-dev",
                    "label_policies": [{"selector": "{env!=\"dev\"}"}]}], "scopes": ["metrics:read"]})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.json()["realms"][0]["label_policies"][0]["selector"][0],
        json!({"type": "NEQ", "name": "env", "value": "dev"})
    );
    let r = call(
        gw,
        "POST",
        "accesspolicies",
        None,
        Some(
            json!({"name": "v3-badlp", "realms": [{"tenant": "metrics-dev",
                    "label_policies": [{"selector": "{env=~\"(\"}"}]}], "scopes": []}),
        ),
    )
    .await;
    assert_eq!(r.status, 400);
    g.shutdown().await;
}
