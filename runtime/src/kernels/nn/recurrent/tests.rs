//! Edge cases the conformance cases miss, checked against scalar formulas written out here.

use super::*;

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn kernel(cell: Cell, reverse: Vec<bool>, layout1: bool) -> RecurrentK {
    let acts = cell
        .default_acts()
        .iter()
        .map(|n| act::parse(&[n.to_string()], None, None).unwrap()[0])
        .collect::<Vec<_>>();
    RecurrentK {
        cell,
        acts: vec![acts; reverse.len()],
        clip: None,
        reverse,
        hidden_size: None,
        layout1,
    }
}

fn t64(shape: &[usize], v: Vec<f64>) -> Option<Value> {
    Some(Value::Tensor(Tensor::from_vec(shape.to_vec(), v).unwrap()))
}

fn run(k: &RecurrentK, ins: Vec<Option<Value>>) -> Vec<Vec<f64>> {
    let refs: Vec<Option<&Value>> = ins.iter().map(|v| v.as_ref()).collect();
    k.run(&refs, &mut RunCx::new())
        .unwrap()
        .into_iter()
        .map(|v| v.into_tensor().unwrap().to_vec::<f64>().unwrap())
        .collect()
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
    }
}

/// Scalar LSTM (hidden 1, input 1), gates i, o, f, c, with peepholes.
#[allow(clippy::too_many_arguments)]
fn lstm_scalar(
    xs: &[f64],
    w: [f64; 4],
    r: [f64; 4],
    b: [f64; 4],
    p: [f64; 3],
    h0: f64,
    c0: f64,
) -> (Vec<f64>, f64, f64) {
    let (mut h, mut c) = (h0, c0);
    let mut ys = vec![];
    for &x in xs {
        let pre = |k: usize| w[k] * x + r[k] * h + b[k];
        let i = sig(pre(0) + p[0] * c);
        let f = sig(pre(2) + p[2] * c);
        let g = pre(3).tanh();
        c = f * c + i * g;
        let o = sig(pre(1) + p[1] * c);
        h = o * c.tanh();
        ys.push(h);
    }
    (ys, h, c)
}

#[test]
fn lstm_zero_length_entry_keeps_initial_state() {
    let k = kernel(
        Cell::Lstm {
            input_forget: false,
        },
        vec![false],
        false,
    );
    let (w, r) = ([0.5, -0.3, 0.8, 0.2], [0.1, 0.4, -0.2, 0.6]);
    let bw = [0.05, -0.1, 0.2, 0.0];
    let br = [0.01, 0.02, 0.03, 0.04];
    let p = [0.3, -0.2, 0.1];
    let mut bv = bw.to_vec();
    bv.extend(br);
    // T = 3, batch = 2 (entry 0 has length 3, entry 1 length 0).
    let x = vec![1.0, 9.0, -0.5, 9.0, 2.0, 9.0];
    let outs = run(
        &k,
        vec![
            t64(&[3, 2, 1], x),
            t64(&[1, 4, 1], w.to_vec()),
            t64(&[1, 4, 1], r.to_vec()),
            t64(&[1, 8], bv),
            Some(Value::Tensor(
                Tensor::from_vec(vec![2], vec![3i32, 0]).unwrap(),
            )),
            t64(&[1, 2, 1], vec![0.25, -0.75]),
            t64(&[1, 2, 1], vec![0.5, 1.5]),
            t64(&[1, 3], p.to_vec()),
        ],
    );
    let b: [f64; 4] = std::array::from_fn(|k| bw[k] + br[k]);
    let (ys, h, c) = lstm_scalar(&[1.0, -0.5, 2.0], w, r, b, p, 0.25, 0.5);
    // Y [T, 1, 2, 1]: entry 1 all zero.
    close(&outs[0], &[ys[0], 0.0, ys[1], 0.0, ys[2], 0.0]);
    close(&outs[1], &[h, -0.75]);
    close(&outs[2], &[c, 1.5]);
}

#[test]
fn lstm_input_forget_couples_gates() {
    let mut k = kernel(Cell::Lstm { input_forget: true }, vec![false], false);
    k.clip = Some(100.0);
    let outs = run(
        &k,
        vec![
            t64(&[1, 1, 1], vec![1.0]),
            t64(&[1, 4, 1], vec![0.5, 0.5, 7.0, 0.5]),
            t64(&[1, 4, 1], vec![0.0; 4]),
            None,
            None,
            None,
            t64(&[1, 1, 1], vec![2.0]),
        ],
    );
    let i = sig(0.5);
    let c = (1.0 - i) * 2.0 + i * 0.5f64.tanh();
    close(&outs[2], &[c]);
    close(&outs[1], &[sig(0.5) * c.tanh()]);
}

