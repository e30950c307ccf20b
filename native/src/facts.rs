//! The sink's fact decoder: incident-facts JSON messages (streams/fact_codec.py) -> Arrow columns.
//!
//! Only the canonical form is read: the exact bytes the worker writes (fields in the dataclasses'
//! order, no spaces, ints and booleans as json writes them, strings as encode_basestring writes
//! them). Anything else — another field order, spaces, a float, an unknown field — makes the
//! whole batch `None`, and sinks/loader.py reads it with pyarrow.json as before (then one by one,
//! with reasons for the dead-letter topic). So this may only ever refuse more than the pyarrow
//! path, never accept something it would not; tests/test_native_facts.py checks both with
//! hypothesis. Columns come back as Arrow buffers (validity bitmap, values or offsets + data) for
//! `pyarrow.Array.from_buffers`.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Str,
    Int,
    Bool,
}

struct Column {
    ty: Ty,
    nullable: bool,
    valid: Vec<bool>,
    ints: Vec<i64>,
    offsets: Vec<i32>,
    data: Vec<u8>,
}

impl Column {
    fn new(ty: Ty, nullable: bool) -> Column {
        Column { ty, nullable, valid: Vec::new(), ints: Vec::new(), offsets: vec![0], data: Vec::new() }
    }

    fn push_null(&mut self) -> bool {
        if !self.nullable {
            return false;
        }
        self.valid.push(false);
        match self.ty {
            Ty::Str => self.offsets.push(self.data.len() as i32),
            _ => self.ints.push(0),
        }
        true
    }
}

struct Kind {
    names: Vec<String>,
    cols: Vec<Column>,
    rows: usize,
}

struct P<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> P<'a> {
    fn lit(&mut self, s: &[u8]) -> bool {
        if self.b[self.p..].starts_with(s) {
            self.p += s.len();
            true
        } else {
            false
        }
    }

    /// A JSON string at p (opening quote included) appended to `out`; None if malformed.
    fn string(&mut self, out: &mut Vec<u8>) -> Option<()> {
        crate::json::unescape(self.b, &mut self.p, out, false)
    }

    fn int(&mut self) -> Option<i64> {
        let start = self.p;
        if self.b.get(self.p) == Some(&b'-') {
            self.p += 1;
        }
        let digits = self.p;
        while self.p < self.b.len() && self.b[self.p].is_ascii_digit() {
            self.p += 1;
        }
        let n = self.p - digits;
        // json writes no leading zeros and no "-0"; anything else is not canonical
        if n == 0 || (n > 1 && self.b[digits] == b'0') || (self.p - start == 2 && &self.b[start..self.p] == b"-0") {
            return None;
        }
        if matches!(self.b.get(self.p), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(&self.b[start..self.p]).ok()?.parse().ok()
    }

    /// One object whose keys are exactly `kind.names` in order; values appended to its columns.
    fn object(&mut self, kind: &mut Kind) -> Option<()> {
        for i in 0..kind.names.len() {
            if !self.lit(if i == 0 { b"{\"" } else { b",\"" }) || !self.lit(kind.names[i].as_bytes()) || !self.lit(b"\":")
            {
                return None;
            }
            let col = &mut kind.cols[i];
            if self.lit(b"null") {
                if !col.push_null() {
                    return None;
                }
                continue;
            }
            match col.ty {
                Ty::Str => {
                    self.string(&mut col.data)?;
                    if col.data.len() > i32::MAX as usize {
                        return None;
                    }
                    col.offsets.push(col.data.len() as i32);
                }
                Ty::Int => {
                    let v = self.int()?;
                    col.ints.push(v);
                }
                Ty::Bool => {
                    let v = if self.lit(b"true") {
                        1
                    } else if self.lit(b"false") {
                        0
                    } else {
                        return None;
                    };
                    col.ints.push(v);
                }
            }
            col.valid.push(true);
        }
        if !self.lit(b"}") {
            return None;
        }
        kind.rows += 1;
        Some(())
    }
}

