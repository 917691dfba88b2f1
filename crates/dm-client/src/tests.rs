//! Store, at-rest secrecy, outbox and envelope-transaction tests (no relay needed: the
//! relay URL points at a closed port).

use std::collections::BTreeMap;
use std::path::Path;

use dm_wire::api::{ClaimedKeyPackage, Envelope};
use dm_wire::{Handle, MessageId};
use e2ee_core::key_package::{generate, validate_claimed};
use e2ee_core::{Content, Conversation};
use openmls_traits::OpenMlsProvider as _;
use tempfile::TempDir;

use crate::client::{Created, create_local};
use crate::db::{self, ConversationState};
use crate::inbox::{Outcome, process_envelope, skip_envelope};
use crate::store::{DB_FILE, META_FILE, Store};
use crate::transport::Transport;
use crate::{Client, Error, Event};

/// Nothing listens there: every relay call fails as unreachable.
const DEAD_RELAY: &str = "http://127.0.0.1:1";
const PASSPHRASE: &str = "correct horse battery staple";

fn handle(s: &str) -> Handle {
    Handle::parse(s).unwrap()
}

/// An account created locally (no registration).
fn local_client(dir: &Path, name: &str) -> Client {
    local_client_at(dir, name, DEAD_RELAY)
}

fn local_client_at(dir: &Path, name: &str, relay: &str) -> Client {
    let Created {
        store,
        device,
        device_list,
        ..
    } = create_local(dir, PASSPHRASE, &handle(name), relay).unwrap();
    Client::from_parts(store, device, device_list, Transport::new(relay).unwrap())
}

/// A relay that answers every request with 500 `internal` (a failing database, say).
fn failing_relay() -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 65536];
            let _ = conn.read(&mut buf);
            let body = r#"{"error":{"code":"internal","message":"internal error"}}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// Every `store.db*` file and `store.json`, by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("store."))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn store_creates_reopens_and_refuses_a_wrong_passphrase_without_changes() {
    let dir = TempDir::new().unwrap();
    assert!(matches!(
        Store::open(dir.path(), PASSPHRASE),
        Err(Error::NoAccount)
    ));
    {
        let store = Store::create(dir.path(), PASSPHRASE).unwrap();
        let version: String = store
            .conn()
            .query_row("PRAGMA cipher_version", [], |r| r.get(0))
            .unwrap();
        assert!(!version.is_empty(), "SQLCipher is linked");
        db::insert_relay(store.conn(), "http://relay.example").unwrap();
    }
    assert!(Store::exists(dir.path()));
    assert!(matches!(
        Store::create(dir.path(), PASSPHRASE),
        Err(Error::AccountExists)
    ));
    {
        let store = Store::open(dir.path(), PASSPHRASE).unwrap();
        assert_eq!(db::relay(store.conn()).unwrap().url, "http://relay.example");
    }
    let before = files(dir.path());
    assert!(before.contains_key(DB_FILE));
    assert!(matches!(
        Store::open(dir.path(), "not the passphrase"),
        Err(Error::WrongPassphrase)
    ));
    assert_eq!(
        files(dir.path()),
        before,
        "a wrong passphrase changes nothing"
    );
    // store.json holds KDF parameters only.
    let meta: serde_json::Value = serde_json::from_slice(&before[META_FILE]).unwrap();
    assert_eq!(meta["format"], 1);
    assert_eq!(meta["kdf"]["algorithm"], "argon2id");
    assert_eq!(meta["kdf"]["memory_kib"], 65536);
    assert_eq!(meta["kdf"]["iterations"], 3);
    assert_eq!(meta["kdf"]["parallelism"], 1);
    assert_eq!(meta["kdf"]["salt"].as_str().unwrap().len(), 32);
    assert_eq!(meta.as_object().unwrap().len(), 2);
    // The database file is not plain SQLite.
    assert!(!before[DB_FILE].starts_with(b"SQLite format 3"));
}

