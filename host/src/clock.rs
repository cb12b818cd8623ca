//! Wall-clock times as the APIs show them: whole Unix seconds (OpenAI's `created`) and
//! Unix microseconds (load reports, KV events). The admin APIs' fractional seconds are
//! `locus_policy::unix_time`.

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` as whole Unix seconds (0 before 1970).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `t` as Unix microseconds (0 before 1970).
pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    unix_secs(SystemTime::now())
}
