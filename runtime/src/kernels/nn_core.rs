//! Core CNN kernels: Conv, MaxPool, AveragePool, global pools, inference BatchNormalization,
//! inference Dropout. Written for any number of spatial dims; f32 (f16/bf16/f64 converted
//! through f32/f64 at the boundary).

use kiln_ir::op::{AveragePool, BatchNormalization, Conv, FusedConv, MaxPool};
use kiln_ir::{DType, Op, Tensor};

use crate::error::KernelError;
use crate::gemm::{Activation, Im2col};
use crate::kernel::{opt_tensor_input, tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::reduce::num::view;
use crate::value::Value;

/// f32 Conv on the packed GEMM (im2col, 1×1 and depthwise paths).
#[path = "conv/mod.rs"]
pub(crate) mod conv;

pub(super) fn build(op: &Op, cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    Some(Ok(match op {
        Op::Conv(c) => Box::new(ConvK::new(c, cx)),
        Op::FusedConv(f) => match ConvK::fused(f, cx) {
            Ok(k) => Box::new(k),
            Err(e) => return Some(Err(e)),
        },
        Op::MaxPool(p) => Box::new(PoolK {
            spec: PoolSpec::max(p),
            kind: PoolKind::Max,
            indices: cx.output_types.len() > 1,
        }),
        Op::AveragePool(p) => Box::new(PoolK {
            spec: PoolSpec::avg(p),
            kind: PoolKind::Avg(p.count_include_pad),
            indices: false,
        }),
        Op::GlobalAveragePool(_) => Box::new(GlobalPoolK { max: false }),
        Op::GlobalMaxPool(_) => Box::new(GlobalPoolK { max: true }),
        Op::BatchNormalization(b) => Box::new(BatchNormK(b.clone())),
        Op::Dropout(_) => Box::new(DropoutK),
        _ => return None,
    }))
}

/// Inputs as f64 (exact for every float type kiln pools or convolves).
fn floats(t: &Tensor) -> Result<Vec<f64>, KernelError> {
    if !t.dtype().is_float() && !t.dtype().is_int() {
        return Err(KernelError::Unsupported(format!("{} input", t.dtype())));
    }
    t.to_f64_vec()
        .ok_or_else(|| KernelError::Unsupported(format!("{} input", t.dtype())))
}

/// A tensor of `dtype` from f64 values.
fn from_f64(
    cx: &mut RunCx,
    dtype: DType,
    shape: Vec<usize>,
    v: &[f64],
) -> Result<Tensor, KernelError> {
    Ok(match dtype {
        DType::F32 => cx.tensor::<f32>(shape, |o| {
            o.iter_mut().zip(v).for_each(|(o, x)| *o = *x as f32)
        })?,
        DType::F64 => cx.tensor::<f64>(shape, |o| o.copy_from_slice(v))?,
        DType::F16 => cx.tensor::<half::f16>(shape, |o| {
            o.iter_mut()
                .zip(v)
                .for_each(|(o, x)| *o = half::f16::from_f64(*x))
        })?,
        DType::BF16 => cx.tensor::<half::bf16>(shape, |o| {
            o.iter_mut()
                .zip(v)
                .for_each(|(o, x)| *o = half::bf16::from_f64(*x))
        })?,
        DType::I8 => cx.tensor::<i8>(shape, |o| {
            o.iter_mut().zip(v).for_each(|(o, x)| *o = *x as i8)
        })?,
        DType::U8 => cx.tensor::<u8>(shape, |o| {
            o.iter_mut().zip(v).for_each(|(o, x)| *o = *x as u8)
        })?,
        d => return Err(KernelError::Unsupported(format!("{d} output"))),
    })
}

/// Geometry of a sliding window over the spatial dims.
struct Window {
    in_sp: Vec<usize>,
    out_sp: Vec<usize>,
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    pad_begin: Vec<usize>,
}

fn window(
    in_sp: &[usize],
    kernel: &[usize],
    strides: Option<&Vec<i64>>,
    dilations: Option<&Vec<i64>>,
    pads: Option<&Vec<i64>>,
    auto_pad: &str,
    ceil_mode: bool,
) -> Result<Window, KernelError> {
    let r = in_sp.len();
    let get =
        |v: Option<&Vec<i64>>, i: usize, d: i64| v.and_then(|v| v.get(i).copied()).unwrap_or(d);
    let mut w = Window {
        in_sp: in_sp.to_vec(),
        out_sp: vec![0; r],
        kernel: kernel.to_vec(),
        strides: (0..r).map(|i| get(strides, i, 1).max(1) as usize).collect(),
        dilations: (0..r)
            .map(|i| get(dilations, i, 1).max(1) as usize)
            .collect(),
        pad_begin: vec![0; r],
    };
    for i in 0..r {
        let (inp, s, d) = (in_sp[i] as i64, w.strides[i] as i64, w.dilations[i] as i64);
        let ek = (kernel[i] as i64 - 1) * d + 1;
        let (pb, pe) = match auto_pad {
            "SAME_UPPER" | "SAME_LOWER" => {
                let out = (inp + s - 1) / s;
                let total = ((out - 1) * s + ek - inp).max(0);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                }
            }
            "VALID" => (0, 0),
            _ => (get(pads, i, 0), get(pads, i + r, 0)),
        };
        let span = inp + pb + pe - ek;
        if span < 0 {
            return Err(KernelError::Invalid(format!(
                "window {ek} is larger than the padded input {}",
                inp + pb + pe
            )));
        }
        let mut out = if ceil_mode {
            (span + s - 1) / s + 1
        } else {
            span / s + 1
        };
        // A last window that would start in the right padding is dropped.
        if ceil_mode && (out - 1) * s >= inp + pb {
            out -= 1;
        }
        w.out_sp[i] = out as usize;
        w.pad_begin[i] = pb as usize;
    }
    Ok(w)
}

