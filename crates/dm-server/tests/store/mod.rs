//! The store below the HTTP layer: limits, sweeping and concurrent writers. The
//! conformance tests run on SQLite and PostgreSQL alike (see [`crate::conformance`]);
//! `mailbox` covers quotas, retention, sequence numbers, group commit and wakeups,
//! `claims` the key package claim limits, `multi_instance` several PostgreSQL stores on
//! one database.

mod claims;
mod mailbox;
mod multi_instance;

use std::sync::Arc;
use std::time::Duration;

use dm_server::store::{
    Challenge, ContentKind, NewAccount, NewKeyPackage, OutgoingMessage, OutgoingWelcome, Store,
    StoreError, Wakeup, retention,
};
use dm_wire::api::KeyPackageStock;
use dm_wire::api::limits::MAX_KEY_PACKAGES_PER_DEVICE;
use dm_wire::{DeviceId, Handle, MessageId};
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;

use crate::conformance;
use crate::support::db::TestDb;
use crate::support::{Device, Relay, now_secs};

/// Registers an account with one device, directly in the store.
pub async fn account(store: &dyn Store, handle: &str) -> DeviceId {
    let device_id = DeviceId(rand::random());
    store
        .create_account(
            NewAccount {
                handle: Handle::parse(handle).expect("handle"),
                account_key: [1; 32],
                device_list: vec![1, 2, 3],
                sequence: 1,
                device_id,
                device_key: [2; 32],
            },
            now_secs(),
        )
        .await
        .expect("account created");
    device_id
}

pub fn fake_key_package(not_after: u64) -> NewKeyPackage {
    NewKeyPackage {
        kp_ref: rand::random::<[u8; 32]>().to_vec(),
        key_package: rand::random::<[u8; 32]>().to_vec(),
        not_after,
    }
}

/// A message of `kind` for `epoch` with random bytes and a fresh id.
pub fn message(sender: DeviceId, group: &[u8], kind: ContentKind, epoch: u64) -> OutgoingMessage {
    let bytes = rand::random::<[u8; 32]>().to_vec();
    OutgoingMessage {
        sender,
        id: MessageId(rand::random()),
        message_hash: Sha256::digest(&bytes).into(),
        group_id: group.to_vec(),
        epoch,
        kind,
        message: bytes,
        welcome: None,
        removed_devices: vec![],
    }
}

/// `creator` creates a group (at epoch 1 afterwards) whose Welcome adds `members`, each of
/// which gets a fresh one-time key package that `creator` claims. Returns the group id.
pub async fn group(store: &dyn Store, creator: DeviceId, members: &[(&str, DeviceId)]) -> Vec<u8> {
    let now = now_secs();
    let mut kp_refs = Vec::new();
    for (handle, device) in members {
        let kp = fake_key_package(now + 86_400);
        kp_refs.push(kp.kp_ref.clone());
        store
            .add_key_packages(*device, vec![kp], None, now)
            .await
            .expect("upload");
        let claim = store
            .claim_key_packages(&Handle::parse(handle).expect("handle"), creator, now)
            .await
            .expect("claim");
        assert_eq!(claim.key_packages.len(), 1);
    }
    let group_id = rand::random::<[u8; 16]>().to_vec();
    let mut commit = message(creator, &group_id, ContentKind::Commit, 0);
    commit.welcome = Some(OutgoingWelcome {
        message: b"welcome".to_vec(),
        kp_refs,
    });
    let outcome = store.send(commit, now * 1000).await.expect("group created");
    assert_eq!(outcome.epoch, 1);
    assert_eq!(outcome.delivered.len(), members.len());
    group_id
}

/// The next wakeup, waiting generously.
pub async fn next_wakeup(wakeups: &mut broadcast::Receiver<Wakeup>) -> Wakeup {
    tokio::time::timeout(Duration::from_secs(60), wakeups.recv())
        .await
        .expect("a wakeup within 60 s")
        .expect("the wakeup channel is open and did not lag")
}

/// Waits until every `(device, seq)` of `expected` was announced (by a wakeup naming the
/// device with that or a higher sequence number), skipping resyncs.
pub async fn expect_wakeups(
    wakeups: &mut broadcast::Receiver<Wakeup>,
    expected: &[(DeviceId, u64)],
) {
    let mut missing: Vec<(DeviceId, u64)> = expected.to_vec();
    while !missing.is_empty() {
        if let Wakeup::Mailboxes(devices) = next_wakeup(wakeups).await {
            missing.retain(|&(device, seq)| {
                !devices
                    .iter()
                    .any(|&(announced, up_to)| announced == device && up_to >= seq)
            });
        }
    }
}

