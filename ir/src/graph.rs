//! The SSA graph: arenas of values and nodes addressed by `Copy` ids.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::error::IrError;
use crate::op::Op;
use crate::shape::{shape_of, Dim, Type};
use crate::tensor::Tensor;

/// Index of a value in its graph's arena.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(u32);

/// Index of a node in its graph's arena.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The id of the `i`-th value of a graph's arena. Only meaningful for that graph.
    pub fn from_index(i: usize) -> ValueId {
        ValueId(i as u32)
    }
}

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// Where a value comes from. Exactly one definition per value: that is the SSA property.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueDef {
    /// A graph input (for a subgraph: a formal parameter of its body).
    Input,
    /// A constant (an ONNX initializer or a `Constant` node folded at import).
    Const(Tensor),
    /// Output `index` of `node`.
    Node { node: NodeId, index: usize },
    /// In a subgraph, a value of the immediately enclosing graph used here by reference.
    Outer(ValueId),
    /// A constant that is also a graph input (ONNX initializers listed as inputs):
    /// the tensor is a default that the caller may override.
    InputWithDefault(Tensor),
}

/// One SSA value.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Name in the source model, kept for export and for error messages; may be empty
    /// for an omitted node output. Unique within a graph.
    pub name: String,
    /// Type, once known (declared by the model or inferred).
    pub ty: Option<Type>,
    pub def: ValueDef,
}

/// One operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    /// `None` where an optional input is omitted.
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<ValueId>,
}

