//! Test harness: a relay over a real database (a SQLite file, or a PostgreSQL database for
//! the store conformance suite, see [`db`]) driven with `oneshot`, and devices that build
//! real device lists, key packages, commits and welcomes with openmls.
#![allow(dead_code)]

pub mod db;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use dm_server::store::{Store, StoreOptions};
use dm_server::{AppState, app};
use dm_wire::api::{
    ChallengeResponse, ClaimResponse, KeyPackageStock, MailboxResponse, RegisterRequest,
    SendRequest, SendResponse, SessionRequest, SessionResponse,
};
use dm_wire::auth::{REGISTRATION_LABEL, SESSION_LABEL, registration_body, session_body};
use dm_wire::cert::{DeviceCertificate, DeviceList, signature_input};
use dm_wire::credential::CredentialIdentity;
use dm_wire::{DeviceId, Handle, MessageId};
use ed25519_dalek::SigningKey;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::signatures::Signer as _;
use serde::Serialize;
use tempfile::TempDir;
use tower::ServiceExt as _;

pub const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;

/// Adjusts the state a test relay is built with (rate limit, metrics).
pub type Configure = Arc<dyn Fn(AppState) -> AppState + Send + Sync>;

/// A relay on a database (by default a SQLite file in a temporary directory), with a clock
/// tests can advance.
pub struct Relay {
    db: db::TestDb,
    options: StoreOptions,
    store: Arc<dyn Store>,
    router: Router,
    offset: Arc<AtomicU64>,
    state: AppState,
    configure: Configure,
}

/// An HTTP response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub content_type: Option<String>,
    pub headers: axum::http::HeaderMap,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "unexpected body ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts a JSON error with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.content_type.as_deref()),
            (status, Some("application/json")),
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let json = self.json();
        assert_eq!(json["error"]["code"], code, "body: {json}");
        assert!(json["error"]["message"].is_string());
    }

    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(
            (200..300).contains(&self.status),
            "status {}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
    }
}

impl Relay {
    /// A relay on a fresh SQLite file with default store options.
    pub async fn start() -> Self {
        Self::on(db::TestDb::sqlite(), StoreOptions::default()).await
    }

    /// A relay whose state is adjusted by `configure` (also after a restart).
    pub async fn start_with(configure: Configure) -> Self {
        Self::open(
            db::TestDb::sqlite(),
            StoreOptions::default(),
            Arc::new(AtomicU64::new(0)),
            configure,
        )
        .await
    }

    pub fn database_url(dir: &TempDir) -> String {
        format!("sqlite://{}", dir.path().join("relay.db").display())
    }

    /// A relay over `db` with these store options.
    pub async fn on(db: db::TestDb, options: StoreOptions) -> Self {
        Self::open(
            db,
            options,
            Arc::new(AtomicU64::new(0)),
            Arc::new(|state| state),
        )
        .await
    }

    async fn open(
        db: db::TestDb,
        options: StoreOptions,
        offset: Arc<AtomicU64>,
        configure: Configure,
    ) -> Self {
        let store = db.store(options).await;
        let clock_offset = offset.clone();
        let state = configure(AppState::new(store.clone()).with_clock(Arc::new(move || {
            SystemTime::now() + Duration::from_secs(clock_offset.load(Ordering::SeqCst))
        })));
        Self {
            db,
            options,
            store,
            router: app(state.clone()),
            offset,
            state,
            configure,
        }
    }

    /// The state the router was built with.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Sends any request.
    pub async fn request(&self, req: Request<Body>) -> Resp {
        let response = self.router.clone().oneshot(req).await.expect("infallible");
        Resp::read(response).await
    }

