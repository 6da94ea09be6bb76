//! Soak with an oracle, over two gateway replicas sharing the admin store. Mixed traffic runs
//! for `OBSGATE_SOAK_SECS` seconds (5 by default; `.ci/run` runs it for 120). It is allowed,
//! wrong scope, wrong tenant, wrong subnet, revoked, unknown and malformed.
//!
//! Two gateways run in the test process, started from the same gateway.yaml: the same policy
//! files and the same `store.data_dir`, so the same admin store (the local backend's log in
//! `data/admin-log`, shared through create-only puts), read every `store.admin.poll_interval`
//! (200 ms here). Replica A and replica B each answer every other request of every client.
//!
//! Meanwhile one token is revoked and restored by rewriting the policy file (both replicas
//! watch it), and another through the admin API, through A and through B in turn (A, B, B,
//! A, A, B, …: each replica both revokes and restores it, and hands over to the other). Every
//! response is checked against an oracle: the policy in force, allowing the documented
//! propagation windows: 2 s for files; for the admin API, none beyond its own call on the
//! replica that made the change, and 2 s (the admin store's contract) on the other one. After
//! each admin-API change the other replica is polled until it answers as the change says,
//! which measures the propagation (reported; the polls are checked by the oracle too). Every
//! write answered 2xx must reach the upstream exactly once. The report gives requests per
//! replica, wrong decisions (must be 0), lost or duplicated writes (must be 0), the
//! propagation between replicas and peak RSS.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REPLICAS: [&str; 2] = ["A", "B"];
/// A policy-file change is in force on every replica at most this long after it was made.
const FILE_LAG: Duration = Duration::from_secs(2);
/// An admin-API change is in force on the replicas that did not make it at most this long
/// after the call that made it answered (the admin store's contract).
const OTHER_REPLICA_LAG: Duration = Duration::from_secs(2);
/// How long the other replica is polled after an admin-API change (past the contract, so a
/// late propagation is measured, and judged by the oracle, rather than cut short).
const PROBE_LIMIT: Duration = Duration::from_secs(5);
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// When a toggled token's state changed: the change was made during `[start, end]`, through
/// replica `by` (`None`: the policy file, or the state at the start).
#[derive(Clone, Copy, Debug)]
struct Change {
    start: Instant,
    end: Instant,
    active: bool,
    by: Option<u8>,
}

/// When each state of a toggled token may be seen: from the start of the change that made it
/// until a later change is in force, which is at most `lag(change)` after that change was
/// made. Changes are applied in order (the policy file is read whole; a replica applies the
/// admin store's log in order), so a state is superseded once any later change is in force,
/// not only the next one. (A replica that made a change had applied every earlier one: the
/// next number in the log is its to take only then.)
struct Windows(Vec<(Instant, Option<Instant>, bool)>);

impl Windows {
    fn new(history: &[Change], lag: impl Fn(&Change) -> Duration) -> Windows {
        let mut out = Vec::with_capacity(history.len());
        let mut until: Option<Instant> = None;
        for c in history.iter().rev() {
            out.push((c.start, until, c.active));
            let this = c.end + lag(c);
            until = Some(until.map_or(this, |u| u.min(this)));
        }
        out.reverse();
        Windows(out)
    }

    /// The states a request sent at `sent` and answered at `got` may have seen: (active,
    /// inactive).
    fn possible(&self, sent: Instant, got: Instant) -> (bool, bool) {
        let (mut active, mut inactive) = (false, false);
        for &(from, until, state) in &self.0 {
            if from <= got && until.is_none_or(|u| u >= sent) {
                if state {
                    active = true;
                } else {
                    inactive = true;
                }
            }
        }
        (active, inactive)
    }
}

