//! Conversations: one MLS group each, whose leaves are all devices of all members.
//!
//! # Which calls write to storage
//!
//! openmls persists state as it goes, and a failing call may leave part of its writes
//! behind. Every function documented as **mutates storage** must therefore run inside one
//! storage transaction that the caller rolls back on error (dm-client does this with
//! SQLite), after which any in-memory [`Conversation`] must be dropped and reloaded with
//! [`Conversation::load`].
//!
//! # Commits
//!
//! [`Conversation::invite`] and [`Conversation::self_update`] stage a commit and return the
//! bytes to send. The commit is applied only when the relay has accepted it
//! ([`Conversation::merge_pending_commit`]). If the relay reports that another commit won
//! the epoch, call [`Conversation::clear_pending_commit`], process the winning commit, and
//! redo the operation.

use dm_wire::GroupId;
use dm_wire::credential::CredentialIdentity;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    Extension, Extensions, GroupId as MlsGroupId, LeafNodeIndex, LeafNodeParameters, MlsGroup,
    MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProcessedMessageContent, Proposal,
    ProtocolMessage, Sender, StagedCommit, StagedWelcome, UnknownExtension, Welcome,
};
use openmls_traits::OpenMlsProvider;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

use crate::config::{
    CIPHERSUITE, GROUP_META_EXTENSION, create_config, create_config_with, join_config,
};
use crate::content::{Content, ContentError};
use crate::device::Device;
use crate::directory::{CredentialError, Directory, identity_of, verify_credential, verify_leaf};
use crate::error::Error;
use crate::group::GroupMeta;
use crate::key_package::ValidatedKeyPackage;
use crate::mls_errors as map;

/// Length of the random group ids this client chooses.
pub const GROUP_ID_LEN: usize = 16;

/// A conversation this device is a member of.
#[derive(Debug)]
pub struct Conversation {
    group: MlsGroup,
}

/// A staged commit to send to the relay (with the Welcome for added devices, if any).
#[derive(Debug, Clone)]
pub struct OutgoingCommit {
    /// The TLS-encoded commit `MLSMessage` (a PrivateMessage).
    pub commit: Vec<u8>,
    /// The TLS-encoded Welcome `MLSMessage`, when the commit adds devices.
    pub welcome: Option<Vec<u8>>,
    /// The devices the commit adds.
    pub added: Vec<CredentialIdentity>,
    /// The devices the commit removes (for the relay's `removed_devices`).
    pub removed: Vec<CredentialIdentity>,
}

/// What processing one incoming message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This device joined a conversation from a Welcome.
    Joined {
        /// The conversation.
        group: GroupId,
        /// The device that added us.
        inviter: CredentialIdentity,
        /// Every member device (this one included), all verified.
        members: Vec<CredentialIdentity>,
    },
    /// An application message.
    Message {
        /// The conversation.
        group: GroupId,
        /// The verified sending device.
        sender: CredentialIdentity,
        /// The decoded content.
        content: Content,
    },
    /// A commit was verified and applied.
    CommitApplied {
        /// The conversation.
        group: GroupId,
        /// The epoch after the commit.
        epoch: u64,
        /// The device that committed.
        committer: CredentialIdentity,
        /// Devices added.
        added: Vec<CredentialIdentity>,
        /// Devices removed.
        removed: Vec<CredentialIdentity>,
        /// Whether this device was removed (the conversation is then inactive).
        self_removed: bool,
    },
    /// A member asked to remove one of its own account's devices (it leaves the
    /// conversation, or drops a device). The proposal is stored; the next commit of any
    /// member carries it out.
    RemovalProposed {
        /// The conversation.
        group: GroupId,
        /// The proposing device.
        proposer: CredentialIdentity,
        /// The device to remove (of the proposer's account).
        removed: CredentialIdentity,
    },
    /// A message this device sent, echoed back; nothing to do.
    OwnMessage {
        /// The conversation.
        group: GroupId,
    },
    /// A valid message this protocol does not act on (for example a standalone proposal).
    Ignored {
        /// The conversation.
        group: GroupId,
        /// Why it was ignored.
        reason: &'static str,
    },
}

