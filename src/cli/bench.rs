//! `kiln bench`: whole-model latency of kiln's runtime, side by side with ONNX Runtime.
//!
//! Both engines run the same inputs in the same process, taking turns of `--block` runs
//! (kiln ×5, ORT ×5, kiln ×5 …) so that the noise of a shared machine (other jobs, frequency
//! changes) falls on both alike, while each runs back to back within its turn as it would alone.
//! Each engine gets warm-up runs first (ORT pre-packs and allocates on its first runs too).
//! ONNX Runtime runs with its default settings, spin-waiting included; each turn starts with an
//! untimed run, once the other engine's threads have gone idle, so that neither pays for the
//! other's spinning or for the cache the other one evicted.
//! The report is the median, the 10th and 90th percentiles of each, and the ratio of the
//! medians as throughput, kiln/ORT (above 1: kiln is faster).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kiln::ir::Tensor;
use kiln::Session;

use super::{load, Source};
use crate::cli::run::parse_dim;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model (default: the embedded BERT-tiny model).
    pub model: Option<PathBuf>,
    /// Value of every symbolic input dim whose name contains `batch` (e.g. `batch`, `batch_size`).
    #[arg(long, default_value_t = 1)]
    pub batch: i64,
    /// Value of every symbolic input dim whose name contains `seq` (e.g. `sequence`).
    #[arg(long, default_value_t = 128)]
    pub seq: i64,
    /// Any other symbolic dim, e.g. `--dim height=224`; overrides --batch/--seq for that name.
    #[arg(long = "dim", value_name = "NAME=N", value_parser = parse_dim)]
    pub dims: Vec<(String, i64)>,
    /// Inputs as an .npz file instead of generated ones (a padded attention mask is generated).
    #[arg(long, value_name = "IN.npz")]
    pub inputs: Option<PathBuf>,
    /// kiln's optimization level.
    #[arg(short = 'O', value_name = "LEVEL", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(0..=4))]
    pub level: u8,
    /// Also run ONNX Runtime (its defaults: graph optimization ENABLE_ALL, idle threads
    /// spin-wait; intra-op threads = --threads).
    #[arg(long)]
    pub vs_ort: bool,
    /// With --vs-ort: turn off the spin-waiting of ONNX Runtime's idle threads (its
    /// `session.intra_op.allow_spinning` = 0), which makes it slower.
    #[arg(long)]
    pub ort_no_spinning: bool,
    /// Timed runs per engine (after warm-up).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// With --vs-ort: timed runs per engine in each turn; the engines take turns, and each
    /// turn starts with one more untimed run.
    #[arg(long, default_value_t = 5)]
    pub block: usize,
    /// Untimed warm-up runs per engine.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Threads for both engines (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// After the timed runs, run kiln once more per timed run with a per-op timer and print
    /// where the time goes, by op type.
    #[arg(long)]
    pub profile: bool,
    /// With --profile: one line per op type and input shapes.
    #[arg(long)]
    pub profile_shapes: bool,
}

/// Latency statistics of one engine, in milliseconds.
struct Stats {
    median: f64,
    p10: f64,
    p90: f64,
}

fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let median = if ms.len() % 2 == 1 {
        ms[ms.len() / 2]
    } else {
        (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
    };
    Stats {
        median,
        p10: at(0.1),
        p90: at(0.9),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.block == 0 {
        bail!("--block must be at least 1");
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    let pinned = super::pool::global(threads)?;

    let src = Source::new(args.model.clone());
    let mut model = load(&src)?.model;
    let t0 = Instant::now();
    kiln::optimize(&mut model, args.level, &[])?;
    let inputs = inputs(&args, &model)?;
    let session =
        Session::new(model).with_context(|| format!("cannot compile {}", src.display()))?;
    let compile_s = t0.elapsed().as_secs_f64();
    let shapes: Vec<String> = inputs
        .iter()
        .map(|(n, t)| format!("{n} {}{:?}", t.dtype(), t.shape()))
        .collect();
    eprintln!(
        "bench: {} at -O{} ({compile_s:.2} s to optimize and compile), {threads} thread(s){}, inputs: {}",
        src.display(),
        args.level,
        if pinned { ", kiln's pinned one to a CPU" } else { "" },
        shapes.join(", ")
    );

    let mut ort = if args.vs_ort {
        Some(oracle(&src, threads, !args.ort_no_spinning)?)
    } else {
        None
    };

    let kiln_run = || -> anyhow::Result<(f64, Vec<(String, Tensor)>)> {
        let t = Instant::now();
        let out = session
            .run(inputs.clone())
            .with_context(|| format!("{}: kiln run failed", src.display()))?;
        Ok((t.elapsed().as_secs_f64() * 1e3, out))
    };

    // Turns of `block` timed runs each, after one untimed run that brings the engine's weights
    // back into cache and its threads back from sleep: within a turn each engine runs back to
    // back, as it would alone; turns alternate so that the host's noise falls on both alike.
    let block = if ort.is_some() { args.block } else { args.runs };
    let turns = args.runs.div_ceil(block);
    let per_engine = args.warmup + args.runs + if ort.is_some() { turns } else { 0 };
    let total = per_engine * if ort.is_some() { 2 } else { 1 };
    let mut done = 0;
    let mut progress = |what: &str| {
        done += 1;
        eprint!("\r  [{done:>4}/{total}] {what:<24}");
        let _ = std::io::stderr().flush();
    };
    let (mut kiln_ms, mut ort_ms) = (Vec::new(), Vec::new());
    let (mut kiln_idle, mut ort_idle) = (Vec::new(), Vec::new());
    let mut last = (None, None);
    for _ in 0..args.warmup {
        last.0 = Some(kiln_run()?.1);
        progress("kiln (warm-up)");
    }
    if let Some(o) = ort.as_mut() {
        kiln_idle.push(settle());
        for _ in 0..args.warmup {
            last.1 = Some(o(&inputs)?.1);
            progress("onnxruntime (warm-up)");
        }
        ort_idle.push(settle());
    }
    for turn in 0..turns {
        let n = block.min(args.runs - turn * block);
        if ort.is_some() {
            kiln_run()?;
            progress("kiln (re-warm)");
        }
        for _ in 0..n {
            let (ms, out) = kiln_run()?;
            kiln_ms.push(ms);
            last.0 = Some(out);
            progress("kiln");
        }
        if let Some(o) = ort.as_mut() {
            // ONNX Runtime's idle threads spin for tens of milliseconds after a run: each
            // turn starts once the other engine's threads are parked.
            kiln_idle.push(settle());
            o(&inputs)?;
            progress("onnxruntime (re-warm)");
            for _ in 0..n {
                let (ms, out) = o(&inputs)?;
                ort_ms.push(ms);
                last.1 = Some(out);
                progress("onnxruntime");
            }
            ort_idle.push(settle());
        }
    }
    eprintln!();

    let k = stats(kiln_ms);
    println!(
        "{:<12} {:>10} {:>10} {:>10}",
        "engine", "median ms", "p10 ms", "p90 ms"
    );
    println!(
        "{:<12} {:>10.2} {:>10.2} {:>10.2}",
        "kiln", k.median, k.p10, k.p90
    );
    if ort.is_some() {
        let o = stats(ort_ms);
        println!(
            "{:<12} {:>10.2} {:>10.2} {:>10.2}",
            "onnxruntime", o.median, o.p10, o.p90
        );
        if let (Some(a), Some(b)) = (&last.0, &last.1) {
            let r = kiln::validate::compare_outputs(b, a, 1e-4, 0.0);
            let worst = r.iter().map(|r| r.max_abs).fold(0.0, f64::max);
            println!("max abs diff between the engines' outputs: {worst:.3e}");
        }
        println!(
            "ratio (kiln/ORT throughput = ORT median / kiln median): {:.3}  ({} runs each, medians)",
            o.median / k.median,
            args.runs
        );
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "turns of {block} runs per engine, each after one untimed run, started once the other engine's threads were idle: waited {:.0} ms after kiln's turns, {:.0} ms after ONNX Runtime's{}",
            mean(&kiln_idle),
            mean(&ort_idle),
            if args.ort_no_spinning { " (its spin-waiting off)" } else { " (it spin-waits, its default)" }
        );
    }
    if args.profile {
        let mut p = kiln::runtime::Profile {
            by_shape: args.profile_shapes,
            ..Default::default()
        };
        for _ in 0..args.runs {
            session.run_profiled(inputs.clone(), &mut p)?;
        }
        let total: f64 = p.by_op.values().map(|e| e.0).sum();
        println!(
            "\nkiln profile ({} runs): op, ms per run, share, steps per run",
            args.runs
        );
        for (op, t, n) in p.sorted() {
            println!(
                "{op:<28} {:>9.2} {:>6.1}% {:>6}",
                t * 1e3 / args.runs as f64,
                100.0 * t / total,
                n / args.runs as u64
            );
        }
    }
    Ok(())
}

/// Waits until no thread of this process is using the CPU (at most 1 s), so that the next
/// run does not share a core with the idle threads of the engine that ran last; returns the
/// milliseconds waited. Reads the threads' CPU time from `/proc/self/task/*/schedstat`; where
/// that is missing it waits a fixed 100 ms, longer than ONNX Runtime's spin.
fn settle() -> f64 {
    const STEP: Duration = Duration::from_millis(5);
    let t = Instant::now();
    let Some(mut busy) = cpu_time_ns() else {
        std::thread::sleep(Duration::from_millis(100));
        return t.elapsed().as_secs_f64() * 1e3;
    };
    while t.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(STEP);
        let Some(now) = cpu_time_ns() else { break };
        // A spinning thread uses the whole step; parked threads and this one a few µs.
        if now.saturating_sub(busy) < STEP.as_nanos() as u64 / 5 {
            break;
        }
        busy = now;
    }
    t.elapsed().as_secs_f64() * 1e3
}

