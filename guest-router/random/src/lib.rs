//! Uniform random choice among the (healthy) workers, the proof of concept's baseline.
//!
//! Settings: `seed` (u64) makes the sequence of choices reproducible; without it the
//! generator is seeded from WASI randomness. The host runs several instances of a router
//! side by side and tells each its number in `locus.instance`; it is mixed into the seed
//! so that parallel instances do not make the same choices in lockstep.

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;

use locus_policy_kit::Seeding;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

wit_bindgen::generate!({ world: "router", path: "../../wit/0.1.0" });

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::seed_from_u64(0));
}

struct Random;

impl Guest for Random {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        let mut seeding = Seeding::default();
        for (k, v) in settings {
            if !seeding.take(&k, &v)? && !k.starts_with("locus.") {
                return Err(format!("unknown setting `{k}` (random knows: seed)"));
            }
        }
        RNG.set(seeding.rng());
        Ok(())
    }

    fn route(_req: Request, workers: Workers) -> Result<u32, String> {
        if workers.ids.is_empty() {
            return Err("no worker to choose from".into());
        }
        Ok(RNG.with_borrow_mut(|r| r.random_range(0..workers.ids.len())) as u32)
    }

    fn observe(_done: Completion) {}
}

export!(Random);
