//! Strict priority bands, with aging so that nothing starves and slots kept for the top
//! band.
//!
//! The next request is the oldest of the highest band waiting. A request's band rises by
//! one for every `aging-s` seconds it has waited (up to the top band, 3), so a batch job
//! still moves when interactive traffic never stops. While no more than `reserved` dispatch
//! slots are free, only a top-band request may take one: interactive requests find room
//! even while batch work fills the cluster (never more than all slots but one are kept, so
//! a small cluster still serves the lower bands). By default one slot in 4 is kept (12 of
//! 48 for three workers that batch 16): interactive requests hold their slots for their
//! whole life, which beside batch work's prompt chunks is seconds, and batch work frees
//! slots only as fast as its long requests end; one in 8 left interactive requests waiting
//! for a slot in two of three rounds of the bands benchmark (BENCHMARKS.md). Slots are kept
//! only while the top band is in use: a top-band request arrived within the last
//! `reserve-window-s`, or one waits, so batch work alone has every slot.
//!
//! Ceilings: while the cluster is saturated (more dispatched and waiting than it has
//! slots), a band below the top may fill at most half of the host's cap for it; past that
//! it is refused as `contention`, which keeps queue places for the top band.
//!
//! A request that has aged above its band is sent ahead of its band's others in the worker
//! too (the worker still keeps it below the higher bands).
//!
//! Settings: `aging-s` (default 30; 0 turns aging off), `reserved` (a count of slots;
//! default: one in 4 of the cluster's slots, at least 1), `reserve-window-s` (default 10).

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;

wit_bindgen::generate!({ world: "admission", path: "../../wit" });

use locus::policy::admission_types::RefusalKind;

/// The top band.
pub const TOP: u8 = 3;

/// A waiting request.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    id: u64,
    band: u8,
    arrived_ms: u64,
    seq: u64,
}

/// Strict bands with aging and reserved slots.
pub struct Bands {
    aging_ms: u64,
    /// `None`: one in 4 of the slots.
    reserved: Option<u32>,
    /// How long after a top-band arrival slots are still kept for the top band.
    reserve_window_ms: u64,
    /// When the last top-band request arrived.
    last_top_ms: Option<u64>,
    waiting: Vec<Waiting>,
    seq: u64,
}

impl Default for Bands {
    fn default() -> Self {
        Self {
            aging_ms: 30_000,
            reserved: None,
            reserve_window_ms: 10_000,
            last_top_ms: None,
            waiting: Vec::new(),
            seq: 0,
        }
    }
}

/// Setting `key`'s value `v`, seconds (0 or more), in milliseconds.
fn millis(key: &str, v: &str) -> Result<u64, String> {
    let s: f64 = v
        .parse()
        .ok()
        .filter(|s: &f64| *s >= 0.0 && s.is_finite())
        .ok_or_else(|| format!("`{key}` must be 0 or more seconds, not `{v}`"))?;
    Ok((s * 1000.0) as u64)
}

impl Bands {
    /// Parses `key=value` settings; `locus.*` keys are the host's.
    pub fn configure(settings: &[(String, String)]) -> Result<Self, String> {
        let mut b = Self::default();
        for (k, v) in settings {
            match k.as_str() {
                "aging-s" => b.aging_ms = millis(k, v)?,
                "reserved" => {
                    b.reserved = Some(
                        v.parse().map_err(|_| format!("`reserved` must be a count, not `{v}`"))?,
                    )
                }
                "reserve-window-s" => b.reserve_window_ms = millis(k, v)?,
                k if k.starts_with("locus.") => {}
                k => return Err(format!("unknown setting `{k}`")),
            }
        }
        Ok(b)
    }

    /// The band `w` counts as at `now_ms`.
    fn effective(&self, w: &Waiting, now_ms: u64) -> u8 {
        if self.aging_ms == 0 {
            return w.band;
        }
        let steps = now_ms.saturating_sub(w.arrived_ms) / self.aging_ms;
        (u64::from(w.band) + steps).min(u64::from(TOP)) as u8
    }

    /// Queues `a`, or refuses it past its band's ceiling under saturation.
    pub fn arrive(&mut self, a: &Arrival, s: &Saturation) -> Result<(), String> {
        let band = a.priority.min(TOP);
        let b = usize::from(band);
        let (queued, cap) =
            (s.queued.get(b).copied().unwrap_or(0), s.band_caps.get(b).copied().unwrap_or(0));
        if band < TOP && s.level > 1.0 && cap > 0 && queued.saturating_mul(2) >= cap {
            return Err(format!(
                "band {band} holds {queued} waiting requests, its ceiling while the cluster is \
                 saturated"
            ));
        }
        if band == TOP {
            self.last_top_ms = Some(self.last_top_ms.map_or(a.arrived_ms, |t| t.max(a.arrived_ms)));
        }
        self.seq += 1;
        self.waiting.push(Waiting { id: a.id, band, arrived_ms: a.arrived_ms, seq: self.seq });
        Ok(())
    }

