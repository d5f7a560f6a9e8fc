//! `pdb-witness`: the command line. Every flag also reads an environment variable.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pdb_core::cert::{hex, parse_hex};
use pdb_witness::auth::{Auth, Claims, Grant, Role, SigningSecret};
use pdb_witness::http::{router, App};
use pdb_witness::keys;
use pdb_witness::limits::{self, Limits};
use pdb_witness::metrics::Metrics;
use pdb_witness::witness::Witness;

#[derive(Parser)]
#[command(
    name = "pdb-witness",
    version,
    about = "Orders each group's commits into one signed history"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API (creates the data directory and keys on first start).
    Serve(Serve),
    /// Generate an Ed25519 key pair (for certificates or for EdDSA tokens).
    Keygen {
        /// Write the secret key to this file (0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Issue a bearer token.
    Token(Token),
    /// Copy a data directory consistently, while the witness serves.
    Backup {
        /// Where to write the copy (must not exist or be empty).
        dir: PathBuf,
        /// The data directory to copy.
        #[arg(long, env = "PDB_DATA")]
        data: PathBuf,
    },
    /// Install a backup as the data directory (the witness must be stopped).
    Restore {
        /// The backup to install.
        dir: PathBuf,
        /// The data directory to (re)create.
        #[arg(long, env = "PDB_DATA")]
        data: PathBuf,
        /// Replace an existing data directory.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct Serve {
    /// Data directory (SQLite files and keys).
    #[arg(long, env = "PDB_DATA")]
    data: PathBuf,
    /// Address to listen on; port 0 picks a free port (the chosen one is printed).
    #[arg(long, env = "PDB_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// HS256 secret for bearer tokens (default: DATA/jwt.secret, created on first start).
    #[arg(
        long,
        env = "PDB_JWT_SECRET",
        conflicts_with = "jwt_ed25519_public_key"
    )]
    jwt_secret: Option<String>,
    /// Accept EdDSA tokens signed by this Ed25519 public key (64 hex digits) instead.
    #[arg(long, env = "PDB_JWT_ED25519_PUBLIC_KEY")]
    jwt_ed25519_public_key: Option<String>,
    /// Accept a token this many seconds past its `exp` (clock skew with the issuer).
    #[arg(long, env = "PDB_JWT_LEEWAY", default_value_t = 5)]
    jwt_leeway: u64,
    /// Largest request body in bytes.
    #[arg(long, env = "PDB_MAX_BODY", default_value_t = 16 << 20)]
    max_body: usize,
    /// Connections served at once; further ones wait until one closes.
    #[arg(long, env = "PDB_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Close a connection after this many seconds without a request in flight (silent,
    /// sending a header too slowly, or kept alive); 0: never.
    #[arg(long, env = "PDB_IDLE_TIMEOUT", default_value_t = 30)]
    idle_timeout: u64,
    /// Answer 503 to a request not done in this many seconds (a long-poll gets its
    /// `wait` on top; watch streams and downloads, once started, are not cut); 0: never.
    #[arg(long, env = "PDB_REQUEST_TIMEOUT", default_value_t = 60)]
    request_timeout: u64,
    /// Write logs (stderr) as JSON lines instead of text.
    #[arg(long, env = "PDB_LOG_JSON")]
    log_json: bool,
    /// Snapshot a group after this many commits since its last snapshot (0: never).
    #[arg(long, env = "PDB_SNAPSHOT_COMMITS", default_value_t = 10_000)]
    snapshot_commits: u64,
    /// Snapshot a group after this many bytes of changesets since its last (0: never).
    #[arg(long, env = "PDB_SNAPSHOT_BYTES", default_value_t = 64 << 20)]
    snapshot_bytes: u64,
    /// Keep this many snapshots per group and compact the commits before the oldest
    /// kept; devices further behind bootstrap again (0: keep everything).
    #[arg(long, env = "PDB_RETAIN_SNAPSHOTS", default_value_t = 0)]
    retain_snapshots: usize,
}

#[derive(Args)]
struct Token {
    /// Subject (who the token is for).
    #[arg(long)]
    sub: String,
    /// Group the role applies to (`*` for every group).
    #[arg(long)]
    group: String,
    /// read, write or admin; or project:NAME for reads of that projection only.
    #[arg(long)]
    role: Grant,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Sign with this data directory's jwt.secret.
    #[arg(long, env = "PDB_DATA")]
    data: Option<PathBuf>,
    /// Sign with this HS256 secret.
    #[arg(long, env = "PDB_JWT_SECRET")]
    jwt_secret: Option<String>,
    /// Sign EdDSA with the Ed25519 secret key in this file (from `keygen --out`).
    #[arg(long)]
    ed25519_key: Option<PathBuf>,
}

