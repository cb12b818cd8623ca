//! One loaded policy version: its validated component, its pool of sandboxed instances,
//! and its fault record.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::{Store, Trap};

use super::compiled_cache::Origin;
use super::fault::Fault;
use super::options::LoadOptions;
use super::sandbox::{Limits, Runtime, State};
use super::world::{Feed, World};
use crate::info::PolicyInfo;
use crate::load::{LoadError, LoadStep, PolicySource};

struct Instance<W: World> {
    store: Store<State>,
    bindings: W::Bindings,
    /// How far into the slot's [`Feed`] this instance has been told.
    cursor: u64,
}

/// A loaded, validated component with its instances.
pub(crate) struct Wasm<W: World> {
    pre: W::Pre,
    settings: Vec<(String, String)>,
    limits: Limits,
    exclusive: bool,
    max_idle: usize,
    idle: Mutex<Vec<Instance<W>>>,
    /// Held for the whole call when `exclusive`, so one instance serves everyone.
    serial: Mutex<()>,
    next_instance: AtomicU64,
}

impl<W: World> Wasm<W> {
    fn instantiate(&self, feed: Option<&dyn Feed<W>>) -> Result<Instance<W>, Fault> {
        let mut store = Runtime::get().store(&self.limits);
        let k = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let bindings = W::instantiate(&self.pre, &mut store)
            .map_err(|e| Fault::Instantiate(format!("{e:#}")))?;
        let mut settings = self.settings.clone();
        settings.push(("locus.instance".into(), k.to_string()));
        match W::configure(&bindings, &mut store, &settings) {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => return Err(Fault::Configure(msg)),
            Err(e) => {
                return Err(Fault::Configure(classify(e, &store, &self.limits).to_string()));
            }
        }
        let mut cursor = 0;
        if let Some(feed) = feed {
            cursor = feed
                .replay(&bindings, &mut store, &self.limits)
                .map_err(|e| classify(e, &store, &self.limits))?;
        }
        Ok(Instance { store, bindings, cursor })
    }

    /// Runs `f` on an instance under the sandbox's deadline. A trap poisons the instance,
    /// so it is dropped and the next call makes a fresh one from the `InstancePre`.
    pub(super) fn call<R>(
        &self,
        feed: Option<&dyn Feed<W>>,
        f: impl FnOnce(&W::Bindings, &mut Store<State>) -> wasmtime::Result<Result<R, Fault>>,
    ) -> Result<R, Fault> {
        let _serial = self.exclusive.then(|| self.serial.lock());
        let popped = self.idle.lock().pop();
        let mut inst = match popped {
            Some(i) => i,
            None => self.instantiate(feed)?,
        };
        if let Some(feed) = feed {
            match feed.catch_up(&inst.bindings, &mut inst.store, &self.limits, inst.cursor) {
                Ok(c) => inst.cursor = c,
                Err(e) => return Err(classify(e, &inst.store, &self.limits)),
            }
        }
        State::arm(&mut inst.store, &self.limits);
        match f(&inst.bindings, &mut inst.store) {
            Ok(r) => {
                let mut idle = self.idle.lock();
                if idle.len() < self.max_idle {
                    idle.push(inst);
                }
                r
            }
            Err(e) => Err(classify(e, &inst.store, &self.limits)),
        }
    }
}

/// Names what went wrong in a call that returned a wasmtime error.
fn classify(e: wasmtime::Error, store: &Store<State>, limits: &Limits) -> Fault {
    if store.data().memory_denied() {
        return Fault::Memory(limits.memory_bytes);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Fault::Timeout(limits.deadline),
        Some(trap) => Fault::Trap(trap.to_string()),
        None => Fault::Trap(format!("{}", e.root_cause())),
    }
}

/// One loaded policy (or the native fallback) and its fault record.
pub(crate) struct Version<W: World> {
    pub(crate) info: PolicyInfo,
    pub(crate) wasm: Option<Wasm<W>>,
    /// Its fault record, kept by the slot that serves it.
    pub(super) faults: AtomicU64,
    pub(super) recent: Mutex<VecDeque<Instant>>,
    pub(super) given_up: AtomicBool,
}

impl<W: World> Version<W> {
    pub(crate) fn native() -> Self {
        Self::new(
            PolicyInfo {
                name: "native".into(),
                world: W::NAME.into(),
                sha256: String::new(),
                version: String::new(),
                size: 0,
                loaded_at: SystemTime::now(),
                settings: Vec::new(),
                faults: 0,
                code: None,
                load_us: 0,
            },
            None,
        )
    }

