//! kiln's graph passes and the pass manager behind the optimization levels.
//!
//! | level | passes |
//! |---|---|
//! | O0 | none |
//! | O1 | constant folding, dead-code elimination, CSE, Identity/Dropout/no-op Cast elimination, Reshape shape folding, Conv+BatchNorm folding, Conv + Add + activation → FusedConv, MatMul+Add → Gemm, Gemm + activation → FusedGemm |
//! | O2 | O1 + transformer fusions (Gelu, BiasGelu, FastGelu, LayerNorm, SkipLayerNorm, EmbedLayerNorm, Attention) |
//! | O3 | O2 + Gelu → FastGelu approximation |
//!
//! Every pass can be disabled by name (`--disable cse`), as ONNX Runtime's `disable_*`
//! options allow. The pipeline runs to a fixpoint; in debug builds the verifier and a type
//! re-check run after every pass that changed something.

use std::collections::BTreeSet;

use kiln_ir::{Graph, IrError, Model};
use thiserror::Error;

mod cleanup;
mod fold;
mod fusion;
mod pattern;

/// Optimization level, as in ONNX Runtime / Optimum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    O0,
    O1,
    O2,
    O3,
}

impl Level {
    /// `0` → O0 … ; `None` for levels kiln does not have yet.
    pub fn from_number(n: u8) -> Option<Level> {
        match n {
            0 => Some(Level::O0),
            1 => Some(Level::O1),
            2 => Some(Level::O2),
            3 => Some(Level::O3),
            _ => None,
        }
    }
}

/// Errors of a pass.
#[derive(Debug, Error)]
pub enum TransformError {
    #[error("pass `{pass}`: {source}")]
    Ir {
        pass: &'static str,
        #[source]
        source: IrError,
    },
    #[error("unknown pass `{0}` (known: {1})")]
    UnknownPass(String, String),
}

/// One graph pass: returns how many rewrites it made. Passes that match patterns record
/// their near misses in the [`Log`] (`kiln optimize --explain`).
pub trait Pass {
    fn name(&self) -> &'static str;
    fn run(&self, g: &mut Graph, log: &mut Log) -> Result<usize, IrError>;
}

/// A pattern that matched partially and was rejected: which pass, at which node, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NearMiss {
    pub pass: &'static str,
    /// The name of the node the pattern was anchored at (or its first output's name).
    pub node: String,
    pub reason: String,
}

/// What the passes say about their decisions.
#[derive(Clone, Debug, Default)]
pub struct Log {
    near_misses: Vec<NearMiss>,
}

impl Log {
    /// Records that `pass` rejected the pattern anchored at `node` for `reason`.
    pub fn near_miss(
        &mut self,
        pass: &'static str,
        node: impl Into<String>,
        reason: impl Into<String>,
    ) {
        let m = NearMiss {
            pass,
            node: node.into(),
            reason: reason.into(),
        };
        // The pipeline runs to a fixpoint: the same rejection is seen every round.
        if !self.near_misses.contains(&m) {
            self.near_misses.push(m);
        }
    }
}

/// Options of [`optimize`].
#[derive(Clone, Debug)]
pub struct Options {
    pub level: Level,
    /// Names of passes not to run.
    pub disabled: BTreeSet<String>,
}

impl Options {
    pub fn level(level: Level) -> Options {
        Options {
            level,
            disabled: BTreeSet::new(),
        }
    }
}

/// What [`optimize`] did: rewrites per pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub rewrites: Vec<(&'static str, usize)>,
    pub iterations: usize,
    /// Rejected partial matches, in the order they were first seen.
    pub near_misses: Vec<NearMiss>,
}

fn passes(level: Level) -> Vec<Box<dyn Pass>> {
    let mut v: Vec<Box<dyn Pass>> = Vec::new();
    if level >= Level::O1 {
        v.push(Box::new(cleanup::IdentityElimination));
        v.push(Box::new(cleanup::DropoutElimination));
        v.push(Box::new(cleanup::CastElimination));
        v.push(Box::new(fold::ConstantFolding::default()));
        v.push(Box::new(fold::ReshapeFolding));
        v.push(Box::new(cleanup::Cse));
        v.push(Box::new(cleanup::Dce));
        v.push(Box::new(fusion::linear::ConvBnFolding));
        v.push(Box::new(fusion::conv::ConvActivationFusion));
        v.push(Box::new(fusion::linear::MatMulAddFusion));
        v.push(Box::new(fusion::linear::GemmActivationFusion));
    }
    if level >= Level::O2 {
        v.extend(fusion::passes(level));
    }
    v
}

/// Passes that run once the pipeline has reached its fixpoint, because they would take
/// apart patterns the pipeline's fusions match (the transformer fusions read MatMul + Add).
fn late_passes(level: Level) -> Vec<Box<dyn Pass>> {
    let mut v: Vec<Box<dyn Pass>> = Vec::new();
    if level >= Level::O1 {
        v.push(Box::new(fusion::linear::MatMulAddReshapeFusion));
    }
    v
}

/// Names of every pass, for `--disable` validation and help.
pub fn pass_names() -> Vec<&'static str> {
    passes(Level::O3)
        .iter()
        .chain(late_passes(Level::O3).iter())
        .map(|p| p.name())
        .collect()
}

/// Optimizes the model's main graph in place.
pub fn optimize(model: &mut Model, opts: &Options) -> Result<Report, TransformError> {
    let known = pass_names();
    for d in &opts.disabled {
        if !known.contains(&d.as_str()) {
            return Err(TransformError::UnknownPass(d.clone(), known.join(", ")));
        }
    }
    let main = passes(opts.level).len();
    let pipeline: Vec<Box<dyn Pass>> = passes(opts.level)
        .into_iter()
        .chain(late_passes(opts.level))
        .collect();
    let enabled: Vec<bool> = pipeline
        .iter()
        .map(|p| !opts.disabled.contains(p.name()))
        .collect();
    let mut report = Report::default();
    let mut log = Log::default();
    let mut totals: Vec<usize> = vec![0; pipeline.len()];
    // Phase 1: the main passes to their fixpoint. Phase 2: the late passes join them, to a
    // fixpoint again (cleanup runs on what the late passes produce).
    for phase_len in [main, pipeline.len()] {
        // Each round can only shrink or simplify the graph; the bound is a guard against a
        // pass that keeps rewriting its own output.
        for _ in 0..32 {
            let mut changed = 0;
            for (i, p) in pipeline.iter().enumerate().take(phase_len) {
                if !enabled[i] {
                    continue;
                }
                let n = p
                    .run(&mut model.graph, &mut log)
                    .map_err(|source| TransformError::Ir {
                        pass: p.name(),
                        source,
                    })?;
                if n > 0 {
                    totals[i] += n;
                    changed += n;
                    if cfg!(debug_assertions) {
                        check(&model.graph).map_err(|source| TransformError::Ir {
                            pass: p.name(),
                            source,
                        })?;
                    }
                }
            }
            report.iterations += 1;
            if changed == 0 {
                break;
            }
        }
    }
    report.rewrites = pipeline
        .iter()
        .zip(&enabled)
        .zip(totals)
        .filter(|((_, &on), _)| on)
        .map(|((p, _), n)| (p.name(), n))
        .collect();
    report.near_misses = log.near_misses;
    if report.rewrites.iter().any(|r| r.1 > 0) {
        model.graph.compact().map_err(|source| TransformError::Ir {
            pass: "compact",
            source,
        })?;
    }
    Ok(report)
}

fn check(g: &Graph) -> Result<(), IrError> {
    kiln_ir::verify::verify(g)?;
    kiln_ir::infer::check_types(g)
}
