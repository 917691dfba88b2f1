//! Two-party conversations on in-memory providers.

use super::*;
use crate::InvalidInput;
use crate::key_package::{generate, validate_claimed};
use crate::test_support::{Party, directory_of};
use dm_wire::api::ClaimedKeyPackage;
use dm_wire::{Handle, MessageId};

/// Bob's key packages as the relay would hand them to Alice, validated by Alice.
fn claim_for(claimer: &Party, owner: &Party) -> Vec<ValidatedKeyPackage> {
    let bytes = generate(&owner.provider, &owner.device, 1).unwrap();
    let claimed = [ClaimedKeyPackage {
        device_id: owner.device.id(),
        key_package: bytes[0].clone(),
    }];
    validate_claimed(claimer.provider.crypto(), &owner.device_list, &claimed).unwrap()
}

/// Alice creates a conversation and adds Bob; both are at epoch 1 afterwards.
fn start(alice: &Party, bob: &Party) -> (Conversation, Conversation) {
    let mut a = Conversation::create(&alice.provider, &alice.device).unwrap();
    assert_eq!(a.id().0.len(), GROUP_ID_LEN);
    let packages = claim_for(alice, bob);
    let out = a.invite(&alice.provider, &alice.device, &packages).unwrap();
    assert_eq!(out.added, vec![bob.device.identity()]);
    assert!(a.has_pending_commit());
    // The relay accepted the commit.
    let merged = a.merge_pending_commit(&alice.provider).unwrap().unwrap();
    assert!(
        matches!(merged, Event::CommitApplied { epoch: 1, ref added, .. } if added == &out.added)
    );
    let dir = directory_of(&[alice, bob]);
    let event = process_incoming(&bob.provider, &dir, &out.welcome.unwrap()).unwrap();
    let Event::Joined {
        group,
        inviter,
        members,
    } = event
    else {
        panic!("expected Joined, got {event:?}");
    };
    assert_eq!(group, a.id());
    assert_eq!(inviter, alice.device.identity());
    assert_eq!(members.len(), 2);
    let b = Conversation::load(bob.provider.storage(), &group)
        .unwrap()
        .unwrap();
    assert_eq!(b.epoch(), 1);
    assert_eq!(
        b.peers(bob.device.handle()),
        vec![alice.device.handle().clone()]
    );
    (a, b)
}

fn text(id: u8, s: &str) -> Content {
    Content::text(MessageId([id; 16]), 1_000 + u64::from(id), s)
}

fn deliver(to: &Party, dir: &impl Directory, bytes: &[u8]) -> Result<Event, Error> {
    process_incoming(&to.provider, dir, bytes)
}

