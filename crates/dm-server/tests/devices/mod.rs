//! Device lists (publishing, revocation), account deletion, batch reads and link slots.

use dm_wire::api::{AccountResponse, DeviceListsResponse, ErrorBody};
use dm_wire::cert::{DeviceCertificate, DeviceList};
use openmls::prelude::LeafNodeParameters;

use crate::conformance;
use crate::support::{Device, Relay, encode, now_secs, send_request};

/// A second device of `first`'s account (same account key), not yet registered.
fn another_device(first: &Device) -> Device {
    let mut second = Device::new(first.handle.as_str());
    second.account = first.account.clone();
    second
}

fn cert(device: &Device) -> DeviceCertificate {
    DeviceCertificate::issue(
        &device.account,
        device.handle.clone(),
        device.device_id,
        device.device_key(),
        now_secs(),
    )
}

fn list_of(account: &Device, sequence: u64, devices: &[&Device]) -> Vec<u8> {
    DeviceList::issue(
        &account.account,
        account.handle.clone(),
        sequence,
        now_secs(),
        devices.iter().map(|d| cert(d)).collect(),
    )
    .expect("device list")
    .encode()
}

async fn publish(relay: &Relay, handle: &str, list: &[u8]) -> crate::support::Resp {
    relay
        .post(
            &format!("/v1/accounts/{handle}/device-list"),
            None,
            &serde_json::json!({ "device_list": dm_wire::b64::encode(list) }),
        )
        .await
}

