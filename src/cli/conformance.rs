//! `kiln conformance DIR`: the ONNX node conformance runner (see [`kiln::conformance`]).

use std::io::Write;
use std::path::PathBuf;

use kiln::conformance::{counts, failures_by_op, read_skips, run_dir, Status};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A directory of cases in the ONNX node-test layout (CASE/model.onnx, CASE/test_data_set_0/).
    pub dir: PathBuf,
    /// Optimization level (0 or 1).
    #[arg(short = 'O', value_name = "LEVEL", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=4))]
    pub level: u8,
    /// Cases to skip, with reasons (`case<TAB>reason` lines).
    #[arg(long, value_name = "FILE")]
    pub skips: Option<PathBuf>,
    /// Print one JSON object per case instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let skips = match &args.skips {
        Some(p) => read_skips(p).map_err(anyhow::Error::msg)?,
        None => Default::default(),
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let outcomes = run_dir(&args.dir, args.level, &skips, |done, total, _| {
        if tty {
            eprint!("\r{done}/{total} cases");
        } else if done % 200 == 0 || done == total {
            eprintln!("{done}/{total} cases");
        }
    })
    .map_err(anyhow::Error::msg)?;
    if tty {
        eprintln!();
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        for o in &outcomes {
            let (status, detail) = match &o.status {
                Status::Pass => ("pass", String::new()),
                Status::Fail(e) => ("fail", e.clone()),
                Status::Skip(r) => ("skip", r.clone()),
            };
            let line = serde_json::json!({"case": o.case, "ops": o.ops, "status": status, "detail": detail});
            writeln!(out, "{line}")?;
        }
    } else {
        let by_op = failures_by_op(&outcomes);
        if !by_op.is_empty() {
            writeln!(out, "failures by op:")?;
            for (op, cases) in &by_op {
                writeln!(out, "{:>5}  {op}: {}", cases.len(), cases.join(", "))?;
            }
        }
    }
    let (p, f, s) = counts(&outcomes);
    writeln!(out, "{p} passed, {f} failed, {s} skipped")?;
    Ok(())
}
