//! A shadow: the candidate is handed every live decision on a thread of its own, through a
//! bounded queue the request path never waits on, and scored against the router's KV
//! record as the live choice is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use super::rules::{TrialMode, TrialRules};
use super::state::{BlockFill, Trial, TrialKind, Trials};
use crate::worlds::router::{decide, observe_in};
use crate::worlds::{Completion, KvFeed, Request, Workers};

/// Route calls queued for a shadow; past this the shadow skips (and counts) them rather
/// than hold a request up.
pub const SHADOW_QUEUE: usize = 4096;

/// Bytes of requests queued for a shadow (prompts, sessions, block hashes, worker lists);
/// past this the shadow skips them too, so a burst of large requests cannot make the
/// queue hold [`SHADOW_QUEUE`] of them at once.
pub const SHADOW_QUEUE_BYTES: usize = 32 << 20;

/// How long the shadow's thread naps when its queue is empty (at 20k requests/s, 20 calls
/// wait at most this long: far from [`SHADOW_QUEUE`]).
const SHADOW_NAP: Duration = Duration::from_millis(1);

/// Idle time after which the shadow's thread blocks instead of napping.
const SHADOW_IDLE: Duration = Duration::from_millis(100);

enum ShadowMsg {
    Route(Box<ShadowRoute>),
    Observe { done: Completion, answered: bool },
}

/// A live decision handed to the shadow.
struct ShadowRoute {
    req: Request,
    workers: Workers,
    /// The worker the live policy chose, and whether the fallback chose it.
    live: u64,
    live_fault: bool,
    /// The leading prompt blocks each offered worker held when the live policy decided
    /// (absent when the blocks are not known yet: `fill` makes them).
    held: Option<Vec<u32>>,
    fill: Option<BlockFill>,
    /// What it is charged in the queue's bytes.
    bytes: usize,
}

impl ShadowRoute {
    /// Bytes it holds, about: its request's and worker list's heap parts, and itself.
    fn size(&self) -> usize {
        let r = &self.req;
        let per_worker = 64; // a dozen per-worker fields of 4 or 8 bytes
        std::mem::size_of::<Self>()
            + r.prompt.len()
            + r.session.as_ref().map_or(0, String::len)
            + r.block_hashes.len() * 8
            + self.workers.ids.len() * per_worker
            + self.held.as_ref().map_or(0, |h| h.len() * 4)
    }
}

/// A shadow trial: its queue, and the thread's end of it until the thread starts.
pub(super) struct Shadow {
    queue: Arc<Queue>,
    rx: Mutex<Option<Receiver<ShadowMsg>>>,
}

/// What the request path and the shadow's thread share.
struct Queue {
    /// Emptied when the trial ends, which ends the thread.
    tx: ArcSwapOption<SyncSender<ShadowMsg>>,
    skipped: AtomicU64,
    /// Bytes of the routes queued (see [`SHADOW_QUEUE_BYTES`]).
    bytes: AtomicUsize,
    kv: Arc<KvFeed>,
}

impl Queue {
    /// Queues `r` for the shadow's thread, or skips it (counted) when the queue is full
    /// by count or by bytes; never waits.
    fn offer(&self, mut r: ShadowRoute) {
        let Some(tx) = self.tx.load_full() else { return };
        r.bytes = r.size();
        let bytes = r.bytes;
        let fits = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b + bytes <= SHADOW_QUEUE_BYTES).then_some(b + bytes)
            })
            .is_ok();
        if !fits {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Err(TrySendError::Full(_)) = tx.try_send(ShadowMsg::Route(Box::new(r))) {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Shadow {
    pub(super) fn new(kv: Arc<KvFeed>) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(SHADOW_QUEUE);
        let queue = Queue {
            tx: ArcSwapOption::from_pointee(tx),
            skipped: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            kv,
        };
        Self { queue: Arc::new(queue), rx: Mutex::new(Some(rx)) }
    }
}

impl TrialKind for Shadow {
    fn mode(&self) -> TrialMode {
        TrialMode::Shadow
    }

    fn start(&self, trials: &Arc<Trials>, t: &Arc<Trial>) {
        let Some(rx) = self.rx.lock().take() else { return };
        let (trials, t, queue) = (trials.clone(), t.clone(), self.queue.clone());
        std::thread::Builder::new()
            .name("locus-shadow".into())
            .spawn(move || shadow_loop(&trials, &t, &queue, &rx))
            .expect("a thread can be spawned");
    }

    fn takes(&self, _req: &Request) -> bool {
        false
    }

    fn blocks_on_path(&self) -> bool {
        // Read to decide and to be scored, but the shadow's thread can make them.
        false
    }

    /// Hands a live decision to the shadow; never waits. The blocks each worker holds are
    /// read now, when the live policy decided: by the time the shadow's thread runs, the
    /// chosen worker may have stored this very request's blocks.
    fn live_decided(
        &self,
        _t: &Trial,
        req: &Request,
        workers: &Workers,
        (live, live_fault): (u64, bool),
        fill: Option<BlockFill>,
    ) {
        if self.queue.tx.load().is_none() {
            return;
        }
        let held = (!req.block_hashes.is_empty())
            .then(|| self.queue.kv.leading_each(&workers.ids, &req.block_hashes));
        self.queue.offer(ShadowRoute {
            req: req.clone(),
            workers: workers.clone(),
            live,
            live_fault,
            held,
            fill,
            bytes: 0,
        });
    }

    fn observe(&self, _trials: &Trials, _t: &Arc<Trial>, done: &Completion, answered: bool) {
        if let Some(tx) = &*self.queue.tx.load() {
            let _ = tx.try_send(ShadowMsg::Observe { done: *done, answered });
        }
    }

    fn live_keep(&self, rules: &TrialRules) -> usize {
        rules.window
    }

    fn skipped(&self) -> u64 {
        self.queue.skipped.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        self.queue.tx.store(None);
    }
}

/// The shadow's thread. It drains its queue, then naps for [`SHADOW_NAP`] rather than
/// block: a blocked receiver makes every routed request pay a wake-up (a futex call and
/// a context switch), which cost a quarter of the router's throughput when measured.
/// Idle for longer than [`SHADOW_IDLE`], it blocks until the next call arrives.
fn shadow_loop(trials: &Trials, t: &Arc<Trial>, queue: &Queue, rx: &Receiver<ShadowMsg>) {
    lower_priority();
    let mut idle = Duration::ZERO;
    loop {
        let msg = match rx.try_recv() {
            Ok(msg) => msg,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) if idle < SHADOW_IDLE => {
                std::thread::sleep(SHADOW_NAP);
                idle += SHADOW_NAP;
                continue;
            }
            Err(TryRecvError::Empty) => match rx.recv() {
                Ok(msg) => msg,
                Err(_) => break,
            },
        };
        idle = Duration::ZERO;
        if queue.tx.load().is_none() {
            // Ended: what is still queued is of no use.
            break;
        }
        match msg {
            ShadowMsg::Route(route) => {
                queue.bytes.fetch_sub(route.bytes, Ordering::AcqRel);
                shadow_route(&queue.kv, t, *route);
            }
            ShadowMsg::Observe { done, answered } => {
                observe_in(&t.slot, &done, answered);
            }
        }
        trials.check_faults(t);
    }
}

