//! Uniform random choice among healthy workers, the proof of concept's baseline.
//!
//! Settings: `seed` (u64) makes the sequence of choices reproducible; without it the
//! generator is seeded from WASI randomness. The host runs several instances of a router
//! side by side and tells each its number in `locus.instance`; it is mixed into the seed
//! so that parallel instances do not make the same choices in lockstep.

use std::cell::RefCell;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

wit_bindgen::generate!({ world: "router", path: "../../wit" });

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::seed_from_u64(0));
}

/// The `n`-th healthy worker's index, counting from 0.
fn nth_healthy(workers: &[Worker], n: usize) -> Option<u32> {
    workers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.healthy)
        .nth(n)
        .map(|(i, _)| i as u32)
}

struct Random;

impl Guest for Random {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        let mut seed: Option<u64> = None;
        let mut instance: u64 = 0;
        for (k, v) in settings {
            match k.as_str() {
                "seed" => {
                    seed = Some(
                        v.parse()
                            .map_err(|_| format!("seed must be an unsigned integer, got `{v}`"))?,
                    )
                }
                "locus.instance" => instance = v.parse().unwrap_or(0),
                k if k.starts_with("locus.") => {}
                _ => return Err(format!("unknown setting `{k}` (random knows: seed)")),
            }
        }
        let rng = match seed {
            // An odd multiplier keeps distinct instances on distinct streams.
            Some(s) => SmallRng::seed_from_u64(s ^ instance.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            None => SmallRng::from_os_rng(),
        };
        RNG.set(rng);
        Ok(())
    }

    fn route(_req: Request, workers: Vec<Worker>) -> Result<u32, String> {
        let healthy = workers.iter().filter(|w| w.healthy).count();
        if healthy == 0 {
            return Err("no healthy worker".into());
        }
        let n = RNG.with_borrow_mut(|r| r.random_range(0..healthy));
        nth_healthy(&workers, n).ok_or_else(|| "no healthy worker".into())
    }

    fn observe(_done: Completion) {}
}

export!(Random);
