//! The live push socket (`GET /v1/ws`) over a real loopback connection.

use std::sync::Arc;
use std::time::Duration;

use dm_server::AppState;
use dm_wire::api::{ClientFrame, Envelope, ServerFrame};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{Device, Relay, pair, send_request};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Generous: the machine may be loaded; a push arrives in milliseconds.
const WAIT: Duration = Duration::from_secs(10);

async fn connect(
    addr: &str,
    token: Option<&str>,
    after: u64,
) -> Result<Socket, tungstenite::Error> {
    let mut request = format!("ws://{addr}/v1/ws?after={after}")
        .into_client_request()
        .expect("request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// The next server frame (skipping pings), or `None` if the socket closed.
async fn next_frame(socket: &mut Socket) -> Option<ServerFrame> {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")?
            .ok()?;
        match message {
            Message::Text(text) => {
                return Some(serde_json::from_str(text.as_str()).expect("server frame"));
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// Envelopes from frames until `count` have arrived.
async fn envelopes(socket: &mut Socket, count: usize) -> Vec<Envelope> {
    let mut out = Vec::new();
    while out.len() < count {
        match next_frame(socket).await.expect("socket open") {
            ServerFrame::Envelopes { envelopes, .. } => out.extend(envelopes),
            other => panic!("expected envelopes, got {other:?}"),
        }
    }
    assert_eq!(out.len(), count, "no more than asked for");
    out
}

async fn ack(socket: &mut Socket, up_to: u64) {
    let frame = serde_json::to_string(&ClientFrame::Ack { up_to }).expect("json");
    socket.send(Message::text(frame)).await.expect("send");
    match next_frame(socket).await.expect("socket open") {
        ServerFrame::Acked { up_to: acked } => assert_eq!(acked, up_to),
        other => panic!("expected acked, got {other:?}"),
    }
}

/// The code of the close frame the relay sends next (frames before it are skipped), or
/// `None` if the connection ends without one.
async fn close_code(socket: &mut Socket) -> Option<CloseCode> {
    tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return Some(frame.code),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("closed in time")
}

/// Nothing arrives within a short while.
async fn quiet(socket: &mut Socket) {
    match tokio::time::timeout(Duration::from_millis(300), socket.next()).await {
        Err(_) => {}
        Ok(other) => panic!("expected nothing, got {other:?}"),
    }
}

#[tokio::test]
async fn envelopes_are_pushed_acknowledged_and_resumed_without_loss_or_repeat() {
    let relay = Relay::start().await;
    let addr = relay.listen().await;
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;
    let (mut alice_group, mut bob_group) = pair(&relay, &alice, &bob).await;

    // Two messages wait before bob connects: the socket sends them first.
    for text in [&b"one"[..], b"two"] {
        let message = alice.message(&mut alice_group, text);
        relay
            .send(&alice, &send_request(message, None))
            .await
            .assert_ok();
    }
    let mut socket = connect(&addr, Some(bob.token()), 0).await.expect("upgrade");
    let waiting = envelopes(&mut socket, 2).await;
    let texts: Vec<Vec<u8>> = waiting
        .iter()
        .map(|e| bob.process(&mut bob_group, &e.payload).expect("text"))
        .collect();
    assert_eq!(texts, [b"one".to_vec(), b"two".to_vec()]);
    quiet(&mut socket).await;

    // A new message is pushed as soon as it is stored.
    let message = alice.message(&mut alice_group, b"three");
    relay
        .send(&alice, &send_request(message, None))
        .await
        .assert_ok();
    let pushed = envelopes(&mut socket, 1).await;
    assert!(pushed[0].seq > waiting[1].seq);
    assert_eq!(
        bob.process(&mut bob_group, &pushed[0].payload).as_deref(),
        Some(&b"three"[..])
    );

    // Acknowledged over the socket: the relay deleted them.
    ack(&mut socket, waiting[1].seq).await;
    let mailbox = relay.mailbox(&bob, 0).await;
    assert_eq!(
        mailbox.envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [pushed[0].seq]
    );

    // Disconnected: a message arrives meanwhile. Reconnecting after the cursor gets
    // exactly that one, never the processed ones again (the third is unacknowledged but
    // processed: the cursor, not the acknowledgement, decides).
    drop(socket);
    let message = alice.message(&mut alice_group, b"four");
    relay
        .send(&alice, &send_request(message, None))
        .await
        .assert_ok();
    let mut socket = connect(&addr, Some(bob.token()), pushed[0].seq)
        .await
        .expect("upgrade");
    let resumed = envelopes(&mut socket, 1).await;
    assert!(resumed[0].seq > pushed[0].seq);
    assert_eq!(
        bob.process(&mut bob_group, &resumed[0].payload).as_deref(),
        Some(&b"four"[..])
    );
    quiet(&mut socket).await;

    // Alice's own socket gets nothing of what she sent.
    let mut alice_socket = connect(&addr, Some(alice.token()), 0)
        .await
        .expect("upgrade");
    quiet(&mut alice_socket).await;
}

#[tokio::test]
async fn refused_upgrades_and_bad_frames() {
    let relay = Relay::start().await;
    let addr = relay.listen().await;
    let bob = Device::join("bob", &relay).await;

    // No token, a wrong token: 401 before any upgrade.
    for token in [None, Some("bm90IGEgdG9rZW4")] {
        match connect(&addr, token, 0).await {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
            other => panic!("expected 401, got {other:?}"),
        }
    }
    // A plain GET (no upgrade) is a JSON error, not a framework text.
    let resp = relay.get("/v1/ws", Some(bob.token())).await;
    assert!((400..500).contains(&resp.status), "{resp:?}");
    assert!(resp.json()["error"]["code"].is_string(), "{resp:?}");
    // A bad cursor is a JSON 400.
    relay
        .get("/v1/ws?after=minus-one", Some(bob.token()))
        .await
        .assert_error(400, "invalid_request");

    // Something that is not a client frame: an error frame, then close 1008.
    let mut socket = connect(&addr, Some(bob.token()), 0).await.expect("upgrade");
    socket
        .send(Message::text(r#"{"type":"launch"}"#))
        .await
        .unwrap();
    match next_frame(&mut socket).await {
        Some(ServerFrame::Error { error }) => {
            assert_eq!(error.code, dm_wire::api::ErrorCode::InvalidRequest);
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    let close = tokio::time::timeout(WAIT, socket.next())
        .await
        .expect("close");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("expected close 1008, got {other:?}"),
    }

    // A frame over the limit closes the socket; the relay stays up.
    let mut socket = connect(&addr, Some(bob.token()), 0).await.expect("upgrade");
    let _ = socket.send(Message::text("x".repeat(64 * 1024))).await;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the oversized frame closed the socket");
    relay
        .get("/v1/key-packages", Some(bob.token()))
        .await
        .assert_ok();
}

#[tokio::test]
async fn socket_count_is_bounded_and_shutdown_closes_sockets() {
    let relay = Relay::start_with(Arc::new(|state: AppState| state.with_max_websockets(1))).await;
    let addr = relay.listen().await;
    let bob = Device::join("bob", &relay).await;

    let mut first = connect(&addr, Some(bob.token()), 0).await.expect("upgrade");
    match connect(&addr, Some(bob.token()), 0).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    // Closing the first frees its place.
    first.close(None).await.unwrap();
    drop(first);
    let push = relay.state().push().clone();
    tokio::time::timeout(WAIT, async {
        while push.open() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the closed socket is released");
    let mut second = connect(&addr, Some(bob.token()), 0).await.expect("upgrade");

    // Shutdown: the open socket gets close 1001; new upgrades are refused.
    tokio::time::timeout(WAIT, async {
        while push.open() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("registered");
    relay.state().begin_shutdown();
    let close = tokio::time::timeout(WAIT, second.next())
        .await
        .expect("close");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    push.closed(WAIT).await;
    assert_eq!(push.open(), 0);
    match connect(&addr, Some(bob.token()), 0).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503 while shutting down, got {other:?}"),
    }
}

#[tokio::test]
async fn per_device_sockets_floods_and_acks_beyond_the_pushed_are_bounded() {
    let relay = Relay::start().await;
    let addr = relay.listen().await;
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;
    let (mut alice_group, _bob_group) = pair(&relay, &alice, &bob).await;

    // At most four sockets per device; the fifth is 429 (others are unaffected).
    let mut sockets = Vec::new();
    for _ in 0..dm_server::push::MAX_SOCKETS_PER_DEVICE {
        sockets.push(connect(&addr, Some(bob.token()), 0).await.expect("upgrade"));
    }
    match connect(&addr, Some(bob.token()), 0).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("expected 429, got {other:?}"),
    }
    let mut alice_socket = connect(&addr, Some(alice.token()), 0)
        .await
        .expect("upgrade");
    quiet(&mut alice_socket).await;
    drop(sockets);

    // An acknowledgement beyond what the socket pushed deletes only what it pushed.
    let message = alice.message(&mut alice_group, b"one");
    relay
        .send(&alice, &send_request(message, None))
        .await
        .assert_ok();
    let mut socket = connect(&addr, Some(bob.token()), 0).await.expect("upgrade");
    let pushed = envelopes(&mut socket, 1).await;
    let frame = serde_json::to_string(&ClientFrame::Ack { up_to: u64::MAX }).expect("json");
    socket.send(Message::text(frame)).await.expect("send");
    match next_frame(&mut socket).await.expect("socket open") {
        ServerFrame::Acked { up_to } => assert_eq!(up_to, pushed[0].seq),
        other => panic!("expected acked, got {other:?}"),
    }
    // Stored after the acknowledgement: it stays until acknowledged in turn.
    let message = alice.message(&mut alice_group, b"two");
    relay
        .send(&alice, &send_request(message, None))
        .await
        .assert_ok();
    let second = envelopes(&mut socket, 1).await;
    let mailbox = relay.mailbox(&bob, 0).await;
    assert_eq!(
        mailbox.envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [second[0].seq],
    );

    // A flood of frames closes the socket (1008).
    for _ in 0..100 {
        if socket
            .send(Message::Ping(Default::default()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Policy));
}

#[tokio::test]
async fn a_busy_client_may_ack_every_envelope_but_not_repeat_acks() {
    let relay = Relay::start().await;
    let addr = relay.listen().await;
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;
    let (mut alice_group, _bob_group) = pair(&relay, &alice, &bob).await;
    let mut socket = connect(&addr, Some(bob.token()), 0).await.expect("upgrade");
    quiet(&mut socket).await;

    const MESSAGES: usize = 40;
    for i in 0..MESSAGES {
        let message = alice.message(&mut alice_group, format!("{i}").as_bytes());
        relay
            .send(&alice, &send_request(message, None))
            .await
            .assert_ok();
    }
    let pushed = envelopes(&mut socket, MESSAGES).await;
    // One ack per envelope, as fast as possible: twice the frame budget in well under a
    // second. Each acknowledges something new, so none counts against the budget.
    for envelope in &pushed {
        ack(&mut socket, envelope.seq).await;
    }
    assert!(relay.mailbox(&bob, 0).await.envelopes.is_empty());

    // Repeating an ack acknowledges nothing new: one more than the budget closes the
    // socket (exactly that many, so the relay reads all before it closes).
    let last = pushed[MESSAGES - 1].seq;
    let frame = serde_json::to_string(&ClientFrame::Ack { up_to: last }).expect("json");
    for _ in 0..21 {
        socket
            .send(Message::text(frame.clone()))
            .await
            .expect("send");
    }
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Policy));
}
