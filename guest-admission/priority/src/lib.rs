//! Strict priority bands, with aging so that nothing starves and slots kept for the top
//! band.
//!
//! The next request is the oldest of the highest band waiting. A request's band rises by
//! one for every `aging-s` seconds it has waited (up to the top band, 3), so a batch job
//! still moves when interactive traffic never stops. While no more than `reserved` dispatch
//! slots are free, only a top-band request may take one: interactive requests find room
//! even while batch work fills the cluster (never more than all slots but one are kept, so
//! a small cluster still serves the lower bands). By default one slot in 8 is kept (6 of
//! 48 for three workers that batch 16), since a single kept slot serves one interactive
//! request at a time, and batch work frees slots only as fast as its long requests end.
//!
//! Ceilings: while the cluster is saturated (more dispatched and waiting than it has
//! slots), a band below the top may fill at most half of the host's cap for it; past that
//! it is refused as `contention`, which keeps queue places for the top band.
//!
//! A request that has aged above its band is sent ahead of its band's others in the worker
//! too (the worker still keeps it below the higher bands).
//!
//! Settings: `aging-s` (default 30; 0 turns aging off), `reserved` (a count of slots;
//! default: one in 8 of the cluster's slots, at least 1).

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
    /// `None`: one in 8 of the slots.
    reserved: Option<u32>,
    waiting: Vec<Waiting>,
    seq: u64,
}

impl Default for Bands {
    fn default() -> Self {
        Self { aging_ms: 30_000, reserved: None, waiting: Vec::new(), seq: 0 }
    }
}

impl Bands {
    /// Parses `key=value` settings; `locus.*` keys are the host's.
    pub fn configure(settings: &[(String, String)]) -> Result<Self, String> {
        let mut b = Self::default();
        for (k, v) in settings {
            match k.as_str() {
                "aging-s" => {
                    let s: f64 =
                        v.parse().ok().filter(|s: &f64| *s >= 0.0 && s.is_finite()).ok_or_else(
                            || format!("`aging-s` must be 0 or more seconds, not `{v}`"),
                        )?;
                    b.aging_ms = (s * 1000.0) as u64;
                }
                "reserved" => {
                    b.reserved = Some(
                        v.parse().map_err(|_| format!("`reserved` must be a count, not `{v}`"))?,
                    )
                }
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
        self.seq += 1;
        self.waiting.push(Waiting { id: a.id, band, arrived_ms: a.arrived_ms, seq: self.seq });
        Ok(())
    }

    /// The oldest request of the highest effective band that may take a free slot, and
    /// whether it has aged above its band (then its worker serves it ahead of the band).
    pub fn pick(&mut self, s: &Saturation) -> Option<(u64, bool)> {
        let reserved = self.reserved.unwrap_or((s.total_slots / 8).max(1));
        let reserved = reserved.min(s.total_slots.saturating_sub(1));
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
    fn the_last_free_slot_is_kept_for_the_top_band() {
        let mut b = Bands::default();
        b.arrive(&arrival(1, 1, 0), &sat(0, 1, 8)).unwrap();
        assert_eq!(b.pick(&sat(0, 1, 8)), None, "one slot free: kept for band 3");
        assert_eq!(b.pick(&sat(0, 2, 8)), Some((1, false)));
        b.arrive(&arrival(2, 3, 0), &sat(0, 1, 8)).unwrap();
        assert_eq!(b.pick(&sat(0, 1, 8)), Some((2, false)));
        // A cluster of one slot does not keep it.
        b.arrive(&arrival(3, 0, 0), &sat(0, 1, 1)).unwrap();
        assert_eq!(b.pick(&sat(0, 1, 1)), Some((3, false)));
        // One in 8 by default: 3 of 24 kept; a setting names the count.
        b.arrive(&arrival(4, 0, 0), &sat(0, 3, 24)).unwrap();
        assert_eq!(b.pick(&sat(0, 3, 24)), None);
        assert_eq!(b.pick(&sat(0, 4, 24)), Some((4, false)));
        let mut b = Bands::configure(&[("reserved".into(), "1".into())]).unwrap();
        b.arrive(&arrival(5, 0, 0), &sat(0, 2, 24)).unwrap();
        assert_eq!(b.pick(&sat(0, 2, 24)), Some((5, false)));
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
