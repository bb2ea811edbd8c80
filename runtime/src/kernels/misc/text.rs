//! String ops (`RegexFullMatch`, `StringConcat`, `StringNormalizer`, `StringSplit`) and
//! `TfIdfVectorizer`. ONNX strings are byte strings; the ops that need characters decode
//! them as UTF-8.

use std::collections::HashMap;

use kiln_ir::{DType, Op, Tensor};

use super::KResult;
use crate::error::KernelError;
use crate::kernel::{tensor_input, BuildCx, Kernel, RunCx};
use crate::kernels::util::{broadcast_shapes, broadcast_strides, for_each_broadcast};
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    Some(match op {
        Op::RegexFullMatch(r) => {
            RegexFullMatch::new(r.pattern.as_deref()).map(|k| Box::new(k) as Box<dyn Kernel>)
        }
        Op::StringConcat(_) => Ok(Box::new(StringConcat)),
        Op::StringNormalizer(s) => StringNormalizer::new(s).map(|k| Box::new(k) as Box<dyn Kernel>),
        Op::StringSplit(s) => Ok(Box::new(StringSplit {
            delimiter: s
                .delimiter
                .clone()
                .filter(|d| !d.is_empty())
                .map(String::into_bytes),
            maxsplit: s.maxsplit.filter(|&m| m >= 0).map(|m| m as usize),
        })),
        Op::TfIdfVectorizer(t) => TfIdf::new(t).map(|k| Box::new(k) as Box<dyn Kernel>),
        _ => return None,
    })
}

fn strings_input<'a>(
    inputs: &[Option<&'a Value>],
    i: usize,
) -> KResult<(&'a Tensor, &'a [Vec<u8>])> {
    let t = tensor_input(inputs, i)?;
    let s = t.strings().ok_or_else(|| {
        KernelError::Invalid(format!(
            "input {i} must be a string tensor, got {}",
            t.dtype()
        ))
    })?;
    Ok((t, s))
}

fn utf8(s: &[u8]) -> KResult<&str> {
    std::str::from_utf8(s).map_err(|_| KernelError::Invalid("string is not valid UTF-8".into()))
}

// ---------------------------------------------------------------------------------------

struct RegexFullMatch {
    re: regex::bytes::Regex,
}

impl RegexFullMatch {
    fn new(pattern: Option<&str>) -> KResult<RegexFullMatch> {
        let p = pattern.ok_or("RegexFullMatch needs a pattern")?;
        // \A…\z anchors the whole pattern at both ends of the text (RE2's FullMatch).
        let re = regex::bytes::Regex::new(&format!(r"\A(?:{p})\z"))
            .map_err(|e| KernelError::Invalid(format!("invalid regex pattern `{p}`: {e}")))?;
        Ok(RegexFullMatch { re })
    }
}

impl Kernel for RegexFullMatch {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let (t, s) = strings_input(inputs, 0)?;
        let out = cx.tensor_bytes(DType::Bool, t.shape().to_vec(), |o| {
            for (o, x) in o.iter_mut().zip(s) {
                *o = self.re.is_match(x) as u8;
            }
        })?;
        Ok(vec![Value::Tensor(out)])
    }
}

struct StringConcat;

impl Kernel for StringConcat {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        let (a, sa) = strings_input(inputs, 0)?;
        let (b, sb) = strings_input(inputs, 1)?;
        let shape = broadcast_shapes(&[a.shape(), b.shape()])?;
        let n: usize = shape.iter().product();
        let mut out = Vec::with_capacity(n);
        let st = [
            broadcast_strides(a.shape(), &shape),
            broadcast_strides(b.shape(), &shape),
        ];
        for_each_broadcast(&shape, &st, |_, o| {
            let (x, y) = (&sa[o[0]], &sb[o[1]]);
            let mut v = Vec::with_capacity(x.len() + y.len());
            v.extend_from_slice(x);
            v.extend_from_slice(y);
            out.push(v);
        });
        Ok(vec![Value::Tensor(Tensor::from_strings(shape, out)?)])
    }
}

// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum CaseChange {
    None,
    Lower,
    Upper,
}

