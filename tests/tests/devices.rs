//! End-to-end: devices (linking, revocation, recovery) and verification, with the real
//! `dm-server` and `dm` binaries on 127.0.0.1.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use dm_tests::{Relay, User, sorted, texts, users};
use serde_json::Value;

/// Devices of `handle` in a conversation listed by `dm conversations --json`.
fn devices_of(conversation: &Value, handle: &str) -> Vec<String> {
    conversation["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["handle"] == handle)
        .map(|m| {
            m["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Three users, alice with two devices: a device linked after the conversation started
/// receives everything sent after linking; DMs and a group conversation reach every
/// device exactly once, the sender's other device included; `dm device list` shows both.
#[test]
fn linked_device_gets_everything_after_linking_and_every_device_gets_each_message_once() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"));
    let url = relay.url();
    let [alice, bob, carol] =
        <[User; 3]>::try_from(users(tmp.path(), &url, &["alice", "bob", "carol"]))
            .ok()
            .unwrap();
    alice.ok(&["send", "@bob", "before linking"]);
    assert_eq!(texts(&bob.messages()), ["before linking"]);

    // A mistyped code is refused without changing anything.
    let err = alice.fails(&[
        "device",
        "approve",
        "0000-0000-0000-0000-0000-0000-0000-0",
        "--yes",
    ]);
    assert!(err.contains("link code"), "{err}");
    assert_eq!(alice.ok(&["device", "list"]).lines().count(), 1);

    // alice's second device, with no primary needed afterwards.
    let alice2 = User {
        handle: "alice".into(),
        home: tmp.path().join("alice2"),
    };
    alice2.link_to(&alice, &url);
    let list = alice2.ok(&["device", "list"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.contains("(this device)"), "{list}");
    assert!(list.contains(&alice.device_id()), "{list}");
    // The approving device added the new one to the DM; bob sees it as a new device.
    let bob_events = bob.inbox();
    assert!(
        bob_events
            .iter()
            .any(|e| e["type"] == "devices_changed" && e["handle"] == "alice"),
        "{bob_events:?}"
    );

    bob.ok(&["send", "@alice", "after linking"]);
    assert_eq!(texts(&alice.messages()), ["after linking"]);
    assert_eq!(texts(&alice2.messages()), ["after linking"]);
    // The new device sends; bob gets it once, and alice's first device shows it too.
    alice2.ok(&["send", "@bob", "from the new device"]);
    assert_eq!(texts(&bob.messages()), ["from the new device"]);
    let mine = alice.messages();
    assert_eq!(texts(&mine), ["from the new device"]);
    assert_eq!(mine[0]["from"], "alice");
    assert_eq!(mine[0]["from_device"], alice2.device_id());

    // A group with all three: every device of every member gets each message once.
    let out = alice.ok(&["group", "create", "trip", "bob", "carol"]);
    let group = out.lines().last().unwrap().trim().to_owned();
    for u in [&bob, &carol, &alice2] {
        let events = u.inbox();
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "conversation_started" && e["name"] == "trip"),
            "{}: {events:?}",
            u.handle
        );
    }
    bob.ok(&["send", &group, "hello group"]);
    carol.ok(&["send", "trip", "carol here"]);
    alice2.ok(&["send", "trip", "alice2 here"]);
    assert_eq!(
        sorted(texts(&alice.messages())),
        ["alice2 here", "carol here", "hello group"]
    );
    assert_eq!(
        sorted(texts(&alice2.messages())),
        ["carol here", "hello group"]
    );
    assert_eq!(
        sorted(texts(&bob.messages())),
        ["alice2 here", "carol here"]
    );
    assert_eq!(
        sorted(texts(&carol.messages())),
        ["alice2 here", "hello group"]
    );
    for u in [&alice, &alice2, &bob, &carol] {
        assert!(u.messages().is_empty(), "{} got a message twice", u.handle);
    }
    // Everyone lists the same members, alice with both devices.
    for u in [&alice, &alice2, &bob, &carol] {
        let convs = u.conversations();
        let g = convs.iter().find(|c| c["id"] == group.as_str()).unwrap();
        assert_eq!(g["kind"], "group");
        assert_eq!(g["admin"], "alice");
        assert_eq!(devices_of(g, "alice").len(), 2, "{}: {g}", u.handle);
        assert_eq!(devices_of(g, "bob").len(), 1);
        assert_eq!(devices_of(g, "carol").len(), 1);
    }
    // The group code matches on every device.
    let code = |u: &User| {
        u.ok(&["verify", "--group", &group])
            .lines()
            .find_map(|l| l.strip_prefix("group code: ").map(str::to_owned))
            .unwrap()
    };
    let expected = code(&alice);
    for u in [&alice2, &bob, &carol] {
        assert_eq!(code(u), expected, "{}", u.handle);
    }
}

/// Every device of alice is lost: she recovers the account on a new device from the
/// recovery code, revokes the lost device from there, and the revoked device can no
/// longer read anything new, while the recovered one takes part in the old conversation.
#[test]
fn recovered_account_revokes_a_lost_device_which_then_reads_nothing_new() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"));
    let url = relay.url();
    let alice = User::new(tmp.path(), "alice");
    let bob = User::new(tmp.path(), "bob");
    let code = alice.init_with_recovery_code(&url);
    bob.init(&url);
    alice.ok(&["send", "@bob", "hi from the old phone"]);
    assert_eq!(texts(&bob.messages()), ["hi from the old phone"]);
    let lost = alice.device_id();

    let recovered = User {
        handle: "alice".into(),
        home: tmp.path().join("alice-new"),
    };
    let out = recovered.run_env(
        &["init", "--server", &url, "--handle", "alice", "--recover"],
        &[("DM_RECOVERY_CODE", &code)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wrong code is refused (checksum), without creating anything.
    let wrong = User::new(tmp.path(), "nobody");
    let bad = code.replace(&code[..4], "ZZZZ");
    let out = wrong.run_env(
        &["init", "--server", &url, "--handle", "alice", "--recover"],
        &[("DM_RECOVERY_CODE", &bad)],
    );
    assert!(!out.status.success());
    assert!(!wrong.home.join("store.db").exists());

    let list = recovered.ok(&["device", "list"]);
    assert!(list.contains(&lost), "{list}");
    let epoch_before = bob.conversations()[0]["epoch"].as_u64().unwrap();
    let code = |u: &User, id: &str| {
        u.ok(&["verify", "--group", id])
            .lines()
            .find_map(|l| l.strip_prefix("group code: ").map(str::to_owned))
            .unwrap()
    };
    let conversation = bob.conversations()[0]["id"].as_str().unwrap().to_owned();
    let code_before = code(&bob, &conversation);
    let own = recovered.device_id();
    let err = recovered.fails(&["device", "revoke", &own]);
    assert!(err.contains("device you are using"), "{err}");
    let err = recovered.fails(&["device", "revoke", &"ab".repeat(16)]);
    assert!(err.contains("not a device of this account"), "{err}");
    recovered.ok(&["device", "revoke", &lost]);
    let list = recovered.ok(&["device", "list"]);
    assert!(!list.contains(&lost), "{list}");

    // bob's client notices: the lost device leaves the conversation, the new one joins.
    let events = bob.inbox();
    assert!(
        events.iter().any(|e| e["type"] == "devices_changed"
            && e["removed"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d == lost.as_str())),
        "{events:?}"
    );
    let convs = bob.conversations();
    assert_eq!(devices_of(&convs[0], "alice"), [recovered.device_id()]);
    // The revocation was a commit: the group's keys rotated.
    assert!(convs[0]["epoch"].as_u64().unwrap() > epoch_before);
    assert_ne!(code(&bob, &conversation), code_before);
    assert!(
        recovered
            .inbox()
            .iter()
            .any(|e| e["type"] == "conversation_started")
    );

    bob.ok(&["send", "@alice", "only for the recovered device"]);
    assert_eq!(
        texts(&recovered.messages()),
        ["only for the recovered device"]
    );
    recovered.ok(&["send", "@bob", "back again"]);
    assert_eq!(texts(&bob.messages()), ["back again"]);
    // The revoked device can no longer log in to fetch anything, and holds nothing new.
    let err = alice.fails(&["inbox", "--json"]);
    assert!(err.contains("error"), "{err}");
    let out = alice.run(&["conversations", "--json"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("only for the recovered device"));
}

/// The safety number matches on both sides; when bob's account is re-created under the
/// same handle, alice is shown the change, her safety number changes, and sending to bob,
/// whom she had verified, is refused until she confirms the new key.
#[test]
fn safety_numbers_match_and_a_recreated_verified_account_blocks_sending() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"));
    let url = relay.url();
    let alice = User::new(tmp.path(), "alice");
    let bob = User::new(tmp.path(), "bob");
    alice.init(&url);
    bob.init(&url);
    alice.ok(&["send", "@bob", "hi"]);
    bob.messages();
    let number = |u: &User, peer: &str| {
        let out = u.ok(&["verify", peer]);
        let mut lines = out.lines();
        lines.find(|l| l.starts_with("Safety number"));
        lines.next().unwrap().trim().to_owned()
    };
    let at_alice = number(&alice, "bob");
    assert_eq!(at_alice.split(' ').count(), 12, "{at_alice}");
    assert_eq!(number(&bob, "alice"), at_alice);
    let out = alice.ok(&["verify", "bob", "--confirm"]);
    assert!(out.contains("status: verified"), "{out}");

    // bob's account is deleted and someone registers "bob" again, with a new key.
    bob.ok(&["delete-account", "--yes"]);
    let bob2 = User::new(&tmp.path().join("second"), "bob");
    bob2.init(&url);
    bob2.ok(&["send", "@alice", "it's me, new bob"]);
    let events = alice.inbox();
    assert!(
        events.iter().any(|e| e["type"] == "identity_key_changed"
            && e["handle"] == "bob"
            && e["was_verified"] == true),
        "{events:?}"
    );
    let text = alice.ok(&["inbox"]);
    assert!(!text.contains("CHANGED"), "shown once: {text}");
    assert_ne!(number(&alice, "bob"), at_alice);
    assert_eq!(number(&alice, "bob"), number(&bob2, "alice"));
    let err = alice.fails(&["send", "@bob", "should not go"]);
    assert!(err.contains("changed after you verified"), "{err}");
    assert!(texts(&bob2.messages()).is_empty());
    alice.ok(&["verify", "bob", "--confirm"]);
    alice.ok(&["send", "@bob", "now it goes"]);
    assert_eq!(texts(&bob2.messages()), ["now it goes"]);
}
