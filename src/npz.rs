//! NumPy `.npy` / `.npz` files: how inputs, outputs and golden data travel between kiln,
//! Python and the user. `.npz` is a zip of `.npy` members (stored or deflated).

use std::io::{Read, Write};
use std::path::Path;

use kiln_ir::{DType, Tensor};

/// Errors reading or writing NumPy files.
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn descr_dtype(d: &str) -> Option<DType> {
    // Byte order: '<' little, '|' not applicable, '=' native (little on every supported target).
    let (order, code) = d.split_at(1);
    if order == ">" {
        return None;
    }
    Some(match code {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i1" => DType::I8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "u1" => DType::U8,
        "u2" => DType::U16,
        "u4" => DType::U32,
        "u8" => DType::U64,
        "b1" => DType::Bool,
        _ => return None,
    })
}

fn dtype_descr(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        _ => return None,
    })
}

/// Parses one `.npy` file's bytes.
pub fn parse_npy(bytes: &[u8], origin: &str) -> Result<Tensor, NpzError> {
    let bad = |msg: &str| NpzError::Format {
        path: origin.to_string(),
        msg: msg.to_string(),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unsupported .npy version")),
    };
    let header = bytes
        .get(start..start.saturating_add(hlen))
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))?;
        let rest = header[i + key.len() + 2..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| bad("no descr"))?;
    let dtype = descr_dtype(descr).ok_or_else(|| bad(&format!("unsupported dtype `{descr}`")))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(bad("Fortran-ordered arrays are not supported"));
    }
    let shape_text = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let mut shape = Vec::new();
    for part in shape_text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        shape.push(part.parse::<usize>().map_err(|_| bad("bad shape"))?);
    }
    let data = &bytes[start + hlen..];
    let n = kiln_ir::tensor::checked_numel(&shape).map_err(|_| bad("shape too large"))?;
    let need = dtype
        .storage_bytes(n)
        .ok_or_else(|| bad("shape too large"))?;
    if data.len() < need {
        return Err(bad(&format!(
            "data is {} bytes, the shape needs {need}",
            data.len()
        )));
    }
    Tensor::from_bytes(dtype, shape, &data[..need]).map_err(|e| bad(&e.to_string()))
}

/// Serializes a tensor as a version-1 `.npy` file.
pub fn npy_bytes(t: &Tensor) -> Result<Vec<u8>, String> {
    let descr = dtype_descr(t.dtype())
        .ok_or_else(|| format!("{} tensors cannot be written to .npy", t.dtype()))?;
    let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 {
        format!("({},)", shape[0])
    } else {
        format!("({})", shape.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts at a multiple of 64, ending the header with a newline.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.bytes().len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(t.bytes());
    Ok(out)
}

/// Reads every array of an `.npz` file, in archive order.
pub fn read_npz(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>, NpzError> {
    let path = path.as_ref();
    let p = path.display().to_string();
    let io = |source| NpzError::Io {
        path: p.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| NpzError::Format {
        path: p.clone(),
        msg: format!("not an .npz archive: {e}"),
    })?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| NpzError::Format {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        let name = f
            .name()
            .map_err(|e| NpzError::Format {
                path: p.clone(),
                msg: e.to_string(),
            })?
            .trim_end_matches(".npy")
            .to_string();
        let mut bytes = Vec::with_capacity(f.size().min(1 << 30) as usize);
        f.read_to_end(&mut bytes).map_err(|e| NpzError::Io {
            path: p.clone(),
            source: e,
        })?;
        out.push((name.clone(), parse_npy(&bytes, &format!("{p}:{name}"))?));
    }
    Ok(out)
}

/// Writes arrays to an `.npz` file (stored, uncompressed, as `numpy.savez` does).
pub fn write_npz(path: impl AsRef<Path>, arrays: &[(String, Tensor)]) -> Result<(), NpzError> {
    let path = path.as_ref();
    let p = path.display().to_string();
    let file = std::fs::File::create(path).map_err(|source| NpzError::Io {
        path: p.clone(),
        source,
    })?;
    let mut zip = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let fmt = |e: String| NpzError::Format {
        path: p.clone(),
        msg: e,
    };
    for (name, t) in arrays {
        zip.start_file(format!("{name}.npy"), opts)
            .map_err(|e| fmt(e.to_string()))?;
        let bytes = npy_bytes(t).map_err(|e| fmt(format!("array `{name}`: {e}")))?;
        zip.write_all(&bytes).map_err(|source| NpzError::Io {
            path: p.clone(),
            source,
        })?;
    }
    zip.finish().map_err(|e| fmt(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip() {
        let t = Tensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = npy_bytes(&t).unwrap();
        assert_eq!((b.len() - t.bytes().len()) % 64, 0);
        assert_eq!(parse_npy(&b, "x").unwrap(), t);
        let s = Tensor::from_vec(vec![3], vec![1i64, 2, 3]).unwrap();
        assert_eq!(parse_npy(&npy_bytes(&s).unwrap(), "x").unwrap(), s);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_npy(b"hello world", "x").is_err());
        assert!(parse_npy(b"\x93NUMPY\x01\x00\xff\xff{", "x").is_err());
    }
}
