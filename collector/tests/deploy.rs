//! The deployment pieces under `deploy/` work with the real tools:
//! - the systemd unit passes `systemd-analyze verify` (when systemd is
//!   installed) and is always parsed: its sections, and a command line the
//!   real binary accepts;
//! - the example config parses with the collector's own parser;
//! - the Prometheus config and alert rules pass `promtool check config`,
//!   `promtool check rules` and their unit tests (`promtool test rules`), and
//!   every self-metric the rules name is one the collector exposes.
//!
//! `promtool` comes with Debian's `prometheus` package, which `scripts/test`
//! installs; without it these tests fail, never skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("cannot read deploy/{file}: {e}"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|dir| dir.join(name)).find(|p| p.is_file())
}

fn promtool() -> PathBuf {
    find_on_path("promtool").unwrap_or_else(|| {
        panic!(
            "`promtool` not found on PATH. This test runs the real tool and does not skip: \
             run scripts/test, or `sudo apt-get install --no-install-recommends prometheus`."
        )
    })
}

/// Runs a tool in `deploy/`, panicking with its output unless it succeeds.
fn run_ok(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(deploy(""))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} {args:?} exited with {}:\n{printed}", program.display(), out.status);
    printed
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    let promtool = promtool();
    let printed = run_ok(&promtool, &["check", "config", "prometheus.yml"]);
    assert!(printed.contains("1 rule files found"), "the config must load the alert rules:\n{printed}");
    let printed = run_ok(&promtool, &["check", "rules", "shoal-collector-rules.yml"]);
    assert!(printed.contains("6 rules found"), "{printed}");
    // The rules' unit tests: each alert fires on the series it is about, and
    // only on those (an unexpected alert fails `promtool test rules`).
    run_ok(&promtool, &["test", "rules", "shoal-collector-rules.test.yml"]);
}

#[test]
fn alert_rules_name_only_metrics_the_collector_exposes() {
    let rules = read("shoal-collector-rules.yml");
    let loopback = "127.0.0.1:0".parse().unwrap();
    let config = shoal_collector::Config { grpc_listen: loopback, http_listen: loopback, ..Default::default() };
    let collector = shoal_collector::Collector::start(config).expect("collector on free loopback ports");
    let exposed = collector.render_metrics();
    collector.shutdown().unwrap();
    let mut named = 0;
    let exprs: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")).collect();
    assert_eq!(exprs.len(), 6, "one expression per rule");
    for (expr, i) in exprs.iter().flat_map(|e| e.match_indices("shoal_collector_").map(move |(i, _)| (*e, i))) {
        let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        assert!(exposed.contains(&format!("# TYPE {name} ")), "the rules name {name}, which the collector does not expose:\n{exposed}");
        named += 1;
    }
    assert!(named >= 5, "the rules are about the collector's self-metrics");
}

#[test]
fn example_collector_config_parses() {
    let config = shoal_collector::Config::from_toml_file(&deploy("collector.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.http_listen, "0.0.0.0:9171".parse().unwrap());
    assert_eq!(config.grpc_listen, "0.0.0.0:7171".parse().unwrap());
}

/// `[Section] -> key -> values` of a unit file (comments and blank lines
/// dropped; a key may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_string());
            sections.entry(name.to_string()).or_default();
            continue;
        }
        let section = current.as_ref().unwrap_or_else(|| panic!("line {}: {line:?} outside a section", n + 1));
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("line {}: {line:?} is not key=value", n + 1));
        assert!(!line.ends_with('\\'), "line {}: no continuation lines, please", n + 1);
        sections.get_mut(section).unwrap().entry(key.trim().to_string()).or_default().push(value.trim().to_string());
    }
    sections
}

#[test]
fn systemd_unit_is_valid_and_runs_the_real_binary() {
    let text = read("shoal-collector.service");
    let unit = parse_unit(&text);
    assert_eq!(unit.keys().collect::<Vec<_>>(), ["Install", "Service", "Unit"]);
    let service = &unit["Service"];
    let one = |key: &str| -> &str {
        let values = service.get(key).unwrap_or_else(|| panic!("[Service] has no {key}"));
        assert_eq!(values.len(), 1, "{key} given more than once");
        &values[0]
    };
    let exec: Vec<&str> = one("ExecStart").split_whitespace().collect();
    assert_eq!(exec[0], "/usr/local/bin/shoal-collector");
    assert!(one("ExecReload").contains("-HUP $MAINPID"), "reload is SIGHUP");
    assert_eq!(one("RestartPreventExitStatus"), "2", "exit status 2 (bad config) must not restart in a loop");
    assert_eq!(unit["Install"]["WantedBy"], ["multi-user.target"]);

    // The binary accepts the unit's arguments (clap parses them all before
    // acting on --help: an unknown flag or a bad value fails here).
    let bin = env!("CARGO_BIN_EXE_shoal-collector");
    let out = Command::new(bin).args(&exec[1..]).arg("--help").output().unwrap();
    assert!(out.status.success(), "{exec:?} refused: {}", String::from_utf8_lossy(&out.stderr));
    // ... and the config path it names is the one deploy/collector.toml is installed as.
    let config_at = exec.iter().position(|a| *a == "--config").map(|i| exec[i + 1]);
    assert_eq!(config_at, Some("/etc/shoal/collector.toml"));
    assert!(text.contains("deploy/collector.toml /etc/shoal/collector.toml"), "the install notes install the example config");

    // systemd's own check, on a copy that points at the binary just built
    // (verify insists that ExecStart exists).
    let Some(analyze) = find_on_path("systemd-analyze") else {
        eprintln!("systemd-analyze not installed: the unit was parsed, not verified by systemd");
        return;
    };
    let dir = std::env::temp_dir().join(format!("shoal-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("shoal-collector.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/shoal-collector", bin)).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&copy).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // verify exits 0 on unknown keys but names the file: any mention of it is a problem.
    assert!(
        out.status.success() && !printed.contains("shoal-collector.service"),
        "systemd-analyze verify exited with {}:\n{printed}",
        out.status
    );
}
