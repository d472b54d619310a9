//! The StatsD sockets (UDP and TCP on one address) and the flush loop.
//!
//! Receiving only touches the [`Accumulator`] (one short lock per datagram
//! or TCP read); the flush loop takes the batches every `statsd_flush_ms`
//! and applies them outside that lock, through the ingest service's handler
//! under the same merge gate as gRPC batches. With `data_dir` each batch is
//! logged to the WAL in its merge's critical section, and the loop waits
//! for the last ticket before the next flush; while the storage is failing
//! (degraded) batches are kept, in order, and applied later.

use super::accumulate::{Accumulator, Built, Limits, SourceKey, Transport};
use super::{udp_drops, StatsdStats};
use crate::aggregate::unix_secs;
use crate::ingest::IngestService;
use crate::Shared;
use parking_lot::Mutex;
use prost::Message;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The bound StatsD sockets: UDP and TCP on the same address.
pub struct Sockets {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
}

impl Sockets {
    /// Binds UDP on `addr` with a receive buffer of `recv_buffer` bytes (0:
    /// the system's default; the kernel may grant less, capped by
    /// `net.core.rmem_max`), then TCP on the same IP and port. With port 0
    /// the UDP port is picked first and TCP takes the same one (retried a
    /// few times if it is taken for TCP).
    pub fn bind(addr: SocketAddr, recv_buffer: usize) -> Result<Sockets, String> {
        let attempts = if addr.port() == 0 { 8 } else { 1 };
        let mut last = String::new();
        for _ in 0..attempts {
            let udp = bind_udp(addr, recv_buffer)?;
            let bound = udp.local_addr().map_err(|e| e.to_string())?;
            match std::net::TcpListener::bind(bound) {
                Ok(tcp) => {
                    tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
                    return Ok(Sockets { udp, tcp });
                }
                Err(e) => last = format!("cannot bind StatsD TCP {bound}: {e}"),
            }
        }
        Err(last)
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.udp.local_addr().expect("a bound socket has an address")
    }
}

fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> Result<std::net::UdpSocket, String> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None).map_err(|e| format!("StatsD UDP socket: {e}"))?;
    if recv_buffer > 0 {
        socket.set_recv_buffer_size(recv_buffer).map_err(|e| format!("statsd_recv_buffer {recv_buffer}: {e}"))?;
    }
    socket.bind(&addr.into()).map_err(|e| format!("cannot bind StatsD UDP {addr}: {e}"))?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(socket.into())
}

/// The running listener; [`Running::finish`] stops it after a last flush.
pub struct Running {
    receivers: Vec<JoinHandle<()>>,
    flusher: JoinHandle<()>,
    flush: Arc<Flush>,
}

impl Running {
    /// Waits for the receivers to stop (the stop signal must have been
    /// sent), then applies what they accumulated: lines received before the
    /// stop are merged before the collector's final checkpoint.
    pub async fn finish(self) {
        for r in self.receivers {
            let _ = r.await;
        }
        let _ = self.flusher.await;
        self.flush.flush_once().await;
    }
}

struct Flush {
    accumulator: Arc<Mutex<Accumulator>>,
    shared: Shared,
    service: IngestService,
    stats: Arc<StatsdStats>,
    udp: Arc<tokio::net::UdpSocket>,
}

