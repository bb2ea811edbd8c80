//! Unit tests of the shape kernels: hand-computed cases for the tricky semantics, and random
//! layouts checked against numpy (the venv's python) when it is available.

use std::sync::Arc;

use kiln_ir::op;
use kiln_ir::{AlignedBuf, DType, Graph, Op, Storage, Tensor};

use super::layout::{reshape_shape, slice_range};
use crate::kernel::{BuildCx, RunCx};
use crate::value::Value;

fn try_run_n(
    op: Op,
    inputs: &[Option<Tensor>],
    n_out: usize,
) -> Result<Vec<Tensor>, crate::KernelError> {
    let g = Graph::new("t");
    let bcx = BuildCx {
        input_types: vec![None; inputs.len()],
        const_inputs: vec![None; inputs.len()],
        output_types: vec![None; n_out],
        graph: &g,
    };
    let k = super::build(&op, &bcx).expect("a shape op")?;
    let vals: Vec<Option<Value>> = inputs
        .iter()
        .map(|t| t.clone().map(Value::Tensor))
        .collect();
    let refs: Vec<Option<&Value>> = vals.iter().map(|v| v.as_ref()).collect();
    let outs = k.run(&refs, &mut RunCx::new())?;
    Ok(outs
        .into_iter()
        .map(|v| v.into_tensor().expect("tensor output"))
        .collect())
}

fn run_n(op: Op, inputs: &[Option<Tensor>], n_out: usize) -> Vec<Tensor> {
    try_run_n(op, inputs, n_out).unwrap()
}

fn run(op: Op, inputs: &[Option<Tensor>]) -> Tensor {
    run_n(op, inputs, 1).remove(0)
}

fn try_run(op: Op, inputs: &[Option<Tensor>]) -> Result<Tensor, crate::KernelError> {
    try_run_n(op, inputs, 1).map(|mut v| v.remove(0))
}

fn f32s(shape: &[usize], v: &[f32]) -> Option<Tensor> {
    Some(Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap())
}

fn i64s(shape: &[usize], v: &[i64]) -> Option<Tensor> {
    Some(Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap())
}

fn i64v(v: &[i64]) -> Option<Tensor> {
    i64s(&[v.len()], v)
}

