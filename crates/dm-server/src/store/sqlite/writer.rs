//! The SQLite writer thread: group commit of sends and acks.
//!
//! Callers queue an [`Op`] and wait for its answer. The writer is a dedicated OS thread
//! that owns its own connection to the database file (rusqlite, with cached prepared
//! statements): the sqlx pool runs every query on a worker thread reached through
//! channels, two context switches per statement, which made a send of about ten
//! statements CPU-bound on thread wakeups. The thread blocks for the first waiting
//! operation, takes every other one waiting (up to [`MAX_BATCH`]), opens one
//! `BEGIN IMMEDIATE` transaction, runs each operation in its own `SAVEPOINT` (an operation
//! that is refused or fails rolls back to its savepoint and gets its own error, the others
//! are unaffected), commits once, publishes one wakeup for the envelopes of the whole
//! batch, and then answers every caller. If the transaction cannot be begun or committed,
//! every operation of the batch gets the error: none of them happened. The thread ends
//! when every queue sender is dropped and the queue is empty.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dm_wire::DeviceId;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{deliver_wakeups, send_in};
use crate::store::convert::int;
use crate::store::{OutgoingMessage, SendOutcome, StoreError, Wakeup};

/// The writer's prepared statement cache: every statement of a send and an ack fits.
const STATEMENT_CACHE: usize = 64;

/// Most operations committed in one transaction.
pub(crate) const MAX_BATCH: usize = 256;

/// What an operation does.
#[derive(Debug)]
pub(super) enum Work {
    /// [`crate::store::Store::send`].
    Send {
        /// The message.
        message: Box<OutgoingMessage>,
        /// Now, unix milliseconds.
        now_ms: u64,
    },
    /// [`crate::store::Store::ack`].
    Ack {
        /// The device.
        device: DeviceId,
        /// The highest acknowledged sequence number.
        up_to: u64,
    },
}

/// Where an operation's answer goes.
#[derive(Debug)]
pub(super) enum Reply {
    /// The answer to a send.
    Send(oneshot::Sender<Result<SendOutcome, StoreError>>),
    /// The answer to an ack.
    Ack(oneshot::Sender<Result<(), StoreError>>),
}

/// A queued operation.
#[derive(Debug)]
pub(super) struct Op {
    work: Work,
    reply: Reply,
}

impl Op {
    pub(super) fn new(work: Work, reply: Reply) -> Self {
        Self { work, reply }
    }
}

/// What a successful operation answers.
enum Done {
    Sent(SendOutcome),
    Acked,
}

impl Reply {
    /// Answers the caller (who may have gone away: then nobody listens).
    fn answer(self, result: Result<Done, StoreError>) {
        match self {
            Reply::Send(reply) => {
                let _ = reply.send(result.and_then(|done| match done {
                    Done::Sent(outcome) => Ok(outcome),
                    Done::Acked => Err(StoreError::Corrupt("writer answered an ack to a send")),
                }));
            }
            Reply::Ack(reply) => {
                let _ = reply.send(result.and_then(|done| match done {
                    Done::Acked => Ok(()),
                    Done::Sent(_) => Err(StoreError::Corrupt("writer answered a send to an ack")),
                }));
            }
        }
    }
}

/// Opens the writer's connection to the database file at `path`, which the sqlx pool has
/// created and migrated: the same pragmas as the pool's connections.
pub(super) fn open(path: &Path, busy_timeout: Duration) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// The writer thread's body: runs until every queue sender is dropped and the queue is
/// empty. Must not run on an async runtime thread (it blocks).
pub(super) fn run(
    mut conn: Connection,
    quota: u32,
    wakeups: broadcast::Sender<Wakeup>,
    mut queue: mpsc::Receiver<Op>,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut ops = Vec::with_capacity(MAX_BATCH);
        ops.push(first);
        while ops.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, quota, &wakeups, ops);
    }
}

fn commit_batch(
    conn: &mut Connection,
    quota: u32,
    wakeups: &broadcast::Sender<Wakeup>,
    ops: Vec<Op>,
) {
    let mut results: Vec<Result<Done, StoreError>> = Vec::with_capacity(ops.len());
    match run_batch(conn, quota, &ops, &mut results) {
        Ok(()) => {
            let delivered = results.iter().flat_map(|result| match result {
                Ok(Done::Sent(outcome)) => outcome.delivered.as_slice(),
                _ => &[],
            });
            deliver_wakeups(wakeups, delivered.copied().collect());
            for (op, result) in ops.into_iter().zip(results) {
                op.reply.answer(result);
            }
        }
        Err(err) => {
            tracing::error!(error = %err, operations = ops.len(), "a write batch failed");
            let err = Arc::new(err);
            for op in ops {
                op.reply
                    .answer(Err(StoreError::BatchCommit(Arc::clone(&err))));
            }
        }
    }
}

/// One transaction over the batch; `results` gets one entry per operation, in order. An
/// `Err` means the transaction as a whole failed (nothing of it is committed: dropping an
/// uncommitted transaction rolls it back).
fn run_batch(
    conn: &mut Connection,
    quota: u32,
    ops: &[Op],
    results: &mut Vec<Result<Done, StoreError>>,
) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for op in ops {
        tx.prepare_cached("SAVEPOINT op")?.execute([])?;
        let result = apply(&tx, &op.work, quota);
        if result.is_err() {
            tx.prepare_cached("ROLLBACK TO op")?.execute([])?;
        }
        tx.prepare_cached("RELEASE op")?.execute([])?;
        results.push(result);
    }
    tx.commit()
}

fn apply(conn: &Connection, work: &Work, quota: u32) -> Result<Done, StoreError> {
    match work {
        Work::Send { message, now_ms } => send_in(conn, message, *now_ms, quota).map(Done::Sent),
        Work::Ack { device, up_to } => {
            let deleted = conn
                .prepare_cached("DELETE FROM mailbox WHERE device_id = ? AND seq <= ?")?
                .execute(params![device.as_bytes().as_slice(), int(*up_to)])?;
            if deleted > 0 {
                conn.prepare_cached(
                    "UPDATE devices SET mailbox_count = mailbox_count - ? WHERE device_id = ?",
                )?
                .execute(params![
                    i64::try_from(deleted).unwrap_or(i64::MAX),
                    device.as_bytes().as_slice()
                ])?;
            }
            Ok(Done::Acked)
        }
    }
}