struct StringNormalizer {
    case: CaseChange,
    case_sensitive: bool,
    /// Stopwords as given (case-sensitive) or lowercased (case-insensitive).
    stopwords: std::collections::HashSet<Vec<u8>>,
}

impl StringNormalizer {
    fn new(s: &kiln_ir::op::StringNormalizer) -> KResult<StringNormalizer> {
        let case = match s.case_change_action.as_str() {
            "NONE" => CaseChange::None,
            "LOWER" => CaseChange::Lower,
            "UPPER" => CaseChange::Upper,
            other => {
                return Err(KernelError::Invalid(format!(
                    "unknown case_change_action `{other}`"
                )))
            }
        };
        let stopwords = s
            .stopwords
            .iter()
            .flatten()
            .map(|w| {
                if s.is_case_sensitive {
                    w.clone().into_bytes()
                } else {
                    w.to_lowercase().into_bytes()
                }
            })
            .collect();
        Ok(StringNormalizer {
            case,
            case_sensitive: s.is_case_sensitive,
            stopwords,
        })
    }

    fn is_stopword(&self, w: &[u8]) -> bool {
        if self.stopwords.is_empty() {
            return false;
        }
        if self.case_sensitive {
            self.stopwords.contains(w)
        } else {
            match std::str::from_utf8(w) {
                Ok(s) => self.stopwords.contains(s.to_lowercase().as_bytes()),
                Err(_) => self.stopwords.contains(&w.to_ascii_lowercase()),
            }
        }
    }
}

impl Kernel for StringNormalizer {
    fn run(&self, inputs: &[Option<&Value>], _cx: &mut RunCx) -> KResult<Vec<Value>> {
        let (t, s) = strings_input(inputs, 0)?;
        let two_d = match t.shape() {
            [_] => false,
            [1, _] => true,
            sh => {
                return Err(KernelError::Invalid(format!(
                    "StringNormalizer input must be [C] or [1, C], got {sh:?}"
                )))
            }
        };
        let mut out = Vec::with_capacity(s.len());
        for w in s {
            if self.is_stopword(w) {
                continue;
            }
            out.push(match self.case {
                CaseChange::None => w.clone(),
                CaseChange::Lower => match std::str::from_utf8(w) {
                    Ok(x) => x.to_lowercase().into_bytes(),
                    Err(_) => w.to_ascii_lowercase(),
                },
                CaseChange::Upper => match std::str::from_utf8(w) {
                    Ok(x) => x.to_uppercase().into_bytes(),
                    Err(_) => w.to_ascii_uppercase(),
                },
            });
        }
        if out.is_empty() {
            // Everything dropped: one empty string.
            out.push(Vec::new());
        }
        let shape = if two_d {
            vec![1, out.len()]
        } else {
            vec![out.len()]
        };
        Ok(vec![Value::Tensor(Tensor::from_strings(shape, out)?)])
    }
}

// ---------------------------------------------------------------------------------------

struct StringSplit {
    /// `None`: split on runs of whitespace.
    delimiter: Option<Vec<u8>>,
    /// `None`: no limit.
    maxsplit: Option<usize>,
}

/// Python's `str.isspace` (Unicode White_Space plus the ASCII separators 0x1c–0x1f).
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Splits like Python's `str.split(None, maxsplit)`.
fn split_whitespace(s: &str, maxsplit: Option<usize>, out: &mut Vec<Vec<u8>>) {
    let mut rest = s.trim_start_matches(is_space);
    while !rest.is_empty() {
        if maxsplit.is_some_and(|m| out.len() >= m) {
            out.push(rest.as_bytes().to_vec());
            return;
        }
        match rest.find(is_space) {
            Some(i) => {
                out.push(rest[..i].as_bytes().to_vec());
                rest = rest[i..].trim_start_matches(is_space);
            }
            None => {
                out.push(rest.as_bytes().to_vec());
                return;
            }
        }
    }
}

