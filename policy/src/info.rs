//! What a slot serves, as the admin APIs show it.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::runtime::compiled_cache::Origin;

/// What a slot is serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// Built-in name, file path or upload name; `native` for the fallback.
    pub name: String,
    /// `router` or `cache`.
    pub world: String,
    /// Hex sha256 of the component (empty for native).
    pub sha256: String,
    /// The version of `locus:policy` it implements (empty for native).
    pub version: String,
    /// Component size in bytes.
    pub size: usize,
    /// When it was loaded (serialized as Unix seconds).
    #[serde(with = "unix_seconds")]
    pub loaded_at: SystemTime,
    /// Settings it was configured with.
    pub settings: Vec<(String, String)>,
    /// Faults since it was loaded.
    pub faults: u64,
    /// Where its machine code came from: compiled, from the disk cache, or compiled
    /// before by this process (`None` for native, shown as an empty string).
    #[serde(with = "origin_or_empty")]
    pub code: Option<Origin>,
    /// Microseconds its load took: read, compile (or load), link, type-check, configure
    /// and smoke call.
    pub load_us: u64,
}

/// `t` as Unix seconds to the millisecond, as the admin APIs show times.
pub fn unix_time(t: SystemTime) -> f64 {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    (secs * 1000.0).round() / 1000.0
}

/// A [`SystemTime`] as [`unix_time`] shows it, and back.
mod unix_seconds {
    use super::*;

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(unix_time(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs)
            .map(|d| SystemTime::UNIX_EPOCH + d)
            .map_err(serde::de::Error::custom)
    }
}

/// An [`Origin`] by its name, and none as an empty string (the API has always shown it so).
mod origin_or_empty {
    use super::*;

    pub(super) fn serialize<S: Serializer>(o: &Option<Origin>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(o.map_or("", Origin::name))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Origin>, D::Error> {
        match String::deserialize(d)?.as_str() {
            "" => Ok(None),
            name => Origin::from_name(name)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown code origin `{name}`"))),
        }
    }
}
