//! The local store: one SQLCipher-encrypted SQLite file per account.
//!
//! * `HOME/store.db` (with its `-wal` and `-shm` files) holds everything: the account secret,
//!   the device's MLS signature key and all MLS group state (through
//!   `openmls_sqlite_storage` on the same connection), contacts, conversations, messages and
//!   the outbox. SQLCipher encrypts every page, including the WAL.
//! * `HOME/store.json` holds only what is needed to derive the key and nothing secret
//!   (see [`crate::store_key`]).
//!
//! Key: Argon2id(passphrase, salt) → 32 bytes, applied as a raw SQLCipher key
//! (`PRAGMA key = "x'<64 hex>'"`, no SQLCipher KDF on top; [`crate::store_key`]). A wrong passphrase is detected
//! on the first read ("file is not a database") before anything is written.
//! Pragmas: `secure_delete=ON` (deleted key material is overwritten), `journal_mode=WAL`,
//! `synchronous=FULL`, `foreign_keys=ON`.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use e2ee_core::Provider;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use rand::RngCore as _;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::schema;
use crate::store_key::{self, KdfParams, SALT_LEN, StoreMeta};

/// File name of the encrypted database.
pub const DB_FILE: &str = "store.db";
/// File name of the (public) key-derivation parameters.
pub const META_FILE: &str = "store.json";
/// File locked for the duration of each client operation, so that two processes using
/// the same account (say `dm chat` and `dm inbox`) take turns instead of processing the
/// same envelope twice.
pub const LOCK_FILE: &str = "store.lock";
/// openmls' storage codec: JSON (self-describing, as openmls 0.9 requires).
#[derive(Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// MLS storage on a borrowed connection (inside a transaction).
pub type MlsStorage<'c> = SqliteStorageProvider<JsonCodec, &'c Connection>;
/// The openmls provider used by the client.
pub type MlsProvider<'c> = Provider<MlsStorage<'c>>;

/// An open, unlocked store.
pub struct Store {
    conn: Connection,
    home: PathBuf,
}

impl Store {
    /// The account's home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Whether an account store exists in `home` (either file is enough to refuse creating
    /// another one there).
    pub fn exists(home: &Path) -> bool {
        home.join(DB_FILE).exists() || home.join(META_FILE).exists()
    }

    /// Creates a new store. Fails with [`Error::AccountExists`] if one is there.
    pub fn create(home: &Path, passphrase: &str) -> Result<Self, Error> {
        if Self::exists(home) {
            return Err(Error::AccountExists);
        }
        fs::create_dir_all(home).map_err(|e| io_error("create the home directory", &e))?;
        let mut salt = [0u8; SALT_LEN];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let meta = StoreMeta::new(salt);
        let key = derive_key(passphrase, &meta.kdf)?;
        write_meta(home, &meta)?;
        let conn = Connection::open(home.join(DB_FILE)).map_err(store_error)?;
        Self::ready(conn, home, &key)
    }

    /// Opens an existing store: [`Error::NoAccount`] if there is none,
    /// [`Error::WrongPassphrase`] (changing nothing on disk) if the passphrase is wrong.
    pub fn open(home: &Path, passphrase: &str) -> Result<Self, Error> {
        let db = home.join(DB_FILE);
        let meta_path = home.join(META_FILE);
        if !db.exists() || !meta_path.exists() {
            return Err(Error::NoAccount);
        }
        let meta =
            StoreMeta::parse(&fs::read(&meta_path).map_err(|e| io_error("read store.json", &e))?)
                .map_err(|e| Error::Store(e.to_string()))?;
        let key = derive_key(passphrase, &meta.kdf)?;
        let conn = Connection::open_with_flags(
            &db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(store_error)?;
        Self::ready(conn, home, &key)
    }

    /// Unlocks a freshly opened connection, applies the pragmas and brings the schema up to
    /// date.
    fn ready(conn: Connection, home: &Path, key: &[u8; 32]) -> Result<Self, Error> {
        let mut store = Self {
            conn,
            home: home.to_path_buf(),
        };
        store.unlock(key)?;
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    /// Deletes the store's files (used when registration fails right after creation).
    pub fn remove_files(home: &Path) {
        for name in [
            DB_FILE.to_owned(),
            format!("{DB_FILE}-wal"),
            format!("{DB_FILE}-shm"),
            format!("{DB_FILE}-journal"),
            META_FILE.to_owned(),
            LOCK_FILE.to_owned(),
        ] {
            let _ = fs::remove_file(home.join(name));
        }
    }

    /// Applies the key and checks it with a first read.
    fn unlock(&mut self, key: &[u8; 32]) -> Result<(), Error> {
        // SQLCipher logs a failed key check to stderr by default; a wrong passphrase is
        // reported as an error instead.
        self.conn
            .execute_batch("PRAGMA cipher_log_level = NONE;")
            .map_err(store_error)?;
        let pragma = store_key::key_pragma(key);
        self.conn.execute_batch(&pragma).map_err(store_error)?;
        match self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            }) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::NotADatabase =>
            {
                Err(Error::WrongPassphrase)
            }
            Err(e) => Err(store_error(e)),
        }
    }

    fn configure(&mut self) -> Result<(), Error> {
        self.conn
            .execute_batch("PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON;")
            .map_err(store_error)?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(store_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Store(format!("could not enable WAL (got {mode})")));
        }
        self.conn
            .execute_batch("PRAGMA synchronous = FULL;")
            .map_err(store_error)?;
        Ok(())
    }

    fn migrate(&mut self) -> Result<(), Error> {
        SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut self.conn)
            .run_migrations()
            .map_err(|e| Error::Store(format!("MLS storage migration failed: {e}")))?;
        schema::migrate(&mut self.conn)
    }

    /// Reads (or writes a single statement) outside an explicit transaction.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction with an MLS provider on the same
    /// connection: everything `f` writes (MLS state included) commits together, or is rolled
    /// back if `f` fails.
    pub fn transaction<T, E: From<Error>>(
        &mut self,
        f: impl FnOnce(&Connection, &MlsProvider<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_error)?;
        let result = {
            let conn: &Connection = &tx;
            let provider = Provider::new(SqliteStorageProvider::new(conn));
            f(conn, &provider)
        };
        match result {
            Ok(value) => {
                tx.commit().map_err(store_error)?;
                Ok(value)
            }
            Err(e) => {
                if let Err(rollback) = tx.rollback() {
                    tracing::warn!(error = %rollback, "rollback failed");
                }
                Err(e)
            }
        }
    }
}

fn derive_key(passphrase: &str, kdf: &KdfParams) -> Result<Zeroizing<[u8; 32]>, Error> {
    store_key::derive_key(passphrase, kdf).map_err(|e| Error::Store(e.to_string()))
}

fn write_meta(home: &Path, meta: &StoreMeta) -> Result<(), Error> {
    let json = meta.to_json();
    let tmp: PathBuf = home.join(format!("{META_FILE}.tmp"));
    let mut file = fs::File::create(&tmp).map_err(|e| io_error("write store.json", &e))?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write store.json", &e))?;
    fs::rename(&tmp, home.join(META_FILE)).map_err(|e| io_error("write store.json", &e))
}

fn io_error(what: &str, e: &std::io::Error) -> Error {
    Error::Store(format!("could not {what}: {e}"))
}

/// Maps a SQLite error.
pub(crate) fn store_error(e: rusqlite::Error) -> Error {
    Error::Store(format!("database error: {e}"))
}
