//! `ai.onnx.ml` ops: `LabelEncoder` (opset 4 form, with tensor-valued keys/values),
//! `TreeEnsemble` (opset 5), `ArrayFeatureExtractor` and `Binarizer`. kiln has no typed
//! structs for this domain, so the kernels read the opaque node's raw attributes.

use std::collections::HashMap;

use kiln_ir::op::Opaque;
use kiln_ir::{Attr, AttrMap, DType, Op, Tensor};

use super::{from_f64s, to_f64s, KResult, Num};
use crate::error::KernelError;
use crate::kernel::{tensor_input, BuildCx, Kernel, RunCx};
use crate::value::Value;

const ML_DOMAIN: &str = "ai.onnx.ml";

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let Op::Opaque(o) = op else { return None };
    if o.domain != ML_DOMAIN {
        return None;
    }
    let k: KResult<Box<dyn Kernel>> = match o.op_type.as_str() {
        "LabelEncoder" => LabelEncoder::build(o).map(|k| Box::new(k) as Box<dyn Kernel>),
        "TreeEnsemble" => TreeEnsemble::build(o).map(|k| Box::new(k) as Box<dyn Kernel>),
        "ArrayFeatureExtractor" => {
            known_attrs(o, &[]).map(|()| Box::new(ArrayFeatureExtractor) as Box<dyn Kernel>)
        }
        "Binarizer" => known_attrs(o, &["threshold"]).and_then(|()| {
            Ok(Box::new(Binarizer {
                threshold: float_attr(&o.attrs, "threshold")?.unwrap_or(0.0) as f64,
            }) as Box<dyn Kernel>)
        }),
        _ => return None,
    };
    Some(k.map_err(|e| match e {
        KernelError::Invalid(m) => KernelError::Invalid(format!("{}: {m}", o.op_type)),
        e => e,
    }))
}

// ---------------------------------------------------------------------------------------
// Raw attribute access.

/// Errors on an attribute the op does not have, so nothing is silently ignored.
fn known_attrs(o: &Opaque, names: &[&str]) -> KResult<()> {
    match o.attrs.keys().find(|k| !names.contains(&k.as_str())) {
        Some(k) => Err(KernelError::Invalid(format!("unknown attribute `{k}`"))),
        None => Ok(()),
    }
}

fn wrong_kind(name: &str, want: &str, got: &Attr) -> KernelError {
    KernelError::Invalid(format!(
        "attribute `{name}` must be {want}, got {}",
        got.kind()
    ))
}

fn int_attr(a: &AttrMap, name: &str) -> KResult<Option<i64>> {
    match a.get(name) {
        None => Ok(None),
        Some(Attr::Int(v)) => Ok(Some(*v)),
        Some(x) => Err(wrong_kind(name, "an int", x)),
    }
}

fn float_attr(a: &AttrMap, name: &str) -> KResult<Option<f32>> {
    match a.get(name) {
        None => Ok(None),
        Some(Attr::Float(v)) => Ok(Some(*v)),
        Some(x) => Err(wrong_kind(name, "a float", x)),
    }
}

fn ints_attr(a: &AttrMap, name: &str) -> KResult<Option<Vec<i64>>> {
    match a.get(name) {
        None => Ok(None),
        Some(Attr::Ints(v)) => Ok(Some(v.clone())),
        Some(x) => Err(wrong_kind(name, "ints", x)),
    }
}

fn floats_attr(a: &AttrMap, name: &str) -> KResult<Option<Vec<f32>>> {
    match a.get(name) {
        None => Ok(None),
        Some(Attr::Floats(v)) => Ok(Some(v.clone())),
        Some(x) => Err(wrong_kind(name, "floats", x)),
    }
}

fn strings_attr(a: &AttrMap, name: &str) -> KResult<Option<Vec<Vec<u8>>>> {
    match a.get(name) {
        None => Ok(None),
        Some(Attr::Strings(v)) => Ok(Some(v.clone())),
        Some(x) => Err(wrong_kind(name, "strings", x)),
    }
}

fn string_attr(a: &AttrMap, name: &str) -> KResult<Option<Vec<u8>>> {
    match a.get(name) {
        None => Ok(None),
        Some(Attr::String(v)) => Ok(Some(v.clone())),
        Some(x) => Err(wrong_kind(name, "a string", x)),
    }
}

