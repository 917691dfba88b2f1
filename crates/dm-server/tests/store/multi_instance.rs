//! Several relay instances on one PostgreSQL database behave as one relay: one commit per
//! epoch, idempotent retries, and wakeups reach every instance. Also: a lost listener
//! connection is re-established and announced as a resync. (Retries are a conformance test
//! on both engines, with one store on SQLite.)

use std::str::FromStr as _;

use dm_server::store::StoreOptions;
use sqlx::ConnectOptions as _;

use super::*;

/// Two stores on one fresh PostgreSQL database, or `None` when PostgreSQL is skipped.
async fn two_instances(test: &str) -> Option<(TestDb, Arc<dyn Store>, Arc<dyn Store>)> {
    let db = TestDb::postgres(test).await?;
    let first = db.store(StoreOptions::default()).await;
    let second = db.store(StoreOptions::default()).await;
    Some((db, first, second))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_instances_race_commits_and_exactly_one_wins() {
    let Some((_db, first, second)) = two_instances("race_commits").await else {
        return;
    };
    let alice = account(first.as_ref(), "alice").await;
    let bob = account(first.as_ref(), "bob").await;
    let group_id = group(first.as_ref(), alice, &[("bob", bob)]).await;
    for epoch in 1..=15u64 {
        let (a, b) = tokio::join!(
            first.send(
                message(alice, &group_id, ContentKind::Commit, epoch),
                now_secs() * 1000
            ),
            second.send(
                message(bob, &group_id, ContentKind::Commit, epoch),
                now_secs() * 1000
            ),
        );
        let (winner, loser) = match (a, b) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
            (a, b) => panic!("epoch {epoch}: expected one winner, got {a:?} and {b:?}"),
        };
        assert_eq!(winner.epoch, epoch + 1);
        assert!(
            matches!(loser, StoreError::EpochConflict { current } if current == epoch + 1),
            "epoch {epoch}: {loser}"
        );
    }
    // Each device received exactly the commits the other won, with contiguous seqs.
    let alice_page = first.fetch(alice, 0, 100).await.unwrap();
    let bob_page = second.fetch(bob, 0, 100).await.unwrap();
    // Bob's mailbox also holds the Welcome.
    assert_eq!(
        alice_page.envelopes.len() + bob_page.envelopes.len(),
        15 + 1
    );
    for page in [&alice_page, &bob_page] {
        for (i, envelope) in page.envelopes.iter().enumerate() {
            assert_eq!(envelope.seq, i as u64 + 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_send_through_one_instance_wakes_the_other() {
    let Some((_db, first, second)) = two_instances("wakes_the_other").await else {
        return;
    };
    let mut second_wakeups = second.subscribe();
    let mut first_wakeups = first.subscribe();
    let alice = account(first.as_ref(), "alice").await;
    let bob = account(first.as_ref(), "bob").await;
    let group_id = group(first.as_ref(), alice, &[("bob", bob)]).await;
    expect_wakeups(&mut second_wakeups, &[(bob, 1)]).await;
    expect_wakeups(&mut first_wakeups, &[(bob, 1)]).await;
    // And the other way round.
    let outcome = second
        .send(
            message(bob, &group_id, ContentKind::Application, 1),
            now_secs() * 1000,
        )
        .await
        .unwrap();
    assert_eq!(outcome.delivered, vec![(alice, 1)]);
    expect_wakeups(&mut first_wakeups, &[(alice, 1)]).await;
    expect_wakeups(&mut second_wakeups, &[(alice, 1)]).await;
    first.close().await.unwrap();
    second.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_lost_listener_connection_resyncs() {
    let Some(db) = TestDb::postgres("listener_resyncs").await else {
        return;
    };
    let store = db.store(StoreOptions::default()).await;
    let mut wakeups = store.subscribe();
    let mut admin = sqlx::postgres::PgConnectOptions::from_str(db.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(terminated, vec![true], "exactly one listener connection");
    assert_eq!(next_wakeup(&mut wakeups).await, Wakeup::Resync);
    // The listener listens again: later envelopes are announced.
    let alice = account(store.as_ref(), "alice").await;
    let bob = account(store.as_ref(), "bob").await;
    group(store.as_ref(), alice, &[("bob", bob)]).await;
    expect_wakeups(&mut wakeups, &[(bob, 1)]).await;
    store.close().await.unwrap();
}

/// A send notifies only after its transaction committed (a notifying transaction holds
/// PostgreSQL's notification lock through its commit, serialising every send's WAL flush),
/// and a failing notification neither fails the send nor keeps this instance's subscribers
/// asleep. The database's `pg_notify` is shadowed by one that refuses to run in a
/// transaction that has written anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sends_notify_outside_their_transaction() {
    let Some(db) = TestDb::postgres("notify_outside_tx").await else {
        return;
    };
    let mut admin = sqlx::postgres::PgConnectOptions::from_str(db.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    sqlx::query(
        "CREATE FUNCTION public.pg_notify(channel text, payload text) RETURNS void \
         LANGUAGE plpgsql AS $$ BEGIN \
           IF txid_current_if_assigned() IS NOT NULL THEN \
             RAISE EXCEPTION 'pg_notify inside a writing transaction'; \
           END IF; \
           PERFORM pg_catalog.pg_notify(channel, payload); \
         END $$",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    // Sessions opened from now on find the shadow first.
    sqlx::query(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = public, pg_catalog', \
         current_database()); END $$",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let first = db.store(StoreOptions::default()).await;
    let second = db.store(StoreOptions::default()).await;
    let mut first_wakeups = first.subscribe();
    let mut second_wakeups = second.subscribe();
    let alice = account(first.as_ref(), "alice").await;
    let bob = account(first.as_ref(), "bob").await;
    let group_id = group(first.as_ref(), alice, &[("bob", bob)]).await;
    expect_wakeups(&mut first_wakeups, &[(bob, 1)]).await;
    expect_wakeups(&mut second_wakeups, &[(bob, 1)]).await;

    // Notifications fail from now on: sends succeed, and wake this instance's sockets.
    sqlx::query(
        "CREATE OR REPLACE FUNCTION public.pg_notify(channel text, payload text) \
         RETURNS void LANGUAGE plpgsql AS $$ BEGIN \
           RAISE EXCEPTION 'notifications refused'; \
         END $$",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let outcome = first
        .send(
            message(alice, &group_id, ContentKind::Application, 1),
            now_secs() * 1000,
        )
        .await
        .expect("the send succeeds although its notification fails");
    assert_eq!(outcome.delivered, vec![(bob, 2)]);
    expect_wakeups(&mut first_wakeups, &[(bob, 2)]).await;
    // The other instance finds it when it looks.
    assert_eq!(second.fetch(bob, 1, 10).await.unwrap().envelopes.len(), 1);
    first.close().await.unwrap();
    second.close().await.unwrap();
}

conformance! {
    /// The same message sent twice at once (on PostgreSQL through two instances) is
    /// accepted once; the other answer is the duplicate's, and one envelope is delivered.
    async fn concurrent_retries_are_answered_like_the_original(db: TestDb) {
        let first = db.store(StoreOptions::default()).await;
        let second = if db.is_postgres() {
            db.store(StoreOptions::default()).await
        } else {
            first.clone()
        };
        let alice = account(first.as_ref(), "alice").await;
        let bob = account(first.as_ref(), "bob").await;
        let group_id = group(first.as_ref(), alice, &[("bob", bob)]).await;
        first.ack(bob, u64::MAX).await.unwrap();
        for round in 0..10 {
            let kind = if round % 2 == 0 {
                ContentKind::Application
            } else {
                ContentKind::Commit
            };
            let epoch = 1 + round / 2;
            let msg = message(alice, &group_id, kind, epoch);
            let now_ms = now_secs() * 1000;
            let (a, b) = tokio::join!(
                first.send(msg.clone(), now_ms),
                second.send(msg.clone(), now_ms)
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.epoch, b.epoch, "round {round}");
            assert!(a.duplicate != b.duplicate, "round {round}: {a:?} {b:?}");
            assert_eq!(a.delivered.len() + b.delivered.len(), 1);
        }
        let page = first.fetch(bob, 0, 100).await.unwrap();
        assert_eq!(page.envelopes.len(), 10);
    }
}