    /// Closes the database and opens the same one again, like a process restart.
    pub async fn restart(self) -> Self {
        self.store.close().await.expect("close");
        let Relay {
            db,
            options,
            offset,
            configure,
            ..
        } = self;
        Self::open(db, options, offset, configure).await
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The store, shared.
    pub fn store_arc(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The database.
    pub fn db(&self) -> &db::TestDb {
        &self.db
    }

    /// The SQLite file's directory.
    pub fn dir(&self) -> &TempDir {
        self.db.dir()
    }

    /// Serves the router on a loopback port (for what needs a real connection, such as a
    /// WebSocket upgrade); returns `127.0.0.1:PORT`.
    pub async fn listen(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let router = self.router.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr.to_string()
    }

    /// Moves the relay's clock forward.
    pub fn advance(&self, secs: u64) {
        self.offset.fetch_add(secs, Ordering::SeqCst);
    }

    pub async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let response = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body)).expect("request"))
            .await
            .expect("infallible");
        Resp::read(response).await
    }
}

impl Resp {
    async fn read(response: axum::response::Response) -> Self {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().expect("ascii").to_owned());
        let headers = response.headers().clone();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().expect("ascii").to_owned());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec();
        Resp {
            status,
            content_type,
            headers,
            retry_after,
            body,
        }
    }
}

impl Relay {
    pub async fn post(&self, path: &str, token: Option<&str>, body: &impl Serialize) -> Resp {
        self.raw("POST", path, token, serde_json::to_vec(body).expect("json"))
            .await
    }

    pub async fn get_with_authorization(&self, path: &str, authorization: &str) -> Resp {
        let req = Request::builder()
            .uri(path)
            .header(header::AUTHORIZATION, authorization)
            .body(Body::empty())
            .expect("request");
        let response = self.router.clone().oneshot(req).await.expect("infallible");
        Resp::read(response).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.raw("GET", path, token, Vec::new()).await
    }

    pub async fn mailbox(&self, device: &Device, after: u64) -> MailboxResponse {
        let resp = self
            .get(&format!("/v1/mailbox?after={after}"), Some(device.token()))
            .await;
        resp.assert_ok();
        resp.parse()
    }

    pub async fn send(&self, device: &Device, req: &SendRequest) -> Resp {
        self.post("/v1/messages", Some(device.token()), req).await
    }

    pub async fn claim(&self, claimer: &Device, handle: &str) -> ClaimResponse {
        let resp = self
            .post(
                &format!("/v1/accounts/{handle}/key-packages/claim"),
                Some(claimer.token()),
                &serde_json::json!({}),
            )
            .await;
        resp.assert_ok();
        resp.parse()
    }
}

