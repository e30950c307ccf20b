//! amb_native: the columnar fast path of `amb publish`.
//!
//! Takes the string columns of a trust export (Arrow `string` arrays: int32 offsets + UTF-8 data,
//! as pyarrow's CSV reader makes them), decides per row whether the row is *surely valid* under
//! domain/validation.py, and Avro-encodes the surely valid rows to exactly the bytes amb/codec.py
//! writes (single-object framing of schemas/trust_event.avsc). A row it is not sure about gets
//! `None`: the Python side re-reads it with domain.validation.parse_record, which gives the exact
//! reasons (or finds it valid after all). So this code may only ever be *stricter* than the Python
//! rules, never looser; tests/test_columnar.py checks that with hypothesis.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

mod facts;
mod json;
mod worker;

/// Column slots, in this order (amb/columnar.py's NATIVE_FIELDS must match).
const EVENT_ID: usize = 0;
const EVENT_TYPE: usize = 1;
const TRUST: usize = 2;
const INCIDENT_ID: usize = 3;
const EVENT_TIME: usize = 4;
const CLOCK_START: usize = 5;
const CATEGORY: usize = 6;
const SOURCE: usize = 7;
const POSTCODE: usize = 8;
const LAT: usize = 9;
const LON: usize = 10;
const EASTING: usize = 11;
const NORTHING: usize = 12;
const DISPOSITION: usize = 13;
const DESTINATION_SITE: usize = 14;
const SITE: usize = 15;
const ARRIVED: usize = 16;
const HANDOVER_AT: usize = 17;
const CLEAR_AT: usize = 18;
const CALL_ID: usize = 19;
const DISPOSITION_AMBULANCE: usize = 20;
const LINKED_INCIDENT_ID: usize = 21;
const PRODUCED_TIME: usize = 22;
const SCHEMA_VERSION: usize = 23;
const LOCATION: usize = 24;
const N_FIELDS: usize = 25;

const DAY_MS: i64 = 86_400_000;
const MIN_TIME_MS: i64 = 946_684_800_000; // 2000-01-01T00:00:00Z
const MAX_ID_LEN: usize = 64;
const MAX_CODE_LEN: usize = 16;
const MAX_POSTCODE_LEN: usize = 16;

// Avro enum symbol indexes of schemas/trust_event.avsc (index 0 is "unknown" in every enum).
const EVENT_TYPES: [&[u8]; 6] = [
    b"incident_created", b"category_changed", b"response_arrived", b"disposition", b"handover", b"call_111",
];
const ET_INCIDENT_CREATED: u8 = 1;
const ET_CATEGORY_CHANGED: u8 = 2;
const ET_DISPOSITION: u8 = 4;
const ET_HANDOVER: u8 = 5;
const ET_CALL_111: u8 = 6;
const CATEGORIES: [&[u8]; 4] = [b"C1", b"C2", b"C3", b"C4"];
const SOURCES: [&[u8]; 2] = [b"999", b"111"];
const DISPOSITIONS: [&[u8]; 4] = [b"hear_and_treat", b"see_and_treat", b"conveyed_ed", b"conveyed_elsewhere"];

struct Col<'a> {
    offsets: &'a [u8],
    data: &'a [u8],
    base: usize,
}

impl<'a> Col<'a> {
    #[inline]
    fn off(&self, i: usize) -> usize {
        // SAFETY of callers: check_bounds ran first, so base + i + 1 < offsets.len() / 4.
        let k = (self.base + i) * 4;
        let b = unsafe { self.offsets.get_unchecked(k..k + 4) };
        i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    }
    #[inline]
    fn get(&self, i: usize) -> &'a [u8] {
        // bounds (monotone offsets within data) were checked for every row up front
        let (a, b) = (self.off(i), self.off(i + 1));
        unsafe { self.data.get_unchecked(a..b) }
    }
    fn check_bounds(&self, n: usize) -> bool {
        if (self.base + n + 1) * 4 > self.offsets.len() {
            return false;
        }
        let mut prev = self.off(0);
        for i in 0..=n {
            let o = self.off(i);
            if o < prev || o > self.data.len() {
                return false;
            }
            prev = o;
        }
        true
    }
}

#[inline]
fn lookup(v: &[u8], table: &[&[u8]]) -> Option<u8> {
    table.iter().position(|s| *s == v).map(|i| (i + 1) as u8)
}