impl Conversation {
    /// Creates a conversation with this device as its only member and a random
    /// [`GROUP_ID_LEN`]-byte group id.
    ///
    /// **Mutates storage.**
    pub fn create<P: OpenMlsProvider>(provider: &P, device: &Device) -> Result<Self, Error> {
        let id = provider
            .rand()
            .random_vec(GROUP_ID_LEN)
            .map_err(|e| Error::internal(format!("randomness failed: {e:?}")))?;
        let group = MlsGroup::new_with_group_id(
            provider,
            device.signer(),
            &create_config(),
            MlsGroupId::from_slice(&id),
            device.credential_with_key(),
        )
        .map_err(map::new_group)?;
        Ok(Self { group })
    }

    /// Creates a group conversation administered by this device's account, with this
    /// device as its only member, carrying `name` in its group context.
    ///
    /// **Mutates storage.**
    pub fn create_group<P: OpenMlsProvider>(
        provider: &P,
        device: &Device,
        name: &str,
    ) -> Result<Self, Error> {
        GroupMeta::check_name(name)?;
        let meta = GroupMeta {
            admin: device.handle().clone(),
            name: name.to_owned(),
        };
        let extensions = Extensions::single(Extension::Unknown(
            GROUP_META_EXTENSION,
            UnknownExtension(meta.encode()),
        ))
        .map_err(Error::internal)?;
        let id = provider
            .rand()
            .random_vec(GROUP_ID_LEN)
            .map_err(|e| Error::internal(format!("randomness failed: {e:?}")))?;
        let group = MlsGroup::new_with_group_id(
            provider,
            device.signer(),
            &create_config_with(extensions),
            MlsGroupId::from_slice(&id),
            device.credential_with_key(),
        )
        .map_err(map::new_group)?;
        Ok(Self { group })
    }

    /// The group metadata (administrator and name), `None` for a 1:1 conversation. A
    /// metadata extension that does not decode is an error.
    pub fn meta(&self) -> Result<Option<GroupMeta>, Error> {
        self.group
            .extensions()
            .unknown(GROUP_META_EXTENSION)
            .map(|e| GroupMeta::decode(&e.0))
            .transpose()
    }

    /// The group code of the current epoch ([`crate::safety::group_code`]).
    pub fn group_code(&self) -> String {
        crate::safety::group_code(
            self.group.group_id().as_slice(),
            self.epoch(),
            self.group.epoch_authenticator().as_slice(),
        )
    }

    /// This device's own identity in the group, if it is a member.
    pub fn own_identity(&self) -> Option<CredentialIdentity> {
        self.group
            .credential()
            .ok()
            .and_then(|c| identity_of(c).ok())
    }

    /// Whether removals proposed by members wait for a commit.
    pub fn has_pending_proposals(&self) -> bool {
        self.group.has_pending_proposals()
    }

    /// Loads a conversation from storage, if it exists.
    pub fn load(
        storage: &impl StorageProvider<CURRENT_VERSION>,
        id: &GroupId,
    ) -> Result<Option<Self>, Error> {
        let group = MlsGroup::load(storage, &MlsGroupId::from_slice(id.as_bytes()))
            .map_err(Error::storage)?;
        Ok(group.map(|group| Self { group }))
    }

    /// Deletes the conversation's MLS state.
    ///
    /// **Mutates storage.**
    pub fn delete(mut self, storage: &impl StorageProvider<CURRENT_VERSION>) -> Result<(), Error> {
        self.group.delete(storage).map_err(Error::storage)
    }

    /// The group id.
    pub fn id(&self) -> GroupId {
        GroupId(self.group.group_id().as_slice().to_vec())
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// False once this device was removed.
    pub fn is_active(&self) -> bool {
        self.group.is_active()
    }

    /// Whether a commit of ours awaits the relay's answer.
    pub fn has_pending_commit(&self) -> bool {
        self.group.pending_commit().is_some()
    }

    /// The identities of all member devices (leaves whose credential does not decode, which
    /// the checks on join and commit never let in, are left out).
    pub fn members(&self) -> Vec<CredentialIdentity> {
        self.group
            .members()
            .filter_map(|m| identity_of(&m.credential).ok())
            .collect()
    }

    /// The distinct accounts in the conversation other than `me`, sorted.
    pub fn peers(&self, me: &dm_wire::Handle) -> Vec<dm_wire::Handle> {
        let mut handles: Vec<_> = self
            .members()
            .into_iter()
            .map(|m| m.handle)
            .filter(|h| h != me)
            .collect();
        handles.sort();
        handles.dedup();
        handles
    }

    /// The epoch authenticator, for comparing group state out of band.
    pub fn epoch_authenticator(&self) -> Vec<u8> {
        self.group.epoch_authenticator().as_slice().to_vec()
    }

    /// Stages a commit adding the devices of validated key packages.
    ///
    /// **Mutates storage.** Fails with [`Error::Misuse`] if a commit is already pending or a
    /// device is already a member.
    pub fn invite<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        device: &Device,
        packages: &[ValidatedKeyPackage],
    ) -> Result<OutgoingCommit, Error> {
        self.ensure_no_pending_commit()?;
        if packages.is_empty() {
            return Err(Error::misuse("no key packages to add"));
        }
        // `commit_changes` refuses packages of devices that are already members.
        self.commit_changes(provider, device, packages, &[])
    }

