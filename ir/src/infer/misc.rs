//! Everything else: random generators, signal processing (windows, DFT, STFT, mel
//! matrices), string ops, image decoding, text vectorization and the loss ops.

use super::helpers::*;
use super::nn::floor_div;
use super::sequence::dtype_code;
use super::{InferCx, InferError, InferResult, Out};
use crate::dtype::DType;
use crate::op::Op;
use crate::shape::Dim;

pub(super) fn infer(op: &Op, cx: &mut InferCx) -> Option<InferResult> {
    use Op::*;
    Some(match op {
        Bernoulli(b) => (|| {
            let dt = match b.dtype {
                Some(c) => dtype_code(c)?,
                None => cx.dtype(0)?,
            };
            Ok(vec![shape_as_input(cx, 0, dt)?])
        })(),
        Multinomial(m) => (|| {
            let dt = dtype_code(m.dtype)?;
            if !matches!(dt, DType::I32 | DType::I64) {
                return Err(InferError::Bad(format!(
                    "Multinomial dtype must be i32 or i64, got {dt}"
                )));
            }
            let batch = match cx.tensor(0)?.shape.as_deref() {
                Some([b, _]) => b.clone(),
                Some(s) => {
                    return Err(InferError::Bad(format!(
                        "input must have rank 2, got {}",
                        s.len()
                    )))
                }
                None => cx.fresh("batch"),
            };
            Ok(vec![Out::tensor(dt, vec![batch, Dim::from(m.sample_size)])])
        })(),
        RandomNormal(r) => random(r.dtype, &r.shape),
        RandomUniform(r) => random(r.dtype, &r.shape),
        RandomNormalLike(r) => random_like(cx, r.dtype),
        RandomUniformLike(r) => random_like(cx, r.dtype),
        BlackmanWindow(w) => window(cx, w.output_datatype),
        HammingWindow(w) => window(cx, w.output_datatype),
        HannWindow(w) => window(cx, w.output_datatype),
        MelWeightMatrix(m) => (|| {
            let dt = dtype_code(m.output_datatype)?;
            let bins = match scalar_dim(cx, 1) {
                Some(n) => floor_div(&n, 2)
                    .map(|h| &h + &Dim::from(1i64))
                    .unwrap_or_else(|| cx.fresh("mel")),
                None => cx.fresh("mel"),
            };
            let mels = scalar_dim(cx, 0).unwrap_or_else(|| cx.fresh("mel"));
            Ok(vec![Out::tensor(dt, vec![bins, mels])])
        })(),
        DFT(d) => dft(cx, d.inverse, d.onesided),
        STFT(s) => stft(cx, s.onesided),
        ImageDecoder(i) => (|| {
            let c = match i.pixel_format.as_str() {
                "RGB" | "BGR" => 3i64,
                "Grayscale" => 1,
                other => return Err(InferError::Bad(format!("unknown pixel_format `{other}`"))),
            };
            let (h, w) = (cx.fresh("height"), cx.fresh("width"));
            Ok(vec![Out::tensor(DType::U8, vec![h, w, Dim::from(c)])])
        })(),
        RegexFullMatch(_) => shape_as_input(cx, 0, DType::Bool).map(|o| vec![o]),
        StringConcat(_) => {
            broadcast_inputs(cx, &[0, 1]).map(|s| vec![Out::tensor(DType::String, s)])
        }
        StringNormalizer(s) => (|| {
            let x = match cx.tensor(0)?.shape.clone() {
                Some(x) => x,
                None => return Ok(vec![Out::unranked(DType::String)]),
            };
            let valid = x.len() == 1 || (x.len() == 2 && x[0].known() == Some(1));
            if !valid {
                return Err(InferError::Bad(format!(
                    "input must be [C] or [1, C], got rank {}",
                    x.len()
                )));
            }
            let mut out = x.clone();
            let last = out.len() - 1;
            if s.stopwords.as_ref().is_some_and(|w| !w.is_empty()) {
                out[last] = cx.fresh("strings");
            } else if out[last].known() == Some(0) {
                // All dropped: the output holds one empty string.
                out[last] = Dim::from(1i64);
            }
            Ok(vec![Out::tensor(DType::String, out)])
        })(),
        StringSplit(_) => (|| {
            let x = cx.tensor(0)?.shape.clone();
            Ok(match x {
                Some(x) => {
                    let mut y = x.clone();
                    y.push(cx.fresh("substrings"));
                    vec![Out::tensor(DType::String, y), Out::tensor(DType::I64, x)]
                }
                None => vec![Out::unranked(DType::String), Out::unranked(DType::I64)],
            })
        })(),
        TfIdfVectorizer(t) => (|| {
            let k = t.ngram_indexes.iter().copied().max().map_or(0, |m| m + 1);
            let x = cx.tensor(0)?.shape.clone();
            Ok(vec![match x.as_deref() {
                Some([_]) => Out::tensor(DType::F32, vec![Dim::from(k)]),
                Some([n, _]) => Out::tensor(DType::F32, vec![n.clone(), Dim::from(k)]),
                Some(s) => {
                    return Err(InferError::Bad(format!(
                        "input must have rank 1 or 2, got {}",
                        s.len()
                    )))
                }
                None => Out::unranked(DType::F32),
            }])
        })(),
        NegativeLogLikelihoodLoss(l) => loss(cx, &l.reduction, false),
        SoftmaxCrossEntropyLoss(l) => loss(cx, &l.reduction, true),
        _ => return None,
    })
}

