//! Several relay processes on one PostgreSQL database behave as one relay: a message sent
//! through instance A is pushed to a device connected to instance B, and two commits for
//! the same epoch racing through A and B are ordered: exactly one wins.

use std::process::Command;
use std::time::{Duration, Instant};

use dm_tests::{Engine, Relay, User, texts_from};

#[test]
fn a_message_through_one_instance_is_pushed_by_the_other() {
    if !dm_tests::postgres_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = Relay::start_on(&tmp.path().join("relay-a"), Engine::Postgres);
    let b = Relay::start_beside(&tmp.path().join("relay-b"), &a);
    let alice = User::new(tmp.path(), "alice");
    let bob = User::new(tmp.path(), "bob");
    alice.init(&a.url());
    bob.init(&b.url());
    // The conversation exists (bob joined it through B) before the chat starts.
    alice.ok(&["send", "bob", "first"]);
    assert_eq!(texts_from(&bob.messages(), "alice"), ["first"]);

    // Bob chats through B (push socket); alice sends through A.
    let chat = bob.chat("@alice");
    assert!(chat.wait_for("Chatting with", Duration::from_secs(30)));
    // The socket is open at B when B logs the upgrade.
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.log_lines_with(&["route=/v1/ws", "status=101"]) == 0 {
        assert!(
            Instant::now() < deadline,
            "bob's chat never opened its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let fetches_before = b.log_lines_with(&["route=/v1/mailbox", "method=GET"]);

    let mut latencies = Vec::new();
    for i in 0..3 {
        let text = format!("through A number {i}");
        alice.ok(&["send", "bob", &text]);
        // Measured from the relay's acknowledgement (alice's `dm send` returned); the line
        // may well be on bob's screen already.
        let sent = Instant::now();
        assert!(
            chat.wait_for(&text, Duration::from_secs(10)),
            "bob's chat (on B) did not show {text:?}"
        );
        latencies.push(sent.elapsed());
    }
    eprintln!("delivery from A's acknowledgement to bob's screen via B: {latencies:?}");
    for latency in &latencies {
        assert!(
            *latency <= Duration::from_secs(1),
            "pushed within one second: {latencies:?}"
        );
    }
    assert_eq!(
        b.log_lines_with(&["route=/v1/mailbox", "method=GET"]),
        fetches_before,
        "bob's chat did not fetch: the messages were pushed"
    );
    assert!(chat.quit().success());
    // The count above sees fetches: `dm inbox` through B is one.
    bob.messages();
    assert!(b.log_lines_with(&["route=/v1/mailbox", "method=GET"]) > fetches_before);
}

#[test]
fn commits_racing_through_two_instances_have_one_winner() {
    if !dm_tests::postgres_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = Relay::start_on(&tmp.path().join("relay-a"), Engine::Postgres);
    let mut b = Relay::start_beside(&tmp.path().join("relay-b"), &a);
    let alice = User::new(tmp.path(), "alice");
    let bob = User::new(tmp.path(), "bob");
    alice.init(&a.url());
    bob.init(&b.url());
    alice.ok(&["send", "bob", "hello"]);
    assert_eq!(texts_from(&bob.messages(), "alice"), ["hello"]);

    // Both stage a commit for the same epoch: bob's waits in his outbox (B is down),
    // alice's goes through A and wins.
    b.kill();
    assert!(!bob.run(&["rotate-keys", "alice"]).status.success());
    b.start_again();
    alice.ok(&["rotate-keys", "bob"]);
    // Bob's commit reaches B: B refuses it (A's commit won the epoch); bob recovers.
    bob.ok(&["send", "alice", "after the race"]);
    assert_eq!(texts_from(&alice.messages(), "bob"), ["after the race"]);
    alice.ok(&["send", "bob", "and back"]);
    assert_eq!(texts_from(&bob.messages(), "alice"), ["and back"]);
    assert_eq!(
        b.log_lines_with(&["route=/v1/messages", "status=409"]),
        1,
        "B answered bob's losing commit with 409"
    );
    assert_eq!(a.log_lines_with(&["route=/v1/messages", "status=409"]), 0);

    // Truly concurrent: both rotate at once, through different instances, several times;
    // whatever the interleaving, both sides keep talking.
    for round in 0..3 {
        let (alice_home, bob_home) = (alice.home.clone(), bob.home.clone());
        let rotate = |home: std::path::PathBuf, peer: &'static str| {
            std::thread::spawn(move || {
                Command::new(dm_tests::binary("dm"))
                    .arg("--home")
                    .arg(home)
                    .args(["rotate-keys", peer])
                    .env("DM_PASSPHRASE", dm_tests::PASSPHRASE)
                    .output()
                    .unwrap()
            })
        };
        let (x, y) = (rotate(alice_home, "bob"), rotate(bob_home, "alice"));
        let (x, y) = (x.join().unwrap(), y.join().unwrap());
        assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
        assert!(y.status.success(), "{}", String::from_utf8_lossy(&y.stderr));
        let text = format!("round {round}");
        alice.ok(&["send", "bob", &text]);
        assert_eq!(
            texts_from(&bob.messages(), "alice"),
            std::slice::from_ref(&text)
        );
        bob.ok(&["send", "alice", &text]);
        assert_eq!(texts_from(&alice.messages(), "bob"), [text]);
    }
}
