//! `kiln optimize`: load → infer → verify → (optimize at the requested level) → export.
//!
//! `-O0` writes the imported graph back as is; `-O1` … `-O3` run the pass pipeline of that
//! level first (`--explain` prints what each pass did and the near misses). The output is written
//! atomically (a temporary file renamed into place, external data too), and never over the
//! input model or its external data, which are memory-mapped while the output is written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use kiln::frontend::export::{ExportOptions, SaveReport};
use kiln::ir::Model;

use super::{emit, human_bytes, load, Source};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model (default: the embedded BERT-tiny model).
    pub model: Option<PathBuf>,
    /// Where to write the optimized model.
    #[arg(short = 'o', long = "output", value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// Optimization level: -O0 (the imported graph as is), -O1 (cleanup, constant and
    /// shape folding), -O2 (+ transformer fusions), -O3 (+ Gelu → FastGelu); -O4 is not
    /// implemented yet.
    #[arg(short = 'O', value_name = "LEVEL", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=4))]
    pub level: u8,
    /// Do not run this pass (repeatable), e.g. `--disable constant-folding`.
    #[arg(long = "disable", value_name = "PASS")]
    pub disable: Vec<String>,
    /// Print, for each pass, how many sites it rewrote, and for each pattern that matched
    /// partially, the node and why it was rejected.
    #[arg(long)]
    pub explain: bool,
    /// Write tensors of at least --external-threshold bytes to an external-data file next to
    /// the output: FILE, or `<OUT file name>.data` when no FILE is given. Spell a FILE as
    /// `--external-data=FILE`.
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub external_data: Option<String>,
    /// With --external-data: the size in bytes from which a tensor goes to the file.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub external_threshold: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let out = &args.output;
    if out.as_os_str().is_empty() || out.file_name().is_none() {
        bail!("-o `{}` does not name a file", out.display());
    }
    let out_dir = parent_dir(out);
    if !out_dir.is_dir() {
        bail!(
            "cannot write `{}`: directory `{}` does not exist",
            out.display(),
            out_dir.display()
        );
    }
    if out.is_dir() {
        bail!("cannot write `{}`: it is a directory", out.display());
    }
    let data_location = args.external_data.as_ref().map(|f| {
        if f.is_empty() {
            format!(
                "{}.data",
                out.file_name().unwrap_or_default().to_string_lossy()
            )
        } else {
            f.clone()
        }
    });
    if let Some(loc) = &data_location {
        kiln::frontend::external::check_location(loc)
            .map_err(|e| anyhow::anyhow!("--external-data `{loc}`: {e}"))?;
    }
    let outputs: Vec<PathBuf> = std::iter::once(out.clone())
        .chain(data_location.iter().map(|l| out_dir.join(l)))
        .collect();
    if outputs.len() == 2 && same_path(&outputs[0], &outputs[1]) {
        bail!(
            "--external-data `{}` is the output model itself",
            data_location.unwrap_or_default()
        );
    }

    let src = Source::new(args.model);
    // Refuse before reading anything when the output is the input model itself.
    if let Some(input) = src.path() {
        refuse_overwrite(&outputs, input, "the input model")?;
    }
    let loaded = load(&src)?;
    // ... or one of its external-data files (they are memory-mapped while we write).
    if let Some(dir) = src.base_dir() {
        for loc in loaded.file.external.keys() {
            refuse_overwrite(&outputs, &dir.join(loc), "external data of the input model")?;
        }
    }

    let mut model = loaded.model;
    let before = model.graph.num_nodes();
    let rewrites = kiln::optimize(&mut model, args.level, &args.disable)?;
    if args.explain {
        eprint!("{}", explain(&rewrites, before, model.graph.num_nodes()));
    }
    let opts = ExportOptions {
        external_data: data_location,
        external_threshold: args.external_threshold,
        ..ExportOptions::default()
    };
    let report = export(&model, out, &opts)?;
    let mut msg = format!(
        "wrote {} ({}, {} nodes, -O{})",
        report.path.display(),
        human_bytes(report.bytes),
        model.graph.num_nodes(),
        args.level
    );
    if let Some(ext) = &report.external {
        let size = std::fs::metadata(ext)
            .map(|m| human_bytes(m.len()))
            .unwrap_or_default();
        msg.push_str(&format!(" + external data {} ({size})", ext.display()));
    }
    msg.push('\n');
    emit(&msg)
}

/// The `--explain` report: rewrites per pass, then the near misses grouped by pass.
fn explain(r: &kiln::transforms::Report, before: usize, after: usize) -> String {
    let mut s = format!(
        "explain: {before} → {after} nodes in {} round(s)\n",
        r.iterations
    );
    for (pass, n) in &r.rewrites {
        s.push_str(&format!("  {pass:<28} {n:>6} rewrite(s)\n"));
    }
    if r.near_misses.is_empty() {
        s.push_str("  no near misses\n");
    } else {
        s.push_str(&format!("near misses ({}):\n", r.near_misses.len()));
        for m in &r.near_misses {
            s.push_str(&format!("  {:<28} at {}: {}\n", m.pass, m.node, m.reason));
        }
    }
    s
}

/// Writes `model` to `path` through the frontend's exporter, which writes atomically
/// (temporary file + rename, for the external-data file too).
fn export(model: &Model, path: &Path, opts: &ExportOptions) -> anyhow::Result<SaveReport> {
    kiln::frontend::export::save_model(model, path, opts)
        .with_context(|| format!("cannot export to `{}`", path.display()))
}

/// The directory of `p` (`.` for a bare file name).
fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Errors when one of `outputs` is the file `protected` (same path after resolving symlinks,
/// or the same inode: a hard link).
fn refuse_overwrite(outputs: &[PathBuf], protected: &Path, what: &str) -> anyhow::Result<()> {
    for o in outputs {
        if same_path(o, protected) {
            bail!(
                "refusing to overwrite {what} `{}` with `{}`: write the output somewhere else",
                protected.display(),
                o.display()
            );
        }
    }
    Ok(())
}

/// Whether `a` and `b` name the same file. Either may not exist yet: then its directory is
/// resolved and the file name compared.
fn same_path(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return ma.dev() == mb.dev() && ma.ino() == mb.ino();
        }
    }
    match (resolve(a), resolve(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// `p` with its directory canonicalized (the file itself may not exist).
fn resolve(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let dir = parent_dir(p).canonicalize().ok()?;
    Some(dir.join(p.file_name()?))
}
