//! ONNX data files that are not plain tensors: `SequenceProto` and `OptionalProto` (the
//! inputs and outputs of the conformance cases for sequence and optional ops).

use std::path::Path;

use kiln_ir::{Tensor, Type};
use prost::Message;

use crate::error::FrontendError;
use crate::external::ExternalData;
use crate::proto::{self, OptionalProto, SequenceProto};
use crate::tensor::tensor_from_proto;

/// A value stored in an ONNX data file.
#[derive(Clone, Debug, PartialEq)]
pub enum DataValue {
    Tensor(Tensor),
    Sequence(Vec<DataValue>),
    /// `None`: an empty optional.
    Optional(Option<Box<DataValue>>),
}

/// Reads a data file whose content has type `ty` (a tensor file when `ty` is `None` or a tensor).
pub fn read_data_file(
    path: impl AsRef<Path>,
    ty: Option<&Type>,
) -> Result<DataValue, FrontendError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| FrontendError::io("cannot read", path, e))?;
    let origin = path.display().to_string();
    let ext = ExternalData::for_model(path);
    match ty {
        Some(Type::Sequence(_)) => {
            let s = SequenceProto::decode(bytes.as_slice())
                .map_err(|e| FrontendError::decode("sequence", &origin, &e))?;
            sequence(&s, &ext)
        }
        Some(Type::Optional(_)) => {
            let o = OptionalProto::decode(bytes.as_slice())
                .map_err(|e| FrontendError::decode("optional", &origin, &e))?;
            optional(&o, &ext)
        }
        _ => {
            let t = proto::decode_tensor(&bytes, &origin)?;
            Ok(DataValue::Tensor(tensor_from_proto(&t, &ext)?))
        }
    }
}

fn sequence(s: &SequenceProto, ext: &ExternalData) -> Result<DataValue, FrontendError> {
    let mut v = Vec::new();
    for t in &s.tensor_values {
        v.push(DataValue::Tensor(tensor_from_proto(t, ext)?));
    }
    for sq in &s.sequence_values {
        v.push(sequence(sq, ext)?);
    }
    for o in &s.optional_values {
        v.push(optional(o, ext)?);
    }
    if !s.map_values.is_empty() || !s.sparse_tensor_values.is_empty() {
        return Err(FrontendError::Unsupported(
            "sequences of maps or sparse tensors".into(),
        ));
    }
    Ok(DataValue::Sequence(v))
}

fn optional(o: &OptionalProto, ext: &ExternalData) -> Result<DataValue, FrontendError> {
    let inner = if let Some(t) = &o.tensor_value {
        Some(DataValue::Tensor(tensor_from_proto(t, ext)?))
    } else if let Some(s) = &o.sequence_value {
        Some(sequence(s, ext)?)
    } else if let Some(x) = &o.optional_value {
        Some(optional(x, ext)?)
    } else if o.map_value.is_some() || o.sparse_tensor_value.is_some() {
        return Err(FrontendError::Unsupported(
            "optionals of maps or sparse tensors".into(),
        ));
    } else {
        None
    };
    Ok(DataValue::Optional(inner.map(Box::new)))
}
