//! What a policy is loaded from, and why a load fails: the vocabulary every layer of the
//! crate speaks.

use std::fmt;
use std::path::PathBuf;

use crate::guests::BUILTINS;

/// Where a policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A policy built into the binary: one of [`builtin_names`] (the crates under
    /// `guest-router/` and `guest-cache/` listed in `policy/build.rs`).
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
