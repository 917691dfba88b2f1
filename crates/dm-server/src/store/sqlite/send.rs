//! Sequencing and delivery of one message on SQLite, on the writer thread's connection.

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::store::convert::{device_id, int, uint};
use crate::store::{OutgoingMessage, SendOutcome, StoreError, sequence};

/// Appends a payload to a device's mailbox under the next sequence number of that device,
/// unless the mailbox holds `quota` envelopes: then counts it as dropped. Returns the
/// sequence number if stored.
fn deliver(
    conn: &Connection,
    device: &[u8],
    payload: &[u8],
    now_ms: u64,
    quota: u32,
) -> Result<Option<u64>, StoreError> {
    let seq: Option<i64> = conn
        .prepare_cached(
            "UPDATE devices SET mailbox_seq = mailbox_seq + 1, mailbox_count = mailbox_count + 1 \
             WHERE device_id = ? AND mailbox_count < ? RETURNING mailbox_seq",
        )?
        .query_row(params![device, i64::from(quota)], |row| row.get(0))
        .optional()?;
    let Some(seq) = seq else {
        conn.prepare_cached("UPDATE devices SET dropped = dropped + 1 WHERE device_id = ?")?
            .execute(params![device])?;
        return Ok(None);
    };
    conn.prepare_cached(
        "INSERT INTO mailbox (device_id, seq, payload, received_at) VALUES (?, ?, ?, ?)",
    )?
    .execute(params![device, seq, payload, int(now_ms)])?;
    Ok(Some(uint(seq, "seq")?))
}

/// Sequences and delivers one message on the writer's connection, inside the savepoint the
/// writer opened for it (see [`Store::send`] for the rules). An error leaves changes
/// behind that the caller rolls back.
///
/// [`Store::send`]: crate::store::Store::send
pub(super) fn send_in(
    conn: &Connection,
    msg: &OutgoingMessage,
    now_ms: u64,
    quota: u32,
) -> Result<SendOutcome, StoreError> {
    let sender = msg.sender.as_bytes().as_slice();
    let group = msg.group_id.as_slice();

    // A retry is answered like the original, before any ordering rule applies.
    let previous: Option<(Vec<u8>, i64)> = conn
        .prepare_cached(
            "SELECT message_hash, epoch FROM sent_messages \
             WHERE sender_device = ? AND message_id = ?",
        )?
        .query_row(params![sender, msg.id.as_bytes().as_slice()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
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

    let current: Option<i64> = conn
        .prepare_cached("SELECT epoch FROM groups WHERE group_id = ?")?
        .query_row(params![group], |row| row.get(0))
        .optional()?;
    let current = current.map(|e| uint(e, "epoch")).transpose()?;
    let is_member: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM group_members WHERE group_id = ? AND device_id = ?")?
        .query_row(params![group, sender], |row| row.get(0))
        .optional()?;
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
            let dev: Vec<u8> = conn
                .prepare_cached(
                    "SELECT kp.device_id FROM key_packages kp WHERE kp.kp_ref = ?1 AND ( \
                       (kp.last_resort = 0 AND kp.claimed_by = ?2) \
                       OR (kp.last_resort = 1 AND EXISTS ( \
                         SELECT 1 FROM key_package_claims c \
                         WHERE c.kp_ref = kp.kp_ref AND c.claimed_by = ?2)))",
                )?
                .query_row(params![kp_ref.as_slice(), sender], |row| row.get(0))
                .optional()?
                .ok_or(StoreError::UnclaimedKeyPackageRef)?;
            if !welcomed.contains(&dev) {
                welcomed.push(dev);
            }
        }
    }

    // Only current members other than the sender can be taken off the list. A device no
    // longer registered (revoked: its account published a device list without it) left
    // every list then, and is skipped.
    for dev in &msg.removed_devices {
        if *dev == msg.sender {
            return Err(StoreError::InvalidRemoval(
                "removed_devices must not name the sending device",
            ));
        }
        let (on_list, registered): (bool, bool) = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM group_members WHERE group_id = ?1 AND device_id = ?2), \
                        EXISTS (SELECT 1 FROM devices WHERE device_id = ?2)",
            )?
            .query_row(params![group, dev.as_bytes().as_slice()], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
        if !on_list && registered {
            return Err(StoreError::InvalidRemoval(
                "every device in removed_devices must be on the group's delivery list",
            ));
        }
    }

    if sequenced.creates_group {
        conn.prepare_cached("INSERT INTO groups (group_id, epoch, created_at) VALUES (?, ?, ?)")?
            .execute(params![group, new_epoch, int(now_ms / 1000)])?;
        conn.prepare_cached("INSERT INTO group_members (group_id, device_id) VALUES (?, ?)")?
            .execute(params![group, sender])?;
    } else if Some(sequenced.new_epoch) != current {
        conn.prepare_cached("UPDATE groups SET epoch = ? WHERE group_id = ?")?
            .execute(params![new_epoch, group])?;
    }

    let recipients: Vec<Vec<u8>> = conn
        .prepare_cached(
            "SELECT device_id FROM group_members WHERE group_id = ? AND device_id <> ? \
             ORDER BY device_id",
        )?
        .query_map(params![group, sender], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut delivered = Vec::with_capacity(recipients.len() + welcomed.len());
    for dev in &recipients {
        if let Some(seq) = deliver(conn, dev, &msg.message, now_ms, quota)? {
            delivered.push((device_id(dev)?, seq));
        }
    }
    if let Some(welcome) = &msg.welcome {
        for dev in &welcomed {
            if let Some(seq) = deliver(conn, dev, &welcome.message, now_ms, quota)? {
                delivered.push((device_id(dev)?, seq));
            }
            conn.prepare_cached(
                "INSERT INTO group_members (group_id, device_id) VALUES (?, ?) \
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![group, dev.as_slice()])?;
        }
    }
    for dev in &msg.removed_devices {
        conn.prepare_cached("DELETE FROM group_members WHERE group_id = ? AND device_id = ?")?
            .execute(params![group, dev.as_bytes().as_slice()])?;
    }

    conn.prepare_cached(
        "INSERT INTO sent_messages (sender_device, message_id, message_hash, epoch, sent_at) \
         VALUES (?, ?, ?, ?, ?)",
    )?
    .execute(params![
        sender,
        msg.id.as_bytes().as_slice(),
        msg.message_hash.as_slice(),
        new_epoch,
        int(now_ms / 1000)
    ])?;
    Ok(SendOutcome {
        epoch: sequenced.new_epoch,
        duplicate: false,
        delivered,
    })
}
