//! How late this process's async runtime wakes a task whose timer is due. A stalled runtime
//! (a blocking call on an async thread, or a machine too busy to run it) delays every answer,
//! stream event and signal it carries, and it shows here as it happens, which end-to-end
//! timings alone cannot tell apart from queueing.

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

/// Measures the current runtime's lag into `into` while `alive` says so.
pub fn spawn_lag_probe(into: Histogram, alive: impl Fn() -> bool + Send + 'static) {
    tokio::spawn(async move {
        while alive() {
            let asked = Instant::now();
            tokio::time::sleep(PERIOD).await;
            into.observe(asked.elapsed().saturating_sub(PERIOD).as_secs_f64());
        }
    });
}
