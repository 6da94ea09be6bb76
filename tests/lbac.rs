//! Label-based access control through the gateway (SPEC 7), both modes.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

fn lbac_policies() -> String {
    format!(
        r#"tenants:
  - name: team-a
  - name: team-b
access_policies:
  - name: prod-only
    scopes: [metrics:read, logs:read]
    realms:
      - tenant: team-a
        label_policies:
          - selector: '{{env="prod"}}'
      - tenant: team-b
        label_policies:
          - selector: [{{type: EQ, name: env, value: prod}}]
  - name: two-envs
    scopes: [metrics:read, logs:read]
    realms:
      - tenant: team-a
        label_policies:
          - selector: '{{env="prod"}}'
          - selector: '{{env="stage"}}'
  - name: unmergeable
    scopes: [metrics:read]
    realms:
      - tenant: team-a
        label_policies:
          - selector: '{{env="prod"}}'
          - selector: '{{team="a"}}'
  - name: mixed
    scopes: [metrics:read]
    realms:
      - tenant: team-a
        label_policies:
          - selector: '{{env="prod"}}'
      - tenant: team-b
  - name: tricky
    scopes: [metrics:read, logs:read]
    realms:
      - tenant: team-a
        label_policies:
          - selector: '{{ns=~"app-(a|b)", team!="x,y:z"}}'
tokens:
  - {{name: prod-only, access_policy: prod-only, hash: "{}"}}
  - {{name: two-envs, access_policy: two-envs, hash: "{}"}}
  - {{name: unmergeable, access_policy: unmergeable, hash: "{}"}}
  - {{name: mixed, access_policy: mixed, hash: "{}"}}
  - {{name: tricky, access_policy: tricky, hash: "{}"}}
"#,
        hash(&tok("prod-only")),
        hash(&tok("two-envs")),
        hash(&tok("unmergeable")),
        hash(&tok("mixed")),
        hash(&tok("tricky")),
    )
}

async fn gateway(up: &Upstream, mode: &str) -> (Setup, obsgate::proxy::server::Running) {
    let backends = format!(
        "{}{}",
        backend("metrics", "mimir", &up.url(), ""),
        backend("logs", "loki", &up.url(), "")
    );
    let s = Setup::new(
        &gateway_yaml(&backends, &format!("lbac:\n  mode: {mode}\n")),
        &lbac_policies(),
    );
    let r = s.start().await;
    (s, r)
}