    fn new(info: PolicyInfo, wasm: Option<Wasm<W>>) -> Self {
        Self {
            info,
            wasm,
            faults: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            given_up: AtomicBool::new(false),
        }
    }

    /// Read, compile, link, type-check, configure and smoke-test: every step must pass
    /// before the version may serve.
    pub(crate) fn load(source: &PolicySource, opts: &LoadOptions) -> Result<Self, LoadError> {
        let started = Instant::now();
        let name = source.name();
        let err = |step, reason: String| LoadError { name: name.clone(), step, reason };
        let bytes = source.bytes().map_err(|e| err(LoadStep::Read, e.to_string()))?;
        if bytes.is_empty() {
            return Err(err(LoadStep::Read, "the module is empty".into()));
        }
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let (pre, origin) =
            validate::<W>(&bytes, sha256).map_err(|(step, reason)| err(step, reason))?;

        let mut settings = opts.settings.clone();
        let mut instances = opts.instances;
        settings.retain(|(k, v)| {
            if k == "locus.instances" {
                instances = v.parse().unwrap_or(instances);
                return false;
            }
            true
        });
        let exclusive = W::STATEFUL || instances == 1;
        let wasm = Wasm {
            pre,
            settings: settings.clone(),
            limits: opts.limits,
            exclusive,
            max_idle: if exclusive { 1 } else { instances.max(1) },
            idle: Mutex::new(Vec::new()),
            serial: Mutex::new(()),
            next_instance: AtomicU64::new(0),
        };

        // The smoke test runs on an instance of its own, so it leaves no trace in the
        // state of the instances that will serve.
        let mut probe = wasm.instantiate(None).map_err(|f| match f {
            Fault::Configure(m) => err(LoadStep::Configure, m),
            f => err(LoadStep::Configure, f.to_string()),
        })?;
        State::arm(&mut probe.store, &opts.limits);
        match W::smoke(&probe.bindings, &mut probe.store) {
            Ok(Ok(())) => {}
            Ok(Err(f)) => return Err(err(LoadStep::Smoke, f.to_string())),
            Err(e) => {
                return Err(err(
                    LoadStep::Smoke,
                    classify(e, &probe.store, &opts.limits).to_string(),
                ));
            }
        }
        drop(probe);

        let info = PolicyInfo {
            name,
            world: W::NAME.into(),
            sha256: hex::encode(sha256),
            version: W::version(&wasm.pre).into(),
            size: bytes.len(),
            loaded_at: SystemTime::now(),
            settings,
            faults: 0,
            code: Some(origin),
            load_us: started.elapsed().as_micros() as u64,
        };
        Ok(Self::new(info, Some(wasm)))
    }

    pub(super) fn info(&self) -> PolicyInfo {
        PolicyInfo { faults: self.faults.load(Ordering::Relaxed), ..self.info.clone() }
    }

    /// Whether the fault rules have given up on this version.
    pub(crate) fn given_up(&self) -> bool {
        self.given_up.load(Ordering::Acquire)
    }
}

/// Compile, link and type-check `bytes` against world `W`.
pub(crate) fn validate<W: World>(
    bytes: &[u8],
    sha256: [u8; 32],
) -> Result<(W::Pre, Origin), (LoadStep, String)> {
    const CORE_MODULE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err((LoadStep::Compile, "not a WebAssembly component (bad magic bytes)".into()));
    }
    if bytes[..8] == CORE_MODULE {
        return Err((
            LoadStep::Compile,
            "this is a core wasm module, not a component: build the policy with \
             `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
                .into(),
        ));
    }
    let rt = Runtime::get();
    let (component, origin) =
        rt.compile(sha256, bytes).map_err(|e| (LoadStep::Compile, format!("{e:#}")))?;
    let linker = rt.linker_for(&component).map_err(|e| (LoadStep::Link, format!("{e:#}")))?;
    let ip = linker.instantiate_pre(&component).map_err(|e| (LoadStep::Link, format!("{e:#}")))?;
    let pre = W::pre(ip).map_err(|e| {
        (
            LoadStep::Typecheck,
            format!("does not implement the locus:policy/{} world: {e:#}", W::NAME),
        )
    })?;
    Ok((pre, origin))
}
