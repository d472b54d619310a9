//! The `shoal-collector` binary: starts on the given loopback ports, serves
//! /healthz, stops gracefully on SIGTERM, and refuses a bad config clearly.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Kills the child if the test fails before it stops it.
struct Reap(std::process::Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serves_and_stops_on_sigterm() {
    let (grpc, http) = (free_addr(), free_addr());
    let child = Command::new(env!("CARGO_BIN_EXE_shoal-collector"))
        .args(["--grpc-listen", &grpc.to_string(), "--http-listen", &http.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        if let Some(body) = get(http, "/healthz") {
            break body;
        }
        assert!(Instant::now() < deadline, "collector never answered /healthz");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"), "{health}");
    let metrics = get(http, "/metrics").unwrap();
    assert!(metrics.contains("shoal_collector_batches_received_total 0"), "{metrics}");
    let status = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "collector did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("shoal-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "interval_secs = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-collector")).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interval_secs"), "{stderr}");
    std::fs::write(&path, "no_such_key = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-collector")).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_key"));
    let _ = std::fs::remove_dir_all(&dir);
}
