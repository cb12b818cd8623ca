//! Test-only router policy that misbehaves on demand, to exercise the host's sandbox.
//!
//! Settings:
//! - `index=N`: the answer when not faulting (default 0): worker `N` modulo the list's
//!   length, or the next healthy one after it;
//! - `fault=trap|loop|alloc|error|bad-index|unhealthy|configure|none` (default none);
//! - `trigger=always|marked` (default marked): fault on every call, or only when the prompt
//!   starts with `FAULT` (so that the load-time smoke call passes and the fault happens
//!   while serving).

use std::cell::RefCell;

wit_bindgen::generate!({ world: "router", path: "../../../../wit" });

#[derive(Default, Clone)]
struct Config {
    index: u32,
    fault: String,
    always: bool,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

fn fixed(index: u32, workers: &[Worker]) -> u32 {
    let n = workers.len().max(1);
    (0..n)
        .map(|k| (index as usize + k) % n)
        .find(|&i| workers.get(i).is_some_and(|w| w.healthy))
        .unwrap_or(0) as u32
}

struct Faulty;

impl Guest for Faulty {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        let mut c = Config::default();
        for (k, v) in settings {
            match k.as_str() {
                "index" => c.index = v.parse().map_err(|_| format!("bad index `{v}`"))?,
                "fault" => c.fault = v,
                "trigger" => c.always = v == "always",
                _ => {}
            }
        }
        if c.fault == "configure" {
            return Err("configure refused on purpose".into());
        }
        CONFIG.set(c);
        Ok(())
    }

    fn route(req: Request, workers: Vec<Worker>) -> Result<u32, String> {
        let c = CONFIG.with_borrow(Clone::clone);
        if !(c.always || req.prompt.starts_with("FAULT")) {
            return Ok(fixed(c.index, &workers));
        }
        match c.fault.as_str() {
            "trap" => panic!("route panicked on purpose"),
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(3));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Reserved, not touched: the cap is reached fast, without a memset.
                    hoard.push(Vec::<u8>::with_capacity(1 << 20));
                    std::hint::black_box(&hoard);
                }
            }
            "error" => Err("route failed on purpose".into()),
            "bad-index" => Ok(workers.len() as u32 + 7),
            "unhealthy" => Ok(workers.iter().position(|w| !w.healthy).unwrap_or(0) as u32),
            _ => Ok(fixed(c.index, &workers)),
        }
    }

    fn observe(_done: Completion) {}
}

export!(Faulty);
