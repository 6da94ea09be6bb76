//! The `obsgate` command line (SPEC 1). Parsing only; the work is in the library.

use clap::{Parser, Subcommand, ValueEnum};
use obsgate::{config, store, token};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc (v3): per-request allocations (hyper's 8 KiB read buffers, header maps, boxed
/// bodies) cost less than with glibc's allocator, and memory unused for a second is returned to
/// the system (it purges with `MADV_DONTNEED`), so a large policy load does not stay resident.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// After a policy load: the loading thread's freed pages go back to the system now, not when
/// that (then idle) thread next allocates.
fn release_memory() {
    // SAFETY: mi_collect only walks the calling thread's own heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[derive(Parser)]
#[command(
    name = "obsgate",
    version,
    about = "Authenticating reverse proxy for Grafana Mimir, Loki, Tempo and Pyroscope"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate the config and every policy file; print a summary or FILE:LINE:COL errors.
    Check {
        #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Mint tokens and compute stored hashes.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Glc,
    Glsa,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Mint a token: the token on line 1, then a `tokens:` entry to paste into a policy file.
    New {
        #[arg(
            long,
            conflicts_with = "service_account",
            required_unless_present = "service_account"
        )]
        access_policy: Option<String>,
        #[arg(long)]
        service_account: Option<String>,
        #[arg(long)]
        name: String,
        /// Default: glc for --access-policy, glsa for --service-account.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// Expiry as RFC 3339, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Print the stored form of a token's hash (sha256:<hex>).
    Hash { token: String },
}

fn main() -> ExitCode {
    obsgate::mem::set_release_hook(release_memory);
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config } => serve(config),
        Cmd::Check { config } => check(config),
        Cmd::Token {
            cmd: TokenCmd::Hash { token },
        } => {
            println!(
                "{}",
                token::TokenHash::of(token.trim_end_matches(['\r', '\n'])).stored()
            );
            ExitCode::SUCCESS
        }
        Cmd::Token {
            cmd:
                TokenCmd::New {
                    access_policy,
                    service_account,
                    name,
                    kind,
                    expires,
                },
        } => token_new(access_policy, service_account, name, kind, expires),
    }
}

fn check(path: PathBuf) -> ExitCode {
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                println!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let controls = cfg
        .store
        .controls_file
        .as_ref()
        .map(|p| (p, obsgate::controls::load(p)));
    match store::load::load_files(&cfg.store.policy_files, &cfg.cluster) {
        Ok(snap) => {
            if let Some((_, Err(errs))) = &controls {
                for e in &errs.0 {
                    println!("{e}");
                }
                return ExitCode::FAILURE;
            }
            let c = snap.counts();
            println!(
                "{}: OK: {} policy file(s); {} tenants, {} access policies, {} service accounts, {} tokens, {} clusters",
                path.display(),
                cfg.store.policy_files.len(),
                c.tenants,
                c.access_policies,
                c.service_accounts,
                c.tokens,
                c.clusters
            );
            println!(
                "lbac: mode {}, max_query_bytes {}, max_query_depth {}",
                match cfg.lbac {
                    config::LbacMode::Header => "header",
                    config::LbacMode::Rewrite => "rewrite",
                },
                cfg.lbac_limits.max_bytes,
                cfg.lbac_limits.max_depth
            );
            for b in cfg.backends.iter() {
                println!("{}", b.describe_topology());
            }
            println!("{}", cfg.store.admin.describe());
            if let Some(t) = &cfg.tracing {
                println!("{}", t.describe());
            }
            if let Some(fa) = &cfg.forward_auth {
                println!("{}", fa.describe(cfg.lbac));
            }
            if let Some(pp) = cfg.describe_proxy_protocol() {
                println!("{pp}");
            }
            if let Some((p, Ok(set))) = &controls {
                println!("controls {}: {set}", p.display());
                for n in set.unknown_names(&snap) {
                    println!("controls: note: {n}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(errs) => {
            for e in errs.0.iter().chain(
                controls
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().err())
                    .flat_map(|e| &e.0),
            ) {
                println!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn token_new(
    access_policy: Option<String>,
    service_account: Option<String>,
    name: String,
    kind: Option<Kind>,
    expires: Option<String>,
) -> ExitCode {
    if !obsgate::policy::valid_name(&name, 1, 255) {
        eprintln!("error: --name {name:?}: use 1-255 chars of [a-z0-9_-]");
        return ExitCode::from(2);
    }
    let expires = match expires.as_deref().map(chrono::DateTime::parse_from_rfc3339) {
        None => None,
        Some(Ok(d)) => Some(
            d.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
        Some(Err(e)) => {
            eprintln!("error: --expires: not RFC 3339 (e.g. 2027-01-01T00:00:00Z): {e}");
            return ExitCode::from(2);
        }
    };
    let (owner_key, owner) = match (&access_policy, &service_account) {
        (Some(p), None) => ("access_policy", p.clone()),
        (None, Some(s)) => ("service_account", s.clone()),
        _ => {
            eprintln!("error: give exactly one of --access-policy and --service-account");
            return ExitCode::from(2);
        }
    };
    let kind = kind.unwrap_or(if access_policy.is_some() {
        Kind::Glc
    } else {
        Kind::Glsa
    });
    let minted = match kind {
        Kind::Glc => token::mint_glc("", &owner, &name, "obsgate"),
        Kind::Glsa => token::mint_glsa(),
    };
    let tok = match minted {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: the OS random number generator failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hash = token::TokenHash::of(&tok).stored();
    println!("{tok}");
    println!("tokens:");
    println!("  - name: {name}");
    println!("    {owner_key}: {}", yaml_scalar(&owner));
    println!("    status: active");
    if let Some(e) = expires {
        println!("    expires_at: {e}");
    }
    println!("    hash: \"{hash}\"");
    ExitCode::SUCCESS
}

/// Quotes a value for YAML when it is not a plain safe scalar.
fn yaml_scalar(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

fn serve(path: PathBuf) -> ExitCode {
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    obsgate::telemetry::init_logging(&cfg.log.level, cfg.log.format);
    // One core (by affinity, or TOKIO_WORKER_THREADS=1): the single-threaded scheduler, which
    // skips the work-stealing machinery. More: one worker per core.
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    // Worker threads get 8 MiB stacks (tokio's default is 2 MiB): a query at the deepest
    // lbac.max_query_depth a config may set is tested to parse, rewrite and print within half of
    // that in a debug build. The single-threaded scheduler runs on the thread that calls
    // block_on, which is given the same stack below (the main thread's depends on ulimit -s).
    b.thread_stack_size(obsgate::lbac::WORKER_STACK_BYTES);
    let rt = match b.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // block_on runs on a thread of its own with a worker's stack (see above)
    let main = std::thread::Builder::new()
        .name("obsgate-main".into())
        .stack_size(obsgate::lbac::WORKER_STACK_BYTES);
    let joined = main.spawn(move || rt.block_on(serve_until_signalled(cfg)));
    match joined.map(|h| h.join()) {
        Ok(Ok(code)) => code,
        Ok(Err(_)) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: cannot start the main thread: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_until_signalled(cfg: obsgate::config::Config) -> ExitCode {
    {
        let running = match obsgate::proxy::server::start(cfg).await {
            Ok(r) => r,
            Err(obsgate::proxy::server::StartError::Policy(errs)) => {
                for e in &errs.0 {
                    tracing::error!("{e}");
                }
                return ExitCode::FAILURE;
            }
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        running.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    }
}
