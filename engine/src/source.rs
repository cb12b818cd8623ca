//! Where the weights come from: a Hugging Face id (through hf-hub's cache), a local directory,
//! or deterministic synthetic weights of distilgpt2's shape (the offline default).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::EngineError;
use crate::gpt2::Config;

/// CLI name of the synthetic default.
pub const SYNTHETIC_NAME: &str = "synthetic-distilgpt2";
/// Seed of the synthetic weights; fixed so every worker (and PyTorch, after export) runs the
/// same model.
pub const SYNTHETIC_SEED: u64 = 0x6c6f_6375_735f_6770; // "locus_gp"

/// Which model to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// distilgpt2's architecture with deterministic pseudo-random weights, made at start-up.
    Synthetic,
    /// A Hugging Face model id such as `distilgpt2`, read from hf-hub's cache (downloaded into it
    /// when a network exists and `HF_HUB_OFFLINE` is not set).
    HfHub(String),
    /// A directory holding `config.json` and `model.safetensors`.
    Dir(PathBuf),
}

impl FromStr for ModelSource {
    type Err = EngineError;

    /// `synthetic-distilgpt2` (or `synthetic`); `dir:PATH`, an existing directory, or a path
    /// starting with `/`, `./` or `../`; `hf:ID` or any other string is a Hugging Face id.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(EngineError::InvalidParam {
                field: "model",
                reason: "empty model name".into(),
            });
        }
        if s == SYNTHETIC_NAME || s == "synthetic" {
            return Ok(Self::Synthetic);
        }
        if let Some(p) = s.strip_prefix("dir:") {
            return Ok(Self::Dir(PathBuf::from(p)));
        }
        if let Some(id) = s.strip_prefix("hf:") {
            return Ok(Self::HfHub(id.to_string()));
        }
        if Path::new(s).is_dir()
            || s.starts_with('/')
            || s.starts_with("./")
            || s.starts_with("../")
        {
            return Ok(Self::Dir(PathBuf::from(s)));
        }
        Ok(Self::HfHub(s.to_string()))
    }
}

impl ModelSource {
    /// The name servers report for the model: the Hugging Face id, the directory's name,
    /// or `synthetic-distilgpt2`.
    pub fn served_name(&self) -> String {
        match self {
            Self::Synthetic => SYNTHETIC_NAME.to_string(),
            Self::HfHub(id) => id.clone(),
            Self::Dir(p) => p
                .file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()),
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Synthetic => f.write_str(SYNTHETIC_NAME),
            Self::HfHub(id) => write!(f, "hf:{id}"),
            Self::Dir(p) => write!(f, "dir:{}", p.display()),
        }
    }
}

/// Weights ready to build a model from.
pub(crate) enum Weights {
    /// Files on disk (memory-mapped at load).
    Files { config: Config, safetensors: PathBuf },
    /// Tensors made in memory.
    Tensors { config: Config, tensors: HashMap<String, Tensor> },
}

/// Finds the files of `source` (or makes the synthetic tensors) and says which model it is.
pub(crate) fn resolve(
    source: &ModelSource,
    device: &Device,
) -> Result<(Weights, String), EngineError> {
    match source {
        ModelSource::Synthetic => {
            let config = Config::distilgpt2();
            let tensors = synthetic_weights(&config, SYNTHETIC_SEED, device)?;
            let desc = format!(
                "{SYNTHETIC_NAME}: distilgpt2 architecture with deterministic random weights \
                 (seed {SYNTHETIC_SEED:#x}), no download; output is not meaningful text"
            );
            Ok((Weights::Tensors { config, tensors }, desc))
        }
        ModelSource::Dir(dir) => {
            let (config, safetensors) = dir_files(dir)?;
            Ok((
                Weights::Files { config, safetensors },
                format!("local directory {}", dir.display()),
            ))
        }
        ModelSource::HfHub(id) => {
            let offline =
                std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v != "0" && !v.is_empty());
            let dir = resolve_hf(id, &hf_hub::Cache::from_env(), offline)?;
            let (config, safetensors) = dir_files(&dir)?;
            Ok((
                Weights::Files { config, safetensors },
                format!("Hugging Face `{id}` from {}", dir.display()),
            ))
        }
    }
}

