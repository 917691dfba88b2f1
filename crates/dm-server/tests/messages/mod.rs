//! Sequencing and delivery: commits, welcomes, conflicts, retries, fan-out, mailboxes.

use dm_server::store::retention;
use dm_wire::DeviceId;
use dm_wire::api::limits::{IDEMPOTENCY_RETENTION_SECS, MAILBOX_RETENTION_SECS};
use dm_wire::api::{MailboxResponse, SendRequest, SendResponse};
use openmls::prelude::{LeafNodeParameters, MlsGroup, OpenMlsProvider as _};

use crate::support::{
    self, Device, Relay, encode, error_epoch, now_secs, send_request, with_epoch,
};

#[tokio::test]
async fn commits_welcomes_conflicts_and_retries() {
    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;
    let carol = Device::join("carol", &relay).await;

    // Epoch 0: alice creates the group by adding bob; the Welcome reaches bob only.
    bob.upload(&relay, vec![bob.key_package(false)], None)
        .await
        .assert_ok();
    let claim = relay.claim(&alice, "bob").await;
    let kp = support::claimed_key_package(&claim.key_packages[0].key_package, &alice.provider);
    let mut alice_group = alice.create_group();
    let (commit, welcome, _) = alice_group
        .add_members(&alice.provider, &alice.signer, &[kp])
        .unwrap();
    alice_group.merge_pending_commit(&alice.provider).unwrap();
    let first = send_request(encode(commit), Some(encode(welcome)));
    let resp = relay.send(&alice, &first).await;
    resp.assert_ok();
    assert_eq!(
        resp.parse::<SendResponse>(),
        SendResponse {
            epoch: 1,
            duplicate: false
        }
    );
    let bob_mail = relay.mailbox(&bob, 0).await;
    assert_eq!(bob_mail.envelopes.len(), 1);
    assert_eq!(
        bob_mail.envelopes[0].payload,
        first.welcome.clone().unwrap()
    );
    assert!(bob_mail.envelopes[0].received_at > 1_600_000_000_000);
    assert!(relay.mailbox(&alice, 0).await.envelopes.is_empty());
    assert!(relay.mailbox(&carol, 0).await.envelopes.is_empty());
    let mut bob_group = bob.join_group(&bob_mail.envelopes[0].payload);

    // A retry is answered like the original and delivers nothing again.
    let resp = relay.send(&alice, &first).await;
    assert_eq!(
        resp.parse::<SendResponse>(),
        SendResponse {
            epoch: 1,
            duplicate: true
        }
    );
    assert_eq!(relay.mailbox(&bob, 0).await.envelopes.len(), 1);
    // The same id for other bytes is refused.
    let mut reused = send_request(alice.message(&mut alice_group, b"x"), None);
    reused.id = first.id;
    relay
        .send(&alice, &reused)
        .await
        .assert_error(409, "id_reused");

    // Two commits for epoch 1: bob's arrives first and wins; alice's is refused.
    let bob_commit = bob_group
        .self_update(&bob.provider, &bob.signer, LeafNodeParameters::default())
        .unwrap()
        .into_commit();
    let alice_commit = alice_group
        .self_update(
            &alice.provider,
            &alice.signer,
            LeafNodeParameters::default(),
        )
        .unwrap()
        .into_commit();
    let resp = relay
        .send(&bob, &send_request(encode(bob_commit), None))
        .await;
    assert_eq!(resp.parse::<SendResponse>().epoch, 2);
    let resp = relay
        .send(&alice, &send_request(encode(alice_commit), None))
        .await;
    resp.assert_error(409, "epoch_conflict");
    // Alice got only the winner; bob got nothing of the loser.
    let alice_mail = relay.mailbox(&alice, 0).await;
    assert_eq!(alice_mail.envelopes.len(), 1);
    assert_eq!(relay.mailbox(&bob, 1).await.envelopes.len(), 0);
    bob_group.merge_pending_commit(&bob.provider).unwrap();
    alice_group
        .clear_pending_commit(alice.provider.storage())
        .unwrap();
    assert_eq!(
        alice.process(&mut alice_group, &alice_mail.envelopes[0].payload),
        None
    );
    assert_eq!(alice_group.epoch().as_u64(), 2);

    // Application messages go to every member but the sender.
    let hello = alice.message(&mut alice_group, b"hello bob");
    let resp = relay.send(&alice, &send_request(hello.clone(), None)).await;
    assert_eq!(
        resp.parse::<SendResponse>(),
        SendResponse {
            epoch: 2,
            duplicate: false
        }
    );
    let bob_mail = relay.mailbox(&bob, 1).await;
    assert_eq!(bob_mail.envelopes.len(), 1);
    assert_eq!(bob_mail.envelopes[0].payload, hello);
    assert_eq!(
        bob.process(&mut bob_group, &hello).as_deref(),
        Some(&b"hello bob"[..])
    );
    assert_eq!(relay.mailbox(&alice, 0).await.envelopes.len(), 1);

    // A welcome only travels with a commit.
    relay
        .send(
            &alice,
            &send_request(hello.clone(), Some(first.welcome.clone().unwrap())),
        )
        .await
        .assert_error(400, "invalid_message");

    // Carol is not a member, even with a group of the same id of her own.
    let carol_group = openmls::prelude::MlsGroup::builder()
        .ciphersuite(support::CS)
        .with_group_id(alice_group.group_id().clone())
        .with_wire_format_policy(openmls::prelude::PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .build(&carol.provider, &carol.signer, carol.credential.clone())
        .unwrap();
    let mut carol_group = carol_group;
    let spoof = carol.message(&mut carol_group, b"hi");
    relay
        .send(&carol, &send_request(spoof, None))
        .await
        .assert_error(403, "not_member");
    // An application message cannot create a group.
    let mut lonely = carol.create_group();
    let msg = carol.message(&mut lonely, b"hi");
    relay
        .send(&carol, &send_request(msg, None))
        .await
        .assert_error(403, "not_member");
}

#[tokio::test]
async fn welcome_for_an_unknown_key_package_is_refused() {
    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    // Bob's key package never went through the relay.
    let bob = Device::new("bob");
    let kp = support::claimed_key_package(&bob.key_package(false), &alice.provider);
    let mut group = alice.create_group();
    let (commit, welcome, _) = group
        .add_members(&alice.provider, &alice.signer, &[kp])
        .unwrap();
    relay
        .send(&alice, &send_request(encode(commit), Some(encode(welcome))))
        .await
        .assert_error(400, "invalid_message");
    // Nothing was created: the group is still unknown, so the commit can be sent alone.
    group
        .clear_pending_commit(alice.provider.storage())
        .unwrap();
    let update = group
        .self_update(
            &alice.provider,
            &alice.signer,
            LeafNodeParameters::default(),
        )
        .unwrap()
        .into_commit();
    let resp = relay
        .send(&alice, &send_request(encode(update), None))
        .await;
    assert_eq!(resp.parse::<SendResponse>().epoch, 1);
}

#[tokio::test]
async fn malformed_messages_are_refused_without_panicking() {
    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    relay
        .send(&alice, &send_request(b"garbage".to_vec(), None))
        .await
        .assert_error(400, "invalid_message");
    // A well-formed MLSMessage of the wrong kind.
    relay
        .send(&alice, &send_request(alice.key_package(false), None))
        .await
        .assert_error(400, "invalid_message");
    // Every truncation of a real commit, and a malformed welcome with a real commit.
    let mut group = alice.create_group();
    let commit = encode(
        group
            .self_update(
                &alice.provider,
                &alice.signer,
                LeafNodeParameters::default(),
            )
            .unwrap()
            .into_commit(),
    );
    for cut in (0..commit.len()).step_by(7) {
        relay
            .send(&alice, &send_request(commit[..cut].to_vec(), None))
            .await
            .assert_error(400, "invalid_message");
    }
    relay
        .send(
            &alice,
            &send_request(commit.clone(), Some(b"junk".to_vec())),
        )
        .await
        .assert_error(400, "invalid_message");
    // Not a JSON body of the right shape.
    relay
        .raw("POST", "/v1/messages", Some(alice.token()), b"{".to_vec())
        .await
        .assert_error(400, "invalid_request");
    relay
        .post(
            "/v1/messages",
            Some(alice.token()),
            &serde_json::json!({"message": "AAAA"}),
        )
        .await
        .assert_error(400, "invalid_request");
    relay
        .post(
            "/v1/messages",
            Some(alice.token()),
            &serde_json::json!({"id": "00", "message": "AAAA"}),
        )
        .await
        .assert_error(400, "invalid_request");
}

#[tokio::test]
async fn mailbox_sequence_fetch_ack_and_restart() {
    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;
    let (mut alice_group, mut bob_group) = support::pair(&relay, &alice, &bob).await;

    for text in ["one", "two", "three"] {
        let msg = alice.message(&mut alice_group, text.as_bytes());
        relay
            .send(&alice, &send_request(msg, None))
            .await
            .assert_ok();
    }
    // The Welcome was seq 1 (acknowledged by `pair`).
    let mail = relay.mailbox(&bob, 0).await;
    let seqs: Vec<u64> = mail.envelopes.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![2, 3, 4]);
    assert!(!mail.more);
    let texts: Vec<Vec<u8>> = mail
        .envelopes
        .iter()
        .map(|e| bob.process(&mut bob_group, &e.payload).unwrap())
        .collect();
    assert_eq!(
        texts,
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );

    // Paging.
    let resp = relay
        .get("/v1/mailbox?after=2&limit=1", Some(bob.token()))
        .await;
    let page: MailboxResponse = resp.parse();
    assert_eq!(page.envelopes.len(), 1);
    assert_eq!(page.envelopes[0].seq, 3);
    assert!(page.more);
    for bad in ["after=-1", "after=x", "limit=many", "limit=-5"] {
        relay
            .get(&format!("/v1/mailbox?{bad}"), Some(bob.token()))
            .await
            .assert_error(400, "invalid_request");
    }

    // Acknowledging deletes up to and including `up_to`.
    let ack = relay
        .post(
            "/v1/mailbox/ack",
            Some(bob.token()),
            &serde_json::json!({"up_to": 3}),
        )
        .await;
    assert_eq!(ack.status, 204);
    let seqs: Vec<u64> = relay
        .mailbox(&bob, 0)
        .await
        .envelopes
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, vec![4]);
    relay
        .post(
            "/v1/mailbox/ack",
            Some(bob.token()),
            &serde_json::json!({"up_to": 4}),
        )
        .await;
    assert!(relay.mailbox(&bob, 0).await.envelopes.is_empty());

    // After a restart on the same file, sessions, groups and counters are intact and
    // sequence numbers are never reused.
    let relay = relay.restart().await;
    let msg = alice.message(&mut alice_group, b"four");
    let resp = relay.send(&alice, &send_request(msg, None)).await;
    assert_eq!(resp.parse::<SendResponse>().epoch, 1);
    let mail = relay.mailbox(&bob, 0).await;
    assert_eq!(mail.envelopes.len(), 1);
    assert_eq!(mail.envelopes[0].seq, 5);
    assert_eq!(
        bob.process(&mut bob_group, &mail.envelopes[0].payload),
        Some(b"four".to_vec())
    );
}

