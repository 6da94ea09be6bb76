//! Real servers started by the end-to-end tests: a child process killed on drop, free ports, and
//! the Prometheus binary (a skip without it, a failure under `OBSGATE_E2E=1`).

use std::process::{Child, Command, Stdio};

pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `Some("prometheus")` when it is installed. Without it the test is skipped, unless
/// `OBSGATE_E2E=1` (as in `.ci/run`), which makes a missing binary a failure.
pub fn prometheus_binary() -> Option<String> {
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match found {
        Ok(s) if s.success() => Some("prometheus".to_string()),
        _ => {
            if std::env::var("OBSGATE_E2E").as_deref() == Ok("1") {
                panic!(
                    "OBSGATE_E2E=1 but `prometheus` is not installed (apt-get install -y prometheus)"
                );
            }
            eprintln!("skipping: `prometheus` is not installed (apt-get install -y prometheus)");
            None
        }
    }
}

/// The nginx binary when it is installed with the `auth_request` module (`nginx` on the
/// PATH, else `/usr/sbin/nginx`). Without it the test is skipped, unless `OBSGATE_E2E=1`, which
/// makes a missing binary a failure.
pub fn nginx_binary() -> Option<String> {
    for bin in ["nginx", "/usr/sbin/nginx"] {
        // `nginx -V` prints its configure arguments on stderr
        let Ok(out) = Command::new(bin).arg("-V").stdin(Stdio::null()).output() else {
            continue;
        };
        if out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("http_auth_request_module")
        {
            return Some(bin.to_string());
        }
    }
    if std::env::var("OBSGATE_E2E").as_deref() == Ok("1") {
        panic!(
            "OBSGATE_E2E=1 but `nginx` with the auth_request module is not installed (apt-get install -y nginx)"
        );
    }
    eprintln!(
        "skipping: `nginx` with the auth_request module is not installed (apt-get install -y nginx)"
    );
    None
}

/// Starts `bin` with its stdout and stderr in `log`.
pub fn spawn(bin: &str, args: &[String], log: &std::path::Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let child = Command::new(bin)
        .args(args)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    Proc(child)
}

/// Waits (up to 30 s) until `GET path` answers 2xx.
pub async fn wait_http(addr: std::net::SocketAddr, path: &str) {
    let ok = super::eventually(std::time::Duration::from_secs(30), || async {
        matches!(
            tokio::time::timeout(
                std::time::Duration::from_secs(2),
                super::client().request(super::get(addr, path, None))
            )
            .await,
            Ok(Ok(r)) if r.status().is_success()
        )
    })
    .await;
    assert!(ok.is_some(), "{addr}{path} never became ready");
}

/// A Prometheus server with the remote-write receiver and no scrape targets, its files named
/// `<name>.yml`, `<name>-data`, `<name>.log` in `dir`; returns it and its port.
pub fn receiver(bin: &str, dir: &std::path::Path, name: &str) -> (Proc, u16) {
    let port = free_port();
    let cfg = dir.join(format!("{name}.yml"));
    std::fs::write(&cfg, "global:\n  scrape_interval: 15s\n").unwrap();
    let p = spawn(
        bin,
        &[
            format!("--config.file={}", cfg.display()),
            format!(
                "--storage.tsdb.path={}",
                dir.join(format!("{name}-data")).display()
            ),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--web.enable-remote-write-receiver".into(),
        ],
        &dir.join(format!("{name}.log")),
    );
    (p, port)
}

/// A Prometheus agent (`job`) scraping itself every second and remote-writing through the
/// gateway `gw` as `tenant` with `token`; `external_labels` is YAML indented under `global:`
/// (empty: none).
pub fn agent(
    bin: &str,
    dir: &std::path::Path,
    job: &str,
    external_labels: &str,
    gw: std::net::SocketAddr,
    tenant: &str,
    token: &str,
) -> Proc {
    let port = free_port();
    let cfg = dir.join(format!("{job}.yml"));
    let labels = if external_labels.is_empty() {
        String::new()
    } else {
        format!("  external_labels:\n{external_labels}\n")
    };
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n{labels}scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\nremote_write:\n  - url: \"http://{gw}/api/v1/push\"\n    basic_auth:\n      username: {tenant}\n      password: \"{token}\"\n    queue_config:\n      batch_send_deadline: 1s\n"
        ),
    )
    .unwrap();
    spawn(
        bin,
        &[
            "--enable-feature=agent".into(),
            format!("--config.file={}", cfg.display()),
            format!(
                "--storage.agent.path={}",
                dir.join(format!("{job}-data")).display()
            ),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &dir.join(format!("{job}.log")),
    )
}
