//! `dm chat HANDLE`: line-mode chat. Lines typed are sent; incoming messages are printed
//! as they arrive: pushed by the relay over its socket, or fetched every second when the
//! socket is unavailable. End with Ctrl-D or `/quit`.

use dm_client::Client;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::output;

pub async fn run(client: &Client, handle: &str) -> anyhow::Result<()> {
    let peer = super::parse_handle(handle)?;
    outln!("Chatting with {peer}. Type a message and press Enter; /quit or Ctrl-D ends.");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut live = client.live();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let text = line.trim_end();
                if text == "/quit" {
                    break;
                }
                if text.is_empty() {
                    continue;
                }
                match client.send(&peer, text).await {
                    Ok(_) => {}
                    Err(e) => eprintln!("{}", output::render_error(&e.into())),
                }
            }
            batch = live.next_events() => {
                match batch {
                    Ok(batch) => {
                        // Everything that arrives is shown, other conversations included
                        // (each line names its sender): `dm inbox` shows only what is new.
                        for event in &batch.events {
                            if let Some(line) = output::event_text(event) {
                                outln!("{line}");
                            }
                        }
                        std::io::Write::flush(&mut std::io::stdout())?;
                        client.acknowledge_events(&batch).await?;
                    }
                    Err(e) => {
                        eprintln!("{}", output::render_error(&e.into()));
                        // Do not spin on a persistent failure.
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
    Ok(())
}
