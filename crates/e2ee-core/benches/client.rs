//! e2ee-core beside raw openmls 0.9: the cost of what e2ee-core adds on top of MLS.
//!
//! Run with `cargo bench -p e2ee-core --bench client` (add a criterion filter after `--`
//! to run a subset, and set `E2EE_BENCH_SIZES=1000` to build only the groups of that size;
//! the summary table then lists only what ran).
//!
//! Both sides use ciphersuite `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`
//! (e2ee-core's [`CIPHERSUITE`]), openmls_rust_crypto's `RustCrypto` and openmls' in-memory
//! `MemoryStorage`. The raw side uses a provider identical to `OpenMlsRustCrypto` (which
//! cannot be built from an existing storage) and exactly e2ee-core's MLS parameters
//! (PURE_CIPHERTEXT, 5 past epochs, ratchet tree in the Welcome, e2ee-core's leaf
//! capabilities, a group context extension as large as e2ee-core's group metadata), so
//! that the ratio shows the cost of e2ee-core's own code. With openmls' default
//! capabilities and no group context extension instead, the raw add commit at N=1000 is
//! about 20% faster (measured once: 18 ms against 22 ms with these parameters): that
//! part of the difference comes from the protocol's parameters, not from e2ee-core.
//!
//! # What is measured (each e2ee-core operation beside the raw openmls one)
//!
//! * **Key package**: `key_package::generate` for one package (build + encode as an
//!   `MLSMessage`) against `KeyPackage::builder().build(..)` + the same encoding.
//! * **send+receive 1 KiB**: e2ee-core `Conversation::encrypt` (content format: header,
//!   1 KiB text, zero padding to 1,280 bytes) by one member, then TLS decoding and
//!   `Conversation::process` (decrypt, verify the sender against the directory, decode the
//!   content) by another; raw: `create_message` of 1,024 bytes, encoding, decoding,
//!   `process_message`. Both members keep their group in memory and the state runs on
//!   (every iteration is one more message; the per-message cost does not grow).
//! * **send+receive, loading**: the same, but the sender loads its group from storage
//!   before encrypting and the receiver goes through `process_incoming`, which loads the
//!   group from storage (what dm-client does); raw: `MlsGroup::load` on both sides.
//! * **add / remove / self-update commits**, as sender (stage the commit, encode it, then
//!   merge it as after the relay's acceptance) and as receiver (decode, process, check,
//!   merge the staged commit). e2ee-core adds with `Conversation::invite` (no update
//!   path, like openmls' `add_members_without_update`), removes with `commit_changes`
//!   and updates with `self_update`; raw uses `add_members_without_update`,
//!   `remove_members` and `self_update`. The removed member is a passive member; at N=2
//!   it is the receiver itself.
//! * **join** from a Welcome (decode, stage, verify, build the group) at N = 3, 11, 101
//!   and 1001: the Welcome that the add commit of the N−1 member group produces.
//! * One **HPKE seal** (`RustCrypto::hpke_seal`, the ciphersuite's HPKE config, 32-byte
//!   plaintext like a path secret, 128-byte info like MLS' `EncryptContext`).
//!
//! # Groups and state
//!
//! Each group of N members (N = 2, 10, 100, 1000) is built once per implementation: the
//! creator ("A") adds everyone in one add-only commit; member "B" joins from the Welcome;
//! the other N−2 members are key packages whose holders never process anything. After that
//! commit every parent node of the tree is blank, so an update path from A encrypts its
//! path secrets to all N−1 other leaves (filling the tree would need every passive member
//! to commit, which is not done here; a commit in a filled tree would need about log2(N)
//! seals instead). Then A's and B's in-memory storages are snapshotted. Every commit and
//! join iteration starts with an untimed setup that clones the snapshot into a fresh
//! provider and reloads the group (`MlsGroup::load` / `Conversation::load`), so that every
//! iteration starts from the same epoch; the commits that receivers process are made once
//! from those snapshots.
//!
//! # Timing and the summary table
//!
//! criterion drives every measurement through `iter_custom`; the routine times each
//! iteration itself with `Instant` (the setup is outside the timed part) and also records
//! each iteration's time. The table printed after criterion's output gives, per
//! operation, the **median of all recorded iterations** (warm-up included) of each
//! implementation and their ratio; the "flatness" lines give max/min over N of the
//! send+receive medians. Sample sizes and times are small for the operations that restore
//! state at N=100 and N=1000 (20 samples, flat sampling, one iteration per sample at
//! N=1000), so a single slow iteration on a busy machine can move a median by 10-20%;
//! rerun an operation with a filter before reading much into one ratio. The whole run
//! takes about 2 minutes on a shared 2-core machine, after a release build of about
//! 7 minutes from scratch.
#![allow(missing_docs)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{Bencher, BenchmarkGroup, Criterion, SamplingMode};
use e2ee_core::config::{self, CIPHERSUITE};
use e2ee_core::dm_wire::api::ClaimedKeyPackage;
use e2ee_core::dm_wire::cert::DeviceList;
use e2ee_core::dm_wire::credential::CredentialIdentity;
use e2ee_core::dm_wire::{GroupId, Handle, MessageId};
use e2ee_core::group::GroupMeta;
use e2ee_core::key_package::{self, ValidatedKeyPackage};
use e2ee_core::{
    AccountSecret, Content, Conversation, Device, Event, MemoryProvider, process_incoming,
};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, CredentialWithKey, Extension, Extensions, GroupId as MlsGroupId, KeyPackage,
    LeafNodeIndex, LeafNodeParameters, MlsGroup, MlsGroupCreateConfig, MlsMessageBodyIn,
    MlsMessageIn, MlsMessageOut, ProcessedMessageContent, ProtocolMessage, StagedWelcome,
    UnknownExtension,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::{MemoryStorage, RustCrypto};
