//! Compiled policies kept on disk, so that a restart (or a swap to a component this
//! process has not seen) loads machine code in milliseconds instead of compiling again.
//!
//! A file is named by the component's sha256 and a hash of what makes compiled code
//! usable (wasmtime's version, the engine's settings and the CPU features it targets:
//! `Engine::precompile_compatibility_hash`). Loading compiled code is `unsafe` in
//! wasmtime: it checks versions, not integrity, and runs what it is given. So the
//! directory must be private (owned by this user, no access for others: refused
//! otherwise), files are written whole or not at all (a temporary file renamed), and each
//! carries a sha256 of its contents that is checked before wasmtime sees them. A file
//! that fails any check is compiled again and replaced, never loaded.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// What a cache file starts with. Then: the component's sha256 and the compatibility
/// hash it was stored under (so that a file renamed to another name is refused), the
/// sha256 of the code, and the code (wasmtime's bytes).
const MAGIC: &[u8; 8] = b"LOCUSCW2";

/// Leftover temporary files (of a process killed mid-write) older than this are removed.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(600);

/// A directory of compiled components.
#[derive(Debug)]
pub struct CompiledCache {
    dir: PathBuf,
    /// Hash of what compiled code depends on, besides the component.
    compat: u64,
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled by this process before.
    Memory,
    /// Loaded from a cache file.
    Disk,
    /// Compiled now (and, where a disk cache is set up, stored).
    Compiled,
}

impl Origin {
    /// Its name in the admin API: `memory`, `disk` or `compiled`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Disk => "disk",
            Self::Compiled => "compiled",
        }
    }

    /// The origin named `name` ([`Origin::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Memory, Self::Disk, Self::Compiled].into_iter().find(|o| o.name() == name)
    }

    /// What it means, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Memory => "compiled before by this process",
            Self::Disk => "from the disk cache",
            Self::Compiled => "compiled",
        }
    }
}

impl CompiledCache {
    /// A cache in `dir` for code compiled by `engine`. Creates the directory (mode 0700)
    /// if needed; refuses one that others can read or write, or that another user owns.
    pub fn open(dir: &Path, engine: &Engine) -> anyhow::Result<Self> {
        use anyhow::Context;
        let shown = dir.display();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {shown}"))?;
        // The directory itself, not what a symlink there points to.
        let meta = fs::symlink_metadata(dir).with_context(|| format!("cannot read {shown}"))?;
        anyhow::ensure!(meta.is_dir(), "{shown} is not a directory (a symlink?)");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        anyhow::ensure!(
            meta.uid() == me,
            "{shown} belongs to uid {}, not to this user ({me})",
            meta.uid()
        );
        let mode = meta.permissions().mode() & 0o777;
        anyhow::ensure!(
            mode & 0o077 == 0,
            "{shown} is open to others (mode {mode:o}); compiled code is only loaded from a private directory (chmod 700)"
        );
        let mut h = fnv::FnvHasher::default();
        engine.precompile_compatibility_hash().hash(&mut h);
        let cache = Self { dir: dir.to_path_buf(), compat: h.finish() };
        cache.remove_stale_temporaries();
        Ok(cache)
    }

