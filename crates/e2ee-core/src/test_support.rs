//! Test helpers: a party with an account, one device and in-memory MLS storage.

use std::collections::HashMap;

use dm_wire::Handle;
use dm_wire::cert::DeviceList;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::device::Device;
use crate::identity::AccountSecret;
use crate::provider::MemoryProvider;

pub(crate) struct Party {
    pub(crate) provider: MemoryProvider,
    pub(crate) account: AccountSecret,
    pub(crate) device: Device,
    pub(crate) device_list: DeviceList,
}

impl Party {
    pub(crate) fn new(handle: &str, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let provider = MemoryProvider::in_memory();
        let account = AccountSecret::generate(&mut rng);
        let handle = Handle::parse(handle).unwrap();
        let device = Device::generate(&provider, &mut rng, &account, handle.clone(), 1).unwrap();
        let device_list = account
            .issue_device_list(handle, 1, 1, vec![device.certificate().clone()])
            .unwrap();
        Self {
            provider,
            account,
            device,
            device_list,
        }
    }

    pub(crate) fn directory(&self) -> HashMap<Handle, DeviceList> {
        HashMap::from([(self.device.handle().clone(), self.device_list.clone())])
    }
}

/// A directory knowing every given party.
pub(crate) fn directory_of(parties: &[&Party]) -> HashMap<Handle, DeviceList> {
    parties
        .iter()
        .map(|p| (p.device.handle().clone(), p.device_list.clone()))
        .collect()
}
