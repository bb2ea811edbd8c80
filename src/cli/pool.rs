//! kiln's worker threads: rayon's global pool, pinned one to a CPU
//! (see [`kiln::runtime::threads`]).

use anyhow::Context;

/// Builds rayon's global pool of `threads` workers with [`kiln::runtime::threads::pool_builder`];
/// returns whether the workers are pinned.
pub fn global(threads: usize) -> anyhow::Result<bool> {
    let (b, pin) = kiln::runtime::threads::pool_builder(threads);
    b.build_global()
        .context("cannot set up kiln's thread pool")?;
    Ok(pin)
}
