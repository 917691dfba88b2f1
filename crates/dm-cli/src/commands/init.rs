//! `dm init`: create the account and this device, register at the relay.

use std::path::Path;

use dm_client::{Client, CreateOptions};

use crate::passphrase;

pub async fn run(home: &Path, server: &str, handle: &str, recover: bool) -> anyhow::Result<()> {
    let handle = super::parse_handle(handle)?;
    let server = normalise_server(server)?;
    if Client::account_exists(home) {
        return Err(dm_client::Error::AccountExists.into());
    }
    if recover {
        let code = recovery_code()?;
        let mut passphrase = passphrase::new()?;
        let client = Client::recover(
            CreateOptions {
                home: home.to_path_buf(),
                server,
                handle,
                passphrase: std::mem::take(&mut *passphrase),
            },
            &code,
        )
        .await?;
        let me = client.whoami().await?;
        outln!("Recovered {} on {}", me.handle, me.server);
        outln!("device:      {}", me.device_id);
        outln!("fingerprint: {}", me.fingerprint);
        outln!();
        outln!("Your contacts add this device to your conversations when they next sync.");
        outln!("Revoke lost devices with `dm device revoke ID` (see `dm device list`).");
        return Ok(());
    }
    let mut passphrase = passphrase::new()?;
    let (client, recovery) = Client::create(CreateOptions {
        home: home.to_path_buf(),
        server,
        handle,
        // Moved, not copied: the client zeroizes it.
        passphrase: std::mem::take(&mut *passphrase),
    })
    .await?;
    let me = client.whoami().await?;
    outln!("Created {} on {}", me.handle, me.server);
    outln!("device:      {}", me.device_id);
    outln!("fingerprint: {}", me.fingerprint);
    outln!();
    outln!("Recovery code (shown once; write it down and keep it offline):");
    outln!();
    outln!("    {recovery}");
    outln!();
    outln!("Anyone with this code can take over your account. It is the only way back");
    outln!("into your account if you lose every device: there is no phone number or e-mail.");
    Ok(())
}

/// The recovery code, from DM_RECOVERY_CODE or one line typed at the terminal.
fn recovery_code() -> anyhow::Result<dm_client::RecoveryCode> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let text = match std::env::var("DM_RECOVERY_CODE") {
        Ok(code) => zeroize::Zeroizing::new(code),
        Err(_) => {
            if !std::io::stdin().is_terminal() {
                anyhow::bail!("no recovery code: set DM_RECOVERY_CODE or run `dm` in a terminal");
            }
            out!("Recovery code: ");
            std::io::stdout().flush()?;
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin().lock().read_line(&mut line)?;
            line
        }
    };
    dm_client::RecoveryCode::parse(&text)
        .map_err(|e| anyhow::anyhow!("{e}: check the code you typed"))
}

/// Accepts `host:port` or a full `http(s)://` URL; returns a URL without a trailing `/`.
pub(crate) fn normalise_server(input: &str) -> anyhow::Result<String> {
    let trimmed = input.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        anyhow::bail!("--server is empty: give the relay's URL, e.g. http://127.0.0.1:7878");
    }
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        Ok(trimmed.to_owned())
    } else if trimmed.contains("://") {
        anyhow::bail!(
            "'{input}' is not an http:// or https:// URL: give the relay's URL, e.g. http://127.0.0.1:7878"
        )
    } else {
        Ok(format!("http://{trimmed}"))
    }
}

#[cfg(test)]
mod tests {
    use super::normalise_server;

    #[test]
    fn server_urls_are_normalised() {
        assert_eq!(
            normalise_server("127.0.0.1:7878").unwrap(),
            "http://127.0.0.1:7878"
        );
        assert_eq!(
            normalise_server("https://relay.example/").unwrap(),
            "https://relay.example"
        );
        assert!(normalise_server("ftp://x").is_err());
        assert!(normalise_server(" ").is_err());
    }
}
