//! RFC 9420 conformance: the MLS working group's passive-client test vectors
//! (`passive-client-welcome.json`, `passive-client-handling-commit.json`,
//! `passive-client-random.json`, see `FORMAT.md` "Passive Client Scenarios")
//! run through openmls' **public** API with e2ee-core's join configuration.
//!
//! openmls' own runner for these vectors needs its `test-utils` feature. We must
//! not enable it (cargo unifies features, so a dev-dependency would switch it on
//! for the product too), hence two work-arounds, both described in
//! `shared/notes/openmls-0.9.md` §3:
//!
//! * the vector's `KeyPackage` and private keys are injected into storage by a
//!   serde-JSON round trip of a freshly built template `KeyPackageBundle`
//!   (`KeyPackageBundle::new` is `test-utils` only);
//! * the join uses `skip_lifetime_validation()`, because the leaf nodes in the
//!   vectors' trees expired in 2024/2025.
//!
//! The vectors are read from `../shared/mls-test-vectors/` next to the
//! workspace root, or from `$MLS_TEST_VECTORS_DIR`. If that folder is missing the
//! tests fail when `CI=true` and are skipped (with a notice) otherwise.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    panic::{AssertUnwindSafe, catch_unwind},
    time::Instant,
};

use e2ee_core::config;
use openmls::{
    prelude::{
        tls_codec::{Deserialize as _, Serialize as _},
        *,
    },
    schedule::PreSharedKeyId,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use serde::Deserialize;

mod common;
use common::{Context as _, inject_key_package, panic_message, vectors_dir};

/// How many resumption PSKs the passive client must keep at least. Some
/// handling-commit vectors commit `PreSharedKey` proposals that reference the
/// resumption PSK of an earlier epoch. Measured with openmls 0.9.2: with 0 or 1,
/// 12 of the 39 supported handling-commit cases fail with
/// `InvalidCommit(PskError(KeyNotFound))`; 2 is enough (openmls' own runner uses 16).
const VECTOR_RESUMPTION_PSKS: usize = 2;

// -------------------------------------------------------------------------------------------------
// Configuration
// -------------------------------------------------------------------------------------------------

/// The product's join configuration (`e2ee_core::config::join_config()`) with
/// exactly these two settings changed; everything else (padding, past epochs,
/// sender ratchet, ratchet tree extension) stays the product's:
///
/// * `wire_format_policy`: **incoming** goes from `AlwaysCiphertext` to `Mixed`.
///   The vectors deliver proposals and commits as `PublicMessage` as well as
///   `PrivateMessage`; with the product's policy every handling-commit case and
///   the random case fail with `IncompatibleWireFormat`. The outgoing half stays
///   the product's (a passive client never sends anything).
/// * `number_of_resumption_psks`: from 0 (openmls' default, which the product
///   keeps at the time of writing) to [`VECTOR_RESUMPTION_PSKS`], because some
///   vectors commit the resumption PSK of an earlier epoch.
///
/// It starts from `e2ee_core::config::join_config_builder()`, the product's
/// settings as a builder, and first checks that this builder still produces
/// exactly `join_config()`.
fn vector_join_config() -> MlsGroupJoinConfig {
    let product = config::join_config();
    assert_eq!(
        config::join_config_builder().build(),
        product,
        "e2ee_core::config::join_config_builder() must build join_config()"
    );
    let wire_format_policy = match product.wire_format_policy().outgoing() {
        OutgoingWireFormatPolicy::AlwaysCiphertext => MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY,
        OutgoingWireFormatPolicy::AlwaysPlaintext => MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
    };
    config::join_config_builder()
        .wire_format_policy(wire_format_policy)
        .number_of_resumption_psks(VECTOR_RESUMPTION_PSKS)
        .build()
}

// -------------------------------------------------------------------------------------------------
// Vector format (FORMAT.md, "Passive Client Scenarios")
// -------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PassiveClientCase {
    cipher_suite: u16,
    external_psks: Vec<VectorPsk>,
    /// Serialized `MLSMessage(KeyPackage)`.
    #[serde(with = "hex::serde")]
    key_package: Vec<u8>,
    #[serde(with = "hex::serde")]
    signature_priv: Vec<u8>,
    #[serde(with = "hex::serde")]
    encryption_priv: Vec<u8>,
    #[serde(with = "hex::serde")]
    init_priv: Vec<u8>,
    /// Serialized `MLSMessage(Welcome)`.
    #[serde(with = "hex::serde")]
    welcome: Vec<u8>,
    /// Serialized `optional<Node> ratchet_tree<V>`; `None` if the tree is in the Welcome.
    ratchet_tree: Option<HexBytes>,
    #[serde(with = "hex::serde")]
    initial_epoch_authenticator: Vec<u8>,
    epochs: Vec<VectorEpoch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorPsk {
    #[serde(with = "hex::serde")]
    psk_id: Vec<u8>,
    #[serde(with = "hex::serde")]
    psk: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorEpoch {
    /// Serialized `MLSMessage`s (`PublicMessage` or `PrivateMessage`).
    proposals: Vec<HexBytes>,
    /// Serialized `MLSMessage` (`PublicMessage` or `PrivateMessage`).
    #[serde(with = "hex::serde")]
    commit: Vec<u8>,
    #[serde(with = "hex::serde")]
    epoch_authenticator: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(transparent)]
struct HexBytes(#[serde(with = "hex::serde")] Vec<u8>);

// -------------------------------------------------------------------------------------------------
// Tests
// -------------------------------------------------------------------------------------------------

#[test]
fn passive_client_welcome() {
    run_vector_file("passive-client-welcome", true);
}

#[test]
fn passive_client_handling_commit() {
    run_vector_file("passive-client-handling-commit", true);
}

/// The long one: a single group followed through 200 random epochs. It takes a
/// few seconds in this workspace's debug profile (which optimises the crypto
/// crates); the openmls notes measured about 50 s without that. Its own test,
/// so it runs in parallel with the others and can be filtered out.
#[test]
fn passive_client_random() {
    // This file only has ciphersuite 0x0001, so it cannot cover the product's.
    run_vector_file("passive-client-random", false);
}

// -------------------------------------------------------------------------------------------------
// Runner
// -------------------------------------------------------------------------------------------------

/// Result of one file.
#[derive(Default)]
struct Summary {
    passed: usize,
    skipped: usize,
    failures: Vec<String>,
    passed_per_suite: BTreeMap<u16, usize>,
}

/// Outcome of one case that did not fail.
enum Outcome {
    Passed,
    SkippedUnsupportedCiphersuite,
}

/// Runs every case of `<name>.json` and asserts that all cases of the
/// ciphersuites the crypto provider supports pass. With `covers_product_suite`
/// it also asserts that at least one case used the product's ciphersuite.
fn run_vector_file(name: &str, covers_product_suite: bool) {
    let Some(dir) = vectors_dir() else {
        return;
    };
    let path = dir.join(format!("{name}.json"));
    let json = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("cannot read the test vector file {}: {e}", path.display()));
    let cases: Vec<PassiveClientCase> = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "{} is not a passive-client vector file: {e}",
            path.display()
        )
    });

    let join_config = vector_join_config();
    let started = Instant::now();
    let mut summary = Summary::default();
    for (index, case) in cases.iter().enumerate() {
        let suite = case.cipher_suite;
        // Catch panics inside openmls too, so one bad case does not hide the others.
        let result = catch_unwind(AssertUnwindSafe(|| run_case(case, &join_config)))
            .unwrap_or_else(|panic| Err(format!("panicked: {}", panic_message(&*panic))));
        match result {
            Ok(Outcome::Passed) => {
                summary.passed += 1;
                *summary.passed_per_suite.entry(suite).or_default() += 1;
            }
            Ok(Outcome::SkippedUnsupportedCiphersuite) => summary.skipped += 1,
            Err(error) => summary
                .failures
                .push(format!("case #{index} (ciphersuite {suite:#06x}): {error}")),
        }
    }
    let elapsed = started.elapsed();

    println!(
        "{name}: {} passed, {} failed, {} skipped (ciphersuite unsupported by the crypto provider) \
         in {:.1} s; passed per ciphersuite: {:?}",
        summary.passed,
        summary.failures.len(),
        summary.skipped,
        elapsed.as_secs_f64(),
        summary.passed_per_suite,
    );
    for failure in &summary.failures {
        println!("{name}: FAILED {failure}");
    }

    assert!(
        summary.failures.is_empty(),
        "{name}: {} case(s) failed:\n{}",
        summary.failures.len(),
        summary.failures.join("\n")
    );
    assert!(summary.passed > 0, "{name}: no case passed");
    assert_eq!(
        summary.passed + summary.skipped,
        cases.len(),
        "{name}: passed + skipped must account for every case"
    );
    if covers_product_suite {
        let product_suite = u16::from(config::CIPHERSUITE);
        assert!(
            summary
                .passed_per_suite
                .get(&product_suite)
                .copied()
                .unwrap_or(0)
                > 0,
            "{name}: no case of the product's ciphersuite {product_suite:#06x} passed"
        );
    }
}

