//! End-to-end: group conversations (membership, policy, catching up after many commits,
//! rejoining after losing state) with the real `dm-server` and `dm` binaries.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use dm_tests::{Relay, User, sorted, texts, users};
use serde_json::Value;

fn handles(conversation: &Value) -> Vec<String> {
    sorted(
        conversation["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["handle"].as_str().unwrap().to_owned())
            .collect(),
    )
}

fn group_of<'a>(convs: &'a [Value], id: &str) -> &'a Value {
    convs
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no conversation {id} in {convs:?}"))
}

/// The creator adds and removes members, any member may leave, a non-administrator cannot
/// add or remove anyone; every member is shown every change; a removed member gets nothing
/// more.
#[test]
fn group_membership_changes_follow_the_policy_and_are_shown_to_everyone() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"));
    let url = relay.url();
    let [alice, bob, carol, dave] =
        <[User; 4]>::try_from(users(tmp.path(), &url, &["alice", "bob", "carol", "dave"]))
            .ok()
            .unwrap();

    let out = alice.ok(&["group", "create", "climbing", "@bob", "carol"]);
    let group = out.lines().last().unwrap().trim().to_owned();
    assert_eq!(group.len(), 32, "{out}");
    for u in [&bob, &carol] {
        let started: Vec<_> = u
            .inbox()
            .into_iter()
            .filter(|e| e["type"] == "conversation_started")
            .collect();
        assert_eq!(started.len(), 1, "{started:?}");
        assert_eq!(started[0]["name"], "climbing");
        let with: Vec<String> = started[0]["with"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_owned())
            .collect();
        let expected = if u.handle == "bob" {
            ["alice", "carol"]
        } else {
            ["alice", "bob"]
        };
        assert_eq!(sorted(with), expected);
    }

    // bob is not the administrator: he can neither add nor remove.
    let err = bob.fails(&["group", "add", "climbing", "dave"]);
    assert!(err.contains("administrator"), "{err}");
    let err = bob.fails(&["group", "remove", &group, "carol"]);
    assert!(err.contains("administrator"), "{err}");

    alice.ok(&["group", "add", &group, "dave"]);
    for u in [&bob, &carol] {
        let events = u.inbox();
        assert!(
            events.iter().any(
                |e| e["type"] == "members_changed" && e["added"] == serde_json::json!(["dave"])
            ),
            "{}: {events:?}",
            u.handle
        );
    }
    assert!(dave.inbox().iter().any(|e| e["name"] == "climbing"));
    dave.ok(&["send", "climbing", "thanks for adding me"]);
    for u in [&alice, &bob, &carol] {
        assert_eq!(
            texts(&u.messages()),
            ["thanks for adding me"],
            "{}",
            u.handle
        );
    }

    alice.ok(&["group", "remove", "climbing", "bob"]);
    for u in [&carol, &dave] {
        let events = u.inbox();
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "members_changed"
                    && e["removed"] == serde_json::json!(["bob"])),
            "{}: {events:?}",
            u.handle
        );
    }
    let events = bob.inbox();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "members_changed" && e["removed"] == serde_json::json!(["bob"])),
        "bob is told he was removed: {events:?}"
    );
    let err = bob.fails(&["send", &group, "am I still here?"]);
    assert!(err.contains("no longer a member"), "{err}");

    // carol leaves; the next member to sync carries it out; everyone is told.
    carol.ok(&["group", "leave", "climbing"]);
    let events = dave.inbox();
    assert!(
        events.iter().any(|e| e["type"] == "members_changed" && e["removed"] == serde_json::json!(["carol"])),
        "{events:?}"
    );
    alice.ok(&["send", "climbing", "after carol left"]);
    assert_eq!(texts(&dave.messages()), ["after carol left"]);
    let carol_events = carol.inbox();
    assert!(texts(&carol_events).is_empty(), "{carol_events:?}");
    assert!(
        carol_events.iter().any(|e| e["type"] == "members_changed" && e["removed"] == serde_json::json!(["carol"])),
        "{carol_events:?}"
    );
    assert!(bob.messages().is_empty());

    let convs = alice.conversations();
    assert_eq!(handles(group_of(&convs, &group)), ["alice", "dave"]);
    let convs = dave.conversations();
    assert_eq!(handles(group_of(&convs, &group)), ["alice", "dave"]);
}

/// A member is offline while its group goes through many commits (members added and
/// removed, keys rotated, messages in between); it then catches up in one sync and
/// receives every message exactly once, and its group code matches the others'.
#[test]
fn an_offline_member_catches_up_after_many_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"));
    let url = relay.url();
    let [alice, bob, carol, dave] =
        <[User; 4]>::try_from(users(tmp.path(), &url, &["alice", "bob", "carol", "dave"]))
            .ok()
            .unwrap();
    let out = alice.ok(&["group", "create", "team", "bob", "carol"]);
    let group = out.lines().last().unwrap().trim().to_owned();
    carol.inbox(); // carol joins, then goes offline.
    bob.inbox();

    let mut expected = Vec::new();
    for round in 0..6 {
        alice.ok(&["group", "add", &group, "dave"]);
        let text = format!("round {round}, dave in");
        bob.ok(&["send", &group, &text]);
        expected.push(text);
        alice.ok(&["group", "remove", &group, "dave"]);
        let text = format!("round {round}, dave out");
        alice.ok(&["send", &group, &text]);
        expected.push(text);
    }
    let epoch_alice = group_of(&alice.conversations(), &group)["epoch"]
        .as_u64()
        .unwrap();
    assert!(
        epoch_alice >= 13,
        "many commits happened: epoch {epoch_alice}"
    );

    // carol comes back.
    let events = carol.inbox();
    let got = texts(&events);
    assert_eq!(sorted(got.clone()), sorted(expected.clone()), "{events:?}");
    assert!(
        !events.iter().any(|e| e["type"] == "undecryptable"),
        "{events:?}"
    );
    assert!(carol.messages().is_empty());
    assert_eq!(
        group_of(&carol.conversations(), &group)["epoch"]
            .as_u64()
            .unwrap(),
        group_of(&alice.conversations(), &group)["epoch"]
            .as_u64()
            .unwrap()
    );
    let code = |u: &User| {
        u.ok(&["verify", "--group", &group])
            .lines()
            .find_map(|l| l.strip_prefix("group code: ").map(str::to_owned))
            .unwrap()
    };
    assert_eq!(code(&carol), code(&alice));
    // alice and bob read along meanwhile.
    assert_eq!(texts(&alice.messages()).len(), 6);
    assert_eq!(texts(&bob.messages()).len(), 6);
    carol.ok(&["send", "team", "I'm back"]);
    assert_eq!(texts(&alice.messages()), ["I'm back"]);
    assert_eq!(texts(&bob.messages()), ["I'm back"]);
    drop(dave);
}

