//! Property tests of the f32 `MatMul`, `FusedMatMul`, `Gemm` and `FusedGemm` kernels (packed GEMM, B packed
//! at build time when constant, batched and broadcast batches) against naive f64 references:
//! odd sizes, vectors, broadcast batch dims, attention shapes, transposes, alpha/beta, every
//! shape of Gemm's C, zero sizes.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 64).

use kiln_ir::op::{FusedGemm, FusedMatMul, Gemm, MatMul};
use kiln_ir::{Graph, Op, Tensor};
use kiln_runtime::{BuildCx, RunCx, Value};
use proptest::prelude::*;

/// An op struct with ONNX's attribute defaults (not Rust's `Default`: `group` is 1, not 0).
macro_rules! onnx_default {
    ($t:ident) => {
        $t::from_attrs(&mut kiln_ir::AttrMap::new()).expect("ONNX defaults")
    };
}

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn run(op: &Op, inputs: &[Option<Tensor>], consts: &[bool]) -> Tensor {
    let g = Graph::new("t");
    let cx = BuildCx {
        input_types: vec![None; inputs.len()],
        const_inputs: inputs
            .iter()
            .zip(consts)
            .map(|(t, &c)| if c { t.as_ref() } else { None })
            .collect(),
        output_types: vec![None],
        graph: &g,
    };
    let k = kiln_runtime::kernels::build(op, &cx).unwrap();
    let vals: Vec<Option<Value>> = inputs
        .iter()
        .map(|t| t.clone().map(Value::Tensor))
        .collect();
    let refs: Vec<Option<&Value>> = vals.iter().map(|v| v.as_ref()).collect();
    let mut rcx = RunCx::new();
    k.run(&refs, &mut rcx)
        .unwrap()
        .remove(0)
        .into_tensor()
        .unwrap()
}

fn tensor(shape: &[usize], seed: u64) -> (Tensor, Vec<f32>) {
    let v = data(shape.iter().product(), seed);
    (Tensor::from_vec(shape.to_vec(), v.clone()).unwrap(), v)
}

/// Row-major strides.
fn strides(s: &[usize]) -> Vec<usize> {
    let mut st = vec![1; s.len()];
    for i in (0..s.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * s[i + 1];
    }
    st
}

/// numpy matmul of `a` (`ash`) and `b` (`bsh`) in f64: (output shape, values, |terms| sums).
fn ref_matmul(
    ash: &[usize],
    a: &[f32],
    bsh: &[usize],
    b: &[f32],
) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
    let (a2, a_vec) = if ash.len() == 1 {
        (vec![1, ash[0]], true)
    } else {
        (ash.to_vec(), false)
    };
    let (b2, b_vec) = if bsh.len() == 1 {
        (vec![bsh[0], 1], true)
    } else {
        (bsh.to_vec(), false)
    };
    let (ra, rb) = (a2.len(), b2.len());
    let (m, k, n) = (a2[ra - 2], a2[ra - 1], b2[rb - 1]);
    assert_eq!(k, b2[rb - 2]);
    let r = ra.max(rb) - 2;
    let pad = |s: &[usize]| {
        let mut v = vec![1; r - (s.len() - 2)];
        v.extend(&s[..s.len() - 2]);
        v
    };
    let (ba, bb) = (pad(&a2), pad(&b2));
    let batch: Vec<usize> = ba
        .iter()
        .zip(&bb)
        .map(|(&x, &y)| if x == 1 { y } else { x })
        .collect();
    let (sa, sb) = (strides(&ba), strides(&bb));
    let nb: usize = batch.iter().product();
    let mut out = vec![0f64; nb * m * n];
    let mut sc = vec![0f64; nb * m * n];
    for bi in 0..nb {
        let mut rem = bi;
        let (mut oa, mut ob) = (0, 0);
        for d in (0..r).rev() {
            let i = rem % batch[d];
            rem /= batch[d];
            if ba[d] > 1 {
                oa += i * sa[d];
            }
            if bb[d] > 1 {
                ob += i * sb[d];
            }
        }
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut t) = (0f64, 0f64);
                for p in 0..k {
                    let v = a[(oa * m + i) * k + p] as f64 * b[(ob * k + p) * n + j] as f64;
                    s += v;
                    t += v.abs();
                }
                out[(bi * m + i) * n + j] = s;
                sc[(bi * m + i) * n + j] = t;
            }
        }
    }
    let mut shape = batch;
    if !a_vec {
        shape.push(m);
    }
    if !b_vec {
        shape.push(n);
    }
    (shape, out, sc)
}