fn tensor_attr<'a>(a: &'a AttrMap, name: &str) -> KResult<Option<&'a Tensor>> {
    match a.get(name) {
        None => Ok(None),
        Some(Attr::Tensor(t)) => Ok(Some(t)),
        Some(x) => Err(wrong_kind(name, "a tensor", x)),
    }
}

fn vec_tensor<T: kiln_ir::Element>(v: Vec<T>) -> KResult<Tensor> {
    let n = v.len();
    Ok(Tensor::from_vec(vec![n], v)?)
}

/// Bytes per element of a fixed-size, byte-aligned dtype.
fn elem_bytes(dt: DType) -> KResult<usize> {
    if dt == DType::String || dt.bits() == 0 || dt.bits() % 8 != 0 {
        return Err(KernelError::Unsupported(format!("{dt} elements")));
    }
    Ok(dt.bits() / 8)
}

/// A tensor of `shape` whose element `i` is element `pick(i)` of `src` (string or
/// fixed-size); `pick` answers `None` for `fallback`'s first element instead.
fn gather_elems(
    cx: &mut RunCx,
    src: &Tensor,
    fallback: Option<&Tensor>,
    shape: Vec<usize>,
    n: usize,
    pick: impl Fn(usize) -> Option<usize>,
) -> KResult<Tensor> {
    let dt = src.dtype();
    if dt == DType::String {
        let s = src.strings().ok_or("string tensor")?;
        let fb = fallback.and_then(|f| f.strings()).and_then(|f| f.first());
        let out = (0..n)
            .map(|i| match pick(i) {
                Some(j) => Ok(s[j].clone()),
                None => fb.cloned().ok_or_else(|| "missing default".into()),
            })
            .collect::<KResult<Vec<_>>>()?;
        return Ok(Tensor::from_strings(shape, out)?);
    }
    let w = elem_bytes(dt)?;
    let sb = src.bytes();
    let fb = fallback.map(|f| f.bytes()).unwrap_or(&[]);
    if fallback.is_some() && fb.len() < w {
        return Err("empty default".into());
    }
    cx.tensor_bytes(dt, shape, |o| {
        for (i, o) in o.chunks_exact_mut(w).enumerate() {
            match pick(i) {
                Some(j) => o.copy_from_slice(&sb[j * w..(j + 1) * w]),
                None => o.copy_from_slice(&fb[..w]),
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// LabelEncoder

/// A hashable key: strings, integers, and floats by value (NaN equals NaN, -0 equals 0).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Key {
    Int(i64),
    Float(u64),
    Str(Vec<u8>),
}

fn float_key(v: f64) -> Key {
    if v.is_nan() {
        Key::Float(f64::NAN.to_bits())
    } else if v == 0.0 {
        Key::Float(0.0f64.to_bits())
    } else {
        Key::Float(v.to_bits())
    }
}

/// The elements of `t` as keys.
fn keys_of(t: &Tensor) -> KResult<Vec<Key>> {
    let dt = t.dtype();
    if dt == DType::String {
        return Ok(t
            .strings()
            .ok_or("string tensor")?
            .iter()
            .map(|s| Key::Str(s.clone()))
            .collect());
    }
    if dt.is_float() {
        return Ok(t
            .to_f64_vec()
            .ok_or_else(|| KernelError::Unsupported(format!("{dt} keys")))?
            .into_iter()
            .map(float_key)
            .collect());
    }
    Ok(t.to_i64_vec()
        .ok_or_else(|| KernelError::Unsupported(format!("{dt} keys")))?
        .into_iter()
        .map(Key::Int)
        .collect())
}

struct LabelEncoder {
    map: HashMap<Key, usize>,
    /// The values, 1-D, in the output type.
    values: Tensor,
    /// One element of the output type.
    default: Tensor,
}

impl LabelEncoder {
    fn build(o: &Opaque) -> KResult<LabelEncoder> {
        let a = &o.attrs;
        known_attrs(
            o,
            &[
                "default_float",
                "default_int64",
                "default_string",
                "default_tensor",
                "keys_floats",
                "keys_int64s",
                "keys_strings",
                "keys_tensor",
                "values_floats",
                "values_int64s",
                "values_strings",
                "values_tensor",
            ],
        )?;
        let mut keys = Vec::new();
        let mut n_key_attrs = 0;
        if let Some(k) = floats_attr(a, "keys_floats")? {
            keys = k.into_iter().map(|v| float_key(v as f64)).collect();
            n_key_attrs += 1;
        }
        if let Some(k) = ints_attr(a, "keys_int64s")? {
            keys = k.into_iter().map(Key::Int).collect();
            n_key_attrs += 1;
        }
        if let Some(k) = strings_attr(a, "keys_strings")? {
            keys = k.into_iter().map(Key::Str).collect();
            n_key_attrs += 1;
        }
        if let Some(t) = tensor_attr(a, "keys_tensor")? {
            keys = keys_of(t)?;
            n_key_attrs += 1;
        }
        if n_key_attrs != 1 {
            return Err(KernelError::Invalid(format!(
                "exactly one keys_* attribute is required, got {n_key_attrs}"
            )));
        }
        let mut n_value_attrs = 0;
        let mut values = None;
        let mut default = None;
        if let Some(v) = floats_attr(a, "values_floats")? {
            values = Some(vec_tensor(v)?);
            n_value_attrs += 1;
        }
        if let Some(v) = ints_attr(a, "values_int64s")? {
            values = Some(vec_tensor(v)?);
            n_value_attrs += 1;
        }
        if let Some(v) = strings_attr(a, "values_strings")? {
            let n = v.len();
            values = Some(Tensor::from_strings(vec![n], v)?);
            n_value_attrs += 1;
        }
        if let Some(t) = tensor_attr(a, "values_tensor")? {
            values = Some(t.reshaped(vec![t.len()])?);
            default = tensor_attr(a, "default_tensor")?.cloned();
            n_value_attrs += 1;
        }
        let (Some(values), 1) = (values, n_value_attrs) else {
            return Err(KernelError::Invalid(format!(
                "exactly one values_* attribute is required, got {n_value_attrs}"
            )));
        };
        if values.len() != keys.len() {
            return Err(KernelError::Invalid(format!(
                "{} keys but {} values",
                keys.len(),
                values.len()
            )));
        }
        let dt = values.dtype();
        let default = match default {
            Some(d) if d.dtype() != dt || d.len() != 1 => {
                return Err(KernelError::Invalid(format!(
                    "default_tensor must be one {dt} element, got {}{:?}",
                    d.dtype(),
                    d.shape()
                )))
            }
            Some(d) => d.reshaped(vec![])?,
            None => match dt {
                DType::String => Tensor::from_strings(
                    vec![],
                    vec![string_attr(a, "default_string")?.unwrap_or_else(|| b"_Unused".to_vec())],
                )?,
                DType::F32 => Tensor::scalar(float_attr(a, "default_float")?.unwrap_or(-0.0)),
                DType::I64 => Tensor::scalar(int_attr(a, "default_int64")?.unwrap_or(-1)),
                // values_tensor without default_tensor: -1 for integers, -0.0 for floats.
                dt if dt.is_float() => {
                    with_float!(dt, T => Tensor::scalar(T::from_f64(-0.0)),
                        else return Err(KernelError::Unsupported(format!("{dt} values"))))
                }
                dt => with_int!(dt, T => Tensor::scalar(T::from_f64(-1.0)),
                        else return Err(KernelError::Unsupported(format!("{dt} values")))),
            },
        };
        let mut map = HashMap::with_capacity(keys.len());
        for (i, k) in keys.into_iter().enumerate() {
            map.insert(k, i);
        }
        Ok(LabelEncoder {
            map,
            values,
            default,
        })
    }
}

impl Kernel for LabelEncoder {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let keys = keys_of(x)?;
        let out = gather_elems(
            cx,
            &self.values,
            Some(&self.default),
            x.shape().to_vec(),
            keys.len(),
            |i| self.map.get(&keys[i]).copied(),
        )?;
        Ok(vec![out.into()])
    }
}

// ---------------------------------------------------------------------------------------
// ArrayFeatureExtractor

/// Selects `indices` along the last axis of `data`: output `data.shape[..-1] + [k]`
/// (`[1, k]` for 1-D data), `k` the number of indices.
struct ArrayFeatureExtractor;

impl Kernel for ArrayFeatureExtractor {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let data = tensor_input(inputs, 0)?;
        let idx = tensor_input(inputs, 1)?;
        let ds = data.shape();
        let Some(&c) = ds.last() else {
            return Err("ArrayFeatureExtractor: data must have rank >= 1".into());
        };
        let idx = idx.to_i64_vec().ok_or_else(|| {
            KernelError::Invalid(format!(
                "ArrayFeatureExtractor: indices must be integers, got {}",
                idx.dtype()
            ))
        })?;
        let idx = idx
            .into_iter()
            .map(|i| {
                usize::try_from(i).ok().filter(|&i| i < c).ok_or_else(|| {
                    KernelError::Invalid(format!(
                        "ArrayFeatureExtractor: index {i} is out of range for {c} features"
                    ))
                })
            })
            .collect::<KResult<Vec<usize>>>()?;
        let k = idx.len();
        let rows = data.len() / c.max(1);
        let shape = if ds.len() == 1 {
            vec![1, k]
        } else {
            let mut s = ds[..ds.len() - 1].to_vec();
            s.push(k);
            s
        };
        let out = gather_elems(cx, data, None, shape, rows * k, |i| {
            Some((i / k) * c + idx[i % k])
        })?;
        Ok(vec![out.into()])
    }
}

// ---------------------------------------------------------------------------------------
// Binarizer

/// `x > threshold ? 1 : 0`, in the input's type.
struct Binarizer {
    threshold: f64,
}

impl Kernel for Binarizer {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let v: Vec<f64> = to_f64s(x)?
            .into_iter()
            .map(|v| if v > self.threshold { 1.0 } else { 0.0 })
            .collect();
        Ok(vec![
            from_f64s(cx, x.dtype(), x.shape().to_vec(), &v)?.into()
        ])
    }
}

// ---------------------------------------------------------------------------------------
// TreeEnsemble

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Member,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Aggregate {
    Average,
    Sum,
    Min,
    Max,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum PostTransform {
    None,
    Softmax,
    Logistic,
}

/// Where a branch leads.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Next {
    Node(usize),
    Leaf(usize),
}

#[derive(Clone, Debug)]
struct TreeNode {
    mode: Mode,
    split: f64,
    /// The set of a `Member` node.
    members: Vec<f64>,
    feature: usize,
    missing_true: bool,
    on_true: Next,
    on_false: Next,
}

#[derive(Debug)]
struct TreeEnsemble {
    nodes: Vec<TreeNode>,
    /// (target, weight) of each leaf.
    leaves: Vec<(usize, f64)>,
    roots: Vec<Next>,
    n_targets: usize,
    aggregate: Aggregate,
    post: PostTransform,
}

impl TreeEnsemble {
    fn build(o: &Opaque) -> KResult<TreeEnsemble> {
        let a = &o.attrs;
        known_attrs(
            o,
            &[
                "aggregate_function",
                "leaf_targetids",
                "leaf_weights",
                "membership_values",
                "n_targets",
                "nodes_falseleafs",
                "nodes_falsenodeids",
                "nodes_featureids",
                "nodes_hitrates",
                "nodes_missing_value_tracks_true",
                "nodes_modes",
                "nodes_splits",
                "nodes_trueleafs",
                "nodes_truenodeids",
                "post_transform",
                "tree_roots",
            ],
        )?;
        let req_ints = |n: &str| {
            ints_attr(a, n)?.ok_or_else(|| KernelError::Invalid(format!("`{n}` is required")))
        };
        let req_tensor = |n: &str| {
            tensor_attr(a, n)?.ok_or_else(|| KernelError::Invalid(format!("`{n}` is required")))
        };
        let f64s = |t: &Tensor, n: &str| {
            t.to_f64_vec().ok_or_else(|| {
                KernelError::Invalid(format!("`{n}` must be numeric, got {}", t.dtype()))
            })
        };
        let aggregate = match int_attr(a, "aggregate_function")?.unwrap_or(1) {
            0 => Aggregate::Average,
            1 => Aggregate::Sum,
            2 => Aggregate::Min,
            3 => Aggregate::Max,
            v => return Err(KernelError::Invalid(format!("aggregate_function {v}"))),
        };
        let post = match int_attr(a, "post_transform")?.unwrap_or(0) {
            0 => PostTransform::None,
            1 => PostTransform::Softmax,
            2 => PostTransform::Logistic,
            v @ (3 | 4) => {
                return Err(KernelError::Unsupported(format!(
                    "TreeEnsemble post_transform {v} (SOFTMAX_ZERO/PROBIT)"
                )))
            }
            v => return Err(KernelError::Invalid(format!("post_transform {v}"))),
        };
        let n_targets = int_attr(a, "n_targets")?
            .ok_or("`n_targets` is required")
            .map_err(KernelError::from)?;
        let n_targets = usize::try_from(n_targets)
            .map_err(|_| KernelError::Invalid(format!("n_targets {n_targets}")))?;

        let featureids = req_ints("nodes_featureids")?;
        let modes = req_tensor("nodes_modes")?
            .to_i64_vec()
            .ok_or("`nodes_modes` must be an integer tensor")
            .map_err(KernelError::from)?;
        let splits = f64s(req_tensor("nodes_splits")?, "nodes_splits")?;
        let truenodeids = req_ints("nodes_truenodeids")?;
        let falsenodeids = req_ints("nodes_falsenodeids")?;
        let trueleafs = req_ints("nodes_trueleafs")?;
        let falseleafs = req_ints("nodes_falseleafs")?;
        let missing = ints_attr(a, "nodes_missing_value_tracks_true")?;
        let n = featureids.len();
        let lens = [
            modes.len(),
            splits.len(),
            truenodeids.len(),
            falsenodeids.len(),
            trueleafs.len(),
            falseleafs.len(),
            missing.as_ref().map_or(n, |m| m.len()),
        ];
        if lens.iter().any(|&l| l != n) {
            return Err(KernelError::Invalid(format!(
                "the nodes_* attributes must have one length, got {n} and {lens:?}"
            )));
        }
        let leaf_targets = req_ints("leaf_targetids")?;
        let leaf_weights = f64s(req_tensor("leaf_weights")?, "leaf_weights")?;
        if leaf_targets.len() != leaf_weights.len() {
            return Err(KernelError::Invalid(format!(
                "{} leaf_targetids but {} leaf_weights",
                leaf_targets.len(),
                leaf_weights.len()
            )));
        }
        let leaves = leaf_targets
            .iter()
            .zip(&leaf_weights)
            .map(|(&t, &w)| match usize::try_from(t) {
                Ok(t) if t < n_targets => Ok((t, w)),
                _ => Err(KernelError::Invalid(format!(
                    "leaf target {t} is out of range for {n_targets} targets"
                ))),
            })
            .collect::<KResult<Vec<_>>>()?;
        let next = |id: i64, leaf: i64| -> KResult<Next> {
            let bad = || KernelError::Invalid(format!("branch to {id} is out of range"));
            let i = usize::try_from(id).map_err(|_| bad())?;
            if leaf != 0 {
                (i < leaves.len()).then_some(Next::Leaf(i)).ok_or_else(bad)
            } else {
                (i < n).then_some(Next::Node(i)).ok_or_else(bad)
            }
        };
        // The members of each BRANCH_MEMBER node, in node order, NaN-delimited.
        let members = match tensor_attr(a, "membership_values")? {
            Some(t) => f64s(t, "membership_values")?,
            None => Vec::new(),
        };
        let mut sets = members.split(|v| v.is_nan());
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mode = match modes[i] {
                0 => Mode::Leq,
                1 => Mode::Lt,
                2 => Mode::Gte,
                3 => Mode::Gt,
                4 => Mode::Eq,
                5 => Mode::Neq,
                6 => Mode::Member,
                m => return Err(KernelError::Invalid(format!("node mode {m}"))),
            };
            let members = if mode == Mode::Member {
                sets.next()
                    .ok_or("too few membership_values sets for the BRANCH_MEMBER nodes")
                    .map_err(KernelError::from)?
                    .to_vec()
            } else {
                Vec::new()
            };
            nodes.push(TreeNode {
                mode,
                split: splits[i],
                members,
                feature: usize::try_from(featureids[i])
                    .map_err(|_| KernelError::Invalid(format!("feature id {}", featureids[i])))?,
                missing_true: missing.as_ref().is_some_and(|m| m[i] != 0),
                on_true: next(truenodeids[i], trueleafs[i])?,
                on_false: next(falsenodeids[i], falseleafs[i])?,
            });
        }
        let roots = req_ints("tree_roots")?
            .into_iter()
            .map(|r| {
                let i = usize::try_from(r)
                    .ok()
                    .filter(|&i| i < n)
                    .ok_or_else(|| KernelError::Invalid(format!("tree root {r}")))?;
                let nd = &nodes[i];
                // A tree that is a single leaf: both branches lead to the same leaf.
                Ok(match (nd.on_true, nd.on_false) {
                    (Next::Leaf(t), Next::Leaf(f)) if t == f => Next::Leaf(t),
                    _ => Next::Node(i),
                })
            })
            .collect::<KResult<Vec<_>>>()?;
        Ok(TreeEnsemble {
            nodes,
            leaves,
            roots,
            n_targets,
            aggregate,
            post,
        })
    }

    /// The leaf row `x` reaches from `root`.
    fn leaf(&self, mut at: Next, x: &[f64]) -> KResult<usize> {
        // A well-formed tree reaches a leaf in at most `nodes` steps; more is a cycle.
        for _ in 0..=self.nodes.len() {
            let i = match at {
                Next::Leaf(l) => return Ok(l),
                Next::Node(i) => i,
            };
            let nd = &self.nodes[i];
            let v = *x.get(nd.feature).ok_or_else(|| {
                KernelError::Invalid(format!(
                    "feature {} is out of range for {} features",
                    nd.feature,
                    x.len()
                ))
            })?;
            let s = nd.split;
            let hit = (nd.missing_true && v.is_nan())
                || match nd.mode {
                    Mode::Leq => v <= s,
                    Mode::Lt => v < s,
                    Mode::Gte => v >= s,
                    Mode::Gt => v > s,
                    Mode::Eq => v == s,
                    Mode::Neq => v != s,
                    Mode::Member => nd.members.contains(&v),
                };
            at = if hit { nd.on_true } else { nd.on_false };
        }
        Err("TreeEnsemble: the tree has a cycle".into())
    }
}

