//! Policy files written as JSON (`*.json`): served, hot-reloaded and checked like YAML ones, alone
//! or in a list mixed with YAML files.

mod common;

use common::*;
use http::StatusCode;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const Q: &str = "/prometheus/api/v1/query?query=up";

async fn status(addr: SocketAddr, tenant: &str, token: &str) -> StatusCode {
    send(&client(), get(addr, Q, Some(&basic(tenant, token))))
        .await
        .status
}

async fn metric(addr: SocketAddr, line_prefix: &str) -> f64 {
    let m = send(&client(), get(addr, "/metrics", None)).await;
    String::from_utf8_lossy(&m.body)
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A gateway.yaml whose policy files are `files` (in its directory).
fn gateway(up: &Upstream, files: &str) -> String {
    gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), "").replace(
        "policy_files: [policies.yaml]",
        &format!("policy_files: [{files}]"),
    )
}

/// Tenants, two policies and two tokens, as JSON; `rw_status` is the rw token's status.
fn policies_json(rw_status: &str) -> String {
    format!(
        r#"{{
  "tenants": [{{"name": "team-a"}}, {{"name": "team-b"}}],
  "access_policies": [
    {{"name": "pol-rw", "scopes": ["metrics:read", "metrics:write"], "realms": [{{"tenant": "team-a"}}]}},
    {{"name": "pol-ro", "scopes": ["metrics:read"], "realms": [{{"tenant": "team-a"}}],
     "conditions": {{"allowed_subnets": ["127.0.0.0/8", "::1/128"]}}}}
  ],
  "tokens": [
    {{"name": "rw", "access_policy": "pol-rw", "status": "{rw_status}", "hash": "{}"}},
    {{"name": "ro", "access_policy": "pol-ro", "hash": "{}"}}
  ]
}}
"#,
        hash(&tok("rw")),
        hash(&tok("ro")),
    )
}

/// Writes `text` to `name` in the setup's directory by rename-over.
fn replace(s: &Setup, name: &str, text: &str) {
    let tmp = s.path(&format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, s.path(name)).unwrap();
}