use openmls_traits::OpenMlsProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Group sizes.
const SIZES: [usize; 4] = [2, 10, 100, 1000];
/// The text of send+receive.
const TEXT_LEN: usize = 1024;
const CORE: &str = "e2ee-core";
const RAW: &str = "openmls";

// ---------------------------------------------------------------------------------------
// Recording

/// Every timed iteration, by `op/n/implementation`.
#[derive(Default)]
struct Samples(RefCell<HashMap<String, Vec<Duration>>>);

impl Samples {
    fn add(&self, key: &str, times: Vec<Duration>) {
        self.0
            .borrow_mut()
            .entry(key.to_owned())
            .or_default()
            .extend(times);
    }

    fn median(&self, op: &str, n: usize, imp: &str) -> Option<Duration> {
        let map = self.0.borrow();
        let mut times = map.get(&key(op, n, imp))?.clone();
        if times.is_empty() {
            return None;
        }
        times.sort_unstable();
        Some(times[times.len() / 2])
    }
}

fn key(op: &str, n: usize, imp: &str) -> String {
    format!("{op}/{n}/{imp}")
}

/// Runs `setup` (untimed) and `routine` (timed) once per iteration, recording each time.
fn measure<S, R>(
    b: &mut Bencher<'_>,
    samples: &Samples,
    key: &str,
    mut setup: impl FnMut() -> S,
    mut routine: impl FnMut(&mut S) -> R,
) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        let mut times = Vec::with_capacity(usize::try_from(iters).unwrap_or(0));
        for _ in 0..iters {
            let mut state = setup();
            let start = Instant::now();
            let out = routine(&mut state);
            let took = start.elapsed();
            drop(black_box(out));
            drop(state);
            total += took;
            times.push(took);
        }
        samples.add(key, times);
        total
    });
}

/// A criterion group for one operation at one size. `heavy`: each iteration's untimed
/// setup (or the routine itself) costs milliseconds, so run only a few iterations.
fn group<'a>(
    c: &'a mut Criterion,
    op: &str,
    n: usize,
    heavy: bool,
) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(format!("{op}/n={n}"));
    if heavy && n >= 1000 {
        g.sample_size(20)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_millis(50));
    } else if heavy && n >= 100 {
        g.sample_size(20)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(20))
            .measurement_time(Duration::from_millis(500));
    } else {
        g.sample_size(20)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(700));
    }
    g
}

// ---------------------------------------------------------------------------------------
// e2ee-core side

/// A member whose MLS state is a storage snapshot.
struct CoreMember {
    device: Device,
    storage: MemoryStorage,
}

impl CoreMember {
    fn provider(&self) -> MemoryProvider {
        MemoryProvider::new(snapshot(&self.storage))
    }