    /// Stages one commit that adds the devices of validated key packages, removes the given
    /// member devices, and carries out every removal proposed by members (see
    /// [`Event::RemovalProposed`]). With nothing to add or remove and no pending proposal
    /// it fails with [`Error::Misuse`].
    ///
    /// **Mutates storage.**
    pub fn commit_changes<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        device: &Device,
        add: &[ValidatedKeyPackage],
        remove: &[CredentialIdentity],
    ) -> Result<OutgoingCommit, Error> {
        self.ensure_no_pending_commit()?;
        if add.is_empty() && remove.is_empty() && !self.group.has_pending_proposals() {
            return Err(Error::misuse("nothing to commit"));
        }
        // Decoding every member's identity costs O(N): only when there is something to add.
        let members = if add.is_empty() {
            Vec::new()
        } else {
            self.members()
        };
        if let Some(p) = add.iter().find(|p| members.contains(p.identity())) {
            return Err(Error::misuse(format!(
                "device {} of {} is already a member",
                p.identity().device_id,
                p.identity().handle
            )));
        }
        let own = self.own_identity();
        let mut indices = Vec::with_capacity(remove.len());
        for id in remove {
            if own.as_ref() == Some(id) {
                return Err(Error::misuse(
                    "a device cannot remove itself; leave instead",
                ));
            }
            let index = self
                .group
                .members()
                .find(|m| identity_of(&m.credential).ok().as_ref() == Some(id))
                .map(|m| m.index)
                .ok_or_else(|| {
                    Error::misuse(format!(
                        "device {} of {} is not a member",
                        id.device_id, id.handle
                    ))
                })?;
            indices.push(index);
        }
        let bundle = self
            .group
            .commit_builder()
            .consume_proposal_store(true)
            .propose_adds(add.iter().map(|p| p.key_package().clone()))
            .propose_removals(indices)
            .load_psks(provider.storage())
            .map_err(|e| Error::storage(format!("{e:?}")))?
            .build(provider.rand(), provider.crypto(), device.signer(), |_| {
                true
            })
            .map_err(map::create_commit)?
            .stage_commit(provider)
            .map_err(map::stage_commit)?;
        let welcome = bundle.to_welcome_msg().map(|w| encode(&w)).transpose()?;
        let commit = encode(bundle.commit())?;
        let (added, removed) = self
            .group
            .pending_commit()
            .map(|staged| self.commit_changes_unchecked(staged))
            .unwrap_or_default();
        Ok(OutgoingCommit {
            commit,
            welcome,
            added,
            removed,
        })
    }

    /// Proposes the removal of every device of this device's account (this device last):
    /// the account leaves the conversation once another member commits the proposals.
    /// Returns the encoded proposals, to send in order.
    ///
    /// **Mutates storage.**
    pub fn propose_leave<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        device: &Device,
    ) -> Result<Vec<Vec<u8>>, Error> {
        self.ensure_no_pending_commit()?;
        let me = self
            .own_identity()
            .ok_or_else(|| Error::misuse("not a member"))?;
        let others: Vec<LeafNodeIndex> = self
            .group
            .members()
            .filter(|m| m.index != self.group.own_leaf_index())
            .filter(|m| identity_of(&m.credential).is_ok_and(|id| id.handle == me.handle))
            .map(|m| m.index)
            .collect();
        let mut out = Vec::with_capacity(others.len() + 1);
        for index in others {
            let (message, _) = self
                .group
                .propose_remove_member(provider, device.signer(), index)
                .map_err(|e| Error::internal(format!("cannot propose a removal: {e}")))?;
            out.push(encode(&message)?);
        }
        let message = self
            .group
            .leave_group(provider, device.signer())
            .map_err(|e| Error::internal(format!("cannot propose leaving: {e}")))?;
        out.push(encode(&message)?);
        Ok(out)
    }

    /// Stages a commit that renews this device's leaf keys (post-compromise security).
    ///
    /// **Mutates storage.**
    pub fn self_update<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        device: &Device,
    ) -> Result<OutgoingCommit, Error> {
        self.ensure_no_pending_commit()?;
        let bundle = self
            .group
            .self_update(provider, device.signer(), LeafNodeParameters::default())
            .map_err(map::self_update)?;
        let welcome = bundle.to_welcome_msg().map(|w| encode(&w)).transpose()?;
        let (added, removed) = self
            .group
            .pending_commit()
            .map(|staged| self.commit_changes_unchecked(staged))
            .unwrap_or_default();
        Ok(OutgoingCommit {
            commit: encode(bundle.commit())?,
            welcome,
            added,
            removed,
        })
    }

    /// Applies our pending commit, once the relay accepted it. Returns what it changed, or
    /// `None` if no commit was pending.
    ///
    /// **Mutates storage.**
    pub fn merge_pending_commit<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
    ) -> Result<Option<Event>, Error> {
        let Some(staged) = self.group.pending_commit() else {
            return Ok(None);
        };
        let (added, removed) = self.commit_changes_unchecked(staged);
        let committer = self
            .group
            .credential()
            .map_err(Error::misuse)
            .and_then(|c| Ok(identity_of(c)?))?;
        self.group
            .merge_pending_commit(provider)
            .map_err(map::merge_pending)?;
        Ok(Some(Event::CommitApplied {
            group: self.id(),
            epoch: self.epoch(),
            committer,
            added,
            removed,
            self_removed: !self.group.is_active(),
        }))
    }

    /// Drops our pending commit after the relay rejected it (another commit won the epoch).
    ///
    /// **Mutates storage.**
    pub fn clear_pending_commit<P: OpenMlsProvider>(&mut self, provider: &P) -> Result<(), Error> {
        self.group
            .clear_pending_commit(provider.storage())
            .map_err(Error::storage)
    }

    /// Encrypts application content into a TLS-encoded PrivateMessage.
    ///
    /// **Mutates storage** (the sender ratchet advances).
    pub fn encrypt<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        device: &Device,
        content: &Content,
    ) -> Result<Vec<u8>, Error> {
        let plaintext = content.encode().map_err(|e| match e {
            ContentError::TooLong => Error::misuse("text too long"),
            other => Error::internal(other),
        })?;
        let message = self
            .group
            .create_message(provider, device.signer(), &plaintext)
            .map_err(map::create_message)?;
        encode(&message)
    }

    /// Processes one PrivateMessage of this conversation: decrypts it, checks every
    /// credential it brings against the directory, and applies commits.
    ///
    /// **Mutates storage** (even when it fails: roll back on error).
    pub fn process<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        directory: &impl Directory,
        message: ProtocolMessage,
    ) -> Result<Event, Error> {
        if message.group_id() != self.group.group_id() {
            return Err(Error::misuse("message of another conversation"));
        }
        let processed = self
            .group
            .process_message(provider, message)
            .map_err(map::process)?;
        let group = self.id();
        let Sender::Member(sender_index) = *processed.sender() else {
            return Err(Error::not_allowed("sender is not a member"));
        };
        #[allow(unreachable_patterns)]
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let sender = self.verify_member(directory, sender_index)?;
                let content = Content::decode(&app.into_bytes())?;
                Ok(Event::Message {
                    group,
                    sender,
                    content,
                })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                self.apply_commit(provider, directory, sender_index, *staged)
            }
            ProcessedMessageContent::ProposalMessage(queued) => {
                // Only one kind of standalone proposal is used: a member removing a device
                // of its own account (leaving the conversation).
                let Proposal::Remove(remove) = queued.proposal() else {
                    return Ok(Event::Ignored {
                        group,
                        reason: "only removal proposals are used by this protocol",
                    });
                };
                let proposer = self.verify_member(directory, sender_index)?;
                let member = self
                    .group
                    .member_at(remove.removed())
                    .ok_or_else(|| Error::not_allowed("removal of an empty leaf"))?;
                let removed = identity_of(&member.credential)?;
                if removed.handle != proposer.handle {
                    return Err(Error::not_allowed(
                        "a member may only propose removing its own account's devices",
                    ));
                }
                self.group
                    .store_pending_proposal(provider.storage(), *queued)
                    .map_err(Error::storage)?;
                Ok(Event::RemovalProposed {
                    group,
                    proposer,
                    removed,
                })
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => Ok(Event::Ignored {
                group,
                reason: "external proposals are not used by this protocol",
            }),
            ProcessedMessageContent::OwnPendingCommit => {
                // Our own pending commit, fanned back by the relay: it was accepted.
                // (Only PublicMessage commits surface like this; ours are PrivateMessages.)
                self.merge_pending_commit(provider)?
                    .ok_or_else(|| Error::internal("own pending commit vanished"))
            }
            ProcessedMessageContent::OwnPrivateMessage => Ok(Event::OwnMessage { group }),
            _ => Ok(Event::Ignored {
                group,
                reason: "unsupported message content",
            }),
        }
    }

    fn ensure_no_pending_commit(&self) -> Result<(), Error> {
        if self.has_pending_commit() {
            return Err(Error::misuse("a commit is already pending"));
        }
        if !self.is_active() {
            return Err(Error::misuse("this device is no longer a member"));
        }
        Ok(())
    }

    /// Verifies the current leaf at `index` against the directory.
    fn verify_member(
        &self,
        directory: &impl Directory,
        index: LeafNodeIndex,
    ) -> Result<CredentialIdentity, Error> {
        let member = self
            .group
            .member_at(index)
            .ok_or_else(|| Error::not_allowed("sender leaf is empty"))?;
        verify_leaf(directory, &member.credential, &member.signature_key)
    }

    /// Checks every credential a commit brings, then merges it.
    fn apply_commit<P: OpenMlsProvider>(
        &mut self,
        provider: &P,
        directory: &impl Directory,
        sender_index: LeafNodeIndex,
        staged: StagedCommit,
    ) -> Result<Event, Error> {
        let committer = self.verify_member(directory, sender_index)?;
        let admin = self.meta()?.map(|m| m.admin);
        let committer_is_admin = admin.as_ref() == Some(&committer.handle);
        let accounts_before: Vec<dm_wire::Handle> =
            self.members().into_iter().map(|m| m.handle).collect();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for queued in staged.queued_proposals() {
            match queued.proposal() {
                Proposal::Add(add) => {
                    let leaf = add.key_package().leaf_node();
                    let id = verify_leaf(
                        directory,
                        leaf.credential(),
                        leaf.signature_key().as_slice(),
                    )?;
                    if !committer_is_admin && !accounts_before.contains(&id.handle) {
                        return Err(Error::not_allowed(
                            "only the group's administrator may add accounts",
                        ));
                    }
                    added.push(id);
                }
                Proposal::Remove(remove) => {
                    let member = self
                        .group
                        .member_at(remove.removed())
                        .ok_or_else(|| Error::not_allowed("removal of an empty leaf"))?;
                    let id = identity_of(&member.credential)?;
                    let proposer = match *queued.sender() {
                        Sender::Member(index) => self
                            .group
                            .member_at(index)
                            .and_then(|m| identity_of(&m.credential).ok()),
                        _ => None,
                    };
                    let own_account = committer.handle == id.handle
                        || proposer.is_some_and(|p| p.handle == id.handle);
                    if !own_account && !committer_is_admin {
                        // Anyone may remove a device its account no longer lists.
                        let listed = directory
                            .device_list(&id.handle)?
                            .is_some_and(|list| list.device(&id.device_id).is_some());
                        if listed {
                            return Err(CredentialError::StillListed {
                                handle: id.handle,
                                device_id: id.device_id,
                            }
                            .into());
                        }
                    }
                    removed.push(id);
                }
                Proposal::Update(update) => {
                    let Sender::Member(proposer) = *queued.sender() else {
                        return Err(Error::not_allowed("update from a non-member"));
                    };
                    let before = self.verify_member(directory, proposer)?;
                    let leaf = update.leaf_node();
                    let after = verify_leaf(
                        directory,
                        leaf.credential(),
                        leaf.signature_key().as_slice(),
                    )?;
                    if before != after {
                        return Err(CredentialError::IdentityChanged.into());
                    }
                }
                _ => {
                    return Err(Error::not_allowed(
                        "proposal type not used by this protocol",
                    ));
                }
            }
        }
        if let Some(leaf) = staged.update_path_leaf_node() {
            let after = verify_leaf(
                directory,
                leaf.credential(),
                leaf.signature_key().as_slice(),
            )?;
            if after != committer {
                return Err(CredentialError::IdentityChanged.into());
            }
        }
        for credential in staged.credentials_to_verify() {
            verify_credential(directory, credential)?;
        }
        let self_removed = staged.self_removed();
        self.group
            .merge_staged_commit(provider, staged)
            .map_err(map::merge)?;
        Ok(Event::CommitApplied {
            group: self.id(),
            epoch: self.epoch(),
            committer,
            added,
            removed,
            self_removed,
        })
    }

    /// Added and removed identities of a commit we built ourselves (its key packages were
    /// validated before).
    fn commit_changes_unchecked(
        &self,
        staged: &StagedCommit,
    ) -> (Vec<CredentialIdentity>, Vec<CredentialIdentity>) {
        let added = staged
            .add_proposals()
            .filter_map(|p| {
                identity_of(p.add_proposal().key_package().leaf_node().credential()).ok()
            })
            .collect();
        let removed = staged
            .remove_proposals()
            .filter_map(|p| self.group.member_at(p.remove_proposal().removed()))
            .filter_map(|m| identity_of(&m.credential).ok())
            .collect();
        (added, removed)
    }
}

