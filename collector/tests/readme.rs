//! The README tells the truth about the collector:
//! - its TOML sample ("every setting has a default") parses with the real
//!   config parser, equals `Config::default()` value for value, and lists
//!   every setting, so the two cannot drift apart again;
//! - its exit status table is the one `shoal-collector --help` prints.

use shoal_collector::Config;
use std::collections::BTreeSet;
use std::process::Command;

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The fenced code blocks of `text` with the given info string.
fn code_blocks<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    text.match_indices(&fence)
        .map(|(i, _)| {
            let body = &text[i + fence.len()..];
            &body[..body.find("```").expect("unterminated code block")]
        })
        .collect()
}

fn default_sample(readme: &str) -> &str {
    let samples: Vec<&str> = code_blocks(readme, "toml").into_iter().filter(|b| b.contains("grpc_listen")).collect();
    assert_eq!(samples.len(), 1, "expected one collector TOML sample in the README");
    samples[0]
}

#[test]
fn readme_toml_sample_is_the_defaults_every_one_of_them() {
    let readme = readme();
    let sample = default_sample(&readme);
    let parsed = Config::from_toml(sample).unwrap_or_else(|e| panic!("the README's sample does not parse: {e}\n{sample}"));
    let defaults = Config::default();
    let as_toml = |c: &Config| toml::Table::try_from(c).expect("Config serializes to TOML");
    let (parsed_table, default_table) = (as_toml(&parsed), as_toml(&defaults));
    for (key, value) in &default_table {
        assert_eq!(parsed_table.get(key), Some(value), "README sample: `{key}` differs from the default {value}");
    }
    assert_eq!(parsed, defaults);

    // Every setting is spelled out, none is left to "has a default" alone.
    let sample_table: toml::Table = toml::from_str(sample).unwrap();
    let written: BTreeSet<&String> = sample_table.keys().collect();
    let all: BTreeSet<&String> = default_table.keys().collect();
    let missing: Vec<_> = all.difference(&written).collect();
    assert!(missing.is_empty(), "settings missing from the README's TOML sample: {missing:?}");
}

#[test]
fn readme_sample_check_catches_a_drifted_value() {
    // The check above has teeth: a sample with one value off is told apart.
    let readme = readme();
    let drifted = default_sample(&readme).replace("interval_secs = 10 ", "interval_secs = 11 ");
    assert_ne!(drifted, default_sample(&readme), "the sample spells `interval_secs = 10 `");
    assert_ne!(Config::from_toml(&drifted).unwrap(), Config::default());
}

#[test]
fn readme_exit_codes_are_the_ones_help_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-collector")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let table: Vec<&str> =
        help.lines().skip_while(|l| !l.starts_with("Exit status")).skip(1).take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    assert_eq!(table.len(), 3, "--help documents exit status 0, 1 and 2:\n{help}");
    let readme = readme();
    for line in table {
        assert!(readme.contains(line), "the README lacks the exit status line {line:?}");
    }
}