/// Calls `f(out_index, in_index_or_none)` for each kernel tap of each output position (all
/// spatial dims flattened row-major).
fn for_each_tap(w: &Window, mut f: impl FnMut(usize, usize, Option<usize>)) {
    let r = w.in_sp.len();
    let n_out: usize = w.out_sp.iter().product();
    let n_k: usize = w.kernel.iter().product();
    let mut o_idx = vec![0usize; r];
    for o in 0..n_out {
        let mut rem = o;
        for d in (0..r).rev() {
            o_idx[d] = rem % w.out_sp[d];
            rem /= w.out_sp[d];
        }
        for k in 0..n_k {
            let mut rem = k;
            let mut flat = 0usize;
            let mut inside = true;
            let mut mul = 1usize;
            for d in (0..r).rev() {
                let kd = rem % w.kernel[d];
                rem /= w.kernel[d];
                let pos = (o_idx[d] * w.strides[d] + kd * w.dilations[d]) as isize
                    - w.pad_begin[d] as isize;
                if pos < 0 || pos as usize >= w.in_sp[d] {
                    inside = false;
                }
                flat += pos.max(0) as usize * mul;
                mul *= w.in_sp[d];
            }
            f(o, k, inside.then_some(flat));
        }
    }
}

/// `Conv`, and `com.microsoft.FusedConv`: `act(Conv(X, W, B) + Z)`.
struct ConvK {
    attr: Conv,
    act: Activation,
    /// `FusedConv` (reads `Z`, input 3).
    fused: bool,
    /// Constant f32 weights packed for the GEMM, with the shape they were packed from.
    packed: Option<(Vec<usize>, Packed)>,
}

/// Constant weights, packed for the path the planner chose.
/// A `FusedConv`'s convolution and its activation.
pub(crate) fn fused_attr(f: &FusedConv) -> Result<(Conv, Activation), KernelError> {
    let act = Activation::from_onnx(
        "FusedConv",
        f.activation.as_deref(),
        f.activation_params.as_deref().unwrap_or(&[]),
    )?;
    let attr = Conv {
        auto_pad: f.auto_pad.clone(),
        dilations: f.dilations.clone(),
        group: f.group,
        kernel_shape: f.kernel_shape.clone(),
        pads: f.pads.clone(),
        strides: f.strides.clone(),
    };
    Ok((attr, act))
}

enum Packed {
    /// Per group, for im2col + GEMM.
    Gemm(Vec<crate::gemm::PackedA>),
    /// In the Winograd domain.
    Winograd(conv::winograd::Weights),
}

impl ConvK {
    fn new(c: &Conv, cx: &BuildCx) -> ConvK {
        ConvK {
            attr: c.clone(),
            act: Activation::None,
            fused: false,
            packed: Self::pack(c, cx),
        }
    }

