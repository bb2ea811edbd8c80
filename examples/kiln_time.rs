//! Times whole-model runs: `cargo run --release --example kiln_time -- MODEL [--dim NAME=N]...
//! [--runs R] [--warmup W]`. Prints the load+compile time and the median / min / max of `R`
//! runs (ms) on deterministic random inputs. A measurement aid, not a benchmark harness.

use std::collections::HashMap;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut model_path = None;
    let mut dims = HashMap::new();
    let (mut runs, mut warmup) = (10usize, 2usize);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--dim" => {
                let (k, v) = args[i + 1].split_once('=').expect("--dim NAME=N");
                dims.insert(k.to_string(), v.parse::<i64>().expect("dim value"));
                i += 1;
            }
            "--runs" => {
                runs = args[i + 1].parse().expect("runs");
                i += 1;
            }
            "--warmup" => {
                warmup = args[i + 1].parse().expect("warmup");
                i += 1;
            }
            p => model_path = Some(p.to_string()),
        }
        i += 1;
    }
    let path = model_path.expect("usage: kiln_time MODEL [--dim NAME=N]... [--runs R]");
    let t0 = Instant::now();
    let model = kiln::load(&path).expect("load");
    let inputs = kiln::random_inputs(&model, &dims, 0).expect("inputs");
    let session = kiln::Session::new(model).expect("compile");
    let setup = t0.elapsed().as_secs_f64() * 1e3;
    for _ in 0..warmup {
        session.run(inputs.clone()).expect("run");
    }
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            session.run(inputs.clone()).expect("run");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{path}: load+compile {setup:.0} ms; {runs} runs: median {:.1} ms, min {:.1}, max {:.1} (threads {})",
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() - 1],
        rayon_threads()
    );
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
}
