//! RFC 9420 conformance beyond the passive-client files: every other file of the MLS
//! working group's vectors (`../shared/mls-test-vectors/`, see `FORMAT.md`) that openmls'
//! **public** API can check.
//!
//! * `messages.json` ("Messages"): every structure that openmls exposes publicly is decoded
//!   and re-encoded to the same bytes: the seven `MLSMessage`s, the ratchet tree and the
//!   seven proposal bodies. `group_secrets` (`GroupSecrets`) and `commit` (`Commit`) are
//!   counted as skipped: openmls keeps both types crate-private. openmls refuses the
//!   `re_init_proposal`s (see [`messages`]); that is reported as a known deviation.
//! * `welcome.json` ("Welcome"): the Welcome is decrypted with `init_priv` (openmls'
//!   `ProcessedWelcome`, which finds the entry for the key package, opens the group
//!   secrets, derives the welcome key and opens the `GroupInfo`), and the `GroupInfo`'s
//!   signature is verified with `signer_pub`. The last step of the file's verification (the
//!   confirmation tag, from the key schedule) needs openmls internals and is counted as
//!   skipped. Cases of ciphersuites the crypto provider lacks (4 to 7) are skipped.
//! * `deserialization.json` ("Vector Deserialization"): every variable-length header
//!   decodes to its length and re-encodes to the same bytes (tls_codec, as used by openmls).
//!
//! Files not run here need crate internals (tree math, key schedule, secret tree, message
//! protection from raw secrets, TreeKEM, tree operations and validation, PSK secrets,
//! transcript hashes, crypto basics): openmls runs them in its own test suite.
//!
//! Each test prints `<file>: N run, N passed, N skipped (why)` and fails if any case of a
//! supported ciphersuite fails or fewer checks ran than the file holds.
#![allow(clippy::unwrap_used)]

use std::fmt::Debug;

use e2ee_core::config;
use openmls::ciphersuite::signable::Verifiable as _;
use openmls::ciphersuite::signature::OpenMlsSignaturePublicKey;
use openmls::prelude::{
    tls_codec::{Deserialize as _, vlen},
    *,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use serde::Deserialize;

mod common;
use common::{Context as _, inject_key_package, vectors_dir};

fn read<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    let path = vectors_dir()?.join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")))
}

#[derive(Deserialize)]
#[serde(transparent)]
struct Hex(#[serde(with = "hex::serde")] Vec<u8>);

// -------------------------------------------------------------------------------------------------
// messages.json
// -------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesCase {
    mls_welcome: Hex,
    mls_group_info: Hex,
    mls_key_package: Hex,
    ratchet_tree: Hex,
    group_secrets: Hex,
    add_proposal: Hex,
    update_proposal: Hex,
    remove_proposal: Hex,
    pre_shared_key_proposal: Hex,
    re_init_proposal: Hex,
    external_init_proposal: Hex,
    group_context_extensions_proposal: Hex,
    commit: Hex,
    public_message_application: Hex,
    public_message_proposal: Hex,
    public_message_commit: Hex,
    private_message: Hex,
}

/// Decodes `bytes` as `T` (all of them) and re-encodes: the bytes must come back.
fn round_trip<T>(bytes: &[u8]) -> Result<(), String>
where
    T: tls_codec::Deserialize + tls_codec::Serialize + Debug,
{
    let value = T::tls_deserialize_exact(bytes).context("decoding")?;
    let again = value.tls_serialize_detached().context("encoding")?;
    if again == bytes {
        Ok(())
    } else {
        Err(format!(
            "re-encoded to {} bytes that differ from the {} in the vector",
            again.len(),
            bytes.len()
        ))
    }
}

/// An `MLSMessage` of the expected wire format.
fn mls_message(bytes: &[u8], expected: WireFormat) -> Result<(), String> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes).context("decoding")?;
    let wire_format = message.wire_format();
    if wire_format != expected {
        return Err(format!(
            "wire format {wire_format:?}, expected {expected:?}"
        ));
    }
    round_trip::<MlsMessageIn>(bytes)
}

