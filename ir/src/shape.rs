//! Symbolic shapes. A [`Dim`] is an integer polynomial over named dims (`batch`,
//! `sequence`, `batch*sequence`, `2*sequence+1`), which covers what transformer exports do to
//! shapes (flatten batch and sequence, concatenate, split heads) while staying canonical:
//! two dims are equal exactly when their normal forms are equal.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::dtype::DType;

/// A product of symbols (with repetition for powers), kept sorted.
type Monomial = Vec<Arc<str>>;

/// One dimension: a known number or a polynomial over named symbols.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Known(i64),
    /// Non-constant polynomial, normalized: no zero coefficients, at least one
    /// non-empty monomial.
    Expr(Arc<BTreeMap<Monomial, i64>>),
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        let mut m = BTreeMap::new();
        m.insert(vec![Arc::from(name)], 1);
        Dim::Expr(Arc::new(m))
    }

    pub fn known(&self) -> Option<i64> {
        match self {
            Dim::Known(v) => Some(*v),
            Dim::Expr(_) => None,
        }
    }

    pub fn is_known(&self) -> bool {
        matches!(self, Dim::Known(_))
    }

    fn terms(&self) -> BTreeMap<Monomial, i64> {
        match self {
            Dim::Known(0) => BTreeMap::new(),
            Dim::Known(v) => BTreeMap::from([(Vec::new(), *v)]),
            Dim::Expr(t) => (**t).clone(),
        }
    }

    fn from_terms(mut t: BTreeMap<Monomial, i64>) -> Dim {
        t.retain(|_, c| *c != 0);
        if t.keys().all(|m| m.is_empty()) {
            Dim::Known(t.get(&Vec::new()).copied().unwrap_or(0))
        } else {
            Dim::Expr(Arc::new(t))
        }
    }

    /// The single symbol this dim is, if it is one (`batch`, not `2*batch`).
    pub fn as_symbol(&self) -> Option<&str> {
        match self {
            Dim::Expr(t) if t.len() == 1 => {
                let (m, c) = t.iter().next()?;
                (m.len() == 1 && *c == 1).then(|| &*m[0])
            }
            _ => None,
        }
    }

    /// Symbols this dim mentions.
    pub fn symbols(&self) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self.terms().keys().flatten().cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    /// Exact division, when it is one in polynomial terms (`batch*seq / seq = batch`,
    /// `6*seq / 3 = 2*seq`). `None` when the quotient is not a polynomial.
    pub fn div_exact(&self, d: &Dim) -> Option<Dim> {
        if let (Dim::Known(a), Dim::Known(b)) = (self, d) {
            return (*b != 0 && a % b == 0).then(|| Dim::Known(a / b));
        }
        let dt = d.terms();
        if dt.len() != 1 {
            return (self == d).then_some(Dim::Known(1));
        }
        let (dm, dc) = dt.into_iter().next()?;
        if dc == 0 {
            return None;
        }
        let mut out = BTreeMap::new();
        for (m, c) in self.terms() {
            if c % dc != 0 {
                return None;
            }
            let mut rest = m.clone();
            for s in &dm {
                let i = rest.iter().position(|x| x == s)?;
                rest.remove(i);
            }
            out.insert(rest, c / dc);
        }
        Some(Dim::from_terms(out))
    }

    /// Evaluates with concrete values for the symbols; `None` if one is missing.
    pub fn eval(&self, env: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        match self {
            Dim::Known(v) => Some(*v),
            Dim::Expr(t) => {
                let mut acc = 0i64;
                for (m, c) in t.iter() {
                    let mut p = *c;
                    for s in m {
                        p = p.checked_mul(env(s)?)?;
                    }
                    acc = acc.checked_add(p)?;
                }
                Some(acc)
            }
        }
    }
}

impl From<i64> for Dim {
    fn from(v: i64) -> Dim {
        Dim::Known(v)
    }
}

impl From<usize> for Dim {
    fn from(v: usize) -> Dim {
        Dim::Known(v as i64)
    }
}

impl std::ops::Add for &Dim {
    type Output = Dim;
    fn add(self, o: &Dim) -> Dim {
        if let (Dim::Known(a), Dim::Known(b)) = (self, o) {
            return Dim::Known(a.wrapping_add(*b));
        }
        let mut t = self.terms();
        for (m, c) in o.terms() {
            *t.entry(m).or_insert(0) += c;
        }
        Dim::from_terms(t)
    }
}

impl std::ops::Neg for &Dim {
    type Output = Dim;
    fn neg(self) -> Dim {
        Dim::from_terms(self.terms().into_iter().map(|(m, c)| (m, -c)).collect())
    }
}