/// Joins a conversation from a Welcome, after checking the inviter and every member
/// against the directory.
///
/// **Mutates storage** (consumes the key package, even on failure: roll back on error).
pub fn join<P: OpenMlsProvider>(
    provider: &P,
    directory: &impl Directory,
    welcome: Welcome,
) -> Result<(Conversation, Event), Error> {
    let staged = StagedWelcome::new_from_welcome(provider, &join_config(), welcome, None)
        .map_err(map::welcome)?;
    let context = staged.group_context();
    if context.ciphersuite() != CIPHERSUITE {
        return Err(Error::not_allowed("conversation of another ciphersuite"));
    }
    let group = GroupId(context.group_id().as_slice().to_vec());
    if group.0.is_empty() || group.0.len() > GroupId::MAX_LEN {
        return Err(Error::malformed("Welcome", "group id length out of range"));
    }
    if MlsGroup::load(provider.storage(), context.group_id())
        .map_err(Error::storage)?
        .is_some()
    {
        return Err(Error::not_allowed(
            "Welcome to a conversation already joined",
        ));
    }
    let sender = staged.welcome_sender().map_err(Error::internal)?;
    let inviter = verify_leaf(
        directory,
        sender.credential(),
        sender.signature_key().as_slice(),
    )?;
    let members = staged
        .members()
        .map(|m| verify_leaf(directory, &m.credential, &m.signature_key))
        .collect::<Result<Vec<_>, _>>()?;
    let group_state = staged.into_group(provider).map_err(map::welcome)?;
    Ok((
        Conversation { group: group_state },
        Event::Joined {
            group,
            inviter,
            members,
        },
    ))
}