#[test]
fn messages() {
    let Some(cases) = read::<Vec<MessagesCase>>("messages.json") else {
        return;
    };
    type Check = (&'static str, fn(&MessagesCase) -> Result<(), String>);
    let checks: [Check; 14] = [
        ("mls_welcome", |c| {
            mls_message(&c.mls_welcome.0, WireFormat::Welcome)
        }),
        ("mls_group_info", |c| {
            mls_message(&c.mls_group_info.0, WireFormat::GroupInfo)
        }),
        ("mls_key_package", |c| {
            mls_message(&c.mls_key_package.0, WireFormat::KeyPackage)
        }),
        ("public_message_application", |c| {
            mls_message(&c.public_message_application.0, WireFormat::PublicMessage)
        }),
        ("public_message_proposal", |c| {
            mls_message(&c.public_message_proposal.0, WireFormat::PublicMessage)
        }),
        ("public_message_commit", |c| {
            mls_message(&c.public_message_commit.0, WireFormat::PublicMessage)
        }),
        ("private_message", |c| {
            mls_message(&c.private_message.0, WireFormat::PrivateMessage)
        }),
        ("ratchet_tree", |c| {
            round_trip::<RatchetTreeIn>(&c.ratchet_tree.0)
        }),
        ("add_proposal", |c| {
            round_trip::<AddProposalIn>(&c.add_proposal.0)
        }),
        ("update_proposal", |c| {
            round_trip::<UpdateProposalIn>(&c.update_proposal.0)
        }),
        ("remove_proposal", |c| {
            round_trip::<RemoveProposal>(&c.remove_proposal.0)
        }),
        ("pre_shared_key_proposal", |c| {
            round_trip::<PreSharedKeyProposal>(&c.pre_shared_key_proposal.0)
        }),
        ("external_init_proposal", |c| {
            round_trip::<ExternalInitProposal>(&c.external_init_proposal.0)
        }),
        ("group_context_extensions_proposal", |c| {
            round_trip::<GroupContextExtensionProposalIn>(&c.group_context_extensions_proposal.0)
        }),
    ];
    let mut passed = 0;
    let mut re_init_refused = 0;
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        // Present in every case, not checkable through the public API.
        assert!(!case.group_secrets.0.is_empty() && !case.commit.0.is_empty());
        for (field, check) in &checks {
            match check(case) {
                Ok(()) => passed += 1,
                Err(e) => failures.push(format!("case #{index} {field}: {e}")),
            }
        }
        // openmls 0.9 decodes a ReInit's extensions as GroupContext extensions and refuses
        // the ratchet_tree extension these vectors put there (openmls' own runner skips
        // ReInit). Run it anyway: a pass counts as a pass, exactly that refusal as a known
        // deviation, anything else as a failure.
        match round_trip::<ReInitProposal>(&case.re_init_proposal.0) {
            Ok(()) => passed += 1,
            Err(e) if e.contains("RatchetTree that is not allowed in the group context") => {
                re_init_refused += 1;
            }
            Err(e) => failures.push(format!("case #{index} re_init_proposal: {e}")),
        }
    }
    let skipped = cases.len() * 2;
    println!(
        "messages.json: {} cases, {} structures run, {passed} passed, {} failed, {re_init_refused} \
         re_init_proposal refused by openmls (a ratchet_tree extension in the ReInit's \
         extensions, which openmls checks as GroupContext extensions), {skipped} skipped \
         (group_secrets and commit: GroupSecrets and Commit are not in openmls' public API)",
        cases.len(),
        cases.len() * (checks.len() + 1),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(cases.len(), 300, "messages.json changed: review the runner");
    assert_eq!(passed + re_init_refused, cases.len() * (checks.len() + 1));
    assert!(passed >= cases.len() * checks.len());
}

// -------------------------------------------------------------------------------------------------
// welcome.json
// -------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WelcomeCase {
    cipher_suite: u16,
    init_priv: Hex,
    signer_pub: Hex,
    key_package: Hex,
    welcome: Hex,
}

