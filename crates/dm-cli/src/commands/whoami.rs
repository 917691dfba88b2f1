//! `dm whoami`.

use dm_client::Client;

pub async fn run(client: &Client) -> anyhow::Result<()> {
    let me = client.whoami().await?;
    println!("handle:      {}", me.handle);
    println!("device:      {}", me.device_id);
    println!("relay:       {}", me.server);
    println!("fingerprint: {}", me.fingerprint);
    Ok(())
}
