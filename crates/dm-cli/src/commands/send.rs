//! `dm send HANDLE TEXT`.

use dm_client::Client;

pub async fn run(client: &Client, handle: &str, text: &str) -> anyhow::Result<()> {
    let to = super::parse_handle(handle)?;
    if text.is_empty() {
        anyhow::bail!("the message is empty: give the text to send, e.g. dm send {to} \"hello\"");
    }
    let sent = client.send(&to, text).await?;
    println!("Sent to {to} (id {}).", sent.id);
    Ok(())
}
