//! The `kiln` command line: shared plumbing (model sources, loading, output) for the commands
//! in [`inspect`] and [`optimize`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kiln::frontend::proto::{self, GraphProto, ModelProto, SparseTensorProto, TensorProto};
use kiln::frontend::{ExternalData, FrontendError};
use kiln::ir::infer::InferStats;
use kiln::ir::{DType, Model};

pub mod bench;
pub mod conformance;
pub mod inspect;
pub mod optimize;
pub mod pool;
pub mod run;

/// File name of the model embedded in the binary (used when a command gets no MODEL).
pub const DEFAULT_MODEL_NAME: &str = "bert_tiny_eager_opset14.onnx";

/// The embedded default: BERT, 2 layers, hidden 64, eager-attention export, opset 14
/// (a copy of `../shared/models/bert_tiny_eager_opset14.onnx`, kept in `assets/`).
pub static DEFAULT_MODEL: &[u8] = include_bytes!("../../assets/bert_tiny_eager_opset14.onnx");

/// Where a command's model comes from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    /// [`DEFAULT_MODEL`].
    Embedded,
}

impl Source {
    /// The file `path`, or the embedded default (with a note on stderr) when there is none.
    pub fn new(path: Option<PathBuf>) -> Source {
        match path {
            Some(p) => Source::File(p),
            None => {
                eprintln!(
                    "note: no MODEL given: using the embedded default model {DEFAULT_MODEL_NAME} \
                     (BERT-tiny: 2 layers, hidden 64, eager attention, opset 14)"
                );
                Source::Embedded
            }
        }
    }

    /// How messages name the model.
    pub fn display(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Embedded => format!("<embedded {DEFAULT_MODEL_NAME}>"),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Source::File(p) => Some(p),
            Source::Embedded => None,
        }
    }

    /// The directory external data resolves against.
    pub fn base_dir(&self) -> Option<PathBuf> {
        self.path().map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        })
    }
}

/// External-data references of a model file, per `location`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalRefs {
    /// Tensors stored in this file.
    pub tensors: usize,
    /// Bytes of those tensors (their `length`, or dtype × shape where `length` is absent).
    pub bytes: u64,
}

/// What the model *file* holds, read from its protobuf (the IR has already folded `Constant`
/// nodes and inlined functions, so it cannot say this).
#[derive(Debug, Clone, Default)]
pub struct FileInfo {
    /// Size of the `.onnx` file (without its external data).
    pub file_bytes: u64,
    /// Node count per (domain, op_type), nodes of subgraphs included. `""` is normalized to
    /// `"ai.onnx"`.
    pub ops: BTreeMap<(String, String), usize>,
    /// All nodes, subgraphs included.
    pub nodes: usize,
    /// Nodes inside subgraphs (`If`/`Loop`/`Scan` bodies), included in `nodes`.
    pub nodes_in_subgraphs: usize,
    /// Number of subgraphs.
    pub subgraphs: usize,
    /// Model-local functions.
    pub functions: usize,
    /// External-data references per `location`, as written in the model.
    pub external: BTreeMap<String, ExternalRefs>,
}

/// `"ai.onnx"` for ONNX's default domain (spelled `""` or `"ai.onnx"`), else the domain.
pub fn domain_name(d: &str) -> &str {
    if d.is_empty() {
        "ai.onnx"
    } else {
        d
    }
}

impl FileInfo {
    pub fn of(m: &ModelProto, file_bytes: u64) -> FileInfo {
        let mut info = FileInfo {
            file_bytes,
            functions: m.functions.len(),
            ..FileInfo::default()
        };
        if let Some(g) = &m.graph {
            info.graph(g, 0);
        }
        info
    }

    fn graph(&mut self, g: &GraphProto, depth: usize) {
        for t in &g.initializer {
            self.tensor(t);
        }
        for s in &g.sparse_initializer {
            self.sparse(s);
        }
        for n in &g.node {
            self.nodes += 1;
            if depth > 0 {
                self.nodes_in_subgraphs += 1;
            }
            let key = (domain_name(n.domain()).to_string(), n.op_type().to_string());
            *self.ops.entry(key).or_insert(0) += 1;
            for a in &n.attribute {
                if let Some(t) = &a.t {
                    self.tensor(t);
                }
                for t in &a.tensors {
                    self.tensor(t);
                }
                if let Some(s) = &a.sparse_tensor {
                    self.sparse(s);
                }
                for s in &a.sparse_tensors {
                    self.sparse(s);
                }
                for sg in a.g.iter().chain(&a.graphs) {
                    self.subgraphs += 1;
                    self.graph(sg, depth + 1);
                }
            }
        }
    }

    fn sparse(&mut self, s: &SparseTensorProto) {
        for t in s.values.iter().chain(&s.indices) {
            self.tensor(t);
        }
    }

    fn tensor(&mut self, t: &TensorProto) {
        if !proto::is_external(t) {
            return;
        }
        let location = proto::external_entry(t, "location")
            .unwrap_or("")
            .to_string();
        let bytes = proto::external_entry(t, "length")
            .and_then(|l| l.trim().parse::<u64>().ok())
            .or_else(|| {
                let n = t
                    .dims
                    .iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(u64::try_from(d).ok()?))?;
                let dt = DType::from_onnx(t.data_type())?;
                Some(dt.storage_bytes(usize::try_from(n).ok()?)? as u64)
            })
            .unwrap_or(0);
        let e = self.external.entry(location).or_default();
        e.tensors += 1;
        e.bytes += bytes;
    }
}

/// A model loaded for a command: the IR (types inferred, verified) and what its file holds.
pub struct Loaded {
    pub model: Model,
    pub file: FileInfo,
    pub stats: InferStats,
}

/// Reads, decodes and imports `src`, infers types and verifies the graph. The `.onnx` bytes are
/// read and decoded once; external data is memory-mapped by the frontend, never read here.
pub fn load(src: &Source) -> anyhow::Result<Loaded> {
    let origin = src.display();
    let bytes: Cow<[u8]> = match src {
        Source::File(p) => {
            Cow::Owned(std::fs::read(p).map_err(|e| FrontendError::io("cannot read", p, e))?)
        }
        Source::Embedded => Cow::Borrowed(DEFAULT_MODEL),
    };
    let proto = proto::decode_model(&bytes, &origin)?;
    let file = FileInfo::of(&proto, bytes.len() as u64);
    drop(bytes);
    let ext = match src.base_dir() {
        Some(d) => ExternalData::for_dir(d),
        None => ExternalData::none(),
    };
    let mut model = kiln::frontend::import_model(&proto, &ext)
        .with_context(|| format!("cannot import {origin}"))?;
    drop(proto);
    let stats = kiln::ir::infer::infer_graph(&mut model.graph)
        .with_context(|| format!("{origin}: type inference failed"))?;
    kiln::ir::verify::verify(&model.graph)
        .with_context(|| format!("{origin}: the imported graph is invalid"))?;
    Ok(Loaded { model, file, stats })
}

/// Writes `text` to stdout. A closed pipe (`kiln inspect --ir | head`) is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// `1234567` → `"1.2 MB"` (decimal units, as `ls -h --si` and model hubs show sizes).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
