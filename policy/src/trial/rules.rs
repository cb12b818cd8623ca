//! What a trial is asked to be: its mode (shadow or canary) and the rules a canary is held
//! to, read from a swap's `locus.*` settings.

use serde::{Deserialize, Serialize};

/// How a candidate is tried.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum TrialMode {
    /// Decides beside the live policy; only recorded.
    Shadow,
    /// Routes `percent` of requests.
    Canary {
        /// Share of requests, in (0, 100].
        percent: f64,
    },
}

impl TrialMode {
    /// `shadow` or `canary`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Shadow => "shadow",
            Self::Canary { .. } => "canary",
        }
    }
}

/// When a canary is aborted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrialRules {
    /// Requests each side must have in its window before the rules are applied.
    pub min_requests: usize,
    /// Requests per side the rules look at (the most recent ones).
    pub window: usize,
    /// Abort when the candidate's error rate exceeds the live one's by more than this.
    pub error_margin: f64,
    /// Abort when the candidate's fallback rate exceeds the live one's by more than this.
    pub fallback_margin: f64,
    /// Abort when the candidate's TTFT p90 exceeds the live one's by more than this
    /// fraction of it (0.5: 50% slower).
    pub ttft_margin: f64,
}

impl Default for TrialRules {
    fn default() -> Self {
        Self {
            min_requests: 20,
            window: 200,
            error_margin: 0.05,
            fallback_margin: 0.05,
            ttft_margin: 0.5,
        }
    }
}

/// A trial setting that cannot be used: the setting and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct TrialSettingError {
    /// The setting's name.
    pub param: String,
    /// What is wrong with it.
    pub message: String,
}

/// Host settings that stay with the policy's own (read by the slot, not a trial).
const HOST_SETTINGS: &[&str] = &["locus.instances"];

