//! Sequencing and delivery of one message on PostgreSQL.

use sqlx::PgConnection;

use super::PostgresStore;
use crate::store::convert::{device_id, int, uint};
use crate::store::{OutgoingMessage, SendOutcome, StoreError, sequence};

/// Appends a payload to a device's mailbox under its next sequence number (locking the
/// device row until commit), unless the mailbox holds `quota` envelopes: then counts it as
/// dropped. Returns the sequence number if stored.
async fn deliver(
    conn: &mut PgConnection,
    device: &[u8],
    payload: &[u8],
    now_ms: u64,
    quota: u32,
) -> Result<Option<u64>, StoreError> {
    let seq: Option<i64> = sqlx::query_scalar(
        "UPDATE devices SET mailbox_seq = mailbox_seq + 1, mailbox_count = mailbox_count + 1 \
         WHERE device_id = $1 AND mailbox_count < $2 RETURNING mailbox_seq",
    )
    .bind(device)
    .bind(i64::from(quota))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(seq) = seq else {
        sqlx::query("UPDATE devices SET dropped = dropped + 1 WHERE device_id = $1")
            .bind(device)
            .execute(&mut *conn)
            .await?;
        return Ok(None);
    };
    sqlx::query(
        "INSERT INTO mailbox (device_id, seq, payload, received_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(device)
    .bind(seq)
    .bind(payload)
    .bind(int(now_ms))
    .execute(&mut *conn)
    .await?;
    Ok(Some(uint(seq, "seq")?))
}

impl PostgresStore {
    pub(super) async fn send_once(
        &self,
        msg: &OutgoingMessage,
        now_ms: u64,
    ) -> Result<SendOutcome, StoreError> {
        let sender = msg.sender.as_bytes().as_slice();
        let group = msg.group_id.as_slice();
        let quota = self.inner.options.mailbox_quota;
        let mut tx = self.begin().await?;

        // Claim the idempotency record first: a concurrent retry of the same message (via
        // any instance) waits here until this transaction ends, then finds the record.
        let claimed = sqlx::query(
            "INSERT INTO sent_messages \
               (sender_device, message_id, message_hash, epoch, sent_at) \
             VALUES ($1, $2, $3, -1, $4) ON CONFLICT DO NOTHING",
        )
        .bind(sender)
        .bind(msg.id.as_bytes().as_slice())
        .bind(msg.message_hash.as_slice())
        .bind(int(now_ms / 1000))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            let (hash, epoch): (Vec<u8>, i64) = sqlx::query_as(
                "SELECT message_hash, epoch FROM sent_messages \
                 WHERE sender_device = $1 AND message_id = $2",
            )
            .bind(sender)
            .bind(msg.id.as_bytes().as_slice())
            .fetch_one(&mut *tx)
            .await?;
            return if hash == msg.message_hash {
                Ok(SendOutcome {
                    epoch: uint(epoch, "epoch")?,
                    duplicate: true,
                    delivered: Vec::new(),
                })
            } else {
                Err(StoreError::IdReused)
            };
        }

        // The group row's lock orders every message of the group across instances.
        let current: Option<i64> =
            sqlx::query_scalar("SELECT epoch FROM groups WHERE group_id = $1 FOR UPDATE")
                .bind(group)
                .fetch_optional(&mut *tx)
                .await?;
        let current = current.map(|e| uint(e, "epoch")).transpose()?;
        let is_member: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM group_members WHERE group_id = $1 AND device_id = $2",
        )
        .bind(group)
        .bind(sender)
        .fetch_optional(&mut *tx)
        .await?;
        let sequenced = sequence(current, is_member.is_some(), msg.kind, msg.epoch)?;
        let new_epoch =
            i64::try_from(sequenced.new_epoch).map_err(|_| StoreError::EpochConflict {
                current: current.unwrap_or_default(),
            })?;

        // A Welcome goes only to devices whose key package the sender itself claimed.
        let mut welcomed: Vec<Vec<u8>> = Vec::new();
        if let Some(welcome) = &msg.welcome {
            for kp_ref in &welcome.kp_refs {
                let dev: Vec<u8> = sqlx::query_scalar(
                    "SELECT kp.device_id FROM key_packages kp WHERE kp.kp_ref = $1 AND ( \
                       (NOT kp.last_resort AND kp.claimed_by = $2) \
                       OR (kp.last_resort AND EXISTS ( \
                         SELECT 1 FROM key_package_claims c \
                         WHERE c.kp_ref = kp.kp_ref AND c.claimed_by = $2)))",
                )
                .bind(kp_ref.as_slice())
                .bind(sender)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::UnclaimedKeyPackageRef)?;
                if !welcomed.contains(&dev) {
                    welcomed.push(dev);
                }
            }
        }

        for dev in &msg.removed_devices {
            if *dev == msg.sender {
                return Err(StoreError::InvalidRemoval(
                    "removed_devices must not name the sending device",
                ));
            }
            // A device no longer registered (revoked) left every list then: skipped.
            let (on_list, registered): (bool, bool) = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM group_members WHERE group_id = $1 AND device_id = $2), \
                        EXISTS (SELECT 1 FROM devices WHERE device_id = $2)",
            )
            .bind(group)
            .bind(dev.as_bytes().as_slice())
            .fetch_one(&mut *tx)
            .await?;
            if !on_list && registered {
                return Err(StoreError::InvalidRemoval(
                    "every device in removed_devices must be on the group's delivery list",
                ));
            }
        }

        if sequenced.creates_group {
            // Two creations of one group id race here: the loser's insert fails with a
            // unique violation and its rerun finds the group.
            sqlx::query("INSERT INTO groups (group_id, epoch, created_at) VALUES ($1, $2, $3)")
                .bind(group)
                .bind(new_epoch)
                .bind(int(now_ms / 1000))
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO group_members (group_id, device_id) VALUES ($1, $2)")
                .bind(group)
                .bind(sender)
                .execute(&mut *tx)
                .await?;
        } else if Some(sequenced.new_epoch) != current {
            sqlx::query("UPDATE groups SET epoch = $1 WHERE group_id = $2")
                .bind(new_epoch)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        }

        let recipients: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT device_id FROM group_members WHERE group_id = $1 AND device_id <> $2",
        )
        .bind(group)
        .bind(sender)
        .fetch_all(&mut *tx)
        .await?;
        // Device rows are locked in ascending id order, so two sends never deadlock; per
        // device the message comes before the Welcome.
        let mut deliveries: Vec<(&[u8], &[u8])> = recipients
            .iter()
            .map(|dev| (dev.as_slice(), msg.message.as_slice()))
            .collect();
        if let Some(welcome) = &msg.welcome {
            deliveries.extend(
                welcomed
                    .iter()
                    .map(|dev| (dev.as_slice(), welcome.message.as_slice())),
            );
        }
        deliveries.sort_by(|a, b| a.0.cmp(b.0));
        let mut delivered = Vec::with_capacity(deliveries.len());
        for (dev, payload) in deliveries {
            if let Some(seq) = deliver(&mut tx, dev, payload, now_ms, quota).await? {
                delivered.push((device_id(dev)?, seq));
            }
        }
        for dev in &welcomed {
            sqlx::query(
                "INSERT INTO group_members (group_id, device_id) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(group)
            .bind(dev.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        for dev in &msg.removed_devices {
            sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND device_id = $2")
                .bind(group)
                .bind(dev.as_bytes().as_slice())
                .execute(&mut *tx)
                .await?;
        }

        sqlx::query(
            "UPDATE sent_messages SET epoch = $1 WHERE sender_device = $2 AND message_id = $3",
        )
        .bind(new_epoch)
        .bind(sender)
        .bind(msg.id.as_bytes().as_slice())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // Notified after the commit, by the notifier task: a transaction that notifies
        // would take PostgreSQL's notification lock through its commit and serialise every
        // send's WAL flush.
        self.notify(delivered.clone());
        Ok(SendOutcome {
            epoch: sequenced.new_epoch,
            duplicate: false,
            delivered,
        })
    }
}