impl std::ops::Sub for &Dim {
    type Output = Dim;
    fn sub(self, o: &Dim) -> Dim {
        self + &-o
    }
}

impl std::ops::Mul for &Dim {
    type Output = Dim;
    fn mul(self, o: &Dim) -> Dim {
        if let (Dim::Known(a), Dim::Known(b)) = (self, o) {
            return Dim::Known(a.wrapping_mul(*b));
        }
        let mut t: BTreeMap<Monomial, i64> = BTreeMap::new();
        for (ma, ca) in self.terms() {
            for (mb, cb) in o.terms() {
                let mut m = ma.clone();
                m.extend(mb.iter().cloned());
                m.sort();
                *t.entry(m).or_insert(0) += ca * cb;
            }
        }
        Dim::from_terms(t)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(v) => write!(f, "{v}"),
            Dim::Expr(t) => {
                // Highest degree first, constant last: `batch*seq+1`.
                let mut terms: Vec<_> = t.iter().collect();
                terms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
                for (i, (m, c)) in terms.into_iter().enumerate() {
                    let c = *c;
                    if i > 0 {
                        f.write_str(if c < 0 { "-" } else { "+" })?;
                    } else if c < 0 {
                        f.write_str("-")?;
                    }
                    let a = c.unsigned_abs();
                    if m.is_empty() {
                        write!(f, "{a}")?;
                        continue;
                    }
                    if a != 1 {
                        write!(f, "{a}*")?;
                    }
                    for (j, s) in m.iter().enumerate() {
                        if j > 0 {
                            f.write_str("*")?;
                        }
                        f.write_str(s)?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Dims of a tensor.
pub type Shape = Vec<Dim>;

/// Formats a shape as `[batch,seq,768]`.
pub fn fmt_shape(s: &[Dim]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(","))
}

/// Shape of the concrete tensor `s`.
pub fn shape_of(s: &[usize]) -> Shape {
    s.iter().map(|&d| Dim::from(d)).collect()
}

/// Type of a tensor value: element type and shape (`None` when even the rank is unknown).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Option<Shape>,
}

/// Type of a value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Type {
    Tensor(TensorType),
    Sequence(Box<Type>),
    Optional(Box<Type>),
    Map(DType, Box<Type>),
}

impl Type {
    pub fn tensor(dtype: DType, shape: Shape) -> Type {
        Type::Tensor(TensorType {
            dtype,
            shape: Some(shape),
        })
    }

    pub fn tensor_unranked(dtype: DType) -> Type {
        Type::Tensor(TensorType { dtype, shape: None })
    }

    pub fn as_tensor(&self) -> Option<&TensorType> {
        match self {
            Type::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// Element type of a tensor, or of the tensors inside a sequence/optional.
    pub fn elem_dtype(&self) -> Option<DType> {
        match self {
            Type::Tensor(t) => Some(t.dtype),
            Type::Sequence(t) | Type::Optional(t) => t.elem_dtype(),
            Type::Map(..) => None,
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Tensor(t) => match &t.shape {
                Some(s) => write!(f, "{}{}", t.dtype, fmt_shape(s)),
                None => write!(f, "{}[*]", t.dtype),
            },
            Type::Sequence(t) => write!(f, "seq<{t}>"),
            Type::Optional(t) => write!(f, "opt<{t}>"),
            Type::Map(k, v) => write!(f, "map<{k},{v}>"),
        }
    }
}

impl fmt::Debug for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_arithmetic_is_canonical() {
        let b = Dim::sym("batch");
        let s = Dim::sym("seq");
        let bs = &b * &s;
        assert_eq!(bs.to_string(), "batch*seq");
        assert_eq!(&s * &b, bs);
        assert_eq!(bs.div_exact(&s), Some(b.clone()));
        assert_eq!((&s + &Dim::Known(1)).to_string(), "seq+1");
        assert_eq!((&(&s + &s) - &s), s);
        assert_eq!(&s - &s, Dim::Known(0));
        assert_eq!(
            (&Dim::Known(6) * &s)
                .div_exact(&Dim::Known(3))
                .unwrap()
                .to_string(),
            "2*seq"
        );
        assert_eq!((&Dim::Known(6) * &s).div_exact(&Dim::Known(4)), None);
        assert_eq!(s.div_exact(&b), None);
        assert_eq!((&Dim::Known(1) - &s).to_string(), "-seq+1");
        let e = &(&b * &s) + &Dim::Known(3);
        assert_eq!(
            e.eval(&|n| Some(if n == "batch" { 2 } else { 5 })),
            Some(13)
        );
    }
}