/// One scenario, as FORMAT.md's "Verification" list describes it.
fn run_case(case: &PassiveClientCase, join_config: &MlsGroupJoinConfig) -> Result<Outcome, String> {
    let provider = OpenMlsRustCrypto::default();
    let ciphersuite = Ciphersuite::try_from(case.cipher_suite).context("unknown ciphersuite")?;
    if provider.crypto().supports(ciphersuite).is_err() {
        return Ok(Outcome::SkippedUnsupportedCiphersuite);
    }

    for psk in &case.external_psks {
        // The nonce is not stored; an empty one is fine for storing the secret.
        PreSharedKeyId::external(psk.psk_id.clone(), Vec::new())
            .store(&provider, &psk.psk)
            .context("storing an external PSK")?;
    }

    let key_package = inject_key_package(
        &provider,
        ciphersuite,
        &case.key_package,
        &case.init_priv,
        Some(&case.encryption_priv),
    )?;
    check_private_keys(&provider, ciphersuite, &key_package, case)?;

    let mut group = join(&provider, join_config, case)?;
    check_epoch_authenticator(&group, &case.initial_epoch_authenticator, "after the join")?;

    for (epoch_index, epoch) in case.epochs.iter().enumerate() {
        let at = |what: &str| format!("epoch #{epoch_index}: {what}");
        for (proposal_index, proposal) in epoch.proposals.iter().enumerate() {
            process(
                &provider,
                &mut group,
                &proposal.0,
                Expect::Proposal,
                &at(&format!("proposal #{proposal_index}")),
            )?;
        }
        process(
            &provider,
            &mut group,
            &epoch.commit,
            Expect::Commit,
            &at("commit"),
        )?;
        check_epoch_authenticator(&group, &epoch.epoch_authenticator, &at("after the commit"))?;
    }
    Ok(Outcome::Passed)
}

