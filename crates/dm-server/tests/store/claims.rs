//! Key package claim limits, enforced in the database: per requesting device (refused,
//! rate limited) and per target account (one-time packages give way to last-resort ones).

use dm_server::store::StoreOptions;

use super::*;

fn limits(per_requester: u32, per_target: u32) -> StoreOptions {
    StoreOptions {
        claims_per_requester_per_hour: per_requester,
        one_time_claims_per_target_per_hour: per_target,
        ..StoreOptions::default()
    }
}

conformance! {
    async fn claims_are_limited_per_requester_and_per_target(db: TestDb) {
        let relay = db.relay_with(limits(3, 2)).await;
        let store = relay.store();
        let now = now_secs();
        let alice = account(store, "alice").await;
        let carol = account(store, "carol").await;
        let bob = account(store, "bob").await;
        let bob_handle = Handle::parse("bob").unwrap();
        let one_time: Vec<NewKeyPackage> =
            (0..6).map(|_| fake_key_package(now + 86_400)).collect();
        let last_resort = fake_key_package(now + 86_400);
        store
            .add_key_packages(bob, one_time.clone(), Some(last_resort.clone()), now)
            .await
            .unwrap();

        // Two one-time packages per hour for bob, then his last-resort one.
        let mut got = Vec::new();
        for _ in 0..3 {
            let claim = store
                .claim_key_packages(&bob_handle, alice, now)
                .await
                .unwrap();
            got.push(claim.key_packages[0].1.clone());
        }
        assert_eq!(
            got,
            vec![
                one_time[0].key_package.clone(),
                one_time[1].key_package.clone(),
                last_resort.key_package.clone()
            ]
        );
        // Another requester gets the last-resort package too: the limit is bob's.
        let claim = store
            .claim_key_packages(&bob_handle, carol, now + 10)
            .await
            .unwrap();
        assert_eq!(claim.key_packages[0].1, last_resort.key_package);
        assert_eq!(store.key_package_stock(bob, now).await.unwrap().one_time, 4);

        // Alice made three claims this hour: the fourth is refused until the first leaves
        // the window, whoever the target.
        for (at, retry) in [(now, 3600), (now + 1800, 1800), (now + 3599, 1)] {
            let err = store
                .claim_key_packages(&Handle::parse("carol").unwrap(), alice, at)
                .await
                .unwrap_err();
            assert!(
                matches!(err, StoreError::RateLimited { retry_after_secs } if retry_after_secs == retry),
                "{err}"
            );
        }
        // A refused claim is not recorded: an hour after the first ones, alice may claim
        // again, and bob's one-time packages are handed out again.
        let claim = store
            .claim_key_packages(&bob_handle, alice, now + 3600)
            .await
            .unwrap();
        assert_eq!(claim.key_packages[0].1, one_time[2].key_package);

        // The sweep forgets claims that left the window.
        let swept = store.sweep(now + 3600).await.unwrap();
        assert_eq!(swept.claim_log, 3);
        let swept = store.sweep(now + 7200).await.unwrap();
        assert_eq!(swept.claim_log, 2);
    }

    /// The per-target limit is shared by every requester.
    async fn the_target_limit_is_shared_by_requesters(db: TestDb) {
        let relay = db.relay_with(limits(100, 3)).await;
        let store = relay.store();
        let now = now_secs();
        let bob_one = account(store, "bob").await;
        let bob_handle = Handle::parse("bob").unwrap();
        let last_resort = fake_key_package(now + 86_400);
        store
            .add_key_packages(
                bob_one,
                (0..5).map(|_| fake_key_package(now + 86_400)).collect(),
                Some(last_resort.clone()),
                now,
            )
            .await
            .unwrap();
        let mut handed_out = 0;
        let mut last_resorts = 0;
        for i in 0..6 {
            let requester = account(store, &format!("asker{i}")).await;
            let claim = store
                .claim_key_packages(&bob_handle, requester, now)
                .await
                .unwrap();
            assert_eq!(claim.key_packages.len(), 1);
            if claim.key_packages[0].1 == last_resort.key_package {
                last_resorts += 1;
            } else {
                handed_out += 1;
            }
        }
        assert_eq!((handed_out, last_resorts), (3, 3));
        assert_eq!(store.key_package_stock(bob_one, now).await.unwrap().one_time, 2);
    }

    /// Over HTTP the per-requester limit is a 429 `rate_limited` with `Retry-After`.
    async fn the_requester_limit_answers_429_with_retry_after(db: TestDb) {
        let relay = db.relay_with(limits(2, 30)).await;
        let alice = Device::join("alice", &relay).await;
        let bob = Device::join("bob", &relay).await;
        bob.upload(&relay, vec![bob.key_package(false)], Some(bob.key_package(true)))
            .await
            .assert_ok();
        for _ in 0..2 {
            relay.claim(&alice, "bob").await;
        }
        let resp = relay
            .post(
                "/v1/accounts/bob/key-packages/claim",
                Some(alice.token()),
                &serde_json::json!({}),
            )
            .await;
        resp.assert_error(429, "rate_limited");
        let retry_after: u64 = resp
            .retry_after
            .as_deref()
            .expect("a Retry-After header")
            .parse()
            .expect("seconds");
        assert!((3000..=3600).contains(&retry_after), "{retry_after}");
        // Bob may still claim alice's packages: the limit is per requesting device.
        alice
            .upload(&relay, vec![], Some(alice.key_package(true)))
            .await
            .assert_ok();
        relay.claim(&bob, "alice").await;
        // An hour later alice may claim again.
        relay.advance(3600);
        relay.claim(&alice, "bob").await;
    }
}
