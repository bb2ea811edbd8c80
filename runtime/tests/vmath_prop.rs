//! Accuracy of the vectorized f32 math (`kiln_runtime::gemm::vmath`) against f64 libm, measured
//! over dense sweeps and random inputs; the measured maxima are printed (`--nocapture`).

use kiln_runtime::gemm::vmath;
use proptest::prelude::*;

/// Every `step`-th f32 in `[lo, hi]` (by bit pattern walk of the value) plus specials.
fn sweep(lo: f32, hi: f32, count: usize) -> Vec<f32> {
    (0..=count)
        .map(|i| lo + (hi - lo) * (i as f32 / count as f32))
        .collect()
}

#[test]
fn exp_max_relative_error() {
    let xs = sweep(-87.0, 88.0, 400_000);
    let mut out = vec![0f32; xs.len()];
    vmath::exp_slice(&xs, &mut out);
    let mut worst = 0f64;
    for (&x, &y) in xs.iter().zip(&out) {
        let want = (x as f64).exp();
        let rel = ((y as f64 - want) / want).abs();
        worst = worst.max(rel);
    }
    println!("exp: max relative error {worst:.3e} on [-87, 88]");
    assert!(worst < 2.5e-7, "exp relative error {worst:e}");
    // Where e^x is subnormal the absolute error is what counts: a few of the smallest
    // subnormal's steps; below −104 the result is exactly 0 (e^x < 2^−150 there).
    let xs = sweep(-110.0, -87.0, 200_000);
    let mut out = vec![0f32; xs.len()];
    vmath::exp_slice(&xs, &mut out);
    let tiny = f32::from_bits(1) as f64;
    let mut worst = 0f64;
    for (&x, &y) in xs.iter().zip(&out) {
        if x < -104.0 {
            assert_eq!(y, 0.0, "exp({x}) = {y:e}, not 0");
        }
        worst = worst.max((y as f64 - (x as f64).exp()).abs() / tiny);
    }
    println!("exp: max absolute error {worst:.2} times 2^-149 on [-110, -87]");
    assert!(worst <= 4.0, "exp subnormal error {worst} times 2^-149");
    let special = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        89.0,
        -200.0,
        0.0,
    ];
    let mut o = [0f32; 6];
    vmath::exp_slice(&special, &mut o);
    assert!(o[0].is_nan());
    assert_eq!(o[1], f32::INFINITY);
    assert_eq!(o[2], 0.0);
    assert_eq!(o[3], f32::INFINITY);
    assert_eq!(o[4], 0.0);
    assert_eq!(o[5], 1.0);
}

#[test]
fn erf_max_absolute_error() {
    let xs = sweep(-6.0, 6.0, 400_000);
    let mut out = vec![0f32; xs.len()];
    vmath::erf_slice(&xs, &mut out);
    let mut worst = 0f64;
    for (&x, &y) in xs.iter().zip(&out) {
        worst = worst.max((y as f64 - libm::erf(x as f64)).abs());
    }
    println!("erf: max absolute error {worst:.3e} on [-6, 6]");
    assert!(worst < 5e-7, "erf absolute error {worst:e}");
    let mut o = [0f32; 3];
    vmath::erf_slice(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY], &mut o);
    assert!(o[0].is_nan());
    assert_eq!(&o[1..], &[1.0, -1.0]);
}

#[test]
fn sigmoid_and_gelu_errors() {
    let xs = sweep(-30.0, 30.0, 200_000);
    let mut s = vec![0f32; xs.len()];
    let mut g = vec![0f32; xs.len()];
    vmath::sigmoid_slice(&xs, &mut s);
    vmath::gelu_slice(&xs, &mut g);
    let (mut ws, mut wg) = (0f64, 0f64);
    for ((&x, &sv), &gv) in xs.iter().zip(&s).zip(&g) {
        let x = x as f64;
        ws = ws.max((sv as f64 - 1.0 / (1.0 + (-x).exp())).abs());
        let gw = 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        wg = wg.max((gv as f64 - gw).abs() / (1.0 + gw.abs()));
    }
    println!("sigmoid: max absolute error {ws:.3e}; gelu: max error/(1+|y|) {wg:.3e}");
    // Gelu inherits erf's absolute error scaled by |x|/2 (measured 1.23e-6 on this sweep).
    assert!(ws < 2e-7 && wg < 2e-6, "sigmoid {ws:e}, gelu {wg:e}");
}

