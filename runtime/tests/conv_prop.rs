//! Property tests of the f32 `Conv` kernel (im2col + packed GEMM, 1×1 and depthwise paths,
//! weights packed at build time or per run) and of the f32 pooling kernels, against naive f64
//! references: odd sizes, strides, dilations, asymmetric pads, groups, 1-D and 2-D, batches,
//! bias or none, zero-size outputs.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 64).

use kiln_ir::op::{AveragePool, Conv, FusedConv, MaxPool};
use kiln_ir::{DType, Dim, Graph, Op, Tensor, Type};
use kiln_runtime::{BuildCx, RunCx, Value};
use proptest::prelude::*;

/// An op struct with ONNX's attribute defaults (not Rust's `Default`: `group` is 1, not 0).
macro_rules! onnx_default {
    ($t:ident) => {
        $t::from_attrs(&mut kiln_ir::AttrMap::new()).expect("ONNX defaults")
    };
    // Pools require `kernel_shape`; every other field keeps its ONNX default.
    ($t:ident, kernel_shape = $ks:expr) => {
        $t::from_attrs(&mut kiln_ir::AttrMap::from([(
            "kernel_shape".to_string(),
            kiln_ir::Attr::Ints($ks.clone()),
        )]))
        .expect("ONNX defaults")
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

/// Runs `op`'s kernel; `consts[i]` marks input `i` as a build-time constant.
fn run(op: &Op, inputs: &[Option<Tensor>], consts: &[bool], n_out: usize) -> Vec<Tensor> {
    run_typed(op, inputs, consts, &vec![None; n_out]).0
}

/// [`run`] with the output types inference would give the builder; also returns the
/// algorithm the builder chose.
fn run_typed(
    op: &Op,
    inputs: &[Option<Tensor>],
    consts: &[bool],
    output_types: &[Option<Type>],
) -> (Vec<Tensor>, Option<&'static str>) {
    let g = Graph::new("t");
    let cx = BuildCx {
        input_types: vec![None; inputs.len()],
        const_inputs: inputs
            .iter()
            .zip(consts)
            .map(|(t, &c)| if c { t.as_ref() } else { None })
            .collect(),
        output_types: output_types.iter().map(Option::as_ref).collect(),
        graph: &g,
    };
    let k = kiln_runtime::kernels::build(op, &cx).unwrap();
    let vals: Vec<Option<Value>> = inputs
        .iter()
        .map(|t| t.clone().map(Value::Tensor))
        .collect();
    let refs: Vec<Option<&Value>> = vals.iter().map(|v| v.as_ref()).collect();
    let mut rcx = RunCx::new();
    let out = k
        .run(&refs, &mut rcx)
        .unwrap()
        .into_iter()
        .map(|v| v.into_tensor().unwrap())
        .collect();
    (out, k.algorithm())
}

#[derive(Clone, Debug)]
struct Case {
    rank: usize,
    n: usize,
    g: usize,
    cg: usize,
    mg: usize,
    sp: [usize; 2],
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    pb: [usize; 2],
    pe: [usize; 2],
    bias: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (1usize..=2, 1usize..=2, 1usize..=3, 1usize..=4, 1usize..=5),
        (
            [1usize..=11, 1usize..=11],
            [1usize..=4, 1usize..=4],
            [1usize..=3, 1usize..=3],
            [1usize..=2, 1usize..=2],
        ),
        ([0usize..=2, 0usize..=2], [0usize..=2, 0usize..=2]),
        (any::<bool>(), any::<u64>(), 0u8..4),
    )
        .prop_map(
            |((rank, n, g, cg, mg), (sp, k, s, d), (pb, pe), (bias, seed, kind))| {
                let (mut cg, mut mg, mut k, mut s, mut pb, mut pe) = (cg, mg, k, s, pb, pe);
                match kind {
                    // Depthwise.
                    0 => {
                        cg = 1;
                        mg = 1;
                    }
                    // 1×1, stride 1, no padding (no im2col).
                    1 => {
                        k = [1, 1];
                        s = [1, 1];
                        pb = [0, 0];
                        pe = [0, 0];
                    }
                    _ => {}
                }
                let mut c = Case {
                    rank,
                    n,
                    g: if kind == 0 { g.max(2) } else { g },
                    cg,
                    mg,
                    sp,
                    k,
                    s,
                    d,
                    pb,
                    pe,
                    bias,
                    seed,
                };
                // The padded input must hold one dilated kernel.
                for i in 0..2 {
                    let ek = (c.k[i] - 1) * c.d[i] + 1;
                    while c.sp[i] + c.pb[i] + c.pe[i] < ek {
                        c.sp[i] += 1;
                    }
                }
                c
            },
        )
}

struct Built {
    x: Tensor,
    w: Tensor,
    b: Option<Tensor>,
    op: Op,
    want: Vec<f64>,
    scale: Vec<f64>,
    shape: Vec<usize>,
}

fn build(c: &Case) -> Built {
    let (cin, m) = (c.g * c.cg, c.g * c.mg);
    let sp = &c.sp[2 - c.rank..];
    let ks = &c.k[2 - c.rank..];
    let (s, d) = (&c.s[2 - c.rank..], &c.d[2 - c.rank..]);
    let (pb, pe) = (&c.pb[2 - c.rank..], &c.pe[2 - c.rank..]);
    let (h, w) = if c.rank == 2 {
        (sp[0], sp[1])
    } else {
        (1, sp[0])
    };
    let (kh, kw) = if c.rank == 2 {
        (ks[0], ks[1])
    } else {
        (1, ks[0])
    };
    // (height, width) of a per-dim parameter; 1-D convolutions have a unit height dim.
    let hw = |v: &[usize], unit: usize| {
        if c.rank == 2 {
            (v[0], v[1])
        } else {
            (unit, v[0])
        }
    };
    let (sh, sw) = hw(s, 1);
    let (dh, dw) = hw(d, 1);
    let (ph, pw) = hw(pb, 0);
    let out: Vec<usize> = (0..c.rank)
        .map(|i| (sp[i] + pb[i] + pe[i] - ((ks[i] - 1) * d[i] + 1)) / s[i] + 1)
        .collect();
    let (oh, ow) = if c.rank == 2 {
        (out[0], out[1])
    } else {
        (1, out[0])
    };
    let xv = data(c.n * cin * h * w, c.seed);
    let wv = data(m * c.cg * kh * kw, c.seed ^ 1);
    let bv = data(m, c.seed ^ 2);
    let mut want = vec![0f64; c.n * m * oh * ow];
    let mut scale = vec![0f64; want.len()];
    for ni in 0..c.n {
        for oc in 0..m {
            let gi = oc / c.mg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = if c.bias { bv[oc] as f64 } else { 0.0 };
                    let mut sc = acc.abs();
                    for ci in 0..c.cg {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let iy = (oy * sh + ki * dh) as isize - ph as isize;
                                let ix = (ox * sw + kj * dw) as isize - pw as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi = ((ni * cin + gi * c.cg + ci) * h + iy as usize) * w
                                    + ix as usize;
                                let wi = ((oc * c.cg + ci) * kh + ki) * kw + kj;
                                let p = xv[xi] as f64 * wv[wi] as f64;
                                acc += p;
                                sc += p.abs();
                            }
                        }
                    }
                    let o = ((ni * m + oc) * oh + oy) * ow + ox;
                    want[o] = acc;
                    scale[o] = sc;
                }
            }
        }
    }
    let mut xs = vec![c.n, cin];
    xs.extend(sp);
    let mut wsh = vec![m, c.cg];
    wsh.extend(ks);
    let mut shape = vec![c.n, m];
    shape.extend(&out);
    let v64 = |v: &[usize]| Some(v.iter().map(|&x| x as i64).collect::<Vec<_>>());
    let mut pads: Vec<i64> = pb.iter().map(|&x| x as i64).collect();
    pads.extend(pe.iter().map(|&x| x as i64));
    let op = Op::Conv(Conv {
        group: c.g as i64,
        strides: v64(s),
        dilations: v64(d),
        pads: Some(pads),
        ..onnx_default!(Conv)
    });
    Built {
        x: Tensor::from_vec(xs, xv).unwrap(),
        w: Tensor::from_vec(wsh, wv).unwrap(),
        b: c.bias.then(|| Tensor::from_vec(vec![m], bv).unwrap()),
        op,
        want,
        scale,
        shape,
    }
}