/// First verification step: `signature_priv`, `encryption_priv` and `init_priv`
/// belong to the public keys in the `KeyPackage`.
fn check_private_keys(
    provider: &OpenMlsRustCrypto,
    ciphersuite: Ciphersuite,
    key_package: &KeyPackage,
    case: &PassiveClientCase,
) -> Result<(), String> {
    let crypto = provider.crypto();
    if key_package.ciphersuite() != ciphersuite {
        return Err(format!(
            "the KeyPackage's ciphersuite {} differs from cipher_suite",
            key_package.ciphersuite()
        ));
    }

    let leaf = key_package.leaf_node();
    let message = b"passive-client key check";
    let signature = crypto
        .sign(
            ciphersuite.signature_algorithm(),
            message,
            &case.signature_priv,
        )
        .context("signing with signature_priv")?;
    crypto
        .verify_signature(
            ciphersuite.signature_algorithm(),
            message,
            leaf.signature_key().as_slice(),
            &signature,
        )
        .context("signature_priv does not match the leaf's signature key")?;

    check_hpke_key_pair(
        provider,
        ciphersuite,
        key_package.hpke_init_key().as_slice(),
        &case.init_priv,
    )
    .map_err(|e| format!("init_priv does not match the KeyPackage's init_key: {e}"))?;
    // `EncryptionKey` exposes its bytes only through its TLS encoding (a VLBytes).
    let encryption_key = leaf
        .encryption_key()
        .tls_serialize_detached()
        .context("encoding the leaf's encryption key")?;
    let encryption_key =
        VLBytes::tls_deserialize_exact(&encryption_key).context("decoding the encryption key")?;
    check_hpke_key_pair(
        provider,
        ciphersuite,
        encryption_key.as_slice(),
        &case.encryption_priv,
    )
    .map_err(|e| format!("encryption_priv does not match the leaf's encryption_key: {e}"))
}

