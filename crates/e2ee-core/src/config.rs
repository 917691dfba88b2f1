//! The MLS parameters of every conversation.
//!
//! * Ciphersuite [`CIPHERSUITE`] (0x0003), set explicitly: openmls defaults to 0x0001.
//! * Handshake messages are PrivateMessages (`PURE_CIPHERTEXT_WIRE_FORMAT_POLICY`): the relay
//!   sees only the cleartext header (group id, epoch, content type).
//! * [`MAX_PAST_EPOCHS`] past epochs stay decryptable, so a message encrypted just before a
//!   commit still opens after it (a trade-off against forward secrecy, kept small).
//! * The ratchet tree travels in the Welcome (`use_ratchet_tree_extension`), so the relay
//!   need not store trees.
//! * Leaf capabilities list [`ExtensionType::LastResort`], without which a last-resort key
//!   package fails validation, and the group metadata extension [`GROUP_META_EXTENSION`].

use openmls::prelude::{
    Capabilities, Ciphersuite, ExtensionType, Extensions, GroupContext, MlsGroupCreateConfig,
    MlsGroupJoinConfig, MlsGroupJoinConfigBuilder, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
};

/// `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519` (0x0003).
pub const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;

/// How many past epochs keep their message secrets.
pub const MAX_PAST_EPOCHS: usize = 5;

/// The private-use MLS extension type of the group metadata ([`crate::group::GroupMeta`]:
/// administrator and name) in the group context of group conversations.
pub const GROUP_META_EXTENSION: u16 = 0xF0D1;

/// The capabilities advertised in every leaf node this client creates (group creation and
/// key packages): openmls' defaults plus the last-resort extension.
pub fn capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(vec![
            ExtensionType::LastResort,
            ExtensionType::Unknown(GROUP_META_EXTENSION),
        ])
        .build()
}

/// A join-config builder with the product settings, for callers that must change one
/// more setting (for example the conformance test runner, which follows PublicMessage
/// commits). Product code uses [`join_config`].
pub fn join_config_builder() -> MlsGroupJoinConfigBuilder {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .use_ratchet_tree_extension(true)
}

/// The configuration used when joining a conversation from a Welcome.
pub fn join_config() -> MlsGroupJoinConfig {
    join_config_builder().build()
}

/// The configuration used when creating a conversation.
pub fn create_config() -> MlsGroupCreateConfig {
    create_config_with(Extensions::empty())
}

/// The configuration used when creating a conversation whose group context carries
/// `extensions` (the group metadata of group conversations).
pub fn create_config_with(extensions: Extensions<GroupContext>) -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .with_group_context_extensions(extensions)
        .ciphersuite(CIPHERSUITE)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .use_ratchet_tree_extension(true)
        .capabilities(capabilities())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_join_configs_agree() {
        let create = create_config();
        assert_eq!(create.ciphersuite(), CIPHERSUITE);
        assert_eq!(u16::from(CIPHERSUITE), 0x0003);
        assert_eq!(create.join_config(), &join_config());
        assert_eq!(create.max_past_epochs(), Some(MAX_PAST_EPOCHS));
        assert!(create.use_ratchet_tree_extension());
        assert_eq!(
            join_config().wire_format_policy(),
            PURE_CIPHERTEXT_WIRE_FORMAT_POLICY
        );
        assert!(
            capabilities()
                .extensions()
                .contains(&ExtensionType::LastResort)
        );
    }
}