fn params(up: &Upstream, key: &str) -> Vec<String> {
    let q = up.last().uri.query().unwrap_or("").to_string();
    form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---------- header mode ----------

/// Decodes X-Prom-Label-Policy values as Mimir and Loki do: entries split on ',', the first ':'
/// splits the tenant, the rest is path-unescaped and parsed as a selector.
fn decode_label_policy(values: &[String]) -> Vec<(String, promql_parser::parser::VectorSelector)> {
    let mut out = Vec::new();
    for v in values {
        for entry in v.split(',') {
            let (tenant, sel) = entry.split_once(':').expect("tenant:selector");
            let unescaped = percent_decode(sel);
            match promql_parser::parser::parse(&unescaped).expect("selector parses") {
                promql_parser::parser::Expr::VectorSelector(vs) => {
                    out.push((tenant.to_string(), vs))
                }
                other => panic!("not a selector: {other}"),
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn header_mode_values_decode_to_the_policy_per_tenant() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway(&up, "header").await;
    let mut req = get(
        gw.shared_addr(),
        "/prometheus/api/v1/query?query=up",
        Some(&format!("Bearer {}", tok("prod-only"))),
    );
    req.headers_mut()
        .insert("x-scope-orgid", "team-a|team-b".parse().unwrap());
    req.headers_mut()
        .insert("x-prom-label-policy", "team-a:%7B%7D".parse().unwrap());
    assert_eq!(send(&client(), req).await.status, StatusCode::OK);
    let values: Vec<String> = up
        .last()
        .headers
        .get_all("x-prom-label-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        values.len(),
        2,
        "one value per tenant and selector, the client's removed: {values:?}"
    );
    let decoded = decode_label_policy(&values);
    let tenants: Vec<&str> = decoded.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tenants, ["team-a", "team-b"]);
    for (_, vs) in &decoded {
        assert_eq!(vs.to_string(), "{env=\"prod\"}");
    }
    // special characters survive the round trip (commas and colons inside values included)
    let mut req = get(
        gw.shared_addr(),
        "/loki/api/v1/query?query=x",
        Some(&basic("team-a", &tok("tricky"))),
    );
    req.headers_mut().remove("x-scope-orgid");
    assert_eq!(send(&client(), req).await.status, StatusCode::OK);
    let values: Vec<String> = up
        .last()
        .headers
        .get_all("x-prom-label-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let decoded = decode_label_policy(&values);
    assert_eq!(decoded.len(), 1);
    let ms: Vec<String> = decoded[0]
        .1
        .matchers
        .matchers
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert!(
        ms.contains(&"ns=~\"app-(a|b)\"".to_string())
            && ms.contains(&"team!=\"x,y:z\"".to_string()),
        "{ms:?}"
    );
    gw.shutdown().await;
}

// ---------- rewrite mode ----------

#[tokio::test]
async fn rewrite_mode_restricts_promql_in_query_string_and_form_body() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway(&up, "rewrite").await;
    let a = basic("team-a", &tok("prod-only"));
    let addr = gw.shared_addr();
    let q = format!(
        "/prometheus/api/v1/query_range?query={}&start=1&end=2&step=1",
        enc("sum(rate(http_requests_total{env=\"dev\"}[5m]))")
    );
    assert_eq!(
        send(&client(), get(addr, &q, Some(&a))).await.status,
        StatusCode::OK
    );
    assert_eq!(
        params(&up, "query"),
        ["sum(rate(http_requests_total{env=\"dev\",env=\"prod\"}[5m]))"]
    );
    assert_eq!(params(&up, "step"), ["1"]);
    assert!(up.last().headers.get("x-prom-label-policy").is_none());

    // form body, and the query in both places
    let req = Request::post(format!("http://{addr}/prometheus/api/v1/query?query=up"))
        .header("authorization", &a)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!(
            "query={}",
            enc("{__name__=~\".+\"}")
        ))))
        .unwrap();
    assert_eq!(send(&client(), req).await.status, StatusCode::OK);
    assert_eq!(params(&up, "query"), ["up{env=\"prod\"}"]);
    assert_eq!(
        up.last().body_len,
        "query=".len() + enc("{__name__=~\".+\",env=\"prod\"}").len()
    );

    // series/labels without match[] get the policy as match[]
    for path in [
        "/prometheus/api/v1/labels",
        "/prometheus/api/v1/label/job/values",
        "/prometheus/api/v1/series",
    ] {
        assert_eq!(
            send(&client(), get(addr, path, Some(&a))).await.status,
            StatusCode::OK,
            "{path}"
        );
        assert_eq!(params(&up, "match[]"), ["{env=\"prod\"}"], "{path}");
    }
    // several mergeable selectors
    let r = send(
        &client(),
        get(
            addr,
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-a", &tok("two-envs"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(params(&up, "query"), ["up{env=~\"prod|stage\"}"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn rewrite_mode_refusals() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway(&up, "rewrite").await;
    let addr = gw.shared_addr();
    let a = basic("team-a", &tok("prod-only"));
    // unparsable → 400
    let r = send(
        &client(),
        get(
            addr,
            &format!("/prometheus/api/v1/query?query={}", enc("sum(")),
            Some(&a),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["errorType"], "bad_data");
    let r = send(
        &client(),
        get(
            addr,
            &format!("/loki/api/v1/query?query={}", enc("{app=\"x\"")),
            Some(&a),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // cannot be filtered → 403
    for path in [
        "/prometheus/api/v1/cardinality/label_names",
        "/prometheus/api/v1/read",
        "/prometheus/api/v1/metadata",
    ] {
        let r = send(&client(), get(addr, path, Some(&a))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    // selectors that cannot be merged → 403 pointing to header mode
    let r = send(
        &client(),
        get(
            addr,
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-a", &tok("unmergeable"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.error().contains("header"), "{}", r.error());
    // several tenants, only some restricted → 403
    let r = send(
        &client(),
        get(
            addr,
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-a|team-b", &tok("mixed"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // a JSON body cannot smuggle a query past the rewriter
    let req = Request::post(format!("http://{addr}/prometheus/api/v1/query"))
        .header("authorization", &a)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"query\":\"up\"}")))
        .unwrap();
    assert_eq!(send(&client(), req).await.status, StatusCode::BAD_REQUEST);
    assert!(up.requests().is_empty(), "nothing reached the backend");
    // writes are not label-restricted; format_query reads no data
    let r = send(
        &client(),
        get(addr, "/prometheus/api/v1/format_query?query=up", Some(&a)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(params(&up, "query"), ["up"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn rewrite_mode_restricts_logql_everywhere() {
    let up = Upstream::start().await;
    let (_s, gw) = gateway(&up, "rewrite").await;
    let addr = gw.shared_addr();
    let a = basic("team-a", &tok("prod-only"));
    let q = r#"sum by (level) (count_over_time({app="x"} |= "a{2}" | json | env="dev" [5m])) / sum(count_over_time({ns!="allowed"}[5m]))"#;
    let r = send(
        &client(),
        get(
            addr,
            &format!("/loki/api/v1/query_range?query={}", enc(q)),
            Some(&a),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        params(&up, "query"),
        [
            r#"sum by (level) (count_over_time({app="x", env="prod"} |= "a{2}" | json | env="dev" [5m])) / sum(count_over_time({ns!="allowed", env="prod"}[5m]))"#
        ]
    );
    for path in [
        "/loki/api/v1/labels",
        "/loki/api/v1/label/app/values",
        "/loki/api/v1/index/stats",
        "/loki/api/v1/index/volume",
        "/loki/api/v1/index/volume_range",
        "/loki/api/v1/patterns",
        "/loki/api/v1/detected_labels",
        "/loki/api/v1/detected_fields",
        "/loki/api/v1/detected_field/level/values",
        "/loki/api/v1/tail",
    ] {
        assert_eq!(
            send(&client(), get(addr, path, Some(&a))).await.status,
            StatusCode::OK,
            "{path}"
        );
        assert_eq!(params(&up, "query"), ["{env=\"prod\"}"], "{path}");
    }
    let r = send(
        &client(),
        get(
            addr,
            &format!("/loki/api/v1/series?match[]={}", enc("{app=\"x\"}")),
            Some(&a),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(params(&up, "match[]"), ["{app=\"x\", env=\"prod\"}"]);
    gw.shutdown().await;
}