fn expect_text(event: Event, from: &Party, body: &str) {
    match event {
        Event::Message {
            sender, content, ..
        } => {
            assert_eq!(sender, from.device.identity());
            assert_eq!(content.as_text(), Some(body));
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn two_party_round_trip_with_self_update() {
    let alice = Party::new("alice", 1);
    let bob = Party::new("bob", 2);
    let dir = directory_of(&[&alice, &bob]);
    let (mut a, mut b) = start(&alice, &bob);

    let m = a
        .encrypt(&alice.provider, &alice.device, &text(1, "hi bob"))
        .unwrap();
    expect_text(deliver(&bob, &dir, &m).unwrap(), &alice, "hi bob");
    let m = b
        .encrypt(&bob.provider, &bob.device, &text(2, "hi alice"))
        .unwrap();
    expect_text(deliver(&alice, &dir, &m).unwrap(), &bob, "hi alice");

    // Bob renews his keys; Alice follows.
    let mut b = Conversation::load(bob.provider.storage(), &b.id())
        .unwrap()
        .unwrap();
    let commit = b.self_update(&bob.provider, &bob.device).unwrap();
    assert!(commit.welcome.is_none());
    b.merge_pending_commit(&bob.provider).unwrap().unwrap();
    let event = deliver(&alice, &dir, &commit.commit).unwrap();
    assert!(matches!(
        event,
        Event::CommitApplied { epoch: 2, ref committer, ref added, ref removed, self_removed: false, .. }
            if committer == &bob.device.identity() && added.is_empty() && removed.is_empty()
    ));
    let a2 = Conversation::load(alice.provider.storage(), &a.id())
        .unwrap()
        .unwrap();
    assert_eq!(a2.epoch(), 2);
    assert_eq!(a2.epoch_authenticator(), b.epoch_authenticator());

    let m = b
        .encrypt(&bob.provider, &bob.device, &text(3, "after update"))
        .unwrap();
    expect_text(deliver(&alice, &dir, &m).unwrap(), &bob, "after update");
    a = a2;
    let m = a
        .encrypt(&alice.provider, &alice.device, &text(4, "ack"))
        .unwrap();
    expect_text(deliver(&bob, &dir, &m).unwrap(), &alice, "ack");

    // Our own message echoed back is recognised, not decrypted.
    assert_eq!(
        deliver(&alice, &dir, &m).unwrap(),
        Event::OwnMessage { group: a.id() }
    );
    // A replayed message does not decrypt twice.
    assert!(deliver(&bob, &dir, &m).is_err());
}

#[test]
fn commit_conflict_loser_clears_processes_winner_and_retries() {
    let alice = Party::new("alice", 1);
    let bob = Party::new("bob", 2);
    let dir = directory_of(&[&alice, &bob]);
    let (mut a, mut b) = start(&alice, &bob);

    // Both commit at epoch 1.
    let a_commit = a.self_update(&alice.provider, &alice.device).unwrap();
    let b_commit = b.self_update(&bob.provider, &bob.device).unwrap();
    // Bob also sent a message in epoch 1 before learning about the conflict.
    let early = b
        .encrypt(&bob.provider, &bob.device, &text(5, "early"))
        .unwrap();

    // The relay accepts Alice's commit and answers Bob with a conflict.
    a.merge_pending_commit(&alice.provider).unwrap();
    b.clear_pending_commit(&bob.provider).unwrap();
    assert!(!b.has_pending_commit());
    let event = deliver(&bob, &dir, &a_commit.commit).unwrap();
    assert!(matches!(event, Event::CommitApplied { epoch: 2, .. }));
    // Bob's losing commit is never processed by Alice; his epoch-1 message still opens.
    expect_text(deliver(&alice, &dir, &early).unwrap(), &bob, "early");

    // Bob retries on the new epoch.
    let mut b = Conversation::load(bob.provider.storage(), &b.id())
        .unwrap()
        .unwrap();
    assert_eq!(b.epoch(), 2);
    let retry = b.self_update(&bob.provider, &bob.device).unwrap();
    b.merge_pending_commit(&bob.provider).unwrap();
    assert!(matches!(
        deliver(&alice, &dir, &retry.commit).unwrap(),
        Event::CommitApplied { epoch: 3, .. }
    ));
    // A stale commit (Bob's loser) is rejected by Alice now.
    assert!(deliver(&alice, &dir, &b_commit.commit).is_err());

    let m = b
        .encrypt(&bob.provider, &bob.device, &text(6, "in sync"))
        .unwrap();
    expect_text(deliver(&alice, &dir, &m).unwrap(), &bob, "in sync");
    let a = Conversation::load(alice.provider.storage(), &a.id())
        .unwrap()
        .unwrap();
    assert_eq!(a.epoch_authenticator(), b.epoch_authenticator());
}

#[test]
fn a_second_commit_while_one_is_pending_is_misuse() {
    let alice = Party::new("alice", 1);
    let bob = Party::new("bob", 2);
    let (mut a, _b) = start(&alice, &bob);
    a.self_update(&alice.provider, &alice.device).unwrap();
    assert!(matches!(
        a.self_update(&alice.provider, &alice.device),
        Err(Error::Misuse(_))
    ));
    assert!(matches!(
        a.invite(&alice.provider, &alice.device, &[]),
        Err(Error::Misuse(_))
    ));
}

#[test]
fn welcome_from_unknown_or_unlisted_inviter_is_rejected() {
    let alice = Party::new("alice", 1);
    let bob = Party::new("bob", 2);
    let mut a = Conversation::create(&alice.provider, &alice.device).unwrap();
    let packages = claim_for(&alice, &bob);
    let out = a.invite(&alice.provider, &alice.device, &packages).unwrap();
    let welcome = out.welcome.unwrap();

    // Bob does not know Alice yet: the caller must fetch her device list and retry.
    let only_bob = bob.directory();
    assert!(matches!(
        deliver(&bob, &only_bob, &welcome),
        Err(Error::UnknownAccount(h)) if h.as_str() == "alice"
    ));

    // An "alice" device list signed by another account key does not contain her device.
    let impostor = Party::new("alice", 9);
    let dir = directory_of(&[&impostor, &bob]);
    let bob2 = Party::new("bob", 2);
    let mut a2 = Conversation::create(&alice.provider, &alice.device).unwrap();
    let out2 = a2
        .invite(&alice.provider, &alice.device, &claim_for(&alice, &bob2))
        .unwrap();
    let err = deliver(&bob2, &dir, &out2.welcome.unwrap()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput(InvalidInput::Credential(
                CredentialError::UnknownDevice { .. }
            ))
        ),
        "{err:?}"
    );
}

#[test]
fn commit_adding_an_unlisted_device_is_rejected() {
    let alice = Party::new("alice", 1);
    let bob = Party::new("bob", 2);
    let carol = Party::new("carol", 3);
    let (mut a, _b) = start(&alice, &bob);
    let out = a
        .invite(&alice.provider, &alice.device, &claim_for(&alice, &carol))
        .unwrap();
    // Bob has never seen Carol: he must look her up first.
    let dir = directory_of(&[&alice, &bob]);
    assert!(matches!(
        deliver(&bob, &dir, &out.commit),
        Err(Error::UnknownAccount(h)) if h.as_str() == "carol"
    ));
    // Carol's genuine list does not contain the device Alice added.
    let bob2 = Party::new("bob", 2);
    let (mut a2, _) = start(&alice, &bob2);
    let fake_carol = Party::new("carol", 4);
    let out = a2
        .invite(
            &alice.provider,
            &alice.device,
            &claim_for(&alice, &fake_carol),
        )
        .unwrap();
    let dir = directory_of(&[&alice, &bob2, &carol]);
    let err = deliver(&bob2, &dir, &out.commit).unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");
}

#[test]
fn garbage_input_is_an_error_not_a_panic() {
    let alice = Party::new("alice", 1);
    let bob = Party::new("bob", 2);
    let dir = directory_of(&[&alice, &bob]);
    let (mut a, _b) = start(&alice, &bob);
    let good = a
        .encrypt(&alice.provider, &alice.device, &text(7, "x"))
        .unwrap();

    let mut inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 1, 0, 2],
        vec![0xff; 64],
        good[..good.len() / 2].to_vec(),
        [good.as_slice(), &[0]].concat(),
    ];
    for i in (0..good.len()).step_by(7) {
        let mut b = good.clone();
        b[i] ^= 0x55;
        inputs.push(b);
    }
    for input in &inputs {
        let _ = deliver(&bob, &dir, input); // must not panic
    }
    for input in &inputs[..6] {
        assert!(deliver(&bob, &dir, input).is_err());
    }
    // A key package is not a mailbox message.
    let kp = generate(&bob.provider, &bob.device, 1).unwrap();
    assert!(matches!(
        deliver(&alice, &dir, &kp[0]),
        Err(Error::InvalidInput(InvalidInput::NotAllowed(_)))
    ));
    // A message of a conversation Carol is not in.
    let carol = Party::new("carol", 3);
    assert!(deliver(&carol, &dir, &good).is_err());
    assert_eq!(peek_group_id(&good), Some(a.id()));
    assert_eq!(peek_group_id(&[1, 2, 3]), None);
    // The genuine message still decrypts after all that garbage.
    expect_text(deliver(&bob, &dir, &good).unwrap(), &alice, "x");
}

