//! A minimal client speaking the relay's HTTP API directly, built on e2ee-core with keys in
//! memory: for load and crash tests that need thousands of real MLS messages and want to
//! see the relay's envelopes themselves (no client-side deduplication in between).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dm_wire::api::{
    ChallengeRequest, ChallengeResponse, ClaimResponse, MailboxResponse, RegisterRequest,
    SendRequest, SendResponse, SessionRequest, SessionResponse, UploadKeyPackagesRequest,
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
    /// A new account with one device (not registered yet).
    pub fn new(handle: &str, base: &str) -> RawDevice {
        let mut rng = rand::rngs::OsRng;
        let handle = Handle::parse(handle).expect("handle");
        let account = AccountSecret::generate(&mut rng);
        let provider = MemoryProvider::in_memory();
        let device = Device::generate(&provider, &mut rng, &account, handle.clone(), now_secs())
            .expect("device");
        let device_list = account
            .issue_device_list(
                handle.clone(),
                1,
                now_secs(),
                vec![device.certificate().clone()],
            )
            .expect("device list");
        RawDevice {
            handle,
            device,
            device_list,
            provider,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            base: base.trim_end_matches('/').to_owned(),
            token: None,
        }
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
    pub async fn register(&mut self, key_packages: usize) {
        let encoded = self.device_list.encode();
        let request = RegisterRequest {
            handle: self.handle.clone(),
            device_proof: self.device.registration_proof(&encoded).expect("proof"),
            device_list: encoded,
        };
        let _: serde_json::Value = self.post("/v1/accounts", &request).await.expect("register");
        self.login().await.expect("login");
        let upload = UploadKeyPackagesRequest {
            key_packages: key_package::generate(&self.provider, &self.device, key_packages)
                .expect("key packages"),
            last_resort: Some(
                key_package::generate_last_resort(&self.provider, &self.device)
                    .expect("last resort"),
            ),
        };
        let _: serde_json::Value = self
            .post("/v1/key-packages", &upload)
            .await
            .expect("upload key packages");
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
                    signature: self.device.session_proof(&bytes).expect("proof"),
                    challenge: challenge.challenge,
                },
            )
            .await?;
        self.token = Some(session.token);
        Ok(())
    }

    /// The session token.
    pub fn token(&self) -> &str {
        self.token.as_deref().expect("logged in")
    }

    /// Starts a conversation with `peer` (every device of it): claims key packages,
    /// sends the commit and Welcome, merges.
    pub async fn start_conversation(&mut self, peer: &Handle) -> Conversation {
        let claim: ClaimResponse = self
            .post(
                &format!("/v1/accounts/{}/key-packages/claim", peer.as_str()),
                &serde_json::json!({}),
            )
            .await
            .expect("claim");
        let list = DeviceList::decode(&claim.device_list).expect("device list");
        let packages =
            key_package::validate_claimed(self.provider.crypto(), &list, &claim.key_packages)
                .expect("valid key packages");
        let mut conversation = Conversation::create(&self.provider, &self.device).expect("group");
        let commit = conversation
            .invite(&self.provider, &self.device, &packages)
            .expect("invite");
        let request = SendRequest {
            id: MessageId(rand::random()),
            message: commit.commit,
            welcome: commit.welcome,
            removed_devices: vec![],
        };
        let _: SendResponse = self.post("/v1/messages", &request).await.expect("commit");
        conversation
            .merge_pending_commit(&self.provider)
            .expect("merge");
        conversation
    }

    /// Encrypts `text` in `conversation`: a send request with a fresh id.
    pub fn message(&self, conversation: &mut Conversation, text: &str) -> SendRequest {
        let id = MessageId(rand::random());
        let content = Content::text(id, now_secs() * 1000, text);
        let message = conversation
            .encrypt(&self.provider, &self.device, &content)
            .expect("encrypt");
        SendRequest {
            id,
            message,
            welcome: None,
            removed_devices: vec![],
        }
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
}
