//! HTTP calls to the relay, one method per route of `dm_wire::api`.
//!
//! Connection failures become [`Error::RelayUnreachable`]; error responses become
//! [`Error::Relay`] with the relay's [`ErrorCode`]. Session handling (obtaining and renewing
//! the bearer token) is the caller's job: authenticated methods take the token.

use std::time::Duration;

use dm_wire::Handle;
use dm_wire::api::{
    AccountResponse, AckRequest, ChallengeRequest, ChallengeResponse, ClaimResponse, ErrorBody,
    ErrorCode, KeyPackageStock, MailboxResponse, RegisterRequest, SendRequest, SendResponse,
    SessionRequest, SessionResponse, UploadKeyPackagesRequest,
};
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Seconds to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds to wait for a whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A relay's HTTP API.
#[derive(Clone)]
pub(crate) struct Transport {
    http: reqwest::Client,
    base: String,
}

impl Transport {
    /// A transport to the relay at `base` (e.g. `http://127.0.0.1:7878`).
    pub(crate) fn new(base: &str) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// The relay's base URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Registers. Retried when the request may have reached the relay (a timeout or a
    /// connection broken mid-request, not a refused connection): the relay answers an
    /// identical retry like the original, and giving up would strand an account the relay
    /// may already have accepted.
    pub(crate) async fn register(&self, req: &RegisterRequest) -> Result<AccountResponse, Error> {
        const RETRY_DELAYS_MS: [u64; 3] = [250, 1000, 3000];
        for delay in RETRY_DELAYS_MS {
            match self
                .http
                .post(self.url("/v1/accounts"))
                .json(req)
                .send()
                .await
            {
                Err(e) if !e.is_connect() => {
                    tracing::debug!(error = %e, "registration interrupted; retrying");
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                Err(e) => return Err(self.transport_error(&e)),
                Ok(response) => return self.parse(self.check(response).await?).await,
            }
        }
        self.json(self.http.post(self.url("/v1/accounts")).json(req))
            .await
    }

    pub(crate) async fn challenge(
        &self,
        req: &ChallengeRequest,
    ) -> Result<ChallengeResponse, Error> {
        self.json(self.http.post(self.url("/v1/auth/challenge")).json(req))
            .await
    }

    pub(crate) async fn session(&self, req: &SessionRequest) -> Result<SessionResponse, Error> {
        self.json(self.http.post(self.url("/v1/auth/session")).json(req))
            .await
    }

    pub(crate) async fn account(
        &self,
        token: &str,
        handle: &Handle,
    ) -> Result<AccountResponse, Error> {
        let url = self.url(&format!("/v1/accounts/{}", handle.as_str()));
        self.json(self.http.get(url).bearer_auth(token)).await
    }

    pub(crate) async fn upload_key_packages(
        &self,
        token: &str,
        req: &UploadKeyPackagesRequest,
    ) -> Result<KeyPackageStock, Error> {
        let req = self
            .http
            .post(self.url("/v1/key-packages"))
            .bearer_auth(token)
            .json(req);
        self.json(req).await
    }

    pub(crate) async fn key_package_stock(&self, token: &str) -> Result<KeyPackageStock, Error> {
        let url = self.url("/v1/key-packages");
        self.json(self.http.get(url).bearer_auth(token)).await
    }

    pub(crate) async fn claim(&self, token: &str, handle: &Handle) -> Result<ClaimResponse, Error> {
        let url = self.url(&format!(
            "/v1/accounts/{}/key-packages/claim",
            handle.as_str()
        ));
        self.json(self.http.post(url).bearer_auth(token)).await
    }

    pub(crate) async fn send(&self, token: &str, req: &SendRequest) -> Result<SendResponse, Error> {
        let req = self
            .http
            .post(self.url("/v1/messages"))
            .bearer_auth(token)
            .json(req);
        self.json(req).await
    }

    pub(crate) async fn mailbox(
        &self,
        token: &str,
        after: u64,
        limit: u32,
    ) -> Result<MailboxResponse, Error> {
        let url = self.url(&format!("/v1/mailbox?after={after}&limit={limit}"));
        self.json(self.http.get(url).bearer_auth(token)).await
    }

    pub(crate) async fn ack(&self, token: &str, up_to: u64) -> Result<(), Error> {
        let req = self
            .http
            .post(self.url("/v1/mailbox/ack"))
            .bearer_auth(token)
            .json(&AckRequest { up_to });
        self.empty(req).await
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, Error> {
        let response = self.execute(req).await?;
        self.parse(response).await
    }

    async fn parse<T: DeserializeOwned>(&self, response: reqwest::Response) -> Result<T, Error> {
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Protocol(format!("malformed response from the relay: {e}")))
    }

    async fn empty(&self, req: RequestBuilder) -> Result<(), Error> {
        self.execute(req).await.map(|_| ())
    }

    async fn execute(&self, req: RequestBuilder) -> Result<reqwest::Response, Error> {
        let response = req.send().await.map_err(|e| self.transport_error(&e))?;
        self.check(response).await
    }

    /// Passes a success through; turns an error status into [`Error`].
    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, Error> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(err) => Err(Error::Relay {
                code: err.error.code,
                message: err.error.message,
            }),
            Err(_) => Err(self.status_error(status)),
        }
    }

    /// An error status without the relay's JSON error body (for example from a proxy).
    fn status_error(&self, status: StatusCode) -> Error {
        let code = match status.as_u16() {
            502..=504 => {
                return Error::RelayUnreachable {
                    url: self.base.clone(),
                };
            }
            400 => ErrorCode::InvalidRequest,
            401 => ErrorCode::Unauthenticated,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            413 => ErrorCode::PayloadTooLarge,
            429 => ErrorCode::RateLimited,
            _ => ErrorCode::Internal,
        };
        Error::Relay {
            code,
            message: format!("HTTP {status}"),
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> Error {
        tracing::debug!(error = %e, "relay request failed");
        Error::RelayUnreachable {
            url: self.base.clone(),
        }
    }
}