    /// The oldest request of the highest effective band that may take a free slot, and
    /// whether it has aged above its band (then its worker serves it ahead of the band).
    pub fn pick(&mut self, s: &Saturation) -> Option<(u64, bool)> {
        let top_in_use = self.waiting.iter().any(|w| w.band == TOP)
            || self
                .last_top_ms
                .is_some_and(|t| s.now_ms.saturating_sub(t) <= self.reserve_window_ms);
        let reserved = self.reserved.unwrap_or((s.total_slots / 4).max(1));
        let reserved = if top_in_use { reserved.min(s.total_slots.saturating_sub(1)) } else { 0 };
        let lower_may = s.free_slots > reserved;
        let (i, _) = self
            .waiting
            .iter()
            .enumerate()
            .map(|(i, w)| (i, (self.effective(w, s.now_ms), w.seq)))
            .filter(|(_, (band, _))| *band == TOP || lower_may)
            .max_by(|(_, (ba, sa)), (_, (bb, sb))| ba.cmp(bb).then(sb.cmp(sa)))?;
        let w = self.waiting.swap_remove(i);
        Some((w.id, self.effective(&w, s.now_ms) > w.band))
    }

    /// `id` left the queue without a worker.
    pub fn abandon(&mut self, id: u64) {
        self.waiting.retain(|w| w.id != id);
    }
}

thread_local! {
    static BANDS: RefCell<Bands> = RefCell::new(Bands::default());
}

struct Policy;

impl Guest for Policy {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        BANDS.set(Bands::configure(&settings)?);
        Ok(())
    }

    fn arrive(a: Arrival, s: Saturation) -> Result<(), Refusal> {
        BANDS
            .with_borrow_mut(|b| b.arrive(&a, &s))
            .map_err(|reason| Refusal { kind: RefusalKind::Contention, reason })
    }

    fn pick(s: Saturation) -> Option<Choice> {
        BANDS.with_borrow_mut(|b| b.pick(&s)).map(|(id, ahead)| Choice { id, ahead })
    }

    fn dispatched(_id: u64, _uncached: Option<u32>) {}

    fn usage(_id: u64, _tokens: u32) {}

    fn completed(_id: u64, _generated: Option<u32>) {}

    fn abandoned(id: u64, _reason: AbandonReason) {
        BANDS.with_borrow_mut(|b| b.abandon(id));
    }

    fn served(_tenant: String, _input: u64, _output: u64) {}
}

