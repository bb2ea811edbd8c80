//! The NEON kernels, run for real: on x86-64 this test cross-compiles the runtime's property
//! tests (`*_prop.rs`) for aarch64-unknown-linux-gnu and runs them under qemu user-mode
//! emulation (the linker and runner are set in `.cargo/config.toml`; `scripts/setup.sh`
//! installs the tools). On an AArch64 host the property tests run natively and this test has
//! nothing to add.
//!
//! Without the tools it prints a skip note and passes, unless `CI`/`KILN_CI` is set: then it
//! fails. `PROPTEST_CASES` (default 32 here: emulation is ~20× slower) sets the case count.

use std::path::{Path, PathBuf};
use std::process::Command;

fn in_ci() -> bool {
    ["KILN_CI", "CI"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"))
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn target_installed() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "aarch64-unknown-linux-gnu")
        })
}

#[test]
fn property_tests_pass_on_aarch64_neon_under_qemu() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let missing: Vec<&str> = [
        ("qemu-aarch64", have("qemu-aarch64", "--version")),
        (
            "aarch64-linux-gnu-gcc",
            have("aarch64-linux-gnu-gcc", "--version"),
        ),
        (
            "rustup target aarch64-unknown-linux-gnu",
            target_installed(),
        ),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(what, _)| what)
    .collect();
    if !missing.is_empty() {
        let problem = format!("missing {}", missing.join(", "));
        assert!(
            !in_ci(),
            "{problem}: the NEON test must not skip in CI (run scripts/setup.sh)"
        );
        eprintln!("SKIPPED: {problem}; run scripts/setup.sh to enable this test");
        return;
    }

    let runtime = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = runtime.parent().expect("workspace root");
    let mut props: Vec<String> = std::fs::read_dir(runtime.join("tests"))
        .expect("runtime/tests")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_suffix("_prop.rs").map(|s| format!("{s}_prop"))
        })
        .collect();
    props.sort();
    assert!(!props.is_empty(), "no *_prop.rs tests in runtime/tests");

    // A target directory of its own: the outer `cargo test` holds the lock on the main one.
    let target_dir: PathBuf = root.join("target").join("qemu-aarch64");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root)
        .args([
            "test",
            "-p",
            "kiln-runtime",
            "--target",
            "aarch64-unknown-linux-gnu",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "PROPTEST_CASES",
            std::env::var("PROPTEST_CASES").unwrap_or_else(|_| "32".into()),
        );
    for p in &props {
        cmd.args(["--test", p]);
    }
    let out = cmd.output().expect("run cargo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "aarch64 property tests failed under qemu:\n{stdout}\n{stderr}"
    );
    // The run must have executed tests, and on an emulated AArch64 CPU the NEON kernel is the
    // one selected (the property tests compare every available ISA with the scalar path).
    let ran: usize = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert!(ran > 0, "no test ran under qemu:\n{stdout}\n{stderr}");
    eprintln!("{ran} property tests passed on aarch64 under qemu ({props:?})");
}
