//! Fair share by tokens: the Virtual Token Counter (VTC) of Sheng et al., "Fairness in
//! Serving Large Language Models" (OSDI'24).
//!
//! Each tenant has a counter of the service it received, in weighted tokens divided by its
//! weight: charged `input-weight` × its prompt tokens when its request is picked, and
//! `output-weight` × each token it generates (as the router streams them, and the rest at
//! completion). The next request is the oldest one of the backlogged tenant with the lowest
//! counter, so backlogged tenants receive equal weighted service, and any tenant may use
//! what the others leave (work-conserving). A tenant that comes back from idle is lifted to
//! the lowest counter among those backlogged (to the last served tenant's when none is),
//! so idle time is not saved up as credit for a burst.
//!
//! A prompt whose tokens the router did not count is charged its body bytes / 4, an
//! estimate (GPT-2 averages about 4 bytes per token on English).
//!
//! Headroom: while no more than `headroom` dispatch slots are free, only a tenant under its
//! share may take one: holding fewer than its share of the slots (all slots divided among
//! the tenants waiting or running), or having received less weighted service than every
//! other busy tenant (the lowest counter: a tenant of short requests needs more slots than
//! one of long prompts for the same tokens, and slots alone would cap it at the long one's
//! count). VTC orders the queue, but a
//! tenant under its share still waits for a slot to free when a backlogged one has taken
//! them all, and slots free only as fast as requests end (tens of seconds each on a loaded
//! CPU worker); with a few slots kept, its request is dispatched on arrival. The cost is
//! those slots idle while nobody under share asks: one in 16 by default.
//!
//! Ahead: a request picked for a tenant under its share (as above, while another tenant is
//! busy) is sent ahead of its band's others in the worker. The worker
//! otherwise treats every dispatched request of a band alike: a victim dispatched at once
//! still waits there behind the prompts of the backlogged tenant's sixteen requests, and
//! its tokens come one per step of a batch whose steps those prompts' chunks lengthen. Ahead,
//! its prompt runs first and the others' chunks shrink while it decodes.
//!
//! Refusals: when a band's queue is at least half full, a tenant that already has its share
//! of the band's waiting places (the host's cap divided among the tenants waiting in the
//! band or running requests of it, itself included, and never less than 1) is refused as
//! `contention`; a tenant under its share, or with nothing waiting in the band, is never
//! refused by this policy. Counting the tenants that run requests, not only those waiting,
//! keeps places for a light tenant whose requests are dispatched as they come (so it
//! rarely has one waiting): otherwise a backlogged tenant would take every place, and the
//! light one's next arrival would meet the host's own cap. An
//! arrival the host counts as waiting already (a fresh instance being told the queue: the
//! host's count for the band exceeds this instance's) is always queued, since the host
//! ignores that answer and a refused one would never be picked.
//!
//! Charging: `input-weight` (default 1), `output-weight` (default 2, as VTC's paper),
//! `weight.<tenant>` (default 1; a tenant of weight 2 gets twice the service when both are
//! backlogged), `charge` = `input` (default) or `uncached` (charge only the prompt tokens
//! no worker holds, as the router predicts them: cache hits cost a tenant nothing),
//! `headroom` (a count of dispatch slots; default one in 16 of the cluster's, at least 1; 0
//! turns it off, and at most all slots but one are kept), `ahead` (`true`, the default, or
//! `false`: never send a request ahead).
//!
//! A fresh instance (after a swap or a fault) is told each tenant's tokens served and
//! starts its counters from them: the best it can know, since the previous policy's
//! counters (with their lifts) are its own.

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

wit_bindgen::generate!({ world: "admission", path: "../../wit" });

use locus::policy::admission_types::RefusalKind;

/// Tenants kept with a counter; past it, tenants with nothing waiting or running are
/// forgotten (an arrival lifts them to the backlogged minimum anyway), so that made-up
/// tenant names cannot exhaust the policy's memory.
pub const TENANTS_KEPT: usize = 4096;