export!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(id: u64, band: u8, at: u64) -> Arrival {
        Arrival {
            id,
            tenant: String::new(),
            priority: band,
            input_tokens: None,
            uncached_tokens: None,
            max_tokens: 16,
            bytes: 100,
            arrived_ms: at,
        }
    }

    fn sat(now_ms: u64, free: u32, total: u32) -> Saturation {
        Saturation {
            now_ms,
            total_slots: total,
            free_slots: free,
            queued: vec![0; 4],
            band_caps: vec![100; 4],
            level: 0.5,
        }
    }

    #[test]
    fn the_higher_band_goes_first_then_the_older() {
        let mut b = Bands::default();
        for (id, band) in [(1, 0), (2, 2), (3, 1), (4, 2)] {
            b.arrive(&arrival(id, band, 0), &sat(0, 8, 8)).unwrap();
        }
        let order: Vec<_> = (0..4).filter_map(|_| b.pick(&sat(0, 8, 8))).collect();
        assert_eq!(order, [(2, false), (4, false), (3, false), (1, false)]);
    }

    #[test]
    fn aging_lifts_an_old_low_band_request_over_a_fresh_high_one() {
        let mut b = Bands::configure(&[("aging-s".into(), "10".into())]).unwrap();
        b.arrive(&arrival(1, 0, 0), &sat(0, 8, 8)).unwrap();
        b.arrive(&arrival(2, 2, 25_000), &sat(25_000, 8, 8)).unwrap();
        // At 25 s the band-0 request counts as band 2 and is older; aged above its band, it
        // goes ahead of its band in the worker too.
        assert_eq!(b.pick(&sat(25_000, 8, 8)), Some((1, true)));
        let mut b = Bands::configure(&[("aging-s".into(), "0".into())]).unwrap();
        b.arrive(&arrival(1, 0, 0), &sat(0, 8, 8)).unwrap();
        b.arrive(&arrival(2, 2, 25_000), &sat(25_000, 8, 8)).unwrap();
        assert_eq!(b.pick(&sat(1_000_000, 8, 8)), Some((2, false)));
    }

    #[test]
    fn the_last_free_slots_are_kept_for_the_top_band_while_it_is_in_use() {
        let mut b = Bands::default();
        // No top-band request seen yet: nothing is kept.
        b.arrive(&arrival(1, 1, 0), &sat(0, 1, 8)).unwrap();
        assert_eq!(b.pick(&sat(0, 1, 8)), Some((1, false)), "batch work alone has every slot");
        // A top-band request arrives (and is served): for the window, 2 of 8 are kept.
        b.arrive(&arrival(2, 3, 1_000), &sat(1_000, 8, 8)).unwrap();
        assert_eq!(b.pick(&sat(1_000, 8, 8)), Some((2, false)));
        b.arrive(&arrival(3, 1, 1_000), &sat(1_000, 2, 8)).unwrap();
        assert_eq!(b.pick(&sat(2_000, 2, 8)), None, "two slots free: kept for band 3");
        assert_eq!(b.pick(&sat(2_000, 3, 8)), Some((3, false)));
        b.arrive(&arrival(4, 1, 2_000), &sat(2_000, 2, 8)).unwrap();
        b.arrive(&arrival(5, 3, 2_000), &sat(2_000, 1, 8)).unwrap();
        assert_eq!(b.pick(&sat(2_000, 1, 8)), Some((5, false)));
        // The window (10 s) after the last top-band arrival ends: nothing kept.
        assert_eq!(b.pick(&sat(12_000, 2, 8)), None);
        assert_eq!(b.pick(&sat(12_001, 1, 8)), Some((4, false)));
        // A top-band request waiting keeps the slots whenever it arrived.
        b.arrive(&arrival(6, 3, 12_001), &sat(12_001, 0, 8)).unwrap();
        b.arrive(&arrival(7, 0, 12_001), &sat(12_001, 0, 8)).unwrap();
        assert_eq!(b.pick(&sat(100_000, 1, 8)), Some((6, false)));
        // A cluster of one slot does not keep it.
        b.arrive(&arrival(8, 3, 100_000), &sat(100_000, 1, 1)).unwrap();
        assert_eq!(b.pick(&sat(100_000, 1, 1)), Some((8, false)));
        // (7 has waited 88 s: aged two bands up, it goes ahead of its band.)
        assert_eq!(b.pick(&sat(100_000, 1, 1)), Some((7, true)));
        // One in 4 by default: 6 of 24 kept; settings name the count and the window.
        b.arrive(&arrival(9, 0, 100_000), &sat(100_000, 6, 24)).unwrap();
        assert_eq!(b.pick(&sat(100_000, 6, 24)), None);
        assert_eq!(b.pick(&sat(100_000, 7, 24)), Some((9, false)));
        let settings = [("reserved".into(), "1".into()), ("reserve-window-s".into(), "0".into())];
        let mut b = Bands::configure(&settings).unwrap();
        b.arrive(&arrival(10, 3, 0), &sat(0, 8, 24)).unwrap();
        assert_eq!(b.pick(&sat(0, 8, 24)), Some((10, false)));
        b.arrive(&arrival(11, 0, 0), &sat(0, 2, 24)).unwrap();
        assert_eq!(b.pick(&sat(0, 1, 24)), None, "window 0: kept at the arrival's instant");
        assert_eq!(b.pick(&sat(1, 1, 24)), Some((11, false)));
        assert!(Bands::configure(&[("reserve-window-s".into(), "-1".into())]).is_err());
    }

    #[test]
    fn lower_bands_stop_at_half_their_cap_under_saturation() {
        let mut b = Bands::default();
        let mut s = sat(0, 0, 8);
        s.level = 2.0;
        s.queued = vec![50, 0, 0, 50];
        assert!(b.arrive(&arrival(1, 0, 0), &s).unwrap_err().contains("band 0"));
        b.arrive(&arrival(2, 3, 0), &s).unwrap();
        s.level = 0.9;
        b.arrive(&arrival(3, 0, 0), &s).unwrap();
        assert!(Bands::configure(&[("reserved".into(), "x".into())]).is_err());
        assert!(Bands::configure(&[("nope".into(), "1".into())]).is_err());
    }
}
