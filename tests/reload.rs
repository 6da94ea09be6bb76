//! Hot reload (SPEC 10): revocation of cached tokens within 2 s, rename-over, ConfigMap
//! `..data` symlink swaps, broken files keeping the last good set.

mod common;

use common::*;
use http::StatusCode;
use std::time::Duration;

const Q: &str = "/prometheus/api/v1/query?query=up";

async fn status(addr: std::net::SocketAddr, token: &str) -> StatusCode {
    send(&client(), get(addr, Q, Some(&basic("team-a", token))))
        .await
        .status
}

async fn metric(addr: std::net::SocketAddr, line_prefix: &str) -> f64 {
    let m = send(&client(), get(addr, "/metrics", None)).await;
    String::from_utf8_lossy(&m.body)
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn cached_token_is_revoked_within_2s_after_rename_over() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &policies(),
    );
    let gw = s.start().await;
    let addr = gw.shared_addr();
    let rw = tok("rw");
    // two requests: the second is served from the cache
    assert_eq!(status(addr, &rw).await, StatusCode::OK);
    assert_eq!(status(addr, &rw).await, StatusCode::OK);
    assert!(metric(addr, "obsgate_token_cache_hits_total").await >= 1.0);

    // token made inactive
    s.replace_policies(&policies().replace(
        "{name: rw, access_policy: pol-rw,",
        "{name: rw, access_policy: pol-rw, status: inactive,",
    ));
    let took = eventually(Duration::from_secs(2), || async {
        status(addr, &rw).await == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(took.is_some(), "revocation must hold within 2 s");

    // token back, then its policy made inactive
    s.replace_policies(&policies());
    assert!(
        eventually(Duration::from_secs(2), || async {
            status(addr, &rw).await == StatusCode::OK
        })
        .await
        .is_some()
    );
    s.replace_policies(&policies().replace(
        "  - name: pol-rw\n    scopes",
        "  - name: pol-rw\n    status: inactive\n    scopes",
    ));
    assert!(
        eventually(Duration::from_secs(2), || async {
            status(addr, &rw).await == StatusCode::UNAUTHORIZED
        })
        .await
        .is_some()
    );

    // token removed altogether
    s.replace_policies(&policies());
    assert!(
        eventually(Duration::from_secs(2), || async {
            status(addr, &rw).await == StatusCode::OK
        })
        .await
        .is_some()
    );
    let without: String = policies()
        .lines()
        .filter(|l| !l.contains("{name: rw,"))
        .map(|l| format!("{l}\n"))
        .collect();
    s.replace_policies(&without);
    assert!(
        eventually(Duration::from_secs(2), || async {
            status(addr, &rw).await == StatusCode::UNAUTHORIZED
        })
        .await
        .is_some()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn in_place_write_is_picked_up_and_expiry_holds() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &policies(),
    );
    let gw = s.start().await;
    let addr = gw.shared_addr();
    let ro = tok("ro");
    assert_eq!(status(addr, &ro).await, StatusCode::OK);
    // expires one second from now: refused from then on, with no reload needed
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let text = policies().replace(
        "{name: ro, access_policy: pol-ro,",
        &format!(
            "{{name: ro, access_policy: pol-ro, expires_at: \"{}\",",
            soon.to_rfc3339()
        ),
    );
    std::fs::write(s.path("policies.yaml"), text).unwrap();
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(addr, "obsgate_store_reloads_total{result=\"success\"}").await >= 2.0
        })
        .await
        .is_some()
    );
    assert_eq!(status(addr, &ro).await, StatusCode::OK, "not expired yet");
    assert!(
        eventually(Duration::from_secs(4), || async {
            status(addr, &ro).await == StatusCode::UNAUTHORIZED
        })
        .await
        .is_some()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn broken_policy_file_keeps_the_last_good_set_and_counts_the_failure() {
    let up = Upstream::start().await;
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
        &policies(),
    );
    let gw = s.start().await;
    let addr = gw.shared_addr();
    let rw = tok("rw");
    assert_eq!(status(addr, &rw).await, StatusCode::OK);
    let before = metric(addr, "obsgate_store_reloads_total{result=\"failure\"}").await;
    // garbage, then a file that parses but fails validation (and would revoke rw)
    s.replace_policies("tenants: [\n  - name: {{{");
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(addr, "obsgate_store_reloads_total{result=\"failure\"}").await >= before + 1.0
        })
        .await
        .is_some()
    );
    assert_eq!(
        status(addr, &rw).await,
        StatusCode::OK,
        "last good set still in force"
    );
    s.replace_policies(&policies().replace(
        "{name: rw, access_policy: pol-rw,",
        "{name: rw, access_policy: no-such-policy, status: inactive,",
    ));
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(addr, "obsgate_store_reloads_total{result=\"failure\"}").await >= before + 2.0
        })
        .await
        .is_some()
    );
    assert_eq!(
        status(addr, &rw).await,
        StatusCode::OK,
        "an invalid set is never applied, even partly"
    );
    // the file deleted: still the last good set
    std::fs::remove_file(s.path("policies.yaml")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(status(addr, &rw).await, StatusCode::OK);
    // and a good file is applied again
    s.replace_policies(&policies().replace(
        "{name: rw, access_policy: pol-rw,",
        "{name: rw, access_policy: pol-rw, status: inactive,",
    ));
    assert!(
        eventually(Duration::from_secs(2), || async {
            status(addr, &rw).await == StatusCode::UNAUTHORIZED
        })
        .await
        .is_some()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn kubernetes_configmap_symlink_swap_is_picked_up() {
    let up = Upstream::start().await;
    // ConfigMap layout: policies.yaml -> ..data/policies.yaml, ..data -> ..2026_v1
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..2026_v1")).unwrap();
    std::fs::write(d.join("..2026_v1/policies.yaml"), policies()).unwrap();
    std::os::unix::fs::symlink("..2026_v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policies.yaml", d.join("policies.yaml")).unwrap();
    std::fs::write(
        d.join("gateway.yaml"),
        gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), ""),
    )
    .unwrap();
    let gw = obsgate::proxy::server::start(obsgate::config::load(&d.join("gateway.yaml")).unwrap())
        .await
        .unwrap();
    let addr = gw.shared_addr();
    let rw = tok("rw");
    assert_eq!(status(addr, &rw).await, StatusCode::OK);
    // kubelet: write the new version into a new directory, swap ..data atomically
    std::fs::create_dir(d.join("..2026_v2")).unwrap();
    std::fs::write(
        d.join("..2026_v2/policies.yaml"),
        policies().replace(
            "{name: rw, access_policy: pol-rw,",
            "{name: rw, access_policy: pol-rw, status: inactive,",
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2026_v1")).unwrap();
    assert!(
        eventually(Duration::from_secs(2), || async {
            status(addr, &rw).await == StatusCode::UNAUTHORIZED
        })
        .await
        .is_some()
    );
    gw.shutdown().await;
}
