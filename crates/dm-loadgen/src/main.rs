//! `dm-loadgen`: measures a real `dm-server` under load. See BENCHMARKS.md.
//!
//! For each engine it starts a relay on a fresh database, pinned to one core, and runs, from
//! this process pinned to another core:
//! 1. saturation: a closed loop of concurrent senders, for throughput;
//! 2. an open loop at fractions of that throughput, for acknowledgement and delivery
//!    latency percentiles;
//! 3. an offline drain: envelopes queued for offline recipients, then delivered to them
//!    when they connect;
//! 4. on a fresh relay, resident memory per idle push socket.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use dm_loadgen::load::{Clock, Phase, Traffic, populate};
use dm_loadgen::server::{Engine, Server, ServerConfig, own_cpu_time, pin_self};
use dm_loadgen::sockets;
use hdrhistogram::Histogram;
use serde_json::json;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EngineArg {
    Sqlite,
    Postgres,
}

/// Load generator for the dm relay: real HTTP and WebSocket traffic against a `dm-server`
/// pinned to one core, from this process pinned to another.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Engines to measure, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres"
    )]
    engine: Vec<EngineArg>,
    /// Sending accounts (each in a conversation with one recipient).
    #[arg(long, default_value_t = 64)]
    senders: usize,
    /// Receiving accounts (each on a push socket).
    #[arg(long, default_value_t = 64)]
    recipients: usize,
    /// Sends in flight in the closed loops.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Length of each measured phase, in seconds.
    #[arg(long, default_value_t = 8.0)]
    phase_secs: f64,
    /// Most sends in one phase.
    #[arg(long, default_value_t = 1_000_000)]
    max_sends: usize,
    /// Open-loop rates, in percent of the measured saturation throughput.
    #[arg(long, value_delimiter = ',', default_value = "25,50,80")]
    loads: Vec<u32>,
    /// Most open-loop sends in flight; beyond, sends wait (and the wait counts).
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Envelopes queued for offline recipients in the drain phase (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    drain_envelopes: usize,
    /// Idle push socket counts for the memory measurement (0 skips it).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    sockets: Vec<usize>,
    /// Only the idle-socket memory measurement (no traffic phases).
    #[arg(long)]
    sockets_only: bool,
    /// The core the relay is pinned to.
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// The core the load generator is pinned to.
    #[arg(long, default_value_t = 1)]
    client_core: usize,
    /// Pin nothing (both share every core).
    #[arg(long)]
    no_pin: bool,
    /// The dm-server executable [default: dm-server beside this executable].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// PostgreSQL URL to create (and drop) the relay's databases from.
    #[arg(
        long,
        env = "DM_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Directory for SQLite files and relay logs [default: a fresh directory in the
    /// working directory, removed afterwards].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The relay's log filter (`RUST_LOG`); its default is the relay's own default.
    #[arg(long, default_value = "info")]
    server_log: String,
}

