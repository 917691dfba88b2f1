//! The load generator end to end at a tiny scale, so that it keeps working: every phase
//! runs against a real relay (the debug `dm-server` built beside this test) and the
//! figures it prints add up.

use std::path::PathBuf;
use std::process::Command;

fn relay_binary() -> Option<PathBuf> {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_dm-loadgen"));
    let relay = exe.with_file_name("dm-server");
    relay.exists().then_some(relay)
}

fn run_engine(engine: &str) {
    let Some(relay) = relay_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "dm-server is not built beside dm-loadgen (run `cargo build --bins` or `cargo test --workspace`)"
        );
        eprintln!(
            "skipped: dm-server is not built beside dm-loadgen; run `cargo build --bins` first"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_dm-loadgen"))
        .args([
            "--engine",
            engine,
            "--no-pin",
            "--senders",
            "3",
            "--recipients",
            "2",
        ])
        .args(["--concurrency", "4", "--phase-secs", "0.5", "--loads", "50"])
        .args(["--drain-envelopes", "40", "--sockets", "6,10"])
        .arg("--server-bin")
        .arg(&relay)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run dm-loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "dm-loadgen failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let json = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LOADGEN-JSON "))
        .expect("a LOADGEN-JSON line");
    let reports: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    let report = &reports[0];
    assert_eq!(report["engine"], engine);
    let saturation = &report["saturation"];
    let sent = saturation["sent"].as_u64().expect("sent");
    assert!(sent > 0, "{stdout}");
    assert_eq!(saturation["errors"], 0, "{stdout}");
    assert_eq!(saturation["delivered"].as_u64(), Some(sent), "{stdout}");
    let open = &report["open_loop"][0];
    assert_eq!(open["errors"], 0, "{stdout}");
    assert_eq!(open["delivered"], open["sent"], "{stdout}");
    assert!(open["sent"].as_u64().is_some_and(|n| n > 0), "{stdout}");
    assert_eq!(report["drain"]["envelopes"], 40, "{stdout}");
    assert_eq!(report["drain"]["delivered"], 40, "{stdout}");
    let steps = report["idle_sockets"]["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{stdout}");
    assert_eq!(steps[1]["sockets"], 10, "{stdout}");
    assert!(stdout.contains("| figure | value |"), "{stdout}");
}

#[test]
fn every_phase_runs_on_sqlite() {
    run_engine("sqlite");
}

#[test]
fn every_phase_runs_on_postgres() {
    // With DM_TEST_POSTGRES_URL set, that server is used (and must work); otherwise the
    // local default, which CI requires.
    if std::env::var_os("DM_TEST_POSTGRES_URL").is_none() {
        let reachable = std::net::TcpStream::connect_timeout(
            &"127.0.0.1:5432".parse().expect("address"),
            std::time::Duration::from_secs(2),
        )
        .is_ok();
        if !reachable {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is not reachable at 127.0.0.1:5432 (CI requires it)"
            );
            eprintln!("skipped: PostgreSQL is not reachable at 127.0.0.1:5432");
            return;
        }
    }
    run_engine("postgres");
}
