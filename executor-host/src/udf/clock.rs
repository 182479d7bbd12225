//! Time a guest spends waiting in the host counts against its call's time
//! limit. The epoch deadline stops Wasm code, but a guest blocked in a host
//! call (`std::thread::sleep` is WASI's monotonic-clock `subscribe-duration`
//! plus a poll) runs no Wasm code to stop. So the driver's linker replaces the
//! two `subscribe-*` functions: a wait that would pass the call's deadline
//! ends at the deadline at the latest, and the call's epoch deadline is moved
//! to now, so the guest stops as soon as it runs Wasm code again (before the
//! wait, in practice) with the time limit's error.

use std::time::{Duration, Instant};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{HostMonotonicClock, ResourceTable};

/// The WASI version whose clock functions are replaced (the one wasmtime-wasi links).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// The guest's monotonic clock: nanoseconds since `start`, so an instant the
/// guest names can be turned back into a wait.
#[derive(Clone, Copy, Debug)]
pub struct GuestClock {
    pub start: Instant,
}

impl GuestClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl HostMonotonicClock for GuestClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.now_ns()
    }
}

/// What the clock functions need from a store's data.
pub trait Deadlined: Send + 'static {
    fn table(&mut self) -> &mut ResourceTable;
    fn clock(&self) -> GuestClock;
    /// When the running call must end.
    fn deadline(&self) -> Instant;
}

/// A wait that ends at its own end or at the call's deadline, whichever is first.
struct CappedWait {
    until: tokio::time::Instant,
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedWait {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.until).await;
    }
}

/// A pollable for a wait of `duration`, ending at the call's deadline at the latest.
fn wait<T: Deadlined>(
    mut store: StoreContextMut<'_, T>,
    duration: Duration,
) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let data = store.data_mut();
    let deadline = data.deadline();
    let wanted = Instant::now() + duration;
    let until = tokio::time::Instant::from_std(wanted.min(deadline));
    let table = data.table();
    let pollable = table.push(CappedWait { until })?;
    let pollable = subscribe(table, pollable)?;
    if wanted > deadline {
        // The wait would outlast the call: stop the guest at its next Wasm instruction check.
        store.set_epoch_deadline(0);
    }
    Ok((pollable,))
}

/// Replace `subscribe-duration` and `subscribe-instant` in a linker that already holds WASI.
pub fn add_capped_waits<T: Deadlined>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |store, (nanos,): (u64,)| wait(store, Duration::from_nanos(nanos)))?;
    clock.func_wrap("subscribe-instant", |store: StoreContextMut<'_, T>, (when,): (u64,)| {
        let now = store.data().clock().now_ns();
        wait(store, Duration::from_nanos(when.saturating_sub(now)))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}