/// Splits like Python's `bytes.split(sep, maxsplit)` with a non-empty `sep`.
fn split_on(s: &[u8], sep: &[u8], maxsplit: Option<usize>, out: &mut Vec<Vec<u8>>) {
    let mut start = 0;
    let mut i = 0;
    let mut splits = 0;
    while i + sep.len() <= s.len() {
        if maxsplit.is_some_and(|m| splits >= m) {
            break;
        }
        if &s[i..i + sep.len()] == sep {
            out.push(s[start..i].to_vec());
            i += sep.len();
            start = i;
            splits += 1;
        } else {
            i += 1;
        }
    }
    out.push(s[start..].to_vec());
}

impl Kernel for StringSplit {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let (t, s) = strings_input(inputs, 0)?;
        let mut parts: Vec<Vec<Vec<u8>>> = Vec::with_capacity(s.len());
        for x in s {
            let mut v = Vec::new();
            match &self.delimiter {
                Some(d) => split_on(x, d, self.maxsplit, &mut v),
                None => split_whitespace(utf8(x)?, self.maxsplit, &mut v),
            }
            parts.push(v);
        }
        let width = parts.iter().map(|p| p.len()).max().unwrap_or(0);
        let mut shape = t.shape().to_vec();
        shape.push(width);
        let counts: Vec<i64> = parts.iter().map(|p| p.len() as i64).collect();
        let mut flat = Vec::with_capacity(parts.len() * width);
        for p in parts {
            let k = p.len();
            flat.extend(p);
            flat.extend(std::iter::repeat_with(Vec::new).take(width - k));
        }
        let y = Tensor::from_strings(shape, flat)?;
        let n = cx.tensor::<i64>(t.shape().to_vec(), |o| o.copy_from_slice(&counts))?;
        Ok(vec![Value::Tensor(y), Value::Tensor(n)])
    }
}

// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Weighting {
    Tf,
    Idf,
    TfIdf,
}

/// `TfIdfVectorizer`. The pool's n-grams (of the sizes kept) are stored in a trie whose
/// edges are keyed by (node, token); a token is an element's index among the distinct
/// pool items, so the inner loop neither hashes strings nor allocates.
struct TfIdf {
    mode: Weighting,
    min_n: usize,
    max_n: usize,
    max_skip: usize,
    out_size: usize,
    weights: Vec<f32>,
    ints: HashMap<i64, u32>,
    strings: HashMap<Vec<u8>, u32>,
    is_strings: bool,
    /// (parent node, token) → child node; node 0 is the root.
    edges: HashMap<(u32, u32), u32>,
    /// For each node, the output column of the n-gram ending there (if it is one).
    column: Vec<Option<usize>>,
}

