//! What every API's request becomes once it is read: one prompt, one set of sampling
//! choices, and how to answer. Worker and router both work from a [`Job`], so the three
//! wire formats are read, checked and refused in one place.

use serde::Deserialize;

use super::error::ApiError;

/// Which API a request came through: it decides the answer's shape and how fields are
/// named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// SGLang's native `POST /generate`.
    Generate,
    /// OpenAI's `POST /v1/completions`.
    Completions,
    /// OpenAI's `POST /v1/chat/completions`.
    Chat,
}

impl Endpoint {
    /// The HTTP path.
    pub fn path(self) -> &'static str {
        match self {
            Self::Generate => "/generate",
            Self::Completions => "/v1/completions",
            Self::Chat => "/v1/chat/completions",
        }
    }

    /// Label in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Completions => "completions",
            Self::Chat => "chat",
        }
    }
}

/// The prompt, as text or as GPT-2 token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text to tokenize.
    Text(String),
    /// Token ids, used as given.
    Ids(Vec<u32>),
}

impl Prompt {
    /// Whether it has nothing to complete.
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Text(t) => t.is_empty(),
            Self::Ids(ids) => ids.is_empty(),
        }
    }
}

/// Most stop sequences one request may give.
pub const MAX_STOPS: usize = 16;
/// Most stop token ids one request may give.
pub const MAX_STOP_TOKEN_IDS: usize = 64;
/// Longest stop sequence, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// A request as the worker runs it and the router routes it.
#[derive(Debug, Clone)]
pub struct Job {
    /// Where it came in.
    pub endpoint: Endpoint,
    /// What to complete.
    pub prompt: Prompt,
    /// Most tokens to generate: with the prompt, at most the model's context (else 400
    /// `context_length_exceeded`, as OpenAI and vLLM answer); `u32::MAX` means "the rest
    /// of the context".
    pub max_new_tokens: u32,
    /// 0 is greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1].
    pub top_p: f64,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Generation ends before the first of these; it is left out of the text unless
    /// `include_stop`.
    pub stop: Vec<String>,
    /// Keep the matched stop sequence in the text (SGLang's `no_stop_trim`).
    pub include_stop: bool,
    /// Go on past end-of-text.
    pub ignore_eos: bool,
    /// Token ids that end the generation like end-of-text (SGLang's `stop_token_ids`).
    pub stop_token_ids: Vec<u32>,
    /// Answer as Server-Sent Events.
    pub stream: bool,
    /// Streams end with a chunk carrying `usage` (OpenAI's `stream_options.include_usage`).
    pub include_usage: bool,
    /// The client's own id for the request (SGLang's `rid`).
    pub rid: Option<String>,
    /// Scheduling priority on the worker, higher first: the rank a router's admission gave
    /// it ([`super::rank`], sent in [`super::PRIORITY`]); 0 when sent by no router.
    pub priority: u8,
}

impl Job {
    /// A greedy job for `prompt`, as long as the endpoint's default: 128 new tokens for
    /// `/generate` (SGLang's), 16 for completions (OpenAI's), the rest of the context for
    /// chat (OpenAI's).
    pub fn new(endpoint: Endpoint, prompt: Prompt) -> Self {
        let max_new_tokens = match endpoint {
            Endpoint::Generate => 128,
            Endpoint::Completions => 16,
            Endpoint::Chat => u32::MAX,
        };
        Self {
            endpoint,
            prompt,
            max_new_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            include_stop: false,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            stream: false,
            include_usage: false,
            rid: None,
            priority: 0,
        }
    }

    /// [`Job::new`] for a prompt that must not be empty (refused naming the endpoint's
    /// prompt field).
    pub(crate) fn with_prompt(endpoint: Endpoint, prompt: Prompt) -> Result<Self, ApiError> {
        let job = Self::new(endpoint, prompt);
        if job.prompt.is_empty() {
            return Err(ApiError::invalid(job.param("prompt"), "the prompt is empty"));
        }
        Ok(job)
    }

    /// Sets the sampling choices every API shares; unset ones keep the defaults, and
    /// `greedy` (a `top_k` of 1) means temperature 0.
    pub(crate) fn set_sampling(
        &mut self,
        max_new_tokens: Option<u32>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        greedy: bool,
    ) {
        if let Some(n) = max_new_tokens {
            self.max_new_tokens = n;
        }
        self.temperature = if greedy { 0.0 } else { temperature.unwrap_or(0.0) };
        self.top_p = top_p.unwrap_or(1.0);
        self.seed = seed;
    }