/// How VTC charges (the settings).
#[derive(Debug, Clone)]
pub struct Charging {
    /// Weight of a prompt token.
    pub input_weight: f64,
    /// Weight of a generated token.
    pub output_weight: f64,
    /// Per-tenant weights (default 1).
    pub weights: BTreeMap<String, f64>,
    /// Charge only the prompt tokens no worker holds.
    pub charge_uncached: bool,
    /// Slots kept for tenants under their share; `None`: one in 16.
    pub headroom: Option<u32>,
    /// Send a tenant under its share ahead of its band in the worker.
    pub ahead: bool,
}

impl Default for Charging {
    fn default() -> Self {
        Self {
            input_weight: 1.0,
            output_weight: 2.0,
            weights: BTreeMap::new(),
            charge_uncached: false,
            headroom: None,
            ahead: true,
        }
    }
}

impl Charging {
    /// Parses `key=value` settings; `locus.*` keys are the host's.
    pub fn parse(settings: &[(String, String)]) -> Result<Self, String> {
        let mut s = Self::default();
        let weight = |k: &str, v: &str| match v.parse::<f64>() {
            Ok(w) if w > 0.0 && w.is_finite() => Ok(w),
            _ => Err(format!("`{k}` must be a number above 0, not `{v}`")),
        };
        for (k, v) in settings {
            match k.as_str() {
                "input-weight" => s.input_weight = weight(k, v)?,
                "output-weight" => s.output_weight = weight(k, v)?,
                "charge" => {
                    s.charge_uncached = match v.as_str() {
                        "input" => false,
                        "uncached" => true,
                        _ => return Err(format!("`charge` is `input` or `uncached`, not `{v}`")),
                    }
                }
                "headroom" => {
                    s.headroom = Some(
                        v.parse().map_err(|_| format!("`headroom` must be a count, not `{v}`"))?,
                    )
                }
                "ahead" => {
                    s.ahead =
                        v.parse().map_err(|_| format!("`ahead` is `true` or `false`, not `{v}`"))?
                }
                k if k.starts_with("weight.") => {
                    s.weights.insert(k["weight.".len()..].to_string(), weight(k, v)?);
                }
                k if k.starts_with("locus.") => {}
                k => return Err(format!("unknown setting `{k}`")),
            }
        }
        Ok(s)
    }

    fn weight(&self, tenant: &str) -> f64 {
        self.weights.get(tenant).copied().unwrap_or(1.0)
    }
}

/// A waiting request: its id, arrival sequence, band and prompt tokens to charge.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    id: u64,
    seq: u64,
    band: u8,
    tokens: u32,
}

/// A dispatched request: whose, its band, and the generated tokens charged so far.
struct Running {
    tenant: String,
    band: u8,
    charged: u32,
}

/// The Virtual Token Counter scheduler.
#[derive(Default)]
pub struct Vtc {
    settings: Charging,
    counters: BTreeMap<String, f64>,
    queues: BTreeMap<String, VecDeque<Waiting>>,
    tenant_of: BTreeMap<u64, String>,
    running: BTreeMap<u64, Running>,
    seq: u64,
    /// The tenant served last and its counter then, for a tenant arriving when none is
    /// backlogged (VTC lifts it to the last served tenant's counter).
    last_served: Option<(String, f64)>,
}

impl Vtc {
    /// A scheduler charging by `settings`.
    pub fn new(settings: Charging) -> Self {
        Self { settings, ..Self::default() }
    }

    /// A tenant's counter now.
    pub fn counter(&self, tenant: &str) -> f64 {
        self.counters.get(tenant).copied().unwrap_or(0.0)
    }

    fn backlogged(&self) -> impl Iterator<Item = (&String, &VecDeque<Waiting>)> {
        self.queues.iter().filter(|(_, q)| !q.is_empty())
    }

