//! A minimal client speaking the relay's HTTP API directly, built on e2ee-core with keys in
//! memory: for the load generator and for crash tests that need thousands of real MLS
//! messages and want to see the relay's envelopes themselves (no client-side
//! deduplication in between). Nothing is stored on disk.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dm_wire::api::{
    AckRequest, ChallengeRequest, ChallengeResponse, ClaimResponse, MailboxResponse,
    RegisterRequest, SendRequest, SendResponse, SessionRequest, SessionResponse,
    UploadKeyPackagesRequest,
};
use dm_wire::cert::DeviceList;
use dm_wire::{Handle, MessageId};
use e2ee_core::content::Content;
use e2ee_core::conversation::Conversation;
use e2ee_core::provider::MemoryProvider;
use e2ee_core::{AccountSecret, Device, key_package};
use openmls_traits::OpenMlsProvider as _;

/// Why a raw request failed.
#[derive(Debug)]
pub enum RawError {
    /// No answer (connection refused or broken, timeout): the relay may be down.
    Transport(String),
    /// The relay answered with this status and body.
    Status(u16, String),
    /// A local step failed (key generation, encryption, an unexpected answer).
    Local(String),
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawError::Transport(e) => write!(f, "no answer from the relay: {e}"),
            RawError::Status(status, body) => write!(f, "the relay answered {status}: {body}"),
            RawError::Local(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RawError {}

fn local(what: &str) -> impl FnOnce(e2ee_core::Error) -> RawError + '_ {
    move |e| RawError::Local(format!("{what}: {e}"))
}

/// One device of one account, talking to a relay.
pub struct RawDevice {
    /// The account's handle.
    pub handle: Handle,
    device: Device,
    device_list: DeviceList,
    provider: MemoryProvider,
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RawDevice {
    /// A new account with one device (not registered yet), with its own HTTP client.
    pub fn new(handle: &str, base: &str) -> Result<RawDevice, RawError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| RawError::Local(format!("HTTP client: {e}")))?;
        RawDevice::with_client(handle, base, http)
    }

    /// A new account with one device (not registered yet), sharing `http` (and so its
    /// connection pool) with other devices.
    pub fn with_client(
        handle: &str,
        base: &str,
        http: reqwest::Client,
    ) -> Result<RawDevice, RawError> {
        let mut rng = rand::rngs::OsRng;
        let handle = Handle::parse(handle).map_err(|e| RawError::Local(format!("handle: {e}")))?;
        let account = AccountSecret::generate(&mut rng);
        let provider = MemoryProvider::in_memory();
        let device = Device::generate(&provider, &mut rng, &account, handle.clone(), now_secs())
            .map_err(local("device"))?;
        let device_list = account
            .issue_device_list(
                handle.clone(),
                1,
                now_secs(),
                vec![device.certificate().clone()],
            )
            .map_err(local("device list"))?;
        Ok(RawDevice {
            handle,
            device,
            device_list,
            provider,
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: None,
        })
    }