    fn pack(c: &Conv, cx: &BuildCx) -> Option<(Vec<usize>, Packed)> {
        let w = cx.const_inputs.get(1).copied().flatten()?;
        let ws = w.shape();
        if w.dtype() != DType::F32 || !(ws.len() == 3 || ws.len() == 4) || c.group < 1 {
            return None;
        }
        let wf = w.as_slice::<f32>()?;
        let packed = if conv::winograd::pays(c, ws, cx, false) {
            Packed::Winograd(conv::winograd::Weights::new(ws[0], ws[1], wf))
        } else {
            Packed::Gemm(conv::pack_weights(ws[0], c.group as usize, wf, ws)?)
        };
        // The packed copy is what runs: a mapped weight's pages need not stay resident too.
        w.release_pages();
        Some((ws.to_vec(), packed))
    }

    fn fused(f: &FusedConv, cx: &BuildCx) -> Result<ConvK, KernelError> {
        let (attr, act) = fused_attr(f)?;
        let packed = Self::pack(&attr, cx);
        Ok(ConvK {
            attr,
            act,
            fused: true,
            packed,
        })
    }

    fn name(&self) -> &'static str {
        if self.fused {
            "FusedConv"
        } else {
            "Conv"
        }
    }

    /// The f32 path for 1 or 2 spatial dims; `None` when it does not apply.
    #[allow(clippy::too_many_arguments)]
    fn run_f32(
        &self,
        x: &Tensor,
        wt: &Tensor,
        b: Option<&Tensor>,
        z: Option<&Tensor>,
        w: &Window,
        g: usize,
        shape: &[usize],
        cx: &mut RunCx,
    ) -> Option<Result<Tensor, KernelError>> {
        let (xs, ws) = (x.shape(), wt.shape());
        if x.dtype() != DType::F32
            || wt.dtype() != DType::F32
            || b.is_some_and(|b| {
                b.dtype() != DType::F32 || b.shape().iter().product::<usize>() != ws[0]
            })
            || z.is_some_and(|z| z.dtype() != DType::F32)
            || !(xs.len() == 3 || xs.len() == 4)
        {
            return None;
        }
        let win = if xs.len() == 4 {
            Im2col {
                c: xs[1] / g,
                h: xs[2],
                w: xs[3],
                kh: ws[2],
                kw: ws[3],
                sh: w.strides[0],
                sw: w.strides[1],
                dh: w.dilations[0],
                dw: w.dilations[1],
                ph: w.pad_begin[0],
                pw: w.pad_begin[1],
                oh: w.out_sp[0],
                ow: w.out_sp[1],
            }
        } else {
            Im2col {
                c: xs[1] / g,
                h: 1,
                w: xs[2],
                kh: 1,
                kw: ws[2],
                sh: 1,
                sw: w.strides[0],
                dh: 1,
                dw: w.dilations[0],
                ph: 0,
                pw: w.pad_begin[0],
                oh: 1,
                ow: w.out_sp[0],
            }
        };
        let geom = conv::Geom {
            n: xs[0],
            m: ws[0],
            g,
            win,
        };
        Some(self.conv_f32(&geom, x, wt, b, z, shape, cx))
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_f32(
        &self,
        geom: &conv::Geom,
        x: &Tensor,
        wt: &Tensor,
        b: Option<&Tensor>,
        z: Option<&Tensor>,
        shape: &[usize],
        cx: &mut RunCx,
    ) -> Result<Tensor, KernelError> {
        let xv = view::<f32>(x)?;
        let bv = b.map(view::<f32>).transpose()?;
        let zv = z.map(view::<f32>).transpose()?;
        let wv = view::<f32>(wt)?;
        let post = conv::Post {
            bias: bv.as_deref(),
            z: zv.as_deref(),
            act: self.act,
        };
        let packed = self
            .packed
            .as_ref()
            .filter(|(s, _)| s == wt.shape())
            .map(|(_, p)| p);
        if let Some(Packed::Winograd(w)) = packed {
            if conv::winograd::applies(geom, w) {
                // winograd::conv2d writes every output element.
                return cx.tensor_dirty::<f32>(shape.to_vec(), |o| {
                    conv::winograd::conv2d(geom, &xv, w, post, o)
                });
            }
        }
        let packed = match packed {
            Some(Packed::Gemm(p)) => Some(&p[..]),
            _ => None,
        };
        // conv2d writes every output element.
        cx.tensor_dirty::<f32>(shape.to_vec(), |o| {
            conv::conv2d(geom, &xv, &wv, packed, post, o)
        })
    }
}

