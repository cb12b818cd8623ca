//! Workloads, all deterministic from a seed: the seed benchmark's 6 requests,
//! generated shared prefixes (the shape of SGLang's bench_serving and inference-perf),
//! multi-turn conversations, and trace replay.
//!
//! Text is built from words that are one GPT-2 token each (with their leading space),
//! so a prompt of `n` words is exactly `n` tokens and prefix lengths are exact.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use locus_tokens::Tokenizer;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One request of a workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchRequest {
    /// Send time from the start of the run, when the workload has a schedule (traces).
    pub at_ms: Option<u64>,
    /// The prompt.
    pub prompt: String,
    /// Tokens to generate.
    pub max_tokens: u32,
    /// The group (shared prefix) or user (conversation) it belongs to.
    pub group: usize,
    /// The conversation it continues, sent as the router's session header.
    pub session: Option<String>,
}

/// A workload and its shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// The original benchmark: 6 interleaved requests for 2 phrases.
    Seed,
    /// `groups` x `per_group` prompts: a system prompt of `system` tokens shared by a
    /// group, then a question of `question` tokens; `output` tokens each. Uniform: every
    /// group has `per_group` prompts; Zipf(alpha): each of the `groups * per_group`
    /// requests draws its group with weight rank^-alpha. Shuffled.
    SharedPrefix {
        /// Number of groups (distinct system prompts).
        groups: usize,
        /// Prompts per group (uniform), or requests / groups (Zipf).
        per_group: usize,
        /// System prompt tokens.
        system: usize,
        /// Question tokens.
        question: usize,
        /// Output tokens.
        output: u32,
        /// Zipf exponent of group popularity; `None` is uniform.
        zipf: Option<f64>,
    },
    /// `users` x `rounds`: each prompt is the conversation so far (earlier questions and
    /// stand-in answers of `output` tokens) and a new question of `question` tokens.
    /// Rounds are interleaved across users in a shuffled order.
    MultiTurn {
        /// Conversations.
        users: usize,
        /// Turns per conversation.
        rounds: usize,
        /// Tokens per question.
        question: usize,
        /// Tokens per answer (asked for, and stood in for in the history).
        output: u32,
    },
    /// JSONL records: `timestamp_ms`, `prompt` (or `prefix_id` + `prefix_tokens` +
    /// `suffix_tokens`), `max_tokens`.
    Trace(PathBuf),
}

/// Common English words that GPT-2's BPE encodes (with a leading space) as one token.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "time",
    "people",
    "year",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "good",
    "new",
    "first",
    "last",
    "long",
    "great",
    "little",
    "own",
    "other",
    "old",
    "big",
    "high",
    "different",
    "small",
    "large",
    "next",
    "early",
    "young",
    "important",
    "few",
    "public",
    "bad",
    "same",
    "able",
];

/// The words of [`WORDS`] that really are one token each (checked once).
fn words() -> &'static [String] {
    static W: OnceLock<Vec<String>> = OnceLock::new();
    W.get_or_init(|| {
        let tok = Tokenizer::new();
        WORDS.iter().map(|w| format!(" {w}")).filter(|w| tok.encode(w).len() == 1).collect()
    })
}

/// `n` tokens of text drawn from `rng`.
fn text(rng: &mut StdRng, n: usize) -> String {
    let w = words();
    (0..n).map(|_| w[rng.random_range(0..w.len())].as_str()).collect()
}

/// `n` tokens of text, deterministic from `seed` (the words workloads are made of).
pub fn filler(seed: u64, n: usize) -> String {
    text(&mut rng_for(seed, 3), n)
}

fn rng_for(seed: u64, stream: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A `--workload` that names no workload, or sets its shape wrongly.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown workload `{0}`: use seed, shared-prefix, multi-turn, trace:FILE or \
     tenants[:tenants=24,system=512,question=32,output=16,zipf=1.1,requests=240] or \
     multi-turn[:users=8,rounds=4,question=32,output=16]"
)]
pub struct UnknownWorkload(pub String);

/// The `key=value` pairs of a workload's shape (`None` if a part is not a pair).
fn pairs(shape: &str) -> Option<Vec<(&str, &str)>> {
    shape.split(',').filter(|p| !p.is_empty()).map(|kv| kv.split_once('=')).collect()
}

/// A count in a workload's shape: a positive integer.
fn positive(v: &str) -> Option<usize> {
    v.parse().ok().filter(|n| *n > 0)
}

/// Requests of a `tenants` workload unless `requests=` says otherwise.
pub const TENANT_REQUESTS: usize = 240;

