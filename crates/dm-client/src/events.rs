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

/// Events returned by [`crate::Client::sync_events`], still queued until acknowledged.
#[derive(Clone, Debug)]
pub struct EventBatch {
    /// The events, oldest first.
    pub events: Vec<Event>,
    /// Queue position of the last event (what [`crate::Client::acknowledge_events`] forgets
    /// up to).
    pub(crate) up_to: i64,
}