fn main() {
    let args = Args::parse();
    if let Err(err) = run(args) {
        eprintln!("dm-loadgen: {err:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.senders == 0
        || args.recipients == 0
        || args.concurrency == 0
        || args.max_sends == 0
        || args.max_in_flight == 0
    {
        bail!(
            "--senders, --recipients, --concurrency, --max-sends and --max-in-flight must be at least 1"
        );
    }
    if !(args.phase_secs > 0.0 && args.phase_secs <= 600.0) {
        bail!("--phase-secs must be between 0 and 600");
    }
    if args.loads.iter().any(|&l| l == 0 || l > 100) {
        bail!("--loads are percentages between 1 and 100");
    }
    if !args.no_pin {
        pin_self(args.client_core)?;
    }
    let binary = match &args.server_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .with_file_name("dm-server"),
    };
    if !binary.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p dm-server -p dm-loadgen`",
            binary.display()
        );
    }
    let temp;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("dm-loadgen-")
                .tempdir_in(".")
                .context("cannot create a data directory in the working directory")?;
            temp.path().to_path_buf()
        }
    };
    let config = ServerConfig {
        binary,
        core: (!args.no_pin).then_some(args.server_core),
        data_dir,
        postgres_admin_url: args.postgres_url.clone(),
        log_filter: args.server_log.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(measure_all(&args, &config))
}

async fn measure_all(args: &Args, config: &ServerConfig) -> anyhow::Result<()> {
    let pinning = if args.no_pin {
        "nothing pinned".to_owned()
    } else {
        format!(
            "relay pinned to core {}, generator to core {}",
            args.server_core, args.client_core
        )
    };
    println!(
        "dm-loadgen: {pinning}; {} senders -> {} recipients; {} B texts; relay log level {}",
        args.senders,
        args.recipients,
        dm_loadgen::load::TEXT_BYTES,
        args.server_log
    );
    let mut reports = Vec::new();
    for engine in &args.engine {
        let engine = match engine {
            EngineArg::Sqlite => Engine::Sqlite,
            EngineArg::Postgres => Engine::Postgres,
        };
        reports.push(measure_engine(args, config, engine).await?);
    }
    println!("\n| engine (durable) | figure | value |\n|---|---|---|");
    for report in &reports {
        for (figure, value) in &report.rows {
            println!("| {} | {figure} | {value} |", report.label);
        }
    }
    let json: Vec<_> = reports.iter().map(|r| r.json.clone()).collect();
    println!("LOADGEN-JSON {}", serde_json::Value::Array(json));
    Ok(())
}

struct Report {
    label: String,
    rows: Vec<(String, String)>,
    json: serde_json::Value,
}

fn durability(engine: Engine) -> &'static str {
    match engine {
        Engine::Sqlite => "sqlite, WAL + synchronous=FULL",
        Engine::Postgres => "postgres, synchronous_commit=on",
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn percentiles(hist: &Histogram<u64>) -> (u64, u64, u64) {
    (
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
    )
}

fn triple(hist: &Histogram<u64>) -> String {
    let (p50, p99, p999) = percentiles(hist);
    format!("{} / {} / {}", ms(p50), ms(p99), ms(p999))
}

fn errors_note(phase: &Phase) -> String {
    match phase.first_error() {
        Some(first) => format!(" ({} errors; first: {first})", phase.errors()),
        None => String::new(),
    }
}

async fn measure_engine(
    args: &Args,
    config: &ServerConfig,
    engine: Engine,
) -> anyhow::Result<Report> {
    let label = durability(engine).to_owned();
    println!("\n== {label}");
    let run: u32 = rand::random::<u32>() % 1_000_000;
    let mut rows = Vec::new();
    let mut json = json!({ "engine": engine.name(), "durability": label });
    if !args.sockets_only {
        measure_traffic(args, config, engine, run, &mut rows, &mut json).await?;
    }
    // 4. Idle sockets, on a fresh relay.
    let mut steps: Vec<usize> = args.sockets.iter().copied().filter(|&n| n > 0).collect();
    if !steps.is_empty() {
        steps.sort_unstable();
        let mut server = Server::start(config, engine).await?;
        let result = sockets::measure(&server, run, &steps).await;
        server.stop().await;
        let (baseline, memory) = result?;
        println!(
            "idle push sockets (fresh relay, baseline {:.1} MiB):",
            baseline as f64 / 1048576.0
        );
        let mut entries = Vec::new();
        for m in &memory {
            println!(
                "  {:>6} sockets: RSS {:.1} MiB, {:.1} KiB per socket",
                m.sockets,
                m.rss_bytes as f64 / 1048576.0,
                m.per_socket_bytes as f64 / 1024.0
            );
            rows.push((
                format!("resident memory per idle WebSocket at {}", m.sockets),
                format!("{:.1} KiB", m.per_socket_bytes as f64 / 1024.0),
            ));
            entries.push(json!({
                "sockets": m.sockets,
                "rss_bytes": m.rss_bytes,
                "per_socket_bytes": m.per_socket_bytes,
            }));
        }
        json["idle_sockets"] = json!({ "baseline_rss_bytes": baseline, "steps": entries });
    }
    Ok(Report { label, rows, json })
}

/// Phases 1 to 3: saturation, open loop, offline drain, on one relay.
async fn measure_traffic(
    args: &Args,
    config: &ServerConfig,
    engine: Engine,
    run: u32,
    rows: &mut Vec<(String, String)>,
    json: &mut serde_json::Value,
) -> anyhow::Result<()> {
    let mut server = Server::start(config, engine).await?;
    let setup = Instant::now();
    let population = populate(&server.base, args.senders, args.recipients, run).await?;
    let message_bytes = population.message_bytes;
    println!(
        "setup: {} accounts, conversations and messages in {:.1} s; each message is {message_bytes} B of MLS",
        args.senders + args.recipients,
        setup.elapsed().as_secs_f64()
    );
    json["message_bytes"] = json!(message_bytes);
    let clock = Clock::start();
    let mut traffic = Traffic::new(population, clock);
    traffic.connect().await?;
    let phase_len = Duration::from_secs_f64(args.phase_secs);

    // Warm-up (connections, caches), not measured.
    let (warm, _) = traffic
        .closed_loop(args.concurrency, Duration::from_secs(1), args.max_sends)
        .await;
    traffic.settle(&warm, Duration::from_secs(10)).await;

    // 1. Saturation.
    let server_cpu = server.cpu_time()?;
    let own_cpu = own_cpu_time()?;
    let (phase, elapsed) = traffic
        .closed_loop(args.concurrency, phase_len, args.max_sends)
        .await;
    let server_cpu = server.cpu_time()?.saturating_sub(server_cpu);
    let own_cpu = own_cpu_time()?.saturating_sub(own_cpu);
    let all_delivered = traffic.settle(&phase, Duration::from_secs(30)).await;
    let throughput = phase.acked() as f64 / elapsed.as_secs_f64();
    let server_share = server_cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    let own_share = own_cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    println!(
        "saturation (closed loop, {} in flight, {:.1} s): {throughput:.0} envelopes/s ({} sent, {} delivered{}); relay CPU {server_share:.0}% of its core, generator CPU {own_share:.0}% of its core{}",
        args.concurrency,
        elapsed.as_secs_f64(),
        phase.acked(),
        phase.delivered(),
        if all_delivered { "" } else { ", NOT ALL" },
        errors_note(&phase)
    );
    println!(
        "  ack latency p50 / p99 / p99.9: {}",
        triple(&phase.ack_latency())
    );
    rows.push((
        format!(
            "saturation, closed loop ({} in flight)",
            args.concurrency
        ),
        format!(
            "{throughput:.0} envelopes/s (relay CPU {server_share:.0}%, generator CPU {own_share:.0}%)"
        ),
    ));
    rows.push((
        "ack latency at saturation, p50 / p99 / p99.9".into(),
        triple(&phase.ack_latency()),
    ));
    json["saturation"] = json!({
        "envelopes_per_sec": throughput,
        "sent": phase.acked(),
        "delivered": phase.delivered(),
        "errors": phase.errors(),
        "relay_cpu_percent": server_share,
        "generator_cpu_percent": own_share,
        "ack_us": percentiles(&phase.ack_latency()),
    });
    if phase.acked() == 0 {
        bail!(
            "no send succeeded: {}",
            phase.first_error().unwrap_or_default()
        );
    }

    // 2. Open loop at fractions of saturation.
    let mut open = Vec::new();
    for &load in &args.loads {
        let rate = throughput * f64::from(load) / 100.0;
        let own_cpu = own_cpu_time()?;
        let server_cpu = server.cpu_time()?;
        let started = Instant::now();
        let phase = traffic.open_loop(rate, phase_len, args.max_in_flight).await;
        let sending = started.elapsed();
        let all_delivered = traffic.settle(&phase, Duration::from_secs(30)).await;
        let server_share = server.cpu_time()?.saturating_sub(server_cpu).as_secs_f64()
            / sending.as_secs_f64()
            * 100.0;
        let own_share =
            own_cpu_time()?.saturating_sub(own_cpu).as_secs_f64() / sending.as_secs_f64() * 100.0;
        println!(
            "open loop {load}% = {rate:.0}/s for {:.1} s: {} sent, {} delivered{}{}; relay CPU {server_share:.0}%, generator CPU {own_share:.0}%",
            sending.as_secs_f64(),
            phase.acked(),
            phase.delivered(),
            if all_delivered { "" } else { " (NOT ALL)" },
            errors_note(&phase)
        );
        println!(
            "  ack p50 / p99 / p99.9: {}; delivery: {}; generator lag: {}",
            triple(&phase.ack_latency()),
            triple(&phase.delivery_latency()),
            triple(&phase.generator_lag())
        );
        rows.push((
            format!("{load}% load ({rate:.0}/s): ack latency p50 / p99 / p99.9"),
            triple(&phase.ack_latency()),
        ));
        rows.push((
            format!("{load}% load ({rate:.0}/s): delivery latency p50 / p99 / p99.9"),
            triple(&phase.delivery_latency()),
        ));
        open.push(json!({
            "load_percent": load,
            "rate": rate,
            "sent": phase.acked(),
            "delivered": phase.delivered(),
            "errors": phase.errors(),
            "ack_us": percentiles(&phase.ack_latency()),
            "delivery_us": percentiles(&phase.delivery_latency()),
            "generator_lag_us": percentiles(&phase.generator_lag()),
        }));
    }
    json["open_loop"] = json!(open);

    // 3. Offline drain.
    if args.drain_envelopes > 0 {
        traffic.disconnect().await;
        let started = Instant::now();
        let (phase, _) = traffic
            .closed_loop(
                args.concurrency,
                Duration::from_secs(600),
                args.drain_envelopes,
            )
            .await;
        let fill = phase.acked() as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        traffic.connect().await?;
        let all_delivered = traffic.settle(&phase, Duration::from_secs(300)).await;
        let drained = started.elapsed();
        let drain = phase.delivered() as f64 / drained.as_secs_f64();
        println!(
            "offline drain: {} envelopes queued for {} offline recipients at {fill:.0}/s{}; delivered on connect in {:.2} s: {drain:.0} envelopes/s{}",
            phase.acked(),
            args.recipients,
            errors_note(&phase),
            drained.as_secs_f64(),
            if all_delivered {
                ""
            } else {
                " (NOT ALL delivered)"
            }
        );
        rows.push((
            format!(
                "offline drain ({} envelopes, {} recipients)",
                phase.acked(),
                args.recipients
            ),
            format!("{drain:.0} envelopes/s (queued at {fill:.0}/s)"),
        ));
        json["drain"] = json!({
            "envelopes": phase.acked(),
            "delivered": phase.delivered(),
            "queue_per_sec": fill,
            "drain_per_sec": drain,
        });
    }
    traffic.disconnect().await;
    if traffic.stale() > 0 {
        println!(
            "note: {} envelopes arrived outside their phase (late, or pushed again after a reconnect)",
            traffic.stale()
        );
    }
    server.stop().await;
    Ok(())
}
