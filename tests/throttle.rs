//! Failed-authentication throttling over real sockets: a client address that has used up its
//! 401s gets 429 with Retry-After before any token work, on the data plane and the admin API;
//! other addresses are unaffected; the allowance comes back; the decisions are counted.

mod common;

use common::*;
use std::net::IpAddr;
use std::time::Duration;

const Q: &str = "/prometheus/api/v1/query?query=up";

fn setup(up: &Upstream, throttle: &str) -> Setup {
    Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &up.url(), ""), throttle),
        &policies(),
    )
}

#[tokio::test]
async fn a_client_past_its_failed_authentications_gets_429_before_token_work() {
    let up = Upstream::start().await;
    let s = setup(&up, "auth_throttle:\n  burst: 3\n  per_second: 1\n");
    let g = s.start().await;
    let gw = g.shared_addr();
    let attacker = client_from("127.0.0.2".parse::<IpAddr>().unwrap());
    let bystander = client_from("127.0.0.3".parse::<IpAddr>().unwrap());
    let good = basic("team-a", &tok("rw"));

    // three failures: each an ordinary 401 (unknown, malformed, missing)
    let bad = basic("team-a", &tok("nobody"));
    let r = send(&attacker, get(gw, Q, Some(&bad))).await;
    assert_eq!(r.status, 401);
    let r = send(&attacker, get(gw, Q, Some("Bearer glc_not-a-token"))).await;
    assert_eq!(r.status, 401);
    let r = send(&attacker, get(gw, Q, None)).await;
    assert_eq!(r.status, 401);

    // now even a valid token from that address is refused, before it is looked at
    let r = send(&attacker, get(gw, Q, Some(&good))).await;
    assert_eq!(r.status, 429, "{}", r.error());
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&secs), "Retry-After: {secs}");
    assert!(r.headers.get("www-authenticate").is_none());
    assert_eq!(r.json()["errorType"], "too_many_requests");
    assert_eq!(up.requests().len(), 0, "nothing was forwarded");
    // the admin API shares the allowance
    let r = send(&attacker, get(gw, "/admin/api/v3/tenants", Some(&bad))).await;
    assert_eq!(r.status, 429);
    assert!(r.headers.contains_key("retry-after"));

    // another address is not affected
    let r = send(&bystander, get(gw, Q, Some(&good))).await;
    assert_eq!(r.status, 200, "{}", r.error());

    // 403s do not count: a known token outside its realm
    for _ in 0..5 {
        let r = send(&bystander, get(gw, Q, Some(&basic("team-b", &tok("rw"))))).await;
        assert_eq!(r.status, 403);
    }
    let r = send(&bystander, get(gw, Q, Some(&good))).await;
    assert_eq!(r.status, 200);

    // the allowance comes back at per_second
    tokio::time::sleep(Duration::from_millis(1100 * secs)).await;
    let r = send(&attacker, get(gw, Q, Some(&good))).await;
    assert_eq!(r.status, 200, "{}", r.error());

    let m = send(&client(), get(gw, "/metrics", None)).await;
    let text = String::from_utf8_lossy(&m.body).to_string();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("obsgate_auth_decisions_total")
                && l.contains("reason=\"throttled\"")
                && l.contains("result=\"deny\"")
        })
        .unwrap_or_else(|| panic!("no throttled counter in\n{text}"));
    assert!(line.ends_with(" 2"), "{line}");
    g.shutdown().await;
}

#[tokio::test]
async fn burst_zero_turns_throttling_off() {
    let up = Upstream::start().await;
    let s = setup(&up, "auth_throttle:\n  burst: 0\n");
    let g = s.start().await;
    let gw = g.shared_addr();
    let c = client_from("127.0.0.4".parse::<IpAddr>().unwrap());
    for _ in 0..50 {
        let r = send(&c, get(gw, Q, Some(&basic("team-a", &tok("nobody"))))).await;
        assert_eq!(r.status, 401);
    }
    let r = send(&c, get(gw, Q, Some(&basic("team-a", &tok("rw"))))).await;
    assert_eq!(r.status, 200);
    g.shutdown().await;
}