/// Starts the receivers and the flush loop on the current tokio runtime;
/// they stop when `stop` turns true.
pub fn start(shared: &Shared, sockets: Sockets, stop: watch::Receiver<bool>) -> Result<Running, String> {
    let config = shared.aggregator.lock().config().clone();
    let stats = shared.stats.statsd.clone();
    stats.enabled.store(true, Relaxed);
    let accumulator = Arc::new(Mutex::new(Accumulator::new(Limits::of(&config), stats.clone())));
    let granted = socket2::SockRef::from(&sockets.udp).recv_buffer_size().unwrap_or(0);
    stats.recv_buffer_bytes.store(granted as u64, Relaxed);
    if config.statsd_recv_buffer > 0 && granted < config.statsd_recv_buffer {
        tracing::warn!(
            requested = config.statsd_recv_buffer,
            granted,
            "statsd: the kernel granted a smaller UDP receive buffer than statsd_recv_buffer (raise net.core.rmem_max)"
        );
    }
    let addr = sockets.local_addr();
    let udp = Arc::new(tokio::net::UdpSocket::from_std(sockets.udp).map_err(|e| e.to_string())?);
    let tcp = tokio::net::TcpListener::from_std(sockets.tcp).map_err(|e| e.to_string())?;
    tracing::info!(statsd = %addr, "StatsD listening (UDP and TCP)");
    let service =
        IngestService::new(shared.aggregator.clone(), shared.stats.clone(), shared.ingest.clone()).with_durable(shared.durable.clone());
    let flush =
        Arc::new(Flush { accumulator: accumulator.clone(), shared: shared.clone(), service, stats: stats.clone(), udp: udp.clone() });
    let receivers = vec![
        tokio::spawn(receive_udp(udp, accumulator.clone(), stop.clone())),
        tokio::spawn(accept_tcp(tcp, accumulator, config.statsd_max_sources, config.statsd_max_datagram_bytes, stop.clone())),
    ];
    let period = Duration::from_millis(config.statsd_flush_ms.max(1));
    let flusher = tokio::spawn(flush_loop(flush.clone(), period, stop));
    Ok(Running { receivers, flusher, flush })
}