impl Kernel for ConvK {
    fn algorithm(&self) -> Option<&'static str> {
        Some(match &self.packed {
            Some((_, Packed::Winograd(_))) => "winograd",
            _ => "gemm",
        })
    }

    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let wt = tensor_input(inputs, 1)?;
        let b = opt_tensor_input(inputs, 2)?;
        let z = if self.fused {
            opt_tensor_input(inputs, 3)?
        } else {
            None
        };
        let (xs, ws) = (x.shape(), wt.shape());
        let name = self.name();
        if xs.len() < 3 || ws.len() != xs.len() {
            return Err(KernelError::Invalid(format!(
                "{name} needs X [N,C,...] and W of the same rank, got {xs:?} and {ws:?}"
            )));
        }
        let (n, c, m) = (xs[0], xs[1], ws[0]);
        let g = self.attr.group.max(1) as usize;
        if c % g != 0 || m % g != 0 || ws[1] * g != c {
            return Err(KernelError::Invalid(format!(
                "{name} group {g}: X channels {c}, W {ws:?} do not match"
            )));
        }
        let kernel: Vec<usize> = ws[2..].to_vec();
        let w = window(
            &xs[2..],
            &kernel,
            self.attr.strides.as_ref(),
            self.attr.dilations.as_ref(),
            self.attr.pads.as_ref(),
            &self.attr.auto_pad,
            false,
        )?;
        let mut out_shape = vec![n, m];
        out_shape.extend(&w.out_sp);
        if let Some(z) = z {
            if z.shape() != out_shape.as_slice() {
                return Err(KernelError::Invalid(format!(
                    "FusedConv: Z has shape {:?}, the output {out_shape:?}",
                    z.shape()
                )));
            }
        }
        if let Some(t) = self.run_f32(x, wt, b, z, &w, g, &out_shape, cx) {
            return Ok(vec![Value::Tensor(t?)]);
        }
        let xv = floats(x)?;
        let wv = floats(wt)?;
        let bv = b.map(floats).transpose()?;
        let (cg, mg) = (c / g, m / g);
        let in_sz: usize = w.in_sp.iter().product();
        let out_sz: usize = w.out_sp.iter().product();
        let ksz: usize = kernel.iter().product();
        // im2col: for each output position and tap, the input offset (or none for padding).
        let mut taps: Vec<Option<usize>> = vec![None; out_sz * ksz];
        for_each_tap(&w, |o, k, i| taps[o * ksz + k] = i);
        let mut out = vec![0f64; n * m * out_sz];
        let mut col = vec![0f64; cg * ksz];
        for ni in 0..n {
            for gi in 0..g {
                for o in 0..out_sz {
                    for ci in 0..cg {
                        let base = (ni * c + gi * cg + ci) * in_sz;
                        for k in 0..ksz {
                            col[ci * ksz + k] = taps[o * ksz + k].map_or(0.0, |i| xv[base + i]);
                        }
                    }
                    for mi in 0..mg {
                        let oc = gi * mg + mi;
                        let wrow = &wv[oc * cg * ksz..(oc + 1) * cg * ksz];
                        let mut acc = bv.as_ref().map_or(0.0, |b| b[oc]);
                        for (a, bb) in wrow.iter().zip(&col) {
                            acc += a * bb;
                        }
                        out[(ni * m + oc) * out_sz + o] = acc;
                    }
                }
            }
        }
        if let Some(z) = z {
            for (o, zv) in out.iter_mut().zip(floats(z)?) {
                *o += zv;
            }
        }
        if self.act != Activation::None {
            // The activations are defined on f32 (the GEMM epilogue's scalar definitions).
            for o in out.iter_mut() {
                *o = self.act.apply(*o as f32) as f64;
            }
        }
        let mut shape = vec![n, m];
        shape.extend(&w.out_sp);
        Ok(vec![Value::Tensor(from_f64(cx, x.dtype(), shape, &out)?)])
    }
}

struct PoolSpec {
    kernel: Vec<i64>,
    strides: Option<Vec<i64>>,
    dilations: Option<Vec<i64>>,
    pads: Option<Vec<i64>>,
    auto_pad: String,
    ceil_mode: bool,
    storage_order: i64,
}

