//! Test-only admission policy: first in, first out, until a request of the tenant `FAULT`
//! waits; then `pick` misbehaves as set, so the host's fallback and fault rules are
//! exercised while serving (the load-time smoke call passes).
//!
//! Settings: `fault=trap|loop|bad-pick` (default trap).

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;
use std::collections::VecDeque;

wit_bindgen::generate!({ world: "admission", path: "../../../../wit" });

#[derive(Default)]
struct State {
    fault: String,
    waiting: VecDeque<(u64, bool)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Faulty;

impl Guest for Faulty {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        let mut fault = "trap".to_string();
        for (k, v) in settings {
            if k == "fault" {
                fault = v;
            }
        }
        STATE.set(State { fault, waiting: VecDeque::new() });
        Ok(())
    }

    fn arrive(a: Arrival, _s: Saturation) -> Result<(), Refusal> {
        STATE.with_borrow_mut(|s| s.waiting.push_back((a.id, a.tenant == "FAULT")));
        Ok(())
    }

    fn pick(_s: Saturation) -> Option<Choice> {
        let (front, marked, fault) = STATE.with_borrow(|s| {
            (s.waiting.front().map(|w| w.0), s.waiting.iter().any(|w| w.1), s.fault.clone())
        });
        if marked {
            match fault.as_str() {
                "loop" => {
                    let mut x: u64 = 1;
                    loop {
                        x = std::hint::black_box(x.wrapping_mul(3));
                    }
                }
                "bad-pick" => return Some(Choice { id: u64::MAX, ahead: false }),
                _ => panic!("pick panicked on purpose"),
            }
        }
        STATE.with_borrow_mut(|s| s.waiting.pop_front());
        front.map(|id| Choice { id, ahead: false })
    }

    fn dispatched(_id: u64, _uncached: Option<u32>) {}

    fn usage(_id: u64, _tokens: u32) {}

    fn completed(_id: u64, _generated: Option<u32>) {}

    fn abandoned(id: u64, _reason: AbandonReason) {
        STATE.with_borrow_mut(|s| s.waiting.retain(|w| w.0 != id));
    }

    fn served(_tenant: String, _input: u64, _output: u64) {}
}

export!(Faulty);