    fn restore(&self, group: &GroupId) -> (MemoryProvider, Conversation) {
        let provider = self.provider();
        let conversation = Conversation::load(provider.storage(), group)
            .expect("storage readable")
            .expect("conversation in the snapshot");
        (provider, conversation)
    }
}

fn core_device(
    provider: &MemoryProvider,
    rng: &mut ChaCha20Rng,
    name: &str,
    directory: &mut HashMap<Handle, DeviceList>,
) -> Device {
    let account = AccountSecret::generate(rng);
    let handle = Handle::parse(name).expect("valid handle");
    let device =
        Device::generate(provider, rng, &account, handle.clone(), 1).expect("device generated");
    let list = account
        .issue_device_list(handle.clone(), 1, 1, vec![device.certificate().clone()])
        .expect("device list issued");
    directory.insert(handle, list);
    device
}

/// One key package of `device`, as the relay hands it out, validated by the claimer.
fn core_package(
    provider: &MemoryProvider,
    device: &Device,
    directory: &HashMap<Handle, DeviceList>,
) -> ValidatedKeyPackage {
    let bytes = key_package::generate(provider, device, 1)
        .expect("key package generated")
        .remove(0);
    let claimed = [ClaimedKeyPackage {
        device_id: device.id(),
        key_package: bytes,
    }];
    key_package::validate_claimed(
        &RustCrypto::default(),
        &directory[device.handle()],
        &claimed,
    )
    .expect("own key package validates")
    .remove(0)
}

struct CoreWorld {
    n: usize,
    group: GroupId,
    a: CoreMember,
    b: CoreMember,
    newcomer: CoreMember,
    newcomer_package: ValidatedKeyPackage,
    remove_target: CredentialIdentity,
    directory: HashMap<Handle, DeviceList>,
    /// Commits made once from A's snapshot, for the receiver benches.
    add_commit: Vec<u8>,
    add_welcome: Vec<u8>,
    remove_commit: Vec<u8>,
    update_commit: Vec<u8>,
}

impl CoreWorld {
    fn build(n: usize) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(n as u64);
        let mut directory = HashMap::new();
        let a_provider = MemoryProvider::in_memory();
        let a = core_device(&a_provider, &mut rng, "alice", &mut directory);
        let mut conversation =
            Conversation::create_group(&a_provider, &a, "bench").expect("group created");
        let b_provider = MemoryProvider::in_memory();
        let b = core_device(&b_provider, &mut rng, "bob", &mut directory);
        let mut packages = vec![core_package(&b_provider, &b, &directory)];
        let mut remove_target = b.identity();
        let passive = MemoryProvider::in_memory();
        for i in 2..n {
            let d = core_device(&passive, &mut rng, &format!("m{i:04}"), &mut directory);
            packages.push(core_package(&passive, &d, &directory));
            remove_target = d.identity();
        }
        let out = conversation
            .invite(&a_provider, &a, &packages)
            .expect("members invited");
        conversation
            .merge_pending_commit(&a_provider)
            .expect("invite merged");
        let welcome = out.welcome.expect("a Welcome for the added members");
        let joined = process_incoming(&b_provider, &directory, &welcome).expect("B joins");
        assert!(matches!(joined, Event::Joined { .. }), "{joined:?}");
        let x_provider = MemoryProvider::in_memory();
        let x = core_device(&x_provider, &mut rng, "newcomer", &mut directory);
        let newcomer_package = core_package(&x_provider, &x, &directory);
        let mut world = Self {
            n,
            group: conversation.id(),
            a: CoreMember {
                device: a,
                storage: snapshot(a_provider.storage()),
            },
            b: CoreMember {
                device: b,
                storage: snapshot(b_provider.storage()),
            },
            newcomer: CoreMember {
                device: x,
                storage: snapshot(x_provider.storage()),
            },
            newcomer_package,
            remove_target,
            directory,
            add_commit: Vec::new(),
            add_welcome: Vec::new(),
            remove_commit: Vec::new(),
            update_commit: Vec::new(),
        };
        let (p, mut c) = world.a.restore(&world.group);
        let out = world.add(&p, &mut c);
        world.add_commit = out.commit;
        world.add_welcome = out.welcome.expect("a Welcome for the newcomer");
        let (p, mut c) = world.a.restore(&world.group);
        world.remove_commit = world.remove(&p, &mut c).commit;
        let (p, mut c) = world.a.restore(&world.group);
        world.update_commit = c
            .self_update(&p, &world.a.device)
            .expect("self-update staged")
            .commit;
        world
    }

    fn add(&self, p: &MemoryProvider, c: &mut Conversation) -> e2ee_core::OutgoingCommit {
        c.invite(
            p,
            &self.a.device,
            std::slice::from_ref(&self.newcomer_package),
        )
        .expect("newcomer invited")
    }

    fn remove(&self, p: &MemoryProvider, c: &mut Conversation) -> e2ee_core::OutgoingCommit {
        c.commit_changes(
            p,
            &self.a.device,
            &[],
            std::slice::from_ref(&self.remove_target),
        )
        .expect("removal staged")
    }

    fn receive_commit(&self, p: &MemoryProvider, c: &mut Conversation, bytes: &[u8]) {
        let event = c
            .process(p, &self.directory, protocol(bytes))
            .expect("commit processed");
        assert!(matches!(event, Event::CommitApplied { .. }), "{event:?}");
    }
}