/// Takes the host's trial settings (`locus.shadow`, `locus.canary`, `locus.min-requests`,
/// `locus.window`, `locus.error-margin`, `locus.fallback-margin`, `locus.ttft-margin`) out
/// of a swap's settings; the rest are the policy's. `None`: a plain swap. Any other
/// `locus.` setting is refused, so that a misspelt trial never becomes a full swap.
pub fn take_trial_settings(
    settings: &mut Vec<(String, String)>,
) -> Result<Option<(TrialMode, TrialRules)>, TrialSettingError> {
    let mut mode = None;
    let mut rules = TrialRules::default();
    let mut error = None;
    let mut rule_set = None;
    let mut min_set = false;
    settings.retain(|(k, v)| {
        let bad = |message: &str| TrialSettingError { param: k.clone(), message: message.into() };
        let fraction = |v: &str| v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0);
        let count = |v: &str| v.parse::<usize>().ok().filter(|n| *n >= 1);
        let mut set_mode = |m: TrialMode| match mode.replace(m) {
            Some(prev) if prev != m => Err(bad("give one of locus.shadow and locus.canary")),
            _ => Ok(()),
        };
        let r = match k.as_str() {
            "locus.shadow" => match v.as_str() {
                "true" | "1" => set_mode(TrialMode::Shadow),
                "false" | "0" => Ok(()),
                _ => Err(bad("must be true or false")),
            },
            "locus.canary" => match v.parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => set_mode(TrialMode::Canary { percent: p }),
                _ => Err(bad("must be a percentage of requests in (0, 100]")),
            },
            "locus.min-requests" => {
                min_set = true;
                count(v)
                    .map(|n| rules.min_requests = n)
                    .ok_or_else(|| bad("must be a whole number of requests, at least 1"))
            }
            "locus.window" => count(v)
                .map(|n| rules.window = n)
                .ok_or_else(|| bad("must be a whole number of requests, at least 1")),
            "locus.error-margin" => fraction(v)
                .map(|x| rules.error_margin = x)
                .ok_or_else(|| bad("must be a non-negative number (0.05: 5 points)")),
            "locus.fallback-margin" => fraction(v)
                .map(|x| rules.fallback_margin = x)
                .ok_or_else(|| bad("must be a non-negative number (0.05: 5 points)")),
            "locus.ttft-margin" => fraction(v)
                .map(|x| rules.ttft_margin = x)
                .ok_or_else(|| bad("must be a non-negative number (0.5: 50% slower)")),
            key if key.starts_with("locus.") && !HOST_SETTINGS.contains(&key) => {
                Err(bad("is no locus setting: a trial takes locus.shadow or locus.canary, \
                 locus.min-requests, locus.window, locus.error-margin, \
                 locus.fallback-margin and locus.ttft-margin"))
            }
            _ => return true,
        };
        match r {
            Err(e) => {
                error.get_or_insert(e);
            }
            Ok(()) if k != "locus.shadow" && k != "locus.canary" => {
                rule_set.get_or_insert(k.clone());
            }
            Ok(()) => {}
        }
        false
    });
    if let Some(e) = error {
        return Err(e);
    }
    if let (None, Some(key)) = (mode, rule_set) {
        return Err(TrialSettingError {
            param: key,
            message: "is a canary rule: give it with locus.canary=PERCENT".into(),
        });
    }
    if rules.min_requests > rules.window {
        let (param, message) = if min_set {
            ("locus.min-requests", format!("must not exceed locus.window ({})", rules.window))
        } else {
            (
                "locus.window",
                format!(
                    "must be at least locus.min-requests ({}, the default): raise it or lower \
                     locus.min-requests",
                    rules.min_requests
                ),
            )
        };
        return Err(TrialSettingError { param: param.into(), message });
    }
    Ok(mode.map(|m| (m, rules)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn trial_settings_are_taken_out_and_checked() {
        let mut s =
            settings(&[("locus.canary", "10"), ("load-weight", "8"), ("locus.window", "50")]);
        let (mode, rules) = take_trial_settings(&mut s).unwrap().unwrap();
        assert_eq!(mode, TrialMode::Canary { percent: 10.0 });
        assert_eq!(rules.window, 50);
        assert_eq!(s, settings(&[("load-weight", "8")]));
        let mut s = settings(&[("locus.shadow", "true")]);
        assert_eq!(take_trial_settings(&mut s).unwrap().unwrap().0, TrialMode::Shadow);
        let mut s = settings(&[("k", "v")]);
        assert_eq!(take_trial_settings(&mut s).unwrap(), None);
        for (k, v) in [
            ("locus.canary", "0"),
            ("locus.canary", "101"),
            ("locus.canary", "ten"),
            ("locus.shadow", "maybe"),
            ("locus.window", "0"),
            ("locus.error-margin", "-1"),
            ("locus.ttft-margin", "NaN"),
            ("locus.canery", "10"),
        ] {
            let e = take_trial_settings(&mut settings(&[(k, v)])).unwrap_err();
            assert_eq!(e.param, k, "{k}={v}");
        }
        let e = take_trial_settings(&mut settings(&[
            ("locus.canary", "5"),
            ("locus.window", "10"),
            ("locus.min-requests", "11"),
        ]))
        .unwrap_err();
        assert_eq!(e.param, "locus.min-requests");
        // A window below the default minimum names the window.
        let e =
            take_trial_settings(&mut settings(&[("locus.canary", "5"), ("locus.window", "10")]))
                .unwrap_err();
        assert_eq!(e.param, "locus.window");
        // A rule without a trial, or two modes, is refused rather than swapped in.
        let e = take_trial_settings(&mut settings(&[("locus.window", "50")])).unwrap_err();
        assert_eq!(e.param, "locus.window");
        let e =
            take_trial_settings(&mut settings(&[("locus.canary", "5"), ("locus.shadow", "true")]))
                .unwrap_err();
        assert_eq!(e.param, "locus.shadow");
        // The slot's own host setting stays with the policy's.
        let mut s = settings(&[("locus.instances", "1"), ("locus.shadow", "1")]);
        assert!(take_trial_settings(&mut s).unwrap().is_some());
        assert_eq!(s, settings(&[("locus.instances", "1")]));
    }
}
