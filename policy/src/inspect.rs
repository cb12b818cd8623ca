//! `locus policy inspect`: what a component is and whether locus can use it.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::load::PolicySource;
use crate::runtime::LoadOptions;
use crate::runtime::Origin;
use crate::runtime::sandbox::Runtime;
use crate::runtime::version::Version;
use crate::worlds::admission::AdmissionWorld;
use crate::worlds::cache::CacheWorld;
use crate::worlds::router::RouterWorld;

/// The report on one component.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The policy's name.
    pub name: String,
    /// Size in bytes.
    pub size: usize,
    /// Hex sha256.
    pub sha256: String,
    /// The locus world it implements, judged by its exports.
    pub world: Option<&'static str>,
    /// Its exports, as `name: type`.
    pub exports: Vec<String>,
    /// Its imports.
    pub imports: Vec<String>,
    /// The version of `locus:policy` it implements, once it type-checked.
    pub version: Option<String>,
    /// The outcome of loading it (with default settings) and its smoke call.
    pub outcome: Result<(), String>,
    /// Where its machine code came from and how long getting it took.
    pub code: Option<(Origin, std::time::Duration)>,
    /// How long the whole load took (compile or cache, link, type-check, configure,
    /// smoke call), when it loaded.
    pub load: Option<std::time::Duration>,
}

impl Inspection {
    /// Whether locus can load and use the component.
    pub fn usable(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// Loads `source` the way a swap would, and reports on it.
pub fn inspect(source: &PolicySource, opts: &LoadOptions) -> Inspection {
    let mut report = Inspection {
        name: source.name(),
        size: 0,
        sha256: String::new(),
        world: None,
        exports: Vec::new(),
        imports: Vec::new(),
        version: None,
        outcome: Ok(()),
        code: None,
        load: None,
    };
    let bytes = match source.bytes() {
        Ok(b) => b,
        Err(e) => {
            report.outcome = Err(e.to_string());
            return report;
        }
    };
    report.size = bytes.len();
    let sha: [u8; 32] = Sha256::digest(&bytes).into();
    report.sha256 = hex::encode(sha);

    let rt = Runtime::get();
    let t = std::time::Instant::now();
    if let Ok((component, origin)) = rt.compile(sha, &bytes) {
        report.code = Some((origin, t.elapsed()));
        let ty = component.component_type();
        report.exports = ty.exports(rt.engine()).map(|(n, _)| n.to_string()).collect();
        report.imports = ty.imports(rt.engine()).map(|(n, _)| n.to_string()).collect();
    }
    let has = |n: &str| report.exports.iter().any(|e| e == n);
    report.world = if has("route") {
        Some("router")
    } else if has("admit") || has("evict") {
        Some("cache")
    } else if has("pick") {
        Some("admission")
    } else {
        None
    };
    let loaded = match report.world {
        Some("cache") => Version::<CacheWorld>::load(source, opts).map(|v| v.info),
        Some("admission") => Version::<AdmissionWorld>::load(source, opts).map(|v| v.info),
        _ => Version::<RouterWorld>::load(source, opts).map(|v| v.info),
    };
    match loaded {
        Ok(info) => {
            report.version = Some(info.version);
            // The code was in memory by then: what the load took beyond getting it.
            let code = report.code.map_or(std::time::Duration::ZERO, |(_, d)| d);
            report.load = Some(code + std::time::Duration::from_micros(info.load_us));
        }
        Err(e) => report.outcome = Err(e.to_string()),
    }
    report
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "policy:  {}", self.name)?;
        writeln!(f, "size:    {} bytes", self.size)?;
        writeln!(f, "sha256:  {}", self.sha256)?;
        let world = match (self.world, &self.version) {
            (None, _) => "none (exports neither `route` nor `admit`)".into(),
            (Some(w), Some(v)) => format!("locus:policy/{w}@{v}"),
            (Some(w), None) => format!("locus:policy/{w} (version unknown: it did not load)"),
        };
        writeln!(f, "world:   {world}")?;
        writeln!(f, "exports: {}", self.exports.join(", "))?;
        writeln!(f, "imports: {}", self.imports.join(", "))?;
        if let Some((origin, took)) = self.code {
            writeln!(f, "code:    {} in {:.1} ms", origin.describe(), took.as_secs_f64() * 1e3)?;
        }
        if let Some(took) = self.load {
            writeln!(
                f,
                "load:    {:.1} ms (code, link, type-check, configure, smoke call)",
                took.as_secs_f64() * 1e3
            )?;
        }
        match &self.outcome {
            Ok(()) => write!(f, "smoke:   ok (loaded, configured, smoke call passed)"),
            Err(e) => write!(f, "smoke:   FAILED: {e}"),
        }
    }
}