fn strs(shape: &[usize], v: &[&str]) -> Option<Tensor> {
    Some(
        Tensor::from_strings(
            shape.to_vec(),
            v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        )
        .unwrap(),
    )
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

fn check(t: &Tensor, shape: &[usize], v: &[f64]) {
    assert_eq!(t.shape(), shape, "shape of {t:?}");
    let got = vals(t);
    assert_eq!(got.len(), v.len());
    for (g, w) in got.iter().zip(v) {
        assert!(
            g == w || (g.is_nan() && w.is_nan()),
            "got {got:?}, want {v:?}"
        );
    }
}

fn string_vals(t: &Tensor) -> Vec<String> {
    t.strings()
        .unwrap()
        .iter()
        .map(|s| String::from_utf8(s.clone()).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Hand-computed cases.

#[test]
fn reshape_zero_minus_one_and_allowzero() {
    assert_eq!(
        reshape_shape(&[2, 3, 4], &[0, -1], false).unwrap(),
        vec![2, 12]
    );
    assert_eq!(
        reshape_shape(&[2, 3, 4], &[-1, 0, 2], false).unwrap(),
        vec![4, 3, 2]
    );
    assert_eq!(reshape_shape(&[0, 3], &[3, 0], true).unwrap(), vec![3, 0]);
    // Without allowzero, 0 copies the input dim: [0,3] -> [3, 0] means [3, 3]: mismatch.
    assert!(reshape_shape(&[0, 3], &[3, 0], false).is_err());
    assert!(reshape_shape(&[2, 3], &[-1, -1], false).is_err());
    assert!(reshape_shape(&[2, 3], &[0, -1], true).is_err());
    assert!(reshape_shape(&[2, 3], &[4, -1], false).is_err());
    let y = run(
        Op::Reshape(op::Reshape { allowzero: false }),
        &[f32s(&[2, 3], &[1., 2., 3., 4., 5., 6.]), i64v(&[3, -1])],
    );
    check(&y, &[3, 2], &[1., 2., 3., 4., 5., 6.]);
}

#[test]
fn slice_ranges_follow_the_spec() {
    assert_eq!(slice_range(10, 0, i64::MAX, 1), (0, 10));
    assert_eq!(slice_range(10, -1, i64::MIN, -1), (9, 10));
    // Start clamps to 9, end to -1: 9, 6, 3, 0.
    assert_eq!(slice_range(10, 20, -100, -3), (9, 4));
    assert_eq!(slice_range(10, -3, -1, 1), (7, 2));
    assert_eq!(slice_range(10, 5, 2, 1), (0, 0));
    assert_eq!(slice_range(0, 0, -1, -1), (0, 0));
    assert_eq!(slice_range(4, i64::MAX, i64::MIN, i64::MIN), (3, 1));
    assert_eq!(slice_range(4, 0, i64::MAX, i64::MAX), (0, 1));
    let x = f32s(&[3, 4], &(0..12).map(|v| v as f32).collect::<Vec<_>>());
    // Rows reversed, every second column from the end.
    let y = run(
        Op::Slice(op::Slice {}),
        &[
            x,
            i64v(&[-1, -1]),
            i64v(&[i64::MIN, -5]),
            i64v(&[0, -1]),
            i64v(&[-1, -2]),
        ],
    );
    check(&y, &[3, 2], &[11., 9., 7., 5., 3., 1.]);
}

#[test]
fn pad_modes_and_negative_pads() {
    let x = f32s(&[3], &[1., 2., 3.]);
    let pad = |mode: &str, pads: &[i64]| {
        run(
            Op::Pad(op::Pad { mode: mode.into() }),
            &[x.clone(), i64v(pads)],
        )
    };
    check(
        &pad("reflect", &[2, 2]),
        &[7],
        &[3., 2., 1., 2., 3., 2., 1.],
    );
    check(
        &pad("reflect", &[4, 0]),
        &[7],
        &[1., 2., 3., 2., 1., 2., 3.],
    );
    check(&pad("edge", &[2, 1]), &[6], &[1., 1., 1., 2., 3., 3.]);
    check(
        &pad("wrap", &[2, 4]),
        &[9],
        &[2., 3., 1., 2., 3., 1., 2., 3., 1.],
    );
    check(&pad("constant", &[1, -2]), &[2], &[0., 1.]);
    // Negative pads crop before edge padding: [2,3,4] then two copies of the edge.
    let y = run(
        Op::Pad(op::Pad {
            mode: "edge".into(),
        }),
        &[f32s(&[4], &[1., 2., 3., 4.]), i64v(&[-1, 2])],
    );
    check(&y, &[5], &[2., 3., 4., 4., 4.]);
    // 2-D constant with a value and a crop of the first column.
    let x2 = f32s(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let y = run(
        Op::Pad(op::Pad {
            mode: "constant".into(),
        }),
        &[x2.clone(), i64v(&[1, -1, 0, 1]), f32s(&[], &[9.])],
    );
    check(&y, &[3, 3], &[9., 9., 9., 2., 3., 9., 5., 6., 9.]);
    // Axes input, negative.
    let y = run(
        Op::Pad(op::Pad {
            mode: "constant".into(),
        }),
        &[
            f32s(&[2, 2], &[1., 2., 3., 4.]),
            i64v(&[1, 1]),
            None,
            i64v(&[-1]),
        ],
    );
    check(&y, &[2, 4], &[0., 1., 2., 0., 0., 3., 4., 0.]);
    // Padding an empty dim by reflection is an error; cropping below zero too.
    assert!(try_run(
        Op::Pad(op::Pad {
            mode: "reflect".into()
        }),
        &[f32s(&[0], &[]), i64v(&[1, 0])]
    )
    .is_err());
    assert!(try_run(
        Op::Pad(op::Pad {
            mode: "constant".into()
        }),
        &[x, i64v(&[-2, -2])]
    )
    .is_err());
}

#[test]
fn split_uneven_zero_and_by_output_count() {
    let x = f32s(&[7], &[1., 2., 3., 4., 5., 6., 7.]);
    let outs = run_n(
        Op::Split(op::Split {
            axis: 0,
            num_outputs: Some(3),
        }),
        std::slice::from_ref(&x),
        3,
    );
    let shapes: Vec<_> = outs.iter().map(|t| t.shape()[0]).collect();
    assert_eq!(shapes, [3, 3, 1]);
    check(&outs[2], &[1], &[7.]);
    let outs = run_n(
        Op::Split(op::Split {
            axis: -1,
            num_outputs: None,
        }),
        std::slice::from_ref(&x),
        2,
    );
    check(&outs[0], &[4], &[1., 2., 3., 4.]);
    check(&outs[1], &[3], &[5., 6., 7.]);
    let outs = run_n(
        Op::Split(op::Split {
            axis: 0,
            num_outputs: None,
        }),
        &[x.clone(), i64v(&[2, 0, 5])],
        3,
    );
    check(&outs[1], &[0], &[]);
    check(&outs[2], &[5], &[3., 4., 5., 6., 7.]);
    assert!(try_run_n(
        Op::Split(op::Split {
            axis: 0,
            num_outputs: None
        }),
        &[x, i64v(&[2, 2])],
        2
    )
    .is_err());
    // 2-D along axis 1.
    let outs = run_n(
        Op::Split(op::Split {
            axis: 1,
            num_outputs: None,
        }),
        &[f32s(&[2, 3], &[1., 2., 3., 4., 5., 6.]), i64v(&[1, 2])],
        2,
    );
    check(&outs[0], &[2, 1], &[1., 4.]);
    check(&outs[1], &[2, 2], &[2., 3., 5., 6.]);
}

#[test]
fn gathers() {
    let x = f32s(&[3, 2], &[1., 2., 3., 4., 5., 6.]);
    let y = run(
        Op::Gather(op::Gather { axis: 0 }),
        &[x.clone(), i64s(&[1, 2], &[-1, 0])],
    );
    check(&y, &[1, 2, 2], &[5., 6., 1., 2.]);
    let idx32 = Some(Tensor::scalar(-1i32));
    let y = run(Op::Gather(op::Gather { axis: 1 }), &[x.clone(), idx32]);
    check(&y, &[3], &[2., 4., 6.]);
    assert!(try_run(Op::Gather(op::Gather { axis: 0 }), &[x.clone(), i64v(&[3])]).is_err());
    let y = run(Op::Gather(op::Gather { axis: 0 }), &[x.clone(), i64v(&[])]);
    check(&y, &[0, 2], &[]);
    // GatherElements, axis 1 with a negative index.
    let y = run(
        Op::GatherElements(op::GatherElements { axis: 1 }),
        &[x.clone(), i64s(&[3, 1], &[1, -2, -1])],
    );
    check(&y, &[3, 1], &[2., 3., 6.]);
    // GatherND with batch_dims = 1 (the spec's example 5).
    let d = f32s(&[2, 2, 2], &[0., 1., 2., 3., 4., 5., 6., 7.]);
    let y = run(
        Op::GatherND(op::GatherND { batch_dims: 1 }),
        &[d.clone(), i64s(&[2, 1], &[1, 0])],
    );
    check(&y, &[2, 2], &[2., 3., 4., 5.]);
    let y = run(
        Op::GatherND(op::GatherND { batch_dims: 0 }),
        &[d, i64s(&[2, 3], &[0, 1, 1, 1, -1, 0])],
    );
    check(&y, &[2], &[3., 6.]);
}

#[test]
fn scatters_with_reductions() {
    let data = f32s(&[4], &[1., 2., 3., 4.]);
    let idx = i64s(&[3, 1], &[1, 1, 3]);
    let upd = f32s(&[3], &[10., 20., 30.]);
    let nd = |r: &str, u: &Option<Tensor>| {
        run(
            Op::ScatterND(op::ScatterND {
                reduction: r.into(),
            }),
            &[data.clone(), idx.clone(), u.clone()],
        )
    };
    check(&nd("add", &upd), &[4], &[1., 32., 3., 34.]);
    check(&nd("mul", &upd), &[4], &[1., 400., 3., 120.]);
    check(&nd("max", &upd), &[4], &[1., 20., 3., 30.]);
    check(
        &nd("min", &f32s(&[3], &[0., -5., 9.])),
        &[4],
        &[1., -5., 3., 4.],
    );
    // Integer add wraps rather than panicking.
    let y = run(
        Op::ScatterND(op::ScatterND {
            reduction: "add".into(),
        }),
        &[
            Some(Tensor::from_vec(vec![2], vec![i8::MAX, 0]).unwrap()),
            i64s(&[1, 1], &[0]),
            Some(Tensor::from_vec(vec![1], vec![1i8]).unwrap()),
        ],
    );
    check(&y, &[2], &[-128., 0.]);
    // ScatterElements: the spec's example with a negative index.
    let y = run(
        Op::ScatterElements(op::ScatterElements {
            axis: 1,
            reduction: "none".into(),
        }),
        &[
            f32s(&[1, 5], &[1., 2., 3., 4., 5.]),
            i64s(&[1, 2], &[1, -2]),
            f32s(&[1, 2], &[1.5, 2.5]),
        ],
    );
    check(&y, &[1, 5], &[1., 1.5, 3., 2.5, 5.]);
    let y = run(
        Op::ScatterElements(op::ScatterElements {
            axis: 0,
            reduction: "add".into(),
        }),
        &[
            f32s(&[2, 2], &[0., 0., 0., 0.]),
            i64s(&[2, 2], &[1, 1, 1, 0]),
            f32s(&[2, 2], &[1., 2., 3., 4.]),
        ],
    );
    check(&y, &[2, 2], &[0., 4., 4., 2.]);
}

#[test]
fn tensor_scatter_linear_and_circular() {
    let cache = f32s(&[2, 4, 1], &[0.; 8]);
    let upd = f32s(&[2, 2, 1], &[1., 2., 3., 4.]);
    let circ = Op::TensorScatter(op::TensorScatter {
        axis: -2,
        mode: "circular".into(),
    });
    let y = run(circ, &[cache.clone(), upd.clone(), i64v(&[3, 1])]);
    check(&y, &[2, 4, 1], &[2., 0., 0., 1., 0., 3., 4., 0.]);
    let lin = || {
        Op::TensorScatter(op::TensorScatter {
            axis: -2,
            mode: "linear".into(),
        })
    };
    assert!(try_run(lin(), &[cache.clone(), upd.clone(), i64v(&[3, 1])]).is_err());
    let y = run(lin(), &[cache, upd, None]);
    check(&y, &[2, 4, 1], &[1., 2., 0., 0., 3., 4., 0., 0.]);
}

#[test]
fn unique_sorted_unsorted_axis_and_nan() {
    let x = f32s(&[6], &[2., 1., 1., 3., 4., 3.]);
    let o = run_n(
        Op::Unique(op::Unique {
            axis: None,
            sorted: false,
        }),
        std::slice::from_ref(&x),
        4,
    );
    check(&o[0], &[4], &[2., 1., 3., 4.]);
    check(&o[1], &[4], &[0., 1., 3., 4.]);
    check(&o[2], &[6], &[0., 1., 1., 2., 3., 2.]);
    check(&o[3], &[4], &[1., 2., 2., 1.]);
    let o = run_n(
        Op::Unique(op::Unique {
            axis: None,
            sorted: true,
        }),
        &[x],
        4,
    );
    check(&o[0], &[4], &[1., 2., 3., 4.]);
    check(&o[1], &[4], &[1., 0., 3., 4.]);
    check(&o[2], &[6], &[1., 0., 0., 2., 3., 2.]);
    check(&o[3], &[4], &[2., 1., 2., 1.]);
    let x = f32s(&[3, 3], &[1., 0., 0., 1., 0., 0., 2., 3., 4.]);
    let o = run_n(
        Op::Unique(op::Unique {
            axis: Some(0),
            sorted: true,
        }),
        &[x],
        4,
    );
    check(&o[0], &[2, 3], &[1., 0., 0., 2., 3., 4.]);
    check(&o[2], &[3], &[0., 0., 1.]);
    let o = run_n(
        Op::Unique(op::Unique {
            axis: None,
            sorted: true,
        }),
        &[f32s(&[3], &[f32::NAN, 1., f32::NAN])],
        4,
    );
    check(&o[0], &[2], &[1., f64::NAN]);
    check(&o[3], &[2], &[1., 2.]);
    // Only Y when the node has one output.
    assert_eq!(
        run_n(
            Op::Unique(op::Unique {
                axis: None,
                sorted: true
            }),
            &[i64v(&[3, 3])],
            1
        )
        .len(),
        1
    );
}

#[test]
fn one_hot_negative_and_out_of_range() {
    let depth = Some(Tensor::scalar(3.0f32));
    let values = f32s(&[2], &[-1., 5.]);
    let y = run(
        Op::OneHot(op::OneHot { axis: -1 }),
        &[i64v(&[-1, 0, 5, 2]), depth.clone(), values.clone()],
    );
    check(
        &y,
        &[4, 3],
        &[-1., -1., 5., 5., -1., -1., -1., -1., -1., -1., -1., 5.],
    );
    let y = run(
        Op::OneHot(op::OneHot { axis: 0 }),
        &[i64v(&[1, -3]), depth, values],
    );
    check(&y, &[3, 2], &[-1., 5., 5., -1., -1., -1.]);
}

#[test]
fn trilu_reverse_sequence_compress_center_crop_pad() {
    let x = f32s(&[3, 4], &(1..=12).map(|v| v as f32).collect::<Vec<_>>());
    let y = run(
        Op::Trilu(op::Trilu { upper: true }),
        &[x.clone(), Some(Tensor::scalar(1i64))],
    );
    check(
        &y,
        &[3, 4],
        &[0., 2., 3., 4., 0., 0., 7., 8., 0., 0., 0., 12.],
    );
    let y = run(
        Op::Trilu(op::Trilu { upper: false }),
        &[x.clone(), Some(Tensor::scalar(-1i64))],
    );
    check(
        &y,
        &[3, 4],
        &[0., 0., 0., 0., 5., 0., 0., 0., 9., 10., 0., 0.],
    );
    // The spec's ReverseSequence example (time_axis 0, batch_axis 1).
    let x = f32s(&[4, 4], &(0..16).map(|v| v as f32).collect::<Vec<_>>());
    let y = run(
        Op::ReverseSequence(op::ReverseSequence {
            batch_axis: 1,
            time_axis: 0,
        }),
        &[x, i64v(&[4, 3, 2, 1])],
    );
    check(
        &y,
        &[4, 4],
        &[
            12., 9., 6., 3., 8., 5., 2., 7., 4., 1., 10., 11., 0., 13., 14., 15.,
        ],
    );
    let c = Some(Tensor::from_bools(vec![3], &[false, true, true]).unwrap());
    let y = run(
        Op::Compress(op::Compress { axis: None }),
        &[f32s(&[2, 2], &[1., 2., 3., 4.]), c.clone()],
    );
    check(&y, &[2], &[2., 3.]);
    let y = run(
        Op::Compress(op::Compress { axis: Some(-1) }),
        &[f32s(&[2, 3], &[1., 2., 3., 4., 5., 6.]), c],
    );
    check(&y, &[2, 2], &[2., 3., 5., 6.]);
    let y = run(
        Op::CenterCropPad(op::CenterCropPad {
            axes: Some(vec![1]),
        }),
        &[f32s(&[1, 5], &[1., 2., 3., 4., 5.]), i64v(&[3])],
    );
    check(&y, &[1, 3], &[2., 3., 4.]);
    let y = run(
        Op::CenterCropPad(op::CenterCropPad { axes: None }),
        &[f32s(&[2], &[1., 2.]), i64v(&[5])],
    );
    check(&y, &[5], &[0., 1., 2., 0., 0.]);
}

#[test]
fn generators() {
    let sh = Some(Tensor::zeros(DType::F32, vec![2, 3, 4, 5]).unwrap());
    let y = run(
        Op::Shape(op::Shape {
            start: -3,
            end: Some(-1),
        }),
        std::slice::from_ref(&sh),
    );
    check(&y, &[2], &[3., 4.]);
    let y = run(
        Op::Shape(op::Shape {
            start: 5,
            end: None,
        }),
        std::slice::from_ref(&sh),
    );
    check(&y, &[0], &[]);
    check(&run(Op::Size(op::Size {}), &[sh]), &[], &[120.]);
    let r = |a: Tensor, b: Tensor, c: Tensor| {
        run(
            Op::Range(op::Range { stash_type: 1 }),
            &[Some(a), Some(b), Some(c)],
        )
    };
    check(
        &r(
            Tensor::scalar(10i32),
            Tensor::scalar(4i32),
            Tensor::scalar(-3i32),
        ),
        &[2],
        &[10., 7.],
    );
    check(
        &r(
            Tensor::scalar(1f32),
            Tensor::scalar(5.5f32),
            Tensor::scalar(1.5f32),
        ),
        &[3],
        &[1., 2.5, 4.],
    );
    check(
        &r(
            Tensor::scalar(0i64),
            Tensor::scalar(0i64),
            Tensor::scalar(1i64),
        ),
        &[0],
        &[],
    );
    let h = |v: f32| Tensor::scalar(half::f16::from_f32(v));
    let y = r(h(0.), h(1.), h(0.25));
    assert_eq!(y.dtype(), DType::F16);
    check(&y, &[4], &[0., 0.25, 0.5, 0.75]);
    let y = run(
        Op::EyeLike(op::EyeLike {
            dtype: Some(11),
            k: 1,
        }),
        &[Some(Tensor::zeros(DType::I32, vec![3, 4]).unwrap())],
    );
    assert_eq!(y.dtype(), DType::F64);
    check(
        &y,
        &[3, 4],
        &[0., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1.],
    );
    let y = run(
        Op::EyeLike(op::EyeLike { dtype: None, k: -2 }),
        &[Some(Tensor::zeros(DType::Bool, vec![3, 2]).unwrap())],
    );
    assert_eq!(y.bytes(), &[0, 0, 0, 0, 1, 0]);
    let y = run(
        Op::ConstantOfShape(op::ConstantOfShape {
            value: Some(Tensor::from_vec(vec![1], vec![7i32]).unwrap()),
        }),
        &[i64v(&[2, 1])],
    );
    assert_eq!(y.dtype(), DType::I32);
    check(&y, &[2, 1], &[7., 7.]);
    let y = run(
        Op::ConstantOfShape(op::ConstantOfShape { value: None }),
        &[i64v(&[])],
    );
    assert_eq!(y.dtype(), DType::F32);
    check(&y, &[], &[0.]);
    let y = run(
        Op::BitCast(op::BitCast { to: DType::I32 }),
        &[f32s(&[2], &[1., -0.])],
    );
    check(&y, &[2], &[1065353216., i32::MIN as f64]);
    let y = run(
        Op::NonZero(op::NonZero {}),
        &[f32s(&[3, 2], &[1., 0., 0., -0., f32::NAN, 2.])],
    );
    check(&y, &[2, 3], &[0., 2., 2., 0., 0., 1.]);
}

#[test]
fn strings_move_like_any_element() {
    let x = strs(&[2, 2], &["a", "b", "c", "d"]);
    let y = run(
        Op::Transpose(op::Transpose { perm: None }),
        std::slice::from_ref(&x),
    );
    assert_eq!(string_vals(&y), ["a", "c", "b", "d"]);
    let y = run(
        Op::Concat(op::Concat { axis: 1 }),
        &[x.clone(), strs(&[2, 1], &["e", "f"])],
    );
    assert_eq!(y.shape(), [2, 3]);
    assert_eq!(string_vals(&y), ["a", "b", "e", "c", "d", "f"]);
    let y = run(
        Op::Gather(op::Gather { axis: 0 }),
        &[x.clone(), i64v(&[1, 1])],
    );
    assert_eq!(string_vals(&y), ["c", "d", "c", "d"]);
    let y = run(
        Op::Pad(op::Pad {
            mode: "constant".into(),
        }),
        &[strs(&[1], &["x"]), i64v(&[1, 0]), strs(&[], &["pad"])],
    );
    assert_eq!(string_vals(&y), ["pad", "x"]);
    let o = run_n(
        Op::Unique(op::Unique {
            axis: None,
            sorted: true,
        }),
        &[strs(&[3], &["b", "a", "b"])],
        4,
    );
    assert_eq!(string_vals(&o[0]), ["a", "b"]);
}

#[test]
fn empty_unaligned_and_broadcast_inputs() {
    let y = run(
        Op::Transpose(op::Transpose { perm: None }),
        &[f32s(&[0, 3], &[])],
    );
    check(&y, &[3, 0], &[]);
    let y = run(
        Op::Concat(op::Concat { axis: 0 }),
        &[f32s(&[0, 2], &[]), f32s(&[1, 2], &[1., 2.])],
    );
    check(&y, &[1, 2], &[1., 2.]);
    let y = run(
        Op::Expand(op::Expand {}),
        &[f32s(&[3, 1], &[1., 2., 3.]), i64v(&[2, 1, 2])],
    );
    check(
        &y,
        &[2, 3, 2],
        &[1., 1., 2., 2., 3., 3., 1., 1., 2., 2., 3., 3.],
    );
    let y = run(Op::Tile(op::Tile {}), &[f32s(&[2], &[1., 2.]), i64v(&[0])]);
    check(&y, &[0], &[]);
    // An i32 tensor at an odd byte offset of its storage: lanes are copied out first.
    let mut bytes = vec![0u8];
    for v in [1i32, 2, 3, 4, 5, 6] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let st: Arc<dyn Storage> = Arc::new(AlignedBuf::from_slice(&bytes));
    let x = Tensor::from_storage(DType::I32, vec![2, 3], st, 1, 24).unwrap();
    let y = run(
        Op::Transpose(op::Transpose {
            perm: Some(vec![1, 0]),
        }),
        &[Some(x)],
    );
    check(&y, &[3, 2], &[1., 4., 2., 5., 3., 6.]);
    // Trilu on an empty batch of matrices.
    let y = run(
        Op::Trilu(op::Trilu { upper: true }),
        &[f32s(&[0, 2, 2], &[])],
    );
    check(&y, &[0, 2, 2], &[]);
}

#[test]
fn depth_space_round_trips() {
    let n = 2 * 8 * 2 * 3;
    let x = f32s(&[2, 8, 2, 3], &(0..n).map(|v| v as f32).collect::<Vec<_>>());
    for mode in ["DCR", "CRD"] {
        let y = run(
            Op::DepthToSpace(op::DepthToSpace {
                blocksize: 2,
                mode: mode.into(),
            }),
            std::slice::from_ref(&x),
        );
        assert_eq!(y.shape(), [2, 2, 4, 6]);
        let z = run(
            Op::SpaceToDepth(op::SpaceToDepth {
                blocksize: 2,
                mode: mode.into(),
            }),
            &[Some(y)],
        );
        assert_eq!(Some(z), x, "{mode} round trip");
    }
}

// ---------------------------------------------------------------------------------------------
// Random layouts checked against numpy.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `lo..=hi`.
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.next() as usize % v.len()]
    }
    fn shape(&mut self, min_rank: i64, max_rank: i64, max_dim: i64) -> Vec<usize> {
        (0..self.int(min_rank, max_rank))
            .map(|_| self.int(0, max_dim) as usize)
            .collect()
    }
    fn perm(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.int(0, i as i64) as usize);
        }
        p
    }
}

