//! The relay's HTTP API, driven through `app(state)` on a real SQLite file, with real
//! device lists, key packages, commits and welcomes built by openmls. One test binary:
//! accounts, sessions and key packages here; the rest in the modules below.

mod binary;
mod messages;
mod push;
mod store;
mod support;

use dm_wire::api::limits::{MAX_BODY_BYTES, MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGES_PER_UPLOAD};
use dm_wire::api::{ChallengeResponse, KeyPackageStock, SessionResponse};
use dm_wire::cert::{DeviceCertificate, DeviceList};
use support::{Device, Relay};

#[tokio::test]
async fn registration() {
    let relay = Relay::start().await;
    let alice = Device::new("alice");
    let alice_req = alice.register_request();
    let resp = relay.post("/v1/accounts", None, &alice_req).await;
    assert_eq!(resp.status, 201);
    let json = resp.json();
    assert_eq!(json["handle"], "alice");
    assert_eq!(
        json["device_list"],
        dm_wire::b64::encode(&alice_req.device_list)
    );

    // The handle is taken, whoever asks.
    let other = Device::new("alice");
    relay
        .post("/v1/accounts", None, &other.register_request())
        .await
        .assert_error(409, "handle_taken");

    // Handles are checked by syntax, with their own error code.
    for bad in ["A!", "ab", "1abc", "@alice"] {
        let mut body = serde_json::to_value(Device::new("carol").register_request()).unwrap();
        body["handle"] = bad.into();
        relay
            .post("/v1/accounts", None, &body)
            .await
            .assert_error(400, "invalid_handle");
    }

    // A proof over other bytes, or by another key, does not verify.
    let carol = Device::new("carol");
    let mut req = carol.register_request();
    req.device_proof = carol.sign(dm_wire::auth::REGISTRATION_LABEL, b"something else");
    relay
        .post("/v1/accounts", None, &req)
        .await
        .assert_error(400, "invalid_signature");
    let mut req = carol.register_request();
    req.device_proof = Device::new("dave").sign(
        dm_wire::auth::REGISTRATION_LABEL,
        &dm_wire::auth::registration_body(&req.device_list),
    );
    relay
        .post("/v1/accounts", None, &req)
        .await
        .assert_error(400, "invalid_signature");

    // A tampered device list does not verify.
    let mut req = carol.register_request();
    let last = req.device_list.len() - 1;
    req.device_list[last] ^= 1;
    relay
        .post("/v1/accounts", None, &req)
        .await
        .assert_error(400, "invalid_signature");

    // A device list for another handle is refused.
    let mut req = carol.register_request();
    req.handle = dm_wire::Handle::parse("carla").unwrap();
    relay
        .post("/v1/accounts", None, &req)
        .await
        .assert_error(400, "invalid_request");

    // A list with two devices is refused.
    let second = Device::new("carol");
    let certs = [&carol, &second]
        .iter()
        .map(|d| {
            DeviceCertificate::issue(
                &carol.account,
                carol.handle.clone(),
                d.device_id,
                d.device_key(),
                1,
            )
        })
        .collect();
    let list = DeviceList::issue(&carol.account, carol.handle.clone(), 1, 1, certs)
        .unwrap()
        .encode();
    let mut req = carol.register_request();
    req.device_proof = carol.sign(
        dm_wire::auth::REGISTRATION_LABEL,
        &dm_wire::auth::registration_body(&list),
    );
    req.device_list = list;
    relay
        .post("/v1/accounts", None, &req)
        .await
        .assert_error(400, "invalid_request");

    // None of the refused attempts registered carol.
    relay
        .post("/v1/accounts", None, &carol.register_request())
        .await
        .assert_ok();

    // Reading an account needs a session; unknown handles are 404.
    relay
        .get("/v1/accounts/alice", None)
        .await
        .assert_error(401, "unauthenticated");
    let bob = Device::join("bob", &relay).await;
    let resp = relay.get("/v1/accounts/alice", Some(bob.token())).await;
    resp.assert_ok();
    assert_eq!(
        resp.json()["device_list"],
        dm_wire::b64::encode(&alice_req.device_list)
    );
    relay
        .get("/v1/accounts/nobody", Some(bob.token()))
        .await
        .assert_error(404, "unknown_handle");
}

