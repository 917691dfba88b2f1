//! End-to-end: the real `dm-server` and `dm` binaries on 127.0.0.1.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use dm_tests::{RecordingProxy, Relay, User, files_under, scan_files, texts_from};
use serde_json::Value;

/// A relay and two registered users, alice and bob, in a fresh temporary directory.
fn two_users() -> (tempfile::TempDir, Relay, User, User) {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"));
    let alice = User::new(tmp.path(), "alice");
    let bob = User::new(tmp.path(), "bob");
    alice.init(&relay.url());
    bob.init(&relay.url());
    (tmp, relay, alice, bob)
}

/// Alice and Bob (no phone numbers, no e-mail: a handle and keys) exchange DMs both ways;
/// the relay is killed and restarted in the middle; each side sees each message once.
#[test]
fn dm_both_ways_survives_relay_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&tmp.path().join("relay"));
    let alice = User::new(tmp.path(), "alice");
    let bob = User::new(tmp.path(), "bob");
    let out = alice.init(&relay.url());
    assert!(out.contains("@alice"), "{out}");
    bob.init(&relay.url());

    alice.ok(&["send", "@bob", "hello bob"]);
    relay.restart();
    alice.ok(&["send", "bob", "second, after a relay restart"]);

    let inbox = bob.inbox();
    let msgs: Vec<&Value> = inbox.iter().filter(|e| e["type"] == "message").collect();
    assert_eq!(msgs.len(), 2, "bob's inbox: {inbox:?}");
    for m in &msgs {
        for field in ["from", "text", "id", "sent_at", "conversation"] {
            assert!(!m[field].is_null(), "message lacks {field}: {m}");
        }
    }
    assert_eq!(
        texts_from(&bob.messages(), "alice").len(),
        0,
        "a second inbox shows nothing new"
    );
    let texts: Vec<&str> = msgs.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["hello bob", "second, after a relay restart"]);
    assert_eq!(msgs[0]["conversation"], msgs[1]["conversation"]);

    bob.ok(&["send", "alice", "hi alice"]);
    relay.restart();
    let got = alice.messages();
    assert_eq!(texts_from(&got, "bob"), ["hi alice"]);
    assert_eq!(got[0]["conversation"], msgs[0]["conversation"]);
    assert!(alice.messages().is_empty());
    assert!(bob.messages().is_empty());
}

/// The relay never sees plaintext: a unique canary sent through it appears in none of its
/// database files (WAL included), its log, or the HTTP bytes; the client's files hold
/// neither the canary nor anything readable without the passphrase.
#[test]
fn relay_is_blind_and_client_store_is_encrypted() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"));
    let proxy = RecordingProxy::start(relay.addr.clone());
    let alice = User::new(tmp.path(), "alice");
    let bob = User::new(tmp.path(), "bob");
    alice.init(&proxy.url());
    bob.init(&proxy.url());

    let canary = format!("canary-{:032x}", rand::random::<u128>());
    alice.ok(&["send", "bob", &canary]);
    let got = bob.messages();
    assert_eq!(texts_from(&got, "alice"), [canary.as_str()]);
    bob.ok(&["send", "alice", &format!("re: {canary}")]);
    assert_eq!(alice.messages().len(), 1);

    let captured = proxy.captured();
    assert!(
        captured.len() > 10_000,
        "the proxy saw the traffic ({} bytes)",
        captured.len()
    );
    assert!(
        dm_tests::contains(&captured, b"POST /v1/messages"),
        "messages went through the proxy"
    );
    let leaks: Vec<_> = dm_tests::leak_patterns(canary.as_bytes())
        .into_iter()
        .filter(|p| dm_tests::contains(&captured, p))
        .collect();
    assert!(leaks.is_empty(), "canary in HTTP traffic");

    let relay_files = relay.files();
    if relay.on_postgres() {
        let dump = std::fs::read_to_string(relay.dir.join("database-dump.txt")).unwrap();
        assert!(
            dump.contains("-- mailbox: ") && dump.len() > 10_000,
            "the relay's database was dumped to be scanned ({} bytes)",
            dump.len()
        );
    } else {
        assert!(
            relay_files
                .iter()
                .any(|f| f.to_string_lossy().ends_with("-wal")),
            "the relay's WAL file exists to be scanned: {relay_files:?}"
        );
    }
    assert!(relay_files.iter().any(|f| f.ends_with("relay.log")));
    assert_eq!(
        scan_files(&relay_files, canary.as_bytes()),
        Vec::<String>::new()
    );

    let client_files = [files_under(&alice.home), files_under(&bob.home)].concat();
    assert!(client_files.len() >= 2, "{client_files:?}");
    assert_eq!(
        scan_files(&client_files, canary.as_bytes()),
        Vec::<String>::new()
    );
    // The secrets themselves, read through the documented store format with the passphrase:
    // none of them appears in any client file, nor anywhere on the relay's side.
    for user in [&alice, &bob] {
        let secrets = store_secrets(&user.home);
        assert!(secrets.len() >= 2, "account secret and device key found");
        for secret in &secrets {
            assert_eq!(scan_files(&client_files, secret), Vec::<String>::new());
            assert_eq!(scan_files(&relay_files, secret), Vec::<String>::new());
            assert!(!dm_tests::contains(&captured, secret));
        }
        // The messages are in the decrypted store: the scans above look at real data.
        let db = open_store(&user.home);
        let n: i64 = db
            .query_row(
                "SELECT count(*) FROM messages WHERE body LIKE ?1",
                [format!("%{canary}%")],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2, "{} stores both messages", user.handle);
    }
    // Without the passphrase the store is unreadable as SQLite: no table names in clear.
    for f in &client_files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !dm_tests::contains(&bytes, b"CREATE TABLE"),
            "{} holds plaintext SQL schema",
            f.display()
        );
    }
}