#[tokio::test]
async fn no_plaintext_or_private_key_on_disk_and_outbox_keeps_unsent_messages() {
    let dir = TempDir::new().unwrap();
    let alice = local_client(dir.path(), "alice");
    let bob = handle("bob");
    // A conversation with Bob, created now (only Alice in it: enough to encrypt; no
    // self-update is due yet).
    alice
        .blocking(move |store, inner| {
            store.transaction(|conn, provider| {
                let c = Conversation::create(provider, &inner.device())?;
                db::insert_conversation(
                    conn,
                    &c.id(),
                    Some(&bob),
                    ConversationState::Active,
                    crate::client::now_ms(),
                )
            })
        })
        .await
        .unwrap();

    let canary = "CANARY-7f3a9c1e-the-relay-and-the-disk-must-never-see-this";
    let err = alice.send(&handle("bob"), canary).await.unwrap_err();
    assert!(
        matches!(err, Error::RelayUnreachable { ref url } if url == DEAD_RELAY),
        "{err}"
    );

    // The message waits in the outbox and shows as pending in the history.
    let history = alice.history(&handle("bob"), 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].text, canary);
    assert!(history[0].outgoing && history[0].pending);
    let first = alice
        .blocking(|store, _| db::outbox_first(store.conn()))
        .await
        .unwrap()
        .unwrap();
    // A later call retries the same bytes under the same id, and fails the same way.
    assert!(matches!(
        alice.sync().await,
        Err(Error::RelayUnreachable { .. })
    ));
    let again = alice
        .blocking(|store, _| db::outbox_first(store.conn()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.request_id, &again.message),
        (first.request_id, &first.message)
    );
    assert_eq!(
        alice
            .blocking(|s, _| db::outbox_len(s.conn()))
            .await
            .unwrap(),
        1
    );

    // The secrets we look for: the account secret and the device's signature key.
    let (account_secret, device_private) = alice
        .blocking(|store, _| {
            let secret: Vec<u8> = store
                .conn()
                .query_row("SELECT account_secret FROM account", [], |r| r.get(0))
                .unwrap();
            let json: Vec<u8> = store
                .conn()
                .query_row(
                    "SELECT signature_key FROM openmls_signature_keys",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let private: Vec<u8> = value["private"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            Ok((secret, private))
        })
        .await
        .unwrap();
    assert_eq!(account_secret.len(), 32);
    assert_eq!(device_private.len(), 32);
    let private_json = serde_json::to_string(&device_private).unwrap();
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("canary", canary.as_bytes().to_vec()),
        ("account secret", account_secret.clone()),
        (
            "account secret (hex)",
            hex::encode(&account_secret).into_bytes(),
        ),
        ("device key", device_private.clone()),
        ("device key (json)", private_json.into_bytes()),
    ];
    let scan = |when: &str| {
        let all = files(dir.path());
        assert!(all.contains_key(DB_FILE));
        for (name, bytes) in &all {
            for (what, needle) in &needles {
                assert!(!contains(bytes, needle), "{what} found in {name} ({when})");
            }
        }
    };
    scan("while open");
    drop(alice);
    scan("after close");

    // Reopening works offline and keeps the outbox.
    let reopened = Client::open(dir.path(), PASSPHRASE).await.unwrap();
    assert_eq!(reopened.whoami().await.unwrap().handle, handle("alice"));
    assert_eq!(reopened.whoami().await.unwrap().server, DEAD_RELAY);
    assert_eq!(
        reopened
            .blocking(|s, _| db::outbox_len(s.conn()))
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        Client::open(dir.path(), "wrong").await,
        Err(Error::WrongPassphrase)
    ));
}