impl PoolSpec {
    fn max(p: &MaxPool) -> PoolSpec {
        PoolSpec {
            kernel: p.kernel_shape.clone(),
            strides: p.strides.clone(),
            dilations: p.dilations.clone(),
            pads: p.pads.clone(),
            auto_pad: p.auto_pad.clone(),
            ceil_mode: p.ceil_mode,
            storage_order: p.storage_order,
        }
    }
    fn avg(p: &AveragePool) -> PoolSpec {
        PoolSpec {
            kernel: p.kernel_shape.clone(),
            strides: p.strides.clone(),
            dilations: p.dilations.clone(),
            pads: p.pads.clone(),
            auto_pad: p.auto_pad.clone(),
            ceil_mode: p.ceil_mode,
            storage_order: 0,
        }
    }
}

enum PoolKind {
    Max,
    /// count_include_pad
    Avg(bool),
}

struct PoolK {
    spec: PoolSpec,
    kind: PoolKind,
    /// MaxPool's optional `Indices` output is wanted.
    indices: bool,
}

impl Kernel for PoolK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let xs = x.shape();
        if xs.len() < 3 {
            return Err(KernelError::Invalid(format!(
                "pooling needs [N,C,...], got {xs:?}"
            )));
        }
        let kernel: Vec<usize> = self
            .spec
            .kernel
            .iter()
            .map(|&k| k.max(1) as usize)
            .collect();
        if kernel.len() != xs.len() - 2 {
            return Err(KernelError::Invalid(format!(
                "kernel_shape {:?} does not fit input {xs:?}",
                self.spec.kernel
            )));
        }
        let s = &self.spec;
        let w = window(
            &xs[2..],
            &kernel,
            s.strides.as_ref(),
            s.dilations.as_ref(),
            s.pads.as_ref(),
            &s.auto_pad,
            s.ceil_mode,
        )?;
        let xf = if x.dtype() == DType::F32 {
            Some(view::<f32>(x)?)
        } else {
            None
        };
        if let (PoolKind::Max, false, Some(xf), 1..=2) =
            (&self.kind, self.indices, &xf, w.in_sp.len())
        {
            let mut shape = xs[..2].to_vec();
            shape.extend(&w.out_sp);
            // Every output element is written.
            let y = cx.tensor_dirty::<f32>(shape, |o| max_pool_f32(&w, xf, o))?;
            return Ok(vec![Value::Tensor(y)]);
        }
        let xd = if xf.is_none() { floats(x)? } else { Vec::new() };
        let xv = |i: usize| match &xf {
            Some(s) => s[i] as f64,
            None => xd[i],
        };
        let (nc, in_sz) = (xs[0] * xs[1], w.in_sp.iter().product::<usize>());
        let out_sz: usize = w.out_sp.iter().product();
        let ksz: usize = kernel.iter().product();
        let mut out = vec![0f64; nc * out_sz];
        let mut idx = vec![0i64; nc * out_sz];
        // Window taps that fall in the padded region (for count_include_pad) but not past it.
        let padded_in: Vec<usize> = (0..w.in_sp.len())
            .map(|d| {
                w.in_sp[d]
                    + w.pad_begin[d]
                    + s.pads
                        .as_ref()
                        .and_then(|p| p.get(d + w.in_sp.len()))
                        .copied()
                        .unwrap_or(0)
                        .max(0) as usize
            })
            .collect();
        let mut taps: Vec<Option<usize>> = vec![None; out_sz * ksz];
        for_each_tap(&w, |o, k, i| taps[o * ksz + k] = i);
        let mut in_pad_count = vec![0usize; out_sz];
        if let PoolKind::Avg(true) = self.kind {
            // Taps inside the explicitly padded extent count; those beyond it (ceil_mode) do not.
            let pw = Window {
                in_sp: padded_in.clone(),
                out_sp: w.out_sp.clone(),
                kernel: w.kernel.clone(),
                strides: w.strides.clone(),
                dilations: w.dilations.clone(),
                pad_begin: vec![0; padded_in.len()],
            };
            for_each_tap(&pw, |o, _, i| {
                if i.is_some() {
                    in_pad_count[o] += 1;
                }
            });
        }
        for p in 0..nc {
            let base = p * in_sz;
            for o in 0..out_sz {
                let t = &taps[o * ksz..(o + 1) * ksz];
                let r = match self.kind {
                    PoolKind::Max => {
                        let mut best = f64::NEG_INFINITY;
                        let mut at = 0usize;
                        for &i in t.iter().flatten() {
                            let v = xv(base + i);
                            if v > best {
                                best = v;
                                at = i;
                            }
                        }
                        idx[p * out_sz + o] = if s.storage_order == 1 {
                            // Column-major index within the spatial block.
                            let mut rem = at;
                            let mut coords = vec![0; w.in_sp.len()];
                            for d in (0..w.in_sp.len()).rev() {
                                coords[d] = rem % w.in_sp[d];
                                rem /= w.in_sp[d];
                            }
                            let mut flat = 0;
                            let mut mul = 1;
                            for d in 0..w.in_sp.len() {
                                flat += coords[d] * mul;
                                mul *= w.in_sp[d];
                            }
                            (base + flat) as i64
                        } else {
                            (base + at) as i64
                        };
                        best
                    }
                    PoolKind::Avg(include_pad) => {
                        let (mut sum, mut inside) = (0f64, 0usize);
                        for &i in t.iter().flatten() {
                            sum += xv(base + i);
                            inside += 1;
                        }
                        let count = if include_pad { in_pad_count[o] } else { inside };
                        if count == 0 {
                            0.0
                        } else {
                            sum / count as f64
                        }
                    }
                };
                out[p * out_sz + o] = r;
            }
        }
        let mut shape = xs[..2].to_vec();
        shape.extend(&w.out_sp);
        let y = from_f64(cx, x.dtype(), shape.clone(), &out)?;
        let mut outs = vec![Value::Tensor(y)];
        if let PoolKind::Max = self.kind {
            outs.push(Value::Tensor(
                cx.tensor::<i64>(shape, |o| o.copy_from_slice(&idx))?,
            ));
        }
        Ok(outs)
    }
}