/// Opens a client store the way PROTOCOL.md describes it: Argon2id over the passphrase
/// with the parameters of `store.json`, used as a raw SQLCipher key.
fn open_store(home: &std::path::Path) -> rusqlite::Connection {
    let meta: Value =
        serde_json::from_slice(&std::fs::read(home.join("store.json")).unwrap()).unwrap();
    let kdf = &meta["kdf"];
    assert_eq!(kdf["algorithm"], "argon2id");
    let salt = hex::decode(kdf["salt"].as_str().unwrap()).unwrap();
    let params = argon2::Params::new(
        kdf["memory_kib"].as_u64().unwrap() as u32,
        kdf["iterations"].as_u64().unwrap() as u32,
        kdf["parallelism"].as_u64().unwrap() as u32,
        Some(32),
    )
    .unwrap();
    let mut key = [0u8; 32];
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(dm_tests::PASSPHRASE.as_bytes(), &salt, &mut key)
        .unwrap();
    let db = rusqlite::Connection::open(home.join("store.db")).unwrap();
    db.execute_batch(&format!("PRAGMA key = \"x'{}'\";", hex::encode(key)))
        .unwrap();
    db
}

/// The account secret and every MLS signature private key in a client's store.
fn store_secrets(home: &std::path::Path) -> Vec<Vec<u8>> {
    let db = open_store(home);
    let mut secrets = vec![
        db.query_row("SELECT account_secret FROM account", [], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .unwrap(),
    ];
    let mut stmt = db
        .prepare("SELECT signature_key FROM openmls_signature_keys")
        .unwrap();
    for json in stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap() {
        let value: Value = serde_json::from_slice(&json.unwrap()).unwrap();
        let private = find_bytes(&value, "private").expect("a private key in the key pair");
        assert_eq!(private.len(), 32, "an Ed25519 private key");
        secrets.push(private);
    }
    secrets
}

/// The byte array (a JSON array of numbers, possibly nested in an object) under `field`.
fn find_bytes(value: &Value, field: &str) -> Option<Vec<u8>> {
    match value {
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k == field {
                as_bytes(v)
            } else {
                find_bytes(v, field)
            }
        }),
        _ => None,
    }
}

fn as_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Array(items) => items.iter().map(|i| i.as_u64().map(|b| b as u8)).collect(),
        Value::Object(map) => map.values().find_map(as_bytes),
        _ => None,
    }
}

