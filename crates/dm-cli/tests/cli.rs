//! `dm`'s behaviour without a relay: help, argument errors, missing accounts. (The
//! conversations themselves are tested end to end in the workspace's `tests/` crate.)
//!
//! Having integration tests here also makes `cargo test --workspace` build the `dm`
//! binary that the end-to-end tests run.

use std::process::{Command, Output};

fn dm(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dm"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env("DM_PASSPHRASE", "pass phrase")
        .env_remove("DM_HOME")
        .output()
        .expect("run dm")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_every_command() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = dm(tmp.path(), &["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "init",
        "send",
        "inbox",
        "chat",
        "whoami",
        "rotate-keys",
        "vectors",
    ] {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
    }
}

#[test]
fn commands_without_an_account_say_how_to_create_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for args in [
        &["inbox"][..],
        &["whoami"],
        &["send", "bob", "hi"],
        &["chat", "bob"],
    ] {
        let out = dm(tmp.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("no account"), "{args:?}: {err}");
        assert!(err.contains("dm init"), "{args:?}: {err}");
    }
    assert!(
        std::fs::read_dir(tmp.path())
            .expect("home")
            .next()
            .is_none(),
        "a failed command created files"
    );
}

#[test]
fn bad_arguments_are_explained() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = dm(
        tmp.path(),
        &["init", "--server", "ftp://relay", "--handle", "alice"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("http://"), "{}", stderr(&out));

    let out = dm(
        tmp.path(),
        &["init", "--server", "127.0.0.1:9", "--handle", "a!"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a valid handle"),
        "{}",
        stderr(&out)
    );

    // An unreachable relay: a clear error, and no half-created account left behind.
    let home = tmp.path().join("unreachable");
    let out = dm(
        &home,
        &["init", "--server", "127.0.0.1:9", "--handle", "alice"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("reach"), "{}", stderr(&out));
    let out = dm(&home, &["whoami"]);
    assert!(stderr(&out).contains("no account"), "{}", stderr(&out));

    // Usage errors are clap's (exit code 2).
    let out = dm(tmp.path(), &["send", "bob"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `dm vectors verify` passes on the published vectors, and fails (exit 1, one failure
/// counted) when one byte of one positive case is changed.
#[test]
fn vectors_verify_passes_and_catches_a_flipped_byte() {
    let published = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = dm(
        tmp.path(),
        &["vectors", "verify", published.to_str().expect("utf-8 path")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    let last = stdout.lines().last().expect("a summary line");
    assert!(last.ends_with(" passed, 0 failed"), "{stdout}");

    // Copy the files, flip one bit of the device certificate's signature.
    let copy = tmp.path().join("vectors");
    std::fs::create_dir(&copy).expect("mkdir");
    for entry in std::fs::read_dir(&published).expect("read dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, copy.join(path.file_name().expect("name"))).expect("copy");
    }
    let file = copy.join("device-certificate.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    let signature = json["positive"][0]["signature"]
        .as_str()
        .expect("signature")
        .to_owned();
    let flipped = format!(
        "{}{}",
        if signature.starts_with('0') { '1' } else { '0' },
        &signature[1..]
    );
    json["positive"][0]["signature"] = flipped.into();
    std::fs::write(&file, serde_json::to_vec(&json).expect("encode")).expect("write");
    let out = dm(
        tmp.path(),
        &["vectors", "verify", copy.to_str().expect("utf-8 path")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAILED positive alice"), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .expect("summary")
            .ends_with(" passed, 1 failed"),
        "{stdout}"
    );
}

/// Output into a pipe whose reader is gone (`dm … | head -1`) ends the command quietly
/// (status 141, as after SIGPIPE), never with a panic.
#[test]
fn a_closed_stdout_ends_quietly() {
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dm"))
        .args(["vectors", "verify"])
        .arg(&vectors)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}
