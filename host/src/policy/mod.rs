//! Policy runtime: WebAssembly routing and cache policies, loaded, validated, sandboxed
//! and hot-swapped while traffic flows.
//!
//! The contract is `wit/policy.wit`. Loading a policy reads, compiles, links and
//! type-checks it against its world, calls `configure`, then makes a smoke call on
//! synthetic input; only a policy that passes every step replaces the serving one, which
//! happens atomically. At run time every call is sandboxed ([`Limits`]); a call that
//! traps, times out, runs out of memory or returns a bad answer is decided by a native
//! fallback instead, the instance is re-made, and the fault is counted; too many faults
//! in a window roll the policy back to the previous version ([`FaultPolicy`]).

mod audit;
mod cache;
mod compiled_cache;
mod fallback;
mod inspect;
mod kv_feed;
mod router;
mod sandbox;
mod slot;
mod trial;
mod trial_table;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use audit::{AUDIT_KEPT, Actor, AuditEntry, AuditLog};
pub use cache::{CachePolicy, Entry, EntryKind, PreparedCache};
pub use compiled_cache::{CompiledCache, Origin, default_dir as default_compiled_cache_dir};
pub use fallback::rendezvous;
pub use inspect::{Inspection, inspect};
pub use kv_feed::{KvBatch, KvFeed, LOG_BATCHES};
pub use router::{
    Completion, Decision, Outcome, PromoteError, Request, Routed, RouterPolicy, TrialError,
    Workers, workers,
};
pub use sandbox::{Limits, TICK, use_compiled_cache};
pub use slot::FaultPolicy;
pub use trial::{
    BlockFill, SHADOW_QUEUE, Side, SideReport, TrialEnd, TrialMode, TrialReport, TrialRules,
    TrialRunning, TrialSettingError, take_trial_settings,
};
pub use trial_table::render_trial;

use crate::guests::BUILTINS;

/// Where a policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A policy built into the binary (`random`, `hash`, `lru`).
    Builtin(&'static str),
    /// A component file.
    File(PathBuf),
    /// Component bytes received some other way (an admin upload).
    Bytes {
        /// Shown in logs and `info`.
        name: String,
        /// The component.
        bytes: Vec<u8>,
    },
    /// No wasm at all: the host's native fallback decides every call.
    Native,
}

impl PolicySource {
    /// Parses a CLI argument: `native`, a built-in name, or a path to a `.wasm` file.
    pub fn parse(s: &str) -> Result<Self, SourceError> {
        if s == "native" {
            return Ok(Self::Native);
        }
        if let Some((name, _)) = BUILTINS.iter().find(|(n, _)| *n == s) {
            return Ok(Self::Builtin(name));
        }
        if s.contains('/') || s.ends_with(".wasm") || std::path::Path::new(s).exists() {
            return Ok(Self::File(PathBuf::from(s)));
        }
        Err(SourceError::Unknown { name: s.to_string(), builtins: builtin_names().join(", ") })
    }

    /// A short name for logs and `info`.
    pub fn name(&self) -> String {
        match self {
            Self::Builtin(n) => (*n).to_string(),
            Self::File(p) => p.display().to_string(),
            Self::Bytes { name, .. } => name.clone(),
            Self::Native => "native".into(),
        }
    }

    /// The component bytes.
    pub fn bytes(&self) -> Result<Vec<u8>, SourceError> {
        match self {
            Self::Builtin(n) => Ok(BUILTINS
                .iter()
                .find(|(b, _)| b == n)
                .map(|(_, b)| b.to_vec())
                .unwrap_or_default()),
            Self::File(p) => std::fs::read(p)
                .map_err(|source| SourceError::Read { path: p.clone(), source: source.into() }),
            Self::Bytes { bytes, .. } => Ok(bytes.clone()),
            Self::Native => Err(SourceError::Native),
        }
    }
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Names of the built-in policies.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|(n, _)| *n).collect()
}

