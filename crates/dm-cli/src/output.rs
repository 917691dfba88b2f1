//! How results and errors are shown to people and to scripts.

use dm_client::{ErrorCode, Event};
use serde_json::json;

/// Text for one event, or `None` for events not worth a line.
pub fn event_text(event: &Event) -> Option<String> {
    match event {
        Event::Message(m) => Some(format!(
            "[{}] {}: {}",
            utc(m.sent_at),
            m.from,
            printable(&m.text)
        )),
        Event::ConversationStarted {
            with,
            name,
            conversation,
        } => Some(match name {
            Some(name) => format!(
                "New group \"{}\" ({conversation}) with {}.",
                printable(name),
                list(with)
            ),
            None => format!("New conversation with {}.", list(with)),
        }),
        Event::DevicesChanged {
            handle,
            added,
            removed,
            ..
        } => {
            let mut parts = Vec::new();
            for d in added {
                parts.push(format!("{handle} added a device ({d})"));
            }
            for d in removed {
                parts.push(format!("{handle} removed a device ({d})"));
            }
            (!parts.is_empty()).then(|| format!("* {}.", parts.join("; ")))
        }
        Event::MessagesDropped { count } => Some(format!(
            "! The relay refused {count} message(s) for this device (its mailbox was full): this device rejoins its conversations; what was sent meanwhile is lost here."
        )),
        Event::Rejoining {
            previous_device,
            device,
        } => Some(format!(
            "* This device rejoins its conversations as {device} (was {previous_device}); the other members add it back when they next sync."
        )),
        Event::Rejoined { conversation } => {
            Some(format!("* Rejoined conversation {conversation}."))
        }
        Event::IdentityKeyChanged {
            handle,
            was_verified,
        } => Some(if *was_verified {
            format!(
                "!!! WARNING: the account key of {handle} CHANGED after you verified it. Sending to {handle} is refused until you compare the new safety number (dm verify {handle}) and confirm it (dm verify {handle} --confirm)."
            )
        } else {
            format!(
                "!!! The account key of {handle} CHANGED (a new account under the same handle?). Compare the safety number: dm verify {handle}"
            )
        }),
        Event::MembersChanged { added, removed, .. } => {
            let mut parts = Vec::new();
            if !added.is_empty() {
                parts.push(format!("{} joined", list(added)));
            }
            if !removed.is_empty() {
                parts.push(format!("{} left", list(removed)));
            }
            (!parts.is_empty()).then(|| format!("* {}.", parts.join("; ")))
        }
        Event::Undecryptable {
            received_at,
            reason,
            ..
        } => Some(format!(
            "! A message received at {} could not be decrypted ({}).",
            utc(*received_at),
            printable(reason)
        )),
    }
}

/// One JSON object (one line) for an event.
pub fn event_json(event: &Event) -> serde_json::Value {
    match event {
        Event::Message(m) => json!({
            "type": "message",
            "id": m.id.to_hex(),
            "conversation": m.conversation.to_hex(),
            "from": m.from.as_str(),
            "from_device": m.from_device.to_hex(),
            "text": m.text,
            "sent_at": m.sent_at,
            "received_at": m.received_at,
        }),
        Event::ConversationStarted {
            conversation,
            with,
            name,
        } => json!({
            "type": "conversation_started",
            "conversation": conversation.to_hex(),
            "with": with.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            "name": name,
        }),
        Event::DevicesChanged {
            conversation,
            handle,
            added,
            removed,
        } => json!({
            "type": "devices_changed",
            "conversation": conversation.to_hex(),
            "handle": handle.as_str(),
            "added": added.iter().map(|d| d.to_hex()).collect::<Vec<_>>(),
            "removed": removed.iter().map(|d| d.to_hex()).collect::<Vec<_>>(),
        }),
        Event::MessagesDropped { count } => json!({
            "type": "messages_dropped",
            "count": count,
        }),
        Event::Rejoining {
            previous_device,
            device,
        } => json!({
            "type": "rejoining",
            "previous_device": previous_device.to_hex(),
            "device": device.to_hex(),
        }),
        Event::Rejoined { conversation } => json!({
            "type": "rejoined",
            "conversation": conversation.to_hex(),
        }),
        Event::IdentityKeyChanged {
            handle,
            was_verified,
        } => json!({
            "type": "identity_key_changed",
            "handle": handle.as_str(),
            "was_verified": was_verified,
        }),
        Event::MembersChanged {
            conversation,
            added,
            removed,
        } => json!({
            "type": "members_changed",
            "conversation": conversation.to_hex(),
            "added": added.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            "removed": removed.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
        }),
        Event::Undecryptable {
            conversation,
            seq,
            received_at,
            reason,
        } => json!({
            "type": "undecryptable",
            "conversation": conversation.as_ref().map(|c| c.to_hex()),
            "seq": seq,
            "received_at": received_at,
            "reason": reason,
        }),
    }
}