fn close(got: &Tensor, shape: &[usize], want: &[f64], scale: &[f64]) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.shape(), shape);
    let g = got.as_slice::<f32>().unwrap();
    prop_assert_eq!(g.len(), want.len());
    for (i, ((&g, &w), &s)) in g.iter().zip(want).zip(scale).enumerate() {
        let tol = 2e-6 * (1.0 + s);
        prop_assert!(
            (g as f64 - w).abs() <= tol,
            "element {}: got {}, want {}",
            i,
            g,
            w
        );
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Shapes of a MatMul: batch dims that broadcast (some 1, some missing), vectors, zeros.
fn mm_shapes() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (
        (
            0usize..=3,
            prop::collection::vec((1usize..=3, 0u8..4), 0..=3),
        ),
        (0usize..=40, 0usize..=40, 0usize..=40),
        (0u8..6, any::<bool>()),
    )
        .prop_map(|((_, dims), (m, k, n), (vec_mode, _))| {
            let (mut ba, mut bb) = (Vec::new(), Vec::new());
            for &(d, mode) in &dims {
                match mode {
                    0 => {
                        ba.push(d);
                        bb.push(d);
                    }
                    1 => {
                        ba.push(d);
                        bb.push(1);
                    }
                    2 => {
                        ba.push(1);
                        bb.push(d);
                    }
                    _ => {
                        ba.push(d);
                        if !bb.is_empty() {
                            bb.push(d);
                        }
                    }
                }
            }
            let mut a = ba;
            a.extend([m, k]);
            let mut b = bb;
            b.extend([k, n]);
            match vec_mode {
                0 => (vec![k], b),
                1 => (a, vec![k]),
                _ => (a, b),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// MatMul with B constant (packed at build time) or not.
    #[test]
    fn matmul_f32_matches_reference((ash, bsh) in mm_shapes(), seed in any::<u64>()) {
        let (a, av) = tensor(&ash, seed);
        let (b, bv) = tensor(&bsh, seed ^ 7);
        let (shape, want, sc) = ref_matmul(&ash, &av, &bsh, &bv);
        let op = Op::MatMul(onnx_default!(MatMul));
        for consts in [[false, false], [false, true]] {
            let got = run(&op, &[Some(a.clone()), Some(b.clone())], &consts);
            close(&got, &shape, &want, &sc)?;
        }
    }

    /// Attention-like batched products `[b, h, s, d] × [b, h, d, s]` (enough batches to run
    /// them in parallel) with FusedMatMul's alpha and transB.
    #[test]
    fn batched_attention_shapes(b in 1usize..=2, h in 1usize..=6, s in 1usize..=70, d in 1usize..=33,
                                alpha in -2f32..2.0, trans_b in any::<bool>(), seed in any::<u64>()) {
        let (q, qv) = tensor(&[b, h, s, d], seed);
        let (kt, kv) = if trans_b { tensor(&[b, h, s, d], seed ^ 3) } else { tensor(&[b, h, d, s], seed ^ 3) };
        // Reference on B as [b, h, d, s].
        let kref: Vec<f32> = if trans_b {
            let mut v = vec![0f32; kv.len()];
            for bh in 0..b * h {
                for i in 0..s {
                    for j in 0..d {
                        v[bh * s * d + j * s + i] = kv[bh * s * d + i * d + j];
                    }
                }
            }
            v
        } else {
            kv.clone()
        };
        let (shape, want, sc) = ref_matmul(&[b, h, s, d], &qv, &[b, h, d, s], &kref);
        let want: Vec<f64> = want.iter().map(|v| v * alpha as f64).collect();
        let sc: Vec<f64> = sc.iter().map(|v| v * alpha.abs() as f64).collect();
        let op = Op::FusedMatMul(FusedMatMul { alpha, trans_b, ..onnx_default!(FusedMatMul) });
        for consts in [[false, false], [false, true]] {
            let got = run(&op, &[Some(q.clone()), Some(kt.clone())], &consts);
            close(&got, &shape, &want, &sc)?;
        }
    }

    /// Gemm and FusedGemm (each activation, LeakyRelu's default slope): transposes, alpha,
    /// beta, every broadcastable shape of C, B constant or not.
    #[test]
    fn gemm_f32_matches_reference(m in 0usize..=37, n in 0usize..=37, k in 0usize..=37,
                                  ta in any::<bool>(), tb in any::<bool>(),
                                  alpha in -2f32..2.0, beta in prop::sample::select(vec![0f32, 1.0, -0.5]),
                                  c_kind in 0u8..6, act in 0u8..6, seed in any::<u64>()) {
        let ash = if ta { [k, m] } else { [m, k] };
        let bsh = if tb { [n, k] } else { [k, n] };
        let (a, av) = tensor(&ash, seed);
        let (b, bv) = tensor(&bsh, seed ^ 5);
        let csh: Option<Vec<usize>> = match c_kind {
            0 => None,
            1 => Some(vec![n]),
            2 => Some(vec![1, n]),
            3 => Some(vec![m, 1]),
            4 => Some(vec![m, n]),
            _ => Some(vec![]),
        };
        let c = csh.as_ref().map(|s| tensor(s, seed ^ 9));
        let at = |i: usize, p: usize| if ta { av[p * m + i] } else { av[i * k + p] } as f64;
        let bt = |p: usize, j: usize| if tb { bv[j * k + p] } else { bv[p * n + j] } as f64;
        let mut want = vec![0f64; m * n];
        let mut sc = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut t) = (0f64, 0f64);
                for p in 0..k {
                    s += at(i, p) * bt(p, j);
                    t += (at(i, p) * bt(p, j)).abs();
                }
                let cv = match (&csh, &c) {
                    (Some(sh), Some((_, cv))) => (match sh.len() {
                        0 => cv[0],
                        1 => cv[j],
                        _ => cv[(if sh[0] == 1 { 0 } else { i }) * sh[1] + if sh[1] == 1 { 0 } else { j }],
                    }) as f64,
                    _ => 0.0,
                };
                want[i * n + j] = alpha as f64 * s + beta as f64 * cv;
                sc[i * n + j] = alpha.abs() as f64 * t + (beta as f64 * cv).abs();
            }
        }
        // act > 0: FusedGemm with an activation (5: none), against the f64 definition.
        let (name, slope): (Option<&str>, Option<f32>) = match act {
            1 => (Some("Relu"), None),
            2 => (Some("LeakyRelu"), Some(0.3)),
            3 => (Some("LeakyRelu"), None),
            4 => (Some(if seed % 2 == 0 { "Sigmoid" } else { "Tanh" }), None),
            _ => (None, None),
        };
        let f = |x: f64| match name {
            Some("Relu") => x.max(0.0),
            Some("LeakyRelu") => if x >= 0.0 { x } else { slope.unwrap_or(0.01) as f64 * x },
            Some("Sigmoid") => 1.0 / (1.0 + (-x).exp()),
            Some("Tanh") => x.tanh(),
            _ => x,
        };
        want.iter_mut().for_each(|w| *w = f(*w));
        let op = if act == 0 {
            Op::Gemm(Gemm { alpha, beta, trans_a: ta, trans_b: tb })
        } else {
            Op::FusedGemm(FusedGemm {
                alpha,
                beta,
                trans_a: ta,
                trans_b: tb,
                activation: name.map(str::to_string),
                activation_alpha: slope,
            })
        };
        let inputs = vec![Some(a), Some(b), c.map(|c| c.0)];
        for consts in [[false, false, false], [false, true, true]] {
            let got = run(&op, &inputs, &consts);
            close(&got, &[m, n], &want, &sc)?;
        }
    }
}
