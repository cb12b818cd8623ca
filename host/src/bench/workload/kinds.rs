//! The workload kinds, their shapes, and their command-line form (`--workload`).

use std::path::PathBuf;

use serde::Serialize;

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
}
