//! `dm inbox [--json]`: fetch, decrypt and print new messages.

use dm_client::Client;

use crate::output;

pub async fn run(client: &Client, json: bool) -> anyhow::Result<()> {
    let batch = client.sync_events().await?;
    let mut shown = 0usize;
    for event in &batch.events {
        if json {
            outln!("{}", output::event_json(event));
        } else if let Some(line) = output::event_text(event) {
            outln!("{line}");
        }
        if matches!(event, dm_client::Event::Message(_)) {
            shown += 1;
        }
    }
    if !json && shown == 0 {
        outln!("No new messages.");
    }
    // Only what reached stdout is forgotten: if `dm` dies before this point, the next
    // `dm inbox` shows the same events again rather than never.
    std::io::Write::flush(&mut std::io::stdout())?;
    client.acknowledge_events(&batch).await?;
    Ok(())
}