#[test]
fn rnn_reverse_short_sequence_and_layout1() {
    // Hidden 1, input 1: h = tanh(w x + r h + b). Entry 0 has length 2 of T = 3 and runs
    // t = 1 then t = 0; entry 1 runs t = 2, 1, 0.
    let (w, r, b): (f64, f64, f64) = (0.7, -0.4, 0.1);
    let x: [[f64; 2]; 3] = [[0.3, -1.0], [0.8, 0.5], [9.0, 0.2]]; // [t][batch]
    let e0_t1 = (w * x[1][0] + b).tanh();
    let e0_t0 = (w * x[0][0] + r * e0_t1 + b).tanh();
    let e1_t2 = (w * x[2][1] + b).tanh();
    let e1_t1 = (w * x[1][1] + r * e1_t2 + b).tanh();
    let e1_t0 = (w * x[0][1] + r * e1_t1 + b).tanh();
    let lens = || {
        Some(Value::Tensor(
            Tensor::from_vec(vec![2], vec![2i32, 3]).unwrap(),
        ))
    };
    let bias = || t64(&[1, 2], vec![b, 0.0]);
    let k = kernel(Cell::Rnn, vec![true], false);
    let outs = run(
        &k,
        vec![
            t64(&[3, 2, 1], x.iter().flatten().copied().collect()),
            t64(&[1, 1, 1], vec![w]),
            t64(&[1, 1, 1], vec![r]),
            bias(),
            lens(),
        ],
    );
    close(&outs[0], &[e0_t0, e1_t0, e0_t1, e1_t1, 0.0, e1_t2]);
    close(&outs[1], &[e0_t0, e1_t0]);
    // Same data batch-major.
    let k = kernel(Cell::Rnn, vec![true], true);
    let xb: Vec<f64> = (0..2)
        .flat_map(|bi| (0..3).map(move |t| x[t][bi]))
        .collect();
    let outs = run(
        &k,
        vec![
            t64(&[2, 3, 1], xb),
            t64(&[1, 1, 1], vec![w]),
            t64(&[1, 1, 1], vec![r]),
            bias(),
            lens(),
        ],
    );
    close(&outs[0], &[e0_t0, e0_t1, 0.0, e1_t0, e1_t1, e1_t2]);
    close(&outs[1], &[e0_t0, e1_t0]);
}

#[test]
fn gru_linear_before_reset_both_ways() {
    // Hidden 1, input 1, gates z, r, h.
    let (w, r) = ([0.4, -0.6, 0.9], [0.3, 0.5, -0.7]);
    let (wb, rb) = ([0.1, 0.2, 0.3], [-0.1, 0.05, 0.4]);
    let (x, h0) = (0.8, 0.6);
    let z = sig(w[0] * x + r[0] * h0 + wb[0] + rb[0]);
    let rg = sig(w[1] * x + r[1] * h0 + wb[1] + rb[1]);
    for lbr in [false, true] {
        let cand = if lbr {
            (w[2] * x + rg * (r[2] * h0 + rb[2]) + wb[2]).tanh()
        } else {
            (w[2] * x + r[2] * (rg * h0) + rb[2] + wb[2]).tanh()
        };
        let want = (1.0 - z) * cand + z * h0;
        let k = kernel(
            Cell::Gru {
                linear_before_reset: lbr,
            },
            vec![false],
            false,
        );
        let mut bv = wb.to_vec();
        bv.extend(rb);
        let outs = run(
            &k,
            vec![
                t64(&[1, 1, 1], vec![x]),
                t64(&[1, 3, 1], w.to_vec()),
                t64(&[1, 3, 1], r.to_vec()),
                t64(&[1, 6], bv),
                None,
                t64(&[1, 1, 1], vec![h0]),
            ],
        );
        close(&outs[1], &[want]);
    }
}

#[test]
fn bad_shapes_and_lengths_error() {
    let k = kernel(Cell::Rnn, vec![false], false);
    let ins = [
        t64(&[2, 1, 1], vec![1.0, 2.0]),
        t64(&[1, 1, 1], vec![1.0]),
        t64(&[1, 1, 1], vec![1.0]),
        None,
        Some(Value::Tensor(
            Tensor::from_vec(vec![1], vec![3i32]).unwrap(),
        )),
    ];
    let refs: Vec<Option<&Value>> = ins.iter().map(|v| v.as_ref()).collect();
    assert!(k.run(&refs, &mut RunCx::new()).is_err());
    let ins = [
        t64(&[2, 1, 1], vec![1.0, 2.0]),
        t64(&[1, 2, 1], vec![1.0, 1.0]),
        t64(&[1, 1, 1], vec![1.0]),
    ];
    let refs: Vec<Option<&Value>> = ins.iter().map(|v| v.as_ref()).collect();
    assert!(k.run(&refs, &mut RunCx::new()).is_err());
}

#[test]
fn activations_consume_alpha_in_order() {
    let a = act::parse(
        &["Tanh".into(), "LeakyRelu".into(), "HardSigmoid".into()],
        Some(&[0.5, 0.25]),
        Some(&[0.75]),
    )
    .unwrap();
    assert_eq!(
        a,
        vec![Act::Tanh, Act::LeakyRelu(0.5), Act::HardSigmoid(0.25, 0.75)]
    );
    assert!(act::parse(&["Nope".into()], None, None).is_err());
}
