//! Sparse tensors (`SparseTensorProto`) are densified at import: kiln has no sparse kernels,
//! and ONNX uses them only for constants.

use kiln_ir::tensor::checked_numel;
use kiln_ir::{DType, Tensor};

use crate::error::FrontendError;
use crate::external::ExternalData;
use crate::proto::SparseTensorProto;
use crate::tensor::tensor_from_proto;

/// Largest dense tensor a sparse one may expand to (protobuf's 2 GiB message limit).
const MAX_DENSE_BYTES: usize = i32::MAX as usize;

/// The dense tensor a `SparseTensorProto` describes.
pub fn densify(st: &SparseTensorProto, ext: &ExternalData) -> Result<Tensor, FrontendError> {
    let values = st
        .values
        .as_ref()
        .ok_or_else(|| FrontendError::Invalid("sparse tensor without values".into()))?;
    let name = values.name().to_string();
    let bad = |m: &str| FrontendError::bad_tensor(&name, m);
    let values = tensor_from_proto(values, ext)?;
    let indices = match st.indices.as_ref() {
        Some(i) => tensor_from_proto(i, ext)?,
        None => return Err(bad("sparse tensor without indices")),
    };
    let mut dims = Vec::with_capacity(st.dims.len());
    for &d in &st.dims {
        dims.push(usize::try_from(d).map_err(|_| bad("negative dim"))?);
    }
    let numel = checked_numel(&dims)
        .map_err(|_| FrontendError::too_large(&name, "dense size overflows"))?;
    let nnz = values.len();
    if values.rank() != 1 {
        return Err(bad("sparse values must be 1-D"));
    }
    let idx = indices
        .to_i64_vec()
        .ok_or_else(|| bad("sparse indices must be integers"))?;
    // Indices are either linear [nnz] or coordinates [nnz, rank].
    let linear: Vec<usize> = if indices.shape() == [nnz] {
        idx.iter()
            .map(|&i| usize::try_from(i).unwrap_or(usize::MAX))
            .collect()
    } else if indices.shape() == [nnz, dims.len()] {
        idx.chunks(dims.len().max(1))
            .map(|c| {
                c.iter()
                    .zip(&dims)
                    .try_fold(0usize, |acc, (&i, &d)| {
                        let i = usize::try_from(i).ok().filter(|&i| i < d)?;
                        acc.checked_mul(d)?.checked_add(i)
                    })
                    .unwrap_or(usize::MAX)
            })
            .collect()
    } else {
        return Err(bad("sparse indices have the wrong shape"));
    };
    // The dense size is only claimed by `dims`: refuse what protobuf itself could never
    // hold inline, before allocating anything.
    let elem = (values.dtype().bits() / 8).max(1);
    if numel.checked_mul(elem).is_none_or(|b| b > MAX_DENSE_BYTES) {
        return Err(FrontendError::too_large(
            &name,
            format!(
                "sparse tensor of dims {:?} would be over {MAX_DENSE_BYTES} bytes dense",
                st.dims
            ),
        ));
    }
    if values.dtype() == DType::String {
        let src = values.strings().unwrap_or_default();
        let mut out = vec![Vec::new(); numel];
        for (k, &i) in linear.iter().enumerate() {
            *out.get_mut(i)
                .ok_or_else(|| bad("sparse index out of range"))? = src[k].clone();
        }
        return Ok(Tensor::from_strings(dims, out)?);
    }
    let esize = values.dtype().bits() / 8;
    if esize == 0 {
        return Err(bad("sparse tensors of sub-byte types are not supported"));
    }
    let nbytes = numel
        .checked_mul(esize)
        .ok_or_else(|| FrontendError::too_large(&name, "dense size overflows"))?;
    let mut out = vec![0u8; nbytes];
    let src = values.bytes();
    for (k, &i) in linear.iter().enumerate() {
        if i >= numel {
            return Err(bad("sparse index out of range"));
        }
        out[i * esize..(i + 1) * esize].copy_from_slice(&src[k * esize..(k + 1) * esize]);
    }
    Ok(Tensor::from_bytes(values.dtype(), dims, &out)?)
}