/// f32 MaxPool over 1 or 2 spatial dims without indices: planes over threads, each output
/// the max of its in-bounds taps (`-inf` when none; NaN inputs are skipped, as in the
/// generic path).
fn max_pool_f32(w: &Window, x: &[f32], out: &mut [f32]) {
    // 1-D windows are 2-D ones of height 1.
    let d2 = |v: &[usize], one: usize| {
        if v.len() == 2 {
            (v[0], v[1])
        } else {
            (one, v[0])
        }
    };
    let (h, wd) = d2(&w.in_sp, 1);
    let (oh, ow) = d2(&w.out_sp, 1);
    let (kh, kw) = d2(&w.kernel, 1);
    let (sh, sw) = d2(&w.strides, 1);
    let (dh, dw) = d2(&w.dilations, 1);
    let (ph, pw) = d2(&w.pad_begin, 0);
    let (plane_in, plane_out) = (h * wd, oh * ow);
    if plane_out == 0 {
        return;
    }
    // Per output column, its first tap's input column (may be in the left padding) and the
    // range of taps inside the row.
    let cols: Vec<(isize, usize, usize)> = (0..ow)
        .map(|ox| {
            let x0 = (ox * sw) as isize - pw as isize;
            let inside = |kj: &usize| (0..wd as isize).contains(&(x0 + (kj * dw) as isize));
            let lo = (0..kw).find(inside).unwrap_or(kw);
            let hi = (lo..kw).rfind(inside).map_or(lo, |k| k + 1);
            (x0, lo, hi)
        })
        .collect();
    super::par::for_chunks_weighted(out, plane_out, kh * kw, |start, chunk| {
        // Per output row: the max over its window's rows first (contiguous, vectorized), then
        // over each output's columns in that one row. Selects, not compare-and-branch: on
        // real activations the branch is unpredictable. `b > a` is false for a NaN `b`, so
        // NaN inputs are skipped, as in the generic path.
        let max = |a: f32, b: f32| if b > a { b } else { a };
        let mut vrow = vec![f32::NEG_INFINITY; wd];
        for (pi, o) in chunk.chunks_mut(plane_out).enumerate() {
            let plane = start / plane_out + pi;
            let xp = &x[plane * plane_in..(plane + 1) * plane_in];
            for oy in 0..oh {
                vrow.fill(f32::NEG_INFINITY);
                for ki in 0..kh {
                    let Some(iy) = (oy * sh + ki * dh).checked_sub(ph).filter(|&iy| iy < h) else {
                        continue;
                    };
                    for (v, &s) in vrow.iter_mut().zip(&xp[iy * wd..(iy + 1) * wd]) {
                        *v = max(*v, s);
                    }
                }
                let orow = &mut o[oy * ow..(oy + 1) * ow];
                for (ov, &(x0, lo, hi)) in orow.iter_mut().zip(&cols) {
                    let mut m = f32::NEG_INFINITY;
                    for kj in lo..hi {
                        m = max(m, vrow[(x0 + (kj * dw) as isize) as usize]);
                    }
                    *ov = m;
                }
            }
        }
    });
}