impl TfIdf {
    fn new(t: &kiln_ir::op::TfIdfVectorizer) -> KResult<TfIdf> {
        let mode = match t.mode.as_str() {
            "TF" => Weighting::Tf,
            "IDF" => Weighting::Idf,
            "TFIDF" => Weighting::TfIdf,
            other => {
                return Err(KernelError::Invalid(format!(
                    "unknown TfIdfVectorizer mode `{other}`"
                )))
            }
        };
        if t.min_gram_length < 1 || t.max_gram_length < t.min_gram_length || t.max_skip_count < 0 {
            return Err(KernelError::Invalid(format!(
                "bad gram lengths {}..{} or skip count {}",
                t.min_gram_length, t.max_gram_length, t.max_skip_count
            )));
        }
        let out_size = t.ngram_indexes.iter().copied().max().map_or(0, |m| m + 1);
        if t.ngram_indexes.iter().any(|&i| i < 0) {
            return Err("ngram_indexes must be non-negative".into());
        }
        let mut k = TfIdf {
            mode,
            min_n: t.min_gram_length as usize,
            max_n: t.max_gram_length as usize,
            max_skip: t.max_skip_count as usize,
            out_size: out_size as usize,
            weights: t.weights.clone().unwrap_or_default(),
            ints: HashMap::new(),
            strings: HashMap::new(),
            is_strings: t.pool_strings.is_some(),
            edges: HashMap::new(),
            column: vec![None],
        };
        // Pool items as tokens.
        let tokens: Vec<u32> = match (&t.pool_int64s, &t.pool_strings) {
            (Some(p), None) => p
                .iter()
                .map(|&x| {
                    let n = k.ints.len() as u32;
                    *k.ints.entry(x).or_insert(n)
                })
                .collect(),
            (None, Some(p)) => p
                .iter()
                .map(|x| {
                    let n = k.strings.len() as u32;
                    *k.strings.entry(x.clone().into_bytes()).or_insert(n)
                })
                .collect(),
            _ => return Err("exactly one of pool_int64s and pool_strings must be set".into()),
        };
        let total = tokens.len();
        let mut ngram_id = 0usize; // index into ngram_indexes
        for (i, &start) in t.ngram_counts.iter().enumerate() {
            let n = i + 1;
            let end = t.ngram_counts.get(i + 1).map_or(total as i64, |&e| e);
            if start < 0 || end < start || end as usize > total {
                return Err(KernelError::Invalid(format!(
                    "bad ngram_counts {:?}",
                    t.ngram_counts
                )));
            }
            let (start, end) = (start as usize, end as usize);
            let count = (end - start) / n;
            if n < k.min_n || n > k.max_n {
                ngram_id += count;
                continue;
            }
            for g in 0..count {
                let mut node = 0u32;
                for &tok in &tokens[start + g * n..start + (g + 1) * n] {
                    let next = k.column.len() as u32;
                    node = *k.edges.entry((node, tok)).or_insert(next);
                    if node == next {
                        k.column.push(None);
                    }
                }
                let col = *t.ngram_indexes.get(ngram_id).ok_or_else(|| {
                    KernelError::Invalid("ngram_indexes is shorter than the pool's n-grams".into())
                })?;
                k.column[node as usize] = Some(col as usize);
                ngram_id += 1;
            }
        }
        Ok(k)
    }

    /// Counts the n-grams of one row of tokens (`u32::MAX` for items not in the pool).
    fn count_row(&self, row: &[u32], counts: &mut [f32]) {
        let c = row.len();
        for skip in 0..=self.max_skip {
            let d = skip + 1;
            // Unigrams do not depend on the skip: count them once.
            let min_n = if skip > 0 {
                self.min_n.max(2)
            } else {
                self.min_n
            };
            if min_n > self.max_n {
                break;
            }
            for start in 0..c {
                let mut node = 0u32;
                let mut n = 0;
                let mut p = start;
                while n < self.max_n && p < c {
                    let tok = row[p];
                    if tok == u32::MAX {
                        break;
                    }
                    match self.edges.get(&(node, tok)) {
                        Some(&next) => node = next,
                        None => break,
                    }
                    n += 1;
                    if n >= min_n {
                        if let Some(col) = self.column[node as usize] {
                            counts[col] += 1.0;
                        }
                    }
                    p += d;
                }
            }
        }
    }
}