#[test]
fn members_and_peers() {
    let alice = Party::new("alice", 1);
    let bob = Party::new("bob", 2);
    let (a, _b) = start(&alice, &bob);
    let me = Handle::parse("alice").unwrap();
    assert_eq!(a.peers(&me), vec![Handle::parse("bob").unwrap()]);
    assert_eq!(a.members().len(), 2);
    assert!(a.is_active());
}

/// Alice creates a group with Bob and Carol; all three at epoch 1.
fn start_group(
    alice: &Party,
    bob: &Party,
    carol: &Party,
) -> (Conversation, Conversation, Conversation) {
    let mut a = Conversation::create_group(&alice.provider, &alice.device, "trip").unwrap();
    let mut packages = claim_for(alice, bob);
    packages.extend(claim_for(alice, carol));
    let out = a
        .commit_changes(&alice.provider, &alice.device, &packages, &[])
        .unwrap();
    a.merge_pending_commit(&alice.provider).unwrap();
    let dir = directory_of(&[alice, bob, carol]);
    let welcome = out.welcome.unwrap();
    let mut joined = Vec::new();
    for p in [bob, carol] {
        let Event::Joined { group, .. } = deliver(p, &dir, &welcome).unwrap() else {
            panic!("expected Joined");
        };
        joined.push(
            Conversation::load(p.provider.storage(), &group)
                .unwrap()
                .unwrap(),
        );
    }
    let c = joined.pop().unwrap();
    let b = joined.pop().unwrap();
    (a, b, c)
}

