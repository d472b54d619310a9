//! The `shoal-collector` daemon: the blocklist in its TOML config is sent in
//! every flush response, and SIGHUP reloads it without a restart (same
//! epoch, same rollups); a bad file on SIGHUP keeps the old settings.

use shoal_proto as pb;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(path: &std::path::Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn batch(sequence: u64) -> pb::FlushRequest {
    pb::FlushRequest {
        instance_id: "daemon-test".into(),
        sequence,
        definitions: vec![
            pb::SeriesDefinition { r#ref: 1, name: "a_total".into(), labels: vec![], ..Default::default() },
            pb::SeriesDefinition { r#ref: 2, name: "b_total".into(), labels: vec![], ..Default::default() },
        ],
        counters: vec![pb::CounterDelta { r#ref: 1, delta: 1 }, pb::CounterDelta { r#ref: 2, delta: 1 }],
        ..Default::default()
    }
}

#[cfg(unix)]
#[test]
fn sighup_reloads_the_blocklist_and_the_responses_carry_it() {
    let dir = std::env::temp_dir().join(format!("shoal-daemon-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("collector.toml");
    let (grpc, http) = (free_port(), free_port());
    let listen = format!("grpc_listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n");
    write_config(&config, &format!("{listen}blocklist = [\"a_*\"]\n"));
    let child = Command::new(env!("CARGO_BIN_EXE_shoal-collector"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let url = format!("http://127.0.0.1:{grpc}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut client = loop {
            match pb::ingest_client::IngestClient::connect(url.clone()).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("daemon did not start: {e}"),
            }
        };
        let first = client.flush(batch(1)).await.unwrap().into_inner();
        assert_eq!(first.blocklist, vec!["a_*"]);
        assert_eq!(first.rejected.len(), 1);
        assert_eq!((first.rejected[0].r#ref, first.rejected[0].reason.as_str()), (1, "blocked"));

        let hup = |pid: u32| assert!(Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap().success());
        write_config(&config, &format!("{listen}blocklist = [\"b_*\", \"c_total\"]\n"));
        hup(daemon.0.id());
        let mut sequence = 2;
        let deadline = Instant::now() + Duration::from_secs(10);
        let reloaded = loop {
            let r = client.flush(batch(sequence)).await.unwrap().into_inner();
            sequence += 1;
            if r.blocklist == ["b_*", "c_total"] || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(reloaded.blocklist, vec!["b_*", "c_total"]);
        assert_eq!(reloaded.collector_epoch, first.collector_epoch, "reloaded in place, not restarted");
        assert_eq!(reloaded.rejected.iter().map(|r| r.r#ref).collect::<Vec<_>>(), vec![2]);

        // A broken file: the old settings stay.
        write_config(&config, "blocklist = [\"[\"]\n");
        hup(daemon.0.id());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = client.flush(batch(sequence)).await.unwrap().into_inner();
        assert_eq!(after.blocklist, vec!["b_*", "c_total"]);
    });
    let metrics = {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        out
    };
    assert!(metrics.contains("shoal_collector_config_reloads_total 1"), "{metrics}");
    assert!(metrics.contains("shoal_collector_config_reload_errors_total 1"), "{metrics}");
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}
