//! `dm group …`, `dm conversations`, `dm verify`.

use dm_client::{Client, GroupId, Target};
use serde_json::json;

use crate::cli::GroupCommand;
use crate::output;

pub async fn run(client: &Client, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Create { name, handles } => {
            let members = handles
                .iter()
                .map(|h| super::parse_handle(h))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let id = client.create_group(&name, &members).await?;
            outln!("Created group {} ({id}).", output::printable(&name));
            outln!("{id}");
        }
        GroupCommand::Add { id, handles } => {
            let group = group(client, &id).await?;
            let members = handles
                .iter()
                .map(|h| super::parse_handle(h))
                .collect::<anyhow::Result<Vec<_>>>()?;
            client.add_to_group(&group, &members).await?;
            outln!("Added {} to {group}.", handles.join(", "));
        }
        GroupCommand::Remove { id, handle } => {
            let group = group(client, &id).await?;
            let member = super::parse_handle(&handle)?;
            client.remove_from_group(&group, &member).await?;
            outln!("Removed {member} from {group}.");
        }
        GroupCommand::Leave { id } => {
            let group = group(client, &id).await?;
            client.leave_group(&group).await?;
            outln!("Leaving {group}: the other members remove you when they next sync.");
        }
    }
    Ok(())
}

/// A group by id or name.
pub async fn group(client: &Client, input: &str) -> anyhow::Result<GroupId> {
    match client.resolve(input).await? {
        Target::Conversation(g) => Ok(g),
        Target::Handle(h) => anyhow::bail!("no group '{input}' (did you mean the person {h}?)"),
    }
}

pub async fn conversations(client: &Client, as_json: bool) -> anyhow::Result<()> {
    let list = client.conversations().await?;
    if list.is_empty() && !as_json {
        outln!("No conversations yet.");
    }
    for c in list {
        if as_json {
            outln!(
                "{}",
                json!({
                    "id": c.id.to_hex(),
                    "kind": if c.name.is_some() { "group" } else { "direct" },
                    "name": c.name,
                    "admin": c.admin.as_ref().map(|a| a.as_str()),
                    "state": c.state,
                    "leaving": c.leaving,
                    "epoch": c.epoch,
                    "members": c.members.iter().map(|(h, devices)| json!({
                        "handle": h.as_str(),
                        "devices": devices.iter().map(|d| d.to_hex()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            );
        } else {
            let members = c
                .members
                .iter()
                .map(|(h, d)| {
                    format!(
                        "{h} ({} device{})",
                        d.len(),
                        if d.len() == 1 { "" } else { "s" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let title = match (&c.name, &c.admin) {
                (Some(name), Some(admin)) => {
                    format!("group \"{}\" (admin {admin})", output::printable(name))
                }
                _ => "direct".to_owned(),
            };
            let state = if c.leaving {
                "leaving".to_owned()
            } else {
                c.state.clone()
            };
            outln!("{}  {title}  [{state}]  {members}", c.id);
        }
    }
    Ok(())
}

pub async fn verify(
    client: &Client,
    handle: Option<String>,
    confirm: bool,
    group_id: Option<String>,
) -> anyhow::Result<()> {
    if let Some(id) = group_id {
        let g = group(client, &id).await?;
        let (epoch, code) = client.group_code(&g).await?;
        outln!("Group {g}, epoch {epoch}");
        outln!("group code: {code}");
        outln!(
            "Every member in this epoch sees the same code; a different code means your views of the group differ."
        );
        return Ok(());
    }
    let Some(handle) = handle else {
        anyhow::bail!("give a handle, or --group ID");
    };
    let peer = super::parse_handle(&handle)?;
    let v = if confirm {
        client.confirm_verification(&peer).await?
    } else {
        client.verification(&peer).await?
    };
    if v.key_changed {
        outln!(
            "!!! The account key of {peer} CHANGED since you first saw it. Compare the new safety number before trusting it."
        );
    }
    outln!("Safety number with {peer}:");
    outln!("    {}", v.safety_number);
    outln!("QR payload: {}", v.qr_payload);
    outln!("{peer}'s key fingerprint: {}", v.fingerprint);
    let state = if v.verified {
        "verified"
    } else if v.blocked {
        "NOT verified: sending is refused until you confirm (dm verify HANDLE --confirm)"
    } else {
        "not verified (compare the number in person, then run with --confirm)"
    };
    outln!("status: {state}");
    if confirm {
        outln!("Marked {peer} as verified.");
    }
    Ok(())
}