/// A commit accepted by the relay whose answer was lost is retried after more than a week
/// (the relay swept in between): it is still recognised as a duplicate, not refused with
/// `epoch_conflict` (which would make the client discard a commit its peers merged). The
/// idempotency record lives exactly as long as the envelopes of the message.
#[tokio::test]
async fn a_send_retried_weeks_later_is_still_a_duplicate() {
    assert_eq!(retention::SENT_MESSAGE_SECS, IDEMPOTENCY_RETENTION_SECS);
    assert_eq!(retention::ENVELOPE_SECS, MAILBOX_RETENTION_SECS);
    assert_eq!(IDEMPOTENCY_RETENTION_SECS, MAILBOX_RETENTION_SECS);

    let relay = Relay::start().await;
    let mut alice = Device::join("alice", &relay).await;
    let mut bob = Device::join("bob", &relay).await;
    let (mut alice_group, _bob_group) = support::pair(&relay, &alice, &bob).await;
    let commit = alice_group
        .self_update(
            &alice.provider,
            &alice.signer,
            LeafNodeParameters::default(),
        )
        .unwrap()
        .into_commit();
    let req = send_request(encode(commit), None);
    let accepted = SendResponse {
        epoch: 2,
        duplicate: false,
    };
    assert_eq!(
        relay.send(&alice, &req).await.parse::<SendResponse>(),
        accepted
    );
    let now = now_secs();

    // Eight days later (the old retention was seven), after a sweep (which also ended the
    // sessions), the retry is answered like the original and delivers nothing again.
    relay.store().sweep(now + 8 * 86_400).await.unwrap();
    alice.login(&relay).await;
    bob.login(&relay).await;
    let resp = relay.send(&alice, &req).await;
    assert_eq!(
        resp.parse::<SendResponse>(),
        SendResponse {
            epoch: 2,
            duplicate: true
        }
    );
    assert_eq!(relay.mailbox(&bob, 0).await.envelopes.len(), 1);

    // Just before the mailbox retention neither the envelope nor the record is gone...
    let stats = relay
        .store()
        .sweep(now + MAILBOX_RETENTION_SECS - 60)
        .await
        .unwrap();
    assert_eq!((stats.envelopes, stats.sent_messages), (0, 0));
    alice.login(&relay).await;
    let resp = relay.send(&alice, &req).await;
    assert!(resp.parse::<SendResponse>().duplicate);
    // ...just after it both are (the pairing commit's record and this one's).
    let stats = relay
        .store()
        .sweep(now + MAILBOX_RETENTION_SECS + 60)
        .await
        .unwrap();
    assert_eq!((stats.envelopes, stats.sent_messages), (1, 2));
}