/// A member's device loses its state (its home directory is gone). Its owner restores the
/// account on a fresh device with the recovery code and revokes the lost device; the other
/// members re-add the account's new device to the group (the rejoin path), and it receives
/// what is sent from then on. Nothing is lost silently: the new device is told it joined.
#[test]
fn a_device_that_lost_its_state_rejoins_through_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"));
    let url = relay.url();
    let alice = User::new(tmp.path(), "alice");
    let bob = User::new(tmp.path(), "bob");
    alice.init(&url);
    let bob_code = bob.init_with_recovery_code(&url);
    let out = alice.ok(&["group", "create", "family", "bob"]);
    let group = out.lines().last().unwrap().trim().to_owned();
    bob.inbox();
    alice.ok(&["send", &group, "before the loss"]);
    assert_eq!(texts(&bob.messages()), ["before the loss"]);
    let lost = bob.device_id();

    std::fs::remove_dir_all(&bob.home).unwrap();
    let fresh = User::new(tmp.path(), "bob");
    assert!(fresh.fails(&["inbox"]).contains("no account"));
    let out = fresh.run_env(
        &["init", "--server", &url, "--handle", "bob", "--recover"],
        &[("DM_RECOVERY_CODE", &bob_code)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fresh.ok(&["device", "revoke", &lost]);

    // alice's next sync re-adds bob's new device and drops the lost one.
    let events = alice.inbox();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "devices_changed" && e["handle"] == "bob"),
        "{events:?}"
    );
    let rejoined = fresh.inbox();
    assert!(
        rejoined
            .iter()
            .any(|e| e["type"] == "conversation_started" && e["name"] == "family"),
        "{rejoined:?}"
    );
    alice.ok(&["send", "family", "after the rejoin"]);
    assert_eq!(texts(&fresh.messages()), ["after the rejoin"]);
    fresh.ok(&["send", "family", "bob is back"]);
    assert_eq!(texts(&alice.messages()), ["bob is back"]);
    let convs = alice.conversations();
    let devices = group_of(&convs, &group)["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["handle"] == "bob")
        .unwrap()["devices"]
        .clone();
    assert_eq!(devices, serde_json::json!([fresh.device_id()]));
}

/// A device misses more than it can catch up: the relay's mailbox quota refuses envelopes
/// for it while it is offline. When it comes back it reports how many were refused, rejoins
/// its conversations under a new device identity (the other members re-add it when they
/// sync), and receives what is sent from then on.
#[test]
fn a_device_that_missed_too_much_reports_it_and_rejoins() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_args(
        &tmp.path().join("relay"),
        dm_tests::Engine::from_env(),
        &["--mailbox-quota", "6"],
    );
    let url = relay.url();
    let [alice, bob, carol] =
        <[User; 3]>::try_from(users(tmp.path(), &url, &["alice", "bob", "carol"]))
            .ok()
            .unwrap();
    let out = alice.ok(&["group", "create", "hike", "bob", "carol"]);
    let group = out.lines().last().unwrap().trim().to_owned();
    bob.inbox();
    carol.inbox();
    let old_device = carol.device_id();

    // carol is offline; bob reads along, so only carol's mailbox fills up.
    for batch in 0..2 {
        for i in 0..5 {
            alice.ok(&["send", "hike", &format!("message {batch}.{i}")]);
        }
        assert_eq!(texts(&bob.messages()).len(), 5);
    }
    let events = carol.inbox();
    assert_eq!(texts(&events).len(), 6, "the quota kept six: {events:?}");
    let dropped: u64 = events
        .iter()
        .filter(|e| e["type"] == "messages_dropped")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert_eq!(dropped, 4, "{events:?}");
    assert!(
        events.iter().any(|e| e["type"] == "rejoining"),
        "{events:?}"
    );
    let new_device = carol.device_id();
    assert_ne!(new_device, old_device);

    // The members re-add carol's new identity when they sync.
    let events = alice.inbox();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "devices_changed" && e["handle"] == "carol"),
        "{events:?}"
    );
    let events = carol.inbox();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "rejoined" && e["conversation"] == group.as_str()),
        "{events:?}"
    );
    alice.ok(&["send", "hike", "welcome back"]);
    assert_eq!(texts(&carol.messages()), ["welcome back"]);
    carol.ok(&["send", "hike", "thanks"]);
    assert_eq!(texts(&alice.messages()), ["thanks"]);
    assert_eq!(texts(&bob.messages()), ["welcome back", "thanks"]);
}
