//! The relay's authentication and input checks, over real HTTP against the real binary.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use dm_tests::Relay;
use dm_wire::api::{
    AccountResponse, ChallengeRequest, ChallengeResponse, ErrorBody, ErrorCode, RegisterRequest,
    SessionRequest, SessionResponse,
};
use dm_wire::auth;
use dm_wire::cert::{DeviceCertificate, DeviceList, sign_labeled};
use dm_wire::{DeviceId, Handle};
use ed25519_dalek::SigningKey;

struct Raw {
    http: reqwest::Client,
    base: String,
}

impl Raw {
    async fn post<B: serde::Serialize>(&self, path: &str, body: &B) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("relay answers")
    }
}

async fn challenge(raw: &Raw, handle: &Handle, device_id: DeviceId) -> ChallengeResponse {
    let request = ChallengeRequest {
        handle: handle.clone(),
        device_id,
    };
    raw.post("/v1/auth/challenge", &request)
        .await
        .json()
        .await
        .unwrap()
}

async fn error_code(resp: reqwest::Response) -> (u16, ErrorCode) {
    let status = resp.status().as_u16();
    let body: ErrorBody = resp.json().await.expect("errors are JSON ErrorBody");
    (status, body.error.code)
}

/// Registers an account whose device key is a plain Ed25519 key; returns what a device
/// needs to log in.
async fn register(raw: &Raw, handle: &str) -> (Handle, DeviceId, SigningKey) {
    let handle = Handle::parse(handle).unwrap();
    let account = SigningKey::from_bytes(&rand::random());
    let device = SigningKey::from_bytes(&rand::random());
    let device_id = DeviceId(rand::random());
    let cert = DeviceCertificate::issue(
        &account,
        handle.clone(),
        device_id,
        device.verifying_key().to_bytes(),
        1,
    );
    let list = DeviceList::issue(&account, handle.clone(), 1, 1, vec![cert])
        .unwrap()
        .encode();
    let proof = sign_labeled(
        &device,
        auth::REGISTRATION_LABEL,
        &auth::registration_body(&list),
    );
    let resp = raw
        .post(
            "/v1/accounts",
            &RegisterRequest {
                handle: handle.clone(),
                device_list: list,
                device_proof: proof.to_vec(),
            },
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    let _: AccountResponse = resp.json().await.unwrap();
    (handle, device_id, device)
}

#[tokio::test]
async fn unauthenticated_and_replayed_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"));
    let raw = Raw {
        http: reqwest::Client::new(),
        base: relay.url(),
    };
    let (handle, device_id, device) = register(&raw, "erin").await;

    // No token, a made-up token: 401 unauthenticated.
    let resp = raw
        .http
        .get(format!("{}/v1/mailbox", raw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (401, ErrorCode::Unauthenticated));
    let resp = raw
        .http
        .get(format!("{}/v1/mailbox", raw.base))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (401, ErrorCode::Unauthenticated));

    // A correct login works once; the same signed request replayed is refused.
    let ch = challenge(&raw, &handle, device_id).await;
    let nonce: [u8; 32] = ch.challenge.clone().try_into().unwrap();
    let sig = sign_labeled(
        &device,
        auth::SESSION_LABEL,
        &auth::session_body(&handle, &device_id, &nonce),
    );
    let login = SessionRequest {
        handle: handle.clone(),
        device_id,
        challenge: ch.challenge,
        signature: sig.to_vec(),
    };
    let resp = raw.post("/v1/auth/session", &login).await;
    assert_eq!(resp.status().as_u16(), 200);
    let session: SessionResponse = resp.json().await.unwrap();
    let resp = raw.post("/v1/auth/session", &login).await;
    assert_eq!(error_code(resp).await, (401, ErrorCode::AuthFailed));

    // The token works; a signature by another key over a fresh challenge does not.
    let resp = raw
        .http
        .get(format!("{}/v1/mailbox", raw.base))
        .bearer_auth(&session.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ch = challenge(&raw, &handle, device_id).await;
    let nonce: [u8; 32] = ch.challenge.clone().try_into().unwrap();
    let intruder = SigningKey::from_bytes(&[42; 32]);
    let forged = SessionRequest {
        handle: handle.clone(),
        device_id,
        challenge: ch.challenge,
        signature: sign_labeled(
            &intruder,
            auth::SESSION_LABEL,
            &auth::session_body(&handle, &device_id, &nonce),
        )
        .to_vec(),
    };
    let resp = raw.post("/v1/auth/session", &forged).await;
    assert_eq!(error_code(resp).await, (401, ErrorCode::AuthFailed));

    // Malformed input gets a JSON error with a stable code, never a crash.
    let resp = raw
        .http
        .post(format!("{}/v1/accounts", raw.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (400, ErrorCode::InvalidRequest));
    let resp = raw
        .http
        .post(format!("{}/v1/accounts", raw.base))
        .header("content-type", "application/json")
        .body(vec![b' '; dm_wire::api::limits::MAX_BODY_BYTES + 10])
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (413, ErrorCode::PayloadTooLarge));
    let resp = raw
        .http
        .get(format!("{}/v1/nope", raw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (404, ErrorCode::NotFound));
    // The relay is still up and the account still there.
    let resp = raw
        .post(
            "/v1/auth/challenge",
            &ChallengeRequest { handle, device_id },
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
}