    fn charge(&mut self, tenant: &str, weighted: f64) {
        let w = self.settings.weight(tenant);
        *self.counters.entry(tenant.to_string()).or_insert(0.0) += weighted / w;
    }

    fn busy(&self, tenant: &str) -> bool {
        self.queues.get(tenant).is_some_and(|q| !q.is_empty())
            || self.running.values().any(|r| r.tenant == tenant)
    }

    /// The counter a tenant arriving when none is backlogged is lifted to: the last served
    /// tenant's, as it is now (as it was when served, if it has been forgotten since).
    fn last_served_counter(&self) -> f64 {
        self.last_served
            .as_ref()
            .map_or(0.0, |(t, then)| self.counters.get(t).map_or(*then, |c| c.max(*then)))
    }

    /// A request arrives: queued, or refused with the reason. `queued` and `caps` are the
    /// host's waiting counts and caps per band.
    pub fn arrive(&mut self, a: &Arrival, queued: &[u32], caps: &[u32]) -> Result<(), String> {
        let band = a.priority;
        let b = usize::from(band);
        let (in_band, cap) =
            (queued.get(b).copied().unwrap_or(0), caps.get(b).copied().unwrap_or(0));
        // Waiting in the band as this instance knows it, and per tenant.
        let mut known = 0u32;
        let mut mine = 0u32;
        let mut others: BTreeSet<&str> = BTreeSet::new();
        for (t, q) in self.backlogged() {
            let n = q.iter().filter(|w| w.band == band).count() as u32;
            known += n;
            if n > 0 && *t != a.tenant {
                others.insert(t);
            }
            if *t == a.tenant {
                mine = n;
            }
        }
        others.extend(
            self.running
                .values()
                .filter(|r| r.band == band && r.tenant != a.tenant)
                .map(|r| &*r.tenant),
        );
        let tenants = others.len() as u32;
        // Fewer known than the host counts: this is a fresh instance being told requests
        // already waiting, whose refusal the host ignores. Queue it.
        let replayed = known < in_band;
        if !replayed && cap > 0 && in_band.saturating_mul(2) >= cap {
            let share = (cap / (tenants + 1)).max(1);
            if mine >= share {
                return Err(format!(
                    "tenant `{}` has {mine} requests waiting in band {band}, its share of {share}",
                    a.tenant
                ));
            }
        }
        if !self.busy(&a.tenant) {
            // VTC's lift: no credit saved up while idle.
            let floor = self
                .backlogged()
                .map(|(t, _)| self.counter(t))
                .min_by(f64::total_cmp)
                .unwrap_or_else(|| self.last_served_counter());
            let c = self.counters.entry(a.tenant.clone()).or_insert(0.0);
            *c = c.max(floor);
        }
        if self.counters.len() > TENANTS_KEPT {
            let mut keep: BTreeSet<String> =
                self.running.values().map(|r| r.tenant.clone()).collect();
            keep.extend(self.backlogged().map(|(t, _)| t.clone()));
            keep.insert(a.tenant.clone());
            self.counters.retain(|t, _| keep.contains(t));
            self.queues.retain(|_, q| !q.is_empty());
        }
        let tokens = if self.settings.charge_uncached { a.uncached_tokens } else { a.input_tokens };
        let tokens = tokens.unwrap_or(a.bytes / 4);
        self.seq += 1;
        let w = Waiting { id: a.id, seq: self.seq, band, tokens };
        self.queues.entry(a.tenant.clone()).or_default().push_back(w);
        self.tenant_of.insert(a.id, a.tenant.clone());
        Ok(())
    }

