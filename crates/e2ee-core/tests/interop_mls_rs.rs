//! Interoperability with an independent RFC 9420 implementation: AWS `mls-rs` (with its
//! RustCrypto provider) plays Bob, a client written only from PROTOCOL.md; Alice is
//! e2ee-core.
//!
//! Bob's account and device bytes (device certificate, device list, credential identity)
//! and the application content format are encoded and decoded here by hand, following
//! PROTOCOL.md §1.2–§1.4 and §4, not with the project's code. Bob encrypts his handshake
//! messages (PROTOCOL.md §3: every message is a PrivateMessage), which is mls-rs'
//! `encrypt_control_messages`.
//!
//! The flow: Bob publishes a key package; Alice validates it against Bob's device list,
//! creates a conversation and adds him; Bob joins from the Welcome and checks Alice's
//! credential against her device list; both exchange messages; Bob commits (a self-update)
//! and Alice follows; Alice commits and Bob follows; messages again; after every step both
//! sides agree on the epoch and the `epoch_authenticator`.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use dm_wire::api::ClaimedKeyPackage;
use dm_wire::cert::DeviceList;
use dm_wire::credential::CredentialIdentity;
use dm_wire::{DeviceId, Handle, MessageId};
use e2ee_core::conversation::process_incoming;
use e2ee_core::{AccountSecret, Content, Conversation, Device, Event, MemoryProvider};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use mls_rs::client_builder::MlsConfig;
use mls_rs::group::ReceivedMessage;
use mls_rs::identity::SigningIdentity;
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::mls_rules::{DefaultMlsRules, EncryptionOptions};
use mls_rs::{CipherSuite, CipherSuiteProvider as _, Client, CryptoProvider as _, MlsMessage};
use mls_rs_crypto_rustcrypto::RustCryptoProvider;
use openmls_traits::OpenMlsProvider as _;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;

/// PROTOCOL.md §3: `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`.
const SUITE: CipherSuite = CipherSuite::CURVE25519_CHACHA;
/// RFC 9420 §6: `wire_format` of a PrivateMessage.
const WIRE_FORMAT_PRIVATE_MESSAGE: u16 = 2;

// ---- PROTOCOL.md by hand -----------------------------------------------------------------

/// §1.1: Ed25519 over `label || 0x00 || body`.
fn sign_labeled(key: &SigningKey, label: &str, body: &[u8]) -> Vec<u8> {
    let mut input = label.as_bytes().to_vec();
    input.push(0);
    input.extend_from_slice(body);
    key.sign(&input).to_bytes().to_vec()
}

/// §1.4: `version(1) handle<u8> device_id[16]`.
fn credential_identity(handle: &str, device_id: &[u8; 16]) -> Vec<u8> {
    let mut out = vec![1, handle.len() as u8];
    out.extend_from_slice(handle.as_bytes());
    out.extend_from_slice(device_id);
    out
}

/// §1.2: `DeviceCertificateTBS || signature`.
fn device_certificate(
    account: &SigningKey,
    handle: &str,
    device_id: &[u8; 16],
    device_key: &[u8],
    issued_at: u64,
) -> Vec<u8> {
    let mut tbs = vec![1, handle.len() as u8];
    tbs.extend_from_slice(handle.as_bytes());
    tbs.extend_from_slice(account.verifying_key().as_bytes());
    tbs.extend_from_slice(device_id);
    tbs.extend_from_slice(device_key);
    tbs.extend_from_slice(&issued_at.to_be_bytes());
    let sig = sign_labeled(account, "dm-e2ee/v1/device-certificate", &tbs);
    tbs.extend_from_slice(&sig);
    tbs
}

/// §1.3: `DeviceListTBS || signature`, one certificate.
fn device_list(account: &SigningKey, handle: &str, certificate: &[u8], issued_at: u64) -> Vec<u8> {
    let mut tbs = vec![1, handle.len() as u8];
    tbs.extend_from_slice(handle.as_bytes());
    tbs.extend_from_slice(account.verifying_key().as_bytes());
    tbs.extend_from_slice(&1u64.to_be_bytes());
    tbs.extend_from_slice(&issued_at.to_be_bytes());
    tbs.extend_from_slice(&1u16.to_be_bytes());
    tbs.extend_from_slice(&(certificate.len() as u16).to_be_bytes());
    tbs.extend_from_slice(certificate);
    let sig = sign_labeled(account, "dm-e2ee/v1/device-list", &tbs);
    tbs.extend_from_slice(&sig);
    tbs
}

