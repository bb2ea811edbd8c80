//! Resize (opset 11–19) and the deprecated Upsample.
//!
//! Interpolation is separable: each resized axis is a 1-D pass whose output positions are
//! each a weighted sum of a few input positions along that axis. The taps follow the ONNX
//! reference: the source coordinate is taken from the coordinate transformation mode, the
//! `n` nearest positions of the edge-padded axis are weighted by the mode's coefficients
//! (and, with `exclude_outside`, those outside the axis get weight 0 and the rest are
//! renormalized). `tf_crop_and_resize` writes `extrapolation_value` wherever any axis's
//! source coordinate falls outside the input.

use kiln_ir::op::{Resize, Upsample};

use super::{cubic_coeffs, floats, from_f64, ints};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, Kernel, RunCx};
use crate::kernels::util::{norm_axis, strides};
use crate::value::Value;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Nearest(Nearest),
    Linear,
    Cubic,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ctm {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
    TfCropAndResize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    Stretch,
    NotLarger,
    NotSmaller,
}

#[derive(Clone, Debug)]
struct Spec {
    mode: Mode,
    ctm: Ctm,
    cubic_a: f64,
    exclude_outside: bool,
    extrapolation: f64,
    antialias: bool,
    axes: Option<Vec<i64>>,
    policy: Policy,
}

pub(super) fn build_resize(r: &Resize) -> Result<Box<dyn Kernel>, KernelError> {
    let nearest = match r.nearest_mode.as_str() {
        "round_prefer_floor" => Nearest::RoundPreferFloor,
        "round_prefer_ceil" => Nearest::RoundPreferCeil,
        "floor" => Nearest::Floor,
        "ceil" => Nearest::Ceil,
        m => {
            return Err(KernelError::Invalid(format!(
                "Resize: unknown nearest_mode `{m}`"
            )))
        }
    };
    let mode = match r.mode.as_str() {
        "nearest" => Mode::Nearest(nearest),
        "linear" => Mode::Linear,
        "cubic" => Mode::Cubic,
        m => return Err(KernelError::Invalid(format!("Resize: unknown mode `{m}`"))),
    };
    let ctm = match r.coordinate_transformation_mode.as_str() {
        "half_pixel" => Ctm::HalfPixel,
        "half_pixel_symmetric" => Ctm::HalfPixelSymmetric,
        "pytorch_half_pixel" => Ctm::PytorchHalfPixel,
        "align_corners" => Ctm::AlignCorners,
        "asymmetric" => Ctm::Asymmetric,
        "tf_half_pixel_for_nn" => Ctm::TfHalfPixelForNn,
        "tf_crop_and_resize" => Ctm::TfCropAndResize,
        m => {
            return Err(KernelError::Invalid(format!(
                "Resize: unknown coordinate_transformation_mode `{m}`"
            )))
        }
    };
    let policy = match r.keep_aspect_ratio_policy.as_str() {
        "stretch" => Policy::Stretch,
        "not_larger" => Policy::NotLarger,
        "not_smaller" => Policy::NotSmaller,
        p => {
            return Err(KernelError::Invalid(format!(
                "Resize: unknown keep_aspect_ratio_policy `{p}`"
            )))
        }
    };
    if r.antialias && matches!(mode, Mode::Nearest(_)) {
        return Err(KernelError::Unsupported(
            "Resize: antialias with mode `nearest`".into(),
        ));
    }
    Ok(Box::new(ResizeK {
        spec: Spec {
            mode,
            ctm,
            cubic_a: r.cubic_coeff_a as f64,
            exclude_outside: r.exclude_outside,
            extrapolation: r.extrapolation_value as f64,
            antialias: r.antialias,
            axes: r.axes.clone(),
            policy,
        },
        upsample: false,
    }))
}