/// CPU time of all of this process's threads so far, in nanoseconds (Linux only).
fn cpu_time_ns() -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let mut path = task.ok()?.path();
        path.push("schedstat");
        // A thread can exit between the listing and the read: it no longer uses the CPU.
        if let Ok(s) = std::fs::read_to_string(&path) {
            total += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// The inputs: from --inputs, or generated with the symbolic dims resolved from
/// --batch/--seq/--dim.
fn inputs(args: &Args, model: &kiln::Model) -> anyhow::Result<Vec<(String, Tensor)>> {
    let names: Vec<String> = model
        .graph
        .inputs
        .iter()
        .map(|&i| model.graph.value(i).name.clone())
        .collect();
    if let Some(path) = &args.inputs {
        let arrays = kiln::npz::read_npz(path)?;
        return Ok(arrays
            .into_iter()
            .filter(|(n, _)| names.contains(n))
            .collect());
    }
    let mut dims: HashMap<String, i64> = HashMap::new();
    for &i in &model.graph.inputs {
        let v = model.graph.value(i);
        let Some(shape) =
            v.ty.as_ref()
                .and_then(|t| t.as_tensor())
                .and_then(|t| t.shape.as_ref())
        else {
            continue;
        };
        for d in shape {
            for sym in d.symbols() {
                let lower = sym.to_lowercase();
                if lower.contains("batch") {
                    dims.insert(sym.to_string(), args.batch);
                } else if lower.contains("seq") {
                    dims.insert(sym.to_string(), args.seq);
                }
            }
        }
    }
    dims.extend(args.dims.iter().cloned());
    kiln::random_inputs(model, &dims, 0).map_err(anyhow::Error::msg)
}

type OrtRun = Box<dyn FnMut(&[(String, Tensor)]) -> anyhow::Result<(f64, Vec<(String, Tensor)>)>>;

#[cfg(feature = "ort")]
fn oracle(src: &Source, threads: usize, spinning: bool) -> anyhow::Result<OrtRun> {
    use kiln::oracle::{Oracle, OracleOpt, OracleOptions};
    let opts = OracleOptions {
        threads,
        opt: OracleOpt::All,
        spinning,
        ..Default::default()
    };
    let mut o = match src.path() {
        Some(p) => Oracle::with_options(p, &opts)?,
        None => Oracle::from_bytes_with_options(super::DEFAULT_MODEL, &opts)?,
    };
    Ok(Box::new(move |inputs| {
        let t = Instant::now();
        let out = o.run(inputs)?;
        Ok((t.elapsed().as_secs_f64() * 1e3, out))
    }))
}

#[cfg(not(feature = "ort"))]
fn oracle(_src: &Source, _threads: usize, _spinning: bool) -> anyhow::Result<OrtRun> {
    bail!("--vs-ort needs kiln built with the `ort` feature")
}
