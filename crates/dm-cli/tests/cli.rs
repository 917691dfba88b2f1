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
    for cmd in ["init", "send", "inbox", "chat", "whoami", "rotate-keys"] {
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
