//! Offered rates and their pacing: the sweep's steps, and when each request of an
//! open-loop pass is sent.

use std::time::Duration;

/// The lowest offered rate, requests/s (one request every ~17 minutes).
pub const MIN_RATE: f64 = 0.001;

/// The spacing of open-loop arrivals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Arrivals {
    /// Exponential gaps (a Poisson process), seeded: how independent users arrive.
    #[default]
    Poisson,
    /// Evenly spaced, `1 / rate` apart.
    Even,
}

/// Send times of `n` requests at `rate` per second from the start of a pass.
pub fn arrival_times(n: usize, rate: f64, arrivals: Arrivals, seed: u64) -> Vec<Duration> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xA5A5_5A5A_0F0F_F0F0);
    let mut t = 0.0f64;
    (0..n)
        .map(|i| match arrivals {
            Arrivals::Even => Duration::from_secs_f64(i as f64 / rate),
            Arrivals::Poisson => {
                let at = Duration::from_secs_f64(t);
                // 1 - U is in (0, 1], so the logarithm is finite.
                t += -(1.0 - rng.random::<f64>()).ln() / rate;
                at
            }
        })
        .collect()
}

/// The rate of each sweep step: the given rates, or one closed-loop step (`None`).
pub(super) fn pass_rates(rates: &[f64]) -> Vec<Option<f64>> {
    if rates.is_empty() { vec![None] } else { rates.iter().copied().map(Some).collect() }
}
