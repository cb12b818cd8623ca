//! First in, first out: the waiting request that arrived first goes next, whoever sent it
//! and whatever band it asked for. Refuses nothing (the host's caps still apply). This is
//! the router's default order, and what it did before it had a queue.
//!
//! Settings: none (`locus.*` keys are the host's).

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;
use std::collections::VecDeque;

wit_bindgen::generate!({ world: "admission", path: "../../wit" });

/// The waiting requests in arrival order.
#[derive(Default)]
pub struct Fifo {
    waiting: VecDeque<u64>,
}

impl Fifo {
    /// Queues `id` last.
    pub fn arrive(&mut self, id: u64) {
        self.waiting.push_back(id);
    }

    /// Takes the first waiting id.
    pub fn pick(&mut self) -> Option<u64> {
        self.waiting.pop_front()
    }

    /// Forgets `id` (it left without a worker).
    pub fn abandon(&mut self, id: u64) {
        self.waiting.retain(|w| *w != id);
    }
}

thread_local! {
    static FIFO: RefCell<Fifo> = RefCell::new(Fifo::default());
}

struct Policy;

impl Guest for Policy {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        if let Some((k, _)) = settings.iter().find(|(k, _)| !k.starts_with("locus.")) {
            return Err(format!("unknown setting `{k}`: fifo takes none"));
        }
        FIFO.set(Fifo::default());
        Ok(())
    }

    fn arrive(a: Arrival, _s: Saturation) -> Result<(), Refusal> {
        FIFO.with_borrow_mut(|f| f.arrive(a.id));
        Ok(())
    }

    fn pick(_s: Saturation) -> Option<Choice> {
        FIFO.with_borrow_mut(Fifo::pick).map(|id| Choice { id, ahead: false })
    }

    fn dispatched(_id: u64, _uncached: Option<u32>) {}

    fn usage(_id: u64, _tokens: u32) {}

    fn completed(_id: u64, _generated: Option<u32>) {}

    fn abandoned(id: u64, _reason: AbandonReason) {
        FIFO.with_borrow_mut(|f| f.abandon(id));
    }

    fn served(_tenant: String, _input: u64, _output: u64) {}
}

export!(Policy);

#[cfg(test)]
mod tests {
    use super::Fifo;

    #[test]
    fn first_in_first_out_and_abandoned_ones_are_skipped() {
        let mut f = Fifo::default();
        for id in [7, 3, 9, 1] {
            f.arrive(id);
        }
        f.abandon(9);
        assert_eq!([f.pick(), f.pick(), f.pick(), f.pick()], [Some(7), Some(3), Some(1), None]);
    }
}