    fn remove_stale_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_TMP));
            if old && e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}-{:016x}.cwasm", hex::encode(sha256), self.compat))
    }

    /// The component whose bytes hash to `sha256`: from its cache file when one passes
    /// the checks, else compiled from `bytes` and stored.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        sha256: [u8; 32],
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, Origin)> {
        let path = self.path(&sha256);
        match self.read(engine, &path, &sha256) {
            Ok(Some(c)) => return Ok((c, Origin::Disk)),
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(file = %path.display(), %why, "compiled policy not used; compiling again")
            }
        }
        let c = Component::new(engine, bytes)?;
        if let Err(e) = c
            .serialize()
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .and_then(|b| self.write(&path, &sha256, &b))
        {
            tracing::warn!(file = %path.display(), error = %e, "cannot store the compiled policy");
        }
        Ok((c, Origin::Compiled))
    }

    /// `Ok(None)`: no file. `Err`: a file that must not be loaded: not a plain file of
    /// this user's that only they can read and write (a symlink is not followed), not
    /// stored for this component and engine, or not matching its checksum.
    fn read(
        &self,
        engine: &Engine,
        path: &Path,
        sha256: &[u8; 32],
    ) -> Result<Option<Component>, String> {
        use std::io::Read;
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        let mut file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let meta = file.metadata().map_err(|e| e.to_string())?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if !meta.is_file() || meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
            return Err("not a private file of this user's".into());
        }
        let mut data = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut data).map_err(|e| e.to_string())?;
        let code = compiled_code(&data, sha256, self.compat)?;
        // SAFETY: `code` is what `Component::serialize` wrote, for this component and an
        // engine with the same compatibility hash, into a private file of this user's in a
        // private directory, and its checksum matches; wasmtime checks its version and
        // settings again.
        unsafe { Component::deserialize(engine, code) }.map(Some).map_err(|e| format!("{e:#}"))
    }

    fn write(&self, path: &Path, sha256: &[u8; 32], code: &[u8]) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".tmp-{}-{:x}", std::process::id(), rand::random::<u64>()));
        let result = (|| {
            let mut f =
                fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(&compiled_file(sha256, self.compat, code))?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        Ok(result?)
    }
}

/// A cache file's bytes for `code`, compiled from the component `sha256` by an engine of
/// compatibility hash `compat`: what [`compiled_code`] reads back.
pub fn compiled_file(sha256: &[u8; 32], compat: u64, code: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(MAGIC.len() + 32 + 8 + 32 + code.len());
    f.extend_from_slice(MAGIC);
    f.extend_from_slice(sha256);
    f.extend_from_slice(&compat.to_le_bytes());
    f.extend_from_slice(&Sha256::digest(code));
    f.extend_from_slice(code);
    f
}

/// The compiled code in a cache file's bytes `data`, if the file was stored for the
/// component `sha256` and an engine of compatibility hash `compat`, and its checksum
/// matches; else why not. Only code that passes is handed to wasmtime.
pub fn compiled_code<'a>(
    data: &'a [u8],
    sha256: &[u8; 32],
    compat: u64,
) -> Result<&'a [u8], String> {
    let body = data
        .strip_prefix(MAGIC.as_slice())
        .filter(|b| b.len() > 32 + 8 + 32)
        .ok_or("not a locus compiled-policy file")?;
    let (stored_for, rest) = body.split_at(32);
    let (stored_compat, rest) = rest.split_at(8);
    if stored_for != sha256 || stored_compat != compat.to_le_bytes() {
        return Err("stored for another component or engine".into());
    }
    let (sum, code) = rest.split_at(32);
    if Sha256::digest(code).as_slice() != sum {
        return Err("checksum mismatch: the file is corrupt or was altered".into());
    }
    Ok(code)
}

