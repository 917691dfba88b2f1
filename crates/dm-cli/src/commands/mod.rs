//! One function per subcommand.

mod chat;
mod devices;
mod groups;
mod inbox;
mod init;
mod send;
mod vectors;
mod whoami;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use dm_client::{Client, Handle};

use crate::cli::{Cli, Command};
use crate::passphrase;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // The test vectors need no account.
    if let Command::Vectors(command) = cli.command {
        return vectors::run(command);
    }
    let home = match cli.home {
        Some(home) => home,
        None => default_home()?,
    };
    match cli.command {
        Command::Init {
            server,
            handle,
            recover,
        } => init::run(&home, &server, &handle, recover).await,
        Command::Device { command } => devices::run(&home, command).await,
        Command::Verify {
            handle,
            confirm,
            group,
        } => groups::verify(&open(&home).await?, handle, confirm, group).await,
        Command::Group { command } => groups::run(&open(&home).await?, command).await,
        Command::Conversations { json } => groups::conversations(&open(&home).await?, json).await,
        Command::Rejoin => {
            let client = open(&home).await?;
            let id = client.rejoin().await?;
            outln!(
                "This device rejoins as {id}: the other members add it back when they next sync."
            );
            Ok(())
        }
        Command::DeleteAccount { yes } => {
            if !yes {
                anyhow::bail!(
                    "this deletes your account at the relay for every device; pass --yes to confirm"
                );
            }
            let client = open(&home).await?;
            client.delete_account().await?;
            outln!("Deleted the account at the relay. The handle is free again.");
            Ok(())
        }
        Command::Send { handle, text } => send::run(&open(&home).await?, &handle, &text).await,
        Command::Inbox { json } => inbox::run(&open(&home).await?, json).await,
        Command::Chat { handle } => chat::run(&open(&home).await?, &handle).await,
        Command::Whoami => whoami::run(&open(&home).await?).await,
        Command::RotateKeys { handle } => {
            let client = open(&home).await?;
            let peer = parse_handle(&handle)?;
            client.rotate_keys(&peer).await?;
            outln!("Rotated this device's keys in the conversation with {peer}.");
            Ok(())
        }
        Command::Vectors(command) => vectors::run(command),
    }
}

/// The OS data directory's `dm` folder.
fn default_home() -> anyhow::Result<PathBuf> {
    let base = dirs::data_dir()
        .context("cannot find the OS data directory: pass --home DIR or set DM_HOME")?;
    Ok(base.join("dm"))
}

/// Unlocks the account stored in `home`.
pub(crate) async fn open(home: &Path) -> anyhow::Result<Client> {
    if !Client::account_exists(home) {
        return Err(dm_client::Error::NoAccount.into());
    }
    let passphrase = passphrase::existing()?;
    Ok(Client::open(home, &passphrase).await?)
}

/// Parses a handle typed by a person (`@Bob` or `bob`).
pub(crate) fn parse_handle(input: &str) -> anyhow::Result<Handle> {
    Handle::parse(input).map_err(|e| {
        anyhow::anyhow!(
            "'{input}' is not a valid handle ({e}): handles have 3-32 characters from a-z, 0-9 and _, starting with a letter"
        )
    })
}