/// A device of an account, with its account key, MLS signer and openmls provider.
pub struct Device {
    pub handle: Handle,
    pub device_id: DeviceId,
    pub account: SigningKey,
    pub signer: SignatureKeyPair,
    pub provider: OpenMlsRustCrypto,
    pub credential: CredentialWithKey,
    pub token: Option<String>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

impl Device {
    pub fn new(handle: &str) -> Self {
        let handle = Handle::parse(handle).expect("handle");
        let device_id = DeviceId(rand::random());
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).expect("signer");
        let identity = CredentialIdentity {
            handle: handle.clone(),
            device_id,
        }
        .encode();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity).into(),
            signature_key: signer.to_public_vec().into(),
        };
        Self {
            handle,
            device_id,
            account: SigningKey::from_bytes(&rand::random()),
            signer,
            provider: OpenMlsRustCrypto::default(),
            credential,
            token: None,
        }
    }

    pub fn device_key(&self) -> [u8; 32] {
        self.signer.public().try_into().expect("ed25519 key")
    }

    pub fn device_list(&self) -> Vec<u8> {
        let cert = DeviceCertificate::issue(
            &self.account,
            self.handle.clone(),
            self.device_id,
            self.device_key(),
            now_secs(),
        );
        DeviceList::issue(
            &self.account,
            self.handle.clone(),
            1,
            now_secs(),
            vec![cert],
        )
        .expect("device list")
        .encode()
    }

    /// Signs `label 0x00 body` with the device's MLS signer (plain Ed25519).
    pub fn sign(&self, label: &[u8], body: &[u8]) -> Vec<u8> {
        self.signer
            .sign(&signature_input(label, body))
            .expect("sign")
    }

    pub fn register_request(&self) -> RegisterRequest {
        let device_list = self.device_list();
        RegisterRequest {
            handle: self.handle.clone(),
            device_proof: self.sign(REGISTRATION_LABEL, &registration_body(&device_list)),
            device_list,
        }
    }

    pub fn token(&self) -> &str {
        self.token.as_deref().expect("logged in")
    }

    pub async fn challenge(&self, relay: &Relay) -> [u8; 32] {
        let resp = relay
            .post(
                "/v1/auth/challenge",
                None,
                &serde_json::json!({"handle": self.handle, "device_id": self.device_id}),
            )
            .await;
        resp.assert_ok();
        let challenge: ChallengeResponse = resp.parse();
        challenge.challenge.try_into().expect("32-byte challenge")
    }

    pub fn session_request(&self, challenge: [u8; 32]) -> SessionRequest {
        SessionRequest {
            handle: self.handle.clone(),
            device_id: self.device_id,
            challenge: challenge.to_vec(),
            signature: self.sign(
                SESSION_LABEL,
                &session_body(&self.handle, &self.device_id, &challenge),
            ),
        }
    }

    /// Registers and logs in.
    pub async fn join(handle: &str, relay: &Relay) -> Self {
        let mut device = Self::new(handle);
        let resp = relay
            .post("/v1/accounts", None, &device.register_request())
            .await;
        assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
        device.login(relay).await;
        device
    }

    /// Opens a new session (replacing the token).
    pub async fn login(&mut self, relay: &Relay) {
        let challenge = self.challenge(relay).await;
        let resp = relay
            .post("/v1/auth/session", None, &self.session_request(challenge))
            .await;
        resp.assert_ok();
        let session: SessionResponse = resp.parse();
        self.token = Some(session.token);
    }

    /// A TLS-encoded `MLSMessage` with a fresh key package of this device.
    pub fn key_package(&self, last_resort: bool) -> Vec<u8> {
        let mut builder = KeyPackage::builder();
        if last_resort {
            builder = builder
                .mark_as_last_resort()
                .leaf_node_capabilities(Capabilities::new(
                    None,
                    None,
                    Some(&[ExtensionType::LastResort]),
                    None,
                    None,
                ));
        }
        let bundle = builder
            .build(CS, &self.provider, &self.signer, self.credential.clone())
            .expect("key package");
        encode(MlsMessageOut::from(bundle.key_package().clone()))
    }

    pub async fn upload(
        &self,
        relay: &Relay,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Resp {
        relay
            .post(
                "/v1/key-packages",
                Some(self.token()),
                &dm_wire::api::UploadKeyPackagesRequest {
                    key_packages: one_time,
                    last_resort,
                },
            )
            .await
    }

    pub async fn stock(&self, relay: &Relay) -> KeyPackageStock {
        let resp = relay.get("/v1/key-packages", Some(self.token())).await;
        resp.assert_ok();
        resp.parse()
    }

    /// A new group with this device as its only member (ciphersuite 0x0003, encrypted
    /// handshake messages, ratchet tree in the Welcome).
    pub fn create_group(&self) -> MlsGroup {
        MlsGroup::builder()
            .ciphersuite(CS)
            .use_ratchet_tree_extension(true)
            .with_wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .build(&self.provider, &self.signer, self.credential.clone())
            .expect("group")
    }

    /// Encrypts an application message in `group`: the TLS-encoded PrivateMessage.
    pub fn message(&self, group: &mut MlsGroup, text: &[u8]) -> Vec<u8> {
        encode(
            group
                .create_message(&self.provider, &self.signer, text)
                .expect("application message"),
        )
    }

    /// Joins a group from a TLS-encoded Welcome.
    pub fn join_group(&self, welcome: &[u8]) -> MlsGroup {
        let MlsMessageBodyIn::Welcome(welcome) = decode(welcome).extract() else {
            panic!("not a welcome");
        };
        let config = MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .build();
        StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None)
            .expect("staged welcome")
            .into_group(&self.provider)
            .expect("joined group")
    }

    /// Processes a received PrivateMessage: merges a commit, returns application data.
    pub fn process(&self, group: &mut MlsGroup, bytes: &[u8]) -> Option<Vec<u8>> {
        let message = decode(bytes)
            .try_into_protocol_message()
            .expect("protocol message");
        let processed = group
            .process_message(&self.provider, message)
            .expect("process");
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Some(app.into_bytes()),
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                group
                    .merge_staged_commit(&self.provider, *staged)
                    .expect("merge");
                None
            }
            _ => None,
        }
    }
}

