//! The process-wide wasmtime engine and the sandbox every policy call runs in.
//!
//! - CPU: epoch interruption. A ticker thread advances the engine's epoch every
//!   [`TICK`]; each call gets a deadline of a few ticks. Cheaper than fuel, which
//!   instruments every basic block. Epochs measure wall time, and on a busy machine a
//!   thread can be descheduled for longer than the deadline without running any guest
//!   code, so when the deadline passes the call is not killed at once: it gets one more
//!   window, and traps only if it spent at least half of that window on the CPU
//!   (thread CPU time, read only when a deadline passes, never on the fast path).
//! - Memory: [`StoreLimits`] caps linear memory and traps on a failed grow.
//! - Capabilities: only WASI clocks, random, and an empty environment are linked.
//!   Every other import (files, sockets, stdio streams) is stubbed with a trap.
//!   Besides closing those doors, this keeps wasmtime-wasi's blocking stream
//!   implementations, which enter a Tokio runtime, off the router's async threads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use parking_lot::Mutex;

use super::compiled_cache::{CompiledCache, Origin};

/// Epoch tick period: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(1);

/// Resource bounds for each call into a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one call (rounded up to whole ticks).
    pub deadline: Duration,
    /// Cap on the guest's linear memory, in bytes.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { deadline: Duration::from_millis(10), memory_bytes: 64 << 20 }
    }
}

impl Limits {
    pub(crate) fn deadline_ticks(&self) -> u64 {
        self.deadline.as_nanos().div_ceil(TICK.as_nanos()).max(1) as u64
    }
}

/// Core instances a policy may create: its module and the few shims that
/// `wasm-component-ld` adds.
const INSTANCES: usize = 16;
/// Tables a policy may define, across its instances.
const TABLES: usize = 16;
/// Elements in any one table (a Rust guest's function table holds a few hundred).
const TABLE_ELEMENTS: usize = 100_000;

/// Per-store host state.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limiter,
    deadline: Deadline,
}

/// Bookkeeping of the CPU check made when a call's wall-clock deadline passes.
#[derive(Default)]
struct Deadline {
    ticks: u64,
    /// Thread CPU time when the current check window opened.
    mark: Option<Duration>,
    windows: u32,
}

/// Check windows a starved call may get before it is stopped anyway: this bounds the
/// wall time of one call at about `deadline * MAX_WINDOWS`.
const MAX_WINDOWS: u32 = 50;