fn text_content() -> Content {
    Content::text(MessageId([7; 16]), 1_700_000_000_000, "x".repeat(TEXT_LEN))
}

// ---------------------------------------------------------------------------------------
// Raw openmls side

/// `OpenMlsRustCrypto` with a given storage.
struct RawProvider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl RawProvider {
    fn new(storage: MemoryStorage) -> Self {
        Self {
            crypto: RustCrypto::default(),
            storage,
        }
    }
}

impl OpenMlsProvider for RawProvider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &MemoryStorage {
        &self.storage
    }

    fn crypto(&self) -> &RustCrypto {
        &self.crypto
    }

    fn rand(&self) -> &RustCrypto {
        &self.crypto
    }
}

struct RawMember {
    signer: SignatureKeyPair,
    storage: MemoryStorage,
}

impl RawMember {
    fn restore(&self, group: &MlsGroupId) -> (RawProvider, MlsGroup) {
        let provider = RawProvider::new(snapshot(&self.storage));
        let group = MlsGroup::load(provider.storage(), group)
            .expect("storage readable")
            .expect("group in the snapshot");
        (provider, group)
    }
}

fn raw_identity(provider: &RawProvider, name: &str) -> (SignatureKeyPair, CredentialWithKey) {
    let signer =
        SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).expect("signature key pair");
    signer.store(provider.storage()).expect("signer stored");
    let credential = CredentialWithKey {
        credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
        signature_key: signer.public().into(),
    };
    (signer, credential)
}

fn raw_package(
    provider: &RawProvider,
    signer: &SignatureKeyPair,
    credential: &CredentialWithKey,
) -> KeyPackage {
    KeyPackage::builder()
        .leaf_node_capabilities(config::capabilities())
        .build(CIPHERSUITE, provider, signer, credential.clone())
        .expect("key package built")
        .key_package()
        .clone()
}

/// The same MLS parameters as e2ee-core's group conversations (plain openmls configs,
/// taken from `e2ee_core::config`): ciphersuite, PURE_CIPHERTEXT, 5 past epochs, ratchet
/// tree in the Welcome, leaf capabilities, and a group context extension of the size of
/// e2ee-core's group metadata.
fn raw_create_config() -> MlsGroupCreateConfig {
    let meta = GroupMeta {
        admin: Handle::parse("alice").expect("valid handle"),
        name: "bench".into(),
    };
    let extensions = Extensions::single(Extension::Unknown(
        config::GROUP_META_EXTENSION,
        UnknownExtension(meta.encode()),
    ))
    .expect("one extension");
    config::create_config_with(extensions)
}

fn raw_join(provider: &RawProvider, welcome: &[u8]) -> MlsGroup {
    let message = MlsMessageIn::tls_deserialize_exact(welcome).expect("Welcome decodes");
    let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
        panic!("not a Welcome");
    };
    StagedWelcome::new_from_welcome(provider, &config::join_config(), welcome, None)
        .expect("Welcome staged")
        .into_group(provider)
        .expect("group joined")
}