/// §1.2 read back: checks the certificate's signature under `account_key` and returns
/// `(handle, device_id, device_key)`.
fn read_certificate(cert: &[u8], account_key: &[u8; 32]) -> (String, [u8; 16], [u8; 32]) {
    assert_eq!(cert[0], 1, "certificate version");
    let n = usize::from(cert[1]);
    let handle = String::from_utf8(cert[2..2 + n].to_vec()).unwrap();
    let rest = &cert[2 + n..];
    assert_eq!(&rest[..32], account_key, "certificate of another account");
    let device_id: [u8; 16] = rest[32..48].try_into().unwrap();
    let device_key: [u8; 32] = rest[48..80].try_into().unwrap();
    let tbs_len = 2 + n + 32 + 16 + 32 + 8;
    assert_eq!(cert.len(), tbs_len + 64, "certificate length");
    let mut input = b"dm-e2ee/v1/device-certificate\0".to_vec();
    input.extend_from_slice(&cert[..tbs_len]);
    let sig = ed25519_dalek::Signature::from_slice(&cert[tbs_len..]).unwrap();
    VerifyingKey::from_bytes(account_key)
        .unwrap()
        .verify_strict(&input, &sig)
        .expect("certificate signature");
    (handle, device_id, device_key)
}

/// §4: encodes a text message, padded to a multiple of 256 bytes.
fn encode_text(message_id: [u8; 16], sent_at_ms: u64, text: &str) -> Vec<u8> {
    let mut out = vec![1, 1];
    out.extend_from_slice(&message_id);
    out.extend_from_slice(&sent_at_ms.to_be_bytes());
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    let padded = out.len().div_ceil(256) * 256;
    out.resize(padded, 0);
    out
}

/// §4: decodes a text message, checking version, kind and padding.
fn decode_text(bytes: &[u8]) -> ([u8; 16], u64, String) {
    assert_eq!(bytes[0], 1, "content version");
    assert_eq!(bytes[1], 1, "content kind");
    let message_id: [u8; 16] = bytes[2..18].try_into().unwrap();
    let sent_at = u64::from_be_bytes(bytes[18..26].try_into().unwrap());
    let len = u32::from_be_bytes(bytes[26..30].try_into().unwrap()) as usize;
    let text = String::from_utf8(bytes[30..30 + len].to_vec()).unwrap();
    assert_eq!(bytes.len() % 256, 0, "padded to 256");
    assert_eq!(
        bytes.len(),
        (30 + len).div_ceil(256) * 256,
        "minimal padding"
    );
    assert!(bytes[30 + len..].iter().all(|&b| b == 0), "zero padding");
    (message_id, sent_at, text)
}

/// RFC 9420 §6: `version(u16) wire_format(u16) ...` of an `MLSMessage`.
fn wire_format(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[2], bytes[3]])
}

// ---- the two parties ---------------------------------------------------------------------

/// Bob: an mls-rs client with an account built from PROTOCOL.md; returns the client, his
/// device id and his encoded device list.
fn bob_client() -> (Client<impl MlsConfig>, [u8; 16], Vec<u8>) {
    let crypto = RustCryptoProvider::default();
    let suite = crypto.cipher_suite_provider(SUITE).unwrap();
    let (secret, public) = suite.signature_key_generate().unwrap();
    let account = SigningKey::from_bytes(&[0xb0; 32]);
    let device_id = [0xb1; 16];
    let certificate = device_certificate(&account, "bob", &device_id, public.as_bytes(), 1000);
    let list = device_list(&account, "bob", &certificate, 1000);
    let credential = BasicCredential::new(credential_identity("bob", &device_id));
    let identity = SigningIdentity::new(credential.into_credential(), public);
    let mut encryption = EncryptionOptions::default();
    encryption.encrypt_control_messages = true;
    let client = Client::builder()
        .crypto_provider(crypto)
        .identity_provider(BasicIdentityProvider)
        .mls_rules(DefaultMlsRules::new().with_encryption_options(encryption))
        .signing_identity(identity, secret, SUITE)
        .build();
    (client, device_id, list)
}

