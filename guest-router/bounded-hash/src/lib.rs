//! Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018; the
//! scheme Vimeo and Google Cloud's load balancers use): each prompt prefix has a rendezvous
//! order over the workers, and the request goes to the first worker in that order whose
//! load is below the capacity `ceil(c × (total + 1) / n)`, where `total` is the router's live
//! in-flight count over all workers. A prefix stays on its worker, and so keeps its cached
//! KV blocks there, until that worker holds more than `c` times its fair share; only then
//! does it spill, always to the same next worker, so the spilled requests share their
//! cache too. No worker ever holds more than `c` times the mean (+1).
//!
//! The key is the first block hash of the prompt when the router gives block hashes (the
//! first 16 tokens), else its first `prefix-chars` characters.
//!
//! Settings: `c` (default 1.25, at least 1: the balance/affinity trade), `prefix-chars`
//! (default 20), `key` (`block` (default) or `chars`: hash the characters even when block
//! hashes are there).

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::Cell;

use locus_policy_kit::mix;

wit_bindgen::generate!({ world: "router", path: "../../wit/0.3.0" });

/// Settings.
#[derive(Clone, Copy)]
pub struct Config {
    /// Capacity factor.
    pub c: f64,
    /// Characters hashed when there is no block hash (or `key=chars`).
    pub prefix_chars: usize,
    /// Hash the first block rather than characters when the request has blocks.
    pub by_block: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { c: 1.25, prefix_chars: 20, by_block: true }
    }
}

thread_local! {
    static CONFIG: Cell<Config> = Cell::new(Config::default());
}

/// The 64-bit key of a request.
pub fn key(req: &Request, cfg: &Config) -> u64 {
    if cfg.by_block
        && let Some(first) = req.block_hashes.first()
    {
        return mix(*first);
    }
    let end = req.prompt.char_indices().nth(cfg.prefix_chars).map_or(req.prompt.len(), |(i, _)| i);
    req.prompt.as_bytes()[..end].chunks(8).fold(0u64, |h, c| {
        let mut word = [0u8; 8];
        word[..c.len()].copy_from_slice(c);
        mix(h ^ u64::from_le_bytes(word))
    })
}

/// The index of the first worker in `key`'s rendezvous order whose in-flight count is
/// below the capacity.
pub fn choose(key: u64, w: &Workers, c: f64) -> Option<u32> {
    let n = w.ids.len();
    if n == 0 {
        return None;
    }
    let total: u64 = w.in_flight.iter().map(|&x| u64::from(x)).sum::<u64>() + 1;
    let capacity = (c * total as f64 / n as f64).ceil() as u64;
    let mut order: Vec<(u64, usize)> =
        w.ids.iter().enumerate().map(|(i, id)| (mix(key ^ mix(*id)), i)).collect();
    // Highest weight first; equal weights (never in practice) by index.
    order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    // Some worker is always under capacity: n × capacity ≥ c × total > total - 1.
    order
        .iter()
        .find(|(_, i)| u64::from(w.in_flight[*i]) < capacity)
        .or(order.first())
        .map(|(_, i)| *i as u32)
}

struct BoundedHash;

impl Guest for BoundedHash {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        let mut cfg = Config::default();
        for (k, v) in settings {
            match k.as_str() {
                "c" => {
                    cfg.c = v
                        .parse()
                        .ok()
                        .filter(|c: &f64| c.is_finite() && *c >= 1.0)
                        .ok_or_else(|| format!("c must be a number >= 1, got `{v}`"))?
                }
                "prefix-chars" => {
                    cfg.prefix_chars =
                        v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                            format!("prefix-chars must be an integer >= 1, got `{v}`")
                        })?
                }
                "key" => {
                    cfg.by_block = match v.as_str() {
                        "block" => true,
                        "chars" => false,
                        _ => return Err(format!("key must be `block` or `chars`, got `{v}`")),
                    }
                }
                k if k.starts_with("locus.") => {}
                _ => {
                    return Err(format!(
                        "unknown setting `{k}` (bounded-hash knows: c, prefix-chars, key)"
                    ));
                }
            }
        }
        CONFIG.set(cfg);
        Ok(())
    }

    fn route(req: Request, workers: Workers) -> Result<u32, String> {
        let cfg = CONFIG.get();
        choose(key(&req, &cfg), &workers, cfg.c)
            .ok_or_else(|| "no worker to choose from".to_string())
    }

    fn observe(_done: Completion) {}

    fn kv_events(_worker: u64, _cleared: bool, _removed: Vec<u64>, _stored: Vec<u64>) {}
}