fn py_list<T: std::fmt::Display>(v: &[T]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

fn arange(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape.to_vec(), (0..n as i64).collect()).unwrap()
}

/// One random case: the numpy expression of the expected value (over `x`, an int64 arange
/// of `shape`), and kiln's result.
struct Case {
    shape: Vec<usize>,
    expr: String,
    got: Tensor,
}

fn random_case(rng: &mut Rng) -> Case {
    let kind = rng.int(0, 8);
    let mut shape = rng.shape(1, 4, 4);
    let x = arange(&shape);
    let r = shape.len();
    let (expr, got) = match kind {
        0 => {
            // Slice: some axes, bounds beyond the dims, INT64 extremes, negative steps.
            let n = rng.int(1, r as i64) as usize;
            let axes: Vec<usize> = rng.perm(r)[..n].to_vec();
            let (mut st, mut en, mut sp, mut ax) = (vec![], vec![], vec![], vec![]);
            let mut sl = vec!["slice(None)".to_string(); r];
            for &a in &axes {
                let d = shape[a] as i64;
                let step = rng.pick(&[-3i64, -2, -1, 1, 1, 2, 3]);
                // numpy and ONNX differ on a negative step from a start before -d.
                let lo = if step < 0 { -d } else { -7 };
                let (s0, e0) = (rng.int(lo, 7), rng.int(-7, 7));
                let s = rng.pick(&[s0, s0, i64::MAX, if step < 0 { -d } else { i64::MIN }]);
                let e = rng.pick(&[e0, e0, i64::MAX, i64::MIN]);
                sl[a] = format!("slice({s},{e},{step})");
                st.push(s);
                en.push(e);
                sp.push(step);
                ax.push(if rng.int(0, 1) == 0 {
                    a as i64
                } else {
                    a as i64 - r as i64
                });
            }
            let got = run(
                Op::Slice(op::Slice {}),
                &[Some(x), i64v(&st), i64v(&en), i64v(&ax), i64v(&sp)],
            );
            (format!("x[{}]", sl.join(",")), got)
        }
        1 => {
            let p = rng.perm(r);
            let got = run(
                Op::Transpose(op::Transpose {
                    perm: Some(p.iter().map(|&v| v as i64).collect()),
                }),
                &[Some(x)],
            );
            (format!("np.transpose(x,{})", py_list(&p)), got)
        }
        2 => {
            let mode = rng.pick(&["constant", "edge", "reflect", "wrap"]);
            if mode != "constant" {
                // numpy cannot pad an empty dim by edge, reflection or wrapping.
                shape.iter_mut().for_each(|d| *d = (*d).max(1));
            }
            let x = arange(&shape);
            let b: Vec<i64> = (0..r).map(|_| rng.int(0, 5)).collect();
            let e: Vec<i64> = (0..r).map(|_| rng.int(0, 5)).collect();
            let pads = [b.clone(), e.clone()].concat();
            let got = run(
                Op::Pad(op::Pad { mode: mode.into() }),
                &[Some(x), i64v(&pads), Some(Tensor::scalar(-1i64))],
            );
            let w: Vec<String> = (0..r).map(|k| format!("({},{})", b[k], e[k])).collect();
            let extra = if mode == "constant" {
                ",constant_values=-1"
            } else {
                ""
            };
            (
                format!("np.pad(x,[{}],mode='{mode}'{extra})", w.join(",")),
                got,
            )
        }
        3 => {
            let reps: Vec<i64> = (0..r).map(|_| rng.int(0, 3)).collect();
            let got = run(Op::Tile(op::Tile {}), &[Some(x), i64v(&reps)]);
            (format!("np.tile(x,{})", py_list(&reps)), got)
        }
        4 => {
            // Expand to a shape of higher rank with 1s broadcast.
            let mut target: Vec<i64> = shape
                .iter()
                .map(|&d| {
                    if d == 1 {
                        rng.int(0, 3)
                    } else if rng.int(0, 2) == 0 {
                        1
                    } else {
                        d as i64
                    }
                })
                .collect();
            for _ in 0..rng.int(0, 2) {
                target.insert(0, rng.int(1, 3));
            }
            let got = run(Op::Expand(op::Expand {}), &[Some(x), i64v(&target)]);
            (
                format!("x*np.ones({},dtype=np.int64)", py_list(&target)),
                got,
            )
        }
        5 => {
            let a = rng.int(0, r as i64 - 1) as usize;
            let d = shape[a] as i64;
            let qs = rng.shape(0, 2, 3);
            let n: usize = qs.iter().product();
            let q: Vec<i64> = if d == 0 {
                vec![]
            } else {
                (0..n).map(|_| rng.int(-d, d - 1)).collect()
            };
            let qs = if d == 0 { vec![0] } else { qs };
            let got = run(
                Op::Gather(op::Gather {
                    axis: a as i64 - r as i64,
                }),
                &[Some(x), i64s(&qs, &q)],
            );
            (
                format!(
                    "np.take(x,np.array({},dtype=np.int64).reshape({}),axis={a})",
                    py_list(&q),
                    py_list(&qs)
                ),
                got,
            )
        }
        6 => {
            shape.iter_mut().for_each(|d| *d = (*d).max(1));
            let x = arange(&shape);
            let a = rng.int(0, r as i64 - 1) as usize;
            let mut qs = shape.clone();
            qs.iter_mut().enumerate().for_each(|(k, v)| {
                *v = if k == a {
                    rng.int(0, 3) as usize
                } else {
                    rng.int(0, *v as i64) as usize
                }
            });
            let n: usize = qs.iter().product();
            let d = shape[a] as i64;
            let q: Vec<i64> = (0..n).map(|_| rng.int(-d, d - 1)).collect();
            let got = run(
                Op::GatherElements(op::GatherElements { axis: a as i64 }),
                &[Some(x), i64s(&qs, &q)],
            );
            // numpy needs the other dims equal: cut x down to the indices' shape first.
            let cut: Vec<String> = (0..r)
                .map(|k| {
                    if k == a {
                        ":".into()
                    } else {
                        format!(":{}", qs[k])
                    }
                })
                .collect();
            let expr = format!(
                "np.take_along_axis(x[{}],np.array({},dtype=np.int64).reshape({}),axis={a})",
                cut.join(","),
                py_list(&q),
                py_list(&qs)
            );
            (expr, got)
        }
        7 => {
            // Unique along an axis of small values, so that slices repeat.
            shape.iter_mut().for_each(|d| *d = (*d).max(1));
            let n: usize = shape.iter().product();
            let v: Vec<i64> = (0..n).map(|_| rng.int(0, 1)).collect();
            let xv = Tensor::from_vec(shape.clone(), v.clone()).unwrap();
            let a = rng.int(0, r as i64 - 1) as usize;
            let o = run_n(
                Op::Unique(op::Unique {
                    axis: Some(a as i64),
                    sorted: true,
                }),
                &[Some(xv)],
                4,
            );
            // Compare Y and the counts in one tensor: Y flattened, then the counts.
            let mut all = vals(&o[0]);
            all.extend(vals(&o[3]));
            let got =
                Tensor::from_vec(vec![all.len()], all.iter().map(|&f| f as i64).collect()).unwrap();
            let expr = format!(
                "(lambda u: np.concatenate([u[0].ravel(), u[1]]))(np.unique(np.array({},dtype=np.int64).reshape({}),axis={a},return_counts=True))",
                py_list(&v),
                py_list(&shape)
            );
            (expr, got)
        }
        _ => {
            // Trilu on the last two dims.
            let k = rng.int(-4, 4);
            let upper = rng.int(0, 1) == 1;
            if r < 2 {
                shape.push(3);
            }
            let x = arange(&shape);
            let got = run(
                Op::Trilu(op::Trilu { upper }),
                &[Some(x), Some(Tensor::scalar(k))],
            );
            (
                format!("np.{}(x,{k})", if upper { "triu" } else { "tril" }),
                got,
            )
        }
    };
    Case { shape, expr, got }
}