/// A registration whose answer was lost can be retried: the byte-identical device list
/// (with a valid proof) is answered 201 with the same body; any other list is still
/// `handle_taken`, and the retry does not bypass the proof.
#[tokio::test]
async fn registration_is_idempotent_for_the_same_device_list() {
    let relay = Relay::start().await;
    let alice = Device::new("alice");
    let req = alice.register_request();
    let first = relay.post("/v1/accounts", None, &req).await;
    assert_eq!(first.status, 201);
    for _ in 0..2 {
        let again = relay.post("/v1/accounts", None, &req).await;
        assert_eq!(
            again.status,
            201,
            "{}",
            String::from_utf8_lossy(&again.body)
        );
        assert_eq!(again.json(), first.json());
    }

    // The same account key and device, but a list with other bytes (another timestamp).
    let cert = DeviceCertificate::issue(
        &alice.account,
        alice.handle.clone(),
        alice.device_id,
        alice.device_key(),
        support::now_secs() + 5,
    );
    let other_list = DeviceList::issue(
        &alice.account,
        alice.handle.clone(),
        1,
        support::now_secs() + 5,
        vec![cert],
    )
    .unwrap()
    .encode();
    assert_ne!(other_list, req.device_list);
    let other = dm_wire::api::RegisterRequest {
        handle: alice.handle.clone(),
        device_proof: alice.sign(
            dm_wire::auth::REGISTRATION_LABEL,
            &dm_wire::auth::registration_body(&other_list),
        ),
        device_list: other_list,
    };
    relay
        .post("/v1/accounts", None, &other)
        .await
        .assert_error(409, "handle_taken");
    // Another device's list for the taken handle.
    relay
        .post(
            "/v1/accounts",
            None,
            &Device::new("alice").register_request(),
        )
        .await
        .assert_error(409, "handle_taken");
    // The identical list with a bad proof is still refused.
    let mut bad = req.clone();
    bad.device_proof[0] ^= 1;
    relay
        .post("/v1/accounts", None, &bad)
        .await
        .assert_error(400, "invalid_signature");

    // The account is the first one, and its device logs in.
    let mut alice = alice;
    let challenge = alice.challenge(&relay).await;
    let resp = relay
        .post("/v1/auth/session", None, &alice.session_request(challenge))
        .await;
    resp.assert_ok();
    alice.token = Some(resp.parse::<SessionResponse>().token);
    let resp = relay.get("/v1/accounts/alice", Some(alice.token())).await;
    resp.assert_ok();
    assert_eq!(resp.json(), first.json());
}