export!(BoundedHash);

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(in_flight: &[u32]) -> Workers {
        let n = in_flight.len();
        Workers {
            ids: (0..n as u64).map(|i| 1000 + i * 7919).collect(),
            in_flight: in_flight.to_vec(),
            load_known: vec![false; n],
            load_age_ms: vec![0; n],
            waiting: vec![0; n],
            running: vec![0; n],
            kv_used_blocks: vec![0; n],
            kv_total_blocks: vec![0; n],
            tokens_per_second: vec![0.0; n],
        }
    }

    fn req(prompt: &str, blocks: &[u64]) -> Request {
        Request {
            id: 0,
            prompt: prompt.into(),
            max_new_tokens: 1,
            block_hashes: blocks.to_vec(),
            prompt_tokens: None,
            session: None,
        }
    }

    #[test]
    fn the_key_is_the_first_block_else_the_leading_characters() {
        let cfg = Config::default();
        assert_eq!(key(&req("a", &[5, 6]), &cfg), key(&req("b", &[5, 7]), &cfg));
        assert_ne!(key(&req("a", &[5]), &cfg), key(&req("a", &[6]), &cfg));
        let long = "system prompt number 1, then the question";
        assert_eq!(key(&req(long, &[]), &cfg), key(&req(&long[..20], &[]), &cfg));
        let chars = Config { by_block: false, ..cfg };
        assert_eq!(key(&req(long, &[1]), &chars), key(&req(long, &[2]), &chars));
    }

    #[test]
    fn idle_workers_behave_as_rendezvous_hashing() {
        let w = workers(&[0; 5]);
        let mut counts = [0u32; 5];
        for k in 0..5000u64 {
            let i = choose(mix(k), &w, 1.25).unwrap();
            assert_eq!(choose(mix(k), &w, 1.25), Some(i), "stable");
            counts[i as usize] += 1;
        }
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
    }

    #[test]
    fn a_hot_key_spills_to_its_next_worker_and_loads_stay_bounded() {
        // One key gets every request and none completes: its home fills to capacity, then
        // its next worker, and so on; no worker exceeds ceil(c * mean).
        let mut w = workers(&[0; 4]);
        let home = choose(42, &w, 1.25).unwrap() as usize;
        for total in 0..400u32 {
            let i = choose(42, &w, 1.25).unwrap() as usize;
            w.in_flight[i] += 1;
            let cap = (1.25 * f64::from(total + 1) / 4.0).ceil() as u32;
            assert!(w.in_flight.iter().all(|&l| l <= cap), "{:?} cap {cap}", w.in_flight);
        }
        assert_eq!(*w.in_flight.iter().max().unwrap(), w.in_flight[home]);
        let max = *w.in_flight.iter().max().unwrap() as f64;
        assert!(max / 100.0 <= 1.26, "max/mean {}", max / 100.0);
        // While one worker is over capacity, keys whose home is another worker stay home.
        let idle = workers(&[0; 4]);
        let mut hot = workers(&[0; 4]);
        hot.in_flight[home] = 10;
        for k in (0..200u64).map(mix) {
            let own = choose(k, &idle, 1.25).unwrap() as usize;
            let now = choose(k, &hot, 1.25).unwrap() as usize;
            if own == home {
                assert_ne!(now, home, "spilled");
            } else {
                assert_eq!(now, own, "stayed home");
            }
        }
    }
}