fn list(handles: &[dm_client::Handle]) -> String {
    handles
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error as printed on stderr: what happened, then what to do.
pub fn render_error(error: &anyhow::Error) -> String {
    let Some(e) = error.downcast_ref::<dm_client::Error>() else {
        return format!("error: {error:#}");
    };
    let hint = match e {
        dm_client::Error::NoAccount => {
            "Create one with `dm init --server URL --handle NAME`, or point --home / DM_HOME at an existing one."
        }
        dm_client::Error::AccountExists => {
            "Use it as it is, or choose another directory with --home to create a second account."
        }
        dm_client::Error::WrongPassphrase => {
            "Nothing was changed. Try again with the right passphrase (DM_PASSPHRASE or the prompt)."
        }
        dm_client::Error::UnknownHandle(_) => "Check the spelling of the handle.",
        dm_client::Error::VerifiedKeyChanged(_) => {
            "Nothing was sent. If the new key is genuine, confirm it with `dm verify HANDLE --confirm`."
        }
        dm_client::Error::Revoked => {
            "Another device of your account revoked this one. Link it again with `dm device link` in a new home directory."
        }
        dm_client::Error::HandleTaken(_) => "Choose another handle.",
        dm_client::Error::RelayUnreachable { .. } => {
            "Is the relay running and the URL right? Anything not yet sent is kept and goes out with the next command."
        }
        dm_client::Error::Relay { code, .. } => match code {
            ErrorCode::RateLimited => "Wait a little and try again.",
            ErrorCode::Unauthenticated | ErrorCode::AuthFailed => {
                "This device could not log in: was it revoked, or is this the right relay?"
            }
            _ => "",
        },
        _ => "",
    };
    // The message may quote the relay: never let it drive the terminal.
    let message = printable(&e.to_string());
    if hint.is_empty() {
        format!("error: {message}")
    } else {
        format!("error: {message}\n{hint}")
    }
}

/// Text from a peer or the relay, made safe for a terminal: control characters (newlines,
/// escape sequences) and bidirectional-override characters are shown escaped (`\n`,
/// `\u{1b}`), so a message can neither fake another line nor restyle the screen.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for unix milliseconds.
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Writes to standard output. When it is closed (a pipe whose reader went away, as in
/// `dm inbox | head -1`) the process ends quietly with status 141, as a shell reports a
/// process ended by SIGPIPE; any other write failure ends it with status 1 and a message.
/// Never a panic (which `print!` would raise).
pub fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::{printable, utc};

    #[test]
    fn peer_text_cannot_drive_the_terminal() {
        assert_eq!(printable("hi\n[fake] @bob: x"), "hi\\n[fake] @bob: x");
        assert_eq!(printable("\u{1b}[2Jgone"), "\\u{1b}[2Jgone");
        assert_eq!(printable("abc\u{202e}cba"), "abc\\u{202e}cba");
        assert_eq!(printable("héllo 👋 ok"), "héllo 👋 ok");
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_251_661_000), "2026-11-21 09:01:01");
    }
}
