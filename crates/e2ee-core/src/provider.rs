//! The openmls provider: RustCrypto for cryptography and randomness, plus the caller's
//! storage.
//!
//! Tests use openmls' in-memory storage ([`MemoryProvider`]); dm-client passes an
//! `openmls_sqlite_storage::SqliteStorageProvider` borrowing the connection of an open
//! transaction, so that every MLS write of one operation commits or rolls back together with
//! the client's own rows.

use openmls_rust_crypto::{MemoryStorage, RustCrypto};
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

/// An [`OpenMlsProvider`] over any openmls storage.
///
/// The randomness openmls needs (HPKE, path secrets, nonces) comes from the provider's
/// `RustCrypto`, a ChaCha20 generator seeded from the operating system when the provider is
/// built.
pub struct Provider<S> {
    crypto: RustCrypto,
    storage: S,
}

/// A provider with openmls' in-memory storage (tests, tools).
pub type MemoryProvider = Provider<MemoryStorage>;

impl<S> Provider<S> {
    /// Wraps a storage.
    pub fn new(storage: S) -> Self {
        Self {
            crypto: RustCrypto::default(),
            storage,
        }
    }

    /// Gives the storage back.
    pub fn into_storage(self) -> S {
        self.storage
    }
}

impl MemoryProvider {
    /// A provider with empty in-memory storage.
    pub fn in_memory() -> Self {
        Self::new(MemoryStorage::default())
    }
}

impl<S: StorageProvider<CURRENT_VERSION>> OpenMlsProvider for Provider<S> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = S;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}