fn shadow_route(kv: &KvFeed, t: &Trial, r: ShadowRoute) {
    let ShadowRoute { mut req, workers, live, live_fault, held, fill, .. } = r;
    if let Some(fill) = fill {
        fill(&mut req);
    }
    let ((index, _), fault) = decide(&t.slot, &req, &workers);
    let mine = workers.ids[index];
    let blocks = req.block_hashes.len();
    let held_by = |w: u64| match &held {
        Some(h) => workers.ids.iter().position(|&id| id == w).map_or(0, |i| h[i] as usize),
        // Tokenized here, after the live decision: read now.
        None => kv.leading(w, &req.block_hashes),
    };
    let (held_live, held_mine) = if blocks > 0 { (held_by(live), held_by(mine)) } else { (0, 0) };
    let mut d = t.decisions.lock();
    d.offered(&workers);
    d.compared += 1;
    d.agreed += u64::from(mine == live);
    d.live.decided(live, live_fault);
    d.candidate.decided(mine, fault.is_some());
    if blocks > 0 {
        d.live.score(blocks, held_live);
        d.candidate.score(blocks, held_mine);
    }
}

/// Makes the calling thread run only on CPU time the router's own threads leave
/// (SCHED_IDLE): a shadow is an observer, so on a saturated machine it skips calls
/// (counted as skipped) rather than take CPU from the requests it watches.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread (Linux schedules threads one by one).
    unsafe {
        // Zeroed: priority 0, the only one SCHED_IDLE takes (and musl's struct has more
        // fields than glibc's).
        let param: libc::sched_param = std::mem::zeroed();
        if libc::sched_setscheduler(libc::gettid(), libc::SCHED_IDLE, &param) != 0 {
            tracing::debug!("cannot lower the shadow thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worlds::workers;

    fn route(prompt_bytes: usize) -> ShadowRoute {
        ShadowRoute {
            req: Request::new(1, "p".repeat(prompt_bytes), 16),
            workers: workers([(1, 0), (2, 0)]),
            live: 1,
            live_fault: false,
            held: None,
            fill: None,
            bytes: 0,
        }
    }

    /// With the shadow's thread not running, large requests fill the queue's bytes long
    /// before its count: the rest are skipped, and the queue holds at most its budget.
    #[test]
    fn a_shadows_queue_is_bounded_in_bytes() {
        let s = Shadow::new(Arc::new(KvFeed::default()));
        let big = 1 << 20;
        for _ in 0..100 {
            s.queue.offer(route(big));
        }
        let queued = s.queue.bytes.load(Ordering::Acquire);
        assert!(queued <= SHADOW_QUEUE_BYTES, "{queued}");
        let kept = 100 - s.queue.skipped.load(Ordering::Relaxed) as usize;
        assert_eq!(kept, SHADOW_QUEUE_BYTES / route(big).size());
        // Small ones still fit by count until the budget's rest is used.
        s.queue.offer(route(10));
        assert_eq!(s.queue.skipped.load(Ordering::Relaxed) as usize, 100 - kept);
    }
}
