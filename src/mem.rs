//! Giving freed memory back to the system after rare, large work (loading a policy set).
//!
//! The binary's allocator decides how: `obsgate` (mimalloc) registers a hook that collects the
//! calling thread's heap; in tests and benches (the system allocator) nothing is registered.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Registers how freed memory is returned (once; later calls are ignored).
pub fn set_release_hook(f: fn()) {
    let _ = RELEASE.set(f);
}

/// Returns this thread's freed memory to the system, if the allocator can.
pub fn release() {
    if let Some(f) = RELEASE.get() {
        f();
    }
}
