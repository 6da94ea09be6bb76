//! End to end with a real nginx (Debian's, with `auth_request`) in front of a recording upstream,
//! asking obsgate's forward-auth listener (the binary) about every request: the recipe the README
//! gives, row by row through the decision table (SPEC 5.3), label-policy headers copied through
//! the numbered `X-Prom-Label-Policy-<n>` answers, bodies, client addresses behind nginx,
//! throttling, metrics and the audit log; and rewrite mode, which forward-auth cannot offer.
//!
//! nginx's auth subrequest goes through a byte-recording TCP relay (`Tap`) on its way to obsgate,
//! so the test can see what nginx asked. Clients connect from 127.0.0.x addresses other than
//! 127.0.0.1, so nginx (127.0.0.1) is the trusted proxy and the client address is a real one.
//!
//! Skipped when nginx is not installed, unless OBSGATE_E2E=1, which makes it a failure.

mod common;

use bytes::Bytes;
use common::procs::{Proc, free_port, nginx_binary, spawn, wait_http};
use common::*;
use http::Request;
use http_body_util::Full;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Five selectors: one more than `numbered_label_policies: 4` lets nginx copy.
const FIVE: [&str; 5] = [
    r#"{a="1"}"#,
    r#"{b="2"}"#,
    r#"{c="3"}"#,
    r#"{d="4"}"#,
    r#"{e="5"}"#,
];

fn policies_yaml() -> String {
    let five: String = FIVE
        .iter()
        .map(|s| format!("          - selector: '{s}'\n"))
        .collect();
    let tokens: String = [
        ("rw", "pol-rw", ""),
        ("ro", "pol-ro", ""),
        ("lbac1", "pol-lbac1", ""),
        ("lbac2", "pol-lbac2", ""),
        ("lbac5", "pol-lbac5", ""),
        ("subnet", "pol-subnet", ""),
        ("revoked", "pol-rw", ", status: inactive"),
        (
            "expired",
            "pol-rw",
            ", expires_at: \"2020-01-01T00:00:00Z\"",
        ),
        ("only-b", "pol-b", ""),
    ]
    .iter()
    .map(|(name, pol, more)| {
        format!(
            "  - {{name: {name}, access_policy: {pol}, hash: \"{}\"{more}}}\n",
            hash(&tok(name))
        )
    })
    .collect();
    format!(
        r#"tenants:
  - name: team-a
  - name: team-b
  - name: team-off
    status: inactive
access_policies:
  - name: pol-rw
    scopes: [metrics:read, metrics:write, logs:read, logs:write]
    realms: [{{tenant: team-a}}]
  - name: pol-ro
    scopes: [metrics:read, logs:read]
    realms: [{{tenant: team-a}}]
  - name: pol-lbac1
    scopes: [metrics:read, logs:read]
    realms:
      - tenant: team-a
        label_policies:
          - selector: '{{env="prod"}}'
  - name: pol-lbac2
    scopes: [metrics:read, logs:read]
    realms:
      - tenant: team-a
        label_policies:
          - selector: '{{env="prod"}}'
          - selector: '{{team=~"a|b"}}'
  - name: pol-lbac5
    scopes: [metrics:read]
    realms:
      - tenant: team-a
        label_policies:
{five}  - name: pol-subnet
    scopes: [metrics:read]
    realms: [{{tenant: team-a}}]
    conditions:
      allowed_subnets: ["127.0.0.2/32"]
  - name: pol-b
    scopes: [metrics:read, metrics:write]
    realms: [{{tenant: team-b}}]
tokens:
{tokens}"#
    )
}

fn gateway_yaml(gw: u16, fa: u16, upstream: &str, lbac_mode: &str) -> String {
    format!(
        r#"server:
  listen: "127.0.0.1:{gw}"
cluster: local
store:
  policy_files: [policies.yaml]
backends:
  metrics:
    kind: mimir
    url: "{upstream}"
  logs:
    kind: loki
    url: "{upstream}"
lbac:
  mode: {lbac_mode}
client_ip:
  trusted_proxies: ["127.0.0.1/32"]
auth_throttle:
  burst: 3
  per_second: 0.01
forward_auth:
  listen: "127.0.0.1:{fa}"
  numbered_label_policies: 4
"#
    )
}