struct RawWorld {
    group: MlsGroupId,
    a: RawMember,
    b: RawMember,
    newcomer: RawMember,
    newcomer_package: KeyPackage,
    remove_target: LeafNodeIndex,
    add_commit: Vec<u8>,
    add_welcome: Vec<u8>,
    remove_commit: Vec<u8>,
    update_commit: Vec<u8>,
}

impl RawWorld {
    fn build(n: usize) -> Self {
        let a_provider = RawProvider::new(MemoryStorage::default());
        let (a_signer, a_credential) = raw_identity(&a_provider, "alice");
        let mut group = MlsGroup::new(&a_provider, &a_signer, &raw_create_config(), a_credential)
            .expect("group created");
        let b_provider = RawProvider::new(MemoryStorage::default());
        let (b_signer, b_credential) = raw_identity(&b_provider, "bob");
        let mut packages = vec![raw_package(&b_provider, &b_signer, &b_credential)];
        let passive = RawProvider::new(MemoryStorage::default());
        for i in 2..n {
            let (s, c) = raw_identity(&passive, &format!("m{i:04}"));
            packages.push(raw_package(&passive, &s, &c));
        }
        let (_, welcome, _) = group
            .add_members_without_update(&a_provider, &a_signer, &packages)
            .expect("members added");
        group.merge_pending_commit(&a_provider).expect("add merged");
        raw_join(&b_provider, &encode(&welcome));
        let x_provider = RawProvider::new(MemoryStorage::default());
        let (x_signer, x_credential) = raw_identity(&x_provider, "newcomer");
        let newcomer_package = raw_package(&x_provider, &x_signer, &x_credential);
        let mut world = Self {
            group: group.group_id().clone(),
            a: RawMember {
                signer: a_signer,
                storage: snapshot(a_provider.storage()),
            },
            b: RawMember {
                signer: b_signer,
                storage: snapshot(b_provider.storage()),
            },
            newcomer: RawMember {
                signer: x_signer,
                storage: snapshot(x_provider.storage()),
            },
            newcomer_package,
            remove_target: LeafNodeIndex::new(u32::try_from(n - 1).expect("small group")),
            add_commit: Vec::new(),
            add_welcome: Vec::new(),
            remove_commit: Vec::new(),
            update_commit: Vec::new(),
        };
        let (p, mut g) = world.a.restore(&world.group);
        let (commit, welcome) = world.add(&p, &mut g);
        world.add_commit = commit;
        world.add_welcome = welcome;
        let (p, mut g) = world.a.restore(&world.group);
        world.remove_commit = world.remove(&p, &mut g);
        let (p, mut g) = world.a.restore(&world.group);
        world.update_commit = world.update(&p, &mut g);
        world
    }

    fn add(&self, p: &RawProvider, g: &mut MlsGroup) -> (Vec<u8>, Vec<u8>) {
        let (commit, welcome, _) = g
            .add_members_without_update(
                p,
                &self.a.signer,
                std::slice::from_ref(&self.newcomer_package),
            )
            .expect("newcomer added");
        (encode(&commit), encode(&welcome))
    }

    fn remove(&self, p: &RawProvider, g: &mut MlsGroup) -> Vec<u8> {
        let (commit, _, _) = g
            .remove_members(p, &self.a.signer, &[self.remove_target])
            .expect("removal staged");
        encode(&commit)
    }

    fn update(&self, p: &RawProvider, g: &mut MlsGroup) -> Vec<u8> {
        let bundle = g
            .self_update(p, &self.a.signer, LeafNodeParameters::default())
            .expect("self-update staged");
        encode(bundle.commit())
    }

    fn receive_commit(p: &RawProvider, g: &mut MlsGroup, bytes: &[u8]) {
        let processed = g
            .process_message(p, protocol(bytes))
            .expect("commit processed");
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            panic!("not a commit");
        };
        g.merge_staged_commit(p, *staged).expect("commit merged");
    }
}

/// A copy of an in-memory storage (`MemoryStorage` is `Clone` only with openmls'
/// test-utils feature; its map is public).
fn snapshot(storage: &MemoryStorage) -> MemoryStorage {
    let values = storage
        .values
        .read()
        .expect("storage lock not poisoned")
        .clone();
    MemoryStorage {
        values: std::sync::RwLock::new(values),
    }
}

fn encode(message: &MlsMessageOut) -> Vec<u8> {
    message.tls_serialize_detached().expect("message encodes")
}