conformance! {
    async fn one_time_key_packages_are_capped_per_device(db: TestDb) {
        let relay = db.relay().await;
        let device = account(relay.store(), "alice").await;
        let now = now_secs();
        let later = now + 3600;
        let full: Vec<NewKeyPackage> = (0..MAX_KEY_PACKAGES_PER_DEVICE)
            .map(|_| fake_key_package(later))
            .collect();
        let stock = relay
            .store()
            .add_key_packages(device, full.clone(), None, now)
            .await
            .unwrap();
        assert_eq!(stock.one_time, MAX_KEY_PACKAGES_PER_DEVICE);
        // Re-sending stored packages is fine; one more is not, and nothing of it is kept.
        relay
            .store()
            .add_key_packages(device, full[..10].to_vec(), None, now)
            .await
            .unwrap();
        let err = relay
            .store()
            .add_key_packages(
                device,
                vec![fake_key_package(later)],
                Some(fake_key_package(later)),
                now,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::TooManyKeyPackages { .. }),
            "{err}"
        );
        assert_eq!(
            relay.store().key_package_stock(device, now).await.unwrap(),
            KeyPackageStock {
                one_time: MAX_KEY_PACKAGES_PER_DEVICE,
                last_resort: false
            }
        );
        // Expired packages neither count nor get claimed.
        assert_eq!(
            relay
                .store()
                .key_package_stock(device, later)
                .await
                .unwrap()
                .one_time,
            0
        );
        let claim = relay
            .store()
            .claim_key_packages(&Handle::parse("alice").unwrap(), DeviceId([0; 16]), later)
            .await
            .unwrap();
        assert!(claim.key_packages.is_empty());
    }

    async fn sweep_deletes_what_expired(db: TestDb) {
        let relay = db.relay().await;
        let store = relay.store();
        let device = account(relay.store(), "alice").await;
        let now = now_secs();
        store
            .put_challenge(Challenge {
                challenge: vec![7; 32],
                handle: Handle::parse("alice").unwrap(),
                device_id: device,
                expires_at: now + 60,
            })
            .await
            .unwrap();
        store
            .create_session([9; 32], device, now + 60)
            .await
            .unwrap();
        store
            .add_key_packages(
                device,
                vec![
                    fake_key_package(now + 60),
                    fake_key_package(now + 10 * 86_400),
                ],
                Some(fake_key_package(now + 10 * 86_400)),
                now,
            )
            .await
            .unwrap();
        let alice = Handle::parse("alice").unwrap();
        // Claims the package expiring first (the oldest).
        let claimed = store
            .claim_key_packages(&alice, DeviceId([0; 16]), now)
            .await
            .unwrap();
        assert_eq!(claimed.key_packages.len(), 1);

        // Nothing is due yet.
        assert_eq!(store.sweep(now).await.unwrap().key_packages, 0);
        assert_eq!(store.sweep(now).await.unwrap().challenges, 0);

        // After two minutes: challenge and session are gone, the claimed package stays (a
        // Welcome may still need its reference), the unclaimed ones are still valid.
        let stats = store.sweep(now + 120).await.unwrap();
        assert_eq!(
            (stats.challenges, stats.sessions, stats.key_packages),
            (1, 1, 0)
        );
        assert!(store.session([9; 32], now).await.unwrap().is_none());
        assert!(store.take_challenge(&[7; 32]).await.unwrap().is_none());

        // After the claim retention: the claimed package goes; the others expired by then
        // too (the one-time at once, the last-resort one after its retention).
        let stats = store
            .sweep(now + retention::CLAIMED_KEY_PACKAGE_SECS + 1)
            .await
            .unwrap();
        assert_eq!(stats.key_packages, 2);
        let stats = store
            .sweep(now + 10 * 86_400 + retention::CLAIMED_KEY_PACKAGE_SECS + 1)
            .await
            .unwrap();
        assert_eq!(stats.key_packages, 1);
    }

    /// Every claim of a last-resort key package is recorded once per claimer (a repeated claim
    /// refreshes it) and swept after the claim retention, like claimed one-time packages.
    async fn last_resort_claims_are_recorded_per_claimer_and_swept(db: TestDb) {
        let relay = db.relay().await;
        let store = relay.store();
        let device = account(relay.store(), "alice").await;
        let alice = Handle::parse("alice").unwrap();
        let now = now_secs();
        let not_after = now + 2 * retention::CLAIMED_KEY_PACKAGE_SECS;
        store
            .add_key_packages(device, vec![], Some(fake_key_package(not_after)), now)
            .await
            .unwrap();
        for claimer in [[1; 16], [2; 16], [1; 16]] {
            let claim = store
                .claim_key_packages(&alice, DeviceId(claimer), now)
                .await
                .unwrap();
            assert_eq!(claim.key_packages.len(), 1);
        }
        // Claimer 1 again, a day later: its record is refreshed, not duplicated.
        store
            .claim_key_packages(&alice, DeviceId([1; 16]), now + 86_400)
            .await
            .unwrap();
        let stats = store
            .sweep(now + retention::CLAIMED_KEY_PACKAGE_SECS - 1)
            .await
            .unwrap();
        assert_eq!((stats.key_package_claims, stats.key_packages), (0, 0));
        let stats = store
            .sweep(now + retention::CLAIMED_KEY_PACKAGE_SECS)
            .await
            .unwrap();
        assert_eq!((stats.key_package_claims, stats.key_packages), (1, 0));
        let stats = store
            .sweep(now + 86_400 + retention::CLAIMED_KEY_PACKAGE_SECS)
            .await
            .unwrap();
        assert_eq!((stats.key_package_claims, stats.key_packages), (1, 0));
        // The package itself stays offered.
        assert!(
            store
                .key_package_stock(device, now)
                .await
                .unwrap()
                .last_resort
        );
    }

    /// Concurrent claims (each a write transaction) neither fail with SQLITE_BUSY nor hand out
    /// a one-time key package twice.
    async fn concurrent_claims_hand_out_each_package_once(db: TestDb) {
        let relay = Arc::new(db.relay().await);
        let alice = Arc::new(Device::join("alice", &relay).await);
        let bob = Device::join("bob", &relay).await;
        let one_time: Vec<Vec<u8>> = (0..10).map(|_| bob.key_package(false)).collect();
        let last = bob.key_package(true);
        bob.upload(&relay, one_time.clone(), Some(last.clone()))
            .await
            .assert_ok();

        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..30 {
            let (relay, alice) = (relay.clone(), alice.clone());
            tasks.spawn(async move { relay.claim(&alice, "bob").await });
        }
        let mut got = Vec::new();
        while let Some(claim) = tasks.join_next().await {
            got.push(claim.unwrap().key_packages[0].key_package.clone());
        }
        let mut firsts: Vec<&Vec<u8>> = got.iter().filter(|kp| **kp != last).collect();
        firsts.sort();
        let mut expected: Vec<&Vec<u8>> = one_time.iter().collect();
        expected.sort();
        assert_eq!(firsts, expected);
        assert_eq!(got.iter().filter(|kp| **kp == last).count(), 20);
    }

    /// Two members commit for the same epoch at the same time: exactly one commit is accepted.
    async fn concurrent_commits_have_one_winner(db: TestDb) {
        use openmls::prelude::LeafNodeParameters;

        use crate::support::{encode, pair, send_request};

        let relay = Arc::new(db.relay().await);
        let alice = Arc::new(Device::join("alice", &relay).await);
        let bob = Arc::new(Device::join("bob", &relay).await);
        let (mut alice_group, mut bob_group) = pair(&relay, &alice, &bob).await;
        let commits = [
            (
                alice.clone(),
                alice_group
                    .self_update(
                        &alice.provider,
                        &alice.signer,
                        LeafNodeParameters::default(),
                    )
                    .unwrap()
                    .into_commit(),
            ),
            (
                bob.clone(),
                bob_group
                    .self_update(&bob.provider, &bob.signer, LeafNodeParameters::default())
                    .unwrap()
                    .into_commit(),
            ),
        ];
        let mut tasks = tokio::task::JoinSet::new();
        for (device, commit) in commits {
            let relay = relay.clone();
            let req = send_request(encode(commit), None);
            tasks.spawn(async move { relay.send(&device, &req).await.status });
        }
        let mut statuses = Vec::new();
        while let Some(status) = tasks.join_next().await {
            statuses.push(status.unwrap());
        }
        statuses.sort_unstable();
        assert_eq!(statuses, vec![200, 409]);
        // Exactly one commit was delivered, to the loser.
        let delivered = relay.mailbox(&alice, 0).await.envelopes.len()
            + relay.mailbox(&bob, 1).await.envelopes.len();
        assert_eq!(delivered, 1);
    }
}

