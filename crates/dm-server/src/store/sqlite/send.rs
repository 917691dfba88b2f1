//! Sequencing and delivery of one message on SQLite, on the writer task's connection.

use sqlx::SqliteConnection;

use crate::store::convert::{device_id, int, uint};
use crate::store::{OutgoingMessage, SendOutcome, StoreError, sequence};

/// Appends a payload to a device's mailbox under the next sequence number of that device,
/// unless the mailbox holds `quota` envelopes: then counts it as dropped. Returns the
/// sequence number if stored.
async fn deliver(
    conn: &mut SqliteConnection,
    device: &[u8],
    payload: &[u8],
    now_ms: u64,
    quota: u32,
) -> Result<Option<u64>, StoreError> {
    let seq: Option<i64> = sqlx::query_scalar(
        "UPDATE devices SET mailbox_seq = mailbox_seq + 1, mailbox_count = mailbox_count + 1 \
         WHERE device_id = ? AND mailbox_count < ? RETURNING mailbox_seq",
    )
    .bind(device)
    .bind(i64::from(quota))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(seq) = seq else {
        sqlx::query("UPDATE devices SET dropped = dropped + 1 WHERE device_id = ?")
            .bind(device)
            .execute(&mut *conn)
            .await?;
        return Ok(None);
    };
    sqlx::query("INSERT INTO mailbox (device_id, seq, payload, received_at) VALUES (?, ?, ?, ?)")
        .bind(device)
        .bind(seq)
        .bind(payload)
        .bind(int(now_ms))
        .execute(&mut *conn)
        .await?;
    Ok(Some(uint(seq, "seq")?))
}

/// Sequences and delivers one message on the writer's connection, inside the savepoint the
/// writer opened for it (see [`Store::send`] for the rules). An error leaves changes
/// behind that the caller rolls back.
pub(super) async fn send_in(
    conn: &mut SqliteConnection,
    msg: &OutgoingMessage,
    now_ms: u64,
    quota: u32,
) -> Result<SendOutcome, StoreError> {
    let sender = msg.sender.as_bytes().as_slice();
    let group = msg.group_id.as_slice();

    // A retry is answered like the original, before any ordering rule applies.
    let previous: Option<(Vec<u8>, i64)> = sqlx::query_as(
        "SELECT message_hash, epoch FROM sent_messages \
         WHERE sender_device = ? AND message_id = ?",
    )
    .bind(sender)
    .bind(msg.id.as_bytes().as_slice())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((hash, epoch)) = previous {
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

    let current: Option<i64> = sqlx::query_scalar("SELECT epoch FROM groups WHERE group_id = ?")
        .bind(group)
        .fetch_optional(&mut *conn)
        .await?;
    let current = current.map(|e| uint(e, "epoch")).transpose()?;
    let is_member: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM group_members WHERE group_id = ? AND device_id = ?")
            .bind(group)
            .bind(sender)
            .fetch_optional(&mut *conn)
            .await?;
    let sequenced = sequence(current, is_member.is_some(), msg.kind, msg.epoch)?;

    // The relay's epoch column is an i64: a commit that would pass it cannot be
    // sequenced (like one that would pass u64::MAX in `sequence`).
    let new_epoch = i64::try_from(sequenced.new_epoch).map_err(|_| StoreError::EpochConflict {
        current: current.unwrap_or_default(),
    })?;

    // A Welcome goes only to devices whose key package the sender itself claimed:
    // otherwise any member could put any device on the delivery list.
    let mut welcomed: Vec<Vec<u8>> = Vec::new();
    if let Some(welcome) = &msg.welcome {
        for kp_ref in &welcome.kp_refs {
            let dev: Vec<u8> = sqlx::query_scalar(
                "SELECT kp.device_id FROM key_packages kp WHERE kp.kp_ref = ?1 AND ( \
                   (kp.last_resort = 0 AND kp.claimed_by = ?2) \
                   OR (kp.last_resort = 1 AND EXISTS ( \
                     SELECT 1 FROM key_package_claims c \
                     WHERE c.kp_ref = kp.kp_ref AND c.claimed_by = ?2)))",
            )
            .bind(kp_ref.as_slice())
            .bind(sender)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::UnclaimedKeyPackageRef)?;
            if !welcomed.contains(&dev) {
                welcomed.push(dev);
            }
        }
    }

    // Only current members other than the sender can be taken off the list.
    for dev in &msg.removed_devices {
        if *dev == msg.sender {
            return Err(StoreError::InvalidRemoval(
                "removed_devices must not name the sending device",
            ));
        }
        let on_list: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM group_members WHERE group_id = ? AND device_id = ?")
                .bind(group)
                .bind(dev.as_bytes().as_slice())
                .fetch_optional(&mut *conn)
                .await?;
        if on_list.is_none() {
            return Err(StoreError::InvalidRemoval(
                "every device in removed_devices must be on the group's delivery list",
            ));
        }
    }

    if sequenced.creates_group {
        sqlx::query("INSERT INTO groups (group_id, epoch, created_at) VALUES (?, ?, ?)")
            .bind(group)
            .bind(new_epoch)
            .bind(int(now_ms / 1000))
            .execute(&mut *conn)
            .await?;
        sqlx::query("INSERT INTO group_members (group_id, device_id) VALUES (?, ?)")
            .bind(group)
            .bind(sender)
            .execute(&mut *conn)
            .await?;
    } else if Some(sequenced.new_epoch) != current {
        sqlx::query("UPDATE groups SET epoch = ? WHERE group_id = ?")
            .bind(new_epoch)
            .bind(group)
            .execute(&mut *conn)
            .await?;
    }

    let recipients: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT device_id FROM group_members WHERE group_id = ? AND device_id <> ? \
         ORDER BY device_id",
    )
    .bind(group)
    .bind(sender)
    .fetch_all(&mut *conn)
    .await?;
    let mut delivered = Vec::with_capacity(recipients.len() + welcomed.len());
    for dev in &recipients {
        if let Some(seq) = deliver(conn, dev, &msg.message, now_ms, quota).await? {
            delivered.push((device_id(dev)?, seq));
        }
    }
    if let Some(welcome) = &msg.welcome {
        for dev in &welcomed {
            if let Some(seq) = deliver(conn, dev, &welcome.message, now_ms, quota).await? {
                delivered.push((device_id(dev)?, seq));
            }
            sqlx::query(
                "INSERT INTO group_members (group_id, device_id) VALUES (?, ?) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(group)
            .bind(dev.as_slice())
            .execute(&mut *conn)
            .await?;
        }
    }
    for dev in &msg.removed_devices {
        sqlx::query("DELETE FROM group_members WHERE group_id = ? AND device_id = ?")
            .bind(group)
            .bind(dev.as_bytes().as_slice())
            .execute(&mut *conn)
            .await?;
    }

    sqlx::query(
        "INSERT INTO sent_messages (sender_device, message_id, message_hash, epoch, sent_at) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(sender)
    .bind(msg.id.as_bytes().as_slice())
    .bind(msg.message_hash.as_slice())
    .bind(new_epoch)
    .bind(int(now_ms / 1000))
    .execute(&mut *conn)
    .await?;
    Ok(SendOutcome {
        epoch: sequenced.new_epoch,
        duplicate: false,
        delivered,
    })
}