#[test]
fn tanh_max_relative_error() {
    // Dense near 0 and around the switch at 0.625, then out to where tanh rounds to ±1.
    let mut xs = sweep(-1.0, 1.0, 400_000);
    xs.extend(sweep(-20.0, 20.0, 400_000));
    xs.extend([0.0, -0.0, 1e-30, -1e-30, 1e-8, 0.625, -0.625, 100.0, -100.0]);
    let mut y = vec![0f32; xs.len()];
    vmath::tanh_slice(&xs, &mut y);
    let mut worst = (0f64, 0f32);
    for (&x, &v) in xs.iter().zip(&y) {
        let want = (x as f64).tanh();
        let rel = if want == 0.0 {
            (v as f64).abs()
        } else {
            (v as f64 - want).abs() / want.abs()
        };
        if rel > worst.0 {
            worst = (rel, x);
        }
    }
    println!(
        "tanh: max relative error {:.3e} at x = {}",
        worst.0, worst.1
    );
    assert!(
        worst.0 < 4e-7,
        "tanh: relative error {:e} at {}",
        worst.0,
        worst.1
    );
    // Signs, infinities and NaN.
    let special = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -0.0];
    let mut o = [0f32; 4];
    vmath::tanh_slice(&special, &mut o);
    assert_eq!(o[..2], [1.0, -1.0]);
    assert!(o[2].is_nan());
    assert!(o[3] == 0.0 && o[3].is_sign_negative());
}

proptest! {
    /// Softmax rows against f64 (odd row lengths, tails, ±inf and NaN rows, many rows so that
    /// the threaded path runs too).
    #[test]
    fn softmax_rows_match_f64(n in 0usize..=70, rows in 0usize..=40, big in any::<bool>(),
                              special in 0u8..4, seed in any::<u64>()) {
        let rows = if big { rows * 64 } else { rows };
        let mut s = seed | 1;
        let mut x: Vec<f32> = (0..rows * n).map(|_| {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 40.0 - 20.0
        }).collect();
        if rows * n > 0 {
            match special {
                1 => x[0] = f32::INFINITY,
                2 => x[0] = f32::NEG_INFINITY,
                3 => x[0] = f32::NAN,
                _ => {}
            }
        }
        let mut out = vec![0f32; x.len()];
        vmath::softmax_rows(&x, n, &mut out);
        for (r, o) in x.chunks(n.max(1)).zip(out.chunks(n.max(1))) {
            let m = r.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (&g, &w) in o.iter().zip(&e) {
                let w = w / sum;
                if w.is_nan() || r.iter().any(|v| v.is_nan()) {
                    prop_assert!(g.is_nan());
                } else {
                    prop_assert!((g as f64 - w).abs() <= 1e-6, "got {}, want {}", g, w);
                }
            }
        }
    }
}

proptest! {
    /// The fused softmax rows of attention (a mask added and a scale applied in the row loop,
    /// NaN probabilities replaced) against the same steps taken one at a time with the plain
    /// row kernel, bit for bit: on a CPU with AVX-512 the fused rows run a 16-lane build of the
    /// same code, which must not change a bit; and against f64.
    #[test]
    fn fused_softmax_rows_match_the_steps_bit_for_bit(n in 1usize..=70, rows in 1usize..=20,
                                                      masked in 0usize..=3, seed in any::<u64>()) {
        let mut s = seed | 1;
        let mut next = || {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 16.0 - 8.0
        };
        let x: Vec<f32> = (0..rows * n).map(|_| next()).collect();
        // One mask row broadcast over the rows (stride 0), its last `masked` keys at -inf
        // (a whole row of -inf gives NaN probabilities, which `nan_to` turns into 0).
        let mask: Vec<f32> = (0..n)
            .map(|j| if j + masked >= n { f32::NEG_INFINITY } else { next() / 4.0 })
            .collect();
        let scale = 0.35f32;
        let mut fused = x.clone();
        vmath::softmax_rows_fused(
            &mut fused,
            n,
            &[
                (vmath::RowOp::Mul, vmath::RowArg::Scalar(scale)),
                (vmath::RowOp::Add, vmath::RowArg::Rows { data: &mask, stride: 0 }),
            ],
            Some(vmath::RowArg::Scalar(0.0)),
        );
        let mut steps: Vec<f32> = x
            .chunks(n)
            .flat_map(|r| r.iter().zip(&mask).map(|(&v, &m)| v * scale + m))
            .collect();
        vmath::softmax_rows_in_place(&mut steps, n);
        for v in steps.iter_mut() {
            if v.is_nan() {
                *v = 0.0;
            }
        }
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&fused), bits(&steps));
        for (r, o) in x.chunks(n).zip(fused.chunks(n)) {
            let z: Vec<f64> = r.iter().zip(&mask).map(|(&v, &m)| (v * scale) as f64 + m as f64).collect();
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|&v| (v - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (&g, &w) in o.iter().zip(&e) {
                let w = if sum.is_nan() || m == f64::NEG_INFINITY { 0.0 } else { w / sum };
                prop_assert!((g as f64 - w).abs() <= 1e-6, "got {}, want {}", g, w);
            }
        }
    }
}
