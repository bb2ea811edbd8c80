//! Property tests of kiln's f32 GEMM (`kiln_runtime::gemm`) against a naive f64 reference:
//! odd and zero sizes, transposes, strides (leading dimensions past the row), alpha/beta, every
//! epilogue, every ISA this CPU can run, and the scalar models of every ISA's kernel (the same
//! generic micro-kernel over scalar FMA lanes — which is how the AVX-512 kernel is checked on a
//! CPU without AVX-512 and the NEON kernel on x86). Native kernels must also match their
//! model bit for bit, and results must not depend on the thread count.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 48).

use kiln_runtime::gemm::{
    self, AOperand, Activation, BOperand, Batch, Epilogue, Gemm, Im2col, Isa, IsaError,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Problem generation
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    pad_a: usize,
    pad_b: usize,
    pad_c: usize,
    pad_r: usize,
    alpha: f32,
    beta: f32,
    bias: bool,
    row_bias: bool,
    residual: bool,
    act: Activation,
    seed: u64,
}

/// Deterministic data: xorshift values in [-1, 1).
fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

struct Problem {
    c: Case,
    a: Vec<f32>,
    lda: usize,
    b: Vec<f32>,
    ldb: usize,
    c0: Vec<f32>,
    ldc: usize,
    bias: Vec<f32>,
    row_bias: Vec<f32>,
    res: Vec<f32>,
    ldr: usize,
}

impl Problem {
    fn new(c: &Case) -> Problem {
        let (ar, ac) = if c.trans_a { (c.k, c.m) } else { (c.m, c.k) };
        let (br, bc) = if c.trans_b { (c.n, c.k) } else { (c.k, c.n) };
        let lda = ac + c.pad_a;
        let ldb = bc + c.pad_b;
        let ldc = c.n + c.pad_c;
        let ldr = c.n + c.pad_r;
        Problem {
            a: data(ar * lda, c.seed),
            lda,
            b: data(br * ldb, c.seed + 1),
            ldb,
            c0: data(c.m * ldc, c.seed + 2),
            ldc,
            bias: data(c.n, c.seed + 3),
            row_bias: data(c.m, c.seed + 5),
            res: data(c.m * ldr, c.seed + 4),
            ldr,
            c: c.clone(),
        }
    }