fn dir_files(dir: &Path) -> Result<(Config, PathBuf), EngineError> {
    let config_path = dir.join("config.json");
    let weights = dir.join("model.safetensors");
    for p in [&config_path, &weights] {
        if !p.is_file() {
            return Err(EngineError::ModelUnavailable(format!(
                "{} not found (a model directory needs config.json and model.safetensors)",
                p.display()
            )));
        }
    }
    let text = std::fs::read_to_string(&config_path)?;
    let config: Config = serde_json::from_str(&text)
        .map_err(|e| EngineError::ModelUnavailable(format!("{}: {e}", config_path.display())))?;
    config
        .validate()
        .map_err(|e| EngineError::ModelUnavailable(format!("{}: {e}", config_path.display())))?;
    Ok((config, weights))
}

/// The snapshot directory of `id`: from the local cache, else downloaded unless `offline`.
pub(crate) fn resolve_hf(
    id: &str,
    cache: &hf_hub::Cache,
    offline: bool,
) -> Result<PathBuf, EngineError> {
    let files = ["config.json", "model.safetensors"];
    let repo = cache.model(id.to_string());
    if let (Some(c), Some(_)) = (repo.get(files[0]), repo.get(files[1])) {
        return Ok(c.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    let fix = format!(
        "pass --model-dir PATH (a directory with config.json and model.safetensors), run with \
         network access once to fill the cache at {}, or use the offline default {SYNTHETIC_NAME}",
        cache.path().display()
    );
    if offline {
        return Err(EngineError::ModelUnavailable(format!(
            "`{id}` is not in the Hugging Face cache and HF_HUB_OFFLINE is set: {fix}"
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .with_progress(false)
        .with_retries(0)
        .build()
        .map_err(|e| EngineError::ModelUnavailable(format!("hf-hub: {e}")))?;
    let api_repo = api.model(id.to_string());
    let mut config = None;
    for f in files {
        let p = api_repo.get(f).map_err(|e| {
            EngineError::ModelUnavailable(format!(
                "`{id}` is not cached and downloading {f} failed ({e}): {fix}"
            ))
        })?;
        config.get_or_insert(p);
    }
    Ok(config.and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default())
}

/// Hugging Face names (no `transformer.` prefix) and tensors of a GPT-2 with `cfg`'s shape and
/// GPT-2-like initialisation: normal-ish with std 0.02 (0.01 for `wpe`, 0.02/sqrt(2 n_layer) for
/// the output projections), zero biases, unit layer-norm gains. Conv1D weights are `[in, out]`
/// as in the Hub files, so an export loads in `transformers` unchanged.
///
/// Every value is a hash of (seed, tensor name, index): the result is the same for any thread
/// count, and the ~82M values of distilgpt2 take well under a second in release builds.
pub fn synthetic_weights(
    cfg: &Config,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>, EngineError> {
    let (e, inner) = (cfg.n_embd, cfg.inner());
    let proj_std = 0.02 / (2.0 * cfg.n_layer as f32).sqrt();
    let mut specs: Vec<(String, Vec<usize>, Init)> = vec![
        ("wte.weight".into(), vec![cfg.vocab_size, e], Init::Normal(0.02)),
        ("wpe.weight".into(), vec![cfg.n_positions, e], Init::Normal(0.01)),
        ("ln_f.weight".into(), vec![e], Init::Const(1.0)),
        ("ln_f.bias".into(), vec![e], Init::Const(0.0)),
    ];
    for i in 0..cfg.n_layer {
        let p = |s: &str| format!("h.{i}.{s}");
        specs.extend([
            (p("ln_1.weight"), vec![e], Init::Const(1.0)),
            (p("ln_1.bias"), vec![e], Init::Const(0.0)),
            (p("attn.c_attn.weight"), vec![e, 3 * e], Init::Normal(0.02)),
            (p("attn.c_attn.bias"), vec![3 * e], Init::Const(0.0)),
            (p("attn.c_proj.weight"), vec![e, e], Init::Normal(proj_std)),
            (p("attn.c_proj.bias"), vec![e], Init::Const(0.0)),
            (p("ln_2.weight"), vec![e], Init::Const(1.0)),
            (p("ln_2.bias"), vec![e], Init::Const(0.0)),
            (p("mlp.c_fc.weight"), vec![e, inner], Init::Normal(0.02)),
            (p("mlp.c_fc.bias"), vec![inner], Init::Const(0.0)),
            (p("mlp.c_proj.weight"), vec![inner, e], Init::Normal(proj_std)),
            (p("mlp.c_proj.bias"), vec![e], Init::Const(0.0)),
        ]);
    }
    let mut out = HashMap::with_capacity(specs.len());
    for (name, shape, init) in specs {
        let n: usize = shape.iter().product();
        let data = match init {
            Init::Const(c) => vec![c; n],
            Init::Normal(std) => normalish(seed ^ fnv1a(name.as_bytes()), n, std),
        };
        out.insert(name, Tensor::from_vec(data, shape, device)?);
    }
    Ok(out)
}

enum Init {
    Const(f32),
    Normal(f32),
}

fn fnv1a(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

/// splitmix64's finaliser: a good 64-bit mix of a counter.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Sum of four 16-bit uniforms (Irwin-Hall, n = 4) scaled to unit variance: bell-shaped,
/// bounded at +-3.46 std, and one hash per value.
fn normalish(seed: u64, n: usize, std: f32) -> Vec<f32> {
    // Irwin-Hall(4) over [0, 65535] has mean 2 * 65535 and variance 4 * 65536^2 / 12.
    let scale = std / (65536.0 * (4.0f32 / 12.0).sqrt());
    let mean = 2.0 * 65535.0;
    let mut v = vec![0f32; n];
    v.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
        let base = (c as u64) << 16;
        for (i, x) in chunk.iter_mut().enumerate() {
            let r = mix(seed.wrapping_add(base + i as u64));
            let s = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
            *x = (s as f32 - mean) * scale;
        }
    });
    v
}

/// Writes `config.json` and `model.safetensors` for `cfg` and `tensors` into `dir` (created if
/// missing), in the layout `transformers` and [`ModelSource::Dir`] load.
pub fn export(
    dir: &Path,
    cfg: &Config,
    tensors: &HashMap<String, Tensor>,
) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir)?;
    let mut json = serde_json::to_value(cfg).map_err(|e| EngineError::Internal(e.to_string()))?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("model_type".into(), "gpt2".into());
        obj.insert("architectures".into(), serde_json::json!(["GPT2LMHeadModel"]));
        obj.insert("bos_token_id".into(), cfg.eos_token_id.into());
        obj.insert("tie_word_embeddings".into(), true.into());
    }
    let text =
        serde_json::to_string_pretty(&json).map_err(|e| EngineError::Internal(e.to_string()))?;
    std::fs::write(dir.join("config.json"), text)?;
    candle_core::safetensors::save(tensors, dir.join("model.safetensors"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cli_names() {
        assert_eq!("synthetic-distilgpt2".parse::<ModelSource>().unwrap(), ModelSource::Synthetic);
        assert_eq!(
            "distilgpt2".parse::<ModelSource>().unwrap(),
            ModelSource::HfHub("distilgpt2".into())
        );
        assert_eq!(
            "openai-community/gpt2".parse::<ModelSource>().unwrap(),
            ModelSource::HfHub("openai-community/gpt2".into())
        );
        assert_eq!("/nope/x".parse::<ModelSource>().unwrap(), ModelSource::Dir("/nope/x".into()));
        assert_eq!("dir:rel".parse::<ModelSource>().unwrap(), ModelSource::Dir("rel".into()));
        assert!(matches!("  ".parse::<ModelSource>(), Err(EngineError::InvalidParam { .. })));
    }

    #[test]
    fn offline_uncached_hf_id_names_the_fix() {
        let tmp = std::env::temp_dir().join(format!("locus-hf-empty-{}", std::process::id()));
        let err = resolve_hf("distilgpt2", &hf_hub::Cache::new(tmp), true).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, EngineError::ModelUnavailable(_)));
        assert!(msg.contains("--model-dir") && msg.contains(SYNTHETIC_NAME), "{msg}");
    }

    #[test]
    fn cached_hf_snapshot_is_found_offline() {
        // hf-hub's layout: models--ID/refs/main names the snapshot holding the files.
        let root = std::env::temp_dir().join(format!("locus-hf-cache-{}", std::process::id()));
        let repo = root.join("models--tiny--gpt2");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2");
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture.join(f), snap.join(f)).unwrap();
        }
        let dir = resolve_hf("tiny/gpt2", &hf_hub::Cache::new(root.clone()), true).unwrap();
        assert_eq!(dir, snap);
        let (config, _) = dir_files(&dir).unwrap();
        assert_eq!((config.n_layer, config.vocab_size), (2, 1000));
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn missing_dir_is_a_clear_error() {
        let err =
            resolve(&ModelSource::Dir("/nonexistent/model".into()), &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("config.json"), "{err}");
    }

    #[test]
    fn normalish_has_the_asked_moments() {
        let v = normalish(7, 100_000, 0.02);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 5e-4, "{mean}");
        assert!((var.sqrt() - 0.02).abs() < 5e-4, "{}", var.sqrt());
        assert_eq!(v, normalish(7, 100_000, 0.02));
        assert_ne!(v, normalish(8, 100_000, 0.02));
    }
}
