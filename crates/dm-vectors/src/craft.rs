//! An encoder written apart from `dm-wire`'s, used to build the malformed structures of the
//! negative vectors (and, through the tests, to cross-check dm-wire's encoding).

use ed25519_dalek::{Signer as _, SigningKey};

/// Big-endian fields and length-prefixed vectors, without any validation.
#[derive(Default, Clone)]
pub(crate) struct Bytes(pub(crate) Vec<u8>);

impl Bytes {
    pub(crate) fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    /// `<u8>` length prefix (truncating the length: callers pass short inputs).
    pub(crate) fn vec8(self, v: &[u8]) -> Self {
        self.u8(v.len() as u8).raw(v)
    }
    /// `<u16>` length prefix.
    pub(crate) fn vec16(self, v: &[u8]) -> Self {
        self.u16(v.len() as u16).raw(v)
    }
}

/// Ed25519 over `label || 0x00 || body`.
pub(crate) fn sign(key: &SigningKey, label: &[u8], body: &[u8]) -> [u8; 64] {
    let mut input = label.to_vec();
    input.push(0);
    input.extend_from_slice(body);
    key.sign(&input).to_bytes()
}

/// The fields of a device certificate, free to be wrong.
#[derive(Clone)]
pub(crate) struct Cert {
    pub(crate) version: u8,
    pub(crate) handle: Vec<u8>,
    pub(crate) account_key: [u8; 32],
    pub(crate) device_id: [u8; 16],
    pub(crate) device_key: [u8; 32],
    pub(crate) issued_at: u64,
}

impl Cert {
    pub(crate) fn tbs(&self) -> Vec<u8> {
        Bytes::default()
            .u8(self.version)
            .vec8(&self.handle)
            .raw(&self.account_key)
            .raw(&self.device_id)
            .raw(&self.device_key)
            .u64(self.issued_at)
            .0
    }

    /// TBS and the signature by `signer` under the certificate label.
    pub(crate) fn signed(&self, signer: &SigningKey) -> Vec<u8> {
        let tbs = self.tbs();
        let sig = sign(signer, dm_wire::cert::DEVICE_CERTIFICATE_LABEL, &tbs);
        Bytes(tbs).raw(&sig).0
    }
}

/// The fields of a device list, free to be wrong.
#[derive(Clone)]
pub(crate) struct List {
    pub(crate) version: u8,
    pub(crate) handle: Vec<u8>,
    pub(crate) account_key: [u8; 32],
    pub(crate) sequence: u64,
    pub(crate) issued_at: u64,
    /// Encoded certificates.
    pub(crate) certificates: Vec<Vec<u8>>,
}

impl List {
    pub(crate) fn tbs(&self) -> Vec<u8> {
        let mut b = Bytes::default()
            .u8(self.version)
            .vec8(&self.handle)
            .raw(&self.account_key)
            .u64(self.sequence)
            .u64(self.issued_at)
            .u16(self.certificates.len() as u16);
        for c in &self.certificates {
            b = b.vec16(c);
        }
        b.0
    }

    /// TBS and the signature by `signer` under the device-list label.
    pub(crate) fn signed(&self, signer: &SigningKey) -> Vec<u8> {
        let tbs = self.tbs();
        let sig = sign(signer, dm_wire::cert::DEVICE_LIST_LABEL, &tbs);
        Bytes(tbs).raw(&sig).0
    }
}
