//! Mailboxes: quota and the `dropped` counter, retention, sequence numbers under
//! concurrency, group commit, and wakeups.

use std::collections::BTreeSet;

use dm_server::store::{StoreOptions, Wakeup};
use dm_wire::api::MailboxResponse;

use sha2::Digest as _;

use super::*;

conformance! {
    /// A page holds at most FETCH_BYTE_BUDGET payload bytes (at least one envelope), and
    /// says that more wait; paging on reads everything once.
    async fn a_page_is_bounded_in_bytes(db: TestDb) {
        let relay = db.relay().await;
        let store = relay.store();
        let alice = Device::join("alice", &relay).await;
        let bob = Device::join("bob", &relay).await;
        let group_id = group(store, alice.device_id, &[("bob", bob.device_id)]).await;
        store.ack(bob.device_id, u64::MAX).await.unwrap();
        let now_ms = now_secs() * 1000;
        let big = dm_wire::api::limits::MAX_MESSAGE_BYTES;
        let budget = dm_server::store::FETCH_BYTE_BUDGET;
        // Six envelopes of 1 MiB: more than one page holds.
        for i in 0..6u8 {
            let mut m = message(alice.device_id, &group_id, ContentKind::Application, 1);
            m.message = vec![i; big];
            m.message_hash = sha2::Sha256::digest(&m.message).into();
            store.send(m, now_ms).await.unwrap();
        }
        let first = store.fetch(bob.device_id, 0, 100).await.unwrap();
        let bytes: usize = first.envelopes.iter().map(|e| e.payload.len()).sum();
        assert!(bytes <= budget, "{bytes} > {budget}");
        assert_eq!(first.envelopes.len(), budget / big);
        assert!(first.more);
        let last = first.envelopes.last().unwrap().seq;
        let second = store.fetch(bob.device_id, last, 100).await.unwrap();
        assert_eq!(second.envelopes.len(), 6 - budget / big);
        assert!(!second.more);
        let all: Vec<u8> = first
            .envelopes
            .iter()
            .chain(&second.envelopes)
            .map(|e| e.payload[0])
            .collect();
        assert_eq!(all, [0, 1, 2, 3, 4, 5]);
        // A count limit still applies, and a single envelope is never split or withheld.
        let one = store.fetch(bob.device_id, 0, 1).await.unwrap();
        assert_eq!((one.envelopes.len(), one.more), (1, true));
    }

    /// A full mailbox refuses envelopes and counts them in `dropped`; the send goes on for
    /// the other recipients; acknowledging makes room again; `dropped` never decreases and
    /// reaches the client in the mailbox response.
    async fn a_full_mailbox_drops_and_counts(db: TestDb) {
        let relay = db
            .relay_with(StoreOptions {
                mailbox_quota: 3,
                ..StoreOptions::default()
            })
            .await;
        let store = relay.store();
        let alice = Device::join("alice", &relay).await;
        let bob = Device::join("bob", &relay).await;
        let carol = Device::join("carol", &relay).await;
        let group_id = group(
            store,
            alice.device_id,
            &[("bob", bob.device_id), ("carol", carol.device_id)],
        )
        .await;
        // Carol keeps her mailbox empty; bob's holds the Welcome.
        store.ack(carol.device_id, u64::MAX).await.unwrap();
        let now_ms = now_secs() * 1000;
        let mut bob_got = 0;
        for i in 0..4 {
            let outcome = store
                .send(
                    message(alice.device_id, &group_id, ContentKind::Application, 1),
                    now_ms,
                )
                .await
                .unwrap();
            let got: Vec<DeviceId> = outcome.delivered.iter().map(|(d, _)| *d).collect();
            assert!(got.contains(&carol.device_id), "send {i}: {got:?}");
            if got.contains(&bob.device_id) {
                bob_got += 1;
            }
            store.ack(carol.device_id, u64::MAX).await.unwrap();
        }
        // Bob had room for two more envelopes; two were dropped.
        assert_eq!(bob_got, 2);
        let page = store.fetch(bob.device_id, 0, 100).await.unwrap();
        assert_eq!((page.envelopes.len(), page.dropped), (3, 2));
        assert_eq!(store.fetch(carol.device_id, 0, 100).await.unwrap().dropped, 0);
        let mailbox: MailboxResponse = relay.mailbox(&bob, 0).await;
        assert_eq!((mailbox.envelopes.len(), mailbox.dropped), (3, 2));
        let json = relay
            .get("/v1/mailbox", Some(bob.token()))
            .await
            .json();
        assert_eq!(json["dropped"], 2);

        // After an ack there is room again; the counter stays.
        store
            .ack(bob.device_id, page.envelopes[1].seq)
            .await
            .unwrap();
        let outcome = store
            .send(
                message(alice.device_id, &group_id, ContentKind::Application, 1),
                now_ms,
            )
            .await
            .unwrap();
        assert_eq!(outcome.delivered.len(), 2);
        let page = store.fetch(bob.device_id, 0, 100).await.unwrap();
        assert_eq!((page.envelopes.len(), page.dropped), (2, 2));
        // Sequence numbers continue without a gap: dropped envelopes take none.
        assert_eq!(page.envelopes[1].seq, page.envelopes[0].seq + 1);
        assert_eq!(store.fetch(DeviceId([9; 16]), 0, 10).await.unwrap().dropped, 0);
    }

    /// The sweep deletes envelopes older than the configured retention (and only those),
    /// which also makes room in a full mailbox.
    async fn envelopes_expire_after_the_configured_retention(db: TestDb) {
        let relay = db
            .relay_with(StoreOptions {
                mailbox_quota: 2,
                envelope_retention_secs: 100,
                ..StoreOptions::default()
            })
            .await;
        let store = relay.store();
        let now = now_secs();
        let alice = account(store, "alice").await;
        let bob = account(store, "bob").await;
        // The Welcome is stored at `now` or (on a slow machine) a little later.
        let group_id = group(store, alice, &[("bob", bob)]).await;
        // It and one message stored 60 s later fill the mailbox.
        store
            .send(
                message(alice, &group_id, ContentKind::Application, 1),
                (now + 60) * 1000,
            )
            .await
            .unwrap();
        let dropped = store
            .send(
                message(alice, &group_id, ContentKind::Application, 1),
                (now + 60) * 1000,
            )
            .await
            .unwrap();
        assert!(dropped.delivered.is_empty());

        assert_eq!(store.sweep(now + 99).await.unwrap().envelopes, 0);
        // 130 s on, the Welcome is past the retention, the message not yet.
        assert_eq!(store.sweep(now + 130).await.unwrap().envelopes, 1);
        let page = store.fetch(bob, 0, 10).await.unwrap();
        assert_eq!((page.envelopes.len(), page.dropped), (1, 1));
        // The freed place takes the next envelope.
        let stored = store
            .send(
                message(alice, &group_id, ContentKind::Application, 1),
                (now + 130) * 1000,
            )
            .await
            .unwrap();
        assert_eq!(stored.delivered.len(), 1);
        assert_eq!(store.sweep(now + 159).await.unwrap().envelopes, 0);
        assert_eq!(store.sweep(now + 160).await.unwrap().envelopes, 1);
        assert_eq!(store.sweep(now + 230).await.unwrap().envelopes, 1);
        assert!(store.fetch(bob, 0, 10).await.unwrap().envelopes.is_empty());
    }

    /// Senders in several groups write to one device's mailbox at once (on PostgreSQL
    /// through two store instances): its sequence numbers are unique and contiguous.
    async fn concurrent_sends_to_one_device_get_contiguous_seqs(db: TestDb) {
        let first = db.store(StoreOptions::default()).await;
        let second = if db.is_postgres() {
            db.store(StoreOptions::default()).await
        } else {
            first.clone()
        };
        let bob = account(first.as_ref(), "bob").await;
        let mut groups = Vec::new();
        for name in ["alice", "carol", "dave"] {
            let sender = account(first.as_ref(), name).await;
            groups.push((sender, group(first.as_ref(), sender, &[("bob", bob)]).await));
        }
        let now_ms = now_secs() * 1000;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..60 {
            let (sender, group_id) = groups[i % groups.len()].clone();
            let store = if i % 2 == 0 { first.clone() } else { second.clone() };
            tasks.spawn(async move {
                store
                    .send(
                        message(sender, &group_id, ContentKind::Application, 1),
                        now_ms,
                    )
                    .await
                    .expect("accepted")
            });
        }
        let mut announced = BTreeSet::new();
        while let Some(outcome) = tasks.join_next().await {
            let outcome = outcome.unwrap();
            assert_eq!(outcome.delivered.len(), 1);
            assert_eq!(outcome.delivered[0].0, bob);
            assert!(announced.insert(outcome.delivered[0].1), "seq given twice");
        }
        let page = first.fetch(bob, 0, 1000).await.unwrap();
        let seqs: Vec<u64> = page.envelopes.iter().map(|e| e.seq).collect();
        // Three Welcomes, then the 60 messages.
        assert_eq!(seqs, (1..=63).collect::<Vec<u64>>());
        assert_eq!(announced, (4..=63).collect::<BTreeSet<u64>>());
    }

    /// Many sends at once (on SQLite: batched into few transactions by the writer thread),
    /// some of them refused: every valid one is accepted and delivered exactly once, every
    /// refused one gets its own error and leaves no trace.
    async fn refused_sends_do_not_affect_concurrent_ones(db: TestDb) {
        let relay = db.relay().await;
        let store = relay.store_arc();
        let alice = account(store.as_ref(), "alice").await;
        let bob = account(store.as_ref(), "bob").await;
        let mallory = account(store.as_ref(), "mallory").await;
        let group_id = group(store.as_ref(), alice, &[("bob", bob)]).await;
        store.ack(bob, u64::MAX).await.unwrap();
        let now_ms = now_secs() * 1000;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let store = store.clone();
            let group_id = group_id.clone();
            tasks.spawn(async move {
                let msg = match i % 25 {
                    // Not a member.
                    7 => message(mallory, &group_id, ContentKind::Application, 1),
                    // From a future epoch.
                    13 => message(alice, &group_id, ContentKind::Application, 2),
                    // A commit for a past epoch.
                    19 => message(alice, &group_id, ContentKind::Commit, 0),
                    _ => message(alice, &group_id, ContentKind::Application, 1),
                };
                let payload = msg.message.clone();
                (i, payload, store.send(msg, now_ms).await)
            });
        }
        let mut accepted = BTreeSet::new();
        while let Some(result) = tasks.join_next().await {
            let (i, payload, result) = result.unwrap();
            match (i % 25, result) {
                (7, Err(StoreError::NotMember)) => {}
                (13, Err(StoreError::FutureEpoch { current: 1 })) => {}
                (19, Err(StoreError::EpochConflict { current: 1 })) => {}
                (7 | 13 | 19, other) => panic!("send {i} should be refused: {other:?}"),
                (_, Ok(outcome)) => {
                    assert_eq!(outcome.epoch, 1);
                    assert_eq!(outcome.delivered.len(), 1);
                    accepted.insert(payload);
                }
                (_, Err(err)) => panic!("send {i} refused: {err}"),
            }
        }
        assert_eq!(accepted.len(), 200 - 3 * 8);
        let page = store.fetch(bob, 0, 1000).await.unwrap();
        let stored: BTreeSet<Vec<u8>> = page.envelopes.into_iter().map(|e| e.payload).collect();
        assert_eq!(stored, accepted);
        assert!(store.fetch(mallory, 0, 10).await.unwrap().envelopes.is_empty());
        assert!(store.fetch(alice, 0, 10).await.unwrap().envelopes.is_empty());
    }

    /// A subscriber hears of every envelope stored, after the send was accepted; a retry
    /// announces nothing new.
    async fn subscribers_hear_of_stored_envelopes(db: TestDb) {
        let store = db.store(StoreOptions::default()).await;
        let alice = account(store.as_ref(), "alice").await;
        let bob = account(store.as_ref(), "bob").await;
        let carol = account(store.as_ref(), "carol").await;
        let mut wakeups = store.subscribe();
        let group_id = group(store.as_ref(), alice, &[("bob", bob), ("carol", carol)]).await;
        // The Welcomes: seq 1 for both.
        expect_wakeups(&mut wakeups, &[(bob, 1), (carol, 1)]).await;

        let msg = message(alice, &group_id, ContentKind::Application, 1);
        let outcome = store.send(msg.clone(), now_secs() * 1000).await.unwrap();
        let mut delivered = outcome.delivered.clone();
        delivered.sort();
        let mut expected = vec![(bob, 2), (carol, 2)];
        expected.sort();
        assert_eq!(delivered, expected);
        expect_wakeups(&mut wakeups, &expected).await;

        // A retry delivers and announces nothing; a refused send neither. The next
        // announcement is the next accepted message's.
        let retry = store.send(msg, now_secs() * 1000).await.unwrap();
        assert!(retry.duplicate && retry.delivered.is_empty());
        store
            .send(
                message(alice, &group_id, ContentKind::Application, 9),
                now_secs() * 1000,
            )
            .await
            .unwrap_err();
        let only_bob = group(store.as_ref(), alice, &[("bob", bob)]).await;
        loop {
            match next_wakeup(&mut wakeups).await {
                Wakeup::Mailboxes(devices) => {
                    assert_eq!(*devices, [(bob, 3)]);
                    break;
                }
                Wakeup::Resync => continue,
            }
        }
        assert!(!only_bob.is_empty());
        store.close().await.unwrap();
    }

    /// A burst of envelopes costs subscribers one wakeup per batch (one send here), not one
    /// per envelope: more envelopes than the channel holds do not make a subscriber that
    /// did not keep up lag (which would wake every push socket).
    async fn a_burst_of_envelopes_does_not_make_subscribers_lag(db: TestDb) {
        const MEMBERS: usize = 20;
        const SENDS: u64 = 220;
        let store = db.store(StoreOptions::default()).await;
        let alice = account(store.as_ref(), "alice").await;
        let mut members = Vec::new();
        for i in 0..MEMBERS {
            let handle = format!("member{i}");
            let device = account(store.as_ref(), &handle).await;
            members.push((handle, device));
        }
        let member_refs: Vec<(&str, DeviceId)> =
            members.iter().map(|(h, d)| (h.as_str(), *d)).collect();
        let mut wakeups = store.subscribe();
        let group_id = group(store.as_ref(), alice, &member_refs).await;
        // Nobody reads the wakeups meanwhile: well over the channel's 4096 envelopes.
        assert!(SENDS * MEMBERS as u64 > 4096);
        for _ in 0..SENDS {
            let outcome = store
                .send(
                    message(alice, &group_id, ContentKind::Application, 1),
                    now_secs() * 1000,
                )
                .await
                .unwrap();
            assert_eq!(outcome.delivered.len(), MEMBERS);
        }
        // Every member's last envelope (after the Welcome) is announced, without a lag.
        let last: Vec<(DeviceId, u64)> = members.iter().map(|&(_, d)| (d, SENDS + 1)).collect();
        expect_wakeups(&mut wakeups, &last).await;
        store.close().await.unwrap();
    }
}