    /// The oldest request of the backlogged tenant with the lowest counter, charged its
    /// prompt, and whether it goes ahead in its worker (its tenant holds less than its share
    /// of the slots while another tenant is busy); of `total` dispatch slots `free` are
    /// free, and the last `headroom` of them go only to a tenant holding less than its share.
    pub fn pick(&mut self, total: u32, free: u32) -> Option<(u64, bool)> {
        let headroom = self.settings.headroom.unwrap_or((total / 16).max(1));
        let tight = free <= headroom.min(total.saturating_sub(1));
        let mut held: BTreeMap<&str, u32> = BTreeMap::new();
        for r in self.running.values() {
            *held.entry(&r.tenant).or_default() += 1;
        }
        let mut busy_tenants: BTreeSet<&str> = held.keys().copied().collect();
        busy_tenants.extend(self.backlogged().map(|(t, _)| t.as_str()));
        let busy = busy_tenants.len();
        let share = total / (busy.max(1) as u32);
        // Under its share: fewer slots than its share, or less weighted service than every
        // other busy tenant (a tenant of cheap requests may need more slots than one of
        // costly ones to get its share of tokens).
        let least_served = |t: &str| {
            busy_tenants.iter().filter(|o| **o != t).all(|o| self.counter(t) < self.counter(o))
        };
        let under =
            |t: &str| held.get(t).copied().unwrap_or(0) < share || (busy > 1 && least_served(t));
        let tenant = self
            .backlogged()
            .filter(|(t, _)| !tight || under(t))
            .min_by(|(a, qa), (b, qb)| {
                self.counter(a)
                    .total_cmp(&self.counter(b))
                    .then(qa.front().map(|w| w.seq).cmp(&qb.front().map(|w| w.seq)))
            })
            .map(|(t, _)| t.clone())?;
        let ahead = self.settings.ahead && busy > 1 && under(&tenant);
        let w = self.queues.get_mut(&tenant)?.pop_front()?;
        self.tenant_of.remove(&w.id);
        self.charge(&tenant, self.settings.input_weight * f64::from(w.tokens));
        self.last_served = Some((tenant.clone(), self.counter(&tenant)));
        self.running.insert(w.id, Running { tenant, band: w.band, charged: 0 });
        Some((w.id, ahead))
    }

    /// `id` generated `tokens` more tokens.
    pub fn usage(&mut self, id: u64, tokens: u32) {
        let Some(r) = self.running.get_mut(&id) else { return };
        r.charged = r.charged.saturating_add(tokens);
        let tenant = r.tenant.clone();
        self.charge(&tenant, self.settings.output_weight * f64::from(tokens));
    }

    /// `id` ended having generated `generated` tokens: what usage did not charge is.
    pub fn completed(&mut self, id: u64, generated: Option<u32>) {
        let Some(r) = self.running.remove(&id) else { return };
        let rest = generated.unwrap_or(0).saturating_sub(r.charged);
        if rest > 0 {
            self.charge(&r.tenant, self.settings.output_weight * f64::from(rest));
        }
    }

    /// `id` left the queue without a worker.
    pub fn abandon(&mut self, id: u64) {
        if let Some(t) = self.tenant_of.remove(&id)
            && let Some(q) = self.queues.get_mut(&t)
        {
            q.retain(|w| w.id != id);
        }
    }

    /// A fresh instance learns what `tenant` was served.
    pub fn served(&mut self, tenant: &str, input: u64, output: u64) {
        let weighted =
            self.settings.input_weight * input as f64 + self.settings.output_weight * output as f64;
        let w = self.settings.weight(tenant);
        self.counters.insert(tenant.to_string(), weighted / w);
    }
}

thread_local! {
    static VTC: RefCell<Vtc> = RefCell::new(Vtc::default());
}

struct Policy;