/// How to load a policy.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `key=value` settings passed to `configure`.
    pub settings: Vec<(String, String)>,
    /// Sandbox bounds for every call.
    pub limits: Limits,
    /// Instances of a router policy kept for concurrent callers (0: one per core, at
    /// least 4). 1 makes every call use the same instance, for policies that keep
    /// state. The setting `locus.instances=N` overrides it. Cache policies always use one.
    pub instances: usize,
}

impl LoadOptions {
    /// Default bounds, the given settings.
    pub fn with_settings(settings: Vec<(String, String)>) -> Self {
        Self { settings, ..Self::default() }
    }

    pub(crate) fn instance_count(&self) -> usize {
        if self.instances > 0 {
            return self.instances;
        }
        std::thread::available_parallelism().map_or(4, |n| n.get()).max(4)
    }
}

/// Why a policy source cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// Neither `native`, a built-in nor something that looks like a file.
    #[error(
        "unknown policy `{name}`: use a built-in ({builtins}), `native`, or a path to a .wasm \
         component (e.g. ./{name}.wasm)"
    )]
    Unknown {
        /// What was asked for.
        name: String,
        /// The built-ins, comma-separated.
        builtins: String,
    },
    /// The component file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::sync::Arc<std::io::Error>,
    },
    /// `native` has no component.
    #[error("the native policy has no module")]
    Native,
}

/// A `--setting` that is not `key=value` with a non-empty key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("setting `{0}` is not of the form key=value with a non-empty key")]
pub struct SettingError(pub String);

/// Parses `key=value` into a pair.
pub fn parse_setting(s: &str) -> Result<(String, String), SettingError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(SettingError(s.to_string())),
    }
}

/// The step of loading at which a policy was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadStep {
    /// The bytes could not be read.
    Read,
    /// Not a component, or it does not compile.
    Compile,
    /// It imports something the sandbox does not provide.
    Link,
    /// It does not implement the world (missing export, wrong signature).
    Typecheck,
    /// `configure` returned an error or trapped.
    Configure,
    /// The smoke call on synthetic input trapped, timed out or answered wrongly.
    Smoke,
}

impl fmt::Display for LoadStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Compile => "compile",
            Self::Link => "link",
            Self::Typecheck => "type-check",
            Self::Configure => "configure",
            Self::Smoke => "smoke call",
        })
    }
}

/// A policy that failed to load; the serving policy is unchanged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy `{name}` rejected at {step}: {reason}")]
pub struct LoadError {
    /// The policy's name.
    pub name: String,
    /// Where it failed.
    pub step: LoadStep,
    /// Why.
    pub reason: String,
}

/// Why one call into a policy was decided by the native fallback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The guest trapped (a panic is one).
    #[error("trapped: {0}")]
    Trap(String),
    /// The call ran past its deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The guest tried to grow its memory past the cap.
    #[error("exceeded its memory limit of {0} bytes")]
    Memory(usize),
    /// The export returned an error.
    #[error("returned an error: {0}")]
    Error(String),
    /// `route` returned an index past the end of the worker list.
    #[error("returned worker index {index} of {len} workers")]
    OutOfRange {
        /// The index returned.
        index: u32,
        /// The number of workers offered.
        len: usize,
    },
    /// A fresh instance could not be made.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// `configure` failed on a fresh instance.
    #[error("configure failed: {0}")]
    Configure(String),
}

/// What a slot is serving.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
    #[serde(serialize_with = "unix_seconds")]
    pub loaded_at: SystemTime,
    /// Settings it was configured with.
    pub settings: Vec<(String, String)>,
    /// Faults since it was loaded.
    pub faults: u64,
    /// Where its machine code came from: compiled, from the disk cache, or compiled
    /// before by this process (empty for native).
    pub code: &'static str,
    /// Microseconds its load took: read, compile (or load), link, type-check, configure
    /// and smoke call.
    pub load_us: u64,
}

fn unix_seconds<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(unix_time(*t))
}

/// `t` as Unix seconds to the millisecond, as the admin APIs show times.
pub(crate) fn unix_time(t: SystemTime) -> f64 {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    (secs * 1000.0).round() / 1000.0
}
