//! Output comparison for `kiln validate`: per output, shape, max abs diff, max rel diff,
//! cosine similarity and PASS/FAIL under `|got − expected| ≤ atol + rtol·|expected|`
//! (numpy's `allclose`; with rtol 0 it is Optimum's "all values close (atol: …)").

use kiln_ir::Tensor;

/// The comparison of one output.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub max_abs: f64,
    pub max_rel: f64,
    pub cosine: f64,
    pub pass: bool,
    /// Why it failed, when it did not even compare (shape or dtype mismatch, missing).
    pub problem: Option<String>,
}

/// Compares `got` with `expected` output by output (matched by name).
pub fn compare_outputs(
    expected: &[(String, Tensor)],
    got: &[(String, Tensor)],
    atol: f64,
    rtol: f64,
) -> Vec<OutputReport> {
    let mut out = Vec::new();
    for (name, g) in got {
        let mut r = OutputReport {
            name: name.clone(),
            shape: g.shape().to_vec(),
            max_abs: f64::NAN,
            max_rel: f64::NAN,
            cosine: f64::NAN,
            pass: false,
            problem: None,
        };
        let Some((_, e)) = expected.iter().find(|(n, _)| n == name) else {
            r.problem = Some("no expected value".into());
            out.push(r);
            continue;
        };
        if e.shape() != g.shape() {
            r.problem = Some(format!("shape {:?} expected", e.shape()));
            out.push(r);
            continue;
        }
        let (Some(x), Some(y)) = (e.to_f64_vec(), g.to_f64_vec()) else {
            r.problem = Some(format!("cannot compare {} values", g.dtype()));
            out.push(r);
            continue;
        };
        let (mut max_abs, mut max_rel, mut dot, mut nx, mut ny, mut ok) =
            (0f64, 0f64, 0f64, 0f64, 0f64, true);
        for (&a, &b) in x.iter().zip(&y) {
            let d = (a - b).abs();
            if a.is_nan() != b.is_nan() || (a.is_infinite() && a != b) {
                ok = false;
                max_abs = f64::INFINITY;
                continue;
            }
            if a.is_nan() || a.is_infinite() {
                continue;
            }
            max_abs = max_abs.max(d);
            if a != 0.0 {
                max_rel = max_rel.max(d / a.abs());
            }
            ok &= d <= atol + rtol * a.abs();
            dot += a * b;
            nx += a * a;
            ny += b * b;
        }
        r.max_abs = max_abs;
        r.max_rel = max_rel;
        r.cosine = if nx == 0.0 && ny == 0.0 {
            1.0
        } else {
            dot / (nx.sqrt() * ny.sqrt())
        };
        r.pass = ok && e.dtype() == g.dtype();
        if e.dtype() != g.dtype() {
            r.problem = Some(format!("dtype {} expected, got {}", e.dtype(), g.dtype()));
        }
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_differences() {
        let e = vec![(
            "y".to_string(),
            Tensor::from_vec(vec![2], vec![1.0f32, 2.0]).unwrap(),
        )];
        let g = vec![(
            "y".to_string(),
            Tensor::from_vec(vec![2], vec![1.0f32, 2.5]).unwrap(),
        )];
        let r = &compare_outputs(&e, &g, 1e-4, 0.0)[0];
        assert!(!r.pass);
        assert_eq!(r.max_abs, 0.5);
        assert_eq!(r.max_rel, 0.25);
        let r = &compare_outputs(&e, &g, 0.5, 0.0)[0];
        assert!(r.pass);
        let r = &compare_outputs(&e, &e, 0.0, 0.0)[0];
        assert!(r.pass && (r.cosine - 1.0).abs() < 1e-12);
    }
}