/// Builds a commit of `device` adding the given claimed key packages to `group` and returns
/// it with its Welcome as a request; the group's pending commit is cleared again.
fn add_request(device: &Device, group: &mut MlsGroup, key_packages: &[&[u8]]) -> SendRequest {
    let kps: Vec<_> = key_packages
        .iter()
        .map(|kp| support::claimed_key_package(kp, &device.provider))
        .collect();
    let (commit, welcome, _) = group
        .add_members(&device.provider, &device.signer, &kps)
        .expect("add commit");
    group
        .clear_pending_commit(device.provider.storage())
        .expect("pending commit cleared");
    send_request(encode(commit), Some(encode(welcome)))
}

/// A member cannot add arbitrary devices to the delivery list: a Welcome is routed only to
/// key packages that the sending device claimed itself (one-time ones by their claimer,
/// last-resort ones by every device that claimed them). Otherwise nothing is delivered and
/// the epoch does not advance.
#[tokio::test]
async fn welcomes_reach_only_key_packages_the_sender_claimed() {
    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;
    let carol = Device::join("carol", &relay).await;
    let dave = Device::join("dave", &relay).await;
    let emma = Device::join("emma", &relay).await;
    let (_alice_group, mut bob_group) = support::pair(&relay, &alice, &bob).await;
    let dave_one_time = dave.key_package(false);
    let dave_last_resort = dave.key_package(true);
    dave.upload(
        &relay,
        vec![dave_one_time.clone()],
        Some(dave_last_resort.clone()),
    )
    .await
    .assert_ok();
    // Emma's package is stored but nobody claims it.
    let emma_unclaimed = emma.key_package(false);
    emma.upload(&relay, vec![emma_unclaimed.clone()], None)
        .await
        .assert_ok();

    // Carol claims dave's one-time package; bob, a member, uses it.
    let claim = relay.claim(&carol, "dave").await;
    assert_eq!(claim.key_packages[0].key_package, dave_one_time);
    let req = add_request(&bob, &mut bob_group, &[&dave_one_time[..]]);
    relay
        .send(&bob, &req)
        .await
        .assert_error(400, "invalid_message");
    // Carol claims dave's last-resort package; bob uses it.
    let claim = relay.claim(&carol, "dave").await;
    assert_eq!(claim.key_packages[0].key_package, dave_last_resort);
    let req = add_request(&bob, &mut bob_group, &[&dave_last_resort[..]]);
    relay
        .send(&bob, &req)
        .await
        .assert_error(400, "invalid_message");
    // An unclaimed package, alone or next to one bob claimed, is refused as well.
    let req = add_request(&bob, &mut bob_group, &[&emma_unclaimed[..]]);
    relay
        .send(&bob, &req)
        .await
        .assert_error(400, "invalid_message");
    let claim = relay.claim(&bob, "dave").await;
    assert_eq!(claim.key_packages[0].key_package, dave_last_resort);
    let req = add_request(
        &bob,
        &mut bob_group,
        &[&dave_last_resort[..], &emma_unclaimed[..]],
    );
    relay
        .send(&bob, &req)
        .await
        .assert_error(400, "invalid_message");

    // Nothing was delivered to anyone.
    for device in [&alice, &dave, &emma, &carol] {
        assert!(relay.mailbox(device, 0).await.envelopes.is_empty());
    }

    // Bob claimed dave's last-resort package himself: now the Welcome is routed, and the
    // epoch is the one after the pairing (the refused commits did not advance it).
    let req = add_request(&bob, &mut bob_group, &[&dave_last_resort[..]]);
    let resp = relay.send(&bob, &req).await;
    assert_eq!(
        resp.parse::<SendResponse>(),
        SendResponse {
            epoch: 2,
            duplicate: false
        }
    );
    let dave_mail = relay.mailbox(&dave, 0).await;
    assert_eq!(dave_mail.envelopes.len(), 1);
    assert_eq!(dave_mail.envelopes[0].payload, req.welcome.clone().unwrap());
    dave.join_group(&dave_mail.envelopes[0].payload);
    assert_eq!(relay.mailbox(&alice, 0).await.envelopes.len(), 1);
    assert!(relay.mailbox(&emma, 0).await.envelopes.is_empty());
    assert!(relay.mailbox(&carol, 0).await.envelopes.is_empty());
}

