//! TLS on the gateway (ALPN h2 and http/1.1, client certificates) and to https backends.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let skey = KeyPair::generate().unwrap();
    let scert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&skey, &ca)
        .unwrap();
    let ckey = KeyPair::generate().unwrap();
    let ccert = CertificateParams::new(vec!["client.test".to_string()])
        .unwrap()
        .signed_by(&ckey, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_cert: scert.pem(),
        server_key: skey.serialize_pem(),
        client_cert: ccert.pem(),
        client_key: ckey.serialize_pem(),
    }
}

fn connector(p: &Pki, alpn: &[&[u8]], with_client_cert: bool) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(p.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = if with_client_cert {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(p.client_cert.as_bytes())
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_slice(p.client_key.as_bytes()).unwrap();
        b.with_client_auth_cert(certs, key).unwrap()
    } else {
        b.with_no_client_auth()
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// One request over TLS; returns the negotiated ALPN and the status, or an error string.
async fn tls_request(
    addr: std::net::SocketAddr,
    conn: tokio_rustls::TlsConnector,
    auth: &str,
) -> Result<(Option<Vec<u8>>, StatusCode), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = conn
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let alpn = tls.get_ref().1.alpn_protocol().map(|a| a.to_vec());
    let req = Request::get(format!(
        "https://localhost:{}/prometheus/api/v1/query?query=up",
        addr.port()
    ))
    .header("authorization", auth)
    .body(Full::new(Bytes::new()))
    .unwrap();
    let status = if alpn.as_deref() == Some(b"h2") {
        let (mut s, c) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(c);
        s.send_request(req)
            .await
            .map_err(|e| e.to_string())?
            .status()
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(c);
        let mut req = req;
        req.headers_mut()
            .insert("host", "localhost".parse().unwrap());
        s.send_request(req)
            .await
            .map_err(|e| e.to_string())?
            .status()
    };
    Ok((alpn, status))
}

fn tls_setup(p: &Pki, backend_url: &str, backend_extra: &str, client_ca: bool) -> Setup {
    let ca_line = if client_ca {
        "    client_ca_file: ca.pem\n"
    } else {
        ""
    };
    let yaml = gateway_yaml(&backend("metrics", "mimir", backend_url, backend_extra), "").replace(
        "  shutdown_grace: 10s\n",
        &format!("  shutdown_grace: 10s\n  tls:\n    cert_file: gw.pem\n    key_file: gw-key.pem\n{ca_line}"),
    );
    let s = Setup::new(&yaml, &policies());
    std::fs::write(s.path("gw.pem"), &p.server_cert).unwrap();
    std::fs::write(s.path("gw-key.pem"), &p.server_key).unwrap();
    std::fs::write(s.path("ca.pem"), &p.ca_pem).unwrap();
    s
}

#[tokio::test]
async fn tls_negotiates_h2_and_http1_via_alpn() {
    let p = pki();
    let up = Upstream::start().await;
    let s = tls_setup(&p, &up.url(), "", false);
    let gw = s.start().await;
    let auth = basic("team-a", &tok("rw"));
    let (alpn, status) = tls_request(
        gw.shared_addr(),
        connector(&p, &[b"h2", b"http/1.1"], false),
        &auth,
    )
    .await
    .unwrap();
    assert_eq!(
        (alpn.as_deref(), status),
        (Some(&b"h2"[..]), StatusCode::OK)
    );
    let (alpn, status) = tls_request(
        gw.shared_addr(),
        connector(&p, &[b"http/1.1"], false),
        &auth,
    )
    .await
    .unwrap();
    assert_eq!(
        (alpn.as_deref(), status),
        (Some(&b"http/1.1"[..]), StatusCode::OK)
    );
    let (_, status) = tls_request(
        gw.shared_addr(),
        connector(&p, &[b"h2"], false),
        "Bearer glc_x",
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // plain HTTP on a TLS listener gets nothing through
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client().request(get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=up",
            Some(&auth),
        )),
    )
    .await
    .unwrap();
    assert!(plain.is_err() || plain.unwrap().status() != StatusCode::OK);
    assert_eq!(up.requests().len(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let p = pki();
    let up = Upstream::start().await;
    let s = tls_setup(&p, &up.url(), "", true);
    let gw = s.start().await;
    let auth = basic("team-a", &tok("rw"));
    let ok = tls_request(gw.shared_addr(), connector(&p, &[b"h2"], true), &auth)
        .await
        .unwrap();
    assert_eq!(ok.1, StatusCode::OK);
    let refused = tls_request(gw.shared_addr(), connector(&p, &[b"h2"], false), &auth).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    // a certificate from another CA is refused too
    let other = pki();
    let mut mixed = pki();
    mixed.ca_pem = p.ca_pem.clone();
    mixed.client_cert = other.client_cert;
    mixed.client_key = other.client_key;
    let refused = tls_request(gw.shared_addr(), connector(&mixed, &[b"h2"], true), &auth).await;
    assert!(refused.is_err(), "foreign client certificate: {refused:?}");
    assert_eq!(up.requests().len(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn https_backend_is_verified_with_ca_file() {
    let p = pki();
    // a TLS upstream answering 200 "tls-ok"
    let mut sc = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        CertificateDer::pem_slice_iter(p.server_cert.as_bytes())
            .map(Result::unwrap)
            .collect(),
        PrivateKeyDer::from_pem_slice(p.server_key.as_bytes()).unwrap(),
    )
    .unwrap();
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    let upstream = tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    seen.lock().unwrap().push(
                        req.headers()
                            .get("x-scope-orgid")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default(),
                    );
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"tls-ok"),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let url = format!("https://localhost:{port}");
    let s = Setup::new(
        &gateway_yaml(
            &backend("metrics", "mimir", &url, "    ca_file: ca.pem\n"),
            "",
        ),
        &policies(),
    );
    std::fs::write(s.path("ca.pem"), &p.ca_pem).unwrap();
    let gw = s.start().await;
    let r = send(
        &client(),
        get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-a", &tok("rw"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"tls-ok");
    assert_eq!(seen.lock().unwrap().as_slice(), ["team-a"]);
    gw.shutdown().await;

    // without the CA the backend's certificate is not trusted: 502, nothing forwarded
    let s = Setup::new(
        &gateway_yaml(&backend("metrics", "mimir", &url, ""), ""),
        &policies(),
    );
    let gw = s.start().await;
    let r = send(
        &client(),
        get(
            gw.shared_addr(),
            "/prometheus/api/v1/query?query=up",
            Some(&basic("team-a", &tok("rw"))),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(seen.lock().unwrap().len(), 1);
    gw.shutdown().await;
    upstream.abort();
}

/// A connector that trusts only `ca_pem`.
fn trusting(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let p = Pki {
        ca_pem: ca_pem.to_string(),
        server_cert: String::new(),
        server_key: String::new(),
        client_cert: String::new(),
        client_key: String::new(),
    };
    connector(&p, &[b"http/1.1"], false)
}

#[tokio::test]
async fn certificate_hot_reload_keeps_open_connections_and_survives_bad_files() {
    let up = Upstream::start().await;
    let old = pki();
    let s = tls_setup(&old, &up.url(), "", false);
    let g = s.start().await;
    let addr = g.shared_addr();
    let auth = basic("team-a", &tok("rw"));

    // a keep-alive connection made with the old certificate
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = trusting(&old.ca_pem)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut open, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(c);
    let req = || {
        Request::get("/prometheus/api/v1/query?query=up")
            .header("host", "localhost")
            .header("authorization", &auth)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(open.send_request(req()).await.unwrap().status(), 200);

    // a new certificate from another CA, written over the files
    let new = pki();
    std::fs::write(s.path("gw.pem"), &new.server_cert).unwrap();
    std::fs::write(s.path("gw-key.pem"), &new.server_key).unwrap();
    let switched = eventually(std::time::Duration::from_secs(3), || async {
        tls_request(addr, trusting(&new.ca_pem), &auth)
            .await
            .is_ok()
    })
    .await;
    assert!(
        switched.is_some(),
        "new handshakes present the new certificate"
    );
    let r = tls_request(addr, trusting(&old.ca_pem), &auth).await;
    assert!(r.is_err(), "the old certificate is no longer offered");
    // the connection made before the reload still works
    assert_eq!(open.send_request(req()).await.unwrap().status(), 200);

    // garbage: refused, counted, and the last good certificate stays
    std::fs::write(s.path("gw.pem"), "not a certificate").unwrap();
    // (/metrics is behind TLS here: the counter is read from the registry)
    let counted = eventually(std::time::Duration::from_secs(3), || async {
        g.gateway
            .metrics
            .tls_reloads
            .with_label_values(&["failure"])
            .get()
            >= 1
    })
    .await;
    assert!(counted.is_some(), "the failed reload is counted");
    let r = tls_request(addr, trusting(&new.ca_pem), &auth).await;
    assert_eq!(r.map(|x| x.1), Ok(StatusCode::OK));
    assert!(
        g.gateway
            .metrics
            .tls_reloads
            .with_label_values(&["success"])
            .get()
            >= 1
    );
    g.shutdown().await;
}
