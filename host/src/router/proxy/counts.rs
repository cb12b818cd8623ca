//! What a worker's answer (or a stream's final event) says about its request: token
//! counts, whether the response cache answered, and the worker's own timings.

use locus_policy::Completion;

/// What an answer or a final event says about its request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Counts {
    pub(super) prompt: u32,
    pub(super) cached: u32,
    pub(super) generated: Option<u32>,
    pub(super) cache_hit: Option<bool>,
    /// The worker's seconds from arrival to the end, and to the first token.
    pub(super) e2e: f64,
    pub(super) ttft: Option<f64>,
}

impl Counts {
    /// `meta_info` (every locus answer has it), else OpenAI's `usage`; `None` when
    /// neither is there.
    pub(super) fn of(body: &[u8]) -> Option<Self> {
        #[derive(serde::Deserialize, Default)]
        struct Body {
            meta_info: Option<Meta>,
            usage: Option<crate::api::openai::Usage>,
        }
        #[derive(serde::Deserialize)]
        struct Meta {
            prompt_tokens: usize,
            cached_tokens: usize,
            completion_tokens: Option<usize>,
            cache_hit: Option<bool>,
            #[serde(default)]
            e2e_latency: f64,
            ttft: Option<f64>,
        }
        let n = |x: usize| x.min(u32::MAX as usize) as u32;
        let b: Body = serde_json::from_slice(body).ok()?;
        Some(match (b.meta_info, b.usage) {
            (Some(m), _) => Self {
                prompt: n(m.prompt_tokens),
                cached: n(m.cached_tokens),
                generated: m.completion_tokens.map(n),
                cache_hit: m.cache_hit,
                e2e: m.e2e_latency,
                ttft: m.ttft,
            },
            (None, Some(u)) => Self {
                prompt: n(u.prompt_tokens),
                cached: n(u.prompt_tokens_details.map_or(0, |d| d.cached_tokens)),
                generated: Some(n(u.completion_tokens)),
                cache_hit: None,
                e2e: 0.0,
                ttft: None,
            },
            (None, None) => return None,
        })
    }

    /// Copies the counts into the attempt's report.
    pub(super) fn fill(&self, done: &mut Completion) {
        done.prompt_tokens = Some(self.prompt);
        done.cached_tokens = Some(self.cached);
        done.generated_tokens = self.generated;
        done.response_cache_hit = self.cache_hit;
    }
}