    fn epilogue(&self) -> Epilogue<'_> {
        Epilogue {
            bias: self.c.bias.then_some(&self.bias[..]),
            row_bias: self.c.row_bias.then_some(&self.row_bias[..]),
            activation: self.c.act,
            residual: self.c.residual.then_some((&self.res[..], self.ldr)),
            map: None,
        }
    }

    fn run(&self, g: &Gemm) -> Vec<f32> {
        let c = &self.c;
        let mut out = self.c0.clone();
        g.sgemm(
            c.m,
            c.n,
            c.k,
            c.alpha,
            &self.a,
            self.lda,
            c.trans_a,
            &self.b,
            self.ldb,
            c.trans_b,
            c.beta,
            &mut out,
            self.ldc,
            self.epilogue(),
        );
        out
    }

    fn run_packed(&self, g: &Gemm) -> Vec<f32> {
        let c = &self.c;
        let pb = g.pack_b(c.k, c.n, &self.b, self.ldb, c.trans_b);
        let mut out = self.c0.clone();
        g.sgemm_packed(
            c.m,
            c.alpha,
            &self.a,
            self.lda,
            c.trans_a,
            &pb,
            c.beta,
            &mut out,
            self.ldc,
            self.epilogue(),
        );
        out
    }

    /// `A` packed ahead of time (as a convolution's weights) and `B` packed per call.
    fn run_packed_a(&self, g: &Gemm) -> Vec<f32> {
        let c = &self.c;
        let pa = g.pack_a(c.m, c.k, &self.a, self.lda, c.trans_a);
        let mut out = self.c0.clone();
        g.sgemm_ops(
            c.m,
            c.n,
            c.k,
            c.alpha,
            AOperand::Packed(&pa),
            BOperand::Matrix {
                b: &self.b,
                ldb: self.ldb,
                trans: c.trans_b,
            },
            c.beta,
            &mut out,
            self.ldc,
            self.epilogue(),
        );
        out
    }

    fn a_at(&self, i: usize, p: usize) -> f64 {
        (if self.c.trans_a {
            self.a[p * self.lda + i]
        } else {
            self.a[i * self.lda + p]
        }) as f64
    }
    fn b_at(&self, p: usize, j: usize) -> f64 {
        (if self.c.trans_b {
            self.b[j * self.ldb + p]
        } else {
            self.b[p * self.ldb + j]
        }) as f64
    }

    /// Checks `got` against the f64 reference; returns a description of the first mismatch.
    fn check(&self, got: &[f32]) -> Result<(), String> {
        let c = &self.c;
        let u = f32::EPSILON as f64; // 2^-23: twice the unit roundoff
        let lip = match c.act {
            Activation::LeakyRelu(s) => (s.abs() as f64).max(1.0),
            _ => 1.2,
        };
        for i in 0..c.m {
            for j in 0..c.n {
                let (mut s, mut mag) = (0f64, 0f64);
                for p in 0..c.k {
                    let t = self.a_at(i, p) * self.b_at(p, j);
                    s += t;
                    mag += t.abs();
                }
                let mut y = c.alpha as f64 * s;
                let mut bound = (c.alpha as f64).abs() * mag;
                if c.beta != 0.0 {
                    let t = c.beta as f64 * self.c0[i * self.ldc + j] as f64;
                    y += t;
                    bound += t.abs();
                }
                if c.bias {
                    y += self.bias[j] as f64;
                    bound += (self.bias[j] as f64).abs();
                }
                if c.row_bias {
                    y += self.row_bias[i] as f64;
                    bound += (self.row_bias[i] as f64).abs();
                }
                if c.residual {
                    let r = self.res[i * self.ldr + j] as f64;
                    y += r;
                    bound += r.abs();
                }
                let want = act_f64(c.act, y);
                let tol = lip * (c.k as f64 + 6.0) * u * bound + act_tol(c.act, y) + 1e-30;
                let g = got[i * self.ldc + j] as f64;
                if !((g - want).abs() <= tol) {
                    return Err(format!("C[{i}][{j}] = {g}, reference {want} (pre-activation {y}), tolerance {tol:e}"));
                }
            }
            // Padding of C (columns n..ldc) untouched.
            for j in c.n..self.ldc {
                if i * self.ldc + j < got.len()
                    && got[i * self.ldc + j].to_bits() != self.c0[i * self.ldc + j].to_bits()
                {
                    return Err(format!("C[{i}][{j}] (padding past n) was written"));
                }
            }
        }
        Ok(())
    }
}

fn act_f64(act: Activation, x: f64) -> f64 {
    match act {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu(a) => {
            if x < 0.0 {
                a as f64 * x
            } else {
                x
            }
        }
        Activation::Clip { min, max } => x.max(min as f64).min(max as f64),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::FastGelu => {
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            0.5 * x * (1.0 + u.tanh())
        }
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
    }
}

/// Allowed error of kiln's f32 activation at `x` (beyond the propagated GEMM error).
fn act_tol(act: Activation, x: f64) -> f64 {
    match act {
        Activation::None
        | Activation::Relu
        | Activation::LeakyRelu(_)
        | Activation::Clip { .. } => 0.0,
        _ => 1e-6 * (1.0 + x.abs()),
    }
}

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        4 => Just(Activation::None),
        1 => Just(Activation::Relu),
        1 => (-1.5f32..1.5).prop_map(Activation::LeakyRelu),
        1 => (-1.0f32..0.0, 0.0f32..1.0).prop_map(|(min, max)| Activation::Clip { min, max }),
        1 => Just(Activation::Gelu),
        1 => Just(Activation::FastGelu),
        1 => Just(Activation::Sigmoid),
        1 => Just(Activation::Tanh),
    ]
}

