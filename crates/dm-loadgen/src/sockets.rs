//! Resident memory of idle push sockets: many devices each hold open WebSockets that
//! carry nothing, and the relay's resident memory is read before and after.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use tokio::task::JoinHandle;

use crate::load::{http_client, open_socket, register_many};
use crate::server::Server;

/// Push sockets one device may hold open (the relay's limit).
const SOCKETS_PER_DEVICE: usize = 4;
/// Sockets opened at once.
const CONNECT_CONCURRENCY: usize = 64;
/// Pause after opening sockets before reading the relay's memory.
const SETTLE: Duration = Duration::from_secs(2);

/// The relay's resident memory with `sockets` idle push sockets open.
#[derive(Clone, Copy, Debug)]
pub struct SocketMemory {
    /// Open sockets.
    pub sockets: usize,
    /// The relay's resident memory, in bytes.
    pub rss_bytes: u64,
    /// Growth over the baseline per socket, in bytes.
    pub per_socket_bytes: u64,
}

/// Registers enough devices, reads the relay's memory, then opens idle sockets up to
/// each of `steps` (ascending) and reads it again after each step. The sockets answer
/// pings (a task per socket reads them) and carry nothing else.
pub async fn measure(
    server: &Server,
    run: u32,
    steps: &[usize],
) -> anyhow::Result<(u64, Vec<SocketMemory>)> {
    let Some(&most) = steps.iter().max() else {
        return Ok((server.rss_bytes()?, Vec::new()));
    };
    let http = http_client()?;
    let devices = register_many(
        &server.base,
        &http,
        "idle",
        run,
        most.div_ceil(SOCKETS_PER_DEVICE),
        0,
    )
    .await?;
    let tokens: Vec<String> = devices
        .iter()
        .map(|d| d.token().map(str::to_owned).context("device not logged in"))
        .collect::<Result<_, _>>()?;
    drop(devices);
    tokio::time::sleep(SETTLE).await;
    let baseline = server.rss_bytes()?;
    let mut readers: Vec<JoinHandle<()>> = Vec::with_capacity(most);
    let mut results = Vec::with_capacity(steps.len());
    for &target in steps {
        let opened = readers.len();
        let sockets: Vec<_> = futures_util::stream::iter(opened..target.max(opened))
            .map(|i| {
                let token = &tokens[i / SOCKETS_PER_DEVICE];
                open_socket(&server.base, token)
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot open {target} push sockets"))?;
        for mut socket in sockets {
            readers.push(tokio::spawn(async move {
                while let Some(Ok(_)) = socket.next().await {}
            }));
        }
        tokio::time::sleep(SETTLE).await;
        let rss = server.rss_bytes()?;
        // A socket the relay closed meanwhile no longer counts.
        let open = readers.iter().filter(|r| !r.is_finished()).count();
        results.push(SocketMemory {
            sockets: open,
            rss_bytes: rss,
            per_socket_bytes: rss.saturating_sub(baseline) / open.max(1) as u64,
        });
    }
    for reader in readers {
        reader.abort();
    }
    Ok((baseline, results))
}