fn check(got: &Tensor, b: &Built) -> Result<(), TestCaseError> {
    check_within(got, b, 1e-5)
}

/// Every element within `rel · (1 + Σ|terms|)` of the reference.
fn check_within(got: &Tensor, b: &Built, rel: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.shape(), &b.shape[..]);
    let g = got.as_slice::<f32>().unwrap();
    for (i, ((&g, &w), &s)) in g.iter().zip(&b.want).zip(&b.scale).enumerate() {
        let tol = rel * (1.0 + s);
        prop_assert!(
            (g as f64 - w).abs() <= tol,
            "element {}: got {}, want {} (tol {})",
            i,
            g,
            w,
            tol
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Weights constant (packed at build) and weights given at run time both match the
    /// reference.
    #[test]
    fn conv_f32_matches_reference(c in case()) {
        let b = build(&c);
        let inputs = vec![Some(b.x.clone()), Some(b.w.clone()), b.b.clone()];
        let got = run(&b.op, &inputs, &[false, true, true], 1);
        check(&got[0], &b)?;
        let got = run(&b.op, &inputs, &[false, false, false], 1);
        check(&got[0], &b)?;
    }

    /// com.microsoft.FusedConv: `act(Conv + Z)` with the residual and activation applied in the
    /// GEMM's store (the depthwise kernel after it), against the reference.
    #[test]
    fn fused_conv_f32_matches_reference(c in case(), with_z in any::<bool>(), act in 0usize..5) {
        let mut b = build(&c);
        let Op::Conv(conv) = &b.op else { unreachable!() };
        let (name, params, f): (Option<&str>, Option<Vec<f32>>, fn(f64) -> f64) = [
            (None, None, (|x| x) as fn(f64) -> f64),
            (Some("Relu"), None, |x: f64| x.max(0.0)),
            (Some("LeakyRelu"), Some(vec![0.125]), |x: f64| if x < 0.0 { 0.125 * x } else { x }),
            (Some("Clip"), Some(vec![-0.5, 0.75]), |x: f64| x.clamp(-0.5, 0.75)),
            (Some("Sigmoid"), None, |x: f64| 1.0 / (1.0 + (-x).exp())),
        ][act].clone();
        let op = Op::FusedConv(FusedConv {
            auto_pad: conv.auto_pad.clone(),
            dilations: conv.dilations.clone(),
            group: conv.group,
            kernel_shape: conv.kernel_shape.clone(),
            pads: conv.pads.clone(),
            strides: conv.strides.clone(),
            activation: name.map(str::to_string),
            activation_params: params,
        });
        let zv = data(b.want.len(), c.seed ^ 3);
        for ((w, s), z) in b.want.iter_mut().zip(b.scale.iter_mut()).zip(&zv) {
            let z = if with_z { *z as f64 } else { 0.0 };
            *w = f(*w + z);
            *s += z.abs();
        }
        let z = with_z.then(|| Tensor::from_vec(b.shape.clone(), zv).unwrap());
        let inputs = vec![Some(b.x.clone()), Some(b.w.clone()), b.b.clone(), z];
        let got = run(&op, &inputs, &[false, true, true, false], 1);
        check(&got[0], &b)?;
    }

    /// MaxPool (f32: the direct kernel) / AveragePool on f32 against the generic f64 path.
    #[test]
    fn pools_f32_match_f64(
        n in 1usize..=2, ch in 1usize..=3, h in 1usize..=9, w in 1usize..=9,
        k in [1usize..=3, 1usize..=3], s in [1usize..=3, 1usize..=3],
        p in [0usize..=1, 0usize..=1], ceil in any::<bool>(), pad_count in any::<bool>(),
        d in [1usize..=2, 1usize..=2], seed in any::<u64>(),
    ) {
        let k = [k[0].min(h + 2 * p[0]), k[1].min(w + 2 * p[1])];
        // MaxPool only; the dilated window must fit the padded input.
        let d = [
            if (k[0] - 1) * d[0] < h + 2 * p[0] { d[0] } else { 1 },
            if (k[1] - 1) * d[1] < w + 2 * p[1] { d[1] } else { 1 },
        ];
        // ONNX requires pads smaller than the kernel.
        let p = [p[0].min(k[0] - 1), p[1].min(k[1] - 1)];
        let xv = data(n * ch * h * w, seed);
        let x32 = Tensor::from_vec(vec![n, ch, h, w], xv.clone()).unwrap();
        let x64 = Tensor::from_vec(vec![n, ch, h, w], xv.iter().map(|&v| v as f64).collect::<Vec<f64>>()).unwrap();
        let ks: Vec<i64> = k.iter().map(|&v| v as i64).collect();
        let st = Some(s.iter().map(|&v| v as i64).collect::<Vec<_>>());
        let pads = Some(vec![p[0] as i64, p[1] as i64, p[0] as i64, p[1] as i64]);
        let ops = [
            Op::MaxPool(MaxPool { kernel_shape: ks.clone(), strides: st.clone(), pads: pads.clone(), ceil_mode: ceil, dilations: Some(d.iter().map(|&v| v as i64).collect()), ..onnx_default!(MaxPool, kernel_shape = ks) }),
            Op::AveragePool(AveragePool { kernel_shape: ks.clone(), strides: st, pads, ceil_mode: ceil, count_include_pad: pad_count, ..onnx_default!(AveragePool, kernel_shape = ks) }),
        ];
        for op in &ops {
            let a = run(op, &[Some(x32.clone())], &[false], 1);
            let b = run(op, &[Some(x64.clone())], &[false], 1);
            prop_assert_eq!(a[0].shape(), b[0].shape());
            let (a, b) = (a[0].as_slice::<f32>().unwrap(), b[0].as_slice::<f64>().unwrap());
            for (x, y) in a.iter().zip(b) {
                // A window wholly in the padding is -inf in both.
                prop_assert!(*x as f64 == *y || (*x as f64 - y).abs() <= 1e-6, "{} vs {}", x, y);
            }
        }
    }
}

/// Zero-size outputs (no images, no output channels) and empty input channels per group.
#[test]
fn conv_zero_sizes() {
    let op = Op::Conv(onnx_default!(Conv));
    for (xs, ws) in [
        (vec![0, 3, 5, 5], vec![4, 3, 3, 3]),
        (vec![2, 3, 5, 5], vec![0, 3, 3, 3]),
        (vec![1, 2, 4], vec![3, 2, 2]),
    ] {
        let xn: usize = xs.iter().product();
        let wn: usize = ws.iter().product();
        let x = Tensor::from_vec(xs.clone(), data(xn, 1)).unwrap();
        let w = Tensor::from_vec(ws.clone(), data(wn, 2)).unwrap();
        for consts in [[false, true], [false, false]] {
            let got = run(&op, &[Some(x.clone()), Some(w.clone())], &consts, 1);
            let o: Vec<usize> = xs[2..]
                .iter()
                .zip(&ws[2..])
                .map(|(a, b)| a - b + 1)
                .collect();
            let mut want = vec![xs[0], ws[0]];
            want.extend(o);
            assert_eq!(got[0].shape(), &want[..]);
        }
    }
}

/// GlobalAveragePool / GlobalMaxPool f32 against direct sums.
#[test]
fn global_pools_f32() {
    use kiln_ir::op::{GlobalAveragePool, GlobalMaxPool};
    let xv = data(2 * 3 * 7 * 5, 9);
    let x = Tensor::from_vec(vec![2, 3, 7, 5], xv.clone()).unwrap();
    let avg = run(
        &Op::GlobalAveragePool(onnx_default!(GlobalAveragePool)),
        &[Some(x.clone())],
        &[false],
        1,
    );
    let max = run(
        &Op::GlobalMaxPool(onnx_default!(GlobalMaxPool)),
        &[Some(x)],
        &[false],
        1,
    );
    assert_eq!(avg[0].shape(), &[2, 3, 1, 1]);
    for (i, c) in xv.chunks(35).enumerate() {
        let s: f64 = c.iter().map(|&v| v as f64).sum::<f64>() / 35.0;
        let m = c.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!((avg[0].as_slice::<f32>().unwrap()[i] as f64 - s).abs() < 1e-6);
        assert_eq!(max[0].as_slice::<f32>().unwrap()[i], m);
    }
}

/// A 3×3, stride-1 convolution the planner runs with Winograd's F(4×4, 3×3) (given its
/// output shape): 16–40 channels each way, odd sizes (partial edge tiles on both axes,
/// tiles past a 16-lane chunk), asymmetric pads.
fn winograd_case() -> impl Strategy<Value = Case> {
    (
        (1usize..=2, 16usize..=40, 16usize..=40, 1usize..=26),
        ([0usize..=2, 0usize..=2], [0usize..=2, 0usize..=2]),
        (any::<bool>(), any::<u64>(), 0usize..=60),
    )
        .prop_map(|((n, cg, mg, h), (pb, pe), (bias, seed, extra))| {
            // At least 25 tiles of 4×4 outputs (the planner's threshold is 16, or 25 where the
            // GEMM is AVX-512's): a short image is a wide one.
            let oh = (h + pb[0] + pe[0]).max(3) - 2;
            let tiles_h = oh.div_ceil(4);
            let ow_min = 4 * 25usize.div_ceil(tiles_h) - 3;
            let ow = ow_min + extra % 23;
            let h = oh + 2 - pb[0] - pe[0];
            Case {
                rank: 2,
                n,
                g: 1,
                cg,
                mg,
                sp: [h, ow + 2 - pb[1] - pe[1]],
                k: [3, 3],
                s: [1, 1],
                d: [1, 1],
                pb,
                pe,
                bias,
                seed,
            }
        })
}

/// The output type shape inference gives the builder.
fn out_type(b: &Built) -> Vec<Option<Type>> {
    let dims = b.shape.iter().map(|&d| Dim::Known(d as i64)).collect();
    vec![Some(Type::tensor(DType::F32, dims))]
}

/// Winograd's transforms round more than direct convolution (constants up to 8 in `Aᵀ`,
/// 1/24 in `G`): measured max error 5.3e-5 on one channel of unit normals, where
/// `Σ|x·w| ≈ 5.7`, i.e. ~1e-5 of the terms' magnitude; this bound is 5× that.
const WINOGRAD_REL: f64 = 5e-5;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// The Winograd path (chosen at build from constant weights and a static output shape)
    /// against the f64 reference; the same convolution with the weights given at run time
    /// takes im2col + GEMM.
    #[test]
    fn winograd_conv_f32_matches_reference(c in winograd_case()) {
        let b = build(&c);
        let (got, alg) = run_planned(&b);
        prop_assert_eq!(alg, Some("winograd"));
        check_within(&got[0], &b, WINOGRAD_REL)?;
        let inputs = vec![Some(b.x.clone()), Some(b.w.clone()), b.b.clone()];
        let (got, alg) = run_typed(&b.op, &inputs, &[false, false, false], &out_type(&b));
        prop_assert_eq!(alg, Some("gemm"));
        check(&got[0], &b)?;
    }

    /// FusedConv on the Winograd path: bias, residual `Z` and activation in the output
    /// transform.
    #[test]
    fn winograd_fused_conv_f32_matches_reference(c in winograd_case(), relu in any::<bool>()) {
        let mut b = build(&c);
        let Op::Conv(conv) = &b.op else { unreachable!() };
        let op = Op::FusedConv(FusedConv {
            auto_pad: conv.auto_pad.clone(),
            dilations: conv.dilations.clone(),
            group: conv.group,
            kernel_shape: conv.kernel_shape.clone(),
            pads: conv.pads.clone(),
            strides: conv.strides.clone(),
            activation: relu.then(|| "Relu".to_string()),
            activation_params: None,
        });
        let zv = data(b.want.len(), c.seed ^ 3);
        for ((w, s), z) in b.want.iter_mut().zip(b.scale.iter_mut()).zip(&zv) {
            *w += *z as f64;
            if relu {
                *w = w.max(0.0);
            }
            *s += z.abs() as f64;
        }
        let z = Tensor::from_vec(b.shape.clone(), zv).unwrap();
        let inputs = vec![Some(b.x.clone()), Some(b.w.clone()), b.b.clone(), Some(z)];
        let (got, alg) = run_typed(&op, &inputs, &[false, true, true, false], &out_type(&b));
        prop_assert_eq!(alg, Some("winograd"));
        check_within(&got[0], &b, WINOGRAD_REL)?;
    }
}