fn kind_of(spec: &Bound<'_, PyList>) -> PyResult<Kind> {
    let mut names = Vec::new();
    let mut cols = Vec::new();
    for item in spec.iter() {
        let (name, ty, nullable): (String, String, bool) = item.extract()?;
        let ty = match ty.as_str() {
            "str" => Ty::Str,
            "int" => Ty::Int,
            "bool" => Ty::Bool,
            other => return Err(pyo3::exceptions::PyValueError::new_err(format!("unknown column type {other}"))),
        };
        names.push(name);
        cols.push(Column::new(ty, nullable));
    }
    Ok(Kind { names, cols, rows: 0 })
}

fn bitmap(valid: &[bool]) -> (Vec<u8>, usize) {
    let mut out = vec![0u8; valid.len().div_ceil(8)];
    let mut nulls = 0;
    for (i, v) in valid.iter().enumerate() {
        if *v {
            out[i / 8] |= 1 << (i % 8);
        } else {
            nulls += 1;
        }
    }
    (out, nulls)
}

fn columns<'py>(py: Python<'py>, kind: &Kind) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for c in &kind.cols {
        let (valid, nulls) = bitmap(&c.valid);
        let valid = PyBytes::new(py, &valid);
        match c.ty {
            Ty::Str => {
                let offsets: Vec<u8> = c.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
                out.append((nulls, valid, PyBytes::new(py, &offsets), PyBytes::new(py, &c.data)))?;
            }
            Ty::Int => {
                let values: Vec<u8> = c.ints.iter().flat_map(|v| v.to_le_bytes()).collect();
                out.append((nulls, valid, PyBytes::new(py, &values), py.None()))?;
            }
            Ty::Bool => {
                let bits: Vec<bool> = c.ints.iter().map(|v| *v != 0).collect();
                let (values, _) = bitmap(&bits);
                out.append((nulls, valid, PyBytes::new(py, &values), py.None()))?;
            }
        }
    }
    Ok(out)
}

/// ``values`` (fact messages) -> (rows, columns) per kind (incident, handover, call), each column
/// (null count, validity bitmap, values or offsets, string data or None); None if any message is
/// not in the canonical form. ``specs``: per kind, [(name, "str"|"int"|"bool", nullable)].
#[pyfunction]
pub fn decode_facts<'py>(py: Python<'py>, values: &Bound<'py, PyList>, incident: &Bound<'py, PyList>,
                         handover: &Bound<'py, PyList>, call: &Bound<'py, PyList>)
                         -> PyResult<Option<Bound<'py, PyList>>> {
    let mut kinds = [kind_of(incident)?, kind_of(handover)?, kind_of(call)?];
    let bound: Vec<Bound<'py, PyAny>> = values.iter().collect();
    let mut raw: Vec<&[u8]> = Vec::with_capacity(bound.len());
    for v in &bound {
        match v.downcast::<PyBytes>() {
            Ok(b) => raw.push(b.as_bytes()),
            Err(_) => return Ok(None),
        }
    }
    let ok = py.allow_threads(|| {
        for b in &raw {
            let mut p = P { b, p: 0 };
            if !p.lit(b"{\"f\":1,\"kind\":\"") {
                return false;
            }
            let good = if p.lit(b"incident\",\"incident\":") {
                p.object(&mut kinds[0]).is_some() && p.lit(b",\"handover\":")
                    && (p.lit(b"null") || p.object(&mut kinds[1]).is_some())
            } else if p.lit(b"call_111\",\"call\":") {
                p.object(&mut kinds[2]).is_some()
            } else {
                false
            };
            if !good || !p.lit(b"}") || p.p != b.len() {
                return false;
            }
        }
        true
    });
    if !ok {
        return Ok(None);
    }
    let out = PyList::empty(py);
    for k in &kinds {
        out.append((k.rows, columns(py, k)?))?;
    }
    Ok(Some(out))
}
