//! The SQLite writer task: group commit of sends and acks.
//!
//! Callers queue an [`Op`] and wait for its answer. The task takes every operation waiting
//! (up to [`MAX_BATCH`]), opens one `BEGIN IMMEDIATE` transaction, runs each operation in
//! its own `SAVEPOINT` (an operation that is refused or fails rolls back to its savepoint
//! and gets its own error, the others are unaffected), commits once, publishes one wakeup
//! for the envelopes of the whole batch, and then answers every caller. If the transaction
//! cannot be begun or committed, every operation of the batch gets the error: none of them
//! happened.

use std::sync::Arc;

use dm_wire::DeviceId;
use sqlx::{Acquire as _, SqliteConnection, SqlitePool};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{deliver_wakeups, send_in};
use crate::store::convert::int;
use crate::store::{OutgoingMessage, SendOutcome, StoreError, Wakeup};

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

/// Runs until every queue sender is dropped and the queue is empty.
pub(super) async fn run(
    pool: SqlitePool,
    quota: u32,
    wakeups: broadcast::Sender<Wakeup>,
    mut queue: mpsc::Receiver<Op>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let ops = std::mem::take(&mut batch);
        commit_batch(&pool, quota, &wakeups, ops).await;
    }
}

async fn commit_batch(
    pool: &SqlitePool,
    quota: u32,
    wakeups: &broadcast::Sender<Wakeup>,
    ops: Vec<Op>,
) {
    let mut results: Vec<Result<Done, StoreError>> = Vec::with_capacity(ops.len());
    match run_batch(pool, quota, &ops, &mut results).await {
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
/// `Err` means the transaction as a whole failed (nothing of it is committed).
async fn run_batch(
    pool: &SqlitePool,
    quota: u32,
    ops: &[Op],
    results: &mut Vec<Result<Done, StoreError>>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for op in ops {
        let mut savepoint = tx.begin().await?;
        let result = apply(&mut savepoint, &op.work, quota).await;
        if result.is_ok() {
            savepoint.commit().await?;
        } else {
            savepoint.rollback().await?;
        }
        results.push(result);
    }
    tx.commit().await
}

async fn apply(conn: &mut SqliteConnection, work: &Work, quota: u32) -> Result<Done, StoreError> {
    match work {
        Work::Send { message, now_ms } => {
            send_in(conn, message, *now_ms, quota).await.map(Done::Sent)
        }
        Work::Ack { device, up_to } => {
            let deleted = sqlx::query("DELETE FROM mailbox WHERE device_id = ? AND seq <= ?")
                .bind(device.as_bytes().as_slice())
                .bind(int(*up_to))
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if deleted > 0 {
                sqlx::query(
                    "UPDATE devices SET mailbox_count = mailbox_count - ? WHERE device_id = ?",
                )
                .bind(int(deleted))
                .bind(device.as_bytes().as_slice())
                .execute(&mut *conn)
                .await?;
            }
            Ok(Done::Acked)
        }
    }
}
