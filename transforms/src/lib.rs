//! kiln's graph passes and the pass manager behind the optimization levels.
//!
//! | level | passes |
//! |---|---|
//! | O0 | none |
//! | O1 | constant folding, dead-code elimination, CSE, Identity/Dropout/no-op Cast elimination, Reshape shape folding |
//!
//! Every pass can be disabled by name (`--disable cse`), as ONNX Runtime's `disable_*`
//! options allow. The pipeline runs to a fixpoint; in debug builds the verifier and a type
//! re-check run after every pass that changed something.

use std::collections::BTreeSet;

use kiln_ir::{Graph, IrError, Model};
use thiserror::Error;

mod cleanup;
mod fold;

/// Optimization level, as in ONNX Runtime / Optimum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    O0,
    O1,
}

impl Level {
    /// `0` → O0 … ; `None` for levels kiln does not have yet.
    pub fn from_number(n: u8) -> Option<Level> {
        match n {
            0 => Some(Level::O0),
            1 => Some(Level::O1),
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

/// One graph pass: returns how many rewrites it made.
pub trait Pass {
    fn name(&self) -> &'static str;
    fn run(&self, g: &mut Graph) -> Result<usize, IrError>;
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
    }
    v
}

/// Names of every pass, for `--disable` validation and help.
pub fn pass_names() -> Vec<&'static str> {
    passes(Level::O1).iter().map(|p| p.name()).collect()
}

/// Optimizes the model's main graph in place.
pub fn optimize(model: &mut Model, opts: &Options) -> Result<Report, TransformError> {
    let known = pass_names();
    for d in &opts.disabled {
        if !known.contains(&d.as_str()) {
            return Err(TransformError::UnknownPass(d.clone(), known.join(", ")));
        }
    }
    let pipeline: Vec<Box<dyn Pass>> = passes(opts.level)
        .into_iter()
        .filter(|p| !opts.disabled.contains(p.name()))
        .collect();
    let mut report = Report::default();
    let mut totals: Vec<usize> = vec![0; pipeline.len()];
    // Each round can only shrink or simplify the graph; the bound is a guard against a pass
    // that keeps rewriting its own output.
    for round in 0..32 {
        let mut changed = 0;
        for (p, total) in pipeline.iter().zip(totals.iter_mut()) {
            let n = p
                .run(&mut model.graph)
                .map_err(|source| TransformError::Ir {
                    pass: p.name(),
                    source,
                })?;
            if n > 0 {
                *total += n;
                changed += n;
                if cfg!(debug_assertions) {
                    check(&model.graph).map_err(|source| TransformError::Ir {
                        pass: p.name(),
                        source,
                    })?;
                }
            }
        }
        report.iterations = round + 1;
        if changed == 0 {
            break;
        }
    }
    report.rewrites = pipeline.iter().map(|p| p.name()).zip(totals).collect();
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