/// The server block of `docs/forward-auth/nginx.conf`, the one the README shows, with the
/// port and the upstream name left to fill in (`NGXPORT`, `MIMIR`).
fn recipe() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/forward-auth/nginx.conf"
    ))
    .unwrap();
    let server = &text[text.find("server {").expect("a server block")..];
    assert!(
        server.contains("listen 80;")
            && server.contains("proxy_pass http://mimir;")
            && server.contains("proxy_pass http://loki;")
    );
    // both backends are the recording upstream here (or the dead one)
    server
        .replace("listen 80;", "listen 127.0.0.1:NGXPORT;")
        .replace("proxy_pass http://mimir;", "proxy_pass http://MIMIR;")
        .replace("proxy_pass http://loki;", "proxy_pass http://MIMIR;")
}

/// The same without the error_page recipe: every auth status but 2xx/401/403 is nginx's 500.
const MINIMAL: &str = r#"
  server {
    listen 127.0.0.1:NGXPORT;
    location = /_obsgate_auth {
      internal;
      proxy_pass http://obsgate_auth/auth;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
    location / {
      auth_request /_obsgate_auth;
      auth_request_set $obsgate_tenant $upstream_http_x_scope_orgid;
      auth_request_set $obsgate_lp1 $upstream_http_x_prom_label_policy_1;
      proxy_set_header X-Scope-OrgID $obsgate_tenant;
      proxy_set_header X-Prom-Label-Policy $obsgate_lp1;
      proxy_set_header Authorization "";
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://MIMIR;
    }
  }
"#;

/// A TCP relay that keeps every byte sent through it towards `to`: what nginx asked obsgate.
struct Tap {
    addr: SocketAddr,
    sent: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    async fn start(to: SocketAddr) -> Tap {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let sent: Arc<Mutex<Vec<u8>>> = Arc::default();
        let s2 = sent.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = l.accept().await {
                let sent = s2.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut ir, mut iw) = inbound.into_split();
                    let (mut or, mut ow) = outbound.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            match ir.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    sent.lock().unwrap().extend_from_slice(&buf[..n]);
                                    if ow.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = ow.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut or, &mut iw).await;
                        let _ = iw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Tap { addr, sent, task }
    }

    fn len(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    /// Everything sent since `from`, lowercased.
    fn since(&self, from: usize) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()[from..]).to_lowercase()
    }
}

/// nginx as a child process (master and one worker); stopped with SIGTERM so that the master
/// takes its worker down with it, then SIGKILL if it does not exit.
struct Nginx {
    proc: Proc,
}

