//! `dm send HANDLE TEXT`.

use dm_client::Client;

pub async fn run(client: &Client, handle: &str, text: &str) -> anyhow::Result<()> {
    let to = client.resolve(handle).await?;
    if text.is_empty() {
        anyhow::bail!(
            "the message is empty: give the text to send, e.g. dm send {handle} \"hello\""
        );
    }
    let sent = client.send_to(&to, text).await?;
    match to {
        dm_client::Target::Handle(h) => outln!("Sent to {h} (id {}).", sent.id),
        dm_client::Target::Conversation(g) => outln!("Sent to {g} (id {}).", sent.id),
    }
    Ok(())
}
