//! Sorting openmls' errors into this crate's categories.
//!
//! Errors of incoming messages are invalid input unless storage or a bug caused them;
//! errors of our own operations are misuse (wrong group state), storage, or internal.

use std::fmt::Display;

use openmls::prelude::{
    CreateMessageError, MergeCommitError, MergePendingCommitError, NewGroupError,
    ProcessMessageError, SelfUpdateError, WelcomeError,
};

use crate::error::Error;

pub(crate) fn new_group<E: Display>(e: NewGroupError<E>) -> Error {
    match e {
        NewGroupError::StorageError(s) => Error::storage(s),
        NewGroupError::GroupAlreadyExists => Error::misuse("group id already in use"),
        other => Error::internal(other),
    }
}

pub(crate) fn create_commit(e: openmls::prelude::CreateCommitError) -> Error {
    Error::internal(format!("cannot build the commit: {e}"))
}

pub(crate) fn stage_commit<E: Display>(e: openmls::group::CommitBuilderStageError<E>) -> Error {
    match e {
        openmls::group::CommitBuilderStageError::KeyStoreError(s) => Error::storage(s),
        other => Error::internal(other),
    }
}

pub(crate) fn self_update<E: Display>(e: SelfUpdateError<E>) -> Error {
    match e {
        SelfUpdateError::StorageError(s) => Error::storage(s),
        SelfUpdateError::GroupStateError(g) => Error::misuse(g),
        other => Error::internal(other),
    }
}

pub(crate) fn create_message(e: CreateMessageError) -> Error {
    match e {
        CreateMessageError::GroupStateError(g) => Error::misuse(g),
        other => Error::internal(other),
    }
}

pub(crate) fn merge<E: Display>(e: MergeCommitError<E>) -> Error {
    match e {
        MergeCommitError::StorageError(s) => Error::storage(s),
        other => Error::internal(other),
    }
}

pub(crate) fn merge_pending<E: Display>(e: MergePendingCommitError<E>) -> Error {
    match e {
        MergePendingCommitError::MlsGroupStateError(g) => Error::misuse(g),
        MergePendingCommitError::MergeCommitError(m) => merge(m),
    }
}

pub(crate) fn process<E: Display>(e: ProcessMessageError<E>) -> Error {
    match e {
        ProcessMessageError::StorageError(s) => Error::storage(s),
        ProcessMessageError::LibraryError(l) => Error::internal(l),
        other => Error::mls(other),
    }
}

pub(crate) fn welcome<E: Display>(e: WelcomeError<E>) -> Error {
    match e {
        WelcomeError::StorageError(s) => Error::storage(s),
        WelcomeError::LibraryError(l) => Error::internal(l),
        other => Error::mls(other),
    }
}
