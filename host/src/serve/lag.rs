//! How late this process's async runtime wakes a task whose timer is due. A stalled runtime
//! (a blocking call on an async thread, or a machine too busy to run it) delays every answer,
//! stream event and signal it carries, and it shows here as it happens, which end-to-end
//! timings alone cannot tell apart from queueing.

use std::sync::Weak;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts};

/// How often the probe asks to wake.
const PERIOD: Duration = Duration::from_millis(20);

/// The histogram `name` of how late the runtime woke the probe, in seconds.
pub fn lag_histogram(name: &str) -> Histogram {
    let help = "How late the async runtime woke a task whose timer was due (every 20 ms)";
    Histogram::with_opts(
        HistogramOpts::new(name, help)
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
    )
    .expect("a valid histogram")
}

/// Measures the current runtime's lag into `into` for as long as `owner` (the server the
/// histogram belongs to) lives.
pub fn spawn_lag_probe<T: Send + Sync + 'static>(into: Histogram, owner: Weak<T>) {
    tokio::spawn(async move {
        while owner.strong_count() > 0 {
            let asked = Instant::now();
            tokio::time::sleep(PERIOD).await;
            into.observe(asked.elapsed().saturating_sub(PERIOD).as_secs_f64());
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_runtime_shows_as_lag() {
        let h = lag_histogram("test_lag_seconds");
        let owner = Arc::new(());
        spawn_lag_probe(h.clone(), Arc::downgrade(&owner));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A blocking call on the runtime's only thread: the probe's timer fires late.
        std::thread::sleep(Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(owner);
        let (n, sum) = (h.get_sample_count(), h.get_sample_sum());
        assert!(n >= 2, "{n} samples");
        // Everything but the blocked wait is a few milliseconds late at most.
        assert!(sum >= 0.25, "lag {sum} s over {n} samples");
    }
}
