//! `dm chat HANDLE`: line-mode chat. Lines typed are sent; incoming messages are printed
//! as they arrive. End with Ctrl-D or `/quit`.

use std::time::Duration;

use dm_client::Client;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::output;

/// How often the relay is asked for new messages.
const POLL: Duration = Duration::from_millis(700);

pub async fn run(client: &Client, handle: &str) -> anyhow::Result<()> {
    let peer = super::parse_handle(handle)?;
    println!("Chatting with {peer}. Type a message and press Enter; /quit or Ctrl-D ends.");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            _ = ticker.tick() => {
                match client.sync_events().await {
                    Ok(batch) => {
                        // Everything that arrives is shown, other conversations included
                        // (each line names its sender): `dm inbox` shows only what is new.
                        for event in &batch.events {
                            if let Some(line) = output::event_text(event) {
                                println!("{line}");
                            }
                        }
                        std::io::Write::flush(&mut std::io::stdout())?;
                        client.acknowledge_events(&batch).await?;
                    }
                    Err(e) => eprintln!("{}", output::render_error(&e.into())),
                }
            }
        }
    }
    Ok(())
}