struct Alice {
    provider: MemoryProvider,
    device: Device,
    device_list: DeviceList,
}

fn alice() -> Alice {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let provider = MemoryProvider::in_memory();
    let account = AccountSecret::generate(&mut rng);
    let handle = Handle::parse("alice").unwrap();
    let device = Device::generate(&provider, &mut rng, &account, handle.clone(), 1).unwrap();
    let device_list = account
        .issue_device_list(handle, 1, 1, vec![device.certificate().clone()])
        .unwrap();
    Alice {
        provider,
        device,
        device_list,
    }
}

fn alice_receives(alice: &Alice, directory: &HashMap<Handle, DeviceList>, bytes: &[u8]) -> Event {
    process_incoming(&alice.provider, directory, bytes).unwrap()
}

/// Both sides are in the same epoch with the same epoch authenticator.
fn same_epoch<C: MlsConfig>(conversation: &Conversation, bob_group: &mls_rs::Group<C>) {
    assert_eq!(conversation.epoch(), bob_group.current_epoch());
    assert_eq!(
        conversation.epoch_authenticator(),
        bob_group.epoch_authenticator().unwrap().as_bytes().to_vec()
    );
}

#[test]
fn mls_rs_client_joins_talks_and_commits_both_ways() {
    let alice = alice();
    let (bob, bob_device_id, bob_list_bytes) = bob_client();
    let bob_identity = CredentialIdentity {
        handle: Handle::parse("bob").unwrap(),
        device_id: DeviceId(bob_device_id),
    };

    // Alice's view of Bob: his device list, verified by the project's decoder.
    let bob_list = DeviceList::decode(&bob_list_bytes).unwrap();
    let directory: HashMap<Handle, DeviceList> = HashMap::from([
        (Handle::parse("alice").unwrap(), alice.device_list.clone()),
        (Handle::parse("bob").unwrap(), bob_list.clone()),
    ]);

    // Bob publishes a key package; Alice validates it as claimed from the relay.
    let key_package = bob
        .generate_key_package_message(Default::default(), Default::default(), None)
        .unwrap()
        .to_bytes()
        .unwrap();
    let validated = e2ee_core::key_package::validate_claimed(
        alice.provider.crypto(),
        &bob_list,
        &[ClaimedKeyPackage {
            device_id: DeviceId(bob_device_id),
            key_package,
        }],
    )
    .unwrap();

    // Alice creates the conversation and adds Bob; the relay would accept, then she merges.
    let mut conversation = Conversation::create(&alice.provider, &alice.device).unwrap();
    let invite = conversation
        .invite(&alice.provider, &alice.device, &validated)
        .unwrap();
    assert_eq!(wire_format(&invite.commit), WIRE_FORMAT_PRIVATE_MESSAGE);
    conversation
        .merge_pending_commit(&alice.provider)
        .unwrap()
        .unwrap();

    // Bob joins from the Welcome (ratchet tree in the extension) and authenticates Alice:
    // her credential identity names her device, whose certificate in her signed device list
    // carries the credential's signature key.
    let welcome = MlsMessage::from_bytes(invite.welcome.as_deref().unwrap()).unwrap();
    let (mut bob_group, info) = bob.join_group(None, &welcome, None).unwrap();
    let inviter = bob_group.member_at_index(info.sender).unwrap();
    let identity = inviter
        .signing_identity
        .credential
        .as_basic()
        .unwrap()
        .identifier
        .clone();
    let alice_cert = alice.device_list.devices[0].encode();
    let (handle, device_id, device_key) =
        read_certificate(&alice_cert, &alice.device_list.account_key.0);
    assert_eq!(identity, credential_identity(&handle, &device_id));
    assert_eq!(handle, "alice");
    assert_eq!(
        inviter.signing_identity.signature_key.as_bytes(),
        device_key
    );
    assert_eq!(bob_group.roster().members().len(), 2);

    same_epoch(&conversation, &bob_group);

    // Alice -> Bob: the content format decodes by hand.
    let hello = Content::text(
        MessageId([7; 16]),
        1_700_000_000_000,
        "hello bob, from openmls",
    );
    let sent = conversation
        .encrypt(&alice.provider, &alice.device, &hello)
        .unwrap();
    let ReceivedMessage::ApplicationMessage(received) = bob_group
        .process_incoming_message(MlsMessage::from_bytes(&sent).unwrap())
        .unwrap()
    else {
        panic!("expected an application message");
    };
    assert_eq!(received.sender_index, info.sender);
    assert_eq!(
        decode_text(received.data()),
        (
            [7; 16],
            1_700_000_000_000,
            "hello bob, from openmls".to_owned()
        )
    );

    // Bob -> Alice: hand-encoded content, accepted and attributed to Bob's device.
    let reply = encode_text([8; 16], 1_700_000_000_500, "hi alice, from mls-rs");
    let sent = bob_group
        .encrypt_application_message(&reply, vec![])
        .unwrap()
        .to_bytes()
        .unwrap();
    match alice_receives(&alice, &directory, &sent) {
        Event::Message {
            sender, content, ..
        } => {
            assert_eq!(sender, bob_identity);
            assert_eq!(content.as_text(), Some("hi alice, from mls-rs"));
            assert_eq!(content.message_id, MessageId([8; 16]));
        }
        other => panic!("expected a message, got {other:?}"),
    }

    // Bob commits (a self-update, encrypted): Alice checks his new leaf and follows.
    let commit = bob_group.commit(vec![]).unwrap();
    let commit_bytes = commit.commit_message.to_bytes().unwrap();
    assert_eq!(wire_format(&commit_bytes), WIRE_FORMAT_PRIVATE_MESSAGE);
    match alice_receives(&alice, &directory, &commit_bytes) {
        Event::CommitApplied {
            committer, epoch, ..
        } => {
            assert_eq!(committer, bob_identity);
            assert_eq!(epoch, 2);
        }
        other => panic!("expected a commit, got {other:?}"),
    }
    bob_group.apply_pending_commit().unwrap();
    let mut conversation = Conversation::load(alice.provider.storage(), &conversation.id())
        .unwrap()
        .unwrap();
    same_epoch(&conversation, &bob_group);

    // Alice commits (a self-update): Bob follows.
    let update = conversation
        .self_update(&alice.provider, &alice.device)
        .unwrap();
    assert_eq!(wire_format(&update.commit), WIRE_FORMAT_PRIVATE_MESSAGE);
    let processed = bob_group
        .process_incoming_message(MlsMessage::from_bytes(&update.commit).unwrap())
        .unwrap();
    assert!(matches!(processed, ReceivedMessage::Commit(_)));
    conversation
        .merge_pending_commit(&alice.provider)
        .unwrap()
        .unwrap();
    same_epoch(&conversation, &bob_group);
    assert_eq!(conversation.epoch(), 3);

    // Messages both ways in the new epoch.
    let again = Content::text(MessageId([9; 16]), 1_700_000_001_000, "epoch 3");
    let sent = conversation
        .encrypt(&alice.provider, &alice.device, &again)
        .unwrap();
    let ReceivedMessage::ApplicationMessage(received) = bob_group
        .process_incoming_message(MlsMessage::from_bytes(&sent).unwrap())
        .unwrap()
    else {
        panic!("expected an application message");
    };
    assert_eq!(decode_text(received.data()).2, "epoch 3");
    let sent = bob_group
        .encrypt_application_message(&encode_text([10; 16], 5, &"ü".repeat(200)), vec![])
        .unwrap()
        .to_bytes()
        .unwrap();
    match alice_receives(&alice, &directory, &sent) {
        Event::Message { content, .. } => {
            assert_eq!(content.as_text(), Some("ü".repeat(200).as_str()));
        }
        other => panic!("expected a message, got {other:?}"),
    }
}
