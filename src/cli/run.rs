//! `kiln run` and `kiln validate`: execute a model on kiln's runtime, save or check outputs.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use kiln::ir::Tensor;
use kiln::validate::{compare_outputs, OutputReport};
use kiln::Session;

use super::{load, Source};

/// Where the inputs come from (shared by `run` and `validate`).
#[derive(Debug, clap::Args)]
pub struct InputArgs {
    /// The ONNX model (default: the embedded BERT-tiny model).
    pub model: Option<PathBuf>,
    /// Inputs as an .npz file whose arrays are named like the model's inputs (other arrays are ignored).
    #[arg(long, value_name = "IN.npz")]
    pub inputs: Option<PathBuf>,
    /// Generate deterministic random inputs instead (give symbolic dims with --dim).
    #[arg(long, conflicts_with = "inputs")]
    pub random_inputs: bool,
    /// A symbolic dim's value for --random-inputs, e.g. `--dim batch=2 --dim sequence=16`.
    #[arg(long = "dim", value_name = "NAME=N", value_parser = parse_dim)]
    pub dims: Vec<(String, i64)>,
    /// Seed of --random-inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Optimization level (0 … 3).
    #[arg(short = 'O', value_name = "LEVEL", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=4))]
    pub level: u8,
    /// Accept input shapes other than the fixed dims the model declares (they become
    /// symbolic and shapes are re-inferred).
    #[arg(long)]
    pub free_input_dims: bool,
}

pub(crate) fn parse_dim(s: &str) -> Result<(String, i64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=N"))?;
    let n: i64 = v.parse().map_err(|_| format!("`{v}` is not a number"))?;
    if n < 0 {
        return Err(format!("dim `{k}` must not be negative"));
    }
    Ok((k.to_string(), n))
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Where to write the outputs (.npz).
    #[arg(short = 'o', long = "output", value_name = "OUT.npz")]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Expected outputs (.npz, arrays named like the model's outputs). When --inputs is not
    /// given, inputs are taken from this file too.
    #[arg(long, value_name = "OUT.npz", conflicts_with = "oracle")]
    pub golden: Option<PathBuf>,
    /// Compare with another engine run in the same process: `ort` (ONNX Runtime).
    #[arg(long, value_name = "ENGINE", value_parser = ["ort"])]
    pub oracle: Option<String>,
    /// Absolute tolerance.
    #[arg(long, default_value_t = 1e-4)]
    pub atol: f64,
    /// Relative tolerance (|got − expected| ≤ atol + rtol·|expected|).
    #[arg(long, default_value_t = 0.0)]
    pub rtol: f64,
}

/// The model (as a session) and its inputs.
fn prepare(
    a: &InputArgs,
    fallback_inputs: Option<&PathBuf>,
) -> anyhow::Result<(Source, Session, Vec<(String, Tensor)>)> {
    let src = Source::new(a.model.clone());
    let mut model = load(&src)?.model;
    if a.free_input_dims {
        kiln::free_input_dims(&mut model)
            .with_context(|| format!("{}: re-inferring shapes", src.display()))?;
    }
    kiln::optimize(&mut model, a.level, &[])?;
    let names: Vec<String> = model
        .graph
        .inputs
        .iter()
        .map(|&i| model.graph.value(i).name.clone())
        .collect();
    let inputs = if a.random_inputs {
        let dims: HashMap<String, i64> = a.dims.iter().cloned().collect();
        kiln::random_inputs(&model, &dims, a.seed).map_err(anyhow::Error::msg)?
    } else {
        let path = a
            .inputs
            .as_ref()
            .or(fallback_inputs)
            .context("give --inputs IN.npz or --random-inputs")?;
        let arrays = kiln::npz::read_npz(path)?;
        arrays
            .into_iter()
            .filter(|(n, _)| names.contains(n))
            .collect()
    };
    let session =
        Session::new(model).with_context(|| format!("cannot compile {}", src.display()))?;
    Ok((src, session, inputs))
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (src, session, inputs) = prepare(&args.input, None)?;
    let outs = session
        .run(inputs)
        .with_context(|| format!("{}: run failed", src.display()))?;
    kiln::npz::write_npz(&args.output, &outs)?;
    for (n, t) in &outs {
        eprintln!("{n}: {}{:?}", t.dtype(), t.shape());
    }
    eprintln!("wrote {} outputs to {}", outs.len(), args.output.display());
    Ok(())
}

pub fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let (src, session, inputs) = prepare(&args.input, args.golden.as_ref())?;
    let expected: Vec<(String, Tensor)> = match (&args.golden, &args.oracle) {
        (Some(g), _) => kiln::npz::read_npz(g)?,
        (None, Some(_)) => oracle_outputs(&src, &inputs)?,
        (None, None) => bail!("give --golden OUT.npz or --oracle ort"),
    };
    let got = session
        .run(inputs)
        .with_context(|| format!("{}: run failed", src.display()))?;
    let reports = compare_outputs(&expected, &got, args.atol, args.rtol);
    print_reports(&reports, args.atol, args.rtol);
    if reports.iter().all(|r| r.pass) {
        println!(
            "PASS: all {} outputs within atol {:e}, rtol {:e}",
            reports.len(),
            args.atol,
            args.rtol
        );
        Ok(())
    } else {
        let n = reports.iter().filter(|r| !r.pass).count();
        bail!(
            "{n} of {} outputs differ beyond atol {:e}, rtol {:e}",
            reports.len(),
            args.atol,
            args.rtol
        )
    }
}

fn print_reports(reports: &[OutputReport], atol: f64, rtol: f64) {
    println!(
        "{:<24} {:<18} {:>12} {:>12} {:>12}  result",
        "output", "shape", "max abs", "max rel", "cosine"
    );
    for r in reports {
        println!(
            "{:<24} {:<18} {:>12.3e} {:>12.3e} {:>12.8}  {}{}",
            r.name,
            format!("{:?}", r.shape),
            r.max_abs,
            r.max_rel,
            r.cosine,
            if r.pass { "PASS" } else { "FAIL" },
            r.problem
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        );
    }
    let _ = (atol, rtol);
}

#[cfg(feature = "ort")]
fn oracle_outputs(
    src: &Source,
    inputs: &[(String, Tensor)],
) -> anyhow::Result<Vec<(String, Tensor)>> {
    use kiln::oracle::{Oracle, OracleOptions};
    let opts = OracleOptions {
        threads: 2,
        ..Default::default()
    };
    let mut o = match src.path() {
        Some(p) => Oracle::with_options(p, &opts)?,
        None => Oracle::from_bytes_with_options(super::DEFAULT_MODEL, &opts)?,
    };
    Ok(o.run(inputs)?)
}

#[cfg(not(feature = "ort"))]
fn oracle_outputs(_: &Source, _: &[(String, Tensor)]) -> anyhow::Result<Vec<(String, Tensor)>> {
    bail!("this kiln was built without the `ort` feature: --oracle ort is not available")
}
