//! Shared kernel helpers: broadcasting, strides, axis normalization.

use crate::error::KernelError;

/// Normalizes a possibly negative axis for rank `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize, KernelError> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(KernelError::Invalid(format!(
            "axis {axis} is out of range for rank {rank}"
        )));
    }
    Ok(a as usize)
}

/// Row-major strides (in elements) of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Numpy multidirectional broadcast of shapes.
pub fn broadcast_shapes(shapes: &[&[usize]]) -> Result<Vec<usize>, KernelError> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(KernelError::Invalid(format!(
                    "shapes {shapes:?} do not broadcast"
                )));
            }
        }
    }
    Ok(out)
}

/// Strides for reading a tensor of `shape` broadcast to `out` (0 along broadcast dims).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = strides(shape);
    let off = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < off || shape[i - off] == 1 {
                0
            } else {
                own[i - off]
            }
        })
        .collect()
}

/// For each element of a tensor of shape `out` (row-major), the offsets into each input
/// given its broadcast strides. Calls `f(out_index, offsets)`.
pub fn for_each_broadcast(
    out: &[usize],
    strides: &[Vec<usize>],
    mut f: impl FnMut(usize, &[usize]),
) {
    let n: usize = out.iter().product();
    if n == 0 {
        return;
    }
    let rank = out.len();
    let mut idx = vec![0usize; rank];
    let mut offs = vec![0usize; strides.len()];
    for o in 0..n {
        f(o, &offs);
        // Odometer increment from the last axis.
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            for (k, s) in strides.iter().enumerate() {
                offs[k] += s[ax];
            }
            if idx[ax] < out[ax] {
                break;
            }
            for (k, s) in strides.iter().enumerate() {
                offs[k] -= s[ax] * out[ax];
            }
            idx[ax] = 0;
        }
    }
}

/// Applies `f` elementwise over `a` and `b` broadcast together.
pub fn broadcast_binary<A: Copy, B: Copy, O>(
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    f: impl Fn(A, B) -> O,
) -> Result<(Vec<usize>, Vec<O>), KernelError> {
    let out = broadcast_shapes(&[ash, bsh])?;
    let n: usize = out.iter().product();
    let mut v = Vec::with_capacity(n);
    if ash == bsh {
        v.extend(a.iter().zip(b).map(|(&x, &y)| f(x, y)));
    } else if b.len() == 1 && out == ash {
        let y = b[0];
        v.extend(a.iter().map(|&x| f(x, y)));
    } else if a.len() == 1 && out == bsh {
        let x = a[0];
        v.extend(b.iter().map(|&y| f(x, y)));
    } else {
        let st = [broadcast_strides(ash, &out), broadcast_strides(bsh, &out)];
        for_each_broadcast(&out, &st, |_, o| v.push(f(a[o[0]], b[o[1]])));
    }
    Ok((out, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_matches_numpy_rules() {
        assert_eq!(
            broadcast_shapes(&[&[2, 1, 3], &[4, 1]]).unwrap(),
            vec![2, 4, 3]
        );
        assert!(broadcast_shapes(&[&[2, 3], &[4]]).is_err());
        let (s, v) =
            broadcast_binary(&[1, 2, 3], &[3], &[10, 20], &[2, 1], |a: i32, b: i32| a + b).unwrap();
        assert_eq!(s, vec![2, 3]);
        assert_eq!(v, vec![11, 12, 13, 21, 22, 23]);
    }
}
