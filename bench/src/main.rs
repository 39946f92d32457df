//! `firebreak-bench`: the broker's load harness. `run` measures the broker (`firebreak serve`,
//! pinned to CPU 0) against same-run limits (crypto ceilings, an axum hello-world route, a
//! crypto+HTTP limit route) and the oidc-provider peer, and prints JSON lines (BENCH.md §8).
//! The other subcommands are the children `run` spawns under `taskset`.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark harness: a failure should stop the run loudly"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "benchmark harness: timing with Instant::now/SystemTime::now is its job"
)]

mod audit;
mod gateway;
mod keys;
mod limits;
mod load;
mod run;
mod servers;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Firebreak load harness (see bench/README.md).
#[derive(Parser)]
#[command(name = "firebreak-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole benchmark: JSON lines on stdout, a table on stderr.
    Run(run::Opts),
    /// The gateway benchmark (`bench/gateway`): compare --ours, revocation propagation, profile.
    Gateway(gateway::Opts),
    /// Child: axum hello-world on 127.0.0.1:PORT.
    ServeHello {
        /// Port.
        port: u16,
    },
    /// Child: the crypto+HTTP limit route on 127.0.0.1:PORT, keys from JWKS.
    ServeLimit {
        /// Port.
        port: u16,
        /// JWKS file of the bench issuer.
        jwks: PathBuf,
    },
    /// Child: single-thread crypto limits, one JSON object on stdout.
    Limits {
        /// Seconds per figure per round.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Ad-hoc load with the harness's client: GET, or POST of the bodies in a file (one per line,
    /// cycled), printing one JSON line.
    Load {
        /// 127.0.0.1 port.
        port: u16,
        /// Path (`/` for GET, e.g. `/oauth2/token` with --bodies).
        #[arg(long, default_value = "/")]
        path: String,
        /// File of form bodies, one per line; without it, GET.
        #[arg(long)]
        bodies: Option<PathBuf>,
        /// Connections.
        #[arg(short, long, default_value_t = 64)]
        connections: usize,
        /// Seconds.
        #[arg(short, long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Durable audit appends/s from concurrent writers (the store's group-committing writer)
    /// beside raw 64-row-batch SQLite inserts of the same row size, interleaved, in this process.
    /// Run it pinned (`taskset -c 0`); the SQLite files go to --dir (not a tmpfs).
    Audit {
        /// Directory for the SQLite files.
        #[arg(long)]
        dir: PathBuf,
        /// Concurrent writers.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Seconds per round.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Rounds (interleaved ours/raw; median reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Child: mint COUNT exchange bodies (one per line) into OUT.
    Mint {
        /// Directory with the issuer keys.
        #[arg(long)]
        keys: PathBuf,
        /// Algorithm.
        #[arg(long, value_enum)]
        alg: keys::Alg,
        /// Issuer URL (`iss`).
        #[arg(long)]
        issuer: String,
        /// Audience (`aud`): the broker's URL.
        #[arg(long)]
        audience: String,
        /// How many.
        #[arg(long)]
        count: usize,
        /// Threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    match Cli::parse().cmd {
        Cmd::Run(opts) => run::main(&opts),
        Cmd::Gateway(opts) => gateway::main(&opts),
        Cmd::ServeHello { port } => servers::hello_cmd(port),
        Cmd::ServeLimit { port, jwks } => servers::limit_cmd(port, &jwks),
        Cmd::Limits { seconds, rounds } => limits::limits_cmd(seconds, rounds),
        Cmd::Audit {
            dir,
            writers,
            seconds,
            rounds,
        } => audit::audit_cmd(&dir, writers, seconds, rounds),
        Cmd::Load {
            port,
            path,
            bodies,
            connections,
            seconds,
        } => run::load_cmd(port, path, bodies.as_deref(), connections, seconds),
        Cmd::Mint {
            keys,
            alg,
            issuer,
            audience,
            count,
            threads,
            out,
        } => {
            keys::mint_cmd(&keys, alg, &issuer, &audience, count, threads, &out);
        }
    }
}