    /// The relay's base URL (`http://host:port`).
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, RawError> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        Self::answer(req).await
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, RawError> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        Self::answer(req).await
    }

    async fn answer<T: serde::de::DeserializeOwned>(
        req: reqwest::RequestBuilder,
    ) -> Result<T, RawError> {
        let response = req
            .send()
            .await
            .map_err(|e| RawError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RawError::Transport(e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(RawError::Status(
                status,
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map_err(|e| RawError::Status(status, e.to_string()))
    }

    /// Registers the account, logs in and uploads `key_packages` one-time key packages
    /// plus a last-resort one.
    pub async fn register(&mut self, key_packages: usize) -> Result<(), RawError> {
        let encoded = self.device_list.encode();
        let request = RegisterRequest {
            handle: self.handle.clone(),
            device_proof: self
                .device
                .registration_proof(&encoded)
                .map_err(local("registration proof"))?,
            device_list: encoded,
        };
        let _: serde_json::Value = self.post("/v1/accounts", &request).await?;
        self.login().await?;
        let upload = UploadKeyPackagesRequest {
            key_packages: key_package::generate(&self.provider, &self.device, key_packages)
                .map_err(local("key packages"))?,
            last_resort: Some(
                key_package::generate_last_resort(&self.provider, &self.device)
                    .map_err(local("last-resort key package"))?,
            ),
        };
        let _: serde_json::Value = self.post("/v1/key-packages", &upload).await?;
        Ok(())
    }

    /// Opens a session (again).
    pub async fn login(&mut self) -> Result<(), RawError> {
        self.token = None;
        let challenge: ChallengeResponse = self
            .post(
                "/v1/auth/challenge",
                &ChallengeRequest {
                    handle: self.handle.clone(),
                    device_id: self.device.id(),
                },
            )
            .await?;
        let bytes: [u8; dm_wire::auth::CHALLENGE_LEN] =
            challenge
                .challenge
                .as_slice()
                .try_into()
                .map_err(|_| RawError::Status(200, "challenge length".into()))?;
        let session: SessionResponse = self
            .post(
                "/v1/auth/session",
                &SessionRequest {
                    handle: self.handle.clone(),
                    device_id: self.device.id(),
                    signature: self
                        .device
                        .session_proof(&bytes)
                        .map_err(local("session proof"))?,
                    challenge: challenge.challenge,
                },
            )
            .await?;
        self.token = Some(session.token);
        Ok(())
    }

    /// The session token, once logged in.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Starts a conversation with `peer` (every device of it): claims key packages,
    /// sends the commit and Welcome, merges.
    pub async fn start_conversation(&mut self, peer: &Handle) -> Result<Conversation, RawError> {
        let claim: ClaimResponse = self
            .post(
                &format!("/v1/accounts/{}/key-packages/claim", peer.as_str()),
                &serde_json::json!({}),
            )
            .await?;
        let list = DeviceList::decode(&claim.device_list)
            .map_err(|e| RawError::Local(format!("claimed device list: {e}")))?;
        let packages =
            key_package::validate_claimed(self.provider.crypto(), &list, &claim.key_packages)
                .map_err(local("claimed key packages"))?;
        let mut conversation =
            Conversation::create(&self.provider, &self.device).map_err(local("group"))?;
        let commit = conversation
            .invite(&self.provider, &self.device, &packages)
            .map_err(local("invite"))?;
        let request = SendRequest {
            id: MessageId(rand::random()),
            message: commit.commit,
            welcome: commit.welcome,
            removed_devices: vec![],
        };
        let _: SendResponse = self.post("/v1/messages", &request).await?;
        conversation
            .merge_pending_commit(&self.provider)
            .map_err(local("merge"))?;
        Ok(conversation)
    }

    /// Encrypts `text` in `conversation`: a send request with a fresh id.
    pub fn message(
        &self,
        conversation: &mut Conversation,
        text: &str,
    ) -> Result<SendRequest, RawError> {
        let id = MessageId(rand::random());
        let content = Content::text(id, now_secs() * 1000, text);
        let message = conversation
            .encrypt(&self.provider, &self.device, &content)
            .map_err(local("encrypt"))?;
        Ok(SendRequest {
            id,
            message,
            welcome: None,
            removed_devices: vec![],
        })
    }

    /// Sends a request (a retry sends the same id and bytes).
    pub async fn send(&self, request: &SendRequest) -> Result<SendResponse, RawError> {
        self.post("/v1/messages", request).await
    }

    /// One page of the mailbox after `after`.
    pub async fn mailbox(&self, after: u64) -> Result<MailboxResponse, RawError> {
        self.get(&format!("/v1/mailbox?after={after}&limit=500"))
            .await
    }

    /// Acknowledges (deletes) the mailbox up to `up_to`.
    pub async fn ack(&self, up_to: u64) -> Result<(), RawError> {
        let _: serde_json::Value = self.post("/v1/mailbox/ack", &AckRequest { up_to }).await?;
        Ok(())
    }
}