/// `removed_devices` may only name devices on the group's delivery list other than the
/// sender; otherwise the whole message is refused and nothing is applied.
#[tokio::test]
async fn removed_devices_must_be_other_current_members() {
    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;
    let carol = Device::join("carol", &relay).await;
    let (mut alice_group, mut bob_group) = support::pair(&relay, &alice, &bob).await;
    let update = encode(
        alice_group
            .self_update(
                &alice.provider,
                &alice.signer,
                LeafNodeParameters::default(),
            )
            .unwrap()
            .into_commit(),
    );
    for removed in [
        vec![carol.device_id],                // registered, not a member
        vec![DeviceId(rand::random())],       // not a device at all
        vec![alice.device_id],                // the sender
        vec![bob.device_id, carol.device_id], // one member, one not
        vec![bob.device_id, alice.device_id], // a member and the sender
    ] {
        let mut req = send_request(update.clone(), None);
        req.removed_devices = removed;
        let resp = relay.send(&alice, &req).await;
        resp.assert_error(400, "invalid_request");
        assert_eq!(error_epoch(&resp), None);
    }
    // Nothing was applied: bob got nothing and is still a member; the epoch is unchanged.
    assert!(relay.mailbox(&bob, 0).await.envelopes.is_empty());
    let hello = bob.message(&mut bob_group, b"still here");
    relay
        .send(&bob, &send_request(hello, None))
        .await
        .assert_ok();

    // A real removal of a current member is accepted; bob gets the commit, then is off
    // the list.
    alice_group
        .clear_pending_commit(alice.provider.storage())
        .unwrap();
    let (remove, _, _) = alice_group
        .remove_members(
            &alice.provider,
            &alice.signer,
            &[bob_group.own_leaf_index()],
        )
        .unwrap();
    let mut req = send_request(encode(remove), None);
    req.removed_devices = vec![bob.device_id];
    let resp = relay.send(&alice, &req).await;
    assert_eq!(resp.parse::<SendResponse>().epoch, 2);
    assert_eq!(relay.mailbox(&bob, 0).await.envelopes.len(), 1);
    let late = bob.message(&mut bob_group, b"gone");
    relay
        .send(&bob, &send_request(late, None))
        .await
        .assert_error(403, "not_member");
}