#[test]
fn group_metadata_is_shared_and_only_the_admin_adds_accounts() {
    let alice = Party::new("alice", 11);
    let bob = Party::new("bob", 12);
    let carol = Party::new("carol", 13);
    let dave = Party::new("dave", 14);
    let (a, mut b, c) = start_group(&alice, &bob, &carol);
    for conv in [&a, &b, &c] {
        let meta = conv.meta().unwrap().unwrap();
        assert_eq!(meta.admin.as_str(), "alice");
        assert_eq!(meta.name, "trip");
    }
    assert_eq!(a.group_code(), b.group_code());
    assert_eq!(b.group_code(), c.group_code());
    assert!(
        Conversation::create(&alice.provider, &alice.device)
            .unwrap()
            .meta()
            .unwrap()
            .is_none()
    );

    // Bob (not the admin) adds Dave: Carol refuses the commit and keeps her state.
    let packages = claim_for(&bob, &dave);
    let out = b
        .commit_changes(&bob.provider, &bob.device, &packages, &[])
        .unwrap();
    let dir = directory_of(&[&alice, &bob, &carol, &dave]);
    let err = deliver(&carol, &dir, &out.commit).unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(InvalidInput::NotAllowed(why)) if why.contains("administrator")),
        "{err:?}"
    );
    // Bob (not the admin) removes Carol, whose device is still listed: refused.
    b.clear_pending_commit(&bob.provider).unwrap();
    let out = b
        .commit_changes(&bob.provider, &bob.device, &[], &[carol.device.identity()])
        .unwrap();
    assert_eq!(out.removed, vec![carol.device.identity()]);
    let err = deliver(&alice, &dir, &out.commit).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput(InvalidInput::Credential(
                CredentialError::StillListed { .. }
            ))
        ),
        "{err:?}"
    );
    // Once Carol's account no longer lists that device, anyone may remove it.
    let mut revoked = dir.clone();
    let other = Party::new("carol", 15);
    revoked.insert(
        carol.device.handle().clone(),
        carol
            .account
            .issue_device_list(
                carol.device.handle().clone(),
                2,
                2,
                vec![carol.account.issue_certificate(
                    carol.device.handle().clone(),
                    other.device.id(),
                    other.device.device_key(),
                    2,
                )],
            )
            .unwrap(),
    );
    // (Alice's failed attempt consumed her key for this message, as a rolled-back
    // transaction would not in dm-client; Carol has not seen it yet.)
    let Event::CommitApplied {
        removed,
        self_removed,
        ..
    } = deliver(&carol, &revoked, &out.commit).unwrap()
    else {
        panic!("expected a commit");
    };
    assert_eq!(removed, vec![carol.device.identity()]);
    assert!(self_removed);
}

#[test]
fn a_member_leaves_through_proposals_the_next_committer_carries_out() {
    let alice = Party::new("alice", 21);
    let bob = Party::new("bob", 22);
    let carol = Party::new("carol", 23);
    let (mut a, mut b, mut c) = start_group(&alice, &bob, &carol);
    let dir = directory_of(&[&alice, &bob, &carol]);
    let proposals = c.propose_leave(&carol.provider, &carol.device).unwrap();
    assert_eq!(proposals.len(), 1);
    for p in [&alice, &bob] {
        let event = deliver(p, &dir, &proposals[0]).unwrap();
        assert!(
            matches!(&event, Event::RemovalProposed { removed, .. } if removed == &carol.device.identity()),
            "{event:?}"
        );
    }
    // Bob, not the admin, commits the pending proposal.
    b = Conversation::load(bob.provider.storage(), &b.id())
        .unwrap()
        .unwrap();
    assert!(b.has_pending_proposals());
    let out = b
        .commit_changes(&bob.provider, &bob.device, &[], &[])
        .unwrap();
    assert_eq!(out.removed, vec![carol.device.identity()]);
    b.merge_pending_commit(&bob.provider).unwrap();
    let Event::CommitApplied { removed, .. } = deliver(&alice, &dir, &out.commit).unwrap() else {
        panic!("expected a commit");
    };
    assert_eq!(removed, vec![carol.device.identity()]);
    let Event::CommitApplied { self_removed, .. } = deliver(&carol, &dir, &out.commit).unwrap()
    else {
        panic!("expected a commit");
    };
    assert!(self_removed);
    a = Conversation::load(alice.provider.storage(), &a.id())
        .unwrap()
        .unwrap();
    c = Conversation::load(carol.provider.storage(), &c.id())
        .unwrap()
        .unwrap();
    assert!(!c.is_active());
    assert_eq!(a.members().len(), 2);
    // A proposal to remove another account's device is refused.
    let (mut a2, mut b2, _c2) = start_group(&alice, &bob, &Party::new("carol", 24));
    let (proposal, _) = b2
        .group
        .propose_remove_member(
            &bob.provider,
            bob.device.signer(),
            a2.group.own_leaf_index(),
        )
        .unwrap();
    let err = a2
        .process(
            &alice.provider,
            &dir,
            MlsMessageIn::tls_deserialize_exact(encode(&proposal).unwrap())
                .unwrap()
                .try_into_protocol_message()
                .unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(InvalidInput::NotAllowed(_))),
        "{err:?}"
    );
}