fn now_s() -> u64 {
    pdb_witness::now_ms() as u64 / 1000
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(s) => serve(s),
        Cmd::Keygen { out } => {
            let seed = keys::random32()?;
            let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
            match out {
                Some(path) => {
                    keys::write_secret(&path, &seed)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!("public key: {}", hex(public.as_bytes()));
                }
                None => {
                    println!("secret key: {}", hex(&seed));
                    println!("public key: {}", hex(public.as_bytes()));
                }
            }
            Ok(())
        }
        Cmd::Token(t) => {
            let secret = if let Some(path) = &t.ed25519_key {
                SigningSecret::Ed25519(keys::load(path)?)
            } else if let Some(s) = &t.jwt_secret {
                SigningSecret::Hs256(s.as_bytes().to_vec())
            } else if let Some(data) = &t.data {
                SigningSecret::Hs256(keys::load(&data.join(keys::JWT_SECRET))?.to_vec())
            } else {
                anyhow::bail!("give --data DIR, --jwt-secret S or --ed25519-key FILE to sign with");
            };
            let claims = Claims::new(&t.sub, now_s() + t.ttl, [(t.group, t.role)]);
            println!("{}", secret.issue(&claims)?);
            Ok(())
        }
        Cmd::Backup { dir, data } => {
            pdb_witness::backup::backup(&data, &dir)?;
            println!("backed up {} to {}", data.display(), dir.display());
            Ok(())
        }
        Cmd::Restore { dir, data, force } => {
            pdb_witness::backup::restore(&dir, &data, force)?;
            println!("restored {} into {}", dir.display(), data.display());
            Ok(())
        }
    }
}

fn serve(s: Serve) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PDB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if s.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    std::fs::create_dir_all(&s.data).with_context(|| format!("creating {}", s.data.display()))?;
    let (auth, local_secret) = if let Some(k) = &s.jwt_ed25519_public_key {
        let key =
            parse_hex::<32>(k.trim()).context("--jwt-ed25519-public-key must be 64 hex digits")?;
        (Auth::ed25519(&key), None)
    } else if let Some(secret) = &s.jwt_secret {
        (
            Auth::hs256(secret.as_bytes()),
            Some(secret.as_bytes().to_vec()),
        )
    } else {
        let secret = keys::load_or_create(&s.data.join(keys::JWT_SECRET))?.to_vec();
        (Auth::hs256(&secret), Some(secret))
    };
    let auth = auth.with_leeway(s.jwt_leeway);
    let seconds = |n: u64| (n > 0).then(|| std::time::Duration::from_secs(n));
    let limits = Limits {
        max_connections: s.max_connections as usize,
        idle_timeout: seconds(s.idle_timeout),
        request_timeout: seconds(s.request_timeout),
    };
    let metrics = Arc::new(Metrics::default());
    let witness = Arc::new(
        Witness::open_with(
            &s.data,
            metrics.clone(),
            pdb_witness::snapshot::Policy {
                every_commits: s.snapshot_commits,
                every_bytes: s.snapshot_bytes,
                retain: s.retain_snapshots,
            },
        )
        .with_context(|| format!("opening {}", s.data.display()))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(s.listen)
            .await
            .with_context(|| format!("listening on {}", s.listen))?;
        let addr = listener.local_addr()?;
        // Handlers first: a SIGTERM that arrives right after "listening:" must still
        // shut down gracefully, not kill the process with the signal's default action.
        let stop = shutdown()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "witness key: {}", hex(&witness.public_key()))?;
        if let Some(secret) = local_secret {
            let claims = Claims::new(
                "admin",
                now_s() + 7 * 24 * 3600,
                [("*".to_string(), Grant::Role(Role::Admin))],
            );
            writeln!(
                out,
                "admin token: {}",
                SigningSecret::Hs256(secret).issue(&claims)?
            )?;
        }
        writeln!(out, "listening: http://{addr}")?;
        out.flush()?;
        drop(out);
        tracing::info!(%addr, data = %s.data.display(), "pdb-witness serving");
        let app = Arc::new(App {
            witness,
            auth,
            max_body: s.max_body,
        });
        let witness = app.witness.clone();
        limits::serve(listener, router(app), limits, metrics, stop).await;
        tokio::task::spawn_blocking(move || witness.flush()).await?;
        tracing::info!("pdb-witness stopped");
        Ok(())
    })
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future that resolves on
/// either; axum then finishes the requests in flight.
fn shutdown() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
