//! The `kiln` command line. See `kiln --help` and README.md.
//!
//! Every failure ends the process with a non-zero status and one line on stderr that starts
//! with `error:` (status 2 for a command line clap rejects, 1 for everything else).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// The command line (the `about` text is the package description).
#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about,
    long_about = None,
    after_help = "Without a MODEL, `inspect` and `optimize` use the embedded default model \
                  (BERT-tiny: 2 layers, hidden 64, opset 14)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Describe a model: opsets, inputs and outputs with their shapes, op histogram,
    /// parameters, external data, types left unknown by inference.
    Inspect(cli::inspect::Args),
    /// Optimize a model (-O0 … -O3) and write it as ONNX.
    Optimize(cli::optimize::Args),
    /// Run a model on kiln's runtime and write its outputs to an .npz file.
    Run(cli::run::RunArgs),
    /// Run a model and compare its outputs with a golden .npz or with ONNX Runtime.
    Validate(cli::run::ValidateArgs),
    /// Run ONNX node conformance cases (model.onnx + test_data_set_0) and report.
    Conformance(cli::conformance::Args),
    /// Time a model on kiln's runtime, side by side with ONNX Runtime (--vs-ort).
    Bench(cli::bench::Args),
}

fn main() -> ExitCode {
    // A panic is a bug, but the user still gets one `error:` line and no backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error: {}{at} (this is a bug in kiln)",
            one_line(&msg)
        );
    }));

    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let msg = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                "no command given: use `kiln inspect`, `optimize`, `run`, `validate`, `conformance` or `bench`".to_string()
            } else {
                // clap's message is its first paragraph (a list of missing arguments may
                // follow the first line); usage and tips come after a blank line.
                let text = e.render().to_string();
                let para: Vec<&str> = text
                    .lines()
                    .map(str::trim)
                    .skip_while(|l| l.is_empty())
                    .take_while(|l| !l.is_empty())
                    .collect();
                let msg = para.join(" ");
                msg.strip_prefix("error:")
                    .map(str::trim)
                    .unwrap_or(&msg)
                    .to_string()
            };
            eprintln!("error: {} (see 'kiln --help')", one_line(&msg));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Optimize(a) => cli::optimize::run(a),
        Command::Run(a) => cli::run::run(a),
        Command::Validate(a) => cli::run::validate(a),
        Command::Conformance(a) => cli::conformance::run(a),
        Command::Bench(a) => cli::bench::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text is already there
/// (kiln's errors include their source in their own message).
fn message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if c.is_empty() || msg.contains(&c) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&c);
    }
    one_line(msg.strip_prefix("error: ").unwrap_or(&msg))
}

/// `s` with line breaks folded into spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
