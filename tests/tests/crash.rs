//! Crash test: while several senders push thousands of real MLS messages, the relay process
//! is killed with SIGKILL and restarted, several times. Every send the relay acknowledged
//! must then be in the recipient's mailbox exactly once: acknowledged means durable, and
//! retries (same id, same bytes) never deliver twice. On SQLite, and on PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dm_loadgen::raw::{RawDevice, RawError};
use dm_tests::{Engine, Relay};
use sha2::{Digest as _, Sha256};

const SENDERS: usize = 4;
const PER_SENDER: usize = 750;
const KILLS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_sigkill_exactly_once_on_sqlite() {
    crash_under_load(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_sigkill_exactly_once_on_postgres() {
    if !dm_tests::postgres_or_skip() {
        return;
    }
    crash_under_load(Engine::Postgres).await;
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

async fn crash_under_load(engine: Engine) {
    let tmp = tempfile::tempdir().expect("temp dir");
    // The load runs flat out from a few devices: no per-client request limit.
    let relay = tokio::task::block_in_place(|| {
        Relay::start_with_args(
            &tmp.path().join("relay"),
            engine,
            &["--rate-limit-per-second", "0"],
        )
    });
    let url = relay.url();

    let mut bob = RawDevice::new("bob", &url).expect("bob");
    bob.register(SENDERS + 2).await.expect("register bob");
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let mut sender = RawDevice::new(&format!("sender{i}"), &url).expect("sender");
        sender.register(1).await.expect("register sender");
        let conversation = sender
            .start_conversation(&bob.handle)
            .await
            .expect("conversation");
        senders.push((sender, conversation));
    }

    let total = SENDERS * PER_SENDER;
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, (mut sender, mut conversation)) in senders.into_iter().enumerate() {
        let acked = Arc::clone(&acked);
        tasks.push(tokio::spawn(async move {
            let mut sent: Vec<[u8; 32]> = Vec::with_capacity(PER_SENDER);
            let mut retries = 0usize;
            let padding = "x".repeat(1000);
            for n in 0..PER_SENDER {
                let request = sender
                    .message(&mut conversation, &format!("{i}/{n} {padding}"))
                    .expect("encrypt");
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    match sender.send(&request).await {
                        Ok(_) => break,
                        Err(RawError::Transport(_)) | Err(RawError::Status(500..=599, _)) => {
                            assert!(Instant::now() < deadline, "the relay never came back");
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(RawError::Status(401, _)) => {
                            sender.login().await.ok();
                        }
                        Err(other) => panic!("send {i}/{n} refused: {other:?}"),
                    }
                }
                sent.push(hash(&request.message));
                acked.fetch_add(1, Ordering::SeqCst);
            }
            (sent, retries)
        }));
    }

    // Kill the relay at evenly spaced points of progress, restart it at once.
    let mut relay = relay;
    let mut kills_after_progress = 0;
    for k in 1..=KILLS {
        let threshold = total * k / (KILLS + 1);
        let deadline = Instant::now() + Duration::from_secs(300);
        while acked.load(Ordering::SeqCst) < threshold {
            assert!(Instant::now() < deadline, "the load stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before = acked.load(Ordering::SeqCst);
        tokio::task::block_in_place(|| relay.kill());
        if before < total {
            kills_after_progress += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::task::block_in_place(|| relay.start_again());
    }

    let mut expected: HashMap<[u8; 32], usize> = HashMap::new();
    let mut retries = 0;
    for task in tasks {
        let (sent, r) = task.await.expect("sender task");
        retries += r;
        for h in sent {
            *expected.entry(h).or_default() += 1;
        }
    }
    assert_eq!(expected.len(), total, "every message is distinct");

    // Everything bob's mailbox holds, after the Welcomes.
    bob.login().await.expect("login");
    let mut delivered: HashMap<[u8; 32], usize> = HashMap::new();
    let mut after = 0;
    let mut envelopes = 0;
    loop {
        let page = bob.mailbox(after).await.expect("mailbox");
        for e in &page.envelopes {
            assert!(e.seq > after, "sequence numbers increase");
            after = e.seq;
            envelopes += 1;
            *delivered.entry(hash(&e.payload)).or_default() += 1;
        }
        if !page.more {
            break;
        }
    }
    let missing = expected
        .keys()
        .filter(|h| !delivered.contains_key(*h))
        .count();
    let repeated = delivered.values().filter(|&&n| n > 1).count();
    eprintln!(
        "{engine:?}: {total} messages acknowledged, {envelopes} envelopes in the mailbox \
         ({SENDERS} of them Welcomes), {KILLS} SIGKILLs ({kills_after_progress} mid-load), \
         {retries} retried sends, {missing} missing, {repeated} repeated"
    );
    assert_eq!(missing, 0, "acknowledged messages lost");
    assert_eq!(repeated, 0, "messages delivered more than once");
    assert_eq!(
        envelopes,
        total + SENDERS,
        "nothing but the messages and the Welcomes"
    );
    assert!(
        kills_after_progress >= 3,
        "the relay was killed while the load ran"
    );
}
