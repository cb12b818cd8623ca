//! How to load a policy: its settings, its sandbox bounds, its instances.

use super::sandbox::Limits;

/// How to load a policy.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `key=value` settings passed to `configure`.
    pub settings: Vec<(String, String)>,
    /// Sandbox bounds for every call.
    pub limits: Limits,
    /// Instances of a router policy kept for concurrent callers (0: one per core, at
    /// least 4). 1 makes every call use the same instance, for policies that keep
    /// state. The setting `locus.instances=N` overrides it. Cache policies always use one.
    pub instances: usize,
}

impl LoadOptions {
    /// Default bounds, the given settings.
    pub fn with_settings(settings: Vec<(String, String)>) -> Self {
        Self { settings, ..Self::default() }
    }

    pub(crate) fn instance_count(&self) -> usize {
        if self.instances > 0 {
            return self.instances;
        }
        std::thread::available_parallelism().map_or(4, |n| n.get()).max(4)
    }
}