conformance! {
    /// A device list signed by the account key registers new devices and revokes absent
    /// ones (which can then no longer use their sessions or log in); a stale list is refused
    /// with the stored one; a list signed by another key or for an unknown handle is refused.
    async fn device_lists_are_published_with_the_account_key(db: TestDb) {
        let relay = db.relay().await;
        let first = Device::join("alice", &relay).await;
        let mut second = another_device(&first);

        let two = list_of(&first, 2, &[&first, &second]);
        let resp = publish(&relay, "alice", &two).await;
        resp.assert_ok();
        assert_eq!(resp.parse::<AccountResponse>().device_list, two);
        second.login(&relay).await;
        let resp = relay.get("/v1/accounts/alice", Some(second.token())).await;
        assert_eq!(resp.parse::<AccountResponse>().device_list, two);

        // The same sequence again: stale, and the answer carries the stored list.
        let resp = publish(&relay, "alice", &list_of(&first, 2, &[&first])).await;
        resp.assert_error(409, "stale_device_list");
        assert_eq!(
            resp.parse::<ErrorBody>().error.device_list,
            Some(two.clone())
        );
        // Another account key, or another handle's list, or an unknown handle.
        let mallory = Device::new("alice");
        publish(&relay, "alice", &list_of(&mallory, 9, &[&mallory]))
            .await
            .assert_error(400, "invalid_signature");
        publish(&relay, "bob", &two)
            .await
            .assert_error(400, "invalid_request");
        let nobody = Device::new("nobody");
        publish(&relay, "nobody", &list_of(&nobody, 2, &[&nobody]))
            .await
            .assert_error(404, "unknown_handle");
        publish(&relay, "alice", b"garbage")
            .await
            .assert_error(400, "invalid_signature");
        // A device id of another account cannot be taken over.
        let bob = Device::join("bob", &relay).await;
        let mut thief = another_device(&first);
        thief.device_id = bob.device_id;
        publish(
            &relay,
            "alice",
            &list_of(&first, 3, &[&first, &second, &thief]),
        )
        .await
        .assert_error(400, "invalid_request");

        // Revoke the first device: its session dies and it cannot log in again.
        let token = first.token().to_owned();
        publish(&relay, "alice", &list_of(&first, 3, &[&second]))
            .await
            .assert_ok();
        relay
            .get("/v1/mailbox?after=0", Some(&token))
            .await
            .assert_error(401, "unauthenticated");
        let challenge = first.challenge(&relay).await;
        relay
            .post("/v1/auth/session", None, &first.session_request(challenge))
            .await
            .assert_error(401, "auth_failed");

        // Batch reads: known handles only.
        let resp = relay
            .post(
                "/v1/device-lists",
                Some(second.token()),
                &serde_json::json!({"handles": ["alice", "bob", "nobody"]}),
            )
            .await;
        let lists: DeviceListsResponse = resp.parse();
        let handles: Vec<&str> = lists.accounts.iter().map(|a| a.handle.as_str()).collect();
        assert_eq!(handles, ["alice", "bob"]);
        relay
            .post(
                "/v1/device-lists",
                None,
                &serde_json::json!({"handles": ["alice"]}),
            )
            .await
            .assert_error(401, "unauthenticated");
        let many: Vec<String> = (0..101).map(|i| format!("user{i}")).collect();
        relay
            .post(
                "/v1/device-lists",
                Some(second.token()),
                &serde_json::json!({ "handles": many }),
            )
            .await
            .assert_error(400, "invalid_request");
    }

    /// A commit may name a revoked device (no longer registered) in `removed_devices`: it left
    /// every delivery list with its revocation.
    async fn a_revoked_device_may_be_named_in_removed_devices(db: TestDb) {
        let relay = db.relay().await;
        let alice = Device::join("alice", &relay).await;
        let bob = Device::join("bob", &relay).await;
        let (mut alice_group, bob_group) = crate::support::pair(&relay, &alice, &bob).await;
        let bob2 = another_device(&bob);
        publish(&relay, "bob", &list_of(&bob, 2, &[&bob2]))
            .await
            .assert_ok();
        let _ = alice_group.self_update(
            &alice.provider,
            &alice.signer,
            LeafNodeParameters::default(),
        );
        alice_group
            .clear_pending_commit(openmls_traits::OpenMlsProvider::storage(&alice.provider))
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
        relay.send(&alice, &req).await.assert_ok();
    }

    /// A device deletes its own account (not another one); the handle is then free.
    async fn accounts_are_deleted_by_their_own_devices(db: TestDb) {
        let relay = db.relay().await;
        let alice = Device::join("alice", &relay).await;
        let bob = Device::join("bob", &relay).await;
        relay
            .raw("DELETE", "/v1/accounts/alice", Some(bob.token()), vec![])
            .await
            .assert_error(403, "not_member");
        relay
            .raw("DELETE", "/v1/accounts/alice", None, vec![])
            .await
            .assert_error(401, "unauthenticated");
        let resp = relay
            .raw("DELETE", "/v1/accounts/alice", Some(alice.token()), vec![])
            .await;
        assert_eq!(resp.status, 204);
        relay
            .get("/v1/accounts/alice", Some(bob.token()))
            .await
            .assert_error(404, "unknown_handle");
        Device::join("alice", &relay).await;
    }

    /// Link slots: a request is left without a session, read by anyone who knows the slot,
    /// answered once by a logged-in device, and gone after its lifetime.
    async fn link_slots_carry_one_request_and_one_response(db: TestDb) {
        let relay = db.relay().await;
        let alice = Device::join("alice", &relay).await;
        let slot = "00112233445566778899aabbccddeeff";
        let path = format!("/v1/links/{slot}");
        let body = |b: &[u8]| {
            serde_json::to_vec(&serde_json::json!({"request": dm_wire::b64::encode(b)})).unwrap()
        };
        let resp = relay.raw("PUT", &path, None, body(b"request")).await;
        assert_eq!(resp.status, 204);
        relay
            .raw("PUT", &path, None, body(b"other"))
            .await
            .assert_error(400, "invalid_request");
        let got = relay.get(&path, None).await.json();
        assert_eq!(got["request"], dm_wire::b64::encode(b"request"));
        assert!(got.get("response").is_none());

        let answer = serde_json::json!({"response": dm_wire::b64::encode(b"sealed")});
        relay
            .post(&format!("{path}/response"), None, &answer)
            .await
            .assert_error(401, "unauthenticated");
        let resp = relay
            .post(&format!("{path}/response"), Some(alice.token()), &answer)
            .await;
        assert_eq!(resp.status, 204);
        relay
            .post(&format!("{path}/response"), Some(alice.token()), &answer)
            .await
            .assert_error(404, "not_found");
        assert_eq!(
            relay.get(&path, None).await.json()["response"],
            dm_wire::b64::encode(b"sealed")
        );
        relay
            .get("/v1/links/not-hex", None)
            .await
            .assert_error(400, "invalid_request");
        relay
            .raw(
                "PUT",
                &path,
                None,
                body(&vec![0; dm_wire::api::limits::MAX_LINK_BYTES + 1]),
            )
            .await
            .assert_error(413, "payload_too_large");

        relay.advance(dm_wire::api::limits::LINK_TTL_SECS + 1);
        relay.get(&path, None).await.assert_error(404, "not_found");
        // The expired slot is free again, and the sweep deletes expired slots.
        let resp = relay.raw("PUT", &path, None, body(b"again")).await;
        assert_eq!(resp.status, 204);
        relay.advance(dm_wire::api::limits::LINK_TTL_SECS + 1);
        let stats = dm_server::store::Store::sweep(
            relay.store(),
            now_secs() + 3 * (dm_wire::api::limits::LINK_TTL_SECS + 1),
        )
        .await
        .unwrap();
        assert_eq!(stats.link_slots, 1);
    }
}