fn random(dtype: i64, shape: &[i64]) -> InferResult {
    let dt = dtype_code(dtype)?;
    if shape.iter().any(|&d| d < 0) {
        return Err(InferError::Bad(format!(
            "shape must be non-negative, got {shape:?}"
        )));
    }
    Ok(vec![Out::tensor(
        dt,
        shape.iter().map(|&d| Dim::from(d)).collect(),
    )])
}

fn random_like(cx: &InferCx, dtype: Option<i64>) -> InferResult {
    let dt = match dtype {
        Some(c) => dtype_code(c)?,
        None => cx.dtype(0)?,
    };
    Ok(vec![shape_as_input(cx, 0, dt)?])
}

/// The value of scalar (or one-element) integer input `i`, when known.
fn scalar_dim(cx: &InferCx, i: usize) -> Option<Dim> {
    if !cx.has(i) {
        return None;
    }
    match cx.sym(i) {
        Some([d]) => Some(d.clone()),
        _ => None,
    }
}

fn window(cx: &mut InferCx, output_datatype: i64) -> InferResult {
    let dt = dtype_code(output_datatype)?;
    if let Ok(s) = cx.shape(0) {
        if !(s.is_empty() || s.len() == 1 && s[0].known() == Some(1)) {
            return Err(InferError::Bad("size must be a scalar".into()));
        }
    }
    let n = scalar_dim(cx, 0).unwrap_or_else(|| cx.fresh("window"));
    Ok(vec![Out::tensor(dt, vec![n])])
}

/// DFT (opset 20): `axis` is input 2 (default -2), `dft_length` input 1.
fn dft(cx: &mut InferCx, inverse: bool, onesided: bool) -> InferResult {
    let dt = cx.dtype(0)?;
    let Some(x) = cx.tensor(0)?.shape.clone() else {
        return Ok(vec![Out::unranked(dt)]);
    };
    let r = x.len();
    if r < 2 {
        return Err(InferError::Bad(format!(
            "input must have rank >= 2, got {r}"
        )));
    }
    if let Some(l) = x[r - 1].known() {
        if l != 1 && l != 2 {
            return Err(InferError::Bad(format!(
                "last dim must be 1 (real) or 2 (complex), got {l}"
            )));
        }
    }
    let irfft = onesided && inverse;
    let last = Dim::from(if irfft { 1i64 } else { 2 });
    let axis = if cx.has(2) {
        match cx.known_ints(2).as_deref() {
            Some([a]) => Some(*a),
            _ => None,
        }
    } else {
        Some(-2)
    };
    let Some(axis) = axis else {
        // Unknown axis: any signal dim may change.
        let mut out: Vec<Dim> = (0..r - 1).map(|_| cx.fresh("dft")).collect();
        out.push(last);
        return Ok(vec![Out::tensor(dt, out)]);
    };
    let ri = r as i64;
    let a = if axis < 0 { axis + ri } else { axis };
    if a < 0 || a > ri - 2 {
        return Err(InferError::Bad(format!(
            "axis {axis} is out of range for rank {r} (the last dim is not a signal axis)"
        )));
    }
    let a = a as usize;
    let len = if cx.has(1) {
        scalar_dim(cx, 1).unwrap_or_else(|| cx.fresh("dft"))
    } else if irfft {
        &Dim::from(2i64) * &(&x[a] - &Dim::from(1i64))
    } else {
        x[a].clone()
    };
    let mut out = x.clone();
    out[a] = if onesided && !inverse {
        floor_div(&len, 2)
            .map(|h| &h + &Dim::from(1i64))
            .unwrap_or_else(|| cx.fresh("dft"))
    } else {
        len
    };
    out[r - 1] = last;
    Ok(vec![Out::tensor(dt, out)])
}

