//! Test-only router policy that misbehaves on demand, to exercise the host's sandbox.
//!
//! Settings:
//! - `index=N`: the answer when not faulting (default 0), modulo the number of workers;
//! - `fault=trap|loop|alloc|error|bad-index|configure|none` (default none);
//! - `trigger=always|marked` (default marked): fault on every call, or only when the prompt
//!   starts with `FAULT` (so that the load-time smoke call passes and the fault happens
//!   while serving).

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;

wit_bindgen::generate!({ world: "router", path: "../../../../wit/0.1.0" });

#[derive(Default)]
struct Config {
    index: u32,
    fault: String,
    always: bool,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

fn fixed(index: u32, workers: &Workers) -> u32 {
    index % (workers.ids.len().max(1) as u32)
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

    fn route(req: Request, workers: Workers) -> Result<u32, String> {
        let (index, fault) = CONFIG.with_borrow(|c| {
            let now = c.always || req.prompt.starts_with("FAULT");
            (c.index, if now { c.fault.clone() } else { String::new() })
        });
        match fault.as_str() {
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
            "bad-index" => Ok(workers.ids.len() as u32 + 7),
            _ => Ok(fixed(index, &workers)),
        }
    }

    fn observe(_done: Completion) {}
}

export!(Faulty);