fn python() -> Option<std::path::PathBuf> {
    let p = match std::env::var_os("KILN_PYTHON") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv/bin/python"),
    };
    if p.exists() {
        return Some(p);
    }
    if ["KILN_CI", "CI"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"))
    {
        panic!("python venv missing at {} (CI is set)", p.display());
    }
    eprintln!(
        "SKIPPED: no python at {}; run scripts/setup.sh to compare with numpy",
        p.display()
    );
    None
}

#[test]
fn random_layouts_match_numpy() {
    let Some(py) = python() else { return };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let cases: Vec<Case> = (0..400).map(|_| random_case(&mut rng)).collect();
    let mut script = String::from("import numpy as np\n");
    for c in &cases {
        script.push_str(&format!(
            "x=np.arange({n},dtype=np.int64).reshape({s})\nr=np.asarray({e})\nprint(' '.join(map(str,r.shape))+'|'+' '.join(map(str,r.ravel().tolist())))\n",
            n = c.shape.iter().product::<usize>(),
            s = py_list(&c.shape),
            e = c.expr
        ));
    }
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(py)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), cases.len());
    for (c, line) in cases.iter().zip(lines) {
        let (s, v) = line.split_once('|').unwrap();
        let shape: Vec<usize> = s.split_whitespace().map(|d| d.parse().unwrap()).collect();
        let want: Vec<f64> = v.split_whitespace().map(|d| d.parse().unwrap()).collect();
        assert_eq!(
            c.got.shape(),
            shape,
            "shape of {} on x of {:?}",
            c.expr,
            c.shape
        );
        assert_eq!(
            vals(&c.got),
            want,
            "values of {} on x of {:?}",
            c.expr,
            c.shape
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Transpose against the definition (`y[i_0..i_r] = x[i_perm⁻¹…]`, by index arithmetic)
    /// over ranks 1–4, every permutation, odd dims and copies large enough to be split across
    /// threads and to take the tiled path (a source-strided inner dim next to a contiguous one).
    #[test]
    fn transpose_matches_index_definition(
        dims in proptest::collection::vec(1usize..24, 1..5),
        perm_seed in 0usize..24,
        big in proptest::bool::ANY,
    ) {
        let mut shape = dims.clone();
        if big {
            // ≥ 2^15 elements: the threaded path.
            while shape.iter().product::<usize>() < 1 << 15 {
                shape[0] += 7;
            }
        }
        let r = shape.len();
        // The perm_seed-th permutation of 0..r (Lehmer code).
        let mut pool: Vec<usize> = (0..r).collect();
        let mut code = perm_seed;
        let mut perm = Vec::with_capacity(r);
        for k in (1..=r).rev() {
            perm.push(pool.remove(code % k));
            code /= k;
        }
        let n: usize = shape.iter().product();
        let x: Vec<f32> = (0..n).map(|v| v as f32).collect();
        let y = run(
            Op::Transpose(op::Transpose { perm: Some(perm.iter().map(|&p| p as i64).collect()) }),
            &[f32s(&shape, &x)],
        );
        let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        proptest::prop_assert_eq!(y.shape(), &out[..]);
        let xst = super::istrides(&shape);
        let got = vals(&y);
        let mut idx = vec![0usize; r];
        for (flat, g) in got.iter().enumerate() {
            let mut rem = flat;
            for k in (0..r).rev() {
                idx[k] = rem % out[k];
                rem /= out[k];
            }
            let src: isize = (0..r).map(|k| idx[k] as isize * xst[perm[k]]).sum();
            proptest::prop_assert_eq!(*g, src as f64, "at {:?} with perm {:?}", idx, perm);
        }
    }
}