/// `409 epoch_conflict` carries the group's current epoch as a number; no other error has
/// the field. Epochs from the network are compared without wrapping, even above `i64::MAX`.
#[tokio::test]
async fn epoch_conflict_tells_the_current_epoch_and_epochs_never_wrap() {
    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;
    let (mut alice_group, mut bob_group) = support::pair(&relay, &alice, &bob).await;
    let alice_commit = alice_group
        .self_update(
            &alice.provider,
            &alice.signer,
            LeafNodeParameters::default(),
        )
        .unwrap()
        .into_commit();
    let bob_commit = encode(
        bob_group
            .self_update(&bob.provider, &bob.signer, LeafNodeParameters::default())
            .unwrap()
            .into_commit(),
    );
    relay
        .send(&alice, &send_request(encode(alice_commit), None))
        .await
        .assert_ok();
    let resp = relay
        .send(&bob, &send_request(bob_commit.clone(), None))
        .await;
    resp.assert_error(409, "epoch_conflict");
    assert_eq!(error_epoch(&resp), Some(2));
    assert!(
        resp.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains('2')
    );

    // Commits for any other epoch, however large, conflict the same way.
    for epoch in [0, 3, 1 << 63, u64::MAX] {
        let resp = relay
            .send(&bob, &send_request(with_epoch(&bob_commit, epoch), None))
            .await;
        resp.assert_error(409, "epoch_conflict");
        assert_eq!(error_epoch(&resp), Some(2));
    }

    // An application message from a future epoch is invalid (no epoch field), also where
    // a cast to i64 would wrap to a negative (an "old" epoch).
    bob_group
        .clear_pending_commit(bob.provider.storage())
        .unwrap();
    let hello = bob.message(&mut bob_group, b"hello");
    for epoch in [3, (1 << 63) - 1, 1 << 63, u64::MAX] {
        let resp = relay
            .send(&bob, &send_request(with_epoch(&hello, epoch), None))
            .await;
        resp.assert_error(400, "invalid_message");
        assert_eq!(error_epoch(&resp), None);
    }
    // An application message from an earlier epoch is still accepted.
    let resp = relay.send(&bob, &send_request(hello, None)).await;
    assert_eq!(resp.parse::<SendResponse>().epoch, 2);

    // Other errors carry no epoch.
    let resp = relay
        .send(&bob, &send_request(b"garbage".to_vec(), None))
        .await;
    resp.assert_error(400, "invalid_message");
    assert_eq!(error_epoch(&resp), None);
}