/// The changes that matter to a request sent at `sent`: the last one made before
/// `sent - 2 s` and every later one up to `got`, as text relative to `t0`.
fn around(history: &[Change], sent: Instant, got: Instant, t0: Instant) -> String {
    let from = history
        .iter()
        .rposition(|c| c.end + Duration::from_secs(2) < sent)
        .unwrap_or(0);
    history[from..]
        .iter()
        .take_while(|c| c.start <= got)
        .map(|c| {
            format!(
                "{} by {} during {}..{} ms",
                if c.active { "active" } else { "inactive" },
                c.by.map_or("file/start", |r| REPLICAS[r as usize]),
                c.start.duration_since(t0).as_millis(),
                c.end.duration_since(t0).as_millis()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Case {
    Allowed,
    Write,
    WrongScope,
    WrongTenant,
    WrongSubnet,
    Revoked,
    Unknown,
    Malformed,
    FileToggled,
    ApiToggled,
}

const CASES: [Case; 10] = [
    Case::Allowed,
    Case::Write,
    Case::WrongScope,
    Case::WrongTenant,
    Case::WrongSubnet,
    Case::Revoked,
    Case::Unknown,
    Case::Malformed,
    Case::FileToggled,
    Case::ApiToggled,
];

/// A request: what it tested, which replica answered what, when (40 bytes a request).
#[derive(Clone, Copy)]
struct Outcome {
    case: Case,
    replica: u8,
    code: u16,
    sent: Instant,
    got: Instant,
}

fn policies_with(flip_active: bool) -> String {
    let status = if flip_active { "active" } else { "inactive" };
    policies()
        .replace(
            "access_policies:\n",
            "access_policies:\n  - name: admin\n    scopes: [admin]\n",
        )
        .replace(
            "tokens:\n",
            &format!(
                "tokens:\n  - {{name: admin, access_policy: admin, hash: \"{}\"}}\n  - {{name: flip, access_policy: pol-ro, status: {status}, hash: \"{}\"}}\n",
                hash(&tok("admin")),
                hash(&tok("flip"))
            ),
        )
}

fn rss_peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A backend that keeps only what the oracle needs: how often each write ID arrived. (The
/// recording upstream of the other tests keeps every request, which over minutes of traffic
/// would dwarf the gateway's own memory in the RSS report.)
async fn counting_backend() -> (String, Arc<Mutex<HashMap<u64, u32>>>) {
    use http_body_util::BodyExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let writes: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let w = writes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            let w = w.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let w = w.clone();
                        async move {
                            let id = req
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("soak="))
                                .and_then(|v| v.parse::<u64>().ok());
                            // the whole body, then the count: an ID counts once it fully arrived
                            let body = req.into_body().collect().await;
                            if let (Some(id), Ok(_)) = (id, body) {
                                *w.lock().unwrap().entry(id).or_default() += 1;
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (url, writes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_on_two_replicas_against_an_oracle_while_policies_change() {
    let secs: u64 = std::env::var("OBSGATE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (up_url, arrived) = counting_backend().await;
    // throttling is tested on its own; here every 401 must be the policy's answer. The admin
    // store: the local backend in data_dir, which both replicas name (the same file).
    let yaml = gateway_yaml(
        &backend("metrics", "mimir", &up_url, ""),
        "auth_throttle:\n  burst: 0\n",
    );
    let store_line = "  poll_interval: 100ms\n";
    assert!(yaml.contains(store_line), "{yaml}");
    let yaml = yaml.replace(
        store_line,
        "  poll_interval: 100ms\n  data_dir: data\n  admin:\n    backend: local\n    poll_interval: 200ms\n",
    );
    let s = Setup::new(&yaml, &policies_with(true));
    let (ga, gb) = (s.start().await, s.start().await);
    let gws: [SocketAddr; 2] = [ga.shared_addr(), gb.shared_addr()];
    assert_ne!(gws[0], gws[1]);
    let admin = basic("", &tok("admin"));
    let q = "/prometheus/api/v1/query?query=up";

    // the API-managed token, made through A
    for (path, body) in [
        (
            "/admin/api/v3/accesspolicies",
            json!({"name": "soak-api", "realms": [{"tenant": "team-a"}], "scopes": ["metrics:read"]}),
        ),
        (
            "/admin/api/v3/tokens",
            json!({"name": "soak-api-token", "access_policy": "soak-api"}),
        ),
    ] {
        let r = send(
            &client(),
            post(gws[0], path, Some(&admin), body.to_string()),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.error());
        if path.ends_with("tokens") {
            let t = r.json()["token"].as_str().unwrap().to_string();
            std::fs::write(s.path("api-token"), t).unwrap();
        }
    }
    let api_token = std::fs::read_to_string(s.path("api-token")).unwrap();
    let api_auth = basic("team-a", &api_token);
    // in force on A at once; on B within the contract (then the soak starts, from "active")
    let r = send(&client(), get(gws[0], q, Some(&api_auth))).await;
    assert_eq!(
        r.status, 200,
        "the token made through A is not in force on A"
    );
    let created = Instant::now();
    let to_b = eventually(OTHER_REPLICA_LAG, || async {
        send(&client(), get(gws[1], q, Some(&api_auth)))
            .await
            .status
            == 200
    })
    .await;
    assert!(
        to_b.is_some(),
        "the token made through A was not in force on B {:?} after it was made",
        created.elapsed()
    );

    let t0 = Instant::now();
    let start_state = Change {
        start: t0,
        end: t0,
        active: true,
        by: None,
    };
    let file_history = Arc::new(Mutex::new(vec![start_state]));
    let api_history = Arc::new(Mutex::new(vec![start_state]));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = t0 + Duration::from_secs(secs);

    // the policy file: the flip token revoked and restored by rename-over every 700 ms
    let file_task = {
        let (h, stop, dir) = (file_history.clone(), stop.clone(), s.path(""));
        tokio::spawn(async move {
            let mut active = true;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(700)).await;
                active = !active;
                let start = Instant::now();
                let tmp = dir.join(format!(".policies.{n}.tmp"));
                std::fs::write(&tmp, policies_with(active)).unwrap();
                std::fs::rename(&tmp, dir.join("policies.yaml")).unwrap();
                n += 1;
                h.lock().unwrap().push(Change {
                    start,
                    end: Instant::now(),
                    active,
                    by: None,
                });
            }
            n
        })
    };
    // the admin API: the API token deactivated and reactivated every 300 ms (or once the
    // other replica saw the last change, if that took longer), through A and B in turn;
    // after each change, one request to the replica that made it, then the other one polled
    // until it answers as the change says
    struct ApiRun {
        changes: [u64; 2],
        probes: Vec<Outcome>,
        /// (made by, seen by the other replica at most this long after the call answered)
        seen: Vec<(u8, Option<Duration>)>,
    }
    let api_task = {
        let (h, stop, admin, api_auth) = (
            api_history.clone(),
            stop.clone(),
            admin.clone(),
            api_auth.clone(),
        );
        tokio::spawn(async move {
            let c = client();
            let mut run = ApiRun {
                changes: [0; 2],
                probes: Vec::new(),
                seen: Vec::new(),
            };
            let mut active = true;
            let mut next = Instant::now() + Duration::from_millis(300);
            let probe = |replica: u8| {
                let (c, api_auth) = (c.clone(), api_auth.clone());
                async move {
                    let sent = Instant::now();
                    let r = send(&c, get(gws[replica as usize], q, Some(&api_auth))).await;
                    Outcome {
                        case: Case::ApiToggled,
                        replica,
                        code: r.status.as_u16(),
                        sent,
                        got: Instant::now(),
                    }
                }
            };
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next.into()).await;
                active = !active;
                // A, B, B, A, A, B, …: the replica alternates with every pair of changes, so
                // each replica both revokes and restores (with A, B, A, B the token's toggle
                // would have A only ever revoke it and B only ever restore it)
                let by = (run.changes.iter().sum::<u64>().div_ceil(2) % 2) as u8;
                let start = Instant::now();
                let r = send(
                    &c,
                    http::Request::builder()
                        .method("PUT")
                        .uri(format!(
                            "http://{}/admin/api/v3/tokens/soak-api-token",
                            gws[by as usize]
                        ))
                        .header("authorization", &admin)
                        .header("if-match", "*")
                        .body(http_body_util::Full::new(bytes::Bytes::from(
                            json!({"status": if active { "active" } else { "inactive" }})
                                .to_string(),
                        )))
                        .unwrap(),
                )
                .await;
                assert_eq!(
                    r.status,
                    200,
                    "admin-API change through replica {}: {}",
                    REPLICAS[by as usize],
                    r.error()
                );
                let end = Instant::now();
                run.changes[by as usize] += 1;
                h.lock().unwrap().push(Change {
                    start,
                    end,
                    active,
                    by: Some(by),
                });
                let want = if active { 200 } else { 401 };
                run.probes.push(probe(by).await);
                let other = 1 - by;
                let seen = loop {
                    let o = probe(other).await;
                    run.probes.push(o);
                    if o.code == want {
                        break Some(o.got - end);
                    }
                    if o.got - end > PROBE_LIMIT {
                        break None;
                    }
                    tokio::time::sleep(PROBE_EVERY).await;
                };
                run.seen.push((by, seen));
                next = (start + Duration::from_millis(300)).max(Instant::now());
            }
            run
        })
    };

    // the traffic: 6 clients, each sending every other request to A and to B, each request
    // recorded with the replica and its send and receive times
    let written = Arc::new(Mutex::new(Vec::<u64>::new()));
    let next_id = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..6u64 {
        let (written, next_id, api_auth) = (written.clone(), next_id.clone(), api_auth.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let far = client_from("127.0.0.1".parse::<IpAddr>().unwrap());
            let mut out: Vec<Outcome> = Vec::new();
            let mut i = w;
            let mut k = w;
            while Instant::now() < deadline {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let case = CASES[(i >> 33) as usize % CASES.len()];
                let replica = (k % 2) as u8;
                k += 1;
                let gw = gws[replica as usize];
                let (req, id) = match case {
                    Case::Allowed => (get(gw, q, Some(&basic("team-a", &tok("rw")))), None),
                    Case::Write => {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        (
                            post(
                                gw,
                                &format!("/api/v1/push?soak={id}"),
                                Some(&basic("team-a", &tok("rw"))),
                                vec![b'w'; 64],
                            ),
                            Some(id),
                        )
                    }
                    Case::WrongScope => (
                        post(gw, "/api/v1/push", Some(&basic("team-a", &tok("ro"))), "x"),
                        None,
                    ),
                    Case::WrongTenant => (get(gw, q, Some(&basic("team-b", &tok("rw")))), None),
                    Case::WrongSubnet => {
                        (get(gw, q, Some(&basic("team-a", &tok("vpn-only")))), None)
                    }
                    Case::Revoked => (get(gw, q, Some(&basic("team-a", &tok("revoked")))), None),
                    Case::Unknown => (get(gw, q, Some(&basic("team-a", &tok("ghost")))), None),
                    Case::Malformed => (get(gw, q, Some("Bearer glc_%%%not-a-token")), None),
                    Case::FileToggled => (get(gw, q, Some(&basic("team-a", &tok("flip")))), None),
                    Case::ApiToggled => (get(gw, q, Some(&api_auth)), None),
                };
                let sent = Instant::now();
                let r = send(if case == Case::WrongSubnet { &far } else { &c }, req).await;
                let got = Instant::now();
                if let Some(id) = id
                    && r.status.is_success()
                {
                    written.lock().unwrap().push(id);
                }
                out.push(Outcome {
                    case,
                    replica,
                    code: r.status.as_u16(),
                    sent,
                    got,
                });
            }
            out
        }));
    }
    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let file_changes = file_task.await.unwrap();
    let api = api_task.await.unwrap();

    // the oracle: the traffic, then the admin task's own requests
    let file_history = file_history.lock().unwrap().clone();
    let api_history = api_history.lock().unwrap().clone();
    let file_windows = Windows::new(&file_history, |_| FILE_LAG);
    // on the replica that made a change, in force when its call answered; on the other one,
    // within the contract
    let api_windows = [0u8, 1].map(|replica| {
        Windows::new(&api_history, |c| {
            if c.by == Some(replica) {
                Duration::ZERO
            } else {
                OTHER_REPLICA_LAG
            }
        })
    });
    let judge = |o: &Outcome| -> bool {
        let code = o.code;
        match o.case {
            Case::Allowed | Case::Write => code == 200,
            Case::WrongScope | Case::WrongTenant | Case::WrongSubnet => code == 403,
            Case::Revoked | Case::Unknown | Case::Malformed => code == 401,
            Case::FileToggled => {
                let (a, i) = file_windows.possible(o.sent, o.got);
                (a && code == 200) || (i && code == 401)
            }
            Case::ApiToggled => {
                let (a, i) = api_windows[o.replica as usize].possible(o.sent, o.got);
                (a && code == 200) || (i && code == 401)
            }
        }
    };
    let mut wrong = Vec::new();
    let mut per_case: HashMap<Case, (u64, u64)> = HashMap::new();
    // ApiToggled by replica: (requests, 200s)
    let mut api_per_replica = [(0u64, 0u64); 2];
    let mut per_replica = [0u64; 2];
    for o in &outcomes {
        per_replica[o.replica as usize] += 1;
        let e = per_case.entry(o.case).or_default();
        e.0 += 1;
        if o.code == 200 {
            e.1 += 1;
        }
        if o.case == Case::ApiToggled {
            let e = &mut api_per_replica[o.replica as usize];
            e.0 += 1;
            if o.code == 200 {
                e.1 += 1;
            }
        }
    }
    let wrong_probes = api.probes.iter().filter(|o| !judge(o)).count();
    for (o, probe) in outcomes
        .iter()
        .map(|o| (o, false))
        .chain(api.probes.iter().map(|o| (o, true)))
    {
        if !judge(o) {
            let history = match o.case {
                Case::FileToggled => around(&file_history, o.sent, o.got, t0),
                Case::ApiToggled => around(&api_history, o.sent, o.got, t0),
                _ => String::new(),
            };
            wrong.push(format!(
                "{}{:?} on replica {} answered {} (sent {} ms, answered {} ms) [{history}]",
                if probe { "probe: " } else { "" },
                o.case,
                REPLICAS[o.replica as usize],
                o.code,
                o.sent.duration_since(t0).as_millis(),
                o.got.duration_since(t0).as_millis(),
            ));
        }
    }
    // writes: every 2xx arrived exactly once
    let arrived = arrived.lock().unwrap().clone();
    let acked = written.lock().unwrap().clone();
    let lost = acked.iter().filter(|id| !arrived.contains_key(id)).count();
    let duplicated = arrived.values().filter(|&&n| n > 1).count();
    // propagation of admin-API changes to the other replica
    let lags = |by: Option<u8>| -> String {
        let seen: Vec<Duration> = api
            .seen
            .iter()
            .filter(|(b, _)| by.is_none_or(|x| x == *b))
            .filter_map(|(_, d)| *d)
            .collect();
        let missed = api
            .seen
            .iter()
            .filter(|(b, d)| by.is_none_or(|x| x == *b) && d.is_none())
            .count();
        let max = seen.iter().max().copied().unwrap_or_default();
        let avg = seen.iter().sum::<Duration>() / (seen.len().max(1) as u32);
        format!(
            "{} changes, avg {} ms, max {} ms, not seen within {} s: {missed}",
            seen.len() + missed,
            avg.as_millis(),
            max.as_millis(),
            PROBE_LIMIT.as_secs()
        )
    };
    let report = format!(
        "soak: {secs} s, replicas 2 (A {}, B {}), {} requests ({:.0}/s), {} wrong decisions, {} writes acknowledged, {lost} lost, {duplicated} duplicated, {file_changes} policy-file changes, {} admin-API changes (A {}, B {}), {} admin-task requests ({wrong_probes} wrong), peak RSS {} MiB (test process: two gateways, upstream and clients)\nadmin-API change in force on the other replica after the call answered (polled every {} ms): all {}; A to B {}; B to A {}; the token made through A on B after {} ms\nper case (requests, 200s): {per_case:?}\nadmin-API-toggled token per replica (requests, 200s): A {:?}, B {:?}",
        per_replica[0],
        per_replica[1],
        outcomes.len(),
        outcomes.len() as f64 / secs as f64,
        wrong.len(),
        acked.len(),
        api.changes[0] + api.changes[1],
        api.changes[0],
        api.changes[1],
        api.probes.len(),
        rss_peak_kib() / 1024,
        PROBE_EVERY.as_millis(),
        lags(None),
        lags(Some(0)),
        lags(Some(1)),
        to_b.unwrap_or_default().as_millis(),
        api_per_replica[0],
        api_per_replica[1],
    );
    println!("{report}");
    if let Ok(dir) = std::env::var("OBSGATE_SOAK_REPORT") {
        let _ = std::fs::write(dir, &report);
    }
    assert!(
        wrong.is_empty(),
        "{report}\nwrong ({}, first 20):\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );
    assert_eq!(lost, 0, "{report}");
    assert_eq!(duplicated, 0, "{report}");
    // every admin-API change reached the other replica
    assert!(api.seen.iter().all(|(_, d)| d.is_some()), "{report}");
    // both replicas served, the toggles really toggled, and both states were seen, on both
    assert!(per_replica.iter().all(|&n| n > 0), "{report}");
    assert!(api.changes.iter().all(|&n| n > 0), "{report}");
    for case in [Case::FileToggled, Case::ApiToggled] {
        let (n, ok) = per_case.get(&case).copied().unwrap_or_default();
        assert!(ok > 0 && ok < n, "{case:?} never changed outcome: {report}");
    }
    for (r, (n, ok)) in api_per_replica.iter().enumerate() {
        assert!(
            *ok > 0 && ok < n,
            "the admin-API-toggled token never changed outcome on replica {}: {report}",
            REPLICAS[r]
        );
    }
    ga.shutdown().await;
    gb.shutdown().await;
}
