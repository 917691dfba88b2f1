//! Clients against the real relay (`dm_server::app` served in-process on a loopback port
//! chosen by the OS, with its SQLite store in a temporary directory).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dm_client::{Client, CreateOptions, Event, Handle};
use dm_server::AppState;
use dm_server::store::StoreOptions;
use dm_server::store::sqlite::SqliteStore;
use tempfile::TempDir;

struct Relay {
    url: String,
    dir: TempDir,
}

async fn start_relay() -> Relay {
    start_relay_with(
        dm_server::Config::default().max_websockets,
        StoreOptions::default(),
    )
    .await
}

async fn start_relay_with(max_websockets: usize, options: StoreOptions) -> Relay {
    let dir = TempDir::new().unwrap();
    let db = format!("sqlite://{}", dir.path().join("relay.db").display());
    let store = Arc::new(SqliteStore::connect(&db, options).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = dm_server::app(AppState::new(store).with_max_websockets(max_websockets));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Relay { url, dir }
}

fn handle(s: &str) -> Handle {
    Handle::parse(s).unwrap()
}

async fn account(relay: &Relay, root: &Path, name: &str) -> (Client, PathBuf) {
    let home = root.join(name);
    let (client, code) = Client::create(CreateOptions {
        home: home.clone(),
        server: relay.url.clone(),
        handle: handle(name),
        passphrase: format!("{name} passphrase"),
    })
    .await
    .unwrap();
    assert_eq!(code.to_string().replace('-', "").len(), 55);
    (client, home)
}

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(format!("{}: {}", m.from, m.text)),
            _ => None,
        })
        .collect()
}