fn protocol(bytes: &[u8]) -> ProtocolMessage {
    MlsMessageIn::tls_deserialize_exact(bytes)
        .expect("message decodes")
        .try_into_protocol_message()
        .expect("a protocol message")
}

fn raw_receive_text(p: &RawProvider, g: &mut MlsGroup, bytes: &[u8]) -> usize {
    let processed = g
        .process_message(p, protocol(bytes))
        .expect("message processed");
    let ProcessedMessageContent::ApplicationMessage(app) = processed.into_content() else {
        panic!("not an application message");
    };
    app.into_bytes().len()
}

fn core_text_len(event: Event) -> usize {
    let Event::Message { content, .. } = event else {
        panic!("not a message: {event:?}");
    };
    content.as_text().map_or(0, str::len)
}

// ---------------------------------------------------------------------------------------
// Benchmarks

fn bench_key_packages(c: &mut Criterion, samples: &Samples) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let core_provider = MemoryProvider::in_memory();
    let device = core_device(&core_provider, &mut rng, "alice", &mut HashMap::new());
    let raw_provider = RawProvider::new(MemoryStorage::default());
    let (signer, credential) = raw_identity(&raw_provider, "alice");
    let mut g = group(c, "key_package", 0, false);
    g.bench_function(CORE, |b| {
        measure(
            b,
            samples,
            &key("key_package", 0, CORE),
            || (),
            |_| key_package::generate(&core_provider, &device, 1).expect("generated"),
        );
    });
    g.bench_function(RAW, |b| {
        measure(
            b,
            samples,
            &key("key_package", 0, RAW),
            || (),
            |_| {
                let bundle = KeyPackage::builder()
                    .leaf_node_capabilities(config::capabilities())
                    .build(CIPHERSUITE, &raw_provider, &signer, credential.clone())
                    .expect("built");
                encode(&MlsMessageOut::from(bundle.key_package().clone()))
            },
        );
    });
    g.finish();
}

fn bench_send_receive(c: &mut Criterion, samples: &Samples, core: &CoreWorld, raw: &RawWorld) {
    let n = core.n;
    let op = "send_receive";
    let content = text_content();
    let text = vec![b'x'; TEXT_LEN];
    let mut g = group(c, op, n, false);
    {
        let (ap, mut ac) = core.a.restore(&core.group);
        let (bp, mut bc) = core.b.restore(&core.group);
        g.bench_function(CORE, |b| {
            measure(
                b,
                samples,
                &key(op, n, CORE),
                || (),
                |_| {
                    let bytes = ac
                        .encrypt(&ap, &core.a.device, &content)
                        .expect("encrypted");
                    let event = bc
                        .process(&bp, &core.directory, protocol(&bytes))
                        .expect("processed");
                    core_text_len(event)
                },
            );
        });
    }
    {
        let (ap, mut ag) = raw.a.restore(&raw.group);
        let (bp, mut bg) = raw.b.restore(&raw.group);
        g.bench_function(RAW, |b| {
            measure(
                b,
                samples,
                &key(op, n, RAW),
                || (),
                |_| {
                    let message = ag.create_message(&ap, &raw.a.signer, &text).expect("sent");
                    raw_receive_text(&bp, &mut bg, &encode(&message))
                },
            );
        });
    }
    g.finish();

    // The same through storage: each side loads its group for every message.
    let op = "send_receive_load";
    let mut g = group(c, op, n, n >= 100);
    {
        let ap = core.a.provider();
        let bp = core.b.provider();
        g.bench_function(CORE, |b| {
            measure(
                b,
                samples,
                &key(op, n, CORE),
                || (),
                |_| {
                    let mut ac = Conversation::load(ap.storage(), &core.group)
                        .expect("readable")
                        .expect("present");
                    let bytes = ac
                        .encrypt(&ap, &core.a.device, &content)
                        .expect("encrypted");
                    let event = process_incoming(&bp, &core.directory, &bytes).expect("processed");
                    core_text_len(event)
                },
            );
        });
    }
    {
        let ap = RawProvider::new(snapshot(&raw.a.storage));
        let bp = RawProvider::new(snapshot(&raw.b.storage));
        g.bench_function(RAW, |b| {
            measure(
                b,
                samples,
                &key(op, n, RAW),
                || (),
                |_| {
                    let mut ag = MlsGroup::load(ap.storage(), &raw.group)
                        .expect("readable")
                        .expect("present");
                    let message = ag.create_message(&ap, &raw.a.signer, &text).expect("sent");
                    let bytes = encode(&message);
                    let mut bg = MlsGroup::load(bp.storage(), &raw.group)
                        .expect("readable")
                        .expect("present");
                    raw_receive_text(&bp, &mut bg, &bytes)
                },
            );
        });
    }
    g.finish();
}

