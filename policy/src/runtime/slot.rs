//! A policy slot: the version now serving, the versions before it, and the machinery that
//! loads, validates, swaps, contains faults and rolls back. Generic over the world, so
//! the router and cache policies share all of it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use sha2::{Digest, Sha256};
use wasmtime::component::InstancePre;
use wasmtime::{Store, Trap};

use super::Fault;
use super::LoadOptions;
use super::audit::{Actor, AuditEvent, AuditLog};
use super::compiled_cache::Origin;
use super::sandbox::{Limits, Runtime, State};
use crate::info::PolicyInfo;
use crate::load::{LoadError, LoadStep, PolicySource};

/// What the slot needs to know about a world: how to type-check, instantiate, configure
/// and smoke-test a component that claims to implement it.
pub(crate) trait World: Send + Sync + Sized + 'static {
    /// The world's name in `wit/`.
    const NAME: &'static str;
    /// Whether every instance must be the same one (the policy keeps state).
    const STATEFUL: bool;
    /// bindgen's pre-instantiated, type-checked component.
    type Pre: Send + Sync + 'static;
    /// bindgen's handle to an instance's exports.
    type Bindings: Send + 'static;

    fn pre(ip: InstancePre<State>) -> wasmtime::Result<Self::Pre>;
    fn instantiate(pre: &Self::Pre, store: &mut Store<State>) -> wasmtime::Result<Self::Bindings>;
    fn configure(
        b: &Self::Bindings,
        store: &mut Store<State>,
        settings: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>>;
    /// Calls every export on synthetic input.
    fn smoke(b: &Self::Bindings, store: &mut Store<State>) -> wasmtime::Result<Result<(), Fault>>;
    /// The version of the contract the component implements (`0.2.0`).
    fn version(pre: &Self::Pre) -> &'static str;
}

/// What the host tells every serving instance beside the calls it answers: the cache's
/// resident entries, the router's KV events. Instances are pooled, so each keeps a cursor
/// into the feed and is brought up to date right before its next call. Each call into the
/// guest gets its own deadline (`State::arm` with `limits`), as any other call does.
pub(crate) trait Feed<W: World>: Send + Sync {
    /// Tells a fresh instance the whole current state; returns its cursor.
    fn replay(
        &self,
        b: &W::Bindings,
        store: &mut Store<State>,
        limits: &Limits,
    ) -> wasmtime::Result<u64>;
    /// Tells an instance at `cursor` what happened since; returns its new cursor.
    fn catch_up(
        &self,
        b: &W::Bindings,
        store: &mut Store<State>,
        limits: &Limits,
        cursor: u64,
    ) -> wasmtime::Result<u64>;
}

/// When repeated faults make the slot give up on a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPolicy {
    /// Faults within `window` that trigger a rollback.
    pub max_faults: u32,
    /// The sliding window faults are counted in.
    pub window: Duration,
}

