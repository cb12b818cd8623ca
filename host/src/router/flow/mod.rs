//! Flow control: who is asking, and who goes first when the workers are full.
//!
//! Requests are identified (`identity`: an API key naming a tenant and its highest
//! priority, or the operator's tenant and priority headers), then wait in the router's
//! queue (`queue`) until a worker has room: each worker takes at most its dispatch limit
//! (what its `/load` says it can batch, unless `--dispatch-limit` says otherwise), so that
//! its own queue stays short and the order is decided here, by the admission policy (a
//! component of the `admission` world: `fifo`, `fair`, `priority`, or the operator's own).
//! The host owns the caps, the time-to-live, the hang-ups and the HTTP answers; the policy
//! only orders and refuses. Fairness holds per router: each router orders its own queue.
//!
//! Files: `options` (the flags), `identity` (keys and headers), `metrics` (counts per
//! tenant and band), `queue` (the waiting requests, the dispatcher and the refusals);
//! `queue` uses the other three, `identity` uses `options`.

mod identity;
mod metrics;
mod options;
mod queue;

pub use identity::{ApiKeys, Identity, KeysError, MAX_TENANT_BYTES};
pub use metrics::{FlowCounters, LABELLED_TENANTS};
pub(super) use options::lower_case;
pub use options::{DEFAULT_PRIORITY_HEADER, DEFAULT_TENANT_HEADER, FlowOptions};
pub use queue::{Queue, Slots, Ticket, Waiting};