/// Decrypts the Welcome and verifies the GroupInfo's signature. Returns `Ok(false)` for an
/// unsupported ciphersuite.
fn run_welcome(case: &WelcomeCase) -> Result<bool, String> {
    let provider = OpenMlsRustCrypto::default();
    let ciphersuite = Ciphersuite::try_from(case.cipher_suite).context("unknown ciphersuite")?;
    if provider.crypto().supports(ciphersuite).is_err() {
        return Ok(false);
    }
    inject_key_package(
        &provider,
        ciphersuite,
        &case.key_package.0,
        &case.init_priv.0,
        None,
    )?;
    let MlsMessageBodyIn::Welcome(welcome) = MlsMessageIn::tls_deserialize_exact(&case.welcome.0)
        .context("decoding welcome")?
        .extract()
    else {
        return Err("welcome is not an MLSMessage(Welcome)".into());
    };
    // Decrypts the group secrets with init_priv and the GroupInfo with the welcome key.
    let processed = ProcessedWelcome::new_from_welcome(&provider, &config::join_config(), welcome)
        .context("decrypting the Welcome")?;
    let group_info = processed.unverified_group_info().clone();
    if group_info.ciphersuite() != ciphersuite {
        return Err("the GroupInfo names another ciphersuite".into());
    }
    let signer = OpenMlsSignaturePublicKey::new(
        case.signer_pub.0.clone().into(),
        ciphersuite.signature_algorithm(),
    )
    .context("signer_pub")?;
    group_info
        .verify(provider.crypto(), &signer)
        .context("verifying the GroupInfo signature with signer_pub")?;
    Ok(true)
}

#[test]
fn welcome() {
    let Some(cases) = read::<Vec<WelcomeCase>>("welcome.json") else {
        return;
    };
    let mut passed = Vec::new();
    let mut skipped = 0;
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        match run_welcome(case) {
            Ok(true) => passed.push(case.cipher_suite),
            Ok(false) => skipped += 1,
            Err(e) => failures.push(format!(
                "case #{index} (ciphersuite {:#06x}): {e}",
                case.cipher_suite
            )),
        }
    }
    println!(
        "welcome.json: {} cases run, {} passed (ciphersuites {passed:?}), {} failed, {skipped} \
         skipped (ciphersuite unsupported by the crypto provider); checked: decryption with \
         init_priv and the GroupInfo signature; not checked: the confirmation tag (needs openmls' \
         key schedule internals)",
        cases.len(),
        passed.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(passed.len() + skipped, cases.len());
    assert!(
        passed.contains(&u16::from(config::CIPHERSUITE)),
        "no case of the product's ciphersuite ran"
    );

    // The check can fail: the same Welcome against another signer's key is refused.
    let case = cases
        .iter()
        .find(|c| c.cipher_suite == u16::from(config::CIPHERSUITE))
        .unwrap();
    let mut wrong = WelcomeCase {
        cipher_suite: case.cipher_suite,
        init_priv: Hex(case.init_priv.0.clone()),
        signer_pub: Hex(case.signer_pub.0.clone()),
        key_package: Hex(case.key_package.0.clone()),
        welcome: Hex(case.welcome.0.clone()),
    };
    wrong.signer_pub.0[0] ^= 1;
    assert!(run_welcome(&wrong).is_err());
}

// -------------------------------------------------------------------------------------------------
// deserialization.json
// -------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeserializationCase {
    vlbytes_header: Hex,
    length: u64,
}

#[test]
fn deserialization() {
    let Some(cases) = read::<Vec<DeserializationCase>>("deserialization.json") else {
        return;
    };
    let mut passed = 0;
    for (index, case) in cases.iter().enumerate() {
        let mut reader = case.vlbytes_header.0.as_slice();
        let (length, header_len) = vlen::read_length(&mut reader)
            .unwrap_or_else(|e| panic!("case #{index}: cannot decode the header: {e:?}"));
        assert!(
            reader.is_empty(),
            "case #{index}: bytes left after the header"
        );
        assert_eq!(header_len, case.vlbytes_header.0.len(), "case #{index}");
        assert_eq!(length as u64, case.length, "case #{index}");
        let mut encoded = Vec::new();
        vlen::write_length(&mut encoded, length).unwrap();
        assert_eq!(encoded, case.vlbytes_header.0, "case #{index}: re-encoding");
        passed += 1;
    }
    println!(
        "deserialization.json: {} cases run, {passed} passed, 0 skipped",
        cases.len()
    );
    assert_eq!(passed, cases.len());
    assert!(passed > 0);
}
