//! Sequencing and delivery: commits, welcomes, conflicts, retries, fan-out, mailboxes.

use dm_wire::api::{MailboxResponse, SendResponse};
use openmls::prelude::{LeafNodeParameters, OpenMlsProvider as _};

use crate::support::{self, Device, Relay, encode, send_request};

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
    let mut reused = send_request(
        encode(
            alice_group
                .create_message(&alice.provider, &alice.signer, b"x")
                .unwrap(),
        ),
        None,
    );
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
    let hello = encode(
        alice_group
            .create_message(&alice.provider, &alice.signer, b"hello bob")
            .unwrap(),
    );
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
    let spoof = encode(
        carol_group
            .create_message(&carol.provider, &carol.signer, b"hi")
            .unwrap(),
    );
    relay
        .send(&carol, &send_request(spoof, None))
        .await
        .assert_error(403, "not_member");
    // An application message cannot create a group.
    let mut lonely = carol.create_group();
    let msg = encode(
        lonely
            .create_message(&carol.provider, &carol.signer, b"hi")
            .unwrap(),
    );
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
        let msg = encode(
            alice_group
                .create_message(&alice.provider, &alice.signer, text.as_bytes())
                .unwrap(),
        );
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
    let msg = encode(
        alice_group
            .create_message(&alice.provider, &alice.signer, b"four")
            .unwrap(),
    );
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
