//! Test-only component that exports a `route` of the wrong type and no `configure`:
//! a valid component that does not implement locus's router world.

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    inline: "
        package test:wrong;
        world wrong {
            export route: func(x: u32) -> u32;
        }
    ",
});

struct Wrong;

impl Guest for Wrong {
    fn route(x: u32) -> u32 {
        x
    }
}

export!(Wrong);