#[tokio::test]
async fn json_policy_file_is_served_and_hot_reloaded() {
    let up = Upstream::start().await;
    let s = Setup::new(&gateway(&up, "policies.json"), "");
    std::fs::write(s.path("policies.json"), policies_json("active")).unwrap();
    let gw = s.start().await;
    let addr = gw.shared_addr();
    let (rw, ro) = (tok("rw"), tok("ro"));

    // allowed, and refused: a tenant the policy does not grant, a token the file does not hold
    assert_eq!(status(addr, "team-a", &rw).await, StatusCode::OK);
    assert_eq!(status(addr, "team-a", &ro).await, StatusCode::OK);
    assert_eq!(status(addr, "team-b", &rw).await, StatusCode::FORBIDDEN);
    assert_eq!(
        status(addr, "team-a", &tok("nobody")).await,
        StatusCode::UNAUTHORIZED
    );

    // the file rewritten (rename-over): rw made inactive, in force within 2 s
    replace(&s, "policies.json", &policies_json("inactive"));
    assert!(
        eventually(Duration::from_secs(2), || async {
            status(addr, "team-a", &rw).await == StatusCode::UNAUTHORIZED
        })
        .await
        .is_some(),
        "the JSON file's new set must be in force within 2 s"
    );
    assert_eq!(status(addr, "team-a", &ro).await, StatusCode::OK);

    // a truncated file and one that names an unknown policy: counted, the last good set stays
    let before = metric(addr, "obsgate_store_reloads_total{result=\"failure\"}").await;
    let good = policies_json("active");
    replace(&s, "policies.json", &good[..good.len() / 2]);
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(addr, "obsgate_store_reloads_total{result=\"failure\"}").await >= before + 1.0
        })
        .await
        .is_some()
    );
    replace(
        &s,
        "policies.json",
        &good.replace(
            "\"access_policy\": \"pol-rw\"",
            "\"access_policy\": \"pol-xx\"",
        ),
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(addr, "obsgate_store_reloads_total{result=\"failure\"}").await >= before + 2.0
        })
        .await
        .is_some()
    );
    assert_eq!(status(addr, "team-a", &rw).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(addr, "team-a", &ro).await, StatusCode::OK);

    // written in place, valid again: rw is back
    std::fs::write(s.path("policies.json"), &good).unwrap();
    assert!(
        eventually(Duration::from_secs(2), || async {
            status(addr, "team-a", &rw).await == StatusCode::OK
        })
        .await
        .is_some()
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn yaml_and_json_policy_files_mix() {
    let up = Upstream::start().await;
    let base = "tenants:\n  - name: team-a\naccess_policies:\n  - name: pol-ro\n    scopes: [metrics:read]\n    realms: [{tenant: team-a}]\n";
    let s = Setup::new(&gateway(&up, "policies.yaml, tokens.json"), base);
    let tokens = |names: &[&str]| {
        let list: Vec<String> = names
            .iter()
            .map(|n| {
                format!(
                    "  {{\"name\": \"{n}\", \"access_policy\": \"pol-ro\", \"hash\": \"{}\"}}",
                    hash(&tok(n))
                )
            })
            .collect();
        format!("{{\"tokens\": [\n{}\n]}}\n", list.join(",\n"))
    };
    std::fs::write(s.path("tokens.json"), tokens(&["one"])).unwrap();
    let gw = s.start().await;
    let addr = gw.shared_addr();
    assert_eq!(status(addr, "team-a", &tok("one")).await, StatusCode::OK);
    assert_eq!(
        status(addr, "team-a", &tok("two")).await,
        StatusCode::UNAUTHORIZED
    );
    // a token added to the JSON file, referring to the YAML file's policy
    replace(&s, "tokens.json", &tokens(&["one", "two"]));
    assert!(
        eventually(Duration::from_secs(2), || async {
            status(addr, "team-a", &tok("two")).await == StatusCode::OK
        })
        .await
        .is_some()
    );
    // and the YAML file changed under it: the policy's realm moves, the JSON tokens follow
    s.replace_policies(&base.replace("realms: [{tenant: team-a}]", "realms: []"));
    assert!(
        eventually(Duration::from_secs(2), || async {
            status(addr, "team-a", &tok("two")).await == StatusCode::FORBIDDEN
        })
        .await
        .is_some()
    );
    gw.shutdown().await;
}

#[test]
fn check_validates_json_policy_files() {
    let obsgate = || Command::new(env!("CARGO_BIN_EXE_obsgate"));
    let gw = gateway_yaml("", "").replace(
        "policy_files: [policies.yaml]",
        "policy_files: [policies.json]",
    );
    let s = Setup::new(&gw, "");
    std::fs::write(s.path("policies.json"), policies_json("active")).unwrap();
    let out = obsgate()
        .args(["check", "--config"])
        .arg(s.path("gateway.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("2 tenants")
            && stdout.contains("2 access policies")
            && stdout.contains("2 tokens"),
        "{stdout}"
    );

    // every error, each as FILE:LINE:COL, exit 1
    let bad = policies_json("active")
        .replace("{\"name\": \"team-b\"}", "{\"name\": \"X\"}")
        .replace(
            "\"access_policy\": \"pol-ro\"",
            "\"access_policy\": \"ghost\"",
        );
    std::fs::write(s.path("policies.json"), bad).unwrap();
    let out = obsgate()
        .args(["check", "--config"])
        .arg(s.path("gateway.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let file = s.path("policies.json").display().to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("{file}:2:44: invalid tenant name \"X\"")),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&format!("{file}:10:37: unknown access policy \"ghost\"")),
        "{stdout}"
    );

    // a syntax error: one located line
    std::fs::write(
        s.path("policies.json"),
        "{\"tenants\": [\n  {\"name\": \"team-a\"\n]}\n",
    )
    .unwrap();
    let out = obsgate()
        .args(["check", "--config"])
        .arg(s.path("gateway.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("{file}:3:1: expected `,` or `}}`")),
        "{stdout}"
    );
}
