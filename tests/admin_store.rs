//! The admin store on the local backend, through the real gateway: migration of the old
//! single-file state, checkpoints, two replicas on one store (If-Match across replicas,
//! propagation), and a store that cannot be written.

mod common;

use common::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

fn admin_policies() -> String {
    format!(
        "{}  - {{name: admin-tok, access_policy: admin, hash: \"{}\"}}\n",
        policies().replace(
            "tokens:\n",
            "  - name: admin\n    scopes: [admin]\ntokens:\n"
        ),
        hash(&tok("admin"))
    )
}

fn gateway(admin: &str) -> String {
    gateway_yaml(&backend("metrics", "mimir", "http://127.0.0.1:9", ""), "").replace(
        "  poll_interval: 100ms\n",
        &format!("  poll_interval: 100ms\n  data_dir: data\n  admin:\n{admin}"),
    )
}

async fn admin(
    gw: SocketAddr,
    method: &str,
    path: &str,
    if_match: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{gw}/admin/api/v3/{path}"))
        .header("authorization", format!("Bearer {}", tok("admin")));
    if let Some(m) = if_match {
        b = b.header("if-match", m);
    }
    let req = b
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.map(|v| v.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    send(&client(), req).await
}

/// An old `admin-state.json` (one document, whole state rewritten per write) becomes
/// checkpoint 0 of the admin store on first start, and is renamed so it is not read again.
#[tokio::test]
async fn the_old_state_file_is_migrated_into_the_store() {
    let s = Setup::new(&gateway("    backend: local\n"), &admin_policies());
    std::fs::create_dir_all(s.path("data")).unwrap();
    let secret = glc("old", "migrated");
    let old = json!({
        "version": 7,
        "data": {
            "tenants": {"old-tenant": {"version": 2, "created_at": "2026-01-01T00:00:00Z", "display_name": null, "status": "active", "cluster": "local"}},
            "access_policies": {"old-policy": {"version": 1, "created_at": "2026-01-01T00:00:00Z", "display_name": null, "status": "active",
                "realms": [{"tenant": "old-tenant", "cluster": "local"}], "scopes": ["metrics:read"]}},
            "tokens": {"old-token": {"version": 3, "created_at": "2026-01-01T00:00:00Z", "created_by": "x", "display_name": null, "status": "active",
                "access_policy": "old-policy", "expiration": null, "hash": hash(&secret)}},
            "next_id": 0
        }
    });
    std::fs::write(s.path("data/admin-state.json"), old.to_string()).unwrap();
    for round in 0..2 {
        let g = s.start().await;
        let gw = g.shared_addr();
        let r = admin(gw, "GET", "tokens/old-token", None, None).await;
        assert_eq!(r.status, 200, "round {round}: {}", r.error());
        assert_eq!(r.headers["etag"], "\"3\"", "versions are kept");
        let q = send(
            &client(),
            get(
                gw,
                "/prometheus/api/v1/query?query=up",
                Some(&basic("old-tenant", &secret)),
            ),
        )
        .await;
        // the upstream is down (502): what matters is that the token was accepted
        assert_eq!(q.status, 502, "round {round}: {}", q.error());
        g.shutdown().await;
        assert!(!s.path("data/admin-state.json").exists());
        assert!(s.path("data/admin-state.json.migrated").exists());
        assert!(
            s.path("data/admin-log/checkpoints/00000000000000000000.json")
                .exists()
        );
    }
}

/// After 4096 changes the writer stores a checkpoint; a replica started later reads it and
/// only the changes after it (shown by deleting the entries it covers).
#[tokio::test]
async fn a_checkpoint_bounds_what_a_new_replica_reads() {
    let s = Setup::new(&gateway("    backend: local\n"), &admin_policies());
    let g = s.start().await;
    let gw = g.shared_addr();
    let c = client();
    let mut last = String::new();
    for i in 0..4100 {
        last = format!("t-{i:05}");
        let req = hyper::Request::builder()
            .method("POST")
            .uri(format!("http://{gw}/admin/api/v3/tenants"))
            .header("authorization", format!("Bearer {}", tok("admin")))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                json!({"name": last}).to_string(),
            )))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, 200, "{}", r.error());
    }
    let cp = s.path("data/admin-log/checkpoints/00000000000000004096.json");
    let written = eventually(Duration::from_secs(10), || {
        let cp = cp.clone();
        async move { cp.exists() }
    })
    .await;
    assert!(written.is_some(), "checkpoint 4096 written");
    g.shutdown().await;
    // the log entries the checkpoint covers are not needed any more
    for seq in 1..=4096u64 {
        std::fs::remove_file(s.path(&format!("data/admin-log/log/{seq:020}.json"))).unwrap();
    }
    let g = s.start().await;
    let gw = g.shared_addr();
    for name in ["t-00000", "t-04095", &last] {
        let r = admin(gw, "GET", &format!("tenants/{name}"), None, None).await;
        assert_eq!(r.status, 200, "{name}: {}", r.error());
    }
    let m = send(&client(), get(gw, "/metrics", None)).await;
    assert!(
        String::from_utf8_lossy(&m.body).contains("obsgate_admin_store_generation 4100"),
        "the new replica applied every change"
    );
    g.shutdown().await;
}