#[tokio::test]
async fn login_and_replay() {
    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    assert_eq!(alice.token().len(), 43);

    // A fresh session works; replaying the same signed request fails.
    let challenge = alice.challenge(&relay).await;
    let req = alice.session_request(challenge);
    let resp = relay.post("/v1/auth/session", None, &req).await;
    resp.assert_ok();
    let session: SessionResponse = resp.parse();
    assert!(session.expires_at > support::now_secs());
    relay
        .get("/v1/key-packages", Some(&session.token))
        .await
        .assert_ok();
    relay
        .post("/v1/auth/session", None, &req)
        .await
        .assert_error(401, "auth_failed");

    // A wrong signature fails, and consumes the challenge.
    let challenge = alice.challenge(&relay).await;
    let mut req = alice.session_request(challenge);
    req.signature[0] ^= 1;
    relay
        .post("/v1/auth/session", None, &req)
        .await
        .assert_error(401, "auth_failed");
    let req = alice.session_request(challenge);
    relay
        .post("/v1/auth/session", None, &req)
        .await
        .assert_error(401, "auth_failed");

    // A challenge issued for another device cannot be used by this one.
    let bob = Device::join("bob", &relay).await;
    let challenge = bob.challenge(&relay).await;
    relay
        .post("/v1/auth/session", None, &alice.session_request(challenge))
        .await
        .assert_error(401, "auth_failed");

    // An expired challenge fails.
    let challenge = alice.challenge(&relay).await;
    relay.advance(dm_wire::api::limits::CHALLENGE_TTL_SECS + 1);
    relay
        .post("/v1/auth/session", None, &alice.session_request(challenge))
        .await
        .assert_error(401, "auth_failed");

    // Challenges do not reveal whether an account exists.
    let ghost = Device::new("ghost");
    let resp = relay
        .post(
            "/v1/auth/challenge",
            None,
            &serde_json::json!({"handle": "ghost", "device_id": ghost.device_id}),
        )
        .await;
    resp.assert_ok();
    let challenge: ChallengeResponse = resp.parse();
    assert_eq!(challenge.challenge.len(), 32);
    relay
        .post(
            "/v1/auth/session",
            None,
            &ghost.session_request(challenge.challenge.try_into().unwrap()),
        )
        .await
        .assert_error(401, "auth_failed");
}

#[tokio::test]
async fn sessions_are_required_and_expire() {
    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    relay
        .get("/v1/key-packages", None)
        .await
        .assert_error(401, "unauthenticated");
    for token in ["garbage", "", "AAAA", &"A".repeat(43)] {
        relay
            .get("/v1/key-packages", Some(token))
            .await
            .assert_error(401, "unauthenticated");
    }
    // Another scheme is not a bearer token.
    relay
        .get_with_authorization("/v1/mailbox", &format!("Basic {}", alice.token()))
        .await
        .assert_error(401, "unauthenticated");
    relay
        .get_with_authorization("/v1/mailbox", &format!("bearer {}", alice.token()))
        .await
        .assert_ok();
    relay
        .get("/v1/mailbox", Some(alice.token()))
        .await
        .assert_ok();
    relay.advance(dm_wire::api::limits::SESSION_TTL_SECS + 1);
    relay
        .get("/v1/mailbox", Some(alice.token()))
        .await
        .assert_error(401, "unauthenticated");
}

#[tokio::test]
async fn key_package_upload_and_stock() {
    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;
    assert_eq!(
        alice.stock(&relay).await,
        KeyPackageStock {
            one_time: 0,
            last_resort: false
        }
    );

    let packages: Vec<Vec<u8>> = (0..3).map(|_| alice.key_package(false)).collect();
    let resp = alice
        .upload(&relay, packages.clone(), Some(alice.key_package(true)))
        .await;
    resp.assert_ok();
    let expected = KeyPackageStock {
        one_time: 3,
        last_resort: true,
    };
    assert_eq!(resp.parse::<KeyPackageStock>(), expected);
    assert_eq!(alice.stock(&relay).await, expected);

    // Uploading the same packages again stores nothing new.
    alice
        .upload(&relay, packages.clone(), None)
        .await
        .assert_ok();
    assert_eq!(alice.stock(&relay).await, expected);

    // One bad package refuses the whole upload.
    let good = alice.key_package(false);
    for bad in [
        bob.key_package(false),  // another device's credential and key
        alice.key_package(true), // a last-resort package among the one-time ones
        b"garbage".to_vec(),     // not MLS
        packages[0][..packages[0].len() - 1].to_vec(), // truncated
    ] {
        alice
            .upload(&relay, vec![good.clone(), bad], None)
            .await
            .assert_error(400, "invalid_key_package");
    }
    assert_eq!(alice.stock(&relay).await, expected);
    // The last-resort field must carry the extension.
    alice
        .upload(&relay, vec![], Some(alice.key_package(false)))
        .await
        .assert_error(400, "invalid_key_package");
    // A key package with alice's identity but signed by another key is refused.
    let mut impostor = Device::new("alice");
    impostor.device_id = alice.device_id;
    impostor.credential.credential = alice.credential.credential.clone();
    alice
        .upload(&relay, vec![impostor.key_package(false)], None)
        .await
        .assert_error(400, "invalid_key_package");

    // Limits.
    alice
        .upload(
            &relay,
            vec![b"x".to_vec(); MAX_KEY_PACKAGES_PER_UPLOAD + 1],
            None,
        )
        .await
        .assert_error(400, "invalid_request");
    alice
        .upload(&relay, vec![vec![0; MAX_KEY_PACKAGE_BYTES + 1]], None)
        .await
        .assert_error(413, "payload_too_large");
    assert_eq!(alice.stock(&relay).await, expected);
}

