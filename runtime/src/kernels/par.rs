//! Splitting memory-bound loops (elementwise maps, row-wise normalizations) across rayon's
//! threads. The GEMM has its own split; these loops would otherwise leave the other cores
//! idle between GEMMs.

use rayon::prelude::*;

/// Below this many elements a loop runs on the calling thread: handing work to the pool
/// costs a few microseconds, more than a short loop takes.
pub(crate) const PAR_MIN: usize = 1 << 15;

/// Calls `f(start, chunk)` on contiguous chunks of `out` whose lengths are multiples of
/// `unit` (except the last), in parallel when `out` has at least [`PAR_MIN`] elements.
/// `start` is the chunk's offset in `out`.
pub(crate) fn for_chunks<O: Send>(out: &mut [O], unit: usize, f: impl Fn(usize, &mut [O]) + Sync) {
    for_chunks_weighted(out, unit, 1, f)
}

/// [`for_chunks`] where each output element costs `weight` elements of work (a row
/// reduction: the row length).
pub(crate) fn for_chunks_weighted<O: Send>(
    out: &mut [O],
    unit: usize,
    weight: usize,
    f: impl Fn(usize, &mut [O]) + Sync,
) {
    let n = out.len();
    let weight = weight.max(1);
    let threads = rayon::current_num_threads();
    if n.saturating_mul(weight) < PAR_MIN || threads <= 1 || n <= unit {
        f(0, out);
        return;
    }
    let unit = unit.max(1);
    // A few chunks per thread, so a thread slowed by a neighbour's job does not hold up the
    // rest; none with less than ~8 K elements of work.
    let units = n.div_ceil(unit);
    let per = units
        .div_ceil(4 * threads)
        .max((8192 / (unit * weight)).max(1));
    let chunk = per * unit;
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, c)| f(i * chunk, c));
}

/// An output written by several threads at disjoint elements that interleave (the heads of
/// an attention writing their columns of shared rows), so that no `&mut` slice can hold
/// one thread's part.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);

// SAFETY: only used to write disjoint elements from different threads (see its uses).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, not a field access: a closure that captures the whole `OutPtr` is `Sync`,
    /// one that captures the raw pointer field alone is not.
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}