impl Guest for Policy {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        VTC.set(Vtc::new(Charging::parse(&settings)?));
        Ok(())
    }

    fn arrive(a: Arrival, s: Saturation) -> Result<(), Refusal> {
        VTC.with_borrow_mut(|v| v.arrive(&a, &s.queued, &s.band_caps))
            .map_err(|reason| Refusal { kind: RefusalKind::Contention, reason })
    }

    fn pick(s: Saturation) -> Option<Choice> {
        VTC.with_borrow_mut(|v| v.pick(s.total_slots, s.free_slots))
            .map(|(id, ahead)| Choice { id, ahead })
    }

    fn dispatched(_id: u64, _uncached: Option<u32>) {}

    fn usage(id: u64, tokens: u32) {
        VTC.with_borrow_mut(|v| v.usage(id, tokens));
    }

    fn completed(id: u64, generated: Option<u32>) {
        VTC.with_borrow_mut(|v| v.completed(id, generated));
    }

    fn abandoned(id: u64, _reason: AbandonReason) {
        VTC.with_borrow_mut(|v| v.abandon(id));
    }

    fn served(tenant: String, input: u64, output: u64) {
        VTC.with_borrow_mut(|v| v.served(&tenant, input, output));
    }
}

export!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(id: u64, tenant: &str, tokens: u32) -> Arrival {
        Arrival {
            id,
            tenant: tenant.into(),
            priority: 1,
            input_tokens: Some(tokens),
            uncached_tokens: Some(tokens / 2),
            max_tokens: 16,
            bytes: tokens * 4,
            arrived_ms: 0,
        }
    }

    const NO_CAP: [u32; 4] = [0; 4];

    /// A pick with every slot of a large cluster free.
    fn pick(v: &mut Vtc) -> Option<u64> {
        v.pick(1000, 1000).map(|(id, _)| id)
    }

    #[test]
    fn the_backlogged_tenant_with_the_lower_counter_goes_first() {
        let mut v = Vtc::new(Charging::default());
        // A heavy tenant with long prompts, a light one with short ones, both backlogged.
        for i in 0..4 {
            v.arrive(&arrival(i, "heavy", 800), &[0; 4], &NO_CAP).unwrap();
            v.arrive(&arrival(100 + i, "light", 50), &[0; 4], &NO_CAP).unwrap();
        }
        let order: Vec<u64> = std::iter::from_fn(|| pick(&mut v)).collect();
        // heavy's first prompt costs 800: light is served 4 times before heavy's second.
        assert_eq!(order, [0, 100, 101, 102, 103, 1, 2, 3]);
        assert_eq!(v.counter("heavy"), 3200.0);
        assert_eq!(v.counter("light"), 200.0);
    }

    #[test]
    fn a_tenant_back_from_idle_is_lifted_and_saves_no_credit() {
        let mut v = Vtc::new(Charging::default());
        for i in 0..10 {
            v.arrive(&arrival(i, "a", 100), &[0; 4], &NO_CAP).unwrap();
        }
        for _ in 0..5 {
            pick(&mut v);
        }
        assert_eq!(v.counter("a"), 500.0);
        // b arrives while a is backlogged: lifted to a's counter, then they alternate.
        for i in 0..3 {
            v.arrive(&arrival(100 + i, "b", 100), &[0; 4], &NO_CAP).unwrap();
        }
        assert_eq!(v.counter("b"), 500.0);
        let order: Vec<u64> = (0..6).filter_map(|_| pick(&mut v)).collect();
        assert_eq!(order, [5, 100, 6, 101, 7, 102]);
    }

    #[test]
    fn output_is_charged_once_through_usage_and_completion() {
        let s = Charging { output_weight: 2.0, ..Charging::default() };
        let mut v = Vtc::new(s);
        v.arrive(&arrival(1, "a", 10), &[0; 4], &NO_CAP).unwrap();
        assert_eq!(pick(&mut v), Some(1));
        v.usage(1, 3);
        v.usage(1, 2);
        assert_eq!(v.counter("a"), 10.0 + 10.0);
        // 8 generated in all: 3 more than usage told.
        v.completed(1, Some(8));
        assert_eq!(v.counter("a"), 10.0 + 16.0);
        // Told again, or of an unknown id: nothing.
        v.completed(1, Some(8));
        v.usage(1, 5);
        assert_eq!(v.counter("a"), 26.0);
    }

    #[test]
    fn a_tenant_of_weight_two_gets_twice_the_service() {
        let s = Charging::parse(&[("weight.gold".into(), "2".into())]).unwrap();
        let mut v = Vtc::new(s);
        for i in 0..30 {
            v.arrive(&arrival(i, "gold", 100), &[0; 4], &NO_CAP).unwrap();
            v.arrive(&arrival(100 + i, "plain", 100), &[0; 4], &NO_CAP).unwrap();
        }
        let picked: Vec<u64> = (0..30).filter_map(|_| pick(&mut v)).collect();
        let gold = picked.iter().filter(|id| **id < 100).count();
        assert_eq!((gold, 30 - gold), (20, 10));
    }

    #[test]
    fn only_a_tenant_past_its_share_is_refused() {
        let mut v = Vtc::new(Charging::default());
        let caps = [0, 8, 0, 0];
        for i in 0..4 {
            v.arrive(&arrival(i, "heavy", 100), &[0, i as u32, 0, 0], &caps).unwrap();
        }
        // The band is half full; heavy alone holds 4 of the 8 places: with a second tenant
        // its share is 4, so its 5th is refused, and the light tenant's requests are not.
        v.arrive(&arrival(50, "light", 10), &[0, 4, 0, 0], &caps).unwrap();
        let e = v.arrive(&arrival(5, "heavy", 100), &[0, 5, 0, 0], &caps).unwrap_err();
        assert!(e.contains("heavy") && e.contains("share of 4"), "{e}");
        v.arrive(&arrival(51, "light", 10), &[0, 5, 0, 0], &caps).unwrap();
        v.arrive(&arrival(52, "light", 10), &[0, 6, 0, 0], &caps).unwrap();
    }

    #[test]
    fn a_tenant_with_nothing_waiting_in_the_band_is_never_refused() {
        // A cap of 4 among 6 tenants rounds the share down to 0: it is 1 nonetheless.
        let mut v = Vtc::new(Charging::default());
        let caps = [0, 4, 0, 0];
        for (i, t) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            v.arrive(&arrival(i as u64, t, 10), &[0, i as u32, 0, 0], &caps).unwrap();
        }
        v.arrive(&arrival(9, "f", 10), &[0, 5, 0, 0], &caps).unwrap();
        let e = v.arrive(&arrival(10, "f", 10), &[0, 6, 0, 0], &caps).unwrap_err();
        assert!(e.contains("`f`") && e.contains("share of 1"), "{e}");
    }

    #[test]
    fn requests_the_host_already_counts_are_queued_even_past_the_share() {
        // A fresh instance is told the waiting requests with the host's last figure: its
        // refusals would be ignored, and a request it did not queue would never be picked.
        let mut v = Vtc::new(Charging::default());
        let caps = [0, 10, 0, 0];
        v.arrive(&arrival(0, "light", 10), &[0, 8, 0, 0], &caps).unwrap();
        for i in 1..8 {
            v.arrive(&arrival(i, "heavy", 10), &[0, 8, 0, 0], &caps).unwrap();
        }
        // Told them all, it judges live arrivals by the share again (10 / 2 tenants).
        let e = v.arrive(&arrival(8, "heavy", 10), &[0, 8, 0, 0], &caps).unwrap_err();
        assert!(e.contains("share of 5"), "{e}");
        assert_eq!(std::iter::from_fn(|| pick(&mut v)).count(), 8);
    }

    #[test]
    fn with_nobody_backlogged_an_arrival_is_lifted_to_the_last_served_tenant() {
        let mut v = Vtc::new(Charging::default());
        v.arrive(&arrival(1, "a", 300), &[0; 4], &NO_CAP).unwrap();
        assert_eq!(pick(&mut v), Some(1));
        v.usage(1, 50);
        // Nobody waits: b starts from a's counter as it is now (300 + 2 × 50).
        v.arrive(&arrival(2, "b", 10), &[0; 4], &NO_CAP).unwrap();
        assert_eq!(v.counter("b"), 400.0);
        // A tenant with a request still running is not lifted (it has not been idle).
        v.counters.insert("a".into(), 0.0);
        v.arrive(&arrival(3, "a", 10), &[0; 4], &NO_CAP).unwrap();
        assert_eq!(v.counter("a"), 0.0);
    }

    #[test]
    fn a_fresh_instance_starts_from_the_tokens_served() {
        let s = Charging::parse(&[("weight.gold".into(), "2".into())]).unwrap();
        let mut v = Vtc::new(s);
        // (input + 2 × output) / weight.
        v.served("gold", 1000, 500);
        assert_eq!(v.counter("gold"), 1000.0);
        // b (never served) waits; gold arrives above b's counter and is not lowered, so b's
        // later request still goes before gold's.
        v.arrive(&arrival(1, "b", 10), &[0; 4], &NO_CAP).unwrap();
        v.arrive(&arrival(2, "gold", 10), &[0; 4], &NO_CAP).unwrap();
        v.arrive(&arrival(3, "b", 10), &[0; 4], &NO_CAP).unwrap();
        assert_eq!(std::iter::from_fn(|| pick(&mut v)).collect::<Vec<_>>(), [1, 3, 2]);
    }

    #[test]
    fn the_last_free_slots_go_to_a_tenant_under_its_share() {
        let mut v = Vtc::new(Charging::default());
        // heavy runs 10 requests, light 2; heavy's counter is the lower one.
        for i in 0..10 {
            v.arrive(&arrival(i, "heavy", 10), &[0; 4], &NO_CAP).unwrap();
        }
        for i in 0..2 {
            v.arrive(&arrival(100 + i, "light", 100), &[0; 4], &NO_CAP).unwrap();
        }
        assert_eq!(std::iter::from_fn(|| pick(&mut v)).count(), 12);
        v.arrive(&arrival(10, "heavy", 10), &[0; 4], &NO_CAP).unwrap();
        v.arrive(&arrival(11, "heavy", 10), &[0; 4], &NO_CAP).unwrap();
        v.arrive(&arrival(102, "light", 100), &[0; 4], &NO_CAP).unwrap();
        assert!(v.counter("heavy") < v.counter("light"));
        // 16 slots, 2 free: above the headroom of 1, VTC's order (heavy first). heavy holds
        // 10, past its share of 8 slots, but has received less service than light: ahead.
        assert_eq!(v.pick(16, 2), Some((10, true)));
        // 1 free: heavy, still the least served, may take it; it goes first by counter.
        assert_eq!(v.pick(16, 1), Some((11, true)));
        // heavy's tokens make it the more served: past its slot share, it may not take the
        // last slot; light (2 slots, under its share) takes it, and goes ahead.
        v.usage(11, 50);
        v.arrive(&arrival(12, "heavy", 10), &[0; 4], &NO_CAP).unwrap();
        assert!(v.counter("heavy") > v.counter("light"));
        assert_eq!(v.pick(16, 1), Some((102, true)));
        // Only heavy waits, past its share and served more: the last slot stays free.
        v.usage(11, 100);
        assert!(v.counter("heavy") > v.counter("light"));
        assert_eq!(v.pick(16, 1), None);
        // Headroom 0 keeps nothing; a tenant alone is never held back, nor sent ahead.
        let mut off = Vtc::new(Charging::parse(&[("headroom".into(), "0".into())]).unwrap());
        off.arrive(&arrival(1, "a", 10), &[0; 4], &NO_CAP).unwrap();
        off.arrive(&arrival(2, "b", 10), &[0; 4], &NO_CAP).unwrap();
        assert_eq!(off.pick(2, 1), Some((1, true)));
        assert_eq!(off.pick(2, 1), Some((2, true)));
        let mut alone = Vtc::new(Charging::default());
        for i in 0..3 {
            alone.arrive(&arrival(i, "a", 10), &[0; 4], &NO_CAP).unwrap();
        }
        assert_eq!(
            (alone.pick(3, 3), alone.pick(3, 2), alone.pick(3, 1)),
            (Some((0, false)), Some((1, false)), Some((2, false)))
        );
    }

    #[test]
    fn the_least_served_tenant_takes_the_last_slots_past_its_slot_share() {
        // light's requests are short, heavy's prompts long: light runs more requests (12 of
        // 16 slots, past its share of 8) yet has received less service; the last free slot
        // is its, and it goes ahead.
        let mut v = Vtc::new(Charging::default());
        for i in 0..12 {
            v.arrive(&arrival(100 + i, "light", 10), &[0; 4], &NO_CAP).unwrap();
        }
        for i in 0..3 {
            v.arrive(&arrival(i, "heavy", 500), &[0; 4], &NO_CAP).unwrap();
        }
        assert_eq!(std::iter::from_fn(|| pick(&mut v)).count(), 15);
        v.arrive(&arrival(3, "heavy", 500), &[0; 4], &NO_CAP).unwrap();
        v.arrive(&arrival(112, "light", 10), &[0; 4], &NO_CAP).unwrap();
        assert!(v.counter("light") < v.counter("heavy"));
        assert_eq!(v.pick(16, 1), Some((112, true)));
        // heavy (3 slots, under its share) takes the next; light, past its slot share and
        // no longer the least served, waits for room.
        v.arrive(&arrival(113, "light", 10), &[0; 4], &NO_CAP).unwrap();
        v.usage(112, 700);
        assert!(v.counter("light") > v.counter("heavy"));
        assert_eq!(v.pick(17, 1), Some((3, true)));
    }

    #[test]
    fn a_tenant_running_requests_keeps_its_share_of_the_waiting_places() {
        let mut v = Vtc::new(Charging::default());
        let caps = [0, 8, 0, 0];
        // light's request was dispatched at once: it waits for nothing, but runs in band 1.
        v.arrive(&arrival(100, "light", 10), &[0; 4], &caps).unwrap();
        assert_eq!(pick(&mut v), Some(100));
        for i in 0..4 {
            v.arrive(&arrival(i, "heavy", 10), &[0, i as u32, 0, 0], &caps).unwrap();
        }
        // The band is half full; heavy's share is 8 / 2, not the whole band.
        let e = v.arrive(&arrival(4, "heavy", 10), &[0, 4, 0, 0], &caps).unwrap_err();
        assert!(e.contains("share of 4"), "{e}");
        // Once light's request ends, heavy may fill the band.
        v.completed(100, Some(16));
        v.arrive(&arrival(5, "heavy", 10), &[0, 4, 0, 0], &caps).unwrap();
    }

    #[test]
    fn uncached_charging_and_settings_errors() {
        let s = Charging::parse(&[("charge".into(), "uncached".into())]).unwrap();
        let mut v = Vtc::new(s);
        v.arrive(&arrival(1, "a", 100), &[0; 4], &NO_CAP).unwrap();
        pick(&mut v);
        assert_eq!(v.counter("a"), 50.0);
        for bad in [
            ("charge", "all"),
            ("weight.x", "0"),
            ("input-weight", "-1"),
            ("headroom", "-1"),
            ("ahead", "yes"),
            ("typo", "1"),
        ] {
            assert!(Charging::parse(&[(bad.0.into(), bad.1.into())]).is_err(), "{bad:?}");
        }
        assert!(Charging::parse(&[("locus.instance".into(), "0".into())]).is_ok());
        // `ahead=false`: a tenant under its share is still picked, never sent ahead.
        let mut v = Vtc::new(Charging::parse(&[("ahead".into(), "false".into())]).unwrap());
        v.arrive(&arrival(1, "a", 10), &[0; 4], &NO_CAP).unwrap();
        v.arrive(&arrival(2, "b", 10), &[0; 4], &NO_CAP).unwrap();
        assert_eq!(v.pick(2, 2), Some((1, false)));
    }
}
