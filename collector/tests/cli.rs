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

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shoal-collector"));
    c.env("RUST_LOG", "info").env_remove("NO_COLOR");
    c
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_healthy(child: &mut Reap, http: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(http, "/healthz").is_none_or(|b| !b.ends_with("ok\n")) {
        assert!(child.0.try_wait().unwrap().is_none(), "collector exited before serving");
        assert!(Instant::now() < deadline, "collector never answered /healthz on {http}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Reap, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.0.id().to_string()]).status().unwrap().success());
}

/// SIGTERM, then the exit status within 10 s.
fn terminate(mut child: Reap) -> std::process::ExitStatus {
    signal(&child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "collector did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn listen_addresses_take_localhost_and_a_bare_port() {
    let (grpc, http) = (free_addr(), free_addr());
    let child = bin()
        .args(["--grpc-listen", &format!(":{}", grpc.port()), "--http-listen", &format!("localhost:{}", http.port())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    // localhost resolves to 127.0.0.1 first here; `:PORT` is that port on 127.0.0.1.
    wait_healthy(&mut child, http);
    assert!(TcpStream::connect_timeout(&grpc, Duration::from_secs(2)).is_ok(), "gRPC not on {grpc}");
    assert!(terminate(child).success());
}

#[test]
fn bad_flag_values_name_the_flag_and_exit_2() {
    let out = bin().args(["--interval-secs", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("--interval-secs") && stderr.contains("at least 1"), "{stderr}");

    // A setting valid alone but not with the others: the message names the
    // setting and the flag that gave it.
    let out = bin().args(["--retention-secs", "5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("retention_secs must be at least interval_secs") && stderr.contains("--retention-secs 5"), "{stderr}");

    let out = bin().args(["--http-listen", "nowhere"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--http-listen"), "{}", stderr_of(&out));
}

#[test]
fn bad_tls_and_token_files_are_configuration_errors() {
    let out = bin().args(["--tls-cert", "/nonexistent/cert.pem"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("tls_cert is set without tls_key") && stderr_of(&out).contains("--tls-cert"), "{}", stderr_of(&out));
    let out = bin().args(["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("/nonexistent/cert.pem"), "{}", stderr_of(&out));
    let dir = temp_dir("bad-tokens");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "good-token\nsecret-token tenant extra\n").unwrap();
    let out = bin().arg("--auth-tokens-file").arg(&tokens).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("line 2") && !stderr.contains("secret-token"), "{stderr}");
}

#[test]
fn a_port_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap();
    let out = bin().args(["--grpc-listen", "127.0.0.1:0", "--http-listen", &http.to_string()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains(&format!("cannot bind HTTP {http}")), "{}", stderr_of(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn help_documents_logging_and_exit_status() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--log-format <LOG_FORMAT>",
        "goes to stderr",
        "NO_COLOR",
        "Exit status:",
        "0  stopped by SIGINT or SIGTERM",
        "1  could not serve",
        "2  bad command line or configuration",
        ":PORT (that port on 127.0.0.1",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

/// Runs the collector until it serves, stops it with SIGTERM, and returns
/// what it wrote to stdout and to stderr.
fn run_and_stop(extra: &[&str]) -> (String, String) {
    let (grpc, http) = (free_addr(), free_addr());
    let child = bin()
        .args(["--grpc-listen", &grpc.to_string(), "--http-listen", &http.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    let (mut stdout, mut stderr) = (child.0.stdout.take().unwrap(), child.0.stderr.take().unwrap());
    wait_healthy(&mut child, http);
    // A few log lines: far below a pipe's buffer, so the child never blocks.
    assert!(terminate(child).success());
    let (mut out, mut err) = (String::new(), String::new());
    stdout.read_to_string(&mut out).unwrap();
    stderr.read_to_string(&mut err).unwrap();
    (out, err)
}

#[test]
fn logs_go_to_stderr_without_colour_off_a_terminal() {
    let (stdout, stderr) = run_and_stop(&[]);
    assert!(stdout.is_empty(), "stdout: {stdout}");
    for needle in ["shoal-collector listening", "SIGTERM received", "stopped"] {
        assert!(stderr.contains(needle), "{needle:?} not logged:\n{stderr}");
    }
    assert!(!stderr.contains('\x1b'), "colour codes in a log that is not a terminal:\n{stderr:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (stdout, stderr) = run_and_stop(&["--log-format", "json"]);
    assert!(stdout.is_empty(), "stdout: {stdout}");
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object: {l:?}: {e}"))).collect();
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()), "{stderr}");
    let listening = lines.iter().find(|l| l["fields"]["message"] == "shoal-collector listening").expect("listening logged");
    assert!(listening["fields"]["http"].is_string(), "{listening}");
    assert!(!stderr.contains('\x1b'));
}

/// Runs the collector under a pseudo-terminal (`script`, util-linux) with a
/// config file that does not exist: it logs one error and exits 2.
fn on_a_terminal(no_color: Option<&str>) -> (Option<i32>, String) {
    let bin = env!("CARGO_BIN_EXE_shoal-collector");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &format!("'{bin}' --config /nonexistent/shoal.toml"), "/dev/null"]).env("RUST_LOG", "info").env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run `script` (util-linux) for a pseudo-terminal: {e}"));
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn colours_only_on_a_terminal_and_never_with_no_color() {
    let (code, printed) = on_a_terminal(None);
    assert_eq!(code, Some(2), "{printed}");
    assert!(printed.contains("/nonexistent/shoal.toml"), "{printed}");
    assert!(printed.contains("\x1b["), "a terminal gets colours: {printed:?}");
    for value in ["1", "true"] {
        let (code, printed) = on_a_terminal(Some(value));
        assert_eq!(code, Some(2), "{printed}");
        assert!(printed.contains("/nonexistent/shoal.toml"), "{printed}");
        assert!(!printed.contains('\x1b'), "NO_COLOR={value} still coloured: {printed:?}");
    }
}

#[cfg(unix)]
#[test]
fn sighup_reports_only_file_changes_that_need_a_restart() {
    let dir = temp_dir("hup");
    let (config, log) = (dir.join("collector.toml"), dir.join("stderr.log"));
    std::fs::write(&config, "ingest_queue = 1024\nmax_series_total = 1000\n").unwrap();
    let (grpc, http) = (free_addr(), free_addr());
    // The file sets no listen address, interval, retention or window: the
    // flags differ from the file's (default) values, and must win silently.
    let child = bin()
        .arg("--config")
        .arg(&config)
        .args(["--grpc-listen", &grpc.to_string(), "--http-listen", &http.to_string()])
        .args(["--interval-secs", "5", "--retention-secs", "600", "--summary-window-secs", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    wait_healthy(&mut child, http);
    let reloads = |n: u32| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let want = format!("shoal_collector_config_reloads_total {n}\n");
        while get(http, "/metrics").is_none_or(|m| !m.contains(&want)) {
            assert!(Instant::now() < deadline, "reload {n} never applied");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // A reloadable change only: applied, nothing reported as needing a restart.
    std::fs::write(&config, "ingest_queue = 1024\nmax_series_total = 2000\n").unwrap();
    signal(&child, "-HUP");
    reloads(1);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("config reloaded"), "{logged}");
    assert!(!logged.contains("need a restart"), "nothing that needs a restart changed:\n{logged}");

    // A restart-only change in the file is still reported, and only it.
    std::fs::write(&config, "ingest_queue = 512\nmax_series_total = 2000\n").unwrap();
    signal(&child, "-HUP");
    reloads(2);
    assert!(terminate(child).success());
    let logged = std::fs::read_to_string(&log).unwrap();
    let warning = logged.lines().find(|l| l.contains("need a restart")).unwrap_or_else(|| panic!("no warning:\n{logged}"));
    assert!(warning.contains("[\"ingest_queue\"]"), "{warning}");
    let _ = std::fs::remove_dir_all(&dir);
}
