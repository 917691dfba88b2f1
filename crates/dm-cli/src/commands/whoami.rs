//! `dm whoami`.

use dm_client::Client;

pub async fn run(client: &Client) -> anyhow::Result<()> {
    let me = client.whoami().await?;
    outln!("handle:      {}", me.handle);
    outln!("device:      {}", me.device_id);
    outln!("relay:       {}", me.server);
    outln!("fingerprint: {}", me.fingerprint);
    Ok(())
}
