//! obsgate: an authenticating reverse proxy for Grafana Mimir, Loki, Tempo and Pyroscope.
//!
//! A request travels front to back through: route match → credentials → token shape → store
//! lookup (cached) → [`policy::decide`] → label-policy headers → forward. See `DESIGN.md`.

pub mod admin;
pub mod admin_store;
pub mod auth;
pub mod config;
pub mod controls;
pub mod diag;
pub mod duration;
pub mod lbac;
pub mod mem;
pub mod otel;
pub mod persist;
pub mod policy;
pub mod proxy;
pub mod route;
pub mod selector;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod wire;