fn files_contain(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = vec![];
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            hits.push(entry.display().to_string());
        }
    }
    hits
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_talk_through_the_relay() {
    let relay = start_relay().await;
    let root = TempDir::new().unwrap();
    let (alice, _) = account(&relay, root.path(), "alice").await;
    let (bob, bob_home) = account(&relay, root.path(), "bob").await;

    let canary = "CANARY-relay-must-not-see-5d1c";
    let sent = alice.send(&handle("bob"), canary).await.unwrap();
    let events = bob.sync().await.unwrap();
    assert!(matches!(
        &events[0],
        Event::ConversationStarted { conversation, with, name: None }
            if conversation == &sent.conversation && with == &[handle("alice")]
    ));
    assert_eq!(texts(&events), [format!("@alice: {canary}")]);
    assert!(
        bob.sync().await.unwrap().is_empty(),
        "nothing is delivered twice"
    );

    let reply = bob.send(&handle("alice"), "hi alice").await.unwrap();
    assert_eq!(reply.conversation, sent.conversation);
    assert_eq!(texts(&alice.sync().await.unwrap()), ["@bob: hi alice"]);

    // Post-compromise security: Bob renews his keys; the conversation goes on.
    bob.rotate_keys(&handle("alice")).await.unwrap();
    alice.send(&handle("bob"), "after rotation").await.unwrap();
    assert!(alice.sync().await.unwrap().is_empty());
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        ["@alice: after rotation"]
    );

    // Bob's device restarts from disk.
    drop(bob);
    let bob = Client::open(&bob_home, "bob passphrase").await.unwrap();
    bob.send(&handle("alice"), "back").await.unwrap();
    assert_eq!(texts(&alice.sync().await.unwrap()), ["@bob: back"]);
    let history: Vec<_> = bob
        .history(&handle("alice"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.outgoing, m.text))
        .collect();
    assert_eq!(
        history,
        [
            (false, canary.to_owned()),
            (true, "hi alice".to_owned()),
            (false, "after rotation".to_owned()),
            (true, "back".to_owned()),
        ]
    );

    // Neither the relay's files nor the clients' files contain the plaintext.
    assert!(files_contain(relay.dir.path(), canary.as_bytes()).is_empty());
    assert!(files_contain(root.path(), canary.as_bytes()).is_empty());

    // Unknown handles are reported as such.
    assert!(matches!(
        alice.send(&handle("nobody"), "x").await,
        Err(dm_client::Error::UnknownHandle(h)) if h == handle("nobody")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_are_resolved() {
    let relay = start_relay().await;
    let root = TempDir::new().unwrap();
    let (alice, _) = account(&relay, root.path(), "alice").await;
    let (bob, _) = account(&relay, root.path(), "bob").await;
    alice.send(&handle("bob"), "hello").await.unwrap();
    bob.sync().await.unwrap();

    // Both commit at the same epoch: one wins, the other clears, catches up and retries.
    let bob_early = bob.send(&handle("alice"), "sent before the race").await;
    bob_early.unwrap();
    let (to_bob, to_alice) = (handle("bob"), handle("alice"));
    let (a, b) = tokio::join!(alice.rotate_keys(&to_bob), bob.rotate_keys(&to_alice));
    a.unwrap();
    b.unwrap();
    // Whoever lost has already processed the winner; the other catches up now.
    let mut got_alice = texts(&alice.sync().await.unwrap());
    let got_bob = texts(&bob.sync().await.unwrap());
    got_alice.extend(texts(&alice.sync().await.unwrap()));
    assert_eq!(got_alice, ["@bob: sent before the race"]);
    assert!(got_bob.is_empty());

    alice.send(&handle("bob"), "in sync?").await.unwrap();
    bob.send(&handle("alice"), "in sync!").await.unwrap();
    assert_eq!(texts(&bob.sync().await.unwrap()), ["@alice: in sync?"]);
    assert_eq!(texts(&alice.sync().await.unwrap()), ["@bob: in sync!"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_first_messages_converge_on_one_conversation() {
    let relay = start_relay().await;
    let root = TempDir::new().unwrap();
    let (alice, _) = account(&relay, root.path(), "alice").await;
    let (bob, _) = account(&relay, root.path(), "bob").await;
    let (to_bob, to_alice) = (handle("bob"), handle("alice"));
    let (a, b) = tokio::join!(
        alice.send(&to_bob, "first from alice"),
        bob.send(&to_alice, "first from bob")
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.conversation, b.conversation);
    assert_eq!(
        texts(&alice.sync().await.unwrap()),
        ["@bob: first from bob"]
    );
    assert_eq!(
        texts(&bob.sync().await.unwrap()),
        ["@alice: first from alice"]
    );
    let smallest = a.conversation.clone().min(b.conversation.clone());
    let a2 = alice.send(&handle("bob"), "again").await.unwrap();
    let b2 = bob.send(&handle("alice"), "again").await.unwrap();
    assert_eq!(a2.conversation, smallest);
    assert_eq!(b2.conversation, smallest);
    assert_eq!(texts(&alice.sync().await.unwrap()), ["@bob: again"]);
    assert_eq!(texts(&bob.sync().await.unwrap()), ["@alice: again"]);
}

/// Live feed: messages are pushed over the socket as they arrive, and a new feed resumes
/// after the cursor (nothing lost, nothing repeated).
#[tokio::test]
async fn live_feed_pushes_and_resumes() {
    use dm_client::LiveMode;
    use std::time::Duration;

    let relay = start_relay().await;
    let root = TempDir::new().unwrap();
    let (alice, _) = account(&relay, root.path(), "alice").await;
    let (bob, _) = account(&relay, root.path(), "bob").await;
    alice.send(&handle("bob"), "hello before").await.unwrap();

    let wait = Duration::from_secs(20);
    let mut live = bob.live();
    let batch = tokio::time::timeout(wait, live.next_events())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.mode(), LiveMode::Push);
    assert_eq!(texts(&batch.events), ["@alice: hello before"]);
    bob.acknowledge_events(&batch).await.unwrap();

    for text in ["pushed 1", "pushed 2"] {
        alice.send(&handle("bob"), text).await.unwrap();
        let batch = tokio::time::timeout(wait, live.next_events())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(live.mode(), LiveMode::Push);
        assert_eq!(texts(&batch.events), [format!("@alice: {text}")]);
        bob.acknowledge_events(&batch).await.unwrap();
    }

    // A new feed (as after a restart) resumes after the cursor: nothing again.
    drop(live);
    alice.send(&handle("bob"), "while away").await.unwrap();
    let mut live = bob.live();
    let batch = tokio::time::timeout(wait, live.next_events())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(texts(&batch.events), ["@alice: while away"]);
    bob.acknowledge_events(&batch).await.unwrap();
}

/// A relay without room for sockets: the feed fetches and still delivers.
#[tokio::test]
async fn live_feed_falls_back_to_fetching() {
    use dm_client::LiveMode;
    use std::time::Duration;

    let relay = start_relay_with(0, StoreOptions::default()).await;
    let root = TempDir::new().unwrap();
    let (alice, _) = account(&relay, root.path(), "alice").await;
    let (bob, _) = account(&relay, root.path(), "bob").await;
    let mut live = bob.live();
    for text in ["polled 1", "polled 2"] {
        alice.send(&handle("bob"), text).await.unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(20), live.next_events())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(live.mode(), LiveMode::Polling);
        assert_eq!(texts(&batch.events), [format!("@alice: {text}")]);
        bob.acknowledge_events(&batch).await.unwrap();
    }
}

/// Key package exhaustion is a known denial of service against MLS: with the relay handing
/// out no more one-time packages for bob (the per-target claim limit is used up), a new
/// contact still starts a conversation on bob's last-resort package, and messages flow.
#[tokio::test]
async fn a_conversation_starts_on_the_last_resort_package_when_claims_are_limited() {
    let relay = start_relay_with(
        dm_server::Config::default().max_websockets,
        StoreOptions {
            one_time_claims_per_target_per_hour: 0,
            ..StoreOptions::default()
        },
    )
    .await;
    let root = TempDir::new().unwrap();
    let (alice, _) = account(&relay, root.path(), "alice").await;
    let (bob, _) = account(&relay, root.path(), "bob").await;
    let (carol, _) = account(&relay, root.path(), "carol").await;
    alice.send(&handle("bob"), "from alice").await.unwrap();
    carol.send(&handle("bob"), "from carol").await.unwrap();
    let mut got = texts(&bob.sync().await.unwrap());
    got.sort();
    assert_eq!(got, ["@alice: from alice", "@carol: from carol"]);
    bob.send(&handle("alice"), "back to alice").await.unwrap();
    bob.send(&handle("carol"), "back to carol").await.unwrap();
    assert_eq!(texts(&alice.sync().await.unwrap()), ["@bob: back to alice"]);
    assert_eq!(texts(&carol.sync().await.unwrap()), ["@bob: back to carol"]);
}

/// A live feed whose future is dropped again and again (as `select!` in a chat does when a
/// line is typed), even halfway through a frame of envelopes, still delivers every message
/// exactly once.
#[tokio::test]
async fn a_live_feed_cancelled_mid_frame_loses_nothing() {
    use std::time::{Duration, Instant};

    let relay = start_relay().await;
    let root = TempDir::new().unwrap();
    let (alice, _) = account(&relay, root.path(), "alice").await;
    let (bob, _) = account(&relay, root.path(), "bob").await;
    let sent: Vec<String> = (0..30).map(|i| format!("@alice: message {i}")).collect();
    for text in &sent {
        alice
            .send(&handle("bob"), text.trim_start_matches("@alice: "))
            .await
            .unwrap();
    }
    let mut live = bob.live();
    let mut got: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut cancelled = 0;
    while got.len() < sent.len() {
        assert!(Instant::now() < deadline, "got only {got:?}");
        // Short, varying patience: calls are dropped at every stage, some mid-frame.
        let patience = Duration::from_millis(5 + (cancelled * 7) % 80);
        match tokio::time::timeout(patience, live.next_events()).await {
            Ok(batch) => {
                let batch = batch.unwrap();
                got.extend(texts(&batch.events));
                bob.acknowledge_events(&batch).await.unwrap();
            }
            Err(_) => cancelled += 1,
        }
    }
    assert!(cancelled > 0, "the feed was cancelled at least once");
    assert_eq!(got, sent);
}