/// A batch of 0 images on the Winograd path: an empty output, no panic.
#[test]
fn winograd_empty_batch() {
    let b = build(&same_3x3(0, 16, 20));
    let (got, alg) = run_planned(&b);
    assert_eq!(alg, Some("winograd"));
    assert_eq!(got[0].shape(), &[0, 16, 20, 20]);
}

/// Below the planner's thresholds (7×7 output: 4 tiles; 8 channels), im2col + GEMM.
#[test]
fn winograd_only_where_it_pays() {
    for (cg, sp) in [(32, 7), (8, 32)] {
        let b = build(&same_3x3(1, cg, sp));
        let (got, alg) = run_planned(&b);
        assert_eq!(alg, Some("gemm"), "{cg} channels, {sp}×{sp}");
        check(&got[0], &b).unwrap();
    }
}

/// A "same" 3×3 convolution (stride 1, pads 1) of `n` images of `ch` channels, `sp × sp`,
/// with as many output channels and a bias.
fn same_3x3(n: usize, ch: usize, sp: usize) -> Case {
    Case {
        rank: 2,
        n,
        g: 1,
        cg: ch,
        mg: ch,
        sp: [sp, sp],
        k: [3, 3],
        s: [1, 1],
        d: [1, 1],
        pb: [1, 1],
        pe: [1, 1],
        bias: true,
        seed: 7,
    }
}

/// Runs `b` with its weights and bias constant and its output type known, as a compiled
/// plan would: the builder may choose Winograd.
fn run_planned(b: &Built) -> (Vec<Tensor>, Option<&'static str>) {
    let inputs = vec![Some(b.x.clone()), Some(b.w.clone()), b.b.clone()];
    run_typed(&b.op, &inputs, &[false, true, true], &out_type(b))
}