/// Processes one incoming payload (a TLS-encoded `MLSMessage` from the mailbox): a Welcome
/// joins a conversation, a PrivateMessage goes to its conversation. Anything else is
/// rejected.
///
/// **Mutates storage** (even when it fails: roll back on error).
pub fn process_incoming<P: OpenMlsProvider>(
    provider: &P,
    directory: &impl Directory,
    bytes: &[u8],
) -> Result<Event, Error> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| Error::malformed("MLS message", e))?;
    match message.extract() {
        MlsMessageBodyIn::Welcome(welcome) => join(provider, directory, welcome).map(|(_, e)| e),
        MlsMessageBodyIn::PrivateMessage(private) => {
            let message = ProtocolMessage::from(private);
            let id = GroupId(message.group_id().as_slice().to_vec());
            let mut conversation = Conversation::load(provider.storage(), &id)?
                .ok_or_else(|| Error::not_allowed("message for an unknown conversation"))?;
            conversation.process(provider, directory, message)
        }
        MlsMessageBodyIn::PublicMessage(_) => Err(Error::not_allowed(
            "plaintext MLS messages are not accepted",
        )),
        _ => Err(Error::not_allowed("unexpected MLS message type")),
    }
}

/// The group id in a PrivateMessage's or PublicMessage's cleartext header (without
/// decrypting anything), e.g. to attribute an undecryptable message to its conversation.
pub fn peek_group_id(bytes: &[u8]) -> Option<GroupId> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes).ok()?;
    let protocol = message.try_into_protocol_message().ok()?;
    Some(GroupId(protocol.group_id().as_slice().to_vec()))
}

fn encode(message: &MlsMessageOut) -> Result<Vec<u8>, Error> {
    message.tls_serialize_detached().map_err(Error::internal)
}

#[cfg(test)]
#[path = "conversation_tests.rs"]
mod tests;