impl Default for FaultPolicy {
    fn default() -> Self {
        Self { max_faults: 5, window: Duration::from_secs(60) }
    }
}

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
    fn call<R>(
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
    faults: AtomicU64,
    recent: Mutex<VecDeque<Instant>>,
    given_up: AtomicBool,
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

    fn info(&self) -> PolicyInfo {
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

/// The version now serving, with history for rollback.
pub(crate) struct Slot<W: World> {
    current: ArcSwap<Version<W>>,
    history: Mutex<Vec<Arc<Version<W>>>>,
    swapping: Mutex<()>,
    faults: FaultPolicy,
    feed: ArcSwapOption<Box<dyn Feed<W>>>,
    total_faults: AtomicU64,
    rollbacks: AtomicU64,
    /// Where rollbacks made by the fault rules are recorded.
    audit: OnceLock<Arc<AuditLog>>,
}

/// Versions kept for rollback.
const HISTORY: usize = 8;

impl<W: World> Slot<W> {
    pub(crate) fn new(first: Version<W>, faults: FaultPolicy) -> Self {
        Self {
            current: ArcSwap::from_pointee(first),
            history: Mutex::new(Vec::new()),
            swapping: Mutex::new(()),
            faults,
            feed: ArcSwapOption::empty(),
            total_faults: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            audit: OnceLock::new(),
        }
    }

    /// Records the rollbacks the fault rules make in `audit`.
    pub(crate) fn set_audit(&self, audit: Arc<AuditLog>) {
        let _ = self.audit.set(audit);
    }

    /// The version serving now.
    pub(crate) fn current(&self) -> Arc<Version<W>> {
        self.current.load_full()
    }

    pub(crate) fn set_feed(&self, feed: Box<dyn Feed<W>>) {
        self.feed.store(Some(Arc::new(feed)));
    }

    /// Makes `next` serve. Calls that start after this returns use it.
    pub(crate) fn swap(&self, next: Version<W>) -> PolicyInfo {
        self.swap_arc(Arc::new(next))
    }

    /// [`Slot::swap`] for a version that served elsewhere (a promoted candidate).
    pub(crate) fn swap_arc(&self, next: Arc<Version<W>>) -> PolicyInfo {
        let _g = self.swapping.lock();
        let info = next.info();
        let old = self.current.swap(next);
        let mut history = self.history.lock();
        history.push(old);
        if history.len() > HISTORY {
            history.remove(0);
        }
        tracing::info!(world = W::NAME, policy = %info.name, sha256 = %info.sha256, "policy swapped in");
        info
    }

    /// Goes back to the previous version, or to the native fallback if there is none.
    pub(crate) fn rollback(&self) -> PolicyInfo {
        let _g = self.swapping.lock();
        self.rollback_locked()
    }

    fn rollback_locked(&self) -> PolicyInfo {
        let prev = self.history.lock().pop().unwrap_or_else(|| Arc::new(Version::native()));
        let info = prev.info();
        let from = self.current.swap(prev);
        self.rollbacks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(world = W::NAME, from = %from.info.name, to = %info.name, "policy rolled back");
        info
    }

    pub(crate) fn info(&self) -> PolicyInfo {
        self.current.load().info()
    }

    /// Whether the serving version implements contract version `v` (no copy of its info).
    pub(crate) fn serves_version(&self, v: &str) -> bool {
        self.current.load().info.version == v
    }

    pub(crate) fn total_faults(&self) -> u64 {
        self.total_faults.load(Ordering::Relaxed)
    }

    pub(crate) fn rollbacks(&self) -> u64 {
        self.rollbacks.load(Ordering::Relaxed)
    }

    /// Runs `f` on the serving version's policy; `fallback` decides natively when there
    /// is no wasm policy or when the call faults. Returns the fault, if any.
    pub(crate) fn call<R>(
        &self,
        f: impl FnOnce(&W::Bindings, &mut Store<State>) -> wasmtime::Result<Result<R, Fault>>,
        fallback: impl FnOnce() -> R,
    ) -> (R, Option<Fault>) {
        let version = self.current.load();
        let Some(wasm) = &version.wasm else {
            return (fallback(), None);
        };
        let feed = self.feed.load();
        match wasm.call(feed.as_deref().map(|b| &**b), f) {
            Ok(r) => (r, None),
            Err(fault) => {
                let version = arc_swap::Guard::into_inner(version);
                self.record_fault(&version, &fault);
                (fallback(), Some(fault))
            }
        }
    }

    fn record_fault(&self, version: &Arc<Version<W>>, fault: &Fault) {
        self.total_faults.fetch_add(1, Ordering::Relaxed);
        let n = version.faults.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(world = W::NAME, policy = %version.info.name, faults = n, %fault, "policy fault; native fallback served");
        let now = Instant::now();
        let over = {
            let mut recent = version.recent.lock();
            recent.push_back(now);
            while recent.front().is_some_and(|t| now.duration_since(*t) > self.faults.window) {
                recent.pop_front();
            }
            recent.len() >= self.faults.max_faults as usize
        };
        if over && !version.given_up.swap(true, Ordering::AcqRel) {
            let _g = self.swapping.lock();
            // Only if it still serves: a swap may have replaced it meanwhile.
            if Arc::ptr_eq(&self.current.load(), version) {
                tracing::warn!(
                    world = W::NAME,
                    policy = %version.info.name,
                    "{} faults within {:?}: rolling back",
                    self.faults.max_faults,
                    self.faults.window
                );
                let to = self.rollback_locked();
                if let Some(audit) = self.audit.get() {
                    let by = Actor::locus(format!(
                        "fault rules: {} faults within {:?} (last: {fault})",
                        self.faults.max_faults, self.faults.window
                    ));
                    audit.change(
                        AuditEvent::Rollback,
                        W::NAME,
                        &to,
                        Some(&version.info.sha256),
                        &by,
                    );
                }
            }
        }
    }
}
