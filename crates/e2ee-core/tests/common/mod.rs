//! Helpers shared by the MLS working-group vector tests: where the vectors are, per-case
//! error context, and injecting a vector's key package with its private keys into openmls'
//! storage through the public API.
#![allow(dead_code)]

use std::fmt::Debug;
use std::path::PathBuf;

use openmls::prelude::{tls_codec::Deserialize as _, *};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::storage::StorageProvider as _;
use serde_json::{Map, Value};

/// Default location of the vectors: `<workspace root>/../shared/mls-test-vectors`.
const DEFAULT_VECTORS_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/mls-test-vectors"
);
/// Environment variable that overrides [`DEFAULT_VECTORS_DIR`].
const VECTORS_DIR_ENV: &str = "MLS_TEST_VECTORS_DIR";

/// Where the vectors are, or `None` (after printing a notice) to skip outside CI.
pub fn vectors_dir() -> Option<PathBuf> {
    let dir = std::env::var_os(VECTORS_DIR_ENV)
        .map_or_else(|| PathBuf::from(DEFAULT_VECTORS_DIR), PathBuf::from);
    if dir.is_dir() {
        return Some(dir);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    assert!(
        !in_ci,
        "the MLS test vectors are missing: looked for the folder {} (set {VECTORS_DIR_ENV} to \
         override); CI=true, so this is an error",
        dir.display()
    );
    eprintln!(
        "NOTICE: skipping the MLS test vectors: folder {} not found (set {VECTORS_DIR_ENV} to \
         override; with CI=true this fails)",
        dir.display()
    );
    None
}

pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Adds context to an error, for the per-case failure report.
pub trait Context<T> {
    fn context(self, what: &str) -> Result<T, String>;
}

impl<T, E: Debug> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e:?}"))
    }
}

/// Stores the vector's `KeyPackage` with its private init and encryption keys as
/// a `KeyPackageBundle`, so that the Welcome can find it, and returns the
/// `KeyPackage`.
///
/// `KeyPackageBundle` has no public constructor from existing keys, so build a
/// throw-away bundle with the public builder, swap the vector's values into its
/// serde-JSON form and deserialize it back.
pub fn inject_key_package(
    provider: &OpenMlsRustCrypto,
    ciphersuite: Ciphersuite,
    key_package: &[u8],
    init_priv: &[u8],
    encryption_priv: Option<&[u8]>,
) -> Result<KeyPackage, String> {
    let MlsMessageBodyIn::KeyPackage(key_package_in) =
        MlsMessageIn::tls_deserialize_exact(key_package)
            .context("decoding key_package")?
            .extract()
    else {
        return Err("key_package is not an MLSMessage(KeyPackage)".to_owned());
    };

    // The template's own keys are thrown away, so build it in a scratch provider.
    let scratch = OpenMlsRustCrypto::default();
    let signer =
        SignatureKeyPair::new(ciphersuite.signature_algorithm()).context("template signer")?;
    let credential = CredentialWithKey {
        credential: BasicCredential::new(b"template".to_vec()).into(),
        signature_key: signer.public().into(),
    };
    let template = KeyPackage::builder()
        .build(ciphersuite, &scratch, &signer, credential)
        .context("building the template KeyPackageBundle")?;

    let mut bundle = serde_json::to_value(&template).context("serializing the template bundle")?;
    let fields = bundle
        .as_object_mut()
        .ok_or("KeyPackageBundle does not serialize to a JSON object")?;
    let to_json = |key: Vec<u8>| serde_json::to_value(HpkePrivateKey::from(key));
    replace_field(
        fields,
        "key_package",
        serde_json::to_value(&key_package_in).context("serializing the vector's KeyPackage")?,
    );
    replace_field(
        fields,
        "private_init_key",
        to_json(init_priv.to_vec()).context("serializing init_priv")?,
    );
    // Without `encryption_priv` (welcome.json has none) the template's own key stays: only
    // the init key is needed to open a Welcome.
    if let Some(encryption_priv) = encryption_priv {
        let encryption_key = fields
            .get_mut("private_encryption_key")
            .and_then(Value::as_object_mut)
            .ok_or("KeyPackageBundle has no `private_encryption_key` object, openmls changed")?;
        replace_field(
            encryption_key,
            "key",
            to_json(encryption_priv.to_vec()).context("serializing encryption_priv")?,
        );
    }
    let bundle: KeyPackageBundle =
        serde_json::from_value(bundle).context("deserializing the injected KeyPackageBundle")?;

    let hash_ref = bundle
        .key_package()
        .hash_ref(provider.crypto())
        .context("KeyPackageRef of the vector's KeyPackage")?;
    provider
        .storage()
        .write_key_package(&hash_ref, &bundle)
        .context("storing the KeyPackageBundle")?;
    Ok(bundle.into_key_package())
}

/// Replaces an existing field of a serde-JSON object; panics if the field does
/// not exist (the serde layout of an openmls type changed).
pub fn replace_field(object: &mut Map<String, Value>, field: &str, value: Value) {
    let slot = object
        .get_mut(field)
        .unwrap_or_else(|| panic!("expected a `{field}` field in the serde form, openmls changed"));
    *slot = value;
}
