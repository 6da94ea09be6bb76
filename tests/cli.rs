//! The `obsgate` binary (SPEC 1): check, token new, token hash, serve + signals.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn obsgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_obsgate"))
}

fn repo_config() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.yaml")
}

#[test]
fn check_accepts_the_example_config_and_prints_counts() {
    let out = obsgate()
        .args(["check", "--config"])
        .arg(repo_config())
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
            && stdout.contains("3 access policies")
            && stdout.contains("3 tokens"),
        "{stdout}"
    );
}

#[test]
fn check_prints_file_line_col_for_every_error_and_exits_1() {
    let s = Setup::new(
        &gateway_yaml("", ""),
        "tenants:\n  - name: ok-tenant\n  - name: X\naccess_policies:\n  - name: pol\n    scopes: [metrics:read]\n    realms:\n      - tenant: ghost\n",
    );
    let out = obsgate()
        .args(["check", "--config"])
        .arg(s.path("gateway.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let file = s.path("policies.yaml").display().to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("{file}:3:11: invalid tenant name")),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&format!("{file}:8:17: unknown tenant \"ghost\"")),
        "{stdout}"
    );

    // config errors are located in the config file
    let s = Setup::new("server:\n  listen: \"127.0.0.1:0\"\n  bogus: 1\n", "");
    let out = obsgate()
        .args(["check", "--config"])
        .arg(s.path("gateway.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "{}:3:3: unknown field `bogus`",
            s.path("gateway.yaml").display()
        )),
        "{stdout}"
    );
}

#[test]
fn token_new_prints_token_then_a_pasteable_entry_with_its_hash() {
    let out = obsgate()
        .args([
            "token",
            "new",
            "--access-policy",
            "team-a-rw",
            "--name",
            "ci",
            "--expires",
            "2027-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    let token = lines.next().unwrap();
    assert!(token.starts_with("glc_"));
    assert_eq!(
        obsgate::token::parse(token),
        Ok(obsgate::token::TokenKind::Glc)
    );
    let rest: String = lines.map(|l| format!("{l}\n")).collect();
    assert!(!rest.contains(token), "the entry never contains the token");
    assert!(
        rest.contains(&format!("hash: \"{}\"", hash(token))),
        "{rest}"
    );
    assert!(
        rest.contains("access_policy: team-a-rw")
            && rest.contains("expires_at: 2027-01-01T00:00:00Z")
    );
    // the entry pastes into a policy file that validates, and the token authenticates there
    let policy = format!(
        "tenants: [{{name: team-a}}]\naccess_policies:\n  - name: team-a-rw\n    scopes: [metrics:read]\n    realms: [{{tenant: team-a}}]\n{rest}"
    );
    let snap =
        obsgate::store::load::load_texts(&[(std::path::Path::new("p.yaml"), &policy)], "local")
            .unwrap();
    assert_eq!(
        snap.lookup(&obsgate::token::TokenHash::of(token))
            .unwrap()
            .name,
        "ci"
    );

    let out = obsgate()
        .args([
            "token",
            "new",
            "--service-account",
            "grafana",
            "--name",
            "sa-tok",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().next().unwrap();
    assert_eq!(
        obsgate::token::parse(token),
        Ok(obsgate::token::TokenKind::Glsa)
    );
    assert!(stdout.contains("service_account: grafana"));
}

#[test]
fn token_new_rejects_bad_arguments() {
    for args in [
        vec!["token", "new", "--name", "x"],
        vec![
            "token",
            "new",
            "--access-policy",
            "p",
            "--service-account",
            "s",
            "--name",
            "x",
        ],
        vec!["token", "new", "--access-policy", "p", "--name", "Bad Name"],
        vec![
            "token",
            "new",
            "--access-policy",
            "p",
            "--name",
            "x",
            "--expires",
            "tomorrow",
        ],
        vec![
            "token",
            "new",
            "--access-policy",
            "p",
            "--name",
            "x",
            "--kind",
            "jwt",
        ],
    ] {
        let out = obsgate().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "no token printed on error: {args:?}");
    }
}

#[test]
fn token_hash_prints_the_stored_form() {
    let out = obsgate()
        .args(["token", "hash", "glc_abc"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        hash("glc_abc")
    );
}

fn wait_for_line(child: &mut std::process::Child, needle: &str) -> Vec<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            let hit = l.contains(needle);
            seen.push(l);
            if hit {
                // keep draining in the background so the child never blocks on a full pipe
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return seen;
            }
        }
    }
    panic!("never saw {needle:?} in {seen:#?}");
}

#[tokio::test]
async fn serve_reloads_on_sighup_and_stops_on_sigterm() {
    let up = Upstream::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // polling every hour: only SIGHUP can make the change visible within the test
    let yaml = gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace("poll_interval: 100ms", "poll_interval: 1h");
    let s = Setup::new(&yaml, &policies());
    let mut child = obsgate()
        .args(["serve", "--config"])
        .arg(s.path("gateway.yaml"))
        .env("OBSGATE_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, "listening");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rw = tok("rw");
    let q = "/prometheus/api/v1/query?query=up";
    assert_eq!(
        send(&client(), get(addr, q, Some(&basic("team-a", &rw))))
            .await
            .status,
        200
    );
    std::fs::write(
        s.path("policies.yaml"),
        policies().replace(
            "{name: rw, access_policy: pol-rw,",
            "{name: rw, access_policy: pol-rw, status: inactive,",
        ),
    )
    .unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let revoked = eventually(Duration::from_secs(2), || async {
        send(&client(), get(addr, q, Some(&basic("team-a", &rw))))
            .await
            .status
            == 401
    })
    .await;
    assert!(revoked.is_some(), "SIGHUP reloads the policy files");
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
}

#[test]
fn serve_refuses_to_start_on_an_invalid_policy_file() {
    let s = Setup::new(&gateway_yaml("", ""), "tenants:\n  - name: X\n");
    let out = obsgate()
        .args(["serve", "--config"])
        .arg(s.path("gateway.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("policies.yaml:2:11"), "{stderr}");
}
