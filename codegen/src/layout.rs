//! Which values lowering keeps channel-blocked (NCHWc, [`nchwc::BLOCK`] channels per block).
//!
//! A value is blocked when its producer can write it blocked (a convolution, whose residual
//! `Z` if any is blocked, or a max pool of a blocked value) and every reader can read it blocked (a convolution's `X`, or a fused
//! convolution's `Z`, that itself writes blocked; a max pool that writes blocked; a global
//! average pool). The rule is applied until nothing changes, starting from every value a
//! convolution can write blocked, so a chain of convolutions and pools (ResNet's whole body)
//! runs blocked from the first convolution, which reads its NCHW input in place, to the global
//! pool, which writes NCHW again; no reorder is ever inserted. Graph outputs stay NCHW.

use std::collections::{HashMap, HashSet};

use kiln_ir::{Graph, NodeId, ValueId};
use kiln_runtime::kernels::nchwc::{self, Role};

/// The blocked values of `g`. `excluded` nodes (those in a fused group) read and write NCHW.
pub(crate) fn blocked_values(
    g: &Graph,
    order: &[NodeId],
    excluded: &HashSet<NodeId>,
) -> HashSet<ValueId> {
    let roles: HashMap<NodeId, Role> = order
        .iter()
        .filter(|n| !excluded.contains(n))
        .map(|&n| (n, nchwc::role(&g.node(n).op, &super::build_cx(g, n))))
        .filter(|(_, r)| *r != Role::None)
        .collect();
    let role = |n: NodeId| roles.get(&n).copied().unwrap_or(Role::None);
    // Readers of each value with the input position, or `None` for a read that is not an
    // input (a subgraph's capture).
    let mut readers: HashMap<ValueId, Vec<(NodeId, Option<usize>)>> = HashMap::new();
    for &n in order {
        let node = g.node(n);
        for (i, v) in node.inputs.iter().enumerate() {
            if let Some(v) = *v {
                readers.entry(v).or_default().push((n, Some(i)));
            }
        }
        for v in g.node_reads(n) {
            if !node.inputs.contains(&Some(v)) {
                readers.entry(v).or_default().push((n, None));
            }
        }
    }
    let out0 = |n: NodeId| g.node(n).outputs.first().copied();
    let mut blocked: HashSet<ValueId> = order
        .iter()
        .filter(|&&n| matches!(role(n), Role::Conv { .. } | Role::MaxPool))
        .filter_map(|&n| out0(n))
        .filter(|v| !g.outputs.contains(v))
        .collect();
    loop {
        let accepts = |n: NodeId, at: Option<usize>, blocked: &HashSet<ValueId>| {
            let writes_blocked = out0(n).is_some_and(|o| blocked.contains(&o));
            match (role(n), at) {
                (Role::Conv { in_channels }, Some(0)) => {
                    writes_blocked && in_channels % nchwc::BLOCK == 0
                }
                (Role::Conv { .. }, Some(3)) => writes_blocked,
                (Role::MaxPool, Some(0)) => writes_blocked,
                (Role::GlobalAveragePool, Some(0)) => true,
                _ => false,
            }
        };
        let drop: Vec<ValueId> = blocked
            .iter()
            .copied()
            .filter(|&v| {
                let producer = match g.value(v).def {
                    kiln_ir::ValueDef::Node { node, .. } => Some(node),
                    _ => None,
                };
                // A max pool writes blocked only what it reads blocked, and a fused
                // convolution adds its `Z` in the layout it writes.
                let source_ok = producer.is_some_and(|p| {
                    let input = |i: usize| g.node(p).inputs.get(i).copied().flatten();
                    match role(p) {
                        Role::MaxPool => input(0).is_some_and(|x| blocked.contains(&x)),
                        Role::Conv { .. } => input(3).is_none_or(|z| blocked.contains(&z)),
                        _ => true,
                    }
                });
                !source_ok
                    || readers
                        .get(&v)
                        .is_some_and(|r| r.iter().any(|&(n, at)| !accepts(n, at, &blocked)))
            })
            .collect();
        if drop.is_empty() {
            return blocked;
        }
        for v in drop {
            blocked.remove(&v);
        }
    }
}