/// Alice (in her store) starts a conversation with Bob's key package and returns the
/// Welcome; her commit counts as accepted.
async fn alice_invites_bob(alice: &Client, bob: &Client) -> (Vec<u8>, dm_wire::GroupId) {
    let bob_list = bob.inner.own_list.encode();
    let kp = bob
        .blocking(|store, inner| {
            store.transaction(|_, provider| Ok::<_, Error>(generate(provider, &inner.device(), 1)?))
        })
        .await
        .unwrap();
    let bob_device = bob.inner.device().id();
    alice
        .blocking(move |store, inner| {
            store.transaction(|conn, provider| {
                let list = db::pin_device_list(conn, &handle("bob"), &bob_list, 1)?;
                let claimed = [ClaimedKeyPackage {
                    device_id: bob_device,
                    key_package: kp[0].clone(),
                }];
                let packages = validate_claimed(provider.crypto(), &list, &claimed)?;
                let mut c = Conversation::create(provider, &inner.device())?;
                let out = c.invite(provider, &inner.device(), &packages)?;
                c.merge_pending_commit(provider)?;
                db::insert_conversation(
                    conn,
                    &c.id(),
                    Some(&handle("bob")),
                    ConversationState::Active,
                    1,
                )?;
                Ok((out.welcome.unwrap(), c.id()))
            })
        })
        .await
        .unwrap()
}

fn envelope(seq: u64, payload: Vec<u8>) -> Envelope {
    Envelope {
        seq,
        payload,
        received_at: 1_000 + seq,
    }
}

async fn process(client: &Client, env: Envelope) -> Outcome {
    client
        .blocking(move |store, inner| {
            let outcome = process_envelope(store, inner, &env)?;
            if let Outcome::Rejected(reason) = &outcome {
                skip_envelope(store, &env, reason)?;
            }
            Ok(outcome)
        })
        .await
        .unwrap()
}

async fn encrypt(client: &Client, group: &dm_wire::GroupId, content: Content) -> Vec<u8> {
    let group = group.clone();
    client
        .blocking(move |store, inner| {
            store.transaction(|_, provider| {
                let mut c = Conversation::load(provider.storage(), &group)?.unwrap();
                Ok::<_, Error>(c.encrypt(provider, &inner.device(), &content)?)
            })
        })
        .await
        .unwrap()
}

async fn cursor(client: &Client) -> u64 {
    client
        .blocking(|s, _| Ok(db::relay(s.conn())?.cursor))
        .await
        .unwrap()
}

#[tokio::test]
async fn envelopes_are_processed_in_transactions_that_roll_back_on_error() {
    let (da, db_) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let alice = local_client(da.path(), "alice");
    let bob = local_client(db_.path(), "bob");
    let (welcome, group) = alice_invites_bob(&alice, &bob).await;

    // Bob does not know Alice: the join fails, everything it wrote is rolled back.
    assert_eq!(
        process(&bob, envelope(1, welcome.clone())).await,
        Outcome::NeedAccount(handle("alice"))
    );
    assert_eq!(cursor(&bob).await, 0);
    // After pinning Alice's device list the same Welcome joins: the one-time key package
    // consumed by the failed attempt was restored by the rollback.
    let alice_list = alice.inner.own_list.encode();
    bob.blocking(move |store, _| {
        store.transaction(|conn, _| db::pin_device_list(conn, &handle("alice"), &alice_list, 1))
    })
    .await
    .unwrap();
    assert_eq!(
        process(&bob, envelope(1, welcome.clone())).await,
        Outcome::Processed
    );
    assert_eq!(cursor(&bob).await, 1);
    // Redelivery is skipped.
    assert_eq!(
        process(&bob, envelope(1, welcome)).await,
        Outcome::Duplicate
    );

    // A message, then garbage, then a message again.
    let hello = Content::text(MessageId([1; 16]), 5, "hello bob");
    let m1 = encrypt(&alice, &group, hello.clone()).await;
    assert_eq!(
        process(&bob, envelope(2, m1.clone())).await,
        Outcome::Processed
    );
    let mut forged = m1.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(matches!(
        process(&bob, envelope(3, forged)).await,
        Outcome::Rejected(_)
    ));
    assert!(matches!(
        process(&bob, envelope(4, vec![0xde, 0xad])).await,
        Outcome::Rejected(_)
    ));
    assert_eq!(
        cursor(&bob).await,
        4,
        "bad envelopes do not block the mailbox"
    );
    // The same content under a new ciphertext (a resend) is not reported twice.
    let again = encrypt(&alice, &group, hello).await;
    assert_eq!(process(&bob, envelope(5, again)).await, Outcome::Processed);
    let m2 = encrypt(
        &alice,
        &group,
        Content::text(MessageId([2; 16]), 6, "still fine"),
    )
    .await;
    assert_eq!(process(&bob, envelope(6, m2)).await, Outcome::Processed);

    let events = bob
        .blocking(|store, _| store.transaction(|conn, _| db::drain_events(conn)))
        .await
        .unwrap();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::ConversationStarted { with, .. } => format!("started {}", with[0]),
            Event::Message(m) => format!("{}: {}", m.from, m.text),
            Event::Undecryptable {
                seq, conversation, ..
            } => {
                format!("undecryptable {seq} {}", conversation.is_some())
            }
            Event::MembersChanged { .. } => "members".into(),
            Event::DevicesChanged { .. } => "devices".into(),
            Event::IdentityKeyChanged { handle, .. } => format!("key changed {handle}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "started @alice",
            "@alice: hello bob",
            "undecryptable 3 true",
            "undecryptable 4 false",
            "@alice: still fine",
        ]
    );
    if let Event::Message(m) = &events[1] {
        assert_eq!(m.conversation, group);
        assert_eq!(m.from_device, alice.inner.device().id());
        assert_eq!((m.sent_at, m.received_at), (5, 1_002));
    }
    // Drained events are gone; the history has both messages.
    assert!(
        bob.blocking(|s, _| s.transaction(|c, _| db::drain_events(c)))
            .await
            .unwrap()
            .is_empty()
    );
    let history = bob.history(&handle("alice"), 10).await.unwrap();
    let texts: Vec<_> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["hello bob", "still fine"]);
    assert!(
        history
            .iter()
            .all(|m| !m.outgoing && m.received_at.is_some())
    );
}