impl Kernel for TfIdf {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let (rows, c, out_shape) = match x.shape() {
            [] => (1, 1, vec![self.out_size]),
            [c] => (1, *c, vec![self.out_size]),
            [n, c] => (*n, *c, vec![*n, self.out_size]),
            s => {
                return Err(KernelError::Invalid(format!(
                    "TfIdfVectorizer input must be [C] or [N, C], got {s:?}"
                )))
            }
        };
        let tokens: Vec<u32> = if self.is_strings {
            let s = x
                .strings()
                .ok_or("TfIdfVectorizer with pool_strings needs a string input")?;
            s.iter()
                .map(|w| self.strings.get(w).copied().unwrap_or(u32::MAX))
                .collect()
        } else {
            if !matches!(x.dtype(), DType::I32 | DType::I64) {
                return Err(KernelError::Invalid(format!(
                    "TfIdfVectorizer with pool_int64s needs an i32 or i64 input, got {}",
                    x.dtype()
                )));
            }
            let v = x.to_i64_vec().ok_or("integer input")?;
            v.iter()
                .map(|w| self.ints.get(w).copied().unwrap_or(u32::MAX))
                .collect()
        };
        let k = self.out_size;
        let y = cx.tensor::<f32>(out_shape, |o| {
            for r in 0..rows {
                let counts = &mut o[r * k..(r + 1) * k];
                self.count_row(&tokens[r * c..(r + 1) * c], counts);
                for (i, v) in counts.iter_mut().enumerate() {
                    let w = self.weights.get(i).copied();
                    *v = match self.mode {
                        Weighting::Tf => *v,
                        Weighting::Idf => {
                            if *v > 0.0 {
                                w.unwrap_or(1.0)
                            } else {
                                0.0
                            }
                        }
                        Weighting::TfIdf => *v * w.unwrap_or(1.0),
                    };
                }
            }
        })?;
        Ok(vec![Value::Tensor(y)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(shape: &[usize], v: &[&str]) -> Value {
        Value::Tensor(
            Tensor::from_strings(
                shape.to_vec(),
                v.iter().map(|s| s.as_bytes().to_vec()).collect(),
            )
            .unwrap(),
        )
    }

    fn as_strs(v: &Value) -> Vec<String> {
        v.as_tensor()
            .unwrap()
            .strings()
            .unwrap()
            .iter()
            .map(|s| String::from_utf8(s.clone()).unwrap())
            .collect()
    }

    #[test]
    fn split_like_python() {
        // " a  b c " .split() → [a, b, c]; .split(None, 1) → [a, "b c "]; "a,,b".split(",") → [a, "", b].
        let x = strs(&[3], &[" a  b c ", "a,,b", ""]);
        let k = StringSplit {
            delimiter: None,
            maxsplit: None,
        };
        let r = k.run(&[Some(&x)], &mut RunCx::new()).unwrap();
        assert_eq!(r[0].as_tensor().unwrap().shape(), &[3, 3]);
        assert_eq!(
            as_strs(&r[0]),
            vec!["a", "b", "c", "a,,b", "", "", "", "", ""]
        );
        assert_eq!(
            r[1].as_tensor().unwrap().to_vec::<i64>().unwrap(),
            vec![3, 1, 0]
        );
        let k = StringSplit {
            delimiter: None,
            maxsplit: Some(1),
        };
        let r = k.run(&[Some(&x)], &mut RunCx::new()).unwrap();
        assert_eq!(as_strs(&r[0]), vec!["a", "b c ", "a,,b", "", "", ""]);
        let k = StringSplit {
            delimiter: Some(b",".to_vec()),
            maxsplit: None,
        };
        let r = k.run(&[Some(&x)], &mut RunCx::new()).unwrap();
        assert_eq!(
            as_strs(&r[0]),
            vec![" a  b c ", "", "", "a", "", "b", "", "", ""]
        );
        assert_eq!(
            r[1].as_tensor().unwrap().to_vec::<i64>().unwrap(),
            vec![1, 3, 1]
        );
    }

    #[test]
    fn regex_is_a_full_match() {
        let k = RegexFullMatch::new(Some("a|ab")).unwrap();
        let x = strs(&[3], &["ab", "abc", "xab"]);
        let r = k.run(&[Some(&x)], &mut RunCx::new()).unwrap();
        assert_eq!(r[0].as_tensor().unwrap().bytes(), &[1, 0, 0]);
    }

    #[test]
    fn tfidf_skip_grams_by_hand() {
        // Input [94, 17, 36, 12, 28], skip 2 → bigrams [94,12] and [17,28] (spec example).
        let t = kiln_ir::op::TfIdfVectorizer {
            max_gram_length: 2,
            max_skip_count: 2,
            min_gram_length: 1,
            mode: "TF".into(),
            ngram_counts: vec![0, 2],
            ngram_indexes: vec![0, 1, 2, 3],
            pool_int64s: Some(vec![94, 17, 94, 12, 17, 28]),
            pool_strings: None,
            weights: None,
        };
        let k = TfIdf::new(&t).unwrap();
        let x = Value::Tensor(Tensor::from_vec(vec![5], vec![94i32, 17, 36, 12, 28]).unwrap());
        let y = k
            .run(&[Some(&x)], &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        // Unigrams 94, 17 once each; [94,12] at skip 2; [17,28] at skip 2.
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![1.0, 1.0, 1.0, 1.0]);
    }
}
