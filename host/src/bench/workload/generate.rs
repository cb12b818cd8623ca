//! The request sequence each workload kind makes from a seed, and its warm-up.

use rand::Rng;
use rand::seq::SliceRandom;

use super::kinds::{BenchRequest, Workload};
use super::trace::read_trace;
use super::words::{rng_for, text};

impl Workload {
    /// The request sequence for `seed`.
    pub fn generate(&self, seed: u64) -> Result<Vec<BenchRequest>, String> {
        self.generate_drawn(seed, seed)
    }

    /// The requests of a warm-up pass before the sequence of `seed`: for shared prefixes
    /// and tenants, the same system prompts with other questions and popularity draws (so
    /// the measured pass finds the prefixes, not its own answers, cached); for the other
    /// workloads the sequence itself (the seed table's "warm" is a repeat).
    pub fn warm_up(&self, seed: u64) -> Result<Vec<BenchRequest>, String> {
        self.generate_drawn(seed, seed ^ 0x5741_524D_5550_0000)
    }

    /// The sequence whose shared prefixes come from `seed` and, for shared prefixes, whose
    /// draws (order, popularity, questions) come from `draws`.
    fn generate_drawn(&self, seed: u64, draws: u64) -> Result<Vec<BenchRequest>, String> {
        Ok(match self {
            Self::Seed => {
                let phrases = ["What is the capital of France?", "Explain cache-aware routing."];
                (0..6)
                    .map(|i| BenchRequest {
                        at_ms: None,
                        prompt: phrases[i % 2].to_string(),
                        max_tokens: 16,
                        group: i % 2,
                        session: None,
                    })
                    .collect()
            }
            Self::SharedPrefix { groups, per_group, system, question, output, zipf } => {
                let systems: Vec<String> =
                    (0..*groups).map(|g| text(&mut rng_for(seed, g as u64), *system)).collect();
                let mut rng = rng_for(draws, u64::MAX);
                let mut picks: Vec<usize> = match zipf {
                    None => (0..*groups).flat_map(|g| std::iter::repeat_n(g, *per_group)).collect(),
                    Some(alpha) => {
                        let weights: Vec<f64> =
                            (1..=*groups).map(|r| (r as f64).powf(-alpha)).collect();
                        let total: f64 = weights.iter().sum();
                        (0..groups * per_group)
                            .map(|_| {
                                let mut x = rng.random::<f64>() * total;
                                weights
                                    .iter()
                                    .position(|w| {
                                        x -= w;
                                        x < 0.0
                                    })
                                    .unwrap_or(groups - 1)
                            })
                            .collect()
                    }
                };
                picks.shuffle(&mut rng);
                picks
                    .into_iter()
                    .map(|g| BenchRequest {
                        at_ms: None,
                        prompt: format!("{}{}", systems[g], text(&mut rng, *question)),
                        max_tokens: *output,
                        group: g,
                        session: None,
                    })
                    .collect()
            }
            Self::MultiTurn { users, rounds, question, output } => {
                let mut rng = rng_for(seed, 0);
                let mut history = vec![String::new(); *users];
                let mut out = Vec::with_capacity(users * rounds);
                for _ in 0..*rounds {
                    let mut order: Vec<usize> = (0..*users).collect();
                    order.shuffle(&mut rng);
                    for u in order {
                        history[u].push_str(&text(&mut rng, *question));
                        out.push(BenchRequest {
                            at_ms: None,
                            prompt: history[u].clone(),
                            max_tokens: *output,
                            group: u,
                            session: Some(format!("user-{u}")),
                        });
                        // A stand-in for the answer, so the next turn's prompt grows by it.
                        history[u].push_str(&text(&mut rng, *output as usize));
                    }
                }
                out
            }
            Self::Trace(path) => read_trace(path, seed)?,
        })
    }
}
