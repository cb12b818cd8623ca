//! The policy guests built from source by `build.rs`: the built-ins' bytes, and the paths
//! of the test-only guests that tests load.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
