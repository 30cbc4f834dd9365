//! `oidc-load`: drives the token service with whole OpenID Connect authorization-code flows
//! (authorization request → login app → consent app → code exchange, every HTTP step, cookies
//! kept per browser) or with refresh-token rotations of many distinct grants, from N concurrent
//! workers, and prints operations/s with p50/p99 latency.
//!
//! Output: one tab-separated line on stdout (`name ops/s p50 p99 errors`, latencies in ms) for
//! `bench/token-service/run.sh`'s table, and a readable summary on stderr.

mod http;
mod oidc;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use oidc::Target;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Complete authorization-code flows.
    Flows,
    /// Refresh grants, each token rotated (the new one used next time).
    Refresh,
    /// `GET /health/alive`: the HTTP round trips/s this machine does with the load generator
    /// on it, the ceiling the other modes' requests share.
    Ping,
}

#[derive(Parser, Debug)]
struct Args {
    /// Base URL of the public API (the issuer).
    #[arg(long, default_value = "http://127.0.0.1:14444")]
    public: String,
    /// Base URL of the admin API.
    #[arg(long, default_value = "http://127.0.0.1:14445")]
    admin: String,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Scopes requested and granted: `openid offline` (an ID token on every grant) or `offline`.
    #[arg(long, default_value = "openid offline")]
    scope: String,
    /// Concurrent workers (browsers with their login app, or refreshing clients).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Distinct refresh tokens (grants) rotated in refresh mode.
    #[arg(long, default_value_t = 1000)]
    tokens: usize,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Name printed in the first column.
    #[arg(long)]
    name: Option<String>,
    /// The client's `access_token_strategy`: `jwt` or `opaque`.
    #[arg(long, default_value = "jwt")]
    access_token_strategy: String,
}

// Same allocator as the server: the load generator shares its 2 cores, so its malloc time is
// throughput the server does not get.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 || args.duration == 0 {
        bail!("--concurrency and --duration must be positive");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// What one worker measured.
#[derive(Default)]
struct Tally {
    /// Latencies (µs) of operations that started and ended inside the measured window.
    latencies: Vec<u32>,
    errors: u64,
}

/// Prints at most this many distinct failures (the rest are only counted).
const SHOWN_ERRORS: u64 = 5;

async fn run(args: Args) -> Result<()> {
    let target = Arc::new(
        Target::register(
            &mut http::Client::new(),
            &args.public,
            &args.admin,
            &args.scope,
            &args.access_token_strategy,
        )
        .await?,
    );
    let mode = args.mode;
    let name = args.name.clone().unwrap_or_else(|| {
        let what = match mode {
            Mode::Flows => "flows",
            Mode::Refresh => "refresh",
            Mode::Ping => "ping",
        };
        format!("{what} ({})", args.scope)
    });

    // Refresh mode starts from `tokens` grants, each obtained by a whole flow.
    let mut pools: Vec<Vec<String>> = vec![Vec::new(); args.concurrency];
    if let Mode::Refresh = mode {
        let mut set = tokio::task::JoinSet::new();
        let per = args.tokens.div_ceil(args.concurrency).max(1);
        for w in 0..args.concurrency {
            let target = Arc::clone(&target);
            set.spawn(async move {
                let mut http = http::Client::new();
                let mut own = Vec::with_capacity(per);
                for i in 0..per {
                    own.push(target.flow(&mut http, &format!("user-{w}-{i}")).await?);
                }
                anyhow::Ok((w, own))
            });
        }
        while let Some(done) = set.join_next().await {
            let (w, own) = done??;
            if let Some(slot) = pools.get_mut(w) {
                *slot = own;
            }
        }
    }

    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let measure_until = measure_from + Duration::from_secs(args.duration);
    let shown = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for (w, mut own) in pools.into_iter().enumerate() {
        let (target, shown) = (Arc::clone(&target), Arc::clone(&shown));
        set.spawn(async move {
            let mut http = http::Client::new();
            let mut tally = Tally::default();
            let mut n: u64 = 0;
            loop {
                let began = Instant::now();
                if began >= measure_until {
                    break;
                }
                n += 1;
                let slot = usize::try_from(n).unwrap_or(0) % own.len().max(1);
                let outcome = match (mode, own.get(slot)) {
                    (Mode::Ping, _) => target.ping(&mut http).await.map(|()| String::new()),
                    (Mode::Refresh, Some(token)) => target.refresh(&mut http, token).await,
                    // Flows, or a refresh worker that lost its tokens: a new grant.
                    _ => target.flow(&mut http, &format!("user-{w}-{n}")).await,
                };
                let ended = Instant::now();
                let counted = began >= measure_from && ended <= measure_until;
                match outcome {
                    Ok(token) => {
                        if let Some(t) = own.get_mut(slot) {
                            *t = token;
                        } else if let Mode::Refresh = mode {
                            own.push(token);
                        }
                        if counted {
                            let us = ended.duration_since(began).as_micros();
                            tally.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                    }
                    Err(e) => {
                        if counted {
                            tally.errors += 1;
                        }
                        if shown.fetch_add(1, Ordering::Relaxed) < SHOWN_ERRORS {
                            eprintln!("worker {w}: {e:#}");
                        }
                        // A failed rotation may have ended the grant: start a new one.
                        if let Mode::Refresh = mode
                            && slot < own.len()
                        {
                            own.swap_remove(slot);
                        }
                    }
                }
            }
            tally
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(done) = set.join_next().await {
        let tally = done?;
        latencies.extend(tally.latencies);
        errors += tally.errors;
    }
    latencies.sort_unstable();
    let ops = latencies.len() as f64 / args.duration as f64;
    let p = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
        latencies.get(i).map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let (p50, p99) = (p(0.50), p(0.99));
    eprintln!(
        "{name}: {ops:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms, {errors} errors ({} workers, {} s)",
        args.concurrency, args.duration
    );
    println!("{name}\t{ops:.0}\t{p50:.2}ms\t{p99:.2}ms\t{errors}");
    Ok(())
}