impl Workload {
    /// Parses the CLI form: `seed`, `shared-prefix`, `multi-turn` (with defaults; see
    /// [`Self::shared_prefix_default`]) or `trace:FILE`.
    pub fn parse(s: &str) -> Result<Self, UnknownWorkload> {
        match s {
            "seed" => Ok(Self::Seed),
            "shared-prefix" => Ok(Self::shared_prefix_default()),
            "multi-turn" => Self::multi_turn(""),
            "tenants" => Self::tenants(""),
            _ => match (s.split_once(':'), s.strip_prefix("trace:")) {
                (_, Some(p)) if !p.is_empty() => Ok(Self::Trace(PathBuf::from(p))),
                (Some(("tenants", shape)), _) => Self::tenants(shape),
                (Some(("multi-turn", shape)), _) => Self::multi_turn(shape),
                _ => Err(UnknownWorkload(s.to_string())),
            },
        }
    }

    /// Conversations, each request sent with its user's session: `key=value` pairs over
    /// the defaults 8 users, 4 rounds, 32-token questions, 16-token answers.
    fn multi_turn(shape: &str) -> Result<Self, UnknownWorkload> {
        let bad = || UnknownWorkload(format!("multi-turn:{shape}"));
        let (mut users, mut rounds, mut question, mut output) = (8usize, 4usize, 32usize, 16u32);
        for (k, v) in pairs(shape).ok_or_else(bad)? {
            let n = positive(v).ok_or_else(bad)?;
            match k {
                "users" => users = n,
                "rounds" => rounds = n,
                "question" => question = n,
                "output" => output = u32::try_from(n).map_err(|_| bad())?,
                _ => return Err(bad()),
            }
        }
        Ok(Self::MultiTurn { users, rounds, question, output })
    }

    /// Many tenants, each with its own system prompt, whose popularity follows Zipf(alpha)
    /// (as in llm-d's and SGLang's cache-aware routing benchmarks): `key=value` pairs over
    /// the defaults 24 tenants, 512-token system prompts, 32-token questions, 16 output
    /// tokens, alpha 1.1 (0: uniform), 240 requests (rounded up to a multiple of the
    /// tenants).
    fn tenants(shape: &str) -> Result<Self, UnknownWorkload> {
        let bad = || UnknownWorkload(format!("tenants:{shape}"));
        let (mut tenants, mut system, mut question, mut output) =
            (24usize, 512usize, 32usize, 16u32);
        let (mut zipf, mut requests) = (1.1f64, TENANT_REQUESTS);
        for (k, v) in pairs(shape).ok_or_else(bad)? {
            let n = || positive(v).ok_or_else(bad);
            match k {
                "tenants" => tenants = n()?,
                "system" => system = n()?,
                "question" => question = n()?,
                "output" => output = u32::try_from(n()?).map_err(|_| bad())?,
                "requests" => requests = n()?,
                "zipf" => {
                    zipf = v
                        .parse()
                        .ok()
                        .filter(|a: &f64| a.is_finite() && *a >= 0.0)
                        .ok_or_else(bad)?
                }
                _ => return Err(bad()),
            }
        }
        Ok(Self::SharedPrefix {
            groups: tenants,
            per_group: requests.div_ceil(tenants),
            system,
            question,
            output,
            zipf: (zipf > 0.0).then_some(zipf),
        })
    }

    /// 8 groups x 16 prompts, system prompt 256 tokens, question 32, output 16, uniform.
    pub fn shared_prefix_default() -> Self {
        Self::SharedPrefix {
            groups: 8,
            per_group: 16,
            system: 256,
            question: 32,
            output: 16,
            zipf: None,
        }
    }

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceRecord {
    timestamp_ms: u64,
    prompt: Option<String>,
    prefix_id: Option<u64>,
    prefix_tokens: Option<usize>,
    suffix_tokens: Option<usize>,
    max_tokens: u32,
}

fn read_trace(path: &Path, seed: u64) -> Result<Vec<BenchRequest>, String> {
    let data = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read trace {}: {e}", path.display()))?;
    let mut rng = rng_for(seed, 1);
    let mut out = Vec::new();
    for (n, line) in data.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let r: TraceRecord =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        let (prompt, group) = match (r.prompt, r.prefix_id, r.prefix_tokens) {
            (Some(p), _, _) => (p, 0),
            (None, Some(id), Some(len)) => {
                let prefix = text(&mut rng_for(seed, id.wrapping_add(2)), len);
                (format!("{prefix}{}", text(&mut rng, r.suffix_tokens.unwrap_or(0))), id as usize)
            }
            _ => {
                return Err(format!(
                    "{}:{}: a record needs `prompt`, or `prefix_id` and `prefix_tokens`",
                    path.display(),
                    n + 1
                ));
            }
        };
        out.push(BenchRequest {
            at_ms: Some(r.timestamp_ms),
            prompt,
            max_tokens: r.max_tokens,
            group,
            session: None,
        });
    }
    Ok(out)
}
