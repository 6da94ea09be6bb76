//! TLS material: the gateway's server config (ALPN h2 + http/1.1, optional client-certificate
//! verification) and upstream client configs (system roots plus a backend's `ca_file`).

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))
}

/// The certificates of a PEM text read from `path` (named in errors); at least one.
fn certs_in(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: invalid PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    certs_in(&read_pem(path)?, path)
}

fn add_roots(
    certs: Vec<CertificateDer<'static>>,
    path: &Path,
    roots: &mut RootCertStore,
) -> Result<(), String> {
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(())
}

fn roots_from(path: &Path, roots: &mut RootCertStore) -> Result<(), String> {
    add_roots(read_certs(path)?, path, roots)
}

/// The PEM text of a CA file, once rustls has accepted its certificates (for a client that
/// takes the PEM itself, as the OTLP/gRPC exporter does). The file is read once.
pub fn read_ca_pem(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read_pem(path)?;
    add_roots(certs_in(&pem, path)?, path, &mut RootCertStore::empty())?;
    Ok(pem)
}

pub fn server_config(cfg: &crate::config::TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = read_certs(&cfg.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .map_err(|e| format!("{}: cannot read private key: {e}", cfg.key_file.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots_from(ca, &mut roots)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| format!("{}: client CA: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{}: certificate and key do not fit: {e}",
            cfg.cert_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        // a broken system certificate is skipped, as browsers and curl do
        let _ = roots.add(c);
    }
    if let Some(ca) = ca_file {
        roots_from(ca, &mut roots)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The gateway's TLS configuration, reloaded when its files change: the certificate chain, the
/// key and the client CA are watched like the policy files (and reloaded on SIGHUP). Each new
/// handshake takes the configuration in force; established connections keep theirs, so a
/// reload drops nothing. A set of files that does not load (a key written before its
/// certificate, garbage) is logged and counted, and the last good configuration stays.
pub struct TlsReloader {
    cfg: crate::config::TlsConfig,
    current: arc_swap::ArcSwap<rustls::ServerConfig>,
}

impl TlsReloader {
    pub fn new(cfg: &crate::config::TlsConfig) -> Result<Arc<TlsReloader>, String> {
        Ok(Arc::new(TlsReloader {
            cfg: cfg.clone(),
            current: arc_swap::ArcSwap::new(server_config(cfg)?),
        }))
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    fn files(&self) -> Vec<std::path::PathBuf> {
        let mut f = vec![self.cfg.cert_file.clone(), self.cfg.key_file.clone()];
        f.extend(self.cfg.client_ca_file.clone());
        f
    }

    fn reload(&self, metrics: &crate::telemetry::Metrics) {
        match server_config(&self.cfg) {
            Ok(c) => {
                self.current.store(c);
                metrics.tls_reloads.with_label_values(&["success"]).inc();
                tracing::info!(cert = %self.cfg.cert_file.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                metrics.tls_reloads.with_label_values(&["failure"]).inc();
                tracing::warn!("TLS reload failed, the previous certificate stays in force: {e}");
            }
        }
    }

    /// Watches the files every `interval` (and on SIGHUP) until shutdown.
    pub async fn watch(
        self: Arc<Self>,
        metrics: Arc<crate::telemetry::Metrics>,
        interval: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        use crate::store::watch::stamps;
        let files = self.files();
        let mut last = {
            let f = files.clone();
            tokio::task::spawn_blocking(move || stamps(&f))
                .await
                .unwrap_or_default()
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                _ = shutdown.changed() => return,
            };
            let f = files.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || stamps(&f)).await else {
                continue;
            };
            if !forced && now == last {
                continue;
            }
            last = now;
            let (me, m) = (self.clone(), metrics.clone());
            let _ = tokio::task::spawn_blocking(move || me.reload(&m)).await;
        }
    }
}