/// Seals to `public` and opens with `private`.
fn check_hpke_key_pair(
    provider: &OpenMlsRustCrypto,
    ciphersuite: Ciphersuite,
    public: &[u8],
    private: &[u8],
) -> Result<(), String> {
    let crypto = provider.crypto();
    let plaintext = b"passive-client key check";
    let sealed = crypto
        .hpke_seal(
            ciphersuite.hpke_config(),
            public,
            b"info",
            b"aad",
            plaintext,
        )
        .context("HPKE seal")?;
    let opened = crypto
        .hpke_open(ciphersuite.hpke_config(), &sealed, private, b"info", b"aad")
        .context("HPKE open")?;
    if opened == plaintext {
        Ok(())
    } else {
        Err("HPKE round trip returned other bytes".to_owned())
    }
}

/// Joins from the Welcome, with the ratchet tree given out of band if there is one.
fn join(
    provider: &OpenMlsRustCrypto,
    join_config: &MlsGroupJoinConfig,
    case: &PassiveClientCase,
) -> Result<MlsGroup, String> {
    let MlsMessageBodyIn::Welcome(welcome) = MlsMessageIn::tls_deserialize_exact(&case.welcome)
        .context("decoding welcome")?
        .extract()
    else {
        return Err("welcome is not an MLSMessage(Welcome)".to_owned());
    };

    let mut builder = StagedWelcome::build_from_welcome(provider, join_config, welcome)
        .context("processing the Welcome")?;
    if let Some(tree) = &case.ratchet_tree {
        let tree =
            RatchetTreeIn::tls_deserialize_exact(&tree.0).context("decoding ratchet_tree")?;
        builder = builder.with_ratchet_tree(tree);
    }
    builder
        // Work-around: the leaves in the vectors' trees expired in 2024/2025.
        .skip_lifetime_validation()
        .build()
        .context("staging the Welcome")?
        .into_group(provider)
        .context("joining the group")
}

/// What a handshake message of the vector must turn out to be.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Proposal,
    Commit,
}

/// Processes one handshake message: stores a proposal for a later commit that
/// refers to it, or merges a commit.
fn process(
    provider: &OpenMlsRustCrypto,
    group: &mut MlsGroup,
    message: &[u8],
    expect: Expect,
    what: &str,
) -> Result<(), String> {
    let message = MlsMessageIn::tls_deserialize_exact(message)
        .context(&format!("{what}: decoding"))?
        .try_into_protocol_message()
        .context(&format!("{what}: not a PublicMessage or PrivateMessage"))?;
    let processed = group
        .process_message(provider, message)
        .context(&format!("{what}: processing"))?;
    match (expect, processed.into_content()) {
        (Expect::Proposal, ProcessedMessageContent::ProposalMessage(proposal)) => group
            .store_pending_proposal(provider.storage(), *proposal)
            .context(&format!("{what}: storing the proposal")),
        (Expect::Commit, ProcessedMessageContent::StagedCommitMessage(commit)) => group
            .merge_staged_commit(provider, *commit)
            .context(&format!("{what}: merging the commit")),
        (expect, other) => Err(format!("{what}: expected a {expect:?}, got {other:?}")),
    }
}

fn check_epoch_authenticator(group: &MlsGroup, expected: &[u8], when: &str) -> Result<(), String> {
    let actual = group.epoch_authenticator().as_slice();
    if actual == expected {
        Ok(())
    } else {
        Err(format!(
            "{when}: epoch_authenticator is {}, the vector says {} (epoch {})",
            hex::encode(actual),
            hex::encode(expected),
            group.epoch().as_u64()
        ))
    }
}