impl Kernel for TreeEnsemble {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let dt = x.dtype();
        if !dt.is_float() {
            return Err(KernelError::Unsupported(format!(
                "TreeEnsemble of {dt} input"
            )));
        }
        let (rows, cols) = match *x.shape() {
            [n, f] => (n, f),
            [f] => (1, f),
            ref s => {
                return Err(KernelError::Invalid(format!(
                    "TreeEnsemble: input must be [N, F], got {s:?}"
                )))
            }
        };
        let xv = to_f64s(x)?;
        let nt = self.n_targets;
        // MIN/MAX start from the largest/smallest finite value of the input type.
        let big = with_float!(dt, T => T::MAX.to_f64(), else f64::MAX);
        let init = match self.aggregate {
            Aggregate::Average | Aggregate::Sum => 0.0,
            Aggregate::Min => big,
            Aggregate::Max => -big,
        };
        let mut out = vec![init; rows * nt];
        let n_trees = self.roots.len() as f64;
        for r in 0..rows {
            let row = &xv[r * cols..(r + 1) * cols];
            let o = &mut out[r * nt..(r + 1) * nt];
            for &root in &self.roots {
                let (t, w) = self.leaves[self.leaf(root, row)?];
                match self.aggregate {
                    Aggregate::Sum => o[t] += w,
                    Aggregate::Average => o[t] += w / n_trees,
                    Aggregate::Min => o[t] = o[t].min(w),
                    Aggregate::Max => o[t] = o[t].max(w),
                }
            }
            match self.post {
                PostTransform::None => {}
                PostTransform::Logistic => {
                    o.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()))
                }
                PostTransform::Softmax => {
                    let m = o.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let s: f64 = o.iter().map(|v| (v - m).exp()).sum();
                    o.iter_mut().for_each(|v| *v = (*v - m).exp() / s);
                }
            }
        }
        Ok(vec![from_f64s(cx, dt, vec![rows, nt], &out)?.into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opaque(op: &str, attrs: Vec<(&str, Attr)>) -> Opaque {
        Opaque {
            domain: ML_DOMAIN.into(),
            op_type: op.into(),
            version: 5,
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    fn run1(k: &dyn Kernel, inputs: Vec<Tensor>) -> Tensor {
        crate::kernels::elementwise::testutil::run_kernel(k, &inputs)
    }

    fn strs(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn label_encoder_int_to_string_with_default() {
        let k = LabelEncoder::build(&opaque(
            "LabelEncoder",
            vec![
                ("keys_int64s", Attr::Ints(vec![1, 2, 3])),
                (
                    "values_strings",
                    Attr::Strings(strs(&["one", "two", "three"])),
                ),
            ],
        ))
        .unwrap();
        let x = Tensor::from_vec(vec![2, 2], vec![3i64, 7, 1, 2]).unwrap();
        let y = run1(&k, vec![x]);
        assert_eq!(y.shape(), &[2, 2]);
        assert_eq!(
            y.strings().unwrap(),
            strs(&["three", "_Unused", "one", "two"])
        );
    }

    #[test]
    fn label_encoder_float_keys_nan_and_negative_zero() {
        let k = LabelEncoder::build(&opaque(
            "LabelEncoder",
            vec![
                ("keys_floats", Attr::Floats(vec![f32::NAN, 0.0, 2.5])),
                ("values_int64s", Attr::Ints(vec![10, 20, 30])),
                ("default_int64", Attr::Int(-7)),
            ],
        ))
        .unwrap();
        let x = Tensor::from_vec(vec![4], vec![f32::NAN, -0.0, 2.5, 1.0]).unwrap();
        assert_eq!(
            run1(&k, vec![x]).to_vec::<i64>().unwrap(),
            vec![10, 20, 30, -7]
        );
    }

    #[test]
    fn label_encoder_tensor_values_default_is_minus_one() {
        let vals = Tensor::from_vec(vec![2], vec![5i16, 6]).unwrap();
        let k = LabelEncoder::build(&opaque(
            "LabelEncoder",
            vec![
                ("keys_strings", Attr::Strings(strs(&["a", "b"]))),
                ("values_tensor", Attr::Tensor(vals)),
            ],
        ))
        .unwrap();
        let x = Tensor::from_strings(vec![3], strs(&["b", "z", "a"])).unwrap();
        assert_eq!(run1(&k, vec![x]).to_vec::<i16>().unwrap(), vec![6, -1, 5]);
    }

    #[test]
    fn label_encoder_needs_one_keys_attribute() {
        let r = LabelEncoder::build(&opaque(
            "LabelEncoder",
            vec![("values_int64s", Attr::Ints(vec![1]))],
        ));
        assert!(r.is_err());
    }

    #[test]
    fn array_feature_extractor_1d_and_bounds() {
        let x = Tensor::from_vec(vec![4], vec![10i32, 11, 12, 13]).unwrap();
        let i = Tensor::from_vec(vec![2], vec![3i64, 0]).unwrap();
        let y = run1(&ArrayFeatureExtractor, vec![x.clone(), i]);
        assert_eq!(y.shape(), &[1, 2]);
        assert_eq!(y.to_vec::<i32>().unwrap(), vec![13, 10]);
        let bad = Value::Tensor(Tensor::from_vec(vec![1], vec![4i64]).unwrap());
        let xv = Value::Tensor(x);
        assert!(ArrayFeatureExtractor
            .run(&[Some(&xv), Some(&bad)], &mut RunCx::new())
            .is_err());
    }

    #[test]
    fn binarizer_is_strictly_greater() {
        let k = Binarizer { threshold: 0.5 };
        let x = Tensor::from_vec(vec![4], vec![0.5f64, 0.6, -1.0, f64::NAN]).unwrap();
        assert_eq!(
            run1(&k, vec![x]).to_vec::<f64>().unwrap(),
            vec![0.0, 1.0, 0.0, 0.0]
        );
    }

    /// Two trees over one feature: tree A (x <= 1 ? leaf0 : member {5, 6} ? leaf1 : leaf2)
    /// and tree B (a single node x > 0 ? leaf3 : leaf4).
    fn two_trees(aggregate: i64, post: i64) -> TreeEnsemble {
        let f64t = |v: Vec<f64>| Attr::Tensor(vec_tensor(v).unwrap());
        TreeEnsemble::build(&opaque(
            "TreeEnsemble",
            vec![
                ("aggregate_function", Attr::Int(aggregate)),
                ("post_transform", Attr::Int(post)),
                ("n_targets", Attr::Int(2)),
                ("tree_roots", Attr::Ints(vec![0, 2])),
                ("nodes_featureids", Attr::Ints(vec![0, 0, 0])),
                (
                    "nodes_modes",
                    Attr::Tensor(vec_tensor(vec![0u8, 6, 3]).unwrap()),
                ),
                ("nodes_splits", f64t(vec![1.0, 0.0, 0.0])),
                ("membership_values", f64t(vec![5.0, 6.0, f64::NAN])),
                ("nodes_truenodeids", Attr::Ints(vec![0, 1, 3])),
                ("nodes_trueleafs", Attr::Ints(vec![1, 1, 1])),
                ("nodes_falsenodeids", Attr::Ints(vec![1, 2, 4])),
                ("nodes_falseleafs", Attr::Ints(vec![0, 1, 1])),
                ("leaf_targetids", Attr::Ints(vec![0, 0, 1, 1, 0])),
                ("leaf_weights", f64t(vec![1.0, 2.0, 4.0, 8.0, 16.0])),
            ],
        ))
        .unwrap()
    }

    #[test]
    fn tree_ensemble_sum_average_min_max() {
        // x = 0.5: A -> leaf0 (t0, 1); B -> leaf3 (t1, 8).
        // x = 5:   A -> leaf1 (t0, 2); B -> leaf3 (t1, 8).
        // x = 7:   A -> leaf2 (t1, 4); B -> leaf3 (t1, 8).
        // x = -1:  A -> leaf0 (t0, 1); B -> leaf4 (t0, 16).
        let x = || Tensor::from_vec(vec![4, 1], vec![0.5f64, 5.0, 7.0, -1.0]).unwrap();
        let sum = run1(&two_trees(1, 0), vec![x()]).to_vec::<f64>().unwrap();
        assert_eq!(sum, vec![1.0, 8.0, 2.0, 8.0, 0.0, 12.0, 17.0, 0.0]);
        let avg = run1(&two_trees(0, 0), vec![x()]).to_vec::<f64>().unwrap();
        assert_eq!(avg, vec![0.5, 4.0, 1.0, 4.0, 0.0, 6.0, 8.5, 0.0]);
        let min = run1(&two_trees(2, 0), vec![x()]).to_vec::<f64>().unwrap();
        assert_eq!(min[4..6], [f64::MAX, 4.0]);
        assert_eq!(min[6], 1.0);
        let max = run1(&two_trees(3, 0), vec![x()]).to_vec::<f64>().unwrap();
        assert_eq!(max[6..8], [16.0, -f64::MAX]);
        // Logistic of the sums: 1 / (1 + e^-v).
        let lg = run1(&two_trees(1, 2), vec![x()]).to_vec::<f64>().unwrap();
        assert!((lg[0] - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-12);
        assert!((lg[4] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn tree_ensemble_rejects_bad_branch_and_cycle() {
        let mut k = two_trees(1, 0);
        // A cycle: node 0's false branch back to itself.
        k.nodes[0].on_false = Next::Node(0);
        k.nodes[0].on_true = Next::Node(0);
        let xv = Value::Tensor(Tensor::from_vec(vec![1, 1], vec![0.5f64]).unwrap());
        assert!(k.run(&[Some(&xv)], &mut RunCx::new()).is_err());
        // A feature index beyond the row.
        let mut k = two_trees(1, 0);
        k.nodes[0].feature = 3;
        assert!(k.run(&[Some(&xv)], &mut RunCx::new()).is_err());
    }
}
