//! Service accounts (`/api/serviceaccounts`) over real sockets: create, search with paging, get,
//! PATCH, glsa_ tokens on the data plane, role scopes, disabling, token deletion, admin scope.

mod common;

use common::*;
use serde_json::json;

fn sa_policies() -> String {
    format!(
        r#"tenants:
  - name: org1-metrics
    org: "1"
  - name: org2-metrics
    org: "2"
access_policies:
  - name: admin
    scopes: [admin]
  - name: reader
    scopes: [metrics:read]
    realms: [{{tenant: org1-metrics}}]
tokens:
  - {{name: admin, access_policy: admin, hash: "{}"}}
  - {{name: reader, access_policy: reader, hash: "{}"}}
"#,
        hash(&tok("admin")),
        hash(&tok("reader")),
    )
}

#[tokio::test]
async fn service_accounts_and_their_glsa_tokens() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &sa_policies(),
    );
    let g = s.start().await;
    let gw = g.shared_addr();

    // admin scope only
    let r = call(gw, "reader", "GET", "/api/serviceaccounts/search", None).await;
    assert_eq!(r.status, 403);
    let r = send(&client(), get(gw, "/api/serviceaccounts/search", None)).await;
    assert_eq!(r.status, 401);

    // create: 201, default role Viewer; duplicates 409; bad role 400
    let r = call(
        gw,
        "admin",
        "POST",
        "/api/serviceaccounts",
        Some(json!({"name": "grafana"})),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let sa = r.json();
    assert_eq!(sa["role"], "Viewer");
    assert_eq!(sa["login"], "sa-grafana");
    assert_eq!(sa["orgId"], 1);
    assert_eq!(sa["isDisabled"], false);
    let id = sa["id"].as_u64().unwrap();
    assert_eq!(
        call(
            gw,
            "admin",
            "POST",
            "/api/serviceaccounts",
            Some(json!({"name": "grafana"}))
        )
        .await
        .status,
        409
    );
    assert_eq!(
        call(
            gw,
            "admin",
            "POST",
            "/api/serviceaccounts",
            Some(json!({"name": "x", "role": "Owner"}))
        )
        .await
        .status,
        400
    );
    assert_eq!(
        call(
            gw,
            "admin",
            "POST",
            "/api/serviceaccounts",
            Some(json!({"role": "Viewer"}))
        )
        .await
        .status,
        400
    );
    for n in ["test", "other"] {
        let r = call(
            gw,
            "admin",
            "POST",
            "/api/serviceaccounts",
            Some(json!({"name": n, "orgId": 2})),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    // search: query, paging, totalCount
    let r = call(
        gw,
        "admin",
        "GET",
        "/api/serviceaccounts/search?perpage=2&page=2",
        None,
    )
    .await;
    let j = r.json();
    assert_eq!(j["totalCount"], 3);
    assert_eq!(j["perPage"], 2);
    assert_eq!(j["page"], 2);
    assert_eq!(j["serviceAccounts"].as_array().unwrap().len(), 1);
    let r = call(
        gw,
        "admin",
        "GET",
        "/api/serviceaccounts/search?query=GRAF",
        None,
    )
    .await;
    assert_eq!(r.json()["totalCount"], 1);
    assert_eq!(r.json()["serviceAccounts"][0]["name"], "grafana");
    assert_eq!(
        call(
            gw,
            "admin",
            "GET",
            "/api/serviceaccounts/search?perpage=0",
            None
        )
        .await
        .status,
        400
    );
    // get; unknown ids
    let r = call(
        gw,
        "admin",
        "GET",
        &format!("/api/serviceaccounts/{id}"),
        None,
    )
    .await;
    assert_eq!(r.json()["name"], "grafana");
    assert_eq!(
        call(gw, "admin", "GET", "/api/serviceaccounts/999", None)
            .await
            .status,
        404
    );
    assert_eq!(
        call(gw, "admin", "GET", "/api/serviceaccounts/abc", None)
            .await
            .status,
        404
    );

    // a glsa_ token: shown once, works for the account's org with the role's scopes
    let r = call(
        gw,
        "admin",
        "POST",
        &format!("/api/serviceaccounts/{id}/tokens"),
        Some(json!({"name": "grafana"})),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let key = r.json()["key"].as_str().unwrap().to_string();
    let tid = r.json()["id"].as_u64().unwrap();
    assert!(
        obsgate::token::parse(&key).is_ok() && key.starts_with("glsa_"),
        "{key}"
    );
    let q = "/prometheus/api/v1/query?query=up";
    let r = send(&client(), get(gw, q, Some(&basic("org1-metrics", &key)))).await;
    assert_eq!(r.status, 200, "{}", r.error());
    // another org's tenant: not in its realm
    let r = send(&client(), get(gw, q, Some(&basic("org2-metrics", &key)))).await;
    assert_eq!(r.status, 403);
    // Viewer cannot write
    let push = post(gw, "/api/v1/push", Some(&basic("org1-metrics", &key)), "x");
    assert_eq!(send(&client(), push).await.status, 403);
    // PATCH to Editor: can write at once
    let r = call(
        gw,
        "admin",
        "PATCH",
        &format!("/api/serviceaccounts/{id}"),
        Some(json!({"role": "Editor"})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["role"], "Editor");
    assert_eq!(r.json()["tokens"], 1);
    let push = post(gw, "/api/v1/push", Some(&basic("org1-metrics", &key)), "x");
    assert_eq!(send(&client(), push).await.status, 200);
    // the token list shows the token, never the key
    let r = call(
        gw,
        "admin",
        "GET",
        &format!("/api/serviceaccounts/{id}/tokens"),
        None,
    )
    .await;
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "grafana");
    assert_eq!(list[0]["hasExpired"], false);
    assert!(!r.body.windows(key.len()).any(|w| w == key.as_bytes()));
    // disabled: its tokens get 401
    let r = call(
        gw,
        "admin",
        "PATCH",
        &format!("/api/serviceaccounts/{id}"),
        Some(json!({"isDisabled": true})),
    )
    .await;
    assert_eq!(r.json()["isDisabled"], true);
    assert_eq!(
        send(&client(), get(gw, q, Some(&basic("org1-metrics", &key))))
            .await
            .status,
        401
    );
    call(
        gw,
        "admin",
        "PATCH",
        &format!("/api/serviceaccounts/{id}"),
        Some(json!({"isDisabled": false})),
    )
    .await;
    assert_eq!(
        send(&client(), get(gw, q, Some(&basic("org1-metrics", &key))))
            .await
            .status,
        200
    );
    // a token with a lifetime reports when it expires
    let r = call(
        gw,
        "admin",
        "POST",
        &format!("/api/serviceaccounts/{id}/tokens"),
        Some(json!({"name": "short", "secondsToLive": 3600})),
    )
    .await;
    assert_eq!(r.status, 200);
    // out of range: a clear 400, nothing created
    for ttl in [json!(i64::MAX), json!(-1), json!(1.5), json!("3600")] {
        let r = call(
            gw,
            "admin",
            "POST",
            &format!("/api/serviceaccounts/{id}/tokens"),
            Some(json!({"name": "huge", "secondsToLive": ttl})),
        )
        .await;
        assert_eq!(r.status, 400, "{ttl}");
        assert!(r.error().contains("secondsToLive"), "{}", r.error());
    }
    let r = call(
        gw,
        "admin",
        "GET",
        &format!("/api/serviceaccounts/{id}/tokens"),
        None,
    )
    .await;
    let short = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "short")
        .cloned()
        .unwrap();
    assert!(short["expiration"].is_string());
    let left = short["secondsUntilExpiration"].as_i64().unwrap();
    assert!((3500..=3600).contains(&left), "{left}");
    // deleting the token: 200 with Grafana's message, then 401
    let r = call(
        gw,
        "admin",
        "DELETE",
        &format!("/api/serviceaccounts/{id}/tokens/{tid}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["message"], "API key deleted");
    assert_eq!(
        send(&client(), get(gw, q, Some(&basic("org1-metrics", &key))))
            .await
            .status,
        401
    );
    assert_eq!(
        call(
            gw,
            "admin",
            "DELETE",
            &format!("/api/serviceaccounts/{id}/tokens/{tid}"),
            None
        )
        .await
        .status,
        404
    );
    assert_eq!(
        call(gw, "admin", "PUT", "/api/serviceaccounts/1", None)
            .await
            .status,
        405
    );
    g.shutdown().await;

    // and it all survives a restart
    let g = s.start().await;
    let r = call(
        g.shared_addr(),
        "admin",
        "GET",
        "/api/serviceaccounts/search",
        None,
    )
    .await;
    assert_eq!(r.json()["totalCount"], 3);
    g.shutdown().await;
}