/// Mailbox cursors and limits from the network are never wrapped: `after` above `i64::MAX`
/// returns nothing, `up_to = u64::MAX` acknowledges everything, `limit = u32::MAX` is capped.
#[tokio::test]
async fn mailbox_cursors_and_limits_do_not_wrap() {
    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;
    let (mut alice_group, _bob_group) = support::pair(&relay, &alice, &bob).await;
    for text in ["one", "two"] {
        let msg = alice.message(&mut alice_group, text.as_bytes());
        relay
            .send(&alice, &send_request(msg, None))
            .await
            .assert_ok();
    }
    for after in [(1 << 63) - 1, 1 << 63, u64::MAX] {
        let page = relay.mailbox(&bob, after).await;
        assert!(page.envelopes.is_empty(), "after={after}");
        assert!(!page.more);
    }
    let resp = relay
        .get(
            &format!("/v1/mailbox?after=0&limit={}", u32::MAX),
            Some(bob.token()),
        )
        .await;
    let page: MailboxResponse = resp.parse();
    assert_eq!(page.envelopes.len(), 2);
    assert!(!page.more);
    for bad in ["after=18446744073709551616", "limit=4294967296"] {
        relay
            .get(&format!("/v1/mailbox?{bad}"), Some(bob.token()))
            .await
            .assert_error(400, "invalid_request");
    }
    let ack = relay
        .post(
            "/v1/mailbox/ack",
            Some(bob.token()),
            &serde_json::json!({"up_to": u64::MAX}),
        )
        .await;
    assert_eq!(ack.status, 204);
    assert!(relay.mailbox(&bob, 0).await.envelopes.is_empty());
}

/// A group at the largest epoch the relay can store (`i64::MAX`, unreachable in practice):
/// a commit for it cannot advance the epoch and is a conflict, rather than being accepted
/// while the stored epoch silently stays where it was. Application messages still pass.
#[tokio::test]
async fn a_commit_past_the_storable_epoch_is_a_conflict() {
    use std::str::FromStr as _;

    use sqlx::ConnectOptions as _;

    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;
    let (mut alice_group, _bob_group) = support::pair(&relay, &alice, &bob).await;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(&Relay::database_url(relay.dir()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    sqlx::query("UPDATE groups SET epoch = ?")
        .bind(i64::MAX)
        .execute(&mut conn)
        .await
        .unwrap();
    let top = u64::try_from(i64::MAX).unwrap();

    let hello = alice.message(&mut alice_group, b"hi");
    let resp = relay
        .send(&alice, &send_request(with_epoch(&hello, top), None))
        .await;
    assert_eq!(resp.parse::<SendResponse>().epoch, top);

    let commit = encode(
        alice_group
            .self_update(
                &alice.provider,
                &alice.signer,
                LeafNodeParameters::default(),
            )
            .unwrap()
            .into_commit(),
    );
    let resp = relay
        .send(&alice, &send_request(with_epoch(&commit, top), None))
        .await;
    resp.assert_error(409, "epoch_conflict");
    assert_eq!(error_epoch(&resp), Some(top));
    let stored: i64 = sqlx::query_scalar("SELECT epoch FROM groups")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, i64::MAX);
}
