//! Transformer fusions (O2) and the Gelu approximation (O3). Each rule reads like the
//! pattern it matches, is guarded against every unsafe case, and logs its near misses.

use crate::{Level, Pass};

mod attention;
pub(crate) mod conv;
mod gelu;
mod layernorm;
pub(crate) mod linear;

/// The fusion passes of `level` (O2 and up), in the order they must run: normalizations
/// first (SkipLayerNorm anchors Attention's output), then activations, then attention.
pub(crate) fn passes(level: Level) -> Vec<Box<dyn Pass>> {
    let mut v: Vec<Box<dyn Pass>> = Vec::new();
    v.extend(layernorm::passes(level));
    v.extend(gelu::passes(level));
    v.extend(attention::passes(level));
    v
}
