//! Engine settings and the epoch ticker behind wall-clock deadlines.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{Config, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::SandboxOptions;
use crate::config::Limits;

/// Upper bounds per component instance in the pool. A componentize-py
/// component has a handful of core instances and memories; these leave room.
const CORE_INSTANCES_PER_COMPONENT: u32 = 64;
const MEMORIES_PER_COMPONENT: u32 = 8;
pub(crate) const TABLES_PER_COMPONENT: u32 = 16;

/// Fiber stack on top of `max_stack_bytes` for the host code that runs on it
/// (WASI implementations, lifting and lowering). wasmtime's own default
/// leaves 1.5 MiB (2 MiB stack, 512 KiB wasm); this leaves 2 MiB whatever
/// `max_stack_bytes` is. Only touched pages are committed.
pub const HOST_STACK_HEADROOM: usize = 2 << 20;

/// Bytes of each table slot reset with memset rather than madvise.
pub(crate) const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// One engine per function: fuel metering and the memory cap are compiled into
/// the code and the pool, so they cannot differ between functions sharing one.
pub fn build(limits: &Limits, opts: &SandboxOptions) -> wasmtime::Result<Engine> {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    c.consume_fuel(limits.fuel.is_some());
    c.max_wasm_stack(limits.max_stack_bytes);
    // Wasm runs on this fiber stack, never on the sandbox thread's own, so
    // `max_stack_bytes` up to config::MAX_STACK_BYTES is safe on any thread.
    c.async_stack_size(limits.max_stack_bytes.saturating_add(HOST_STACK_HEADROOM));
    c.parallel_compilation(true);
    if opts.pooling {
        let instances = pool_instances(opts.max_instances);
        let mut p = PoolingAllocationConfig::default();
        p.total_component_instances(instances)
            .total_core_instances(instances * CORE_INSTANCES_PER_COMPONENT)
            .total_memories(instances * MEMORIES_PER_COMPONENT)
            .total_tables(instances * TABLES_PER_COMPONENT)
            // One fiber stack per instance slot: every call runs on one.
            // Stacks are not zeroed between uses (wasmtime's default), so a
            // reused pooled stack costs no syscall and
            // `async_stack_keep_resident` has nothing to do.
            .total_stacks(instances)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .max_memory_size(limits.memory_bytes as usize)
            .table_elements(limits.max_table_elements)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20)
            // A freed table is reset to null by memset up to this size
            // instead of madvise (one syscall, then a fault per page on next
            // use). A componentize-py table is ~45 KiB. Same clean state.
            .table_keep_resident(TABLE_KEEP_RESIDENT);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    Engine::new(&c)
}

/// Instance slots of a function's pool: two per sandbox thread (one live,
/// one being created after a trap) plus the load-time test instance.
pub fn pool_instances(threads: u32) -> u32 {
    threads.saturating_mul(2).saturating_add(2)
}

/// What a pool keeps resident however idle: every table slot's first
/// [`TABLE_KEEP_RESIDENT`] bytes, once used, are reset by memset and stay
/// committed. Linear memory slots are decommitted when freed (virtual only);
/// a live instance's memory counts under its memory cap instead.
pub fn pool_resident_bytes(threads: u32) -> u64 {
    u64::from(pool_instances(threads))
        * u64::from(TABLES_PER_COMPONENT)
        * TABLE_KEEP_RESIDENT as u64
}

/// Bumps the epoch of every registered engine each tick; a store whose
/// deadline (in ticks) passes traps with `Trap::Interrupt`.
pub struct EpochTicker {
    engines: Mutex<Vec<EngineWeak>>,
}

impl EpochTicker {
    pub fn start(tick: Duration) -> Arc<Self> {
        let ticker = Arc::new(Self {
            engines: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&ticker);
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                let Some(t) = weak.upgrade() else { return };
                let mut engines = t.engines.lock().unwrap_or_else(|p| p.into_inner());
                engines.retain(|w| match w.upgrade() {
                    Some(e) => {
                        e.increment_epoch();
                        true
                    }
                    None => false,
                });
            })
            .expect("spawn epoch ticker thread");
        ticker
    }

    pub fn register(&self, engine: &Engine) {
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(engine.weak());
    }
}
