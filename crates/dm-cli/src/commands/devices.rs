//! `dm device link|approve|list|revoke`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;
use std::time::Duration;

use dm_client::{Client, DeviceId, PendingDeviceLink};

use crate::cli::DeviceCommand;
use crate::{output, passphrase};

pub async fn run(home: &Path, command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Link { server, timeout } => link(home, &server, timeout).await,
        DeviceCommand::Approve { code, yes, timeout } => {
            let client = super::open(home).await?;
            let approval = client.inspect_link(&code).await?;
            outln!("New device {}", approval.device_id);
            outln!("fingerprint: {}", approval.fingerprint);
            if !yes && !confirm("Is this the fingerprint the new device shows? Approve it? [y/N] ")?
            {
                anyhow::bail!("not approved; nothing was changed");
            }
            let id = client
                .approve_link(&code, Duration::from_secs(timeout))
                .await?;
            outln!("Approved device {id}; it is now in all your conversations.");
            Ok(())
        }
        DeviceCommand::List => {
            let client = super::open(home).await?;
            for d in client.devices().await? {
                let seen = d.last_seen.map_or_else(|| "never".to_owned(), output::utc);
                outln!(
                    "{}{}  fingerprint {}  added {}  last active {}",
                    d.id,
                    if d.this_device { " (this device)" } else { "" },
                    d.fingerprint,
                    output::utc(d.added_at.saturating_mul(1000)),
                    seen
                );
            }
            Ok(())
        }
        DeviceCommand::Revoke { id } => {
            let client = super::open(home).await?;
            let id: DeviceId = id.trim().parse().map_err(|e| {
                anyhow::anyhow!("'{id}' is not a device id ({e}); see `dm device list`")
            })?;
            client.revoke_device(id).await?;
            outln!(
                "Revoked device {id}: it was removed from your device list and from your conversations."
            );
            Ok(())
        }
    }
}

async fn link(home: &Path, server: &str, timeout: u64) -> anyhow::Result<()> {
    if Client::account_exists(home) {
        return Err(dm_client::Error::AccountExists.into());
    }
    let mut passphrase = passphrase::new()?;
    let server = super::init::normalise_server(server)?;
    let pending = PendingDeviceLink::start(&server).await?;
    outln!("Link code: {}", pending.code());
    outln!("QR payload: {}", pending.qr_payload());
    outln!("This device's fingerprint: {}", pending.fingerprint());
    outln!(
        "On a device of your account, run: dm device approve {}",
        pending.code()
    );
    outln!("Waiting for the approval…");
    std::io::stdout().flush()?;
    let client = pending
        .wait(
            home,
            &std::mem::take(&mut *passphrase),
            Duration::from_secs(timeout),
        )
        .await?;
    let me = client.whoami().await?;
    outln!(
        "Linked: this device ({}) now belongs to {}.",
        me.device_id,
        me.handle
    );
    Ok(())
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("no terminal to confirm on: compare the fingerprint, then pass --yes");
    }
    out!("{question}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}