#[inline]
fn n_chars(v: &[u8]) -> usize {
    v.iter().filter(|&&b| (b & 0xC0) != 0x80).count()
}

/// 1..=max characters and at least one ASCII letter or digit (so never blank to Python's isspace).
#[inline]
fn ok_id(v: &[u8], max: usize) -> bool {
    !v.is_empty() && n_chars(v) <= max && v.iter().any(|b| b.is_ascii_alphanumeric())
}

#[inline]
fn ok_site(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_CODE_LEN && v.iter().all(|b| b.is_ascii_alphanumeric())
}

fn ok_uuid(v: &[u8]) -> bool {
    if v.len() != 36 {
        return false;
    }
    v.iter().enumerate().all(|(i, &b)| match i {
        8 | 13 | 18 | 23 => b == b'-',
        _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
    })
}

#[inline]
fn digits(v: &[u8], a: usize, b: usize) -> Option<i64> {
    let mut n: i64 = 0;
    for &c in &v[a..b] {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (c - b'0') as i64;
    }
    Some(n)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+HH:MM|-HH:MM)` -> epoch ms, as domain.events.parse_time
/// (datetime.fromisoformat, floor to the millisecond). Anything else: None (the slow path judges).
fn parse_time(v: &[u8]) -> Option<i64> {
    if v.len() < 20 || v[4] != b'-' || v[7] != b'-' || v[10] != b'T' || v[13] != b':' || v[16] != b':' {
        return None;
    }
    let year = digits(v, 0, 4)?;
    let month = digits(v, 5, 7)?;
    let day = digits(v, 8, 10)?;
    let hour = digits(v, 11, 13)?;
    let minute = digits(v, 14, 16)?;
    let second = digits(v, 17, 19)?;
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month)
        || hour > 23 || minute > 59 || second > 59
    {
        return None;
    }
    let mut p = 19;
    let mut micros: i64 = 0;
    if v[p] == b'.' {
        let start = p + 1;
        let mut end = start;
        while end < v.len() && v[end].is_ascii_digit() {
            end += 1;
        }
        let nd = end - start;
        if nd == 0 || nd > 6 {
            return None;
        }
        micros = digits(v, start, end)? * 10_i64.pow((6 - nd) as u32);
        p = end;
    }
    let offset_s: i64 = match v.get(p) {
        Some(b'Z') if v.len() == p + 1 => 0,
        Some(&sign) if (sign == b'+' || sign == b'-') && v.len() == p + 6 && v[p + 3] == b':' => {
            let oh = digits(v, p + 1, p + 3)?;
            let om = digits(v, p + 4, p + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let s = oh * 3600 + om * 60;
            if sign == b'+' { s } else { -s }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some((secs * 1_000_000 + micros).div_euclid(1000))
}

/// `-?[0-9]+(\.[0-9]+)?`, at most 32 bytes: Rust's and Python's float() both round correctly, so
/// the double is the same. Anything else (exponents, spaces, inf, nan...): None.
fn parse_decimal(v: &[u8]) -> Option<f64> {
    if v.is_empty() || v.len() > 32 {
        return None;
    }
    let body = if v[0] == b'-' { &v[1..] } else { v };
    let mut parts = body.splitn(2, |&b| b == b'.');
    let int = parts.next()?;
    if int.is_empty() || !int.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if let Some(frac) = parts.next() {
        if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
    }
    std::str::from_utf8(v).ok()?.parse::<f64>().ok()
}

// ---- Avro binary writers ----------------------------------------------------------------------

#[inline]
fn put_uvarint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[inline]
fn put_long(out: &mut Vec<u8>, n: i64) {
    put_uvarint(out, ((n << 1) ^ (n >> 63)) as u64);
}

#[inline]
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_uvarint(out, (s.len() as u64) << 1);
    out.extend_from_slice(s);
}

/// ["null", string]: absent (empty) -> 0x00, else 0x02 + string.
#[inline]
fn put_opt_str(out: &mut Vec<u8>, s: &[u8]) {
    if s.is_empty() {
        out.push(0);
    } else {
        out.push(2);
        put_str(out, s);
    }
}

#[inline]
fn put_opt_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => out.push(0),
        Some(n) => {
            out.push(2);
            put_long(out, n);
        }
    }
}

#[inline]
fn put_opt_enum(out: &mut Vec<u8>, idx: u8) {
    if idx == 0 {
        out.push(0);
    } else {
        out.push(2);
        out.push(idx << 1);
    }
}

#[inline]
fn put_opt_double(out: &mut Vec<u8>, v: Option<f64>) {
    match v {
        None => out.push(0),
        Some(x) => {
            out.push(2);
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
}

const EMPTY: &[u8] = b"";

struct Row<'a> {
    v: [&'a [u8]; N_FIELDS],
}

impl<'a> Row<'a> {
    #[inline]
    fn get(&self, f: usize) -> &'a [u8] {
        self.v[f]
    }
}

/// Optional time field: Ok(None) when absent, Ok(Some(ms)) when valid and within [lo, hi], Err when
/// the row is not surely valid.
#[inline]
fn opt_time(v: &[u8], lo: i64, hi: i64) -> Result<Option<i64>, ()> {
    if v.is_empty() {
        return Ok(None);
    }
    match parse_time(v) {
        Some(t) if lo <= t && t <= hi => Ok(Some(t)),
        _ => Err(()),
    }
}

#[inline]
fn opt_pair(a: &[u8], b: &[u8], ra: (f64, f64), rb: (f64, f64)) -> Result<(Option<f64>, Option<f64>), ()> {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ok((None, None)),
        (false, false) => {
            let x = parse_decimal(a).ok_or(())?;
            let y = parse_decimal(b).ok_or(())?;
            if ra.0 <= x && x <= ra.1 && rb.0 <= y && y <= rb.1 {
                Ok((Some(x), Some(y)))
            } else {
                Err(())
            }
        }
        _ => Err(()),
    }
}

/// Judge one row and, when surely valid, append its encoding (without header) to `out`.
fn encode_row(r: &Row, trust: &[u8], now_ms: i64, out: &mut Vec<u8>) -> Result<(), ()> {
    let lo = MIN_TIME_MS;
    let hi = now_ms + DAY_MS;
    if !r.get(PRODUCED_TIME).is_empty() || !r.get(SCHEMA_VERSION).is_empty() || !r.get(LOCATION).is_empty() {
        return Err(());
    }
    let event_id = r.get(EVENT_ID);
    if !ok_uuid(event_id) {
        return Err(());
    }
    let et = lookup(r.get(EVENT_TYPE), &EVENT_TYPES).ok_or(())?;
    if r.get(TRUST) != trust {
        return Err(());
    }
    let incident = r.get(INCIDENT_ID);
    if !ok_id(incident, MAX_ID_LEN) {
        return Err(());
    }
    let event_time = parse_time(r.get(EVENT_TIME)).ok_or(())?;
    if !(lo <= event_time && event_time <= hi) {
        return Err(());
    }
    let clock_start = opt_time(r.get(CLOCK_START), lo, hi)?;
    let cat = r.get(CATEGORY);
    let category = if cat.is_empty() { 0 } else { lookup(cat, &CATEGORIES).ok_or(())? };
    let src = r.get(SOURCE);
    let source = if src.is_empty() { 0 } else { lookup(src, &SOURCES).ok_or(())? };
    let postcode = r.get(POSTCODE);
    if !postcode.is_empty() && !ok_id(postcode, MAX_POSTCODE_LEN) {
        return Err(());
    }
    let (lat, lon) = opt_pair(r.get(LAT), r.get(LON), (49.0, 61.5), (-9.0, 2.5))?;
    let (easting, northing) = opt_pair(r.get(EASTING), r.get(NORTHING), (0.0, 700_000.0), (0.0, 1_300_000.0))?;
    let disp = r.get(DISPOSITION);
    let disposition = if disp.is_empty() { 0 } else { lookup(disp, &DISPOSITIONS).ok_or(())? };
    let destination = r.get(DESTINATION_SITE);
    if !destination.is_empty() && !ok_site(destination) {
        return Err(());
    }
    if (disposition == 3 || disposition == 4) && destination.is_empty() {
        return Err(());
    }
    let site = r.get(SITE);
    if !site.is_empty() && !ok_site(site) {
        return Err(());
    }
    let arrived = opt_time(r.get(ARRIVED), lo, hi)?;
    let first = arrived.unwrap_or(lo);
    let handover_at = opt_time(r.get(HANDOVER_AT), first, hi)?;
    let clear_at = opt_time(r.get(CLEAR_AT), first, hi)?;
    let call_id = r.get(CALL_ID);
    if !call_id.is_empty() && (!ok_id(call_id, MAX_ID_LEN) || (et == ET_CALL_111 && call_id != incident)) {
        return Err(());
    }
    let linked = r.get(LINKED_INCIDENT_ID);
    if !linked.is_empty() && !ok_id(linked, MAX_ID_LEN) {
        return Err(());
    }
    let amb = r.get(DISPOSITION_AMBULANCE);
    let ambulance: Option<bool> = if amb.is_empty() {
        None
    } else if amb.eq_ignore_ascii_case(b"true") {
        Some(true)
    } else if amb.eq_ignore_ascii_case(b"false") {
        Some(false)
    } else {
        return Err(());
    };
    // domain.validation.REQUIRED
    let required_ok = match et {
        ET_INCIDENT_CREATED => clock_start.is_some() && category != 0 && source != 0,
        ET_CATEGORY_CHANGED => category != 0,
        ET_DISPOSITION => disposition != 0,
        ET_HANDOVER => !site.is_empty() && arrived.is_some(),
        ET_CALL_111 => !call_id.is_empty() && ambulance.is_some(),
        _ => true,
    };
    if !required_ok {
        return Err(());
    }

    // -- encode, in schemas/trust_event.avsc field order --
    put_str(out, event_id);
    out.push(et << 1);
    put_str(out, trust);
    put_str(out, incident);
    put_long(out, event_time);
    put_long(out, now_ms); // produced_time: the batch's clock reading (absent in the row)
    out.push(2); // schema_version 1
    put_opt_long(out, clock_start);
    put_opt_enum(out, category);
    put_opt_enum(out, source);
    if postcode.is_empty() && lat.is_none() && easting.is_none() {
        out.push(0);
    } else {
        out.push(2);
        put_opt_str(out, postcode);
        put_opt_double(out, lat);
        put_opt_double(out, lon);
        put_opt_double(out, easting);
        put_opt_double(out, northing);
    }
    put_opt_enum(out, disposition);
    put_opt_str(out, destination);
    put_opt_str(out, site);
    put_opt_long(out, arrived);
    put_opt_long(out, handover_at);
    put_opt_long(out, clear_at);
    put_opt_str(out, call_id);
    match ambulance {
        None => out.push(0),
        Some(b) => {
            out.push(2);
            out.push(b as u8);
        }
    }
    put_opt_str(out, linked);
    Ok(())
}

fn slice_of(buf: &PyBuffer<u8>) -> PyResult<&[u8]> {
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err("column buffer is not contiguous"));
    }
    // SAFETY: the PyBuffer is held (and the exporter keeps the memory alive and unchanged) for the
    // whole call; u8 has no alignment or validity requirements.
    Ok(unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) })
}

/// encode_rows(columns, n, trust, now_ms, header) -> (values, keys, slow)
///
/// `columns`: N_FIELDS entries, each None (column absent: every value empty) or
/// (offsets, data, offset) of an Arrow `string` array without nulls (empty string = absent).
/// Returns two lists of length n: the framed message value and the key `trust:incident_id` (bytes)
/// of each surely valid row, None for the rows the Python rules must judge; `slow` lists those rows.
#[pyfunction]
fn encode_rows<'py>(
    py: Python<'py>,
    columns: Vec<Option<(PyBuffer<u8>, PyBuffer<u8>, usize)>>,
    n: usize,
    trust: &str,
    now_ms: i64,
    header: &[u8],
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>, Vec<usize>)> {
    if columns.len() != N_FIELDS {
        return Err(PyValueError::new_err(format!("expected {N_FIELDS} columns, got {}", columns.len())));
    }
    let mut cols: Vec<Option<Col>> = Vec::with_capacity(N_FIELDS);
    for c in &columns {
        match c {
            None => cols.push(None),
            Some((offsets, data, base)) => {
                let col = Col { offsets: slice_of(offsets)?, data: slice_of(data)?, base: *base };
                if !col.check_bounds(n) {
                    return Err(PyValueError::new_err("column offsets out of bounds"));
                }
                cols.push(Some(col));
            }
        }
    }
    let trust_b = trust.as_bytes();
    let values = PyList::empty(py);
    let keys = PyList::empty(py);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    let mut key: Vec<u8> = Vec::with_capacity(80);
    let none = py.None();
    let mut slow: Vec<usize> = Vec::new();
    for i in 0..n {
        let mut row = Row { v: [EMPTY; N_FIELDS] };
        for (f, c) in cols.iter().enumerate() {
            if let Some(c) = c {
                row.v[f] = c.get(i);
            }
        }
        out.clear();
        out.extend_from_slice(header);
        if encode_row(&row, trust_b, now_ms, &mut out).is_ok() {
            key.clear();
            key.extend_from_slice(trust_b);
            key.push(b':');
            key.extend_from_slice(row.get(INCIDENT_ID));
            values.append(PyBytes::new(py, &out))?;
            keys.append(PyBytes::new(py, &key))?;
        } else {
            values.append(&none)?;
            keys.append(&none)?;
            slow.push(i);
        }
    }
    Ok((values, keys, slow))
}

/// Python's csv.field_size_limit() default: a longer cell is an error on the row path.
const FIELD_SIZE_LIMIT: usize = 131_072;

/// One cell of a line: (in the unescape arena?, start, end).
type Cell = (bool, usize, usize);

/// Split the line starting at `i` into cells as Python's csv module (excel dialect) reads it, for
/// the regular spellings only: unquoted cells without quotes, or cells wholly in double quotes with
/// "" for a quote inside and no line break. Returns (line end without its terminator, next line
/// start); anything irregular is an Err naming it (the row path then reads the file).
fn split_line(data: &[u8], mut i: usize, cells: &mut Vec<Cell>, arena: &mut Vec<u8>)
              -> Result<(usize, usize), &'static str> {
    cells.clear();
    arena.clear();
    let n = data.len();
    loop {
        if i < n && data[i] == b'"' {
            i += 1;
            let start = i;
            let mut escaped = false;
            loop {
                match data.get(i) {
                    None => return Err("unterminated quoted cells"),
                    Some(b'"') => {
                        if data.get(i + 1) == Some(&b'"') {
                            escaped = true;
                            i += 2;
                        } else {
                            break;
                        }
                    }
                    Some(b'\n') | Some(b'\r') => return Err("line breaks inside quoted cells"),
                    Some(_) => i += 1,
                }
            }
            let end = i;
            i += 1; // the closing quote
            if end - start > FIELD_SIZE_LIMIT {
                return Err("cells longer than the csv module's field size limit");
            }
            if escaped {
                let a = arena.len();
                let mut k = start;
                while k < end {
                    arena.push(data[k]);
                    k += if data[k] == b'"' { 2 } else { 1 };
                }
                cells.push((true, a, arena.len()));
            } else {
                cells.push((false, start, end));
            }
            match data.get(i) {
                Some(b',') => i += 1,
                Some(b'\n') => return Ok((i, i + 1)),
                Some(b'\r') if data.get(i + 1) == Some(&b'\n') => return Ok((i, i + 2)),
                None => return Ok((i, i)),
                _ => return Err("irregular quotes"),
            }
        } else {
            let start = i;
            while i < n && !matches!(data[i], b',' | b'\n' | b'\r' | b'"') {
                i += 1;
            }
            if i - start > FIELD_SIZE_LIMIT {
                return Err("cells longer than the csv module's field size limit");
            }
            match data.get(i) {
                Some(b'"') => return Err("irregular quotes"),
                Some(b',') => {
                    cells.push((false, start, i));
                    i += 1;
                }
                Some(b'\n') => {
                    cells.push((false, start, i));
                    return Ok((i, i + 1));
                }
                Some(b'\r') => {
                    if data.get(i + 1) != Some(&b'\n') {
                        return Err("lone carriage returns");
                    }
                    cells.push((false, start, i));
                    return Ok((i, i + 2));
                }
                _ => {
                    cells.push((false, start, i));
                    return Ok((i, i));
                }
            }
        }
    }
}

/// Why a CSV file cannot be read by split_line exactly as Python's csv module reads it, or None
/// when it can. `data` starts at the header line (no BOM).
fn csv_problem(data: &[u8], ncols: usize) -> Option<&'static str> {
    if std::str::from_utf8(data).is_err() {
        return Some("not UTF-8");
    }
    if data.contains(&0) {
        return Some("NUL bytes");
    }
    let mut cells: Vec<Cell> = Vec::with_capacity(32);
    let mut arena: Vec<u8> = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        match split_line(data, pos, &mut cells, &mut arena) {
            Err(why) => return Some(why),
            Ok((end, next)) => {
                if end == pos {
                    return Some("blank lines");
                }
                if cells.len() != ncols {
                    return Some("lines whose cell count is not the header's");
                }
                pos = next;
            }
        }
    }
    None
}

/// csv_problem(data, ncols) -> None when the file is plain (see amb/columnar.py), else why not.
#[pyfunction]
fn csv_problem_of(data: PyBuffer<u8>, ncols: usize) -> PyResult<Option<&'static str>> {
    Ok(csv_problem(slice_of(&data)?, ncols))
}

/// encode_csv(data, start, max_rows, slots, trust, now_ms, header) -> (values, keys, slow, end)
///
/// Reads up to `max_rows` lines of a plain CSV file (checked by csv_problem_of) from byte `start`,
/// `slots[f]` being the cell index of native field f (None: no such column). As encode_rows, but
/// `slow` lists (row, line start, line end) so Python can re-read the row with its csv module; `end` is where the next
/// call starts.
#[pyfunction]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn encode_csv<'py>(
    py: Python<'py>,
    data: PyBuffer<u8>,
    start: usize,
    max_rows: usize,
    slots: Vec<Option<usize>>,
    trust: &str,
    now_ms: i64,
    header: &[u8],
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>, Vec<(usize, usize, usize)>, usize)> {
    if slots.len() != N_FIELDS {
        return Err(PyValueError::new_err(format!("expected {N_FIELDS} slots, got {}", slots.len())));
    }
    let data = slice_of(&data)?;
    let ncells = slots.iter().flatten().max().map_or(0, |m| m + 1);
    let trust_b = trust.as_bytes();
    let values = PyList::empty(py);
    let keys = PyList::empty(py);
    let none = py.None();
    let mut slow = Vec::new();
    let mut out: Vec<u8> = Vec::with_capacity(512);
    let mut key: Vec<u8> = Vec::with_capacity(80);
    let mut cells: Vec<Cell> = Vec::with_capacity(32);
    let mut arena: Vec<u8> = Vec::with_capacity(256);
    let mut pos = start.min(data.len());
    let mut row_i = 0;
    while row_i < max_rows && pos < data.len() {
        let line_start = pos;
        let (line_end, next) = split_line(data, pos, &mut cells, &mut arena)
            .map_err(|why| PyValueError::new_err(format!("{why} (check csv_problem_of first)")))?;
        pos = next;
        if cells.len() < ncells {
            return Err(PyValueError::new_err("a line has fewer cells than the header (check csv_problem_of first)"));
        }
        let mut row = Row { v: [EMPTY; N_FIELDS] };
        for (f, slot) in slots.iter().enumerate() {
            if let Some(c) = slot {
                let (in_arena, a, b) = cells[*c];
                row.v[f] = if in_arena { &arena[a..b] } else { &data[a..b] };
            }
        }
        out.clear();
        out.extend_from_slice(header);
        if encode_row(&row, trust_b, now_ms, &mut out).is_ok() {
            key.clear();
            key.extend_from_slice(trust_b);
            key.push(b':');
            key.extend_from_slice(row.get(INCIDENT_ID));
            values.append(PyBytes::new(py, &out))?;
            keys.append(PyBytes::new(py, &key))?;
        } else {
            values.append(&none)?;
            keys.append(&none)?;
            slow.push((row_i, line_start, line_end));
        }
        row_i += 1;
    }
    Ok((values, keys, slow, pos))
}

/// Parse one time as the fast path does (for tests): epoch ms or None.
#[pyfunction]
fn parse_time_ms(text: &str) -> Option<i64> {
    parse_time(text.as_bytes())
}

#[pymodule]
fn amb_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_rows, m)?)?;
    m.add_class::<worker::WorkerCore>()?;
    m.add_function(wrap_pyfunction!(facts::decode_facts, m)?)?;
    m.add_class::<worker::Batch>()?;
    m.add_function(wrap_pyfunction!(parse_time_ms, m)?)?;
    m.add_function(wrap_pyfunction!(encode_csv, m)?)?;
    m.add_function(wrap_pyfunction!(csv_problem_of, m)?)?;
    m.add("N_FIELDS", N_FIELDS)?;
    Ok(())
}
