//! What the client reports to the application.

use dm_wire::{DeviceId, GroupId, Handle, MessageId};
use serde::{Deserialize, Serialize};

/// Something that happened while syncing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A message arrived.
    Message(ReceivedMessage),
    /// Someone started a conversation with us.
    ConversationStarted {
        /// The conversation.
        conversation: GroupId,
        /// The other accounts in it.
        with: Vec<Handle>,
        /// The group's name (group conversations only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// A member account gained or lost devices in a conversation (a device was linked,
    /// recovered or revoked).
    DevicesChanged {
        /// The conversation.
        conversation: GroupId,
        /// The account.
        handle: Handle,
        /// Devices added.
        added: Vec<DeviceId>,
        /// Devices removed.
        removed: Vec<DeviceId>,
    },
    /// The relay refused envelopes for this device because its mailbox was full: messages
    /// and group changes were missed. The device rejoins its conversations (see
    /// [`Event::Rejoining`]).
    MessagesDropped {
        /// How many envelopes were refused since the last report.
        count: u64,
    },
    /// This device rejoins its conversations under a new device identity (it missed more
    /// than it can catch up, or the user asked): the members add the new identity when they
    /// next sync. Messages sent before that cannot be read here.
    Rejoining {
        /// The identity this device had.
        previous_device: DeviceId,
        /// Its new identity.
        device: DeviceId,
    },
    /// This device is back in a conversation after rejoining.
    Rejoined {
        /// The conversation.
        conversation: GroupId,
    },
    /// The account key of a contact changed: the account was re-created under the same
    /// handle, or the relay substitutes keys. If the old key was verified, sending to the
    /// contact is refused until the user verifies the new key.
    IdentityKeyChanged {
        /// The contact.
        handle: Handle,
        /// Whether the previous key had been verified.
        was_verified: bool,
    },
    /// Accounts joined or left a conversation.
    MembersChanged {
        /// The conversation.
        conversation: GroupId,
        /// Accounts that joined.
        added: Vec<Handle>,
        /// Accounts that left (our own handle if we were removed).
        removed: Vec<Handle>,
    },
    /// An envelope could not be processed (undecryptable, forged, or not for us). It was
    /// skipped; the conversation's state is unchanged.
    Undecryptable {
        /// The conversation named in the message's cleartext header, if readable.
        conversation: Option<GroupId>,
        /// The envelope's mailbox position.
        seq: u64,
        /// When the relay stored it (unix ms).
        received_at: u64,
        /// Why it failed (no secrets, no content).
        reason: String,
    },
}

/// A message received from a peer (or from another device of ours).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedMessage {
    /// The sender's message id.
    pub id: MessageId,
    /// The conversation.
    pub conversation: GroupId,
    /// The sending account (verified).
    pub from: Handle,
    /// The sending device (verified).
    pub from_device: DeviceId,
    /// The text.
    pub text: String,
    /// When the sender says it sent the message (unix ms; the sender's claim).
    pub sent_at: u64,
    /// When the relay stored it (unix ms).
    pub received_at: u64,
}

/// The result of [`crate::Client::send`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentMessage {
    /// The message id (inside the encrypted content).
    pub id: MessageId,
    /// The conversation it went to.
    pub conversation: GroupId,
    /// When it was sent (unix ms).
    pub sent_at: u64,
}

/// A message from the local history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// The message id.
    pub id: MessageId,
    /// The conversation.
    pub conversation: GroupId,
    /// The sending account.
    pub from: Handle,
    /// The sending device.
    pub from_device: DeviceId,
    /// The text.
    pub text: String,
    /// When it was sent (unix ms; for received messages the sender's claim).
    pub sent_at: u64,
    /// When the relay stored it (unix ms); `None` for messages this device sent.
    pub received_at: Option<u64>,
    /// Whether this device sent it.
    pub outgoing: bool,
    /// For outgoing messages: still in the outbox (not yet accepted by the relay).
    pub pending: bool,
}

/// Who this client is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhoAmI {
    /// The account's handle.
    pub handle: Handle,
    /// This device.
    pub device_id: DeviceId,
    /// The relay's base URL.
    pub server: String,
    /// The account key's fingerprint (`AccountKey::fingerprint`).
    pub fingerprint: String,
}

/// A conversation, as listed by [`crate::Client::conversations`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationInfo {
    /// The conversation.
    pub id: GroupId,
    /// The group's name; `None` for a 1:1 conversation.
    pub name: Option<String>,
    /// The group's administrator; `None` for a 1:1 conversation.
    pub admin: Option<Handle>,
    /// Every member account (this one included) with its devices in the conversation.
    pub members: Vec<(Handle, Vec<DeviceId>)>,
    /// `active`, `pending` or `left`.
    pub state: String,
    /// Whether this account asked to leave and waits for a member to commit it.
    pub leaving: bool,
    /// The MLS epoch this device is in.
    pub epoch: u64,
}

/// One device of this account, as listed by [`crate::Client::devices`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device.
    pub id: DeviceId,
    /// Fingerprint of its signature key.
    pub fingerprint: String,
    /// When it was added (unix seconds, from its certificate).
    pub added_at: u64,
    /// When this device last heard from it (unix ms); `None` if never.
    pub last_seen: Option<u64>,
    /// Whether it is this device.
    pub this_device: bool,
}

/// The verification state of a contact ([`crate::Client::verification`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// The contact.
    pub handle: Handle,
    /// The safety number: twelve groups of five digits.
    pub safety_number: String,
    /// The QR payload.
    pub qr_payload: String,
    /// Fingerprint of the contact's pinned account key.
    pub fingerprint: String,
    /// Whether the user confirmed this key.
    pub verified: bool,
    /// Whether the key changed since it was pinned or confirmed.
    pub key_changed: bool,
    /// Whether sending is refused until the user confirms (the key changed while verified).
    pub blocked: bool,
}

/// A new device waiting for approval ([`crate::Client::inspect_link`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkApproval {
    /// The new device's id.
    pub device_id: DeviceId,
    /// Fingerprint of the new device's key (the new device shows it too).
    pub fingerprint: String,
}

/// Events returned by [`crate::Client::sync_events`], still queued until acknowledged.
#[derive(Clone, Debug)]
pub struct EventBatch {
    /// The events, oldest first.
    pub events: Vec<Event>,
    /// Queue position of the last event (what [`crate::Client::acknowledge_events`] forgets
    /// up to).
    pub(crate) up_to: i64,
}
