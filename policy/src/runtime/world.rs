//! What the runtime needs to know of a world (`router`, `cache`): how to type-check,
//! instantiate, configure and smoke-test a component, and what the host tells every
//! instance beside its calls.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::fault::Fault;
use super::sandbox::{Limits, State};

/// What the slot needs to know about a world: how to type-check, instantiate, configure
/// and smoke-test a component that claims to implement it.
pub(crate) trait World: Send + Sync + Sized + 'static {
    /// The world's name in `wit/`.
    const NAME: &'static str;
    /// Whether every instance must be the same one (the policy keeps state).
    const STATEFUL: bool;
    /// bindgen's pre-instantiated, type-checked component.
    type Pre: Send + Sync + 'static;
    /// bindgen's handle to an instance's exports.
    type Bindings: Send + 'static;

    fn pre(ip: InstancePre<State>) -> wasmtime::Result<Self::Pre>;
    fn instantiate(pre: &Self::Pre, store: &mut Store<State>) -> wasmtime::Result<Self::Bindings>;
    fn configure(
        b: &Self::Bindings,
        store: &mut Store<State>,
        settings: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>>;
    /// Calls every export on synthetic input.
    fn smoke(b: &Self::Bindings, store: &mut Store<State>) -> wasmtime::Result<Result<(), Fault>>;
    /// The version of the contract the component implements (`0.2.0`).
    fn version(pre: &Self::Pre) -> &'static str;
}

/// What the host tells every serving instance beside the calls it answers: the cache's
/// resident entries, the router's KV events. Instances are pooled, so each keeps a cursor
/// into the feed and is brought up to date right before its next call. Each call into the
/// guest gets its own deadline (`State::arm` with `limits`), as any other call does.
pub(crate) trait Feed<W: World>: Send + Sync {
    /// Tells a fresh instance the whole current state; returns its cursor.
    fn replay(
        &self,
        b: &W::Bindings,
        store: &mut Store<State>,
        limits: &Limits,
    ) -> wasmtime::Result<u64>;
    /// Tells an instance at `cursor` what happened since; returns its new cursor.
    fn catch_up(
        &self,
        b: &W::Bindings,
        store: &mut Store<State>,
        limits: &Limits,
        cursor: u64,
    ) -> wasmtime::Result<u64>;
}