impl Deadline {
    fn on_deadline(&mut self) -> UpdateDeadline {
        let now = thread_cpu_time();
        let Some(mark) = self.mark.replace(now) else {
            return UpdateDeadline::Continue(self.ticks);
        };
        self.windows += 1;
        let used = now.saturating_sub(mark);
        let window = TICK * self.ticks as u32;
        if used * 2 >= window || self.windows >= MAX_WINDOWS {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Continue(self.ticks)
        }
    }
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        // No per-thread clock: report "all of the window used", i.e. plain wall time.
        return Duration::MAX / 2;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl State {
    /// Starts a call: arms the deadline and forgets the previous call's CPU check.
    pub(crate) fn arm(store: &mut Store<State>, limits: &Limits) {
        let ticks = limits.deadline_ticks();
        let d = &mut store.data_mut().deadline;
        if d.mark.is_some() || d.windows != 0 {
            *d = Deadline { ticks, ..Deadline::default() };
        }
        d.ticks = ticks;
        store.set_epoch_deadline(ticks);
    }

    /// True once the guest tried to grow memory past its cap.
    pub fn memory_denied(&self) -> bool {
        self.limits.denied
    }
}

/// [`StoreLimits`] that remembers a denial, so a trap can be reported as what it is.
struct Limiter {
    inner: StoreLimits,
    denied: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.inner.memory_growing(current, desired, maximum);
        if !matches!(r, Ok(true)) {
            self.denied = true;
        }
        r
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    // The counts below must be forwarded: the trait's defaults (10,000 each) would apply
    // instead of the caps set in `Runtime::store`.
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// The engine, its epoch ticker, a base linker, a small cache of compiled components and,
/// where set up, their cache on disk.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    compiled: Mutex<HashMap<[u8; 32], Component>>,
    disk: Option<CompiledCache>,
}

/// The directory of compiled policies, fixed before the runtime starts.
static DISK_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Keeps compiled policies in `dir` (see [`CompiledCache`]), or nowhere with `None` (the
/// default). Must come before the first policy is loaded; false (and logged) if that was
/// too late.
pub fn use_compiled_cache(dir: Option<PathBuf>) -> bool {
    let set = DISK_DIR.set(dir).is_ok();
    if !set {
        tracing::warn!(
            "the compiled-policy cache was chosen after the first policy loaded; unchanged"
        );
    }
    set
}

/// Compiled components kept by content hash, so that swapping back and forth between
/// two policies compiles each once. Bounded: cleared when full.
const COMPILED_CACHE_ENTRIES: usize = 32;

impl Runtime {
    /// The process-wide runtime, started on first use.
    pub fn get() -> &'static Runtime {
        static RUNTIME: OnceLock<Runtime> = OnceLock::new();
        RUNTIME.get_or_init(|| Runtime::new().expect("wasmtime engine configuration is valid"))
    }

    fn new() -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&config)?;

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("locus-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .expect("spawn epoch ticker");

        let mut linker = Linker::new(&engine);
        link_capability_free_wasi(&mut linker)?;
        let dir = DISK_DIR.get_or_init(|| None);
        let disk = dir.as_ref().and_then(|d| match CompiledCache::open(d, &engine) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "compiled-policy cache off");
                None
            }
        });
        Ok(Self { engine, linker, compiled: Mutex::new(HashMap::new()), disk })
    }

    /// The engine every policy is compiled with.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles `bytes`, or returns the compilation of identical bytes this process made
    /// before or the disk cache holds. Says which.
    pub fn compile(&self, sha256: [u8; 32], bytes: &[u8]) -> wasmtime::Result<(Component, Origin)> {
        if let Some(c) = self.compiled.lock().get(&sha256) {
            return Ok((c.clone(), Origin::Memory));
        }
        let (c, origin) = match &self.disk {
            Some(disk) => disk.load_or_compile(&self.engine, sha256, bytes)?,
            None => (Component::new(&self.engine, bytes)?, Origin::Compiled),
        };
        let mut cache = self.compiled.lock();
        if cache.len() >= COMPILED_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(sha256, c.clone());
        Ok((c, origin))
    }

    /// A linker for `component`: the capability-free WASI, and a trapping stub for every
    /// other import.
    pub fn linker_for(&self, component: &Component) -> wasmtime::Result<Linker<State>> {
        let mut linker = self.linker.clone();
        linker.define_unknown_imports_as_traps(component)?;
        Ok(linker)
    }

    /// A fresh store with `limits` applied.
    pub fn store(&self, limits: &Limits) -> Store<State> {
        let inner = StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .table_elements(TABLE_ELEMENTS)
            .instances(INSTANCES)
            .tables(TABLES)
            .memories(1)
            .trap_on_grow_failure(true)
            .build();
        let state = State {
            wasi: WasiCtx::builder().allow_tcp(false).allow_udp(false).build(),
            table: ResourceTable::new(),
            limits: Limiter { inner, denied: false },
            deadline: Deadline::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut cx| Ok(cx.data_mut().deadline.on_deadline()));
        State::arm(&mut store, limits);
        store
    }
}

fn link_capability_free_wasi(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, random};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

    clocks::wall_clock::add_to_linker::<State, WasiClocks>(linker, State::clocks)?;
    clocks::monotonic_clock::add_to_linker::<State, WasiClocks>(linker, State::clocks)?;
    random::random::add_to_linker::<State, WasiRandom>(linker, State::random)?;
    random::insecure::add_to_linker::<State, WasiRandom>(linker, State::random)?;
    random::insecure_seed::add_to_linker::<State, WasiRandom>(linker, State::random)?;
    cli::environment::add_to_linker::<State, WasiCli>(linker, State::cli)?;
    cli::exit::add_to_linker::<State, WasiCli>(linker, State::cli)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The caps set on a store are the ones wasmtime asks the limiter for (its trait's
    /// defaults are 10,000 memories, tables and instances).
    #[test]
    fn a_store_allows_one_memory_and_bounded_tables() {
        let store = Runtime::get().store(&Limits::default());
        let limits = &store.data().limits;
        assert_eq!(limits.memories(), 1);
        assert_eq!(limits.tables(), TABLES);
        assert_eq!(limits.instances(), INSTANCES);
    }

    #[test]
    fn a_table_cannot_grow_past_its_element_cap() {
        let mut store = Runtime::get().store(&Limits::default());
        let limits = &mut store.data_mut().limits;
        assert!(matches!(limits.table_growing(0, TABLE_ELEMENTS, None), Ok(true)));
        // trap_on_grow_failure turns a refusal into an error.
        assert!(!matches!(limits.table_growing(0, TABLE_ELEMENTS + 1, None), Ok(true)));
        assert!(!matches!(limits.memory_growing(0, (64 << 20) + 65536, None), Ok(true)));
        assert!(limits.denied);
    }
}