pub fn encode(message: MlsMessageOut) -> Vec<u8> {
    message.tls_serialize_detached().expect("encode")
}

pub fn decode(bytes: &[u8]) -> MlsMessageIn {
    MlsMessageIn::tls_deserialize_exact(bytes).expect("decode")
}

/// Validates a claimed key package as a group member would.
pub fn claimed_key_package(bytes: &[u8], provider: &OpenMlsRustCrypto) -> KeyPackage {
    let MlsMessageBodyIn::KeyPackage(kp) = decode(bytes).extract() else {
        panic!("not a key package");
    };
    kp.validate(provider.crypto(), ProtocolVersion::Mls10)
        .expect("valid key package")
}

pub fn send_request(message: Vec<u8>, welcome: Option<Vec<u8>>) -> SendRequest {
    SendRequest {
        id: MessageId(rand::random()),
        message,
        welcome,
        removed_devices: vec![],
    }
}

/// Alice creates a group and adds Bob through the relay; Bob joins from the Welcome in his
/// mailbox (and acknowledges it). Returns both groups at epoch 1.
pub async fn pair(relay: &Relay, alice: &Device, bob: &Device) -> (MlsGroup, MlsGroup) {
    bob.upload(relay, vec![bob.key_package(false)], None)
        .await
        .assert_ok();
    let claim = relay.claim(alice, bob.handle.as_str()).await;
    let kp = claimed_key_package(&claim.key_packages[0].key_package, &alice.provider);
    let mut group = alice.create_group();
    let (commit, welcome, _) = group
        .add_members(&alice.provider, &alice.signer, &[kp])
        .expect("add");
    group.merge_pending_commit(&alice.provider).expect("merge");
    let resp = relay
        .send(alice, &send_request(encode(commit), Some(encode(welcome))))
        .await;
    resp.assert_ok();
    assert_eq!(
        resp.parse::<SendResponse>(),
        SendResponse {
            epoch: 1,
            duplicate: false
        }
    );
    let mailbox = relay.mailbox(bob, 0).await;
    let welcome = &mailbox.envelopes.last().expect("welcome delivered");
    let bob_group = bob.join_group(&welcome.payload);
    let ack = relay
        .post(
            "/v1/mailbox/ack",
            Some(bob.token()),
            &serde_json::json!({"up_to": welcome.seq}),
        )
        .await;
    assert_eq!(ack.status, 204);
    (group, bob_group)
}

/// A copy of a TLS-encoded PrivateMessage `MLSMessage` whose cleartext epoch is `epoch`
/// (the relay reads only the header, so the rest need not match).
pub fn with_epoch(message: &[u8], epoch: u64) -> Vec<u8> {
    // version (2) and wire_format (2), then the group id as a QUIC-style varint-prefixed
    // vector, then the epoch (u64, big endian).
    let len_at = 4;
    let (prefix, len) = match message[len_at] >> 6 {
        0 => (1, usize::from(message[len_at] & 0x3f)),
        1 => (
            2,
            usize::from(u16::from_be_bytes([
                message[len_at] & 0x3f,
                message[len_at + 1],
            ])),
        ),
        n => panic!("unexpected varint prefix {n} for a group id"),
    };
    let at = len_at + prefix + len;
    let mut out = message.to_vec();
    out[at..at + 8].copy_from_slice(&epoch.to_be_bytes());
    out
}

/// The `epoch` field of a JSON error response, if any (asserting it is a number if present).
pub fn error_epoch(resp: &Resp) -> Option<u64> {
    let json = resp.json();
    json["error"].get("epoch").map(|e| {
        e.as_u64()
            .unwrap_or_else(|| panic!("epoch not a u64: {json}"))
    })
}