/// A Welcome from an account bob has never seen needs its device list; when the relay
/// fails the envelope must stay unprocessed (not be skipped as undecryptable),
/// or a passing outage would cost bob the whole conversation.
#[tokio::test]
async fn a_transient_failure_keeps_the_envelope_for_the_next_sync() {
    let (da, db_) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let alice = local_client(da.path(), "alice");
    let bob = local_client_at(db_.path(), "bob", &failing_relay());
    let (welcome, _) = alice_invites_bob(&alice, &bob).await;

    let err = bob.process_envelope(envelope(1, welcome.clone())).await;
    assert!(
        matches!(
            err,
            Err(Error::Relay {
                code: dm_wire::api::ErrorCode::Internal,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(
        cursor(&bob).await,
        0,
        "the cursor did not move past the Welcome"
    );
    let queued = bob
        .blocking(|s, _| s.transaction(|conn, _| db::drain_events(conn)))
        .await
        .unwrap();
    assert!(
        queued.is_empty(),
        "no error event for a transient failure: {queued:?}"
    );

    // Once the account is known, the same envelope joins.
    let alice_list = alice.inner.own_list.encode();
    bob.blocking(move |store, _| {
        store.transaction(|conn, _| db::pin_device_list(conn, &handle("alice"), &alice_list, 1))
    })
    .await
    .unwrap();
    bob.process_envelope(envelope(1, welcome)).await.unwrap();
    assert_eq!(cursor(&bob).await, 1);
}

#[tokio::test]
async fn user_input_is_checked_before_anything_happens() {
    let dir = TempDir::new().unwrap();
    let alice = local_client(dir.path(), "alice");
    assert!(matches!(
        alice.send(&handle("alice"), "me").await,
        Err(Error::InvalidInput(_))
    ));
    let long = "x".repeat(e2ee_core::content::MAX_TEXT_BYTES + 1);
    assert!(matches!(
        alice.send(&handle("bob"), &long).await,
        Err(Error::InvalidInput(_))
    ));
    // Starting a conversation needs the relay.
    assert!(matches!(
        alice.send(&handle("bob"), "hi").await,
        Err(Error::RelayUnreachable { .. })
    ));
    assert!(matches!(
        alice.rotate_keys(&handle("bob")).await,
        Err(Error::NoConversation(_))
    ));
    assert!(alice.history(&handle("bob"), 5).await.unwrap().is_empty());
    // create refuses an existing home.
    let err = Client::create(crate::CreateOptions {
        home: dir.path().to_path_buf(),
        server: DEAD_RELAY.into(),
        handle: handle("alice"),
        passphrase: PASSPHRASE.into(),
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Error::AccountExists));
}

#[tokio::test]
async fn failed_registration_leaves_no_files() {
    let dir = TempDir::new().unwrap();
    let home = dir.path().join("acct");
    let err = Client::create(crate::CreateOptions {
        home: home.clone(),
        server: DEAD_RELAY.into(),
        handle: handle("alice"),
        passphrase: PASSPHRASE.into(),
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Error::RelayUnreachable { .. }), "{err}");
    assert!(!Client::account_exists(&home));
}

#[test]
fn client_is_send_sync_and_its_futures_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Client>();
    #[allow(dead_code, clippy::let_underscore_future)]
    fn futures(c: &Client, h: &Handle) {
        send(&c.send(h, ""));
        send(&c.sync());
        send(&c.rotate_keys(h));
        send(&c.history(h, 1));
        send(&c.whoami());
        send(&Client::open(Path::new(""), ""));
    }
}

/// Post-compromise security: a device renews its leaf after sending
/// `SELF_UPDATE_EVERY_MESSAGES` messages in a conversation, and when its last renewal there
/// is older than `SELF_UPDATE_EVERY_MS`; the self-update commit follows the message that
/// triggered it in the outbox. (Offline: everything stays queued.)
#[tokio::test]
async fn self_updates_follow_the_message_count_and_age_schedule() {
    use crate::outbox::{SELF_UPDATE_EVERY_MESSAGES, SELF_UPDATE_EVERY_MS};
    let dir = TempDir::new().unwrap();
    let alice = local_client(dir.path(), "alice");
    let bob = handle("bob");
    let group = alice
        .blocking(move |store, inner| {
            store.transaction(|conn, provider| {
                let c = Conversation::create(provider, &inner.device())?;
                db::insert_conversation(
                    conn,
                    &c.id(),
                    Some(&bob),
                    ConversationState::Active,
                    crate::client::now_ms(),
                )?;
                Ok::<_, Error>(c.id())
            })
        })
        .await
        .unwrap();
    let kinds = |alice: &Client| {
        let alice = alice.clone();
        async move {
            alice
                .blocking(|store, _| {
                    let mut stmt = store
                        .conn()
                        .prepare("SELECT purpose FROM outbox ORDER BY id")
                        .unwrap();
                    let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
                    Ok(rows.map(|r| r.unwrap()).collect::<Vec<_>>())
                })
                .await
                .unwrap()
        }
    };
    for i in 0..SELF_UPDATE_EVERY_MESSAGES {
        let err = alice
            .send(&handle("bob"), &format!("m{i}"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::RelayUnreachable { .. }), "{err}");
    }
    let queued = kinds(&alice).await;
    assert_eq!(queued.len() as u64, SELF_UPDATE_EVERY_MESSAGES + 1);
    assert_eq!(queued.last().map(String::as_str), Some("self_update"));
    assert!(queued[..queued.len() - 1].iter().all(|k| k == "message"));

    // Age: once the last renewal is old enough, the next message brings one (after the
    // queued commit is accepted; here we drop the queue and pretend it was, long ago).
    let g = group.clone();
    alice
        .blocking(move |store, _| {
            store.transaction(|conn, provider| {
                let mut c = crate::outbox::load(provider, &g)?;
                c.clear_pending_commit(provider)?;
                conn.execute("DELETE FROM outbox", []).unwrap();
                let long_ago = crate::client::now_ms() - SELF_UPDATE_EVERY_MS - 1;
                db::mark_updated(conn, &g, long_ago)
            })
        })
        .await
        .unwrap();
    alice.send(&handle("bob"), "one more").await.unwrap_err();
    assert_eq!(kinds(&alice).await, ["message", "self_update"]);
    alice.send(&handle("bob"), "and another").await.unwrap_err();
    // A commit is pending: no second self-update is stacked on it.
    assert_eq!(kinds(&alice).await, ["message", "self_update", "message"]);
}