struct GlobalPoolK {
    max: bool,
}

impl Kernel for GlobalPoolK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let xs = x.shape();
        if xs.len() < 2 {
            return Err(KernelError::Invalid(format!(
                "global pooling needs [N,C,...], got {xs:?}"
            )));
        }
        let sp: usize = xs[2..].iter().product();
        if x.dtype() == DType::F32 {
            let xv = view::<f32>(x)?;
            let mut shape = xs[..2].to_vec();
            shape.extend(std::iter::repeat_n(1, xs.len() - 2));
            let max = self.max;
            let t = cx.tensor::<f32>(shape, |o| {
                for (o, c) in o.iter_mut().zip(xv.chunks(sp.max(1))) {
                    *o = if max {
                        c.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                    } else {
                        (c.iter().map(|&v| v as f64).sum::<f64>() / sp as f64) as f32
                    };
                }
            })?;
            return Ok(vec![Value::Tensor(t)]);
        }
        let xv = floats(x)?;
        let out: Vec<f64> = xv
            .chunks(sp.max(1))
            .take(xs[0] * xs[1])
            .map(|c| {
                if self.max {
                    c.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                } else {
                    c.iter().sum::<f64>() / sp as f64
                }
            })
            .collect();
        let mut shape = xs[..2].to_vec();
        shape.extend(std::iter::repeat_n(1, xs.len() - 2));
        Ok(vec![Value::Tensor(from_f64(cx, x.dtype(), shape, &out)?)])
    }
}

struct BatchNormK(BatchNormalization);

impl Kernel for BatchNormK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        if self.0.training_mode {
            return Err(KernelError::Unsupported(
                "BatchNormalization in training mode".into(),
            ));
        }
        let x = tensor_input(inputs, 0)?;
        let xs = x.shape();
        let [scale, bias, mean, var] =
            [1, 2, 3, 4].map(|i| tensor_input(inputs, i).and_then(floats));
        let (scale, bias, mean, var) = (scale?, bias?, mean?, var?);
        let c = xs.get(1).copied().unwrap_or(1);
        if [&scale, &bias, &mean, &var].iter().any(|v| v.len() != c) {
            return Err(KernelError::Invalid(format!(
                "BatchNormalization parameters must have {c} elements"
            )));
        }
        let sp: usize = xs.iter().skip(2).product();
        let xv = floats(x)?;
        let eps = self.0.epsilon as f64;
        let mut out = vec![0f64; xv.len()];
        for (i, (o, v)) in out.iter_mut().zip(&xv).enumerate() {
            let ch = (i / sp.max(1)) % c;
            *o = (v - mean[ch]) / (var[ch] + eps).sqrt() * scale[ch] + bias[ch];
        }
        Ok(vec![Value::Tensor(from_f64(
            cx,
            x.dtype(),
            xs.to_vec(),
            &out,
        )?)])
    }
}

struct DropoutK;

impl Kernel for DropoutK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let training = match opt_tensor_input(inputs, 2)? {
            Some(t) => t.bytes().first().is_some_and(|&b| b != 0),
            None => false,
        };
        let ratio = match opt_tensor_input(inputs, 1)? {
            Some(t) => t
                .to_f64_vec()
                .and_then(|v| v.first().copied())
                .unwrap_or(0.5),
            None => 0.5,
        };
        if training && ratio != 0.0 {
            return Err(KernelError::Unsupported(
                "Dropout in training mode (random masks)".into(),
            ));
        }
        let mask = cx.tensor::<u8>(x.shape().to_vec(), |o| o.fill(1))?;
        let mask = Tensor::from_bytes(DType::Bool, x.shape().to_vec(), mask.bytes())?;
        Ok(vec![Value::Tensor(x.clone()), Value::Tensor(mask)])
    }
}
