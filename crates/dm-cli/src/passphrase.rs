//! Where the store passphrase comes from: `DM_PASSPHRASE`, or a hidden prompt.

use std::io::IsTerminal as _;

use anyhow::{Context as _, bail};
use zeroize::Zeroizing;

/// Name of the environment variable holding the passphrase.
pub const ENV: &str = "DM_PASSPHRASE";

/// The passphrase of an existing store.
pub fn existing() -> anyhow::Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var(ENV) {
        return Ok(Zeroizing::new(p));
    }
    prompt("Passphrase: ")
}

/// A new passphrase, typed twice when prompted.
pub fn new() -> anyhow::Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var(ENV) {
        if p.is_empty() {
            bail!("{ENV} is empty. Choose a passphrase to protect this device's store.");
        }
        return Ok(Zeroizing::new(p));
    }
    let first = prompt("Choose a passphrase for this device's encrypted store: ")?;
    if first.is_empty() {
        bail!("the passphrase is empty. Choose one to protect this device's store.");
    }
    let second = prompt("Repeat the passphrase: ")?;
    if first != second {
        bail!("the passphrases differ. Run the command again.");
    }
    Ok(first)
}

fn prompt(text: &str) -> anyhow::Result<Zeroizing<String>> {
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set {ENV} or run `dm` in a terminal to be asked for it.");
    }
    rpassword::prompt_password(text)
        .map(Zeroizing::new)
        .context("cannot read the passphrase from the terminal")
}