/// STFT: signal [batch, length, 1|2], frame_step (1), window (2), frame_length (3).
fn stft(cx: &mut InferCx, onesided: bool) -> InferResult {
    let dt = cx.dtype(0)?;
    let x = match cx.tensor(0)?.shape.clone() {
        Some(x) if x.len() == 3 => x,
        Some(x) => {
            return Err(InferError::Bad(format!(
                "signal must have rank 3, got {}",
                x.len()
            )))
        }
        None => vec![cx.fresh("stft"), cx.fresh("stft"), cx.fresh("stft")],
    };
    let window_len = if cx.has(2) {
        match cx.shape(2) {
            Ok([w]) => Some(w.clone()),
            Ok(s) => {
                return Err(InferError::Bad(format!(
                    "window must have rank 1, got {}",
                    s.len()
                )))
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let frame_len = if cx.has(3) {
        scalar_dim(cx, 3)
    } else if cx.has(2) {
        window_len.clone()
    } else {
        Some(x[1].clone())
    };
    if let (Some(f), Some(w)) = (
        frame_len.as_ref().and_then(|d| d.known()),
        window_len.as_ref().and_then(|d| d.known()),
    ) {
        if f != w {
            return Err(InferError::Bad(format!(
                "window has length {w}, frame_length is {f}"
            )));
        }
    }
    let step = scalar_dim(cx, 1).and_then(|d| d.known());
    let frames = match (&frame_len, step) {
        (Some(f), Some(s)) if s > 0 => floor_div(&(&x[1] - f), s)
            .map(|q| &q + &Dim::from(1i64))
            .unwrap_or_else(|| cx.fresh("frames")),
        (_, Some(s)) if s <= 0 => {
            return Err(InferError::Bad(format!(
                "frame_step must be positive, got {s}"
            )))
        }
        _ => cx.fresh("frames"),
    };
    let bins = match &frame_len {
        Some(f) if onesided => floor_div(f, 2)
            .map(|h| &h + &Dim::from(1i64))
            .unwrap_or_else(|| cx.fresh("bins")),
        Some(f) => f.clone(),
        None => cx.fresh("bins"),
    };
    Ok(vec![Out::tensor(
        dt,
        vec![x[0].clone(), frames, bins, Dim::from(2i64)],
    )])
}

/// NegativeLogLikelihoodLoss (`log_prob` false) and SoftmaxCrossEntropyLoss: input
/// [N, C, d1…], target [N, d1…].
fn loss(cx: &mut InferCx, reduction: &str, log_prob: bool) -> InferResult {
    let dt = cx.dtype(0)?;
    let x = cx.tensor(0)?.shape.clone();
    if let Some(x) = &x {
        if x.len() < 2 {
            return Err(InferError::Bad(format!(
                "input must have rank >= 2 (N, C, …), got {}",
                x.len()
            )));
        }
    }
    let target = cx.tensor(1).ok().and_then(|t| t.shape.clone());
    if let (Some(x), Some(t)) = (&x, &target) {
        if t.len() + 1 != x.len() {
            return Err(InferError::Bad(format!(
                "target has rank {}, input rank {}",
                t.len(),
                x.len()
            )));
        }
    }
    let loss = match reduction {
        "none" => match (&x, &target) {
            (Some(x), Some(t)) => {
                let mut s = vec![broadcast_dim(&x[0], &t[0])?];
                for (a, b) in x[2..].iter().zip(&t[1..]) {
                    s.push(broadcast_dim(a, b)?);
                }
                Out::tensor(dt, s)
            }
            (Some(x), None) => {
                let mut s = x.clone();
                s.remove(1);
                Out::tensor(dt, s)
            }
            (None, Some(t)) => Out::tensor(dt, t.clone()),
            (None, None) => Out::unranked(dt),
        },
        "mean" | "sum" => Out::tensor(dt, vec![]),
        other => return Err(InferError::Bad(format!("unknown reduction `{other}`"))),
    };
    let mut outs = vec![loss];
    if log_prob {
        outs.push(shape_as_input(cx, 0, dt)?);
    }
    Ok(outs)
}

#[cfg(test)]
mod tests {
    use crate::dtype::DType;
    use crate::graph::{Graph, ValueId};
    use crate::infer::infer_graph;
    use crate::op::*;
    use crate::shape::{Dim, Type};
    use crate::tensor::Tensor;

    fn ty(dt: DType, dims: &[&str]) -> Type {
        Type::tensor(
            dt,
            dims.iter()
                .map(|s| {
                    s.parse::<i64>()
                        .map(Dim::from)
                        .unwrap_or_else(|_| Dim::sym(s))
                })
                .collect(),
        )
    }

    fn show(g: &Graph, v: ValueId) -> String {
        g.value(v)
            .ty
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into())
    }

    /// Adds a node and returns its outputs.
    fn node(g: &mut Graph, op: Op, inputs: Vec<Option<ValueId>>, nout: usize) -> Vec<ValueId> {
        let names: Vec<String> = (0..nout).map(|i| g.unique_name(&format!("o{i}"))).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let n = g.add_node("n", op, inputs, &refs);
        g.node(n).outputs.clone()
    }

    #[test]
    fn random_ops() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", Some(ty(DType::F16, &["B", "4"])));
        let b = node(
            &mut g,
            Op::Bernoulli(Bernoulli {
                dtype: None,
                seed: None,
            }),
            vec![Some(x)],
            1,
        );
        let b2 = node(
            &mut g,
            Op::Bernoulli(Bernoulli {
                dtype: Some(9),
                seed: None,
            }),
            vec![Some(x)],
            1,
        );
        let m = node(
            &mut g,
            Op::Multinomial(Multinomial {
                dtype: 7,
                sample_size: 5,
                seed: None,
            }),
            vec![Some(x)],
            1,
        );
        let rn = node(
            &mut g,
            Op::RandomNormal(RandomNormal {
                dtype: 11,
                mean: 0.0,
                scale: 1.0,
                seed: None,
                shape: vec![2, 3],
            }),
            vec![],
            1,
        );
        let ru = node(
            &mut g,
            Op::RandomUniform(RandomUniform {
                dtype: 1,
                high: 1.0,
                low: 0.0,
                seed: None,
                shape: vec![],
            }),
            vec![],
            1,
        );
        let rnl = node(
            &mut g,
            Op::RandomNormalLike(RandomNormalLike {
                dtype: None,
                mean: 0.0,
                scale: 1.0,
                seed: None,
            }),
            vec![Some(x)],
            1,
        );
        let rul = node(
            &mut g,
            Op::RandomUniformLike(RandomUniformLike {
                dtype: Some(1),
                high: 1.0,
                low: 0.0,
                seed: None,
            }),
            vec![Some(x)],
            1,
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(show(&g, b[0]), "f16[B,4]");
        assert_eq!(show(&g, b2[0]), "bool[B,4]");
        assert_eq!(show(&g, m[0]), "i64[B,5]");
        assert_eq!(show(&g, rn[0]), "f64[2,3]");
        assert_eq!(show(&g, ru[0]), "f32[]");
        assert_eq!(show(&g, rnl[0]), "f16[B,4]");
        assert_eq!(show(&g, rul[0]), "f32[B,4]");
    }

    #[test]
    fn windows_and_mel() {
        let mut g = Graph::new("t");
        let ten = g.add_const("ten", Tensor::scalar(10i64));
        let n = g.add_input("n", Some(ty(DType::I64, &[])));
        let w1 = node(
            &mut g,
            Op::HannWindow(HannWindow {
                output_datatype: 1,
                periodic: true,
            }),
            vec![Some(ten)],
            1,
        );
        let w2 = node(
            &mut g,
            Op::HammingWindow(HammingWindow {
                output_datatype: 10,
                periodic: false,
            }),
            vec![Some(ten)],
            1,
        );
        let w3 = node(
            &mut g,
            Op::BlackmanWindow(BlackmanWindow {
                output_datatype: 1,
                periodic: true,
            }),
            vec![Some(n)],
            1,
        );
        let bins = g.add_const("bins", Tensor::scalar(8i32));
        let rate = g.add_const("rate", Tensor::scalar(8000i32));
        let lo = g.add_const("lo", Tensor::scalar(0f32));
        let hi = g.add_const("hi", Tensor::scalar(4000f32));
        let mel = node(
            &mut g,
            Op::MelWeightMatrix(MelWeightMatrix { output_datatype: 1 }),
            vec![Some(bins), Some(ten), Some(rate), Some(lo), Some(hi)],
            1,
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(show(&g, w1[0]), "f32[10]");
        assert_eq!(show(&g, w2[0]), "f16[10]");
        assert!(show(&g, w3[0]).starts_with("f32[unk__window"));
        // floor(10 / 2) + 1 = 6 bins, 8 mel bands.
        assert_eq!(show(&g, mel[0]), "f32[6,8]");
    }

    #[test]
    fn dft_shapes() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", Some(ty(DType::F32, &["B", "S", "1"])));
        let c = g.add_input("c", Some(ty(DType::F32, &["B", "10", "2"])));
        let one = g.add_const("one", Tensor::scalar(1i64));
        let l8 = g.add_const("l8", Tensor::scalar(8i64));
        let dft = |inverse, onesided| Op::DFT(DFT { inverse, onesided });
        let a = node(&mut g, dft(false, false), vec![Some(x)], 1);
        let b = node(&mut g, dft(false, true), vec![Some(c), None, Some(one)], 1);
        let d = node(
            &mut g,
            dft(false, false),
            vec![Some(c), Some(l8), Some(one)],
            1,
        );
        let e = node(&mut g, dft(true, true), vec![Some(c)], 1);
        let f = node(&mut g, dft(true, false), vec![Some(c), None, None], 1);
        infer_graph(&mut g).unwrap();
        assert_eq!(show(&g, a[0]), "f32[B,S,2]");
        // Onesided: floor(10/2)+1 = 6.
        assert_eq!(show(&g, b[0]), "f32[B,6,2]");
        assert_eq!(show(&g, d[0]), "f32[B,8,2]");
        // IRFFT: default length 2*(10-1) = 18, real output.
        assert_eq!(show(&g, e[0]), "f32[B,18,1]");
        assert_eq!(show(&g, f[0]), "f32[B,10,2]");
        // Axis on the complex dim is an error.
        let mut g = Graph::new("t");
        let x = g.add_input("x", Some(ty(DType::F32, &["B", "S", "1"])));
        let bad = g.add_const("bad", Tensor::scalar(-1i64));
        node(&mut g, dft(false, false), vec![Some(x), None, Some(bad)], 1);
        assert!(infer_graph(&mut g)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
    }

    #[test]
    fn stft_shapes() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", Some(ty(DType::F32, &["1", "128", "1"])));
        let step = g.add_const("step", Tensor::scalar(8i64));
        let flen = g.add_const("flen", Tensor::scalar(16i64));
        let win = g.add_input("win", Some(ty(DType::F32, &["16"])));
        let a = node(
            &mut g,
            Op::STFT(STFT { onesided: true }),
            vec![Some(x), Some(step), None, Some(flen)],
            1,
        );
        let b = node(
            &mut g,
            Op::STFT(STFT { onesided: false }),
            vec![Some(x), Some(step), Some(win)],
            1,
        );
        infer_graph(&mut g).unwrap();
        // frames = floor((128 - 16) / 8) + 1 = 15; bins = 16/2 + 1 = 9.
        assert_eq!(show(&g, a[0]), "f32[1,15,9,2]");
        assert_eq!(show(&g, b[0]), "f32[1,15,16,2]");
    }

    #[test]
    fn strings_and_images() {
        let mut g = Graph::new("t");
        let s = g.add_input("s", Some(ty(DType::String, &["B", "3"])));
        let s1 = g.add_input("s1", Some(ty(DType::String, &["1", "4"])));
        let u = g.add_input("u", Some(ty(DType::String, &["3"])));
        let img = g.add_input("img", Some(ty(DType::U8, &["N"])));
        let rm = node(
            &mut g,
            Op::RegexFullMatch(RegexFullMatch {
                pattern: Some("a.*".into()),
            }),
            vec![Some(s)],
            1,
        );
        let sc = node(
            &mut g,
            Op::StringConcat(StringConcat {}),
            vec![Some(s), Some(u)],
            1,
        );
        let sn = node(
            &mut g,
            Op::StringNormalizer(StringNormalizer {
                case_change_action: "LOWER".into(),
                is_case_sensitive: false,
                locale: None,
                stopwords: None,
            }),
            vec![Some(s1)],
            1,
        );
        let sn2 = node(
            &mut g,
            Op::StringNormalizer(StringNormalizer {
                case_change_action: "NONE".into(),
                is_case_sensitive: false,
                locale: None,
                stopwords: Some(vec!["a".into()]),
            }),
            vec![Some(u)],
            1,
        );
        let ss = node(
            &mut g,
            Op::StringSplit(StringSplit {
                delimiter: None,
                maxsplit: None,
            }),
            vec![Some(s)],
            2,
        );
        let im = node(
            &mut g,
            Op::ImageDecoder(ImageDecoder {
                pixel_format: "Grayscale".into(),
            }),
            vec![Some(img)],
            1,
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(show(&g, rm[0]), "bool[B,3]");
        assert_eq!(show(&g, sc[0]), "string[B,3]");
        assert_eq!(show(&g, sn[0]), "string[1,4]");
        assert!(show(&g, sn2[0]).starts_with("string[unk__strings"));
        assert!(show(&g, ss[0]).starts_with("string[B,3,unk__substrings"));
        assert_eq!(show(&g, ss[1]), "i64[B,3]");
        let i = show(&g, im[0]);
        assert!(i.starts_with("u8[unk__height") && i.ends_with(",1]"), "{i}");
        // StringNormalizer rejects [2, C].
        let mut g = Graph::new("t");
        let s = g.add_input("s", Some(ty(DType::String, &["2", "4"])));
        node(
            &mut g,
            Op::StringNormalizer(StringNormalizer {
                case_change_action: "NONE".into(),
                is_case_sensitive: false,
                locale: None,
                stopwords: None,
            }),
            vec![Some(s)],
            1,
        );
        assert!(infer_graph(&mut g).is_err());
    }

    #[test]
    fn tfidf() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", Some(ty(DType::I32, &["N", "12"])));
        let y = node(
            &mut g,
            Op::TfIdfVectorizer(TfIdfVectorizer {
                max_gram_length: 2,
                max_skip_count: 0,
                min_gram_length: 2,
                mode: "TF".into(),
                ngram_counts: vec![0, 4],
                ngram_indexes: vec![0, 1, 2, 3, 4, 5, 6],
                pool_int64s: Some(vec![2, 3, 5, 4, 5, 6, 7, 8, 6, 7]),
                pool_strings: None,
                weights: None,
            }),
            vec![Some(x)],
            1,
        );
        infer_graph(&mut g).unwrap();
        assert_eq!(show(&g, y[0]), "f32[N,7]");
    }

    #[test]
    fn losses() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", Some(ty(DType::F32, &["N", "C", "D"])));
        let t = g.add_input("t", Some(ty(DType::I64, &["N", "D"])));
        let nll = |r: &str| {
            Op::NegativeLogLikelihoodLoss(NegativeLogLikelihoodLoss {
                ignore_index: None,
                reduction: r.into(),
            })
        };
        let sce = |r: &str| {
            Op::SoftmaxCrossEntropyLoss(SoftmaxCrossEntropyLoss {
                ignore_index: Some(0),
                reduction: r.into(),
            })
        };
        let a = node(&mut g, nll("none"), vec![Some(x), Some(t)], 1);
        let b = node(&mut g, nll("mean"), vec![Some(x), Some(t)], 1);
        let c = node(&mut g, sce("sum"), vec![Some(x), Some(t)], 2);
        let d = node(&mut g, sce("none"), vec![Some(x), Some(t)], 1);
        infer_graph(&mut g).unwrap();
        assert_eq!(show(&g, a[0]), "f32[N,D]");
        assert_eq!(show(&g, b[0]), "f32[]");
        assert_eq!(show(&g, c[0]), "f32[]");
        assert_eq!(show(&g, c[1]), "f32[N,C,D]");
        assert_eq!(show(&g, d[0]), "f32[N,D]");
        // Target rank mismatch.
        let mut g = Graph::new("t");
        let x = g.add_input("x", Some(ty(DType::F32, &["N", "C"])));
        let t = g.add_input("t", Some(ty(DType::I64, &["N", "C"])));
        node(&mut g, nll("none"), vec![Some(x), Some(t)], 1);
        assert!(infer_graph(&mut g)
            .unwrap_err()
            .to_string()
            .contains("rank"));
    }

    /// Builds op `domain`/`op_type` with placeholder values for its required attributes
    /// (the kinds are found by trial: the typed reader names the attribute it cannot read).
    fn construct(domain: &str, op_type: &str) -> Op {
        use crate::attr::{Attr, AttrMap};
        use crate::error::IrError;
        let candidates = || {
            vec![
                Attr::Int(1),
                Attr::Ints(vec![1]),
                Attr::Float(1.0),
                Attr::String(b"x".to_vec()),
                Attr::Strings(vec![b"x".to_vec()]),
                Attr::Floats(vec![1.0]),
                Attr::Graph(Graph::new("g")),
                Attr::Type(Type::tensor_unranked(DType::F32)),
                Attr::Tensor(Tensor::scalar(1f32)),
            ]
        };
        let mut map = AttrMap::new();
        let mut tried: std::collections::HashMap<String, usize> = Default::default();
        loop {
            match Op::from_attrs(domain, op_type, map.clone()) {
                Ok(Some(op)) => return op,
                Ok(None) => panic!("{domain}.{op_type} is not known"),
                Err(IrError::Attr { attr, .. }) => {
                    let k = tried.entry(attr.to_string()).or_insert(0);
                    let c = candidates();
                    assert!(*k < c.len(), "cannot build {op_type}: attribute {attr}");
                    map.insert(attr.to_string(), c[*k].clone());
                    *k += 1;
                }
                Err(e) => panic!("cannot build {op_type}: {e}"),
            }
        }
    }

    /// Every default-domain op of the catalog is answered by some inference family.
    #[test]
    fn every_default_domain_op_is_claimed() {
        use crate::infer::{
            control, elementwise, linalg, nn, reduce, sequence, shape_ops, InferCx,
        };
        type Family = fn(&Op, &mut InferCx) -> Option<crate::infer::InferResult>;
        let families: [(&str, Family); 8] = [
            ("elementwise", elementwise::infer),
            ("shape_ops", shape_ops::infer),
            ("reduce", reduce::infer),
            ("linalg", linalg::infer),
            ("nn", nn::infer),
            ("control", control::infer),
            ("sequence", sequence::infer),
            ("misc", super::infer),
        ];
        let mut unclaimed = Vec::new();
        let mut multi = Vec::new();
        for &(domain, op_type) in Op::KNOWN {
            if domain != crate::op::ONNX_DOMAIN {
                continue;
            }
            let op = construct(domain, op_type);
            // A node whose inputs are all present with unknown types.
            let mut g = Graph::new("t");
            let ins: Vec<Option<ValueId>> = (0..9)
                .map(|i| Some(g.add_input(format!("i{i}"), None)))
                .collect();
            let n = g.add_node("n", op.clone(), ins, &["a", "b", "c", "d", "e"]);
            let node = g.node(n);
            let mut claimed_by = Vec::new();
            for (name, f) in families {
                let mut fresh = |h: &str| Dim::sym(&format!("unk__{h}"));
                let mut cx = InferCx {
                    node,
                    inputs: vec![None; 9],
                    consts: vec![None; 9],
                    syms: vec![None; 9],
                    fresh: &mut fresh,
                };
                if f(&op, &mut cx).is_some() {
                    claimed_by.push(name);
                }
            }
            match claimed_by.len() {
                0 => unclaimed.push(op_type),
                1 => {}
                _ => multi.push(format!("{op_type}: {}", claimed_by.join(", "))),
            }
        }
        assert!(
            multi.is_empty(),
            "ops claimed by more than one family: {multi:?}"
        );
        assert!(
            unclaimed.is_empty(),
            "ops no inference family claims: {unclaimed:?}"
        );
    }
}