/// Sender and receiver of one kind of commit.
#[derive(Clone, Copy)]
enum Kind {
    Add,
    Remove,
    Update,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Add => "add",
            Kind::Remove => "remove",
            Kind::Update => "update",
        }
    }
}

fn bench_commits(c: &mut Criterion, samples: &Samples, core: &CoreWorld, raw: &RawWorld) {
    let n = core.n;
    for kind in [Kind::Add, Kind::Remove, Kind::Update] {
        let op = format!("{}_sender", kind.name());
        let mut g = group(c, &op, n, true);
        g.bench_function(CORE, |b| {
            measure(
                b,
                samples,
                &key(&op, n, CORE),
                || core.a.restore(&core.group),
                |(p, conv)| {
                    let out = match kind {
                        Kind::Add => core.add(p, conv),
                        Kind::Remove => core.remove(p, conv),
                        Kind::Update => conv.self_update(p, &core.a.device).expect("staged"),
                    };
                    conv.merge_pending_commit(p).expect("merged");
                    out
                },
            );
        });
        g.bench_function(RAW, |b| {
            measure(
                b,
                samples,
                &key(&op, n, RAW),
                || raw.a.restore(&raw.group),
                |(p, grp)| {
                    let out = match kind {
                        Kind::Add => raw.add(p, grp).0,
                        Kind::Remove => raw.remove(p, grp),
                        Kind::Update => raw.update(p, grp),
                    };
                    grp.merge_pending_commit(p).expect("merged");
                    out
                },
            );
        });
        g.finish();

        let op = format!("{}_receiver", kind.name());
        let (core_commit, raw_commit) = match kind {
            Kind::Add => (&core.add_commit, &raw.add_commit),
            Kind::Remove => (&core.remove_commit, &raw.remove_commit),
            Kind::Update => (&core.update_commit, &raw.update_commit),
        };
        let mut g = group(c, &op, n, true);
        g.bench_function(CORE, |b| {
            measure(
                b,
                samples,
                &key(&op, n, CORE),
                || core.b.restore(&core.group),
                |(p, conv)| core.receive_commit(p, conv, core_commit),
            );
        });
        g.bench_function(RAW, |b| {
            measure(
                b,
                samples,
                &key(&op, n, RAW),
                || raw.b.restore(&raw.group),
                |(p, grp)| RawWorld::receive_commit(p, grp, raw_commit),
            );
        });
        g.finish();
    }
}

fn bench_join(c: &mut Criterion, samples: &Samples, core: &CoreWorld, raw: &RawWorld) {
    let n = core.n + 1;
    let op = "join";
    let mut g = group(c, op, n, true);
    g.bench_function(CORE, |b| {
        measure(
            b,
            samples,
            &key(op, n, CORE),
            || core.newcomer.provider(),
            |p| {
                let event =
                    process_incoming(&*p, &core.directory, &core.add_welcome).expect("joined");
                assert!(matches!(event, Event::Joined { .. }), "{event:?}");
                event
            },
        );
    });
    g.bench_function(RAW, |b| {
        measure(
            b,
            samples,
            &key(op, n, RAW),
            || RawProvider::new(snapshot(&raw.newcomer.storage)),
            |p| raw_join(p, &raw.add_welcome),
        );
    });
    g.finish();
}