    /// The wire name of an engine-level field (`temperature`, `top_p`, `prompt`,
    /// `max_new_tokens`) for this job's endpoint, so that an error names what the client
    /// actually sent.
    pub fn param(&self, field: &str) -> String {
        match (self.endpoint, field) {
            (Endpoint::Generate, "prompt") => match self.prompt {
                Prompt::Ids(_) => "input_ids".into(),
                Prompt::Text(_) => "text".into(),
            },
            (Endpoint::Generate, f) => format!("sampling_params.{f}"),
            (Endpoint::Completions, "max_new_tokens") => "max_tokens".into(),
            (Endpoint::Chat, "prompt") => "messages".into(),
            (Endpoint::Chat, "max_new_tokens") => "max_tokens".into(),
            (_, f) => f.into(),
        }
    }

    /// The leading part of the prompt a routing policy is shown: at most `max_bytes` of
    /// the text, cut at a character boundary (ids are shown as their decimal list).
    pub fn routing_prompt(&self, max_bytes: usize) -> String {
        match &self.prompt {
            Prompt::Text(t) => {
                let mut end = t.len().min(max_bytes);
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                t[..end].to_string()
            }
            Prompt::Ids(ids) => {
                let mut s = String::new();
                for id in ids {
                    if s.len() >= max_bytes {
                        break;
                    }
                    s.push_str(&id.to_string());
                    s.push(' ');
                }
                s
            }
        }
    }
}

/// A field that takes one value or a list (`"stop": "x"` or `"stop": ["x", "y"]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// One.
    One(T),
    /// A list.
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// The only value, or `None` for a list of more (or fewer) than one.
    pub fn single(self) -> Option<T> {
        match self {
            Self::One(t) => Some(t),
            Self::Many(mut v) if v.len() == 1 => v.pop(),
            Self::Many(_) => None,
        }
    }
}

/// Reads `null` as the type's default: OpenAI's schema types flags as "boolean or null",
/// and clients send `"stream": null`.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// Reads an optional JSON object as `T`, refusing a list: a derived struct would otherwise
/// take `[...]` field by field, in declaration order (so `"sampling_params": [1000]` would
/// set `max_new_tokens`).
pub(crate) fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Object<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object (one request's parameters; a list is a batch, not supported)")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(Object(std::marker::PhantomData))
}

/// Reads a seed given as any 64-bit integer, negative ones included (vLLM takes int64).
pub(crate) fn seed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n = Option::<serde_json::Number>::deserialize(d)?;
    match n {
        None => Ok(None),
        Some(n) => {
            n.as_u64().or_else(|| n.as_i64().map(|i| i as u64)).map(Some).ok_or_else(|| {
                serde::de::Error::custom(format!("seed must be an integer, got {n}"))
            })
        }
    }
}

/// Reads `stop` (one string or a list) into the job's list, dropping empty strings.
pub(crate) fn stops(stop: Option<OneOrMany<String>>, param: &str) -> Result<Vec<String>, ApiError> {
    let list = match stop {
        None => return Ok(Vec::new()),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    let list: Vec<String> = list.into_iter().filter(|s| !s.is_empty()).collect();
    if list.len() > MAX_STOPS {
        return Err(ApiError::invalid(param, format!("at most {MAX_STOPS} stop sequences")));
    }
    if list.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            param,
            format!("a stop sequence may be at most {MAX_STOP_BYTES} bytes"),
        ));
    }
    Ok(list)
}

/// Sampling knobs that the field's servers offer and locus does not implement. Each is
/// accepted at its neutral value (which changes nothing) and refused otherwise, because
/// ignoring it would silently change the answer.
#[derive(Debug, Default)]
pub(crate) struct Unsupported {
    pub n: Option<u32>,
    pub best_of: Option<u32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub min_tokens: Option<u32>,
    pub min_new_tokens: Option<u32>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    pub json_schema: Option<String>,
    pub regex: Option<String>,
    pub ebnf: Option<String>,
}

