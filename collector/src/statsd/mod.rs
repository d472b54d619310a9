//! StatsD and DogStatsD ingest (`--statsd-listen ADDR`): the migration path
//! for services that cannot link the SDK.
//!
//! Lines arrive over UDP (several per datagram) and newline-delimited TCP
//! on one address ([`listen`]); [`parse`] checks their grammar without
//! allocating; [`accumulate`] merges them per source (a peer IP per
//! transport, an instance of its own) between flushes; every
//! `statsd_flush_ms` each source's lines become an ordinary numbered
//! `FlushRequest` that goes through the gRPC ingest path's handler
//! (validation, dedup, series limits, blocklist, the WAL with `data_dir`).
//! So a StatsD value is merged once, counted in the same conservation
//! counts as an SDK's, and lands in the same rollups and sketches as the
//! SDK series of the same name and labels.
//!
//! Nothing on input can crash or block ingestion: every refused line is
//! counted by reason ([`parse::Reason`],
//! `shoal_collector_statsd_lines_rejected_total{reason}`) and the first few
//! are logged, rate-limited. Kernel drops of the UDP socket (receive buffer
//! full) are read from `/proc/net/udp` and exported as
//! `shoal_collector_statsd_udp_kernel_drops_total`.

pub mod accumulate;
pub mod listen;
pub mod parse;

pub use self::accumulate::{Accumulator, Limits, SourceKey, Transport};
pub use self::listen::{Running, Sockets};
pub use self::parse::Reason;

use crate::scrape::MetricWriter;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Self-metrics of the StatsD listener (written only when it is enabled).
#[derive(Debug, Default)]
pub struct StatsdStats {
    /// True once a listener runs: the series below are exposed.
    pub enabled: AtomicBool,
    /// UDP datagrams and TCP reads taken.
    pub datagrams: AtomicU64,
    /// Bytes taken.
    pub bytes: AtomicU64,
    /// Non-empty lines received (accepted or not).
    pub lines_received: AtomicU64,
    /// Lines merged into a source's batch.
    pub lines_accepted: AtomicU64,
    /// Sources created (a new instance each).
    pub sources_created: AtomicU64,
    /// Sources held now.
    pub sources: AtomicU64,
    /// Series held by the sources now.
    pub series: AtomicU64,
    /// TCP connections accepted.
    pub tcp_connections: AtomicU64,
    /// TCP connections closed at once: past `statsd_max_sources` open.
    pub tcp_connections_refused: AtomicU64,
    /// Batches applied (merged, or merged except some refused series).
    pub batches_applied: AtomicU64,
    /// Batches the collector refused as a whole (counted there by reason).
    pub batches_refused: AtomicU64,
    /// Batches dropped: more than `MAX_PENDING` waiting while storage failed.
    pub batches_dropped: AtomicU64,
    /// Datagrams the kernel dropped on the UDP socket (receive buffer full).
    pub kernel_drops: AtomicU64,
    /// The UDP receive buffer the kernel granted, in bytes.
    pub recv_buffer_bytes: AtomicU64,
    rejected: [AtomicU64; Reason::ALL.len()],
}

impl StatsdStats {
    /// Counts one refusal.
    pub fn reject(&self, reason: Reason) {
        self.rejected[reason as usize].fetch_add(1, Relaxed);
    }

    /// Refusals for one reason so far.
    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected[reason as usize].load(Relaxed)
    }

    /// Writes the `shoal_collector_statsd_*` series (nothing when disabled).
    pub fn write(&self, w: &mut impl MetricWriter) {
        if !self.enabled.load(Relaxed) {
            return;
        }
        let counters: [(&str, &AtomicU64, &str); 11] = [
            ("datagrams", &self.datagrams, "UDP datagrams and TCP reads taken by the StatsD listener"),
            ("bytes", &self.bytes, "Bytes taken by the StatsD listener"),
            ("lines_received", &self.lines_received, "StatsD lines received, accepted or not"),
            ("lines_accepted", &self.lines_accepted, "StatsD lines merged into their source's next batch"),
            ("sources_created", &self.sources_created, "StatsD sources (instances) created"),
            ("tcp_connections", &self.tcp_connections, "StatsD TCP connections accepted"),
            ("tcp_connections_refused", &self.tcp_connections_refused, "StatsD TCP connections closed at once: too many open"),
            ("batches_applied", &self.batches_applied, "Batches built from StatsD lines and merged"),
            ("batches_refused", &self.batches_refused, "Batches built from StatsD lines and refused as a whole"),
            ("batches_dropped", &self.batches_dropped, "Batches built from StatsD lines and dropped while storage was failing"),
            ("udp_kernel_drops", &self.kernel_drops, "Datagrams the kernel dropped on the StatsD UDP socket (receive buffer full)"),
        ];
        for (what, value, help) in counters {
            let name = format!("shoal_collector_statsd_{what}_total");
            w.family(&name, "counter", help);
            w.sample(&name, &[], None, &value.load(Relaxed).to_string());
        }
        let name = "shoal_collector_statsd_lines_rejected_total";
        w.family(name, "counter", "StatsD lines refused, by reason (datagram_too_large counts datagrams)");
        for reason in Reason::ALL {
            w.sample(name, &[("reason".into(), reason.as_str().into())], None, &self.rejected(reason).to_string());
        }
        let gauges: [(&str, &AtomicU64, &str); 3] = [
            ("sources", &self.sources, "StatsD sources held"),
            ("series", &self.series, "Series held by the StatsD sources between flushes"),
            ("udp_recv_buffer_bytes", &self.recv_buffer_bytes, "Receive buffer of the StatsD UDP socket, as granted by the kernel"),
        ];
        for (what, value, help) in gauges {
            let name = format!("shoal_collector_statsd_{what}");
            w.family(&name, "gauge", help);
            w.sample(&name, &[], None, &value.load(Relaxed).to_string());
        }
    }
}

/// The kernel's drop count of a UDP socket: the `drops` column of its row
/// in `/proc/net/udp` (or `udp6`), found by the socket's inode. `None` where
/// there is no such file (not Linux) or no row (another network namespace).
pub fn udp_drops(socket: &impl std::os::fd::AsRawFd) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?.ino().to_string();
    ["/proc/net/udp", "/proc/net/udp6"].iter().find_map(|path| {
        let table = std::fs::read_to_string(path).ok()?;
        table.lines().skip(1).find_map(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            // sl local rem st tx:rx tr:tm retrnsmt uid timeout inode ref pointer drops
            (cols.len() >= 13 && cols[9] == inode).then(|| cols[12].parse().ok()).flatten()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_drops_of_a_full_socket_are_read() {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        let socket: std::net::UdpSocket = socket.into();
        assert_eq!(udp_drops(&socket), Some(0));
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let payload = [b'x'; 1000];
        // Nobody reads: the buffer fills and the kernel drops the rest.
        for _ in 0..200 {
            sender.send_to(&payload, socket.local_addr().unwrap()).unwrap();
        }
        let drops = udp_drops(&socket).unwrap();
        assert!(drops > 0 && drops < 200, "{drops}");
    }
}
