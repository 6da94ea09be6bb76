//! Name resolution for `dns+` URLs. The gateway uses the system resolver; tests hand in a
//! [`StaticResolver`] whose answers they change.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;

pub type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Resolves a `dns+` URL's host and port to every address it stands for.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture;
}

/// `getaddrinfo` through tokio (A and AAAA records, /etc/hosts).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture {
        let host = host.to_string();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
            Ok(addrs.collect())
        })
    }
}

/// A resolver with fixed answers, changed with [`StaticResolver::set`]. Unknown names fail.
#[derive(Default)]
pub struct StaticResolver {
    names: Mutex<HashMap<String, Vec<SocketAddr>>>,
}

impl StaticResolver {
    pub fn new() -> StaticResolver {
        StaticResolver::default()
    }

    /// `host` resolves to `addrs` from the next refresh on.
    pub fn set(&self, host: &str, addrs: Vec<SocketAddr>) {
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_string(), addrs);
    }
}

impl Resolve for StaticResolver {
    fn resolve(&self, host: &str, _port: u16) -> ResolveFuture {
        let r = self
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .cloned()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{host}: no such name"))
            });
        Box::pin(async move { r })
    }
}