#[tokio::test]
async fn claims_take_one_time_packages_then_the_last_resort() {
    let relay = Relay::start().await;
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;

    // Nothing uploaded: the device is simply absent.
    let claim = relay.claim(&alice, "bob").await;
    assert_eq!(claim.handle.as_str(), "bob");
    assert!(claim.key_packages.is_empty());
    assert!(DeviceList::decode(&claim.device_list).is_ok());

    let one = bob.key_package(false);
    let two = bob.key_package(false);
    let last = bob.key_package(true);
    bob.upload(&relay, vec![one.clone(), two.clone()], Some(last.clone()))
        .await
        .assert_ok();

    let mut claimed = Vec::new();
    for _ in 0..4 {
        let claim = relay.claim(&alice, "bob").await;
        assert_eq!(claim.key_packages.len(), 1);
        assert_eq!(claim.key_packages[0].device_id, bob.device_id);
        claimed.push(claim.key_packages[0].key_package.clone());
    }
    assert_eq!(claimed, vec![one, two, last.clone(), last]);
    assert_eq!(
        bob.stock(&relay).await,
        KeyPackageStock {
            one_time: 0,
            last_resort: true
        }
    );

    // A new last-resort package replaces the old one.
    let newer = bob.key_package(true);
    bob.upload(&relay, vec![], Some(newer.clone()))
        .await
        .assert_ok();
    assert_eq!(
        relay.claim(&alice, "bob").await.key_packages[0].key_package,
        newer
    );

    let resp = relay
        .post(
            "/v1/accounts/nobody/key-packages/claim",
            Some(alice.token()),
            &serde_json::json!({}),
        )
        .await;
    resp.assert_error(404, "unknown_handle");
}

#[tokio::test]
async fn framework_errors_are_json() {
    let relay = Relay::start().await;
    relay
        .raw("POST", "/v1/accounts", None, vec![b' '; MAX_BODY_BYTES + 1])
        .await
        .assert_error(413, "payload_too_large");
    relay
        .get("/v1/nothing-here", None)
        .await
        .assert_error(404, "not_found");
    relay.get("/", None).await.assert_error(404, "not_found");
    relay
        .raw("DELETE", "/v1/accounts", None, Vec::new())
        .await
        .assert_error(405, "method_not_allowed");
    relay
        .get("/v1/accounts", None)
        .await
        .assert_error(405, "method_not_allowed");
    relay
        .raw("POST", "/v1/accounts", None, b"not json".to_vec())
        .await
        .assert_error(400, "invalid_request");
    relay
        .post(
            "/v1/accounts",
            None,
            &serde_json::json!({"handle": "alice"}),
        )
        .await
        .assert_error(400, "invalid_request");
    relay
        .post(
            "/v1/auth/challenge",
            None,
            &serde_json::json!({"handle": 5}),
        )
        .await
        .assert_error(400, "invalid_handle");
    let resp = relay.get("/healthz", None).await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok"[..]));
}