pub(super) fn build_upsample(u: &Upsample) -> Result<Box<dyn Kernel>, KernelError> {
    let mode = match u.mode.as_str() {
        "nearest" => Mode::Nearest(Nearest::Floor),
        "linear" | "bilinear" => Mode::Linear,
        m => {
            return Err(KernelError::Invalid(format!(
                "Upsample: unknown mode `{m}`"
            )))
        }
    };
    Ok(Box::new(ResizeK {
        spec: Spec {
            mode,
            ctm: Ctm::Asymmetric,
            cubic_a: -0.75,
            exclude_outside: false,
            extrapolation: 0.0,
            antialias: false,
            axes: None,
            policy: Policy::Stretch,
        },
        upsample: true,
    }))
}

struct ResizeK {
    spec: Spec,
    /// Upsample: inputs are `X, scales`.
    upsample: bool,
}

/// How one output position along an axis reads the input: `(input index, weight)` taps,
/// or `None` for "outside the crop" (tf_crop_and_resize extrapolation).
type AxisPlan = Vec<Option<Vec<(usize, f64)>>>;

impl Kernel for ResizeK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let (roi, scales, sizes) = if self.upsample {
            (None, Some(tensor_input(inputs, 1)?), None)
        } else {
            (
                opt_tensor_input(inputs, 1)?.filter(|t| !t.is_empty()),
                opt_tensor_input(inputs, 2)?.filter(|t| !t.is_empty()),
                opt_tensor_input(inputs, 3)?.filter(|t| !t.is_empty()),
            )
        };
        let data = floats(x, "Resize input", true)?;
        let roi = match (self.spec.ctm, roi) {
            (Ctm::TfCropAndResize, Some(r)) => Some(floats(r, "roi", false)?),
            (Ctm::TfCropAndResize, None) => {
                return Err(KernelError::Invalid(
                    "Resize: tf_crop_and_resize needs a roi input".into(),
                ))
            }
            _ => None,
        };
        let scales = scales.map(|s| floats(s, "scales", false)).transpose()?;
        let sizes = sizes.map(|s| ints(s, "sizes")).transpose()?;
        let (out, passes, mask) = plan(
            &self.spec,
            x.shape(),
            roi.as_deref(),
            scales.as_deref(),
            sizes.as_deref(),
        )?;
        let y = resample(&data, x.shape(), &passes, &mask, self.spec.extrapolation);
        debug_assert_eq!(y.len(), out.iter().product::<usize>());
        Ok(vec![from_f64(cx, x.dtype(), out, &y)?.into()])
    }
}