fn dim(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![2 => 0usize..=2, 5 => 1usize..=max, 1 => Just(max)]
}

fn scalar_of(values: &'static [f32]) -> impl Strategy<Value = f32> {
    prop_oneof![3 => proptest::sample::select(values), 1 => -2.0f32..2.0]
}

fn case(max_m: usize, max_n: usize, max_k: usize) -> impl Strategy<Value = Case> {
    (
        (dim(max_m), dim(max_n), dim(max_k)),
        (any::<bool>(), any::<bool>()),
        (0usize..4, 0usize..4, 0usize..4, 0usize..4),
        (
            scalar_of(&[1.0, 1.0, -1.0, 0.5, 0.0]),
            scalar_of(&[0.0, 0.0, 1.0, -0.5]),
        ),
        (any::<bool>(), any::<bool>(), any::<bool>(), activation()),
        any::<u64>(),
    )
        .prop_map(
            |(
                (m, n, k),
                (trans_a, trans_b),
                (pad_a, pad_b, pad_c, pad_r),
                (alpha, beta),
                (bias, row_bias, residual, act),
                seed,
            )| {
                Case {
                    m,
                    n,
                    k,
                    trans_a,
                    trans_b,
                    pad_a,
                    pad_b,
                    pad_c,
                    pad_r,
                    alpha,
                    beta,
                    bias,
                    row_bias,
                    residual,
                    act,
                    seed,
                }
            },
        )
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Small cache blocks so that small problems cross every KC / MC / NC boundary.
fn small_blocking(g: Gemm, kc: usize, mc: usize, nc: usize) -> Gemm {
    g.with_blocking(kc, mc, nc)
}

/// Every ISA this CPU runs; small problems are split over threads too (to test the splitting).
fn native() -> Vec<Gemm> {
    Isa::available()
        .into_iter()
        .map(|isa| Gemm::new(isa).unwrap().with_min_parallel_flops(0))
        .collect()
}

fn same_bits(x: &[f32], y: &[f32]) -> Result<(), String> {
    match x
        .iter()
        .zip(y)
        .position(|(a, b)| a.to_bits() != b.to_bits())
    {
        None => Ok(()),
        Some(i) => Err(format!("element {i}: {} vs {}", x[i], y[i])),
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Every ISA this CPU runs, default blocking, 1–3 threads, against the reference.
    #[test]
    fn native_kernels_match_reference(c in case(40, 70, 40), threads in 1usize..=3) {
        let p = Problem::new(&c);
        for g in native() {
            let g = g.with_threads(threads);
            p.check(&p.run(&g)).map_err(|e| TestCaseError::fail(format!("{g:?}: {e}")))?;
        }
    }

    /// `sgemm_ops` with the im2col matrix packed straight from the image, and with a pre-packed
    /// A (with either B), gives the same bits as `sgemm` on the stored matrices, for every ISA this CPU runs and the scalar models,
    /// with small blocks and threads (the column split starts mid-row) over odd geometries:
    /// strides, dilations, padding on either side, kernels wider than the image; images
    /// narrow enough for the packing's offset-table path (≤ 16 output columns) and wide ones.
    #[test]
    fn im2col_packing_matches_materialized_matrix(
        (c, h, w, kh, kw) in (1usize..=5, 1usize..=9, prop_oneof![1usize..=13, 18usize..=48], 1usize..=4, 1usize..=4),
        (sh, sw, dh, dw) in (1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2),
        (ph, pw, pe_h, pe_w) in (0usize..=2, 0usize..=3, 0usize..=2, 0usize..=2),
        m in 1usize..=14, (kc, mc, nc) in (1usize..40, 1usize..20, 1usize..50),
        threads in 1usize..=3, act in activation(), seed in any::<u64>(),
    ) {
        // The padded image must hold one dilated kernel.
        let (ekh, ekw) = ((kh - 1) * dh + 1, (kw - 1) * dw + 1);
        let (hp, wp) = ((h + ph + pe_h).max(ekh), (w + pw + pe_w).max(ekw));
        let geom = Im2col { c, h, w, kh, kw, sh, sw, dh, dw, ph, pw, oh: (hp - ekh) / sh + 1, ow: (wp - ekw) / sw + 1 };
        let (k, n) = (geom.rows(), geom.cols());
        let x = data(c * h * w, seed);
        let a = data(m * k, seed + 1);
        let rb = data(m, seed + 2);
        let mut col = vec![0f32; k * n];
        for ci in 0..c {
            for ki in 0..kh {
                for kj in 0..kw {
                    let r = (ci * kh + ki) * kw + kj;
                    for oy in 0..geom.oh {
                        for ox in 0..geom.ow {
                            let iy = (oy * sh + ki * dh) as isize - ph as isize;
                            let ix = (ox * sw + kj * dw) as isize - pw as isize;
                            if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                col[r * n + oy * geom.ow + ox] = x[(ci * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                }
            }
        }
        let epi = Epilogue::NONE.with_row_bias(&rb).with_activation(act);
        let gemms = native().into_iter().chain(Isa::ALL.map(|i| Gemm::model(i).with_min_parallel_flops(0)));
        for g in gemms {
            let g = small_blocking(g, kc, mc, nc).with_threads(threads);
            let mut want = vec![f32::NAN; m * n];
            g.sgemm(m, n, k, 1.0, &a, k, false, &col, n, false, 0.0, &mut want, n, epi);
            let pa = g.pack_a(m, k, &a, k, false);
            let raw_a = AOperand::Matrix { a: &a, lda: k, trans: false };
            let im2col = BOperand::Im2col { x: &x, geom };
            let raw_b = BOperand::Matrix { b: &col, ldb: n, trans: false };
            for (what, ao, bo) in [
                ("im2col", raw_a, im2col),
                ("packed A, im2col", AOperand::Packed(&pa), im2col),
                ("packed A", AOperand::Packed(&pa), raw_b),
            ] {
                let mut got = vec![f32::NAN; m * n];
                g.sgemm_ops(m, n, k, 1.0, ao, bo, 0.0, &mut got, n, epi);
                same_bits(&got, &want).map_err(|e| TestCaseError::fail(format!("{what}: {g:?} {geom:?}: {e}")))?;
            }
        }
    }

    /// Every ISA this CPU runs with small cache blocks (crossing the KC, MC and NC loops).
    #[test]
    fn native_kernels_blocked_match_reference(c in case(50, 90, 60), kc in 1usize..20, mc in 1usize..30, nc in 1usize..70, threads in 1usize..=2) {
        let p = Problem::new(&c);
        for g in native() {
            let g = small_blocking(g, kc, mc, nc).with_threads(threads);
            p.check(&p.run(&g)).map_err(|e| TestCaseError::fail(format!("{g:?}: {e}")))?;
        }
    }

    /// The scalar model of every ISA's kernel (AVX2, AVX-512, NEON — runnable or not here).
    #[test]
    fn kernel_models_match_reference(c in case(30, 50, 30), kc in 1usize..40, threads in 1usize..=2) {
        let p = Problem::new(&c);
        for isa in Isa::ALL {
            let g = Gemm::model(isa).with_min_parallel_flops(0);
            let (_, mc, nc) = g.blocking();
            let g = small_blocking(g, kc, mc, nc).with_threads(threads);
            p.check(&p.run(&g)).map_err(|e| TestCaseError::fail(format!("{g:?}: {e}")))?;
        }
    }

    /// A native kernel computes exactly what its model computes.
    #[test]
    fn native_kernels_match_their_model_bitwise(c in case(30, 70, 40), kc in prop_oneof![Just(256usize), 1usize..30]) {
        let p = Problem::new(&c);
        for g in native() {
            if g.isa() == Isa::Scalar {
                continue;
            }
            let (_, mc, nc) = g.blocking();
            let native = p.run(&small_blocking(g, kc, mc, nc));
            let model = p.run(&small_blocking(Gemm::model(g.isa()), kc, mc, nc));
            same_bits(&native, &model).map_err(|e| TestCaseError::fail(format!("{} native vs model: {e}", g.isa())))?;
        }
    }

    /// Thread count, MC/NC blocking and row/column splitting do not change a single bit, a
    /// pre-packed B gives the same bits as B packed per call, and an A packed ahead of time the
    /// same bits as A read where it is stored.
    #[test]
    fn threads_blocking_and_packing_do_not_change_bits(c in case(60, 90, 40), mc in 1usize..40, nc in 1usize..80) {
        let p = Problem::new(&c);
        for g in native() {
            let (kc, _, _) = g.blocking();
            let one = p.run(&g.with_threads(1));
            for t in [2, 3] {
                same_bits(&one, &p.run(&g.with_threads(t))).map_err(|e| TestCaseError::fail(format!("{g:?} {t} threads: {e}")))?;
            }
            let blocked = small_blocking(g, kc, mc, nc).with_threads(2);
            same_bits(&one, &p.run(&blocked)).map_err(|e| TestCaseError::fail(format!("{blocked:?}: {e}")))?;
            same_bits(&one, &p.run_packed(&g.with_threads(2))).map_err(|e| TestCaseError::fail(format!("{g:?} packed: {e}")))?;
            same_bits(&one, &p.run_packed(&blocked)).map_err(|e| TestCaseError::fail(format!("{blocked:?} packed: {e}")))?;
            // A read where it is stored (row-major, rows apart enough) vs packed per call or
            // ahead of time.
            same_bits(&one, &p.run(&g.with_direct_a(false))).map_err(|e| TestCaseError::fail(format!("{g:?} A packed per call: {e}")))?;
            same_bits(&one, &p.run(&blocked.with_direct_a(false))).map_err(|e| TestCaseError::fail(format!("{blocked:?} A packed per call: {e}")))?;
            same_bits(&one, &p.run_packed_a(&g.with_threads(2))).map_err(|e| TestCaseError::fail(format!("{g:?} packed A: {e}")))?;
        }
    }

    /// A last panel of any width — 1–4 columns (the rows-in-lanes path, several tiles at a
    /// time), whole vectors and 1–4 columns (split between a narrower tile and that path) or any
    /// other — gives the bits of the same columns computed inside a full panel, with every
    /// epilogue, A stored or packed ahead of time, 1–2 threads, for every ISA this CPU runs and
    /// the scalar models.
    #[test]
    fn narrow_last_panel_matches_full_panel(
        m in 1usize..=110, q in 0usize..=2, cols in prop_oneof![1usize..=4, 17usize..=20, 1usize..=64], k in prop_oneof![1usize..=40, 250usize..=300],
        (alpha, beta) in (scalar_of(&[1.0, 0.5]), scalar_of(&[0.0, 1.0, -0.75])),
        (bias, row_bias, residual) in (any::<bool>(), any::<bool>(), any::<bool>()),
        act in activation(), threads in 1usize..=2, seed in any::<u64>(),
    ) {
        let gemms = native().into_iter().chain(Isa::ALL.map(|i| Gemm::model(i).with_min_parallel_flops(0)));
        for g in gemms {
            let g = g.with_threads(threads);
            let nr = g.tile().1;
            let (n, wide) = (q * nr + (cols - 1) % nr + 1, (q + 1) * nr);
            let a = data(m * k, seed);
            let b = data(k * wide, seed + 1);
            let c0 = data(m * wide, seed + 2);
            let bv = data(wide, seed + 3);
            let rb = data(m, seed + 4);
            let res = data(m * wide, seed + 5);
            let epi = Epilogue {
                bias: bias.then_some(&bv[..]),
                row_bias: row_bias.then_some(&rb[..]),
                activation: act,
                residual: residual.then_some((&res[..], wide)),
                map: None,
            };
            let pa = g.pack_a(m, k, &a, k, false);
            for packed_a in [false, true] {
                let run = |n: usize| {
                    let mut c = c0.clone();
                    let ao = if packed_a {
                        AOperand::Packed(&pa)
                    } else {
                        AOperand::Matrix { a: &a, lda: k, trans: false }
                    };
                    g.sgemm_ops(m, n, k, alpha, ao, BOperand::Matrix { b: &b, ldb: wide, trans: false }, beta, &mut c, wide, epi);
                    c
                };
                let (narrow, full) = (run(n), run(wide));
                for i in 0..m {
                    let row = |v: &[f32]| v[i * wide..i * wide + n].to_vec();
                    same_bits(&row(&narrow), &row(&full)).map_err(|e| TestCaseError::fail(format!("{g:?} packed A {packed_a}, row {i}: {e}")))?;
                    // Nothing right of the narrow product is written.
                    same_bits(&narrow[i * wide + n..(i + 1) * wide], &c0[i * wide + n..(i + 1) * wide]).map_err(|e| TestCaseError::fail(format!("{g:?} wrote past n in row {i}: {e}")))?;
                }
            }
        }
    }

    /// `sgemm_batched` equals a loop of `sgemm`, stacked and side-by-side C layouts, broadcast
    /// operands (stride 0).
    #[test]
    fn batched_matches_loop(c in case(20, 24, 24), count in 1usize..5, side_by_side in any::<bool>(), share_b in any::<bool>(), threads in 1usize..=2) {
        let (ar, ac) = if c.trans_a { (c.k, c.m) } else { (c.m, c.k) };
        let (br, bc) = if c.trans_b { (c.n, c.k) } else { (c.k, c.n) };
        let lda = ac + c.pad_a;
        let ldb = bc + c.pad_b;
        let sa = ar * lda;
        let sb = if share_b { 0 } else { br * ldb };
        let (ldc, sc) = if side_by_side { (count * (c.n + c.pad_c), c.n + c.pad_c) } else { (c.n + c.pad_c, c.m * (c.n + c.pad_c)) };
        let ldr = c.n + c.pad_r;
        let sr = c.m * ldr;
        let a = data(sa * count, c.seed);
        let b = data(if share_b { br * ldb } else { sb * count }, c.seed + 1);
        let c0 = data(if side_by_side { c.m * ldc } else { sc * count }, c.seed + 2);
        let bias = data(c.n, c.seed + 3);
        let res = data(sr * count, c.seed + 4);
        let epi = |i: usize| Epilogue {
            bias: c.bias.then_some(&bias[..]),
            row_bias: None,
            activation: c.act,
            residual: c.residual.then(|| (res.get(i * sr..).unwrap_or(&[]), ldr)),
            map: None,
        };
        for g in native() {
            let g = g.with_threads(threads);
            let mut got = c0.clone();
            let batch = Batch { count, stride_a: sa, stride_b: sb, stride_c: sc, stride_residual: sr };
            g.sgemm_batched(batch, c.m, c.n, c.k, c.alpha, &a, lda, c.trans_a, &b, ldb, c.trans_b, c.beta, &mut got, ldc, epi(0));
            let mut want = c0.clone();
            let tail = |v: &[f32], at: usize| v.get(at..).unwrap_or(&[]).to_vec();
            for i in 0..count {
                if c.m == 0 || c.n == 0 {
                    break;
                }
                let cs = &mut want[i * sc..];
                g.with_threads(1).sgemm(c.m, c.n, c.k, c.alpha, &tail(&a, i * sa), lda, c.trans_a, &tail(&b, i * sb), ldb, c.trans_b, c.beta, cs, ldc, epi(i));
            }
            same_bits(&want, &got).map_err(|e| TestCaseError::fail(format!("{g:?}: {e}")))?;
        }
    }

    /// The activations against f64 definitions.
    #[test]
    fn activations_match_f64(x in prop_oneof![-10.0f32..10.0, -100.0f32..100.0, -1e-3f32..1e-3]) {
        for act in [Activation::Gelu, Activation::FastGelu, Activation::Sigmoid, Activation::Tanh] {
            let got = act.apply(x) as f64;
            let want = act_f64(act, x as f64);
            prop_assert!((got - want).abs() <= act_tol(act, x as f64), "{act:?}({x}) = {got}, want {want}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases
// ---------------------------------------------------------------------------------------------

fn fixed(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool, act: Activation) -> Case {
    Case {
        m,
        n,
        k,
        trans_a,
        trans_b,
        pad_a: 3,
        pad_b: 1,
        pad_c: 2,
        pad_r: 5,
        alpha: 0.75,
        beta: -0.5,
        bias: true,
        row_bias: true,
        residual: true,
        act,
        seed: (m * 1_000_003 + n * 1009 + k) as u64,
    }
}

/// Default blocking on shapes that cross KC, MC and NC of every native kernel, 1 and 2 threads.
#[test]
fn native_large_shapes() {
    let shapes = [
        (131, 75, 600, false, false),
        (7, 3100, 300, false, true),
        (20, 1000, 70, false, false),
        (300, 45, 513, true, false),
        (64, 250, 257, true, true),
        (1, 1, 1000, false, false),
    ];
    for (m, n, k, ta, tb) in shapes {
        let p = Problem::new(&fixed(m, n, k, ta, tb, Activation::Gelu));
        for g in native() {
            for t in [1, 2] {
                let g = g.with_threads(t);
                p.check(&p.run(&g))
                    .unwrap_or_else(|e| panic!("{g:?} {m}x{n}x{k}: {e}"));
                p.check(&p.run_packed(&g))
                    .unwrap_or_else(|e| panic!("{g:?} packed {m}x{n}x{k}: {e}"));
                // A pre-packed A blocks B's columns for L2, not by NC: same bits.
                same_bits(&p.run_packed_a(&g), &p.run(&g))
                    .unwrap_or_else(|e| panic!("{g:?} packed A {m}x{n}x{k}: {e}"));
            }
        }
    }
}

/// Every model with its default blocking on one shape crossing KC (slow: scalar lanes).
#[test]
fn models_default_blocking() {
    let p = Problem::new(&fixed(19, 37, 300, false, true, Activation::Relu));
    for isa in Isa::ALL {
        let g = Gemm::model(isa);
        p.check(&p.run(&g)).unwrap_or_else(|e| panic!("{g:?}: {e}"));
    }
}

/// m, n or k = 0: C = act(beta·C + bias + residual); with beta = 0 C is not read (NaN stays out).
#[test]
fn zero_sizes() {
    for g in native().into_iter().chain(Isa::ALL.map(Gemm::model)) {
        // k = 0
        let bias = [1.0f32, 2.0, 3.0];
        let res = [0.5f32; 6];
        let mut c = vec![f32::NAN, 1.0, 1.0, 4.0, 4.0, 4.0];
        let epi = Epilogue {
            bias: Some(&bias),
            row_bias: None,
            activation: Activation::Relu,
            residual: Some((&res, 3)),
            map: None,
        };
        g.sgemm(
            2,
            3,
            0,
            1.0,
            &[],
            0,
            false,
            &[],
            0,
            false,
            0.0,
            &mut c,
            3,
            epi,
        );
        assert_eq!(c, [1.5, 2.5, 3.5, 1.5, 2.5, 3.5], "{g:?}");
        let mut c = vec![2.0f32; 6];
        g.sgemm(
            2,
            3,
            0,
            1.0,
            &[],
            0,
            false,
            &[],
            0,
            false,
            -1.0,
            &mut c,
            3,
            Epilogue::bias(&bias),
        );
        assert_eq!(c, [-1.0, 0.0, 1.0, -1.0, 0.0, 1.0], "{g:?}");
        // m = 0, n = 0: nothing touched, empty slices accepted.
        let mut empty: [f32; 0] = [];
        g.sgemm(
            0,
            5,
            7,
            1.0,
            &[],
            7,
            false,
            &[1.0; 35],
            5,
            false,
            0.0,
            &mut empty,
            5,
            Epilogue::NONE,
        );
        let mut c = vec![7.0f32; 4];
        g.sgemm(
            4,
            0,
            3,
            1.0,
            &[1.0; 12],
            3,
            false,
            &[],
            0,
            false,
            0.0,
            &mut c,
            1,
            Epilogue::NONE,
        );
        assert_eq!(c, [7.0; 4]);
        // beta = 0 with NaN in C: C is not read.
        let mut c = vec![f32::NAN; 4];
        g.sgemm(
            2,
            2,
            1,
            1.0,
            &[1.0, 2.0],
            1,
            false,
            &[3.0, 4.0],
            2,
            false,
            0.0,
            &mut c,
            2,
            Epilogue::NONE,
        );
        assert_eq!(c, [3.0, 4.0, 6.0, 8.0], "{g:?}");
        // Packed B with k = 0.
        let pb = g.pack_b(0, 3, &[], 0, false);
        let mut c = vec![1.0f32; 6];
        g.sgemm_packed(
            2,
            1.0,
            &[],
            0,
            false,
            &pb,
            0.0,
            &mut c,
            3,
            Epilogue::bias(&bias),
        );
        assert_eq!(c, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    }
}

/// `KILN_ISA` parsing and availability; an ISA the CPU lacks is an error.
#[test]
fn isa_selection() {
    assert_eq!(Isa::from_env_value(None), Ok(None));
    assert_eq!(Isa::from_env_value(Some("")), Ok(None));
    assert_eq!(Isa::from_env_value(Some("scalar")), Ok(Some(Isa::Scalar)));
    assert!(matches!(
        Isa::from_env_value(Some("sse9")),
        Err(IsaError::Unknown(_))
    ));
    for isa in Isa::ALL {
        assert_eq!(isa.name().parse::<Isa>(), Ok(isa));
        let forced = Isa::from_env_value(Some(isa.name()));
        if isa.is_available() {
            assert_eq!(forced, Ok(Some(isa)));
            assert_eq!(Gemm::new(isa).unwrap().isa(), isa);
        } else {
            assert_eq!(forced, Err(IsaError::Unavailable(isa)));
            assert!(Gemm::new(isa).is_err());
        }
    }
    #[cfg(target_arch = "x86_64")]
    assert!(!Isa::Neon.is_available());
    #[cfg(target_arch = "aarch64")]
    {
        assert!(Isa::Neon.is_available());
        assert!(!Isa::Avx2.is_available() && !Isa::Avx512.is_available());
    }
    eprintln!(
        "available ISAs: {:?}; selected: {:?}",
        Isa::available(),
        Isa::selected()
    );
}

/// The default free functions (whatever `KILN_ISA` / the CPU selects) on a small problem.
#[test]
fn default_free_functions() {
    let p = Problem::new(&fixed(33, 29, 70, false, false, Activation::FastGelu));
    let mut out = p.c0.clone();
    let c = &p.c;
    gemm::sgemm(
        c.m,
        c.n,
        c.k,
        c.alpha,
        &p.a,
        p.lda,
        false,
        &p.b,
        p.ldb,
        false,
        c.beta,
        &mut out,
        p.ldc,
        p.epilogue(),
    );
    p.check(&out).unwrap();
    let pb = gemm::PackedB::new(c.k, c.n, &p.b, p.ldb, false);
    let mut c2 = p.c0.clone();
    let mut q = p.c.clone();
    q.alpha = 1.0;
    q.beta = 0.0;
    let p2 = Problem {
        c: q,
        ..Problem::new(&p.c)
    };
    gemm::sgemm_packed(c.m, &p.a, p.lda, false, &pb, &mut c2, p.ldc, p.epilogue());
    p2.check(&c2).unwrap();
}