fn bench_seal(c: &mut Criterion, samples: &Samples) {
    let crypto = RustCrypto::default();
    let pair = crypto
        .derive_hpke_keypair(CIPHERSUITE.hpke_config(), &[7; 32])
        .expect("HPKE key pair");
    let info = [0x42u8; 128];
    let secret = [9u8; 32];
    let mut g = group(c, "hpke_seal", 0, false);
    g.bench_function("rust_crypto", |b| {
        measure(
            b,
            samples,
            &key("hpke_seal", 0, RAW),
            || (),
            |_| {
                crypto
                    .hpke_seal(CIPHERSUITE.hpke_config(), &pair.public, &info, &[], &secret)
                    .expect("sealed")
            },
        );
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Summary

fn show(d: Option<Duration>) -> String {
    let Some(d) = d else {
        return "-".into();
    };
    let ns = d.as_nanos() as f64;
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => format!("{:.2}", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    }
}

fn print_summary(samples: &Samples) {
    println!();
    println!("Summary: median time per operation over all recorded iterations (warm-up included)");
    println!(
        "{:<28} {:>5} {:>12} {:>12} {:>7}",
        "operation", "N", CORE, RAW, "ratio"
    );
    let row = |label: &str, op: &str, n: usize| {
        let core = samples.median(op, n, CORE);
        let raw = samples.median(op, n, RAW);
        if core.is_none() && raw.is_none() {
            return;
        }
        let size = if n == 0 {
            "-".to_owned()
        } else {
            n.to_string()
        };
        println!(
            "{label:<28} {size:>5} {:>12} {:>12} {:>7}",
            show(core),
            show(raw),
            ratio(core, raw)
        );
    };
    row("key package", "key_package", 0);
    for n in SIZES {
        row("send+receive 1 KiB", "send_receive", n);
    }
    for n in SIZES {
        row("send+receive, loading", "send_receive_load", n);
    }
    for kind in ["add", "remove", "update"] {
        for side in ["sender", "receiver"] {
            for n in SIZES {
                row(
                    &format!("commit {kind} ({side})"),
                    &format!("{kind}_{side}"),
                    n,
                );
            }
        }
    }
    for n in SIZES {
        row("join from Welcome", "join", n + 1);
    }

    for (label, op) in [
        ("send+receive 1 KiB", "send_receive"),
        ("send+receive, loading", "send_receive_load"),
    ] {
        for imp in [CORE, RAW] {
            let times: Vec<Duration> = SIZES
                .iter()
                .filter_map(|&n| samples.median(op, n, imp))
                .collect();
            if let (Some(max), Some(min)) = (times.iter().max(), times.iter().min()) {
                println!(
                    "flatness of {label} ({imp}): max/min over N = {:.2} (over {} sizes)",
                    max.as_secs_f64() / min.as_secs_f64(),
                    times.len()
                );
            }
        }
    }

    let seal = samples.median("hpke_seal", 0, RAW);
    println!(
        "HPKE seal (32-byte plaintext, 128-byte info): {}",
        show(seal)
    );
    let n = 1000;
    if let Some(seal) = seal {
        let seals = seal.as_secs_f64() * (n - 1) as f64;
        for imp in [CORE, RAW] {
            if let Some(commit) = samples.median("update_sender", n, imp) {
                println!(
                    "self-update commit (sender) at N={n} / ({} x seal), {imp}: {:.2}",
                    n - 1,
                    commit.as_secs_f64() / seals
                );
            }
        }
        println!(
            "  tree state: right after one add-only commit that added all members, every parent \
             node blank, so the update path is encrypted to all N-1 other leaves (the filled-tree \
             case, about log2(N) seals, is not measured)"
        );
    }
}

/// The group sizes to run: all of [`SIZES`], or those listed in `E2EE_BENCH_SIZES`
/// (comma-separated, e.g. `1000` when profiling one operation: building a large group
/// takes seconds even when criterion's filter skips its benchmarks).
fn sizes() -> Vec<usize> {
    match std::env::var("E2EE_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("E2EE_BENCH_SIZES lists group sizes")
            })
            .collect(),
        Err(_) => SIZES.to_vec(),
    }
}

fn main() {
    assert_eq!(u16::from(CIPHERSUITE), 0x0003);
    let samples = Samples::default();
    let mut c = Criterion::default().configure_from_args();
    bench_key_packages(&mut c, &samples);
    bench_seal(&mut c, &samples);
    for n in sizes() {
        let core = CoreWorld::build(n);
        let raw = RawWorld::build(n);
        bench_send_receive(&mut c, &samples, &core, &raw);
        bench_commits(&mut c, &samples, &core, &raw);
        bench_join(&mut c, &samples, &core, &raw);
    }
    c.final_summary();
    print_summary(&samples);
}