/// The output shape, the 1-D passes `(axis, plan)` to apply, and whether any axis can
/// extrapolate.
#[allow(clippy::type_complexity)]
fn plan(
    spec: &Spec,
    in_shape: &[usize],
    roi: Option<&[f64]>,
    scales: Option<&[f64]>,
    sizes: Option<&[i64]>,
) -> Result<(Vec<usize>, Vec<(usize, AxisPlan)>, bool), KernelError> {
    let rank = in_shape.len();
    let axes: Vec<usize> = match &spec.axes {
        Some(a) => {
            let v = a
                .iter()
                .map(|&ax| norm_axis(ax, rank))
                .collect::<Result<Vec<_>, _>>()?;
            for (i, ax) in v.iter().enumerate() {
                if v[..i].contains(ax) {
                    return Err(KernelError::Invalid(format!(
                        "Resize: axes {a:?} repeat an axis"
                    )));
                }
            }
            v
        }
        None => (0..rank).collect(),
    };
    let n = axes.len();
    let mut scale = vec![1.0f64; rank];
    let mut out: Vec<usize> = in_shape.to_vec();
    match (scales, sizes) {
        (Some(_), Some(_)) => {
            return Err(KernelError::Invalid(
                "Resize: only one of scales and sizes may be given".into(),
            ))
        }
        (None, None) => {
            return Err(KernelError::Invalid(
                "Resize needs either scales or sizes".into(),
            ))
        }
        (Some(s), None) => {
            if s.len() != n {
                return Err(KernelError::Invalid(format!(
                    "Resize: scales has {} values for {n} axes",
                    s.len()
                )));
            }
            for (&a, &sc) in axes.iter().zip(s) {
                if !(sc > 0.0) || !sc.is_finite() {
                    return Err(KernelError::Invalid(format!(
                        "Resize: scales must be positive, got {sc}"
                    )));
                }
                scale[a] = sc;
                out[a] = dim_of(sc * in_shape[a] as f64)?;
            }
        }
        (None, Some(sz)) => {
            if sz.len() != n {
                return Err(KernelError::Invalid(format!(
                    "Resize: sizes has {} values for {n} axes",
                    sz.len()
                )));
            }
            if let Some(&bad) = sz.iter().find(|&&v| v < 0) {
                return Err(KernelError::Invalid(format!(
                    "Resize: sizes must not be negative, got {bad}"
                )));
            }
            for (&a, &o) in axes.iter().zip(sz) {
                if in_shape[a] == 0 {
                    if o != 0 {
                        return Err(KernelError::Invalid(format!(
                            "Resize: cannot resize empty axis {a} to {o}"
                        )));
                    }
                    continue;
                }
                scale[a] = o as f64 / in_shape[a] as f64;
                out[a] = o as usize;
            }
            if spec.policy != Policy::Stretch {
                let ratios = axes.iter().filter(|&&a| in_shape[a] > 0).map(|&a| scale[a]);
                let s = if spec.policy == Policy::NotLarger {
                    ratios.fold(f64::INFINITY, f64::min)
                } else {
                    ratios.fold(f64::NEG_INFINITY, f64::max)
                };
                if s.is_finite() {
                    for &a in &axes {
                        scale[a] = s;
                        out[a] = dim_of(s * in_shape[a] as f64 + 0.5)?;
                    }
                }
            }
        }
    }
    // Full-rank crop box (only for tf_crop_and_resize).
    let mut crop = vec![(0.0f64, 1.0f64); rank];
    if let Some(r) = roi {
        if r.len() != 2 * n {
            return Err(KernelError::Invalid(format!(
                "Resize: roi has {} values, expected {} (2 per axis)",
                r.len(),
                2 * n
            )));
        }
        for (i, &a) in axes.iter().enumerate() {
            crop[a] = (r[i], r[n + i]);
        }
    }
    let mut passes = Vec::new();
    let mut mask = false;
    let mut sorted = axes.clone();
    sorted.sort_unstable();
    for a in sorted {
        if out[a] > 0 && in_shape[a] == 0 {
            return Err(KernelError::Invalid(format!(
                "Resize: cannot resize empty axis {a} to {}",
                out[a]
            )));
        }
        if out[a] == 0 || in_shape[a] == 0 {
            continue;
        }
        let p = axis_plan(spec, in_shape[a], out[a], scale[a], crop[a]);
        let identity = p.len() == in_shape[a]
            && p.iter().enumerate().all(|(i, t)| {
                matches!(t, Some(t) if t.iter().all(|&(j, w)| w == 0.0 || (j == i && w == 1.0)))
            });
        if identity {
            continue;
        }
        mask |= p.iter().any(|t| t.is_none());
        passes.push((a, p));
    }
    Ok((out, passes, mask))
}

/// A float dim, truncated as the reference does; rejects absurd values.
fn dim_of(v: f64) -> Result<usize, KernelError> {
    if !(v >= 0.0) || v > (1u64 << 48) as f64 {
        return Err(KernelError::Invalid(format!(
            "Resize: output dim {v} is out of range"
        )));
    }
    Ok(v as usize)
}

