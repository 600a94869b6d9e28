//! A TCP proxy that delays each direction by a fixed one-way latency and can cap bandwidth,
//! for benchmarks across a simulated network (this kernel has no netem).
//!
//! ```sh
//! cargo run --release --example latency_proxy -- --listen 127.0.0.1:9000 --to 127.0.0.1:8000 \
//!     --one-way-ms 5 [--mbit 1000]
//! ```
//!
//! Every piece read from one side is released to the other `--one-way-ms` after it arrived,
//! so a request and its answer cost a round trip of twice that, and a stream keeps flowing
//! meanwhile (pieces in flight overlap, as on a real link). With `--mbit`, each direction
//! sends at most that rate. Prints `listening on ADDR` once ready.

use std::collections::VecDeque;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(long)]
    listen: String,
    /// Where to forward to.
    #[arg(long)]
    to: String,
    /// Delay of each direction, in milliseconds (a round trip costs twice this).
    #[arg(long, default_value_t = 0.0)]
    one_way_ms: f64,
    /// Bandwidth cap of each direction in Mbit/s (none when 0).
    #[arg(long, default_value_t = 0.0)]
    mbit: f64,
}

/// Pieces read but not yet released: bounded, so a fast sender is held back like by a real
/// link's buffers (64 MiB covers 50 ms at 10 Gbit/s).
const IN_FLIGHT_BYTES: usize = 64 << 20;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let delay = Duration::from_secs_f64(args.one_way_ms / 1000.0);
    let bytes_per_sec = args.mbit * 1e6 / 8.0;
    loop {
        let (client, _) = listener.accept().await?;
        let to = args.to.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&to).await else {
                eprintln!("latency_proxy: cannot connect to {to}");
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                pipe(client_read, server_write, delay, bytes_per_sec),
                pipe(server_read, client_write, delay, bytes_per_sec)
            );
        });
    }
}

/// Copies `from` to `to`, each piece released `delay` after it was read, at most
/// `bytes_per_sec` (unlimited when 0). Ends when either side closes.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    bytes_per_sec: f64,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_BYTES));
    let reader = {
        let budget = budget.clone();
        async move {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let Ok(permit) = budget.acquire_many(n as u32).await else { break };
                permit.forget();
                if tx.send((Instant::now() + delay, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    };
    let writer = async move {
        let mut sent_until = Instant::now();
        let mut pending: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
        while let Some((due, piece)) = match pending.pop_front() {
            Some(next) => Some(next),
            None => rx.recv().await,
        } {
            tokio::time::sleep_until(due).await;
            if bytes_per_sec > 0.0 {
                // The link is busy until the previous pieces have gone out at the capped rate.
                let start = sent_until.max(Instant::now());
                sent_until = start + Duration::from_secs_f64(piece.len() as f64 / bytes_per_sec);
                tokio::time::sleep_until(sent_until).await;
            }
            if to.write_all(&piece).await.is_err() {
                break;
            }
            budget.add_permits(piece.len());
            while let Ok(next) = rx.try_recv() {
                pending.push_back(next);
            }
        }
        let _ = to.shutdown().await;
        // A reader waiting for room must not wait for a writer that is gone.
        budget.close();
    };
    tokio::join!(reader, writer);
}