/// A wrong passphrase is a clear error and changes nothing; the right one still works.
#[test]
fn wrong_passphrase_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"));
    let alice = User::new(tmp.path(), "alice");
    alice.init(&relay.url());
    let snapshot = |u: &User| {
        let mut files: Vec<_> = files_under(&u.home)
            .into_iter()
            .map(|f| (f.clone(), std::fs::read(&f).unwrap()))
            .collect();
        files.sort();
        files
    };
    let before = snapshot(&alice);
    let out = alice.run_with_passphrase(&["whoami"], "not the passphrase");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("wrong passphrase"), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(snapshot(&alice), before, "the store changed");
    let me = alice.ok(&["whoami"]);
    assert!(me.contains("@alice"), "{me}");

    // Other user errors say what to do.
    let out = alice.run(&["send", "nobody_here", "hi"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("@nobody_here"), "{stderr}");
    let carol = User::new(tmp.path(), "carol");
    let out = carol.run(&["init", "--server", &relay.url(), "--handle", "alice"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("taken"));
    let out = carol.run(&["inbox"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dm init"));
}

/// Two commits for one epoch: the relay accepts the first, answers 409 to the second; the
/// losing client clears its pending commit, processes the winner, redoes its own, and its
/// next message still arrives.
#[test]
fn losing_a_commit_race_recovers_and_delivers() {
    let (_tmp, mut relay, alice, bob) = two_users();
    alice.ok(&["send", "bob", "hello"]);
    assert_eq!(texts_from(&bob.messages(), "alice"), ["hello"]);

    // Bob stages a commit while the relay is down: it stays in his outbox.
    relay.kill();
    let out = bob.run(&["rotate-keys", "alice"]);
    assert!(
        !out.status.success(),
        "rotate-keys cannot reach a stopped relay"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reach"), "{stderr}");
    relay.start_again();

    // Alice's commit for the same epoch wins.
    alice.ok(&["rotate-keys", "bob"]);
    // Bob's queued commit now loses (409); he recovers and sends.
    bob.ok(&["send", "alice", "after the race"]);
    assert_eq!(texts_from(&alice.messages(), "bob"), ["after the race"]);
    alice.ok(&["send", "bob", "and back"]);
    assert_eq!(texts_from(&bob.messages(), "alice"), ["and back"]);
    assert_eq!(
        relay.log_lines_with(&["route=/v1/messages", "status=409"]),
        1,
        "the relay answered the losing commit, and only it, with 409"
    );
}

/// A hostile or broken relay delivers a truncated copy, random garbage and an exact
/// duplicate of a real envelope: bob gets one error event per bad envelope, the duplicate is
/// recognised and ignored, nothing is lost, and alice's next message still decrypts.
#[test]
fn garbage_and_duplicate_envelopes_do_not_break_the_conversation() {
    let (_tmp, mut relay, alice, bob) = two_users();
    alice.ok(&["send", "bob", "one"]);

    // Play the hostile relay: write straight into bob's mailbox while the relay is down.
    relay.kill();
    // Fresh timestamps: the relay's retention sweep deletes old envelopes.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let garbage: Vec<u8> = (0..300).map(|_| rand::random::<u8>()).collect();
    if relay.on_postgres() {
        let bob_device =
            relay.postgres_bytes("SELECT device_id FROM devices WHERE handle = 'bob'", vec![]);
        let last = relay.postgres_bytes(
            "SELECT payload FROM mailbox WHERE device_id = $1 ORDER BY seq DESC LIMIT 1",
            bob_device.clone(),
        );
        let statements = [last[..last.len() / 2].to_vec(), garbage, last.clone()]
            .into_iter()
            .map(|payload| {
                (
                    format!(
                        "WITH s AS (UPDATE devices SET mailbox_seq = mailbox_seq + 1, \
                           mailbox_count = mailbox_count + 1 WHERE device_id = $1 \
                           RETURNING mailbox_seq) \
                         INSERT INTO mailbox (device_id, seq, payload, received_at) \
                         SELECT $1, mailbox_seq, $2, {now_ms} FROM s"
                    ),
                    vec![bob_device.clone(), payload],
                )
            })
            .collect();
        relay.postgres_execute(statements);
    } else {
        let db = rusqlite::Connection::open(relay.dir.join("relay.db")).unwrap();
        let bob_device: Vec<u8> = db
            .query_row(
                "SELECT device_id FROM devices WHERE handle = 'bob'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let last: Vec<u8> = db
            .query_row(
                "SELECT payload FROM mailbox WHERE device_id = ?1 ORDER BY seq DESC LIMIT 1",
                [&bob_device],
                |r| r.get(0),
            )
            .unwrap();
        for payload in [last[..last.len() / 2].to_vec(), garbage, last.clone()] {
            let seq: i64 = db
                .query_row(
                    "UPDATE devices SET mailbox_seq = mailbox_seq + 1, \
                       mailbox_count = mailbox_count + 1 WHERE device_id = ?1 \
                     RETURNING mailbox_seq",
                    [&bob_device],
                    |r| r.get(0),
                )
                .unwrap();
            db.execute(
                "INSERT INTO mailbox (device_id, seq, payload, received_at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![bob_device, seq, payload, now_ms],
            )
            .unwrap();
        }
    }
    relay.start_again();

    let events = bob.inbox();
    let messages: Vec<_> = events.iter().filter(|e| e["type"] == "message").collect();
    let errors: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "undecryptable")
        .collect();
    assert_eq!(
        messages
            .iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["one"],
        "{events:?}"
    );
    assert_eq!(errors.len(), 2, "one error per bad envelope: {events:?}");
    for e in &errors {
        assert!(e["reason"].as_str().is_some_and(|r| !r.is_empty()), "{e}");
    }

    alice.ok(&["send", "bob", "two"]);
    assert_eq!(texts_from(&bob.messages(), "alice"), ["two"]);
    bob.ok(&["send", "alice", "still here"]);
    assert_eq!(texts_from(&alice.messages(), "bob"), ["still here"]);
}

/// `dm chat`: lines typed are sent, and the peer's messages appear while the chat runs.
#[test]
fn chat_sends_typed_lines_and_shows_incoming_messages() {
    let (_tmp, _relay, alice, bob) = two_users();

    let mut chat = alice.chat("@bob");
    chat.say("typed in the chat");

    // Bob receives the typed line (the chat sends it while it keeps running).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut got = Vec::new();
    while got.is_empty() && std::time::Instant::now() < deadline {
        got = texts_from(&bob.messages(), "alice");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(got, ["typed in the chat"]);

    // Bob answers; the running chat shows it without any command from alice.
    bob.ok(&["send", "alice", "answer while chatting"]);
    let seen = chat.wait_for(
        "@bob: answer while chatting",
        std::time::Duration::from_secs(20),
    );
    let status = chat.quit();
    assert!(seen, "the chat showed bob's answer");
    assert!(status.success());
    // The chat consumed the message: it is stored, not shown again by `dm inbox`.
    assert!(alice.messages().is_empty());
}

/// The client is killed (SIGKILL) while it fetches, decrypts, stores and acknowledges:
/// every message is still shown (at least once) and stored exactly once. The kill delay is
/// calibrated on an empty inbox and stepped forward, and the test insists on several kills
/// that interrupted a run after it had made progress (its cursor moved).
#[test]
fn killing_the_client_mid_sync_loses_and_duplicates_nothing() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let (_tmp, _relay, alice, bob) = two_users();
    alice.ok(&["send", "bob", "m0"]);
    let mut shown: Vec<String> = texts_from(&bob.messages(), "alice");
    let started = Instant::now();
    bob.ok(&["inbox"]);
    let empty_run = started.elapsed();
    let cursor = || -> i64 {
        open_store(&bob.home)
            .query_row("SELECT mailbox_cursor FROM relay", [], |r| r.get(0))
            .unwrap()
    };

    let mut sent = 1;
    let mut partial_kills = 0;
    for _batch in 0..6 {
        let lines: Vec<String> = (sent..sent + 40).map(|i| format!("m{i}")).collect();
        sent += lines.len();
        chat_lines(&alice, "bob", &lines);
        let mut delay = empty_run.mul_f64(0.8);
        loop {
            let before = cursor();
            let mut child = Command::new(dm_tests::binary("dm"))
                .arg("--home")
                .arg(&bob.home)
                .args(["inbox", "--json"])
                .env("DM_PASSPHRASE", dm_tests::PASSPHRASE)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(delay);
            let killed = child.try_wait().unwrap().is_none();
            if killed {
                child.kill().unwrap();
            }
            let out = child.wait_with_output().unwrap();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                // A line cut by the kill is not JSON; its event is shown again next time.
                if let Ok(event) = serde_json::from_str::<Value>(line)
                    && event["type"] == "message"
                {
                    shown.push(event["text"].as_str().unwrap().to_owned());
                }
            }
            if killed && cursor() > before {
                partial_kills += 1;
            }
            if !killed {
                break;
            }
            delay += Duration::from_millis(15);
        }
        if partial_kills >= 3 {
            break;
        }
    }
    shown.extend(texts_from(&bob.messages(), "alice"));
    assert!(
        partial_kills >= 3,
        "only {partial_kills} kills interrupted a run that had made progress"
    );

    let mut distinct = shown.clone();
    distinct.sort();
    distinct.dedup();
    let mut expected: Vec<String> = (0..sent).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(distinct, expected, "every message shown");
    let db = open_store(&bob.home);
    let (rows, ids): (i64, i64) = db
        .query_row(
            "SELECT count(*), count(DISTINCT message_id) FROM messages \
             WHERE sender_handle = 'alice'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (rows, ids),
        (sent as i64, sent as i64),
        "each message stored once"
    );
    eprintln!(
        "{partial_kills} kills mid-progress; {sent} messages shown {} times in all",
        shown.len()
    );
}

/// Sends each line as a message through one `dm chat` process (fast: one unlock).
fn chat_lines(user: &User, peer: &str, lines: &[String]) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut chat = Command::new(dm_tests::binary("dm"))
        .arg("--home")
        .arg(&user.home)
        .args(["chat", peer])
        .env("DM_PASSPHRASE", dm_tests::PASSPHRASE)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    writeln!(stdin, "/quit").unwrap();
    drop(stdin);
    assert!(chat.wait().unwrap().success());
}
