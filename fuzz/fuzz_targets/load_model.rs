//! Arbitrary bytes → `load_model_bytes`; when the import succeeds, the verifier and type
//! inference must also run to completion. Errors are fine; panics, hangs and OOM are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut m) = kiln_frontend::load_model_bytes(data) {
        let _ = kiln_ir::verify::verify(&m.graph);
        // Inference assumes a structurally valid graph (it walks topological order), but it
        // must not panic on one that failed verification either: run it regardless.
        let _ = kiln_ir::infer::infer_graph(&mut m.graph);
        // The printer is used on every imported graph (`kiln inspect --ir`).
        let _ = m.graph.to_string();
    }
});