/// The taps of each output position along one axis of length `w_in` resized to `w_out`.
fn axis_plan(spec: &Spec, w_in: usize, w_out: usize, scale: f64, crop: (f64, f64)) -> AxisPlan {
    let w = w_in as f64;
    // The reference uses the unrounded output length in its coordinate maps.
    let ow = scale * w;
    (0..w_out)
        .map(|i| {
            let x = i as f64;
            let src = match spec.ctm {
                Ctm::HalfPixel => (x + 0.5) / scale - 0.5,
                Ctm::HalfPixelSymmetric => {
                    let adjustment = w_out as f64 / ow;
                    let offset = w / 2.0 * (1.0 - adjustment);
                    offset + (x + 0.5) / scale - 0.5
                }
                Ctm::PytorchHalfPixel => {
                    if ow == 1.0 {
                        -0.5
                    } else {
                        (x + 0.5) / scale - 0.5
                    }
                }
                Ctm::AlignCorners => {
                    if ow == 1.0 {
                        0.0
                    } else {
                        x * (w - 1.0) / (ow - 1.0)
                    }
                }
                Ctm::Asymmetric => x / scale,
                Ctm::TfHalfPixelForNn => (x + 0.5) / scale,
                Ctm::TfCropAndResize => {
                    let (s, e) = crop;
                    let v = if ow == 1.0 {
                        (e - s) * (w - 1.0) / 2.0
                    } else {
                        x * (e - s) * (w - 1.0) / (ow - 1.0)
                    };
                    let v = v + s * (w - 1.0);
                    if v < 0.0 || v > w - 1.0 || v.is_nan() {
                        return None;
                    }
                    v
                }
            };
            Some(taps(spec, src, w_in, scale))
        })
        .collect()
}