/// Where compiled policies are kept unless told otherwise: `$XDG_CACHE_HOME/locus/policies`,
/// else `$HOME/.cache/locus/policies`.
pub fn default_dir() -> Option<PathBuf> {
    // The XDG spec: a relative XDG_CACHE_HOME is ignored.
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("locus").join("policies"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::PolicySource;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    fn private_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("locus-cc-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn hash_policy() -> (Vec<u8>, [u8; 32]) {
        let bytes = PolicySource::Builtin("hash").bytes().unwrap();
        let sha = Sha256::digest(&bytes).into();
        (bytes, sha)
    }

    fn exports(c: &Component, e: &Engine) -> Vec<String> {
        c.component_type().exports(e).map(|(n, _)| n.to_string()).collect()
    }

    #[test]
    fn compiled_once_then_loaded_from_disk_and_the_same_component() {
        let (e, dir) = (engine(), private_dir("reuse"));
        let cache = CompiledCache::open(&dir, &e).unwrap();
        let (bytes, sha) = hash_policy();
        let (first, o1) = cache.load_or_compile(&e, sha, &bytes).unwrap();
        let (second, o2) = cache.load_or_compile(&e, sha, &bytes).unwrap();
        assert_eq!((o1, o2), (Origin::Compiled, Origin::Disk));
        assert_eq!(exports(&first, &e), exports(&second, &e));
        let mode = fs::metadata(cache.path(&sha)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_compiled_again_never_loaded() {
        let (e, dir) = (engine(), private_dir("corrupt"));
        let cache = CompiledCache::open(&dir, &e).unwrap();
        let (bytes, sha) = hash_policy();
        cache.load_or_compile(&e, sha, &bytes).unwrap();
        let path = cache.path(&sha);
        // One flipped byte in the code: the checksum catches it.
        let mut data = fs::read(&path).unwrap();
        let n = data.len();
        data[n / 2] ^= 0x40;
        fs::write(&path, &data).unwrap();
        assert_eq!(
            cache.read(&e, &path, &sha).unwrap_err(),
            "checksum mismatch: the file is corrupt or was altered"
        );
        let (_, o) = cache.load_or_compile(&e, sha, &bytes).unwrap();
        assert_eq!(o, Origin::Compiled, "a corrupt file was loaded");
        assert_eq!(
            cache.load_or_compile(&e, sha, &bytes).unwrap().1,
            Origin::Disk,
            "rewritten whole"
        );
        // A file whose checksum holds but whose contents are not wasmtime's: refused by
        // wasmtime, compiled again.
        let junk = b"not compiled code at all".to_vec();
        let mut foreign = MAGIC.to_vec();
        foreign.extend_from_slice(&sha);
        foreign.extend_from_slice(&cache.compat.to_le_bytes());
        foreign.extend_from_slice(&Sha256::digest(&junk));
        foreign.extend_from_slice(&junk);
        fs::write(&path, &foreign).unwrap();
        assert!(cache.read(&e, &path, &sha).is_err());
        assert_eq!(cache.load_or_compile(&e, sha, &bytes).unwrap().1, Origin::Compiled);
        // Not ours at all.
        fs::write(&path, b"hello").unwrap();
        assert_eq!(cache.read(&e, &path, &sha).unwrap_err(), "not a locus compiled-policy file");
        // Another component's file under this name.
        cache.load_or_compile(&e, sha, &bytes).unwrap();
        let other = [7u8; 32];
        fs::copy(&path, cache.path(&other)).unwrap();
        assert_eq!(
            cache.read(&e, &cache.path(&other), &other).unwrap_err(),
            "stored for another component or engine"
        );
        // A symlink, or a file others may write, is not followed or loaded.
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(cache.path(&other), &path).unwrap();
        assert!(cache.read(&e, &path, &sha).is_err(), "a symlink was followed");
        fs::remove_file(&path).unwrap();
        cache.load_or_compile(&e, sha, &bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(cache.read(&e, &path, &sha).unwrap_err(), "not a private file of this user's");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn an_engine_with_other_settings_uses_other_files() {
        let (e, dir) = (engine(), private_dir("settings"));
        let (bytes, sha) = hash_policy();
        CompiledCache::open(&dir, &e).unwrap().load_or_compile(&e, sha, &bytes).unwrap();
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).epoch_interruption(false);
        let other = Engine::new(&config).unwrap();
        let cache = CompiledCache::open(&dir, &other).unwrap();
        assert_eq!(cache.load_or_compile(&other, sha, &bytes).unwrap().1, Origin::Compiled);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_directory_others_can_reach_is_refused() {
        let (e, dir) = (engine(), private_dir("open"));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let err = CompiledCache::open(&dir, &e).unwrap_err().to_string();
        assert!(err.contains("open to others"), "{err}");
        fs::remove_dir_all(&dir).ok();
    }
}
