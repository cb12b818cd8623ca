//! Power of two choices on the workers' load: pick two workers at random and send the
//! request to the less loaded one (Mitzenmacher, "The Power of Two Choices in Randomized
//! Load Balancing", 2001). Against sending every request to the least loaded worker, it
//! does not herd: routers (or pooled instances) that act on the same stale report do not
//! all pile onto one worker, and the maximum load still falls from log n / log log n to
//! log log n.
//!
//! A worker's load is what it reported (`waiting` + `running`, from every router) but never
//! less than this router's live `in-flight` count to it, which is fresh where the report may
//! be up to one poll interval old. A worker that has not reported yet is judged by its
//! in-flight count alone. Ties go to either at random.
//!
//! Settings: `choices` (default 2, at least 1: 1 is uniform random, the number of workers
//! makes it least-loaded), `seed` (u64, reproducible choices; default: WASI randomness).

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;

use locus_policy_kit::Seeding;
use rand::rngs::SmallRng;
use rand::seq::index;
use rand::{Rng, SeedableRng};

wit_bindgen::generate!({ world: "router", path: "../../wit/0.3.0" });

struct Config {
    choices: usize,
    rng: SmallRng,
}

thread_local! {
    static CONFIG: RefCell<Config> =
        RefCell::new(Config { choices: 2, rng: SmallRng::seed_from_u64(0) });
}

/// The load this policy compares: the worker's report, never below the live in-flight count.
pub fn load(w: &Workers, i: usize) -> u32 {
    let reported = if w.load_known[i] { w.waiting[i].saturating_add(w.running[i]) } else { 0 };
    reported.max(w.in_flight[i])
}

/// The least loaded of `choices` distinct workers drawn at random.
pub fn choose(w: &Workers, choices: usize, rng: &mut impl Rng) -> Option<u32> {
    let n = w.ids.len();
    if n == 0 {
        return None;
    }
    let drawn = index::sample(rng, n, choices.clamp(1, n));
    let mut best: Option<(u32, usize)> = None;
    let mut ties = 0u32;
    for i in drawn.iter() {
        let l = load(w, i);
        match best {
            Some((bl, _)) if l > bl => {}
            Some((bl, _)) if l == bl => {
                // Reservoir choice among equals: each tied worker is kept with equal odds.
                ties += 1;
                if rng.random_range(0..=ties) == 0 {
                    best = Some((l, i));
                }
            }
            _ => {
                best = Some((l, i));
                ties = 0;
            }
        }
    }
    best.map(|(_, i)| i as u32)
}

struct LeastLoaded;

impl Guest for LeastLoaded {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        let mut choices = 2usize;
        let mut seeding = Seeding::default();
        for (k, v) in settings {
            match k.as_str() {
                "choices" => {
                    choices = v
                        .parse()
                        .ok()
                        .filter(|c| *c >= 1)
                        .ok_or_else(|| format!("choices must be an integer >= 1, got `{v}`"))?
                }
                k if seeding.take(k, &v)? || k.starts_with("locus.") => {}
                _ => {
                    return Err(format!(
                        "unknown setting `{k}` (least-loaded knows: choices, seed)"
                    ));
                }
            }
        }
        CONFIG.set(Config { choices, rng: seeding.rng() });
        Ok(())
    }

    fn route(_req: Request, workers: Workers) -> Result<u32, String> {
        CONFIG
            .with_borrow_mut(|c| choose(&workers, c.choices, &mut c.rng))
            .ok_or_else(|| "no worker to choose from".to_string())
    }

    fn observe(_done: Completion) {}

    fn kv_events(_worker: u64, _cleared: bool, _removed: Vec<u64>, _stored: Vec<u64>) {}
}

export!(LeastLoaded);

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(in_flight: &[u32], reported: &[Option<(u32, u32)>]) -> Workers {
        let n = in_flight.len();
        Workers {
            ids: (0..n as u64).collect(),
            in_flight: in_flight.to_vec(),
            load_known: reported.iter().map(Option::is_some).collect(),
            load_age_ms: vec![0; n],
            waiting: reported.iter().map(|r| r.map_or(0, |r| r.0)).collect(),
            running: reported.iter().map(|r| r.map_or(0, |r| r.1)).collect(),
            kv_used_blocks: vec![0; n],
            kv_total_blocks: vec![0; n],
            tokens_per_second: vec![0.0; n],
        }
    }

    #[test]
    fn load_is_the_report_but_never_below_the_live_count() {
        let w = workers(&[3, 0, 5], &[Some((1, 4)), None, Some((0, 1))]);
        assert_eq!((load(&w, 0), load(&w, 1), load(&w, 2)), (5, 0, 5));
    }

    #[test]
    fn with_every_worker_drawn_it_is_least_loaded() {
        let mut rng = SmallRng::seed_from_u64(7);
        let w = workers(&[0, 0, 0, 0], &[Some((4, 4)), Some((0, 2)), Some((9, 0)), Some((1, 3))]);
        for _ in 0..100 {
            assert_eq!(choose(&w, 4, &mut rng), Some(1));
        }
        assert_eq!(choose(&workers(&[], &[]), 2, &mut rng), None);
    }

    #[test]
    fn two_choices_never_pick_the_most_loaded_and_spread_ties() {
        let mut rng = SmallRng::seed_from_u64(1);
        let w = workers(&[0, 0, 0, 9], &[None, None, None, None]);
        let mut counts = [0u32; 4];
        for _ in 0..30_000 {
            counts[choose(&w, 2, &mut rng).unwrap() as usize] += 1;
        }
        assert_eq!(counts[3], 0, "the loaded worker loses every pair it is in");
        // Each idle worker wins its pairs against the loaded one and half its ties.
        assert!(counts[..3].iter().all(|c| (9_000..11_000).contains(c)), "{counts:?}");
    }

    #[test]
    fn balls_into_bins_stay_within_a_few_of_the_mean() {
        // 10,000 requests that never finish, into 16 workers: two choices keep the
        // maximum close to the mean (625), where one random choice overshoots by ~100.
        let mut rng = SmallRng::seed_from_u64(3);
        let mut w = workers(&[0; 16], &[None; 16]);
        for _ in 0..10_000 {
            let i = choose(&w, 2, &mut rng).unwrap() as usize;
            w.in_flight[i] += 1;
        }
        let max = *w.in_flight.iter().max().unwrap();
        assert!(max <= 630, "max {max}");
    }
}