impl Nginx {
    fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// The processes whose parent is the master: its workers.
    fn workers(&self) -> Vec<u32> {
        let master = self.pid().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            if status
                .lines()
                .any(|l| l.strip_prefix("PPid:").map(str::trim) == Some(master.as_str()))
            {
                out.push(pid);
            }
        }
        out
    }

    /// SIGTERM, wait up to 10 s; true when the master exited by itself.
    fn stop(&mut self) -> bool {
        if let Ok(Some(_)) = self.proc.0.try_wait() {
            return true;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.proc.0.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc.kill();
        false
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The recording upstream, obsgate (the binary) with its forward-auth listener, and nginx with
/// three servers: the README's recipe, the same without the error_page recipe, and the recipe
/// in front of a dead backend.
struct Stack {
    dir: tempfile::TempDir,
    up: Upstream,
    tap: Tap,
    /// obsgate's shared listener
    gw: SocketAddr,
    /// obsgate's forward-auth listener (nginx reaches it through the tap)
    fa: SocketAddr,
    /// nginx: the recipe
    ngx: SocketAddr,
    /// nginx: without the error_page recipe
    minimal: SocketAddr,
    /// nginx: the recipe, in front of a backend nothing listens on (port 1)
    dead: SocketAddr,
    nginx: Nginx,
    _obsgate: Proc,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Stack {
    async fn start(nginx_bin: &str, lbac_mode: &str) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        // Started as root, nginx runs its worker as `nobody`: the worker must be able to reach
        // the temp paths (nginx chowns those to it), where a pushed body is buffered.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let up = Upstream::start().await;
        let (gw_port, fa_port) = (free_port(), free_port());
        std::fs::write(
            d.join("gateway.yaml"),
            gateway_yaml(gw_port, fa_port, &up.url(), lbac_mode),
        )
        .unwrap();
        std::fs::write(d.join("policies.yaml"), policies_yaml()).unwrap();
        let obsgate = spawn(
            env!("CARGO_BIN_EXE_obsgate"),
            &[
                "serve".into(),
                "--config".into(),
                d.join("gateway.yaml").display().to_string(),
            ],
            &d.join("obsgate.log"),
        );
        let (gw, fa) = (local(gw_port), local(fa_port));
        let tap = Tap::start(fa).await;

        let (ngx, minimal, dead) = (local(free_port()), local(free_port()), local(free_port()));
        let servers = recipe()
            .replace("NGXPORT", &ngx.port().to_string())
            .replace("MIMIR", "mimir")
            + &MINIMAL
                .replace("NGXPORT", &minimal.port().to_string())
                .replace("MIMIR", "mimir")
            + &recipe()
                .replace("NGXPORT", &dead.port().to_string())
                .replace("MIMIR", "dead");
        let p = d.display();
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {p}/access.log;
  client_body_temp_path {p}/client_body;
  proxy_temp_path {p}/proxy;
  fastcgi_temp_path {p}/fastcgi;
  uwsgi_temp_path {p}/uwsgi;
  scgi_temp_path {p}/scgi;
  upstream obsgate_auth {{ server {tap}; keepalive 16; }}
  upstream mimir        {{ server {upstream}; keepalive 16; }}
  upstream dead         {{ server 127.0.0.1:1; }}
{servers}}}
"#,
            tap = tap.addr,
            upstream = up.addr,
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let args: Vec<String> = vec![
            "-p".into(),
            format!("{p}/"),
            "-c".into(),
            conf_path.display().to_string(),
            "-e".into(),
            format!("{p}/error.log"),
        ];
        let t = Command::new(nginx_bin)
            .args(&args)
            .arg("-t")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&t.stderr);
        assert!(
            t.status.success() && !said.contains("[warn]"),
            "nginx -t refused or warned about the config:\n{said}"
        );
        let nginx = Nginx {
            proc: spawn(nginx_bin, &args, &d.join("nginx.out")),
        };
        let mut st = Stack {
            dir,
            up,
            tap,
            gw,
            fa,
            ngx,
            minimal,
            dead,
            nginx,
            _obsgate: obsgate,
        };
        wait_http(gw, "/ready").await;
        wait_http(fa, "/ready").await;
        // nginx is up when it accepts on its three ports and has started its worker
        let t0 = Instant::now();
        loop {
            if let Ok(Some(s)) = st.nginx.proc.0.try_wait() {
                panic!("nginx exited: {s}\n{}", st.logs());
            }
            let mut up = !st.nginx.workers().is_empty();
            for a in [ngx, minimal, dead] {
                up &= tokio::net::TcpStream::connect(a).await.is_ok();
            }
            if up {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "nginx never came up\n{}",
                st.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        st
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        ["obsgate.log", "nginx.out", "error.log"]
            .iter()
            .map(|n| format!("--- {n}\n{}", self.read(n)))
            .collect()
    }

    fn count(&self) -> usize {
        self.up.requests().len()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// A request to `addr` with extra headers.
fn req(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// Sends `r` from the client address `ip`.
async fn from(ip: &str, r: Request<Full<Bytes>>) -> Reply {
    send(&client_from(ip.parse().unwrap()), r).await
}

fn values(r: &Recorded, name: &str) -> Vec<String> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// Go's `url.PathEscape` of the selectors used here.
fn path_escape(s: &str) -> String {
    s.replace('{', "%7B")
        .replace('}', "%7D")
        .replace('"', "%22")
        .replace('|', "%7C")
}

const QUERY: &str = "/prometheus/api/v1/query?query=up";

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_with_obsgate_forward_auth_header_mode() {
    let Some(bin) = nginx_binary() else {
        return;
    };
    let t0 = Instant::now();
    let st = Stack::start(&bin, "header").await;
    let ngx = st.ngx;
    let rw = basic("team-a", &tok("rw"));

    // --- 1. an allowed read: the resolved tenant, no credentials, no label policy upstream;
    // the client's own X-Scope-OrgID and X-Prom-Label-Policy never reach it
    let n = st.count();
    let r = from(
        "127.0.0.2",
        req(
            "GET",
            ngx,
            QUERY,
            &[
                ("authorization", &rw),
                ("x-scope-orgid", "team-b"),
                ("x-prom-label-policy", "team-a:%7B%7D"),
            ],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, "ok");
    assert_eq!(st.count(), n + 1);
    let seen = st.up.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri.to_string(), QUERY);
    assert_eq!(values(&seen, "x-scope-orgid"), ["team-a"]);
    assert!(seen.headers.get("authorization").is_none(), "{seen:?}");
    assert!(values(&seen, "x-prom-label-policy").is_empty(), "{seen:?}");
    assert!(seen.headers.get("x-prom-label-policy-1").is_none());
    // with an empty Basic username the client's X-Scope-OrgID is the requested tenant
    let empty_user = basic("", &tok("rw"));
    let r = from(
        "127.0.0.2",
        req(
            "GET",
            ngx,
            QUERY,
            &[("authorization", &empty_user), ("x-scope-orgid", "team-b")],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 403, "team-b is outside pol-rw's realms");
    assert_eq!(st.count(), n + 1);
    let r = from(
        "127.0.0.2",
        req(
            "GET",
            ngx,
            QUERY,
            &[("authorization", &empty_user), ("x-scope-orgid", "team-a")],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(values(&st.up.last(), "x-scope-orgid"), ["team-a"]);
    // neither a username nor X-Scope-OrgID: the policy's only tenant
    let r = from(
        "127.0.0.2",
        get(ngx, QUERY, Some(&basic("", &tok("only-b")))),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(values(&st.up.last(), "x-scope-orgid"), ["team-b"]);

    // --- 2. label policies: every value on its own X-Prom-Label-Policy line, the client's
    // forged value suppressed; more values than nginx copies is refused
    let forged = ("x-prom-label-policy", "team-a:%7B%7D");
    let lbac1 = basic("team-a", &tok("lbac1"));
    let r = from(
        "127.0.0.2",
        req("GET", ngx, QUERY, &[("authorization", &lbac1), forged], ""),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = st.up.last();
    assert_eq!(
        values(&seen, "x-prom-label-policy"),
        ["team-a:%7Benv=%22prod%22%7D"]
    );
    assert_eq!(values(&seen, "x-scope-orgid"), ["team-a"]);
    assert!(seen.headers.get("x-prom-label-policy-1").is_none());
    // a Loki read gets the same
    let r = from(
        "127.0.0.2",
        req(
            "GET",
            ngx,
            "/loki/api/v1/query_range?query=%7Bjob%3D%22x%22%7D",
            &[("authorization", &lbac1), forged],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        values(&st.up.last(), "x-prom-label-policy"),
        ["team-a:%7Benv=%22prod%22%7D"]
    );
    let lbac2 = basic("team-a", &tok("lbac2"));
    let r = from(
        "127.0.0.2",
        req("GET", ngx, QUERY, &[("authorization", &lbac2), forged], ""),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        values(&st.up.last(), "x-prom-label-policy"),
        [
            "team-a:%7Benv=%22prod%22%7D",
            format!("team-a:{}", path_escape(r#"{team=~"a|b"}"#)).as_str()
        ]
    );
    // what nginx copied is exactly what obsgate answered
    let direct = send(
        &client(),
        req(
            "GET",
            st.fa,
            "/auth",
            &[
                ("authorization", &lbac2),
                ("x-original-method", "GET"),
                ("x-original-uri", QUERY),
            ],
            "",
        ),
    )
    .await;
    assert_eq!(direct.status, 200);
    let answered: Vec<_> = direct
        .headers
        .get_all("x-prom-label-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(answered, values(&st.up.last(), "x-prom-label-policy"));
    let n = st.count();
    let lbac5 = basic("team-a", &tok("lbac5"));
    let r = from("127.0.0.2", get(ngx, QUERY, Some(&lbac5))).await;
    assert_eq!(r.status, 403, "five label policies, four numbered headers");
    assert_eq!(st.count(), n);
    let direct = send(
        &client(),
        req(
            "GET",
            st.fa,
            "/auth",
            &[
                ("authorization", &lbac5),
                ("x-original-method", "GET"),
                ("x-original-uri", QUERY),
            ],
            "",
        ),
    )
    .await;
    assert_eq!(direct.status, 403);
    assert!(
        direct.error().contains("numbered_label_policies"),
        "{}",
        direct.error()
    );

    // --- 3. a push: the body reaches the upstream intact; the auth question carried none
    let body: Vec<u8> = (0..100 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
    let digest: [u8; 32] = Sha256::digest(&body).into();
    let n = st.count();
    let asked = st.tap.len();
    let r = from(
        "127.0.0.2",
        req(
            "POST",
            ngx,
            "/api/v1/push",
            &[
                ("authorization", &rw),
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "snappy"),
            ],
            body.clone(),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(st.count(), n + 1);
    let seen = st.up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri.path(), "/api/v1/push");
    assert_eq!(seen.body_len, body.len());
    assert_eq!(seen.body_sha256, digest);
    assert_eq!(values(&seen, "x-scope-orgid"), ["team-a"]);
    assert_eq!(values(&seen, "content-encoding"), ["snappy"]);
    let q = st.tap.since(asked);
    assert_eq!(
        q.matches("get /auth/-/metrics http/1.1\r\n").count(),
        1,
        "{q}"
    );
    assert!(q.contains("\r\nx-original-method: post\r\n"), "{q}");
    assert!(q.contains("\r\nx-original-uri: /api/v1/push\r\n"), "{q}");
    assert!(q.contains("\r\nx-forwarded-for: 127.0.0.2\r\n"), "{q}");
    assert!(
        !q.contains("content-length") && !q.contains("transfer-encoding"),
        "{q}"
    );
    assert!(q.ends_with("\r\n\r\n") && q.len() < 4096, "{q}");

    // --- 4. the decision table, row by row; nothing denied reaches the upstream.
    // Each failed authentication comes from its own address (throttling is burst 3).
    let n = st.count();
    // credentials missing: 401 with the challenge
    let r = from("127.0.1.1", get(ngx, QUERY, None)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Basic realm=\"obsgate\"");
    // malformed, unknown, revoked, expired: 401 alike
    let malformed = "Bearer glc_not-base64!";
    let unknown = basic("team-a", &glc("test", "nobody"));
    let revoked = basic("team-a", &tok("revoked"));
    let expired = basic("team-a", &tok("expired"));
    // an inactive tenant and an unknown tenant: 401
    let team_off = basic("team-off", &tok("rw"));
    let nobody = basic("nobody", &tok("rw"));
    for (i, a) in [malformed, &unknown, &revoked, &expired, &team_off, &nobody]
        .into_iter()
        .enumerate()
    {
        let ip = format!("127.0.1.{}", i + 2);
        let r = from(&ip, get(ngx, QUERY, Some(a))).await;
        assert_eq!(r.status, 401, "case {i}");
        assert_eq!(
            r.headers["www-authenticate"], "Basic realm=\"obsgate\"",
            "case {i}"
        );
    }
    // client subnet: 127.0.0.3 is not in 127.0.0.2/32, whatever X-Forwarded-For it claims
    let subnet = basic("team-a", &tok("subnet"));
    let r = from("127.0.0.3", get(ngx, QUERY, Some(&subnet))).await;
    assert_eq!(r.status, 403);
    let r = from(
        "127.0.0.3",
        req(
            "GET",
            ngx,
            QUERY,
            &[
                ("authorization", &subnet),
                ("x-forwarded-for", "127.0.0.2"),
                ("x-real-ip", "127.0.0.2"),
            ],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 403, "a forged X-Forwarded-For must not pass");
    assert_eq!(st.count(), n);
    let r = from("127.0.0.2", get(ngx, QUERY, Some(&subnet))).await;
    assert_eq!(r.status, 200);
    assert_eq!(st.count(), n + 1);
    let n = n + 1;
    // a tenant outside the policy's realms: 403
    let r = from(
        "127.0.0.2",
        get(ngx, QUERY, Some(&basic("team-b", &tok("rw")))),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = from(
        "127.0.0.2",
        get(ngx, QUERY, Some(&basic("team-a", &tok("only-b")))),
    )
    .await;
    assert_eq!(r.status, 403);
    // a scope the policy lacks: 403
    let ro = basic("team-a", &tok("ro"));
    let r = from(
        "127.0.0.2",
        post(ngx, "/api/v1/push", Some(&ro), vec![0u8; 1000]),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(st.count(), n);
    // an unknown route: obsgate's 404 and JSON body through the recipe; 500 without it
    let r = from("127.0.0.2", get(ngx, "/nope", Some(&rw))).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(r.json()["status"], "error", "{:?}", r.body);
    assert!(
        r.error().contains("no route for GET /nope"),
        "{}",
        r.error()
    );
    let r = from("127.0.0.2", get(st.minimal, "/nope", Some(&rw))).await;
    assert_eq!(r.status, 500);
    // the recipe asks with GET whatever the client's method: obsgate's /auth answers GET and
    // POST, so a DELETE asked as a DELETE would come back 405 about /auth itself
    let r = from(
        "127.0.0.2",
        req(
            "DELETE",
            ngx,
            "/prometheus/api/v1/query",
            &[("authorization", &rw)],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert!(
        r.error()
            .contains("no route for DELETE /prometheus/api/v1/query"),
        "{}",
        r.error()
    );
    assert_eq!(st.count(), n);
    // a client naming another request in Traefik's headers: 400, never forwarded
    let r = from(
        "127.0.0.2",
        req(
            "POST",
            ngx,
            "/api/v1/push",
            &[
                ("authorization", &rw),
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/prometheus/api/v1/query"),
            ],
            vec![1u8; 1000],
        ),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(
        r.error().contains("the original request is given twice"),
        "{}",
        r.error()
    );
    let r = from(
        "127.0.0.2",
        req(
            "POST",
            st.minimal,
            "/api/v1/push",
            &[
                ("authorization", &rw),
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/prometheus/api/v1/query"),
            ],
            vec![1u8; 1000],
        ),
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(st.count(), n);
    // allowed, but the backend is down: nginx's 502
    let r = from("127.0.0.2", get(st.dead, QUERY, Some(&rw))).await;
    assert_eq!(r.status, 502);
    assert_eq!(st.count(), n);

    // --- 5. throttling: after three failed authentications from 127.0.2.1 even a good token
    // gets 429 with Retry-After (through the recipe), while another address is served
    let bad = basic("team-a", &glc("test", "guess"));
    for i in 0..3 {
        let r = from("127.0.2.1", get(ngx, QUERY, Some(&bad))).await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let r = from("127.0.2.1", get(ngx, QUERY, Some(&rw))).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert_eq!(r.json()["status"], "error", "{:?}", r.body);
    let r = from("127.0.2.1", get(st.minimal, QUERY, Some(&rw))).await;
    assert_eq!(r.status, 500, "429 without the recipe");
    assert_eq!(st.count(), n);
    let r = from("127.0.2.2", get(ngx, QUERY, Some(&rw))).await;
    assert_eq!(r.status, 200);
    let r = from("127.0.2.2", get(ngx, QUERY, Some(&bad))).await;
    assert_eq!(r.status, 401);
    assert_eq!(st.count(), n + 1);

    // --- 6. metrics and the audit log
    let m = send(&client(), get(st.gw, "/metrics", None)).await;
    let text = String::from_utf8_lossy(&m.body).to_string();
    let fa_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("mode=\"forward_auth\""))
        .collect();
    for want in [
        r#"obsgate_requests_total{backend="metrics",code="200",mode="forward_auth",route="/prometheus/api/v1/query"}"#,
        r#"obsgate_requests_total{backend="metrics",code="401",mode="forward_auth",route="/prometheus/api/v1/query"}"#,
        r#"obsgate_requests_total{backend="metrics",code="403",mode="forward_auth",route="/api/v1/push"}"#,
        r#"obsgate_requests_total{backend="metrics",code="429",mode="forward_auth",route="/prometheus/api/v1/query"}"#,
        r#"obsgate_requests_total{backend="none",code="404",mode="forward_auth",route="unmatched"}"#,
        r#"obsgate_requests_total{backend="none",code="400",mode="forward_auth",route="invalid"}"#,
        r#"obsgate_auth_decisions_total{mode="forward_auth",reason="ok",result="allow"}"#,
        r#"obsgate_auth_decisions_total{mode="forward_auth",reason="missing_credentials",result="deny"}"#,
        r#"obsgate_auth_decisions_total{mode="forward_auth",reason="invalid_token",result="deny"}"#,
        r#"obsgate_auth_decisions_total{mode="forward_auth",reason="subnet_not_allowed",result="deny"}"#,
        r#"obsgate_auth_decisions_total{mode="forward_auth",reason="tenant_not_in_realm",result="deny"}"#,
        r#"obsgate_auth_decisions_total{mode="forward_auth",reason="missing_scope",result="deny"}"#,
        r#"obsgate_auth_decisions_total{mode="forward_auth",reason="label_policy",result="deny"}"#,
        r#"obsgate_auth_decisions_total{mode="forward_auth",reason="throttled",result="deny"}"#,
    ] {
        assert!(
            fa_lines.iter().any(|l| l.starts_with(&format!("{want} "))),
            "missing {want}:\n{}",
            fa_lines.join("\n")
        );
    }
    // nothing went through obsgate's proxy listener
    assert!(
        !text.contains("mode=\"proxy\",route=\"/prometheus"),
        "{text}"
    );
    let log = st.read("obsgate.log");
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request denied"))
        .collect();
    assert!(
        denied.len() >= 10
            && denied
                .iter()
                .all(|l| l.contains("mode") && l.contains("forward_auth")),
        "{log}"
    );
    assert!(
        denied.iter().any(|l| l.contains("127.0.0.3")),
        "the audit line names the client behind nginx:\n{log}"
    );
    for name in [
        "rw", "ro", "lbac1", "lbac2", "lbac5", "subnet", "revoked", "expired", "only-b",
    ] {
        assert!(
            !log.contains(&tok(name)),
            "token {name} leaked into the log"
        );
    }
    for secret in [
        glc("test", "nobody"),
        glc("test", "guess"),
        "glc_not-base64!".to_string(),
    ] {
        assert!(!log.contains(&secret), "{secret} leaked into the log");
    }
    assert!(!log.contains("secret-test-"), "a token secret leaked");

    // nginx stops with its worker
    let mut st = st;
    let workers = st.nginx.workers();
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert!(st.nginx.stop(), "nginx did not exit on SIGTERM");
    for w in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{w}")).exists(),
            "nginx worker {w} outlived its master"
        );
    }
    eprintln!("header mode through nginx: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_with_obsgate_forward_auth_rewrite_mode() {
    let Some(bin) = nginx_binary() else {
        return;
    };
    let t0 = Instant::now();
    let st = Stack::start(&bin, "rewrite").await;
    let lbac1 = basic("team-a", &tok("lbac1"));
    let rw = basic("team-a", &tok("rw"));
    // an unrestricted read and a push pass
    let r = from("127.0.0.2", get(st.ngx, QUERY, Some(&rw))).await;
    assert_eq!(r.status, 200);
    let seen = st.up.last();
    assert_eq!(values(&seen, "x-scope-orgid"), ["team-a"]);
    assert!(values(&seen, "x-prom-label-policy").is_empty());
    let r = from(
        "127.0.0.2",
        post(st.ngx, "/api/v1/push", Some(&rw), vec![7u8; 4096]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(st.up.last().body_len, 4096);
    // a restricted read: 403 at nginx (its own page), nothing upstream
    let n = st.count();
    let r = from("127.0.0.2", get(st.ngx, QUERY, Some(&lbac1))).await;
    assert_eq!(r.status, 403);
    assert_eq!(st.count(), n);
    // obsgate's reason, asked directly with the same question
    let direct = send(
        &client(),
        req(
            "GET",
            st.fa,
            "/auth",
            &[
                ("authorization", &lbac1),
                ("x-original-method", "GET"),
                ("x-original-uri", QUERY),
                ("x-forwarded-for", "127.0.0.2"),
            ],
            "",
        ),
    )
    .await;
    assert_eq!(direct.status, 403);
    assert_eq!(direct.json()["errorType"], "forbidden", "{:?}", direct.body);
    assert!(
        direct.error().contains("use lbac.mode: header"),
        "{}",
        direct.error()
    );
    // the same token's reads through obsgate's own proxy listener are rewritten, not refused
    let r = send(&client(), get(st.gw, QUERY, Some(&lbac1))).await;
    assert_eq!(r.status, 200);
    assert!(
        st.up.last().uri.query().unwrap_or("").contains("env"),
        "{:?}",
        st.up.last().uri
    );
    eprintln!("rewrite mode through nginx: {:?}", t0.elapsed());
}