/// The taps for source coordinate `src` on an axis of length `w_in`.
fn taps(spec: &Spec, src: f64, w_in: usize, scale: f64) -> Vec<(usize, f64)> {
    let last = w_in as i64 - 1;
    let clamp = |i: i64| i.clamp(0, last) as usize;
    if !src.is_finite() {
        return vec![(0, f64::NAN)];
    }
    let fl = src.floor();
    let is_int = src == fl;
    // `ratio` is in (0, 1]: the point lies `ratio` past tap `base` (left neighbour).
    let (base, ratio) = if is_int {
        (fl as i64 - 1, 1.0)
    } else {
        (fl as i64, src - fl)
    };
    if let Mode::Nearest(nm) = spec.mode {
        let up = if is_int {
            true
        } else {
            match nm {
                Nearest::RoundPreferFloor => ratio > 0.5,
                Nearest::RoundPreferCeil => ratio >= 0.5,
                Nearest::Floor => false,
                Nearest::Ceil => true,
            }
        };
        return vec![(clamp(base + up as i64), 1.0)];
    }
    let s = scale.min(1.0);
    let coeffs: Vec<f64> = match (spec.mode, spec.antialias) {
        (Mode::Linear, false) => vec![1.0 - ratio, ratio],
        (Mode::Cubic, false) => cubic_coeffs(ratio, spec.cubic_a).to_vec(),
        (Mode::Linear, true) => {
            let start = (-1.0 / s).floor() as i64 + 1;
            let c: Vec<f64> = (start..2 - start)
                .map(|k| (1.0 - ((k as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                .collect();
            normalize(c)
        }
        (Mode::Cubic, true) => {
            let a = spec.cubic_a;
            let start = (-2.0 / s).floor() as i64 + 1;
            let c: Vec<f64> = (start..2 - start)
                .map(|k| {
                    let x = (s * (k as f64 - ratio)).abs();
                    if x <= 1.0 {
                        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                    } else if x < 2.0 {
                        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
                    } else {
                        0.0
                    }
                })
                .collect();
            normalize(c)
        }
        (Mode::Nearest(_), _) => unreachable!("handled above"),
    };
    let n = coeffs.len() as i64;
    let pad = (n + 1) / 2;
    // The n nearest positions of the axis padded by `pad` on each side.
    let start = (base - n / 2 + 1).clamp(-pad, w_in as i64 + pad - n);
    let mut t: Vec<(i64, f64)> = coeffs
        .into_iter()
        .enumerate()
        .map(|(k, c)| (start + k as i64, c))
        .collect();
    if spec.exclude_outside {
        for tap in &mut t {
            if tap.0 < 0 || tap.0 > last {
                tap.1 = 0.0;
            }
        }
        let sum: f64 = t.iter().map(|t| t.1).sum();
        if sum != 0.0 {
            t.iter_mut().for_each(|tap| tap.1 /= sum);
        }
    }
    t.into_iter()
        .filter(|&(_, c)| c != 0.0)
        .map(|(i, c)| (clamp(i), c))
        .collect()
}

fn normalize(mut c: Vec<f64>) -> Vec<f64> {
    let sum: f64 = c.iter().sum();
    if sum != 0.0 {
        c.iter_mut().for_each(|v| *v /= sum);
    }
    c
}

/// Applies the passes in turn, then writes `extrapolation` where any axis extrapolates.
fn resample(
    data: &[f64],
    in_shape: &[usize],
    passes: &[(usize, AxisPlan)],
    mask: &bool,
    extrapolation: f64,
) -> Vec<f64> {
    let mut shape = in_shape.to_vec();
    let mut cur: Vec<f64> = data.to_vec();
    for (a, p) in passes {
        let a = *a;
        let outer: usize = shape[..a].iter().product();
        let inner: usize = shape[a + 1..].iter().product();
        let (w_in, w_out) = (shape[a], p.len());
        let mut next = vec![0.0f64; outer * w_out * inner];
        for o in 0..outer {
            let src = &cur[o * w_in * inner..(o + 1) * w_in * inner];
            let dst = &mut next[o * w_out * inner..(o + 1) * w_out * inner];
            for (j, taps) in p.iter().enumerate() {
                let row = &mut dst[j * inner..(j + 1) * inner];
                match taps {
                    None => row.iter_mut().for_each(|v| *v = extrapolation),
                    Some(taps) => {
                        for &(i, w) in taps {
                            let s = &src[i * inner..(i + 1) * inner];
                            row.iter_mut().zip(s).for_each(|(d, &v)| *d += w * v);
                        }
                    }
                }
            }
        }
        shape[a] = w_out;
        cur = next;
    }
    if *mask {
        // An output element is extrapolated when any axis's source coordinate is.
        let st = strides(&shape);
        for (a, p) in passes {
            let (a, inner) = (*a, st[*a]);
            for (j, taps) in p.iter().enumerate() {
                if taps.is_some() {
                    continue;
                }
                let outer: usize = shape[..a].iter().product();
                for o in 0..outer {
                    let off = o * shape[a] * inner + j * inner;
                    cur[off..off + inner]
                        .iter_mut()
                        .for_each(|v| *v = extrapolation);
                }
            }
        }
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: Mode, ctm: Ctm) -> Spec {
        Spec {
            mode,
            ctm,
            cubic_a: -0.75,
            exclude_outside: false,
            extrapolation: 0.0,
            antialias: false,
            axes: None,
            policy: Policy::Stretch,
        }
    }

    fn run(s: &Spec, x: &[f64], shape: &[usize], scales: &[f64]) -> (Vec<usize>, Vec<f64>) {
        let (out, passes, mask) = plan(s, shape, None, Some(scales), None).unwrap();
        (out, resample(x, shape, &passes, &mask, s.extrapolation))
    }

    #[test]
    fn linear_half_pixel_upsample_by_two() {
        // x = [0, 10]; out positions map to -0.25, 0.25, 0.75, 1.25 (clamped at the edges).
        let s = spec(Mode::Linear, Ctm::HalfPixel);
        let (out, y) = run(&s, &[0.0, 10.0], &[2], &[2.0]);
        assert_eq!(out, vec![4]);
        assert_eq!(y, vec![0.0, 2.5, 7.5, 10.0]);
    }

    #[test]
    fn nearest_modes_pick_expected_neighbours() {
        // asymmetric, scale 2/3 upsample... use scale 0.5 downsample: src = 2x.
        let x = [1.0, 2.0, 3.0, 4.0];
        let s = spec(Mode::Nearest(Nearest::RoundPreferFloor), Ctm::HalfPixel);
        // scale 2: src = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, ...
        let (_, y) = run(&s, &x, &[4], &[2.0]);
        assert_eq!(y, vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]);
        // scale 4/3 (sizes 4 -> 3 inverse): src for i=1 with scale 0.75 is 1.5 exactly.
        let s = spec(Mode::Nearest(Nearest::RoundPreferCeil), Ctm::HalfPixel);
        let (out, y) = run(&s, &x, &[4], &[0.75]);
        assert_eq!(out, vec![3]);
        // src = 1/6, 1.5, 17/6 -> 0, 2 (ceil on tie), 3
        assert_eq!(y, vec![1.0, 3.0, 4.0]);
        let s = spec(Mode::Nearest(Nearest::RoundPreferFloor), Ctm::HalfPixel);
        let (_, y) = run(&s, &x, &[4], &[0.75]);
        assert_eq!(y, vec![1.0, 2.0, 4.0]);
    }

    #[test]
    fn cubic_weights_sum_to_one_and_reproduce_linear_data() {
        // Keys' kernel reproduces linear functions exactly away from the edges.
        let x: Vec<f64> = (0..8).map(|i| 3.0 * i as f64 + 1.0).collect();
        let mut s = spec(Mode::Cubic, Ctm::Asymmetric);
        s.cubic_a = -0.5;
        let (_, y) = run(&s, &x, &[8], &[2.0]);
        for (i, v) in y.iter().enumerate().take(12).skip(2) {
            let want = 3.0 * (i as f64 / 2.0) + 1.0;
            assert!((v - want).abs() < 1e-12, "{i}: {v} vs {want}");
        }
        for r in [0.1, 0.5, 0.9, 1.0] {
            let c = cubic_coeffs(r, -0.5);
            assert!((c.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn crop_and_resize_extrapolates_outside_the_box() {
        let mut s = spec(Mode::Linear, Ctm::TfCropAndResize);
        s.extrapolation = -1.0;
        // Crop [0.5, 1.5] of a length-3 axis resized to 3: src = 1, 2, 3 -> last is outside.
        let (out, passes, mask) = plan(&s, &[3], Some(&[0.5, 1.5]), None, Some(&[3])).unwrap();
        assert_eq!(out, vec![3]);
        assert!(mask);
        let y = resample(&[0.0, 10.0, 20.0], &[3], &passes, &mask, -1.0);
        assert_eq!(y, vec![10.0, 20.0, -1.0]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let s = spec(Mode::Linear, Ctm::HalfPixel);
        assert!(plan(&s, &[2, 2], None, Some(&[1.0]), None).is_err());
        assert!(plan(&s, &[2], None, Some(&[-1.0]), None).is_err());
        assert!(plan(&s, &[2], None, None, None).is_err());
        assert!(plan(&s, &[0], None, None, Some(&[3])).is_err());
        let mut s = spec(Mode::Linear, Ctm::TfCropAndResize);
        s.axes = Some(vec![0]);
        assert!(plan(&s, &[4, 4], Some(&[0.0, 1.0, 0.0, 1.0]), None, Some(&[2])).is_err());
    }

    #[test]
    fn keep_aspect_ratio_not_larger() {
        let mut s = spec(Mode::Nearest(Nearest::Floor), Ctm::Asymmetric);
        s.policy = Policy::NotLarger;
        // [2, 4] into at most [3, 3]: scale = min(1.5, 0.75) = 0.75 -> [round(1.5), 3] = [2, 3].
        let (out, _, _) = plan(&s, &[2, 4], None, None, Some(&[3, 3])).unwrap();
        assert_eq!(out, vec![2, 3]);
    }
}