/// The database file is in WAL mode (a property of the file, visible to any connection).
#[tokio::test]
async fn database_is_in_wal_mode() {
    use std::str::FromStr as _;

    use sqlx::ConnectOptions as _;

    let relay = Relay::start().await;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(&Relay::database_url(relay.dir()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

/// SQLite group commit: when the batch's transaction cannot be begun or committed (here:
/// another connection holds the write lock past the busy timeout), every send of the
/// batch fails and none of them is stored; the writer carries on afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_fails_every_operation_in_it() {
    use std::str::FromStr as _;

    use sqlx::ConnectOptions as _;

    let relay = Relay::start().await;
    let store = relay.store_arc();
    let alice = account(store.as_ref(), "alice").await;
    let bob = account(store.as_ref(), "bob").await;
    let group_id = group(store.as_ref(), alice, &[("bob", bob)]).await;
    let mut blocker =
        sqlx::sqlite::SqliteConnectOptions::from_str(&Relay::database_url(relay.dir()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, group_id) = (store.clone(), group_id.clone());
        tasks.spawn(async move {
            store
                .send(
                    message(alice, &group_id, ContentKind::Application, 1),
                    now_secs() * 1000,
                )
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        let err = result.unwrap().unwrap_err();
        assert!(matches!(err, StoreError::BatchCommit(_)), "{err}");
    }
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let outcome = store
        .send(
            message(alice, &group_id, ContentKind::Application, 1),
            now_secs() * 1000,
        )
        .await
        .unwrap();
    // Only the Welcome and this message are stored.
    assert_eq!(outcome.delivered, vec![(bob, 2)]);
    assert_eq!(store.fetch(bob, 0, 100).await.unwrap().envelopes.len(), 2);
}