async fn receive_udp(udp: Arc<tokio::net::UdpSocket>, accumulator: Arc<Mutex<Accumulator>>, mut stop: watch::Receiver<bool>) {
    // The largest UDP payload: a datagram is never truncated; one larger
    // than `statsd_max_datagram_bytes` is refused whole, and counted.
    let mut buf = vec![0u8; 65_536];
    let mut errors = 0u64;
    loop {
        tokio::select! {
            ready = udp.readable() => {
                if let Err(e) = ready {
                    tracing::error!("statsd: UDP socket failed: {e}");
                    return;
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        // Drain what is queued; each datagram is merged under one short lock.
        loop {
            match udp.try_recv_from(&mut buf) {
                Ok((n, peer)) => accumulator.lock().ingest((Transport::Udp, peer.ip()), &buf[..n], unix_secs()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors and the like: never fatal, logged sparsely.
                    errors += 1;
                    if errors.is_power_of_two() {
                        tracing::warn!("statsd: UDP receive error ({errors} so far): {e}");
                    }
                    break;
                }
            }
        }
    }
}

async fn accept_tcp(
    tcp: tokio::net::TcpListener,
    accumulator: Arc<Mutex<Accumulator>>,
    max_connections: usize,
    max_line: usize,
    mut stop: watch::Receiver<bool>,
) {
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut connections = Vec::<JoinHandle<()>>::new();
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off a little.
                tracing::warn!("statsd: TCP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let stats = accumulator.lock().stats().clone();
        let Ok(permit) = open.clone().try_acquire_owned() else {
            stats.tcp_connections_refused.fetch_add(1, Relaxed);
            continue;
        };
        stats.tcp_connections.fetch_add(1, Relaxed);
        connections.retain(|c| !c.is_finished());
        let (acc, stop) = (accumulator.clone(), stop.clone());
        connections.push(tokio::spawn(async move {
            read_lines(stream, (Transport::Tcp, peer.ip()), acc, max_line, stop).await;
            drop(permit);
        }));
    }
    // Connections stop on the same signal; wait for them so that what they
    // read is in the final flush.
    for c in connections {
        let _ = c.await;
    }
}

/// Reads newline-delimited lines from one connection; complete lines go to
/// the accumulator per read, a line longer than `max_line` is refused and
/// skipped up to its newline.
async fn read_lines(
    mut stream: tokio::net::TcpStream,
    source: SourceKey,
    accumulator: Arc<Mutex<Accumulator>>,
    max_line: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; (max_line + 1).max(64 * 1024)];
    let mut filled = 0usize;
    let mut skipping = false;
    loop {
        let n = tokio::select! {
            r = stream.read(&mut buf[filled..]) => match r {
                Ok(n) => n,
                // A read error or the stop: an unterminated line may be cut
                // short (`x:1|c|@0.1` read as `x:1|c`), so it is dropped.
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        if n == 0 {
            // A clean end of stream: the unterminated last line counts.
            if filled > 0 && !skipping {
                accumulator.lock().ingest(source, &buf[..filled], unix_secs());
            }
            return;
        }
        let start = filled;
        filled += n;
        let mut from = 0;
        if skipping {
            match buf[start..filled].iter().position(|b| *b == b'\n') {
                Some(p) => {
                    skipping = false;
                    from = start + p + 1;
                }
                None => {
                    filled = 0;
                    continue;
                }
            }
        }
        match buf[from..filled].iter().rposition(|b| *b == b'\n') {
            Some(p) => {
                let end = from + p + 1;
                accumulator.lock().ingest(source, &buf[from..end], unix_secs());
                buf.copy_within(end..filled, 0);
                filled -= end;
            }
            None => {
                buf.copy_within(from..filled, 0);
                filled -= from;
            }
        }
        if filled > max_line {
            accumulator.lock().refuse(super::Reason::LineTooLong, &buf[..64], source);
            skipping = true;
            filled = 0;
        }
    }
}

async fn flush_loop(flush: Arc<Flush>, period: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        flush.flush_once().await;
    }
}

impl Flush {
    /// Applies every due batch; waits until the last one is durable.
    async fn flush_once(&self) {
        if let Some(drops) = udp_drops(&*self.udp) {
            self.stats.kernel_drops.store(drops, Relaxed);
        }
        let now_nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let batches = self.accumulator.lock().take_batches(now_nanos);
        if batches.is_empty() {
            return;
        }
        let mut last_ticket = 0;
        {
            let _merging = self.shared.ingest.gate.lock().await;
            for built in batches {
                last_ticket = last_ticket.max(self.apply(built));
            }
        }
        if let (Some(d), true) = (&self.shared.durable, last_ticket > 0) {
            // Failure makes the collector degraded: later batches are kept.
            let _ = d.wait(last_ticket).await;
        }
    }

    /// Applies one batch (again with every definition if the collector
    /// answers unknown refs); returns its WAL ticket (0: none).
    fn apply(&self, built: Built) -> u64 {
        let Built { source, mut request } = built;
        let durable = self.shared.durable.as_deref();
        for attempt in 0..2 {
            if durable.is_some_and(|d| d.degraded()) {
                self.accumulator.lock().give_back(source, request);
                return 0;
            }
            let encoded = durable.map(|_| request.encode_to_vec());
            let (result, ticket) = self.service.handle_at(&request, unix_secs(), durable.zip(encoded.as_deref()));
            match result {
                Ok(response) if !response.unknown_refs.is_empty() && attempt == 0 => {
                    match self.accumulator.lock().definitions_for(source, &request) {
                        Some(definitions) => request.definitions = definitions,
                        None => break,
                    }
                }
                Ok(response) => {
                    if response.unknown_refs.is_empty() {
                        self.stats.batches_applied.fetch_add(1, Relaxed);
                    } else {
                        self.stats.batches_refused.fetch_add(1, Relaxed);
                    }
                    return ticket;
                }
                Err(status) => {
                    self.stats.batches_refused.fetch_add(1, Relaxed);
                    tracing::warn!(instance = %request.instance_id, "statsd: batch refused: {}", status.message());
                    return ticket;
                }
            }
        }
        self.stats.batches_dropped.fetch_add(1, Relaxed);
        0
    }
}
