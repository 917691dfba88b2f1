//! Conversions between the API's types and the columns both engines store them in.

use dm_wire::{DeviceId, Handle};

use super::StoreError;

/// Unix times, mailbox cursors and counters are `u64` in the API and 64-bit signed integers
/// in both databases. Values above `i64::MAX` (centuries away as times; unreachable as
/// counters) saturate: the conversion is checked and order-preserving, so a comparison with
/// a stored value (`seq > after`, `seq <= up_to`, `not_after > now`) means the same for
/// every `u64` (nothing is after `u64::MAX`, everything is up to it). It never wraps to a
/// negative.
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored integer that must not be negative.
pub(crate) fn uint(v: i64, what: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(what))
}

/// A stored canonical handle.
pub(crate) fn handle(s: &str) -> Result<Handle, StoreError> {
    Handle::from_canonical(s).map_err(|_| StoreError::Corrupt("handle"))
}

/// A stored device id.
pub(crate) fn device_id(b: &[u8]) -> Result<DeviceId, StoreError> {
    DeviceId::from_slice(b).map_err(|_| StoreError::Corrupt("device id"))
}

/// A stored Ed25519 key.
pub(crate) fn key32(b: &[u8]) -> Result<[u8; 32], StoreError> {
    b.try_into().map_err(|_| StoreError::Corrupt("32-byte key"))
}

/// Seconds until the oldest claim of a window (`oldest`, unix seconds) leaves it, at
/// least one; a whole window if there is none (a limit of zero).
pub(crate) fn retry_after(oldest: Option<i64>, window: u64, now: u64) -> u64 {
    oldest
        .and_then(|t| u64::try_from(t).ok())
        .map_or(window, |t| t.saturating_add(window).saturating_sub(now))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_saturate_and_negatives_are_corrupt() {
        assert_eq!(int(5), 5);
        assert_eq!(int(u64::MAX), i64::MAX);
        assert_eq!(uint(7, "x").expect("positive"), 7);
        assert!(matches!(uint(-1, "x"), Err(StoreError::Corrupt("x"))));
    }

    #[test]
    fn retry_after_counts_down_to_the_window_end() {
        assert_eq!(retry_after(Some(1000), 3600, 1000), 3600);
        assert_eq!(retry_after(Some(1000), 3600, 4599), 1);
        assert_eq!(retry_after(Some(1000), 3600, 5000), 1);
        assert_eq!(retry_after(None, 3600, 5000), 3600);
        assert_eq!(retry_after(Some(-5), 3600, 5000), 3600);
    }
}