/// Two replicas on one store: a change through either is in force on the other within the
/// poll interval, and two PUTs with the same If-Match through different replicas give one
/// 200 and one 412.
#[tokio::test]
async fn two_replicas_behave_as_one() {
    let s = Setup::new(
        &gateway("    backend: local\n    poll_interval: 100ms\n"),
        &admin_policies(),
    );
    let a = s.start().await;
    let b = s.start().await;
    let (ga, gb) = (a.shared_addr(), b.shared_addr());
    let r = admin(ga, "POST", "tenants", None, Some(json!({"name": "shared"}))).await;
    assert_eq!(r.status, 200, "{}", r.error());
    let seen = eventually(Duration::from_secs(2), || async move {
        admin(gb, "GET", "tenants/shared", None, None).await.status == 200
    })
    .await;
    assert!(seen.is_some(), "B sees A's tenant within 2 s");
    for round in 1..=10u64 {
        let m = format!("\"{round}\"");
        let (x, y) = tokio::join!(
            admin(
                ga,
                "PUT",
                "tenants/shared",
                Some(&m),
                Some(json!({"display_name": "a"}))
            ),
            admin(
                gb,
                "PUT",
                "tenants/shared",
                Some(&m),
                Some(json!({"display_name": "b"}))
            ),
        );
        let mut codes = [x.status, y.status];
        codes.sort();
        assert_eq!(
            codes,
            [200, 412],
            "round {round}: {} / {}",
            x.error(),
            y.error()
        );
    }
    // a client that moves between replicas is not refused on a state one replica has not
    // polled yet: a refusal is checked against the store first
    let r = admin(gb, "GET", "tenants/shared", None, None).await;
    let v: u64 = r.headers["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    let r = admin(
        ga,
        "PUT",
        "tenants/shared",
        Some(&format!("\"{v}\"")),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error());
    let r = admin(
        gb,
        "PUT",
        "tenants/shared",
        Some(&format!("\"{}\"", v + 1)),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "B read A's change before refusing: {}",
        r.error()
    );
    let r = admin(
        ga,
        "POST",
        "accesspolicies",
        None,
        Some(json!({"name": "made-on-a", "realms": [{"tenant": "shared"}], "scopes": ["metrics:read"]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error());
    let r = admin(
        gb,
        "POST",
        "tokens",
        None,
        Some(json!({"name": "made-on-b", "access_policy": "made-on-a"})),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "a token for a policy just made on A: {}",
        r.error()
    );
    // both answer version 13 now: no change was lost or made twice
    for gw in [ga, gb] {
        let done = eventually(Duration::from_secs(2), || async move {
            admin(gw, "GET", "tenants/shared", None, None).await.headers["etag"] == "\"13\""
        })
        .await;
        assert!(done.is_some());
    }
    a.shutdown().await;
    b.shutdown().await;
}