/// An SSA graph (a model's main graph or an op's subgraph).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    pub name: String,
    values: Vec<Value>,
    nodes: Vec<Option<Node>>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    next_symbol: u32,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    fn push_value(&mut self, name: String, ty: Option<Type>, def: ValueDef) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value { name, ty, def });
        id
    }

    /// Adds a graph input.
    pub fn add_input(&mut self, name: impl Into<String>, ty: Option<Type>) -> ValueId {
        let id = self.push_value(name.into(), ty, ValueDef::Input);
        self.inputs.push(id);
        id
    }

    /// Adds a constant; its type is the tensor's.
    pub fn add_const(&mut self, name: impl Into<String>, t: Tensor) -> ValueId {
        let ty = Type::tensor(t.dtype(), shape_of(t.shape()));
        self.push_value(name.into(), Some(ty), ValueDef::Const(t))
    }

    /// Adds a graph input whose value defaults to `t` (an initializer listed as an input).
    pub fn add_input_with_default(&mut self, name: impl Into<String>, t: Tensor) -> ValueId {
        let ty = Type::tensor(t.dtype(), shape_of(t.shape()));
        let id = self.push_value(name.into(), Some(ty), ValueDef::InputWithDefault(t));
        self.inputs.push(id);
        id
    }

    /// Adds a reference to value `outer` of the enclosing graph.
    pub fn add_outer(
        &mut self,
        name: impl Into<String>,
        outer: ValueId,
        ty: Option<Type>,
    ) -> ValueId {
        self.push_value(name.into(), ty, ValueDef::Outer(outer))
    }

    /// Adds a node with one new value per name in `outputs`.
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        outputs: &[&str],
    ) -> NodeId {
        let node = NodeId(self.nodes.len() as u32);
        let outs = outputs
            .iter()
            .enumerate()
            .map(|(index, n)| {
                self.push_value((*n).to_string(), None, ValueDef::Node { node, index })
            })
            .collect();
        self.nodes.push(Some(Node {
            name: name.into(),
            op,
            inputs,
            outputs: outs,
        }));
        node
    }

    /// Appends a new output value to `node` (for frontends that learn outputs one by one).
    pub fn add_node_output(&mut self, node: NodeId, name: impl Into<String>) -> ValueId {
        let index = self.node(node).outputs.len();
        let v = self.push_value(name.into(), None, ValueDef::Node { node, index });
        if let Some(n) = self.nodes[node.index()].as_mut() {
            n.outputs.push(v);
        }
        v
    }

    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.index()]
    }

    pub fn value_mut(&mut self, v: ValueId) -> &mut Value {
        &mut self.values[v.index()]
    }

    /// The node `n`. Panics if it was removed: ids of removed nodes must not be kept.
    pub fn node(&self, n: NodeId) -> &Node {
        self.nodes[n.index()].as_ref().expect("node was removed")
    }

    pub fn node_mut(&mut self, n: NodeId) -> &mut Node {
        self.nodes[n.index()].as_mut().expect("node was removed")
    }

    pub fn is_live(&self, n: NodeId) -> bool {
        self.nodes.get(n.index()).is_some_and(|n| n.is_some())
    }

    /// Live nodes in arena order (not necessarily topological: see [`Graph::topo_order`]).
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_some())
            .map(|(i, _)| NodeId(i as u32))
    }

    pub fn num_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.is_some()).count()
    }

    /// All values in arena order, including those of removed nodes.
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> {
        (0..self.values.len() as u32).map(ValueId)
    }

    pub fn num_values(&self) -> usize {
        self.values.len()
    }

    /// The tensor of a constant value (not of an input with a default, which may be overridden).
    pub fn const_value(&self, v: ValueId) -> Option<&Tensor> {
        match &self.value(v).def {
            ValueDef::Const(t) => Some(t),
            _ => None,
        }
    }

    pub fn producer(&self, v: ValueId) -> Option<NodeId> {
        match self.value(v).def {
            ValueDef::Node { node, .. } => Some(node),
            _ => None,
        }
    }

    /// Removes a node. Its output values stay in the arena, undefined; the caller must
    /// have redirected their uses first (the verifier checks it).
    pub fn remove_node(&mut self, n: NodeId) -> Option<Node> {
        self.nodes.get_mut(n.index()).and_then(Option::take)
    }

    /// Redirects every use of `old` (node inputs, graph outputs, subgraph references) to `new`.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) {
        for n in self.nodes.iter_mut().flatten() {
            for i in n.inputs.iter_mut().flatten() {
                if *i == old {
                    *i = new;
                }
            }
            for g in n.op.subgraphs_mut() {
                for v in &mut g.values {
                    if v.def == ValueDef::Outer(old) {
                        v.def = ValueDef::Outer(new);
                    }
                }
            }
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Values of the enclosing graph that this graph refers to.
    pub fn outer_refs(&self) -> Vec<ValueId> {
        let mut v: Vec<ValueId> = self
            .values
            .iter()
            .filter_map(|v| match v.def {
                ValueDef::Outer(o) => Some(o),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Values `n` reads: its inputs, then the values its subgraphs capture from this graph.
    pub fn node_reads(&self, n: NodeId) -> Vec<ValueId> {
        let node = self.node(n);
        let mut v: Vec<ValueId> = node.inputs.iter().flatten().copied().collect();
        for g in node.op.subgraphs() {
            v.extend(g.outer_refs());
        }
        v
    }

    /// How many times each value is read (node inputs, subgraph captures, graph outputs).
    pub fn use_counts(&self) -> Vec<u32> {
        let mut c = vec![0u32; self.values.len()];
        for n in self.node_ids() {
            for v in self.node_reads(n) {
                c[v.index()] += 1;
            }
        }
        for o in &self.outputs {
            c[o.index()] += 1;
        }
        c
    }

    /// The nodes that read each value.
    pub fn users(&self) -> HashMap<ValueId, Vec<NodeId>> {
        let mut m: HashMap<ValueId, Vec<NodeId>> = HashMap::new();
        for n in self.node_ids() {
            for v in self.node_reads(n) {
                let e = m.entry(v).or_default();
                if e.last() != Some(&n) {
                    e.push(n);
                }
            }
        }
        m
    }

    /// Live nodes in a topological order (stable: among ready nodes, arena order first).
    /// Errors if the graph has a cycle.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, IrError> {
        let live: Vec<NodeId> = self.node_ids().collect();
        let mut indeg: HashMap<NodeId, usize> = HashMap::with_capacity(live.len());
        let mut consumers: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        for &n in &live {
            let mut preds: Vec<NodeId> = self
                .node_reads(n)
                .into_iter()
                .filter_map(|v| self.producer(v))
                .filter(|p| self.is_live(*p))
                .collect();
            preds.sort();
            preds.dedup();
            indeg.insert(n, preds.len());
            for p in preds {
                consumers.entry(p).or_default().push(n);
            }
        }
        let mut ready: std::collections::BTreeSet<NodeId> =
            live.iter().copied().filter(|n| indeg[n] == 0).collect();
        let mut order = Vec::with_capacity(live.len());
        while let Some(n) = ready.pop_first() {
            order.push(n);
            for &c in consumers.get(&n).map(Vec::as_slice).unwrap_or(&[]) {
                let d = indeg.get_mut(&c).expect("consumer is live");
                *d -= 1;
                if *d == 0 {
                    ready.insert(c);
                }
            }
        }
        if order.len() != live.len() {
            let done: HashSet<NodeId> = order.iter().copied().collect();
            let stuck = live
                .iter()
                .find(|n| !done.contains(n))
                .map(|n| self.node(*n).name.clone())
                .unwrap_or_default();
            return Err(IrError::Verify(format!(
                "graph `{}` has a cycle through node `{stuck}`",
                self.name
            )));
        }
        Ok(order)
    }

    /// Reorders the node arena topologically, dropping removed nodes, their values, and
    /// constants nobody reads, so ids are dense again. Returns the old → new value id map.
    pub fn compact(&mut self) -> Result<BTreeMap<ValueId, ValueId>, IrError> {
        let order = self.topo_order()?;
        let mut vmap: BTreeMap<ValueId, ValueId> = BTreeMap::new();
        let mut values = Vec::new();
        let uses = self.use_counts();
        let keep_value = |g: &Graph, v: ValueId| match g.value(v).def {
            ValueDef::Node { node, .. } => g.is_live(node),
            ValueDef::Const(_) => uses[v.index()] > 0,
            _ => true,
        };
        for v in self.value_ids() {
            if keep_value(self, v) && !matches!(self.value(v).def, ValueDef::Node { .. }) {
                vmap.insert(v, ValueId(values.len() as u32));
                values.push(self.value(v).clone());
            }
        }
        let mut nodes = Vec::with_capacity(order.len());
        for (ni, &n) in order.iter().enumerate() {
            let node = self.node(n);
            for (index, &o) in node.outputs.iter().enumerate() {
                vmap.insert(o, ValueId(values.len() as u32));
                let mut val = self.value(o).clone();
                val.def = ValueDef::Node {
                    node: NodeId(ni as u32),
                    index,
                };
                values.push(val);
            }
            nodes.push(node.clone());
        }
        let map = |v: &ValueId| {
            vmap.get(v).copied().ok_or_else(|| {
                IrError::Verify(format!(
                    "a value read in graph `{}` has no definition",
                    self.name
                ))
            })
        };
        let mut new_nodes = Vec::with_capacity(nodes.len());
        for mut node in nodes {
            for i in node.inputs.iter_mut().flatten() {
                *i = map(i)?;
            }
            for o in node.outputs.iter_mut() {
                *o = map(o)?;
            }
            for g in node.op.subgraphs_mut() {
                for val in &mut g.values {
                    if let ValueDef::Outer(o) = val.def {
                        val.def = ValueDef::Outer(map(&o)?);
                    }
                }
            }
            new_nodes.push(Some(node));
        }
        self.inputs = self.inputs.iter().map(map).collect::<Result<_, _>>()?;
        self.outputs = self.outputs.iter().map(map).collect::<Result<_, _>>()?;
        self.values = values;
        self.nodes = new_nodes;
        Ok(vmap)
    }

    /// A fresh symbolic dim (for sizes only known at run time, such as NonZero's count).
    pub fn fresh_dim(&mut self, hint: &str) -> Dim {
        self.next_symbol += 1;
        Dim::sym(&format!("{hint}_{}", self.next_symbol))
    }

    /// A name not used by any value of this graph, built from `base`.
    pub fn unique_name(&self, base: &str) -> String {
        let used: HashSet<&str> = self.values.iter().map(|v| v.name.as_str()).collect();
        if !used.contains(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !used.contains(n.as_str()))
            .expect("some suffix is free")
    }
}