/// Declares a request struct with its own fields plus those of [`Unsupported`], read by
/// serde directly: `#[serde(flatten)]` would hide unknown fields from the debug log and
/// the field's path from type errors.
macro_rules! with_unsupported {
    ($(#[$meta:meta])* pub struct $name:ident {
        $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)*
    }) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            pub(crate) n: Option<u32>,
            pub(crate) best_of: Option<u32>,
            pub(crate) top_k: Option<i64>,
            pub(crate) min_p: Option<f64>,
            pub(crate) presence_penalty: Option<f64>,
            pub(crate) frequency_penalty: Option<f64>,
            pub(crate) repetition_penalty: Option<f64>,
            pub(crate) min_tokens: Option<u32>,
            pub(crate) min_new_tokens: Option<u32>,
            pub(crate) stop_token_ids: Option<Vec<u32>>,
            pub(crate) logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
            pub(crate) json_schema: Option<String>,
            pub(crate) regex: Option<String>,
            pub(crate) ebnf: Option<String>,
        }

        impl $name {
            /// Its knobs that locus does not implement.
            pub(crate) fn unsupported(&self) -> $crate::api::job::Unsupported {
                $crate::api::job::Unsupported {
                    n: self.n,
                    best_of: self.best_of,
                    top_k: self.top_k,
                    min_p: self.min_p,
                    presence_penalty: self.presence_penalty,
                    frequency_penalty: self.frequency_penalty,
                    repetition_penalty: self.repetition_penalty,
                    min_tokens: self.min_tokens,
                    min_new_tokens: self.min_new_tokens,
                    stop_token_ids: self.stop_token_ids.clone(),
                    logit_bias: self.logit_bias.clone(),
                    json_schema: self.json_schema.clone(),
                    regex: self.regex.clone(),
                    ebnf: self.ebnf.clone(),
                }
            }
        }
    };
}
pub(crate) use with_unsupported;

impl Unsupported {
    /// Refuses the first knob set to a value that would change the answer. `prefix` is
    /// prepended to the field names in the error (`sampling_params.`).
    pub fn check(&self, prefix: &str) -> Result<(), ApiError> {
        let refuse = |field: &str, why: &str| {
            Err(ApiError::unsupported(format!("{prefix}{field}"), format!("{field}: {why}")))
        };
        if self.n.is_some_and(|n| n != 1) {
            return refuse("n", "locus returns one choice per request; send n requests");
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return refuse("best_of", "locus does not rank several candidates");
        }
        // -1 and 0 are the "disabled" spellings of SGLang and vLLM; 1 is greedy.
        if self.top_k.is_some_and(|k| k > 1) {
            return refuse("top_k", "top-k sampling is not implemented; use top_p");
        }
        if self.min_p.is_some_and(|p| p != 0.0) {
            return refuse("min_p", "min-p sampling is not implemented; use top_p");
        }
        for (field, v, neutral) in [
            ("presence_penalty", self.presence_penalty, 0.0),
            ("frequency_penalty", self.frequency_penalty, 0.0),
            ("repetition_penalty", self.repetition_penalty, 1.0),
        ] {
            if v.is_some_and(|v| v != neutral) {
                return refuse(field, "penalties are not implemented");
            }
        }
        if self.min_tokens.is_some_and(|n| n > 0) {
            return refuse("min_tokens", "a minimum length is not implemented");
        }
        if self.min_new_tokens.is_some_and(|n| n > 0) {
            return refuse("min_new_tokens", "a minimum length is not implemented");
        }
        if self.stop_token_ids.as_ref().is_some_and(|v| v.len() > MAX_STOP_TOKEN_IDS) {
            return Err(ApiError::invalid(
                format!("{prefix}stop_token_ids"),
                format!("at most {MAX_STOP_TOKEN_IDS} stop token ids"),
            ));
        }
        if self.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
            return refuse("logit_bias", "logit bias is not implemented");
        }
        for (field, v) in
            [("json_schema", &self.json_schema), ("regex", &self.regex), ("ebnf", &self.ebnf)]
        {
            if v.is_some() {
                return refuse(field, "constrained decoding is not implemented");
            }
        }
        Ok(())
    }

    /// Whether `top_k` asks for greedy decoding.
    pub fn greedy(&self) -> bool {
        self.top_k == Some(1)
    }
}
