//! The stream worker's batch step in native code: decode, validate, fold, facts and state rows.
//!
//! The reference is streams/pipeline.py (`BatchStep.process`) over domain/ (validation, the
//! incident reducer, facts) and streams/state.py (table rows, format 2): this file gives the same
//! dead letters, the same fact bytes and the same state-row bytes for every batch, which
//! tests/test_native_worker.py checks with hypothesis against the Python step. Whatever it is not
//! sure about goes back to Python: a message whose Avro body it cannot read exactly as
//! amb/codec.py would (another writer schema, a malformed body, an `unknown` enum symbol) or that
//! is not *surely valid* (domain.validation.surely_valid, read conservatively: non-ASCII or blank-
//! looking ids too) is decoded and judged by the Python codec, which gives the rejection with its
//! reasons or the event, handed back with `provide`. Geography is Python's too: `fold` lists the
//! locations to place, `emit` takes the places.
//!
//! One `Batch` per worker batch, in four calls (streams/native.py drives them):
//!   decode(values, keys, topics, partitions, now) -> indices Python must decode
//!   state_keys()                                  -> the table keys to read, in first-read order
//!   fold(rows, watermarks)                        -> locations to attribute, new watermarks
//!   emit(places)                                  -> state rows, facts, live-view fields, counts

use std::collections::{BTreeSet, HashMap};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

const MIN_TIME_MS: i64 = 946_684_800_000; // 2000-01-01T00:00:00Z
const MAX_FUTURE_MS: i64 = 86_400_000;
const MAX_ID_LEN: usize = 64;
const MAX_CODE_LEN: usize = 16;
const MAX_POSTCODE_LEN: usize = 16;
const HANDOVER_STANDARD_MS: i64 = 15 * 60_000;
const HOUR_MS: i64 = 3_600_000;
const ROW_FORMAT: u8 = 2;
const HEADER_SIZE: usize = 19;

// Avro enum indexes of schemas/trust_event.avsc (0 is `unknown` everywhere).
const ET_INCIDENT_CREATED: u8 = 1;
const ET_CATEGORY_CHANGED: u8 = 2;
const ET_RESPONSE_ARRIVED: u8 = 3;
const ET_DISPOSITION: u8 = 4;
const ET_HANDOVER: u8 = 5;
const ET_CALL_111: u8 = 6;
const EVENT_TYPES: [&str; 7] =
    ["unknown", "incident_created", "category_changed", "response_arrived", "disposition", "handover", "call_111"];
const CATEGORIES: [&str; 5] = ["unknown", "C1", "C2", "C3", "C4"];
const SOURCES: [&str; 3] = ["unknown", "999", "111"];
const DISPOSITIONS: [&str; 5] = ["unknown", "hear_and_treat", "see_and_treat", "conveyed_ed", "conveyed_elsewhere"];
const DISP_HEAR_AND_TREAT: u8 = 1;

const UNKNOWN: &str = "unknown";
const GEO_NO_LOCATION: &str = "no_location";

// ------------------------------------------------------------------------------------ the event
#[derive(Clone, Debug, PartialEq)]
struct Loc {
    postcode: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    easting: Option<f64>,
    northing: Option<f64>,
}

impl Loc {
    fn empty(&self) -> bool {
        self.postcode.is_none() && self.lat.is_none() && self.easting.is_none()
    }
}

#[derive(Clone, Debug)]
struct Ev {
    event_id: String,
    et: u8,
    trust: String,
    incident_id: String,
    event_time: i64,
    produced_time: Option<i64>,
    clock_start: Option<i64>,
    category: u8,
    source: u8,
    location: Option<Loc>,
    disposition: u8,
    destination_site: Option<String>,
    site: Option<String>,
    arrived: Option<i64>,
    handover_at: Option<i64>,
    clear_at: Option<i64>,
    call_id: Option<String>,
    disposition_ambulance: Option<bool>,
    linked: Option<String>,
}

// ------------------------------------------------------------------------------- Avro decoding
/// Reads the body exactly as amb/codec.py's generated decoder does, or gives up (None) wherever
/// that decoder would raise or produce something this side does not model.
struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let x = *self.b.get(self.p)?;
        self.p += 1;
        Some(x)
    }

    fn long(&mut self) -> Option<i64> {
        let mut n: u64 = 0;
        for k in 0..9 {
            let x = self.byte()?;
            n |= ((x & 0x7F) as u64) << (7 * k);
            if x < 0x80 {
                return Some(((n >> 1) as i64) ^ -((n & 1) as i64));
            }
        }
        None // 10-byte varints: Python reads them (beyond 64 bits even); leave them to it
    }

    fn string(&mut self) -> Option<String> {
        let n = self.long()?;
        if n < 0 {
            return None;
        }
        let end = self.p.checked_add(n as usize)?;
        if end > self.b.len() {
            return None;
        }
        let s = std::str::from_utf8(&self.b[self.p..end]).ok()?.to_owned();
        self.p = end;
        Some(s)
    }

    fn double(&mut self) -> Option<f64> {
        let end = self.p + 8;
        if end > self.b.len() {
            return None;
        }
        let v = f64::from_le_bytes(self.b[self.p..end].try_into().ok()?);
        self.p = end;
        Some(v)
    }

    /// An enum index in 1..n (0 is `unknown`: Python rejects it with its own reason).
    fn symbol(&mut self, n: usize) -> Option<u8> {
        let i = self.long()?;
        if 1 <= i && (i as usize) < n {
            Some(i as u8)
        } else {
            None
        }
    }

    /// A ["null", T] union: Some(None) for null, Some(Some(..)) for a value.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.byte()? {
            0 => Some(None),
            2 => Some(Some(read(self)?)),
            _ => None,
        }
    }
}

fn decode_body(b: &[u8]) -> Option<Ev> {
    let mut r = Reader { b, p: 0 };
    let event_id = r.string()?;
    let et = r.symbol(EVENT_TYPES.len())?;
    let trust = r.string()?;
    let incident_id = r.string()?;
    let event_time = r.long()?;
    let produced_time = Some(r.long()?);
    let _schema_version = r.long()?;
    let clock_start = r.nullable(|r| r.long())?;
    let category = r.nullable(|r| r.symbol(CATEGORIES.len()))?.unwrap_or(0);
    let source = r.nullable(|r| r.symbol(SOURCES.len()))?.unwrap_or(0);
    let location = r.nullable(|r| {
        Some(Loc {
            postcode: r.nullable(|r| r.string())?,
            lat: r.nullable(|r| r.double())?,
            lon: r.nullable(|r| r.double())?,
            easting: r.nullable(|r| r.double())?,
            northing: r.nullable(|r| r.double())?,
        })
    })?;
    let disposition = r.nullable(|r| r.symbol(DISPOSITIONS.len()))?.unwrap_or(0);
    let destination_site = r.nullable(|r| r.string())?;
    let site = r.nullable(|r| r.string())?;
    let arrived = r.nullable(|r| r.long())?;
    let handover_at = r.nullable(|r| r.long())?;
    let clear_at = r.nullable(|r| r.long())?;
    let call_id = r.nullable(|r| r.string())?;
    let disposition_ambulance = r.nullable(|r| match r.byte()? {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    })?;
    let linked = r.nullable(|r| r.string())?;
    if r.p != b.len() {
        return None;
    }
    Some(Ev {
        event_id, et, trust, incident_id, event_time, produced_time, clock_start, category, source, location,
        disposition, destination_site, site, arrived, handover_at, clear_at, call_id, disposition_ambulance, linked,
    })
}

// ---------------------------------------------------------------------------------- validation
fn n_chars(s: &str) -> usize {
    s.chars().count()
}

/// 1..=max characters with at least one ASCII letter or digit: never blank to Python's isspace.
fn ok_id(s: &str, max: usize) -> bool {
    !s.is_empty() && n_chars(s) <= max && s.bytes().any(|b| b.is_ascii_alphanumeric())
}

fn ok_uuid(s: &str) -> bool {
    let v = s.as_bytes();
    v.len() == 36
        && v.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

fn ok_site(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_CODE_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn in_range(v: Option<f64>, lo: f64, hi: f64) -> bool {
    matches!(v, Some(x) if lo <= x && x <= hi)
}

/// domain.validation.surely_valid, never looser (it may say false where Python says true: the
/// message then goes to Python, which decides).
fn surely_valid(e: &Ev, now_ms: i64, trust: Option<&str>, known_trusts: &[String]) -> bool {
    let lo = MIN_TIME_MS;
    let hi = now_ms + MAX_FUTURE_MS;
    if !(lo <= e.event_time && e.event_time <= hi)
        || !known_trusts.iter().any(|t| t == &e.trust)
        || matches!(trust, Some(t) if t != e.trust)
        || !ok_id(&e.incident_id, MAX_ID_LEN)
        || !ok_uuid(&e.event_id)
    {
        return false;
    }
    for t in [e.produced_time, e.clock_start].into_iter().flatten() {
        if !(lo <= t && t <= hi) {
            return false;
        }
    }
    if (e.disposition == 3 || e.disposition == 4) && e.destination_site.as_deref().is_none_or(|s| s.is_empty()) {
        return false;
    }
    for site in [&e.destination_site, &e.site].into_iter().flatten() {
        if !ok_site(site) {
            return false;
        }
    }
    let first = e.arrived.unwrap_or(lo);
    if let Some(a) = e.arrived {
        if !(lo <= a && a <= hi) {
            return false;
        }
    }
    for t in [e.handover_at, e.clear_at].into_iter().flatten() {
        if !(first <= t && t <= hi) {
            return false;
        }
    }
    if let Some(c) = &e.call_id {
        if !ok_id(c, MAX_ID_LEN) || (e.et == ET_CALL_111 && c != &e.incident_id) {
            return false;
        }
    }
    if let Some(l) = &e.linked {
        if !ok_id(l, MAX_ID_LEN) {
            return false;
        }
    }
    let required = match e.et {
        ET_INCIDENT_CREATED => e.clock_start.is_some() && e.category != 0 && e.source != 0,
        ET_CATEGORY_CHANGED => e.category != 0,
        ET_DISPOSITION => e.disposition != 0,
        ET_HANDOVER => e.site.is_some() && e.arrived.is_some(),
        ET_CALL_111 => e.call_id.is_some() && e.disposition_ambulance.is_some(),
        _ => true,
    };
    if !required {
        return false;
    }
    if let Some(loc) = &e.location {
        if let Some(pc) = &loc.postcode {
            if !ok_id(pc, MAX_POSTCODE_LEN) {
                return false;
            }
        }
        if (loc.lat.is_some() || loc.lon.is_some())
            && !(in_range(loc.lat, 49.0, 61.5) && in_range(loc.lon, -9.0, 2.5))
        {
            return false;
        }
        if (loc.easting.is_some() || loc.northing.is_some())
            && !(in_range(loc.easting, 0.0, 700_000.0) && in_range(loc.northing, 0.0, 1_300_000.0))
        {
            return false;
        }
    }
    true
}

// ------------------------------------------------------------------------------ state and fold
type Key = (i64, String);

#[derive(Clone, Debug, Default)]
struct Incident {
    incident_id: String,
    created_key: Option<Key>,
    clock_start: Option<i64>,
    source: u8,
    category_key: Option<Key>,
    category: u8,
    first_arrival: Option<i64>,
    disposition_key: Option<Key>,
    disposition: u8,
    destination_site: Option<String>,
    site_key: Option<Key>,
    site: Option<String>,
    arrived_key: Option<Key>,
    arrived: Option<i64>,
    handover_key: Option<Key>,
    handover_at: Option<i64>,
    clear_key: Option<Key>,
    clear_at: Option<i64>,
}

#[derive(Clone, Debug, Default)]
struct Call {
    call_id: String,
    call_key: Option<Key>,
    disposition_ambulance: Option<bool>,
    link_key: Option<Key>,
    linked: Option<String>,
}

#[derive(Clone, Debug)]
enum Kind {
    Incident(Incident),
    Call(Call),
}

type LocKey = (Option<String>, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

#[derive(Clone, Debug)]
struct Record {
    trust: String,
    seen: BTreeSet<String>,
    first: i64,
    last: i64,
    location: Option<Loc>,
    kind: Kind,
    partition: i64,
    geo: Option<[String; 7]>,
    geo_for: Option<(Option<LocKey>, i64)>,
}

fn wins(key: &Key, held: &Option<Key>) -> bool {
    match held {
        None => true,
        Some(h) => key > h,
    }
}

impl Record {
    fn new(trust: &str, is_call: bool, ident: &str, partition: i64) -> Record {
        let kind = if is_call {
            Kind::Call(Call { call_id: ident.to_owned(), ..Default::default() })
        } else {
            Kind::Incident(Incident { incident_id: ident.to_owned(), ..Default::default() })
        };
        Record {
            trust: trust.to_owned(), seen: BTreeSet::new(), first: 0, last: 0, location: None, kind, partition,
            geo: None, geo_for: None,
        }
    }

    /// domain.incident.update / update_call: false (no change) for a seen event id.
    fn update(&mut self, e: &Ev) -> bool {
        if self.seen.contains(&e.event_id) {
            return false;
        }
        let t = e.event_time;
        if self.seen.is_empty() {
            self.first = t;
            self.last = t;
        } else if t < self.first {
            self.first = t;
        } else if t > self.last {
            self.last = t;
        }
        self.seen.insert(e.event_id.clone());
        let key: Key = (t, e.event_id.clone());
        match &mut self.kind {
            Kind::Call(c) => {
                if wins(&key, &c.call_key) {
                    c.call_key = Some(key.clone());
                    self.location = e.location.clone();
                    c.disposition_ambulance = e.disposition_ambulance;
                }
                if e.linked.is_some() && wins(&key, &c.link_key) {
                    c.link_key = Some(key);
                    c.linked = e.linked.clone();
                }
            }
            Kind::Incident(s) => match e.et {
                ET_INCIDENT_CREATED => {
                    if wins(&key, &s.created_key) {
                        s.created_key = Some(key.clone());
                        s.clock_start = e.clock_start;
                        s.source = e.source;
                        self.location = e.location.clone();
                    }
                    if e.category != 0 && wins(&key, &s.category_key) {
                        s.category_key = Some(key);
                        s.category = e.category;
                    }
                }
                ET_CATEGORY_CHANGED => {
                    if e.category != 0 && wins(&key, &s.category_key) {
                        s.category_key = Some(key);
                        s.category = e.category;
                    }
                }
                ET_RESPONSE_ARRIVED => {
                    if s.first_arrival.is_none_or(|a| t < a) {
                        s.first_arrival = Some(t);
                    }
                }
                ET_DISPOSITION => {
                    if e.disposition != 0 && wins(&key, &s.disposition_key) {
                        s.disposition_key = Some(key);
                        s.disposition = e.disposition;
                        s.destination_site = e.destination_site.clone();
                    }
                }
                ET_HANDOVER => {
                    if e.site.is_some() && wins(&key, &s.site_key) {
                        s.site_key = Some(key.clone());
                        s.site = e.site.clone();
                    }
                    if e.arrived.is_some() && wins(&key, &s.arrived_key) {
                        s.arrived_key = Some(key.clone());
                        s.arrived = e.arrived;
                    }
                    if e.handover_at.is_some() && wins(&key, &s.handover_key) {
                        s.handover_key = Some(key.clone());
                        s.handover_at = e.handover_at;
                    }
                    if e.clear_at.is_some() && wins(&key, &s.clear_key) {
                        s.clear_key = Some(key);
                        s.clear_at = e.clear_at;
                    }
                }
                _ => {}
            },
        }
        true
    }

    fn version(&self) -> i64 {
        self.seen.len() as i64
    }

    /// domain.facts.period_time
    fn period_time(&self) -> i64 {
        match &self.kind {
            Kind::Incident(s) => s.clock_start.unwrap_or(self.first),
            Kind::Call(_) => self.first,
        }
    }

    /// domain.incident.is_complete
    fn complete(&self) -> bool {
        match &self.kind {
            Kind::Call(c) => c.call_key.is_some(),
            Kind::Incident(s) => {
                if s.created_key.is_none() || s.disposition == 0 {
                    false
                } else if s.disposition == 3 || s.disposition == 4 {
                    s.handover_at.is_some() || s.clear_at.is_some()
                } else {
                    true
                }
            }
        }
    }
}

fn loc_key(loc: &Option<Loc>) -> Option<LocKey> {
    loc.as_ref().map(|l| (l.postcode.clone(), l.lat, l.lon, l.easting, l.northing))
}

// ---------------------------------------------------------------------------------------- JSON
/// Python's float.__repr__ (as json writes a float): shortest round-trip digits, fixed notation
/// for decimal exponents -4 < e <= 16, else d.ddde+XX.
fn py_float(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
        return;
    }
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if x == 0.0 {
        out.push_str(if x.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    let sci = format!("{:e}", x); // shortest round-trip digits: "-1.2345e-5"
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let decpt = exp + 1;
    if neg {
        out.push('-');
    }
    if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            out.push_str("0.");
            for _ in 0..(-decpt) {
                out.push('0');
            }
            out.push_str(&digits);
        } else if decpt as usize >= digits.len() {
            out.push_str(&digits);
            for _ in 0..(decpt as usize - digits.len()) {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", e.abs()));
    }
}

/// A JSON string as Python's json writes it: ``ascii`` = encode_basestring_ascii (state rows),
/// else encode_basestring (facts, ensure_ascii=False).
fn json_str(out: &mut String, s: &str, ascii: bool) {
    out.push('"');
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.push_str(s); // nothing to escape in either mode (the usual case: codes and ids)
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn opt_str(out: &mut String, s: &Option<String>, ascii: bool) {
    match s {
        None => out.push_str("null"),
        Some(v) => json_str(out, v, ascii),
    }
}

fn int(out: &mut String, v: i64) {
    // no fmt machinery: a fact has ~20 integers and this runs once per touched incident
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let neg = v < 0;
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if neg {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ASCII digits"));
}

fn opt_int(out: &mut String, v: Option<i64>) {
    match v {
        None => out.push_str("null"),
        Some(x) => int(out, x),
    }
}

fn opt_float(out: &mut String, v: Option<f64>) {
    match v {
        None => out.push_str("null"),
        Some(x) => py_float(out, x),
    }
}

fn opt_bool(out: &mut String, v: Option<bool>) {
    out.push_str(match v {
        None => "null",
        Some(true) => "true",
        Some(false) => "false",
    });
}

fn opt_enum(out: &mut String, v: u8, names: &[&str]) {
    if v == 0 {
        out.push_str("null");
    } else {
        json_str(out, names[v as usize], true);
    }
}

fn key_json(out: &mut String, k: &Option<Key>) {
    match k {
        None => out.push_str("null"),
        Some((t, id)) => {
            out.push('[');
            int(out, *t);
            out.push(',');
            json_str(out, id, true);
            out.push(']');
        }
    }
}

fn lockey_json(out: &mut String, l: &LocKey) {
    out.push('[');
    opt_str(out, &l.0, true);
    out.push(',');
    opt_float(out, l.1);
    out.push(',');
    opt_float(out, l.2);
    out.push(',');
    opt_float(out, l.3);
    out.push(',');
    opt_float(out, l.4);
    out.push(']');
}

/// streams.state.encode_record (format 2): header, then the positional JSON array.
fn encode_row(rec: &Record, expires_at: i64) -> Vec<u8> {
    let mut s = String::with_capacity(512);
    let common = |s: &mut String, tag: u8, ident: &str| {
        s.push('[');
        s.push(if tag == 0 { '0' } else { '1' });
        s.push(',');
        json_str(s, &rec.trust, true);
        s.push(',');
        json_str(s, ident, true);
        s.push_str(",[");
        for (i, id) in rec.seen.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            json_str(s, id, true);
        }
        s.push_str("],");
        int(s, rec.first);
        s.push(',');
        int(s, rec.last);
        s.push(',');
        match loc_key(&rec.location) {
            None => s.push_str("null"),
            Some(l) => lockey_json(s, &l),
        }
    };
    match &rec.kind {
        Kind::Incident(i) => {
            common(&mut s, 0, &i.incident_id);
            s.push(',');
            key_json(&mut s, &i.created_key);
            s.push(',');
            opt_int(&mut s, i.clock_start);
            s.push(',');
            opt_enum(&mut s, i.source, &SOURCES);
            s.push(',');
            key_json(&mut s, &i.category_key);
            s.push(',');
            opt_enum(&mut s, i.category, &CATEGORIES);
            s.push(',');
            opt_int(&mut s, i.first_arrival);
            s.push(',');
            key_json(&mut s, &i.disposition_key);
            s.push(',');
            opt_enum(&mut s, i.disposition, &DISPOSITIONS);
            s.push(',');
            opt_str(&mut s, &i.destination_site, true);
            s.push(',');
            key_json(&mut s, &i.site_key);
            s.push(',');
            opt_str(&mut s, &i.site, true);
            s.push(',');
            key_json(&mut s, &i.arrived_key);
            s.push(',');
            opt_int(&mut s, i.arrived);
            s.push(',');
            key_json(&mut s, &i.handover_key);
            s.push(',');
            opt_int(&mut s, i.handover_at);
            s.push(',');
            key_json(&mut s, &i.clear_key);
            s.push(',');
            opt_int(&mut s, i.clear_at);
        }
        Kind::Call(c) => {
            common(&mut s, 1, &c.call_id);
            s.push(',');
            key_json(&mut s, &c.call_key);
            s.push(',');
            opt_bool(&mut s, c.disposition_ambulance);
            s.push(',');
            key_json(&mut s, &c.link_key);
            s.push(',');
            opt_str(&mut s, &c.linked, true);
        }
    }
    s.push(',');
    match &rec.geo {
        None => s.push_str("null"),
        Some(g) => {
            s.push('[');
            for (i, v) in g.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                json_str(&mut s, v, true);
            }
            s.push(']');
        }
    }
    s.push(',');
    match &rec.geo_for {
        None => s.push_str("null"),
        Some((l, t)) => {
            s.push('[');
            match l {
                None => s.push_str("null"),
                Some(l) => lockey_json(&mut s, l),
            }
            s.push(',');
            int(&mut s, *t);
            s.push(']');
        }
    }
    s.push(']');
    let mut out = Vec::with_capacity(HEADER_SIZE + s.len());
    out.push(ROW_FORMAT);
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(&rec.last.to_be_bytes());
    out.extend_from_slice(&(rec.partition as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out
}

// A small JSON reader for format-2 rows (what encode_row and streams/state.py write).
#[derive(Debug)]
enum J {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<J>),
}

struct Parser<'a> {
    b: &'a [u8],
    p: usize,
}

type JResult<T> = Result<T, String>;

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while self.p < self.b.len() && matches!(self.b[self.p], b' ' | b'\n' | b'\r' | b'\t') {
            self.p += 1;
        }
    }

    fn lit(&mut self, word: &[u8], v: J) -> JResult<J> {
        if self.b[self.p..].starts_with(word) {
            self.p += word.len();
            Ok(v)
        } else {
            Err(format!("bad literal at {}", self.p))
        }
    }

    fn value(&mut self) -> JResult<J> {
        self.ws();
        match self.b.get(self.p) {
            None => Err("unexpected end".into()),
            Some(b'n') => self.lit(b"null", J::Null),
            Some(b't') => self.lit(b"true", J::Bool(true)),
            Some(b'f') => self.lit(b"false", J::Bool(false)),
            Some(b'N') => self.lit(b"NaN", J::Float(f64::NAN)),
            Some(b'I') => self.lit(b"Infinity", J::Float(f64::INFINITY)),
            Some(b'"') => Ok(J::Str(self.string()?)),
            Some(b'[') => {
                self.p += 1;
                let mut items = Vec::new();
                self.ws();
                if self.b.get(self.p) == Some(&b']') {
                    self.p += 1;
                    return Ok(J::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.b.get(self.p) {
                        Some(b',') => self.p += 1,
                        Some(b']') => {
                            self.p += 1;
                            return Ok(J::Arr(items));
                        }
                        _ => return Err(format!("expected , or ] at {}", self.p)),
                    }
                }
            }
            Some(_) => self.number(),
        }
    }

    fn number(&mut self) -> JResult<J> {
        let start = self.p;
        if self.b[start..].starts_with(b"-Infinity") {
            self.p += 9;
            return Ok(J::Float(f64::NEG_INFINITY));
        }
        let mut float = false;
        while self.p < self.b.len() {
            match self.b[self.p] {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' | b'e' | b'E' => float = true,
                _ => break,
            }
            self.p += 1;
        }
        let text = std::str::from_utf8(&self.b[start..self.p]).map_err(|e| e.to_string())?;
        if float {
            text.parse::<f64>().map(J::Float).map_err(|e| format!("{e}: {text}"))
        } else {
            text.parse::<i64>().map(J::Int).map_err(|e| format!("{e}: {text}"))
        }
    }

    fn string(&mut self) -> JResult<String> {
        let mut out = Vec::new();
        crate::json::unescape(self.b, &mut self.p, &mut out, true)
            .ok_or_else(|| format!("malformed string in a state row at {}", self.p))?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

fn j_str(v: &J) -> JResult<String> {
    match v {
        J::Str(s) => Ok(s.clone()),
        _ => Err(format!("expected a string, got {v:?}")),
    }
}

fn j_opt_str(v: &J) -> JResult<Option<String>> {
    match v {
        J::Null => Ok(None),
        _ => j_str(v).map(Some),
    }
}

fn j_int(v: &J) -> JResult<i64> {
    match v {
        J::Int(i) => Ok(*i),
        _ => Err(format!("expected an integer, got {v:?}")),
    }
}

fn j_opt_int(v: &J) -> JResult<Option<i64>> {
    match v {
        J::Null => Ok(None),
        _ => j_int(v).map(Some),
    }
}

fn j_opt_float(v: &J) -> JResult<Option<f64>> {
    match v {
        J::Null => Ok(None),
        J::Float(f) => Ok(Some(*f)),
        J::Int(i) => Ok(Some(*i as f64)),
        _ => Err(format!("expected a number, got {v:?}")),
    }
}

fn j_arr(v: &J) -> JResult<&Vec<J>> {
    match v {
        J::Arr(a) => Ok(a),
        _ => Err(format!("expected an array, got {v:?}")),
    }
}

fn j_key(v: &J) -> JResult<Option<Key>> {
    match v {
        J::Null => Ok(None),
        _ => {
            let a = j_arr(v)?;
            if a.len() != 2 {
                return Err("a key is [time, event_id]".into());
            }
            Ok(Some((j_int(&a[0])?, j_str(&a[1])?)))
        }
    }
}

fn j_enum(v: &J, names: &[&str]) -> JResult<u8> {
    match v {
        J::Null => Ok(0),
        J::Str(s) => names
            .iter()
            .position(|n| n == s)
            .filter(|&i| i > 0)
            .map(|i| i as u8)
            .ok_or_else(|| format!("unknown value {s:?}")),
        _ => Err(format!("expected an enum value, got {v:?}")),
    }
}

fn j_lockey(v: &J) -> JResult<Option<LocKey>> {
    match v {
        J::Null => Ok(None),
        _ => {
            let a = j_arr(v)?;
            if a.len() != 5 {
                return Err("a location is [postcode, lat, lon, easting, northing]".into());
            }
            Ok(Some((j_opt_str(&a[0])?, j_opt_float(&a[1])?, j_opt_float(&a[2])?, j_opt_float(&a[3])?,
                     j_opt_float(&a[4])?)))
        }
    }
}

fn j_bool(v: &J) -> JResult<Option<bool>> {
    match v {
        J::Null => Ok(None),
        J::Bool(b) => Ok(Some(*b)),
        _ => Err(format!("expected a boolean, got {v:?}")),
    }
}

/// streams.state.decode_record for format 2 (format 1 rows are converted by the caller first).
fn decode_row(value: &[u8]) -> JResult<Record> {
    if value.len() < HEADER_SIZE {
        return Err("incident-state row shorter than its header".into());
    }
    if value[0] != ROW_FORMAT {
        return Err(format!("incident-state row of format {} (native reads format 2)", value[0]));
    }
    let partition = i16::from_be_bytes([value[17], value[18]]) as i64;
    let mut p = Parser { b: &value[HEADER_SIZE..], p: 0 };
    let body = p.value()?;
    let b = j_arr(&body)?;
    let tag = b.first().map(j_int).transpose()?.ok_or("empty row")?;
    let n = if tag == 0 { 26 } else { 13 };
    if b.len() != n {
        return Err(format!("incident-state row of kind {tag} has {} fields, not {n}", b.len()));
    }
    let location = j_lockey(&b[6])?.map(|l| Loc { postcode: l.0, lat: l.1, lon: l.2, easting: l.3, northing: l.4 });
    let seen: BTreeSet<String> = j_arr(&b[3])?.iter().map(j_str).collect::<JResult<_>>()?;
    let (kind, geo_at) = match tag {
        0 => (
            Kind::Incident(Incident {
                incident_id: j_str(&b[2])?,
                created_key: j_key(&b[7])?,
                clock_start: j_opt_int(&b[8])?,
                source: j_enum(&b[9], &SOURCES)?,
                category_key: j_key(&b[10])?,
                category: j_enum(&b[11], &CATEGORIES)?,
                first_arrival: j_opt_int(&b[12])?,
                disposition_key: j_key(&b[13])?,
                disposition: j_enum(&b[14], &DISPOSITIONS)?,
                destination_site: j_opt_str(&b[15])?,
                site_key: j_key(&b[16])?,
                site: j_opt_str(&b[17])?,
                arrived_key: j_key(&b[18])?,
                arrived: j_opt_int(&b[19])?,
                handover_key: j_key(&b[20])?,
                handover_at: j_opt_int(&b[21])?,
                clear_key: j_key(&b[22])?,
                clear_at: j_opt_int(&b[23])?,
            }),
            24,
        ),
        1 => (
            Kind::Call(Call {
                call_id: j_str(&b[2])?,
                call_key: j_key(&b[7])?,
                disposition_ambulance: j_bool(&b[8])?,
                link_key: j_key(&b[9])?,
                linked: j_opt_str(&b[10])?,
            }),
            11,
        ),
        _ => return Err(format!("incident-state row of unknown kind {tag}")),
    };
    let geo = match &b[geo_at] {
        J::Null => None,
        g => {
            let a = j_arr(g)?;
            if a.len() != 7 {
                return Err("geo is 7 codes".into());
            }
            let v: Vec<String> = a.iter().map(j_str).collect::<JResult<_>>()?;
            Some(v.try_into().map_err(|_| "geo is 7 codes")?)
        }
    };
    let geo_for = match &b[geo_at + 1] {
        J::Null => None,
        g => {
            let a = j_arr(g)?;
            if a.len() != 2 {
                return Err("attributed_for is [location, time]".into());
            }
            Some((j_lockey(&a[0])?, j_int(&a[1])?))
        }
    };
    Ok(Record {
        trust: j_str(&b[1])?, seen, first: j_int(&b[4])?, last: j_int(&b[5])?, location, kind, partition, geo,
        geo_for,
    })
}

// --------------------------------------------------------------------------------------- facts
#[derive(Clone, Copy)]
struct Periods {
    hour: i64,
    day: i64,
    week: i64,
    month: i64,
    fy: i64,
}

fn field(out: &mut String, first: bool, name: &str) {
    out.push(if first { '{' } else { ',' });
    out.push('"');
    out.push_str(name);
    out.push_str("\":");
}

fn geo_fields(out: &mut String, g: &[String; 7]) {
    for (name, v) in ["lsoa", "msoa", "lad", "sicbl", "icb", "region", "geo_status"].iter().zip(g.iter()) {
        field(out, false, name);
        json_str(out, v, false);
    }
}

fn period_fields(out: &mut String, p: &Periods) {
    for (name, v) in [("hour_ms", p.hour), ("day_ms", p.day), ("week_ms", p.week), ("month_ms", p.month),
                      ("fy_ms", p.fy)] {
        field(out, false, name);
        int(out, v);
    }
}

fn duration(start: Option<i64>, end: Option<i64>) -> (Option<i64>, bool) {
    match (start, end) {
        (Some(a), Some(b)) => {
            if b - a < 0 {
                (None, true)
            } else {
                (Some(b - a), false)
            }
        }
        _ => (None, false),
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// streams.fact_codec.encode_incident(incident_fact(s, geo), handover_fact(s, geo, fact)).
fn incident_fact_json(rec: &Record, s: &Incident, geo: &[String; 7], p: &Periods) -> String {
    let t = rec.period_time();
    let version = rec.version();
    let disp = s.disposition;
    let (mut response, mut negative) = (None, false);
    if let (Some(arr), Some(cs)) = (s.first_arrival, s.clock_start) {
        if disp != DISP_HEAR_AND_TREAT {
            let r = arr - cs;
            if r < 0 {
                negative = true;
            } else {
                response = Some(r);
            }
        }
    }
    let (handover, h_negative) = duration(s.arrived, s.handover_at);
    let site = match &s.site {
        Some(v) if !v.is_empty() => Some(v.clone()),
        _ => s.destination_site.clone(),
    };
    let mut o = String::with_capacity(900);
    o.push_str("{\"f\":1,\"kind\":\"incident\",\"incident\":");
    field(&mut o, true, "trust");
    json_str(&mut o, &rec.trust, false);
    field(&mut o, false, "incident_id");
    json_str(&mut o, &s.incident_id, false);
    field(&mut o, false, "version");
    int(&mut o, version);
    field(&mut o, false, "clock_start_ms");
    opt_int(&mut o, s.clock_start);
    field(&mut o, false, "period_ms");
    int(&mut o, t);
    period_fields(&mut o, p);
    let enum_or_null = |o: &mut String, v: u8, names: &[&str]| {
        if v == 0 {
            o.push_str("null")
        } else {
            json_str(o, names[v as usize], false)
        }
    };
    field(&mut o, false, "category");
    enum_or_null(&mut o, s.category, &CATEGORIES);
    field(&mut o, false, "source");
    enum_or_null(&mut o, s.source, &SOURCES);
    field(&mut o, false, "disposition");
    enum_or_null(&mut o, disp, &DISPOSITIONS);
    field(&mut o, false, "open");
    o.push_str(bool_str(disp == 0));
    field(&mut o, false, "conveyed");
    o.push_str(bool_str(disp == 3 || disp == 4));
    field(&mut o, false, "complete");
    o.push_str(bool_str(rec.complete()));
    field(&mut o, false, "response_ms");
    opt_int(&mut o, response);
    field(&mut o, false, "response_negative");
    o.push_str(bool_str(negative));
    field(&mut o, false, "destination_site");
    opt_str(&mut o, &s.destination_site, false);
    field(&mut o, false, "site");
    opt_str(&mut o, &site, false);
    field(&mut o, false, "handover_duration_ms");
    opt_int(&mut o, handover);
    field(&mut o, false, "handover_negative");
    o.push_str(bool_str(h_negative));
    geo_fields(&mut o, geo);
    field(&mut o, false, "first_event_ms");
    int(&mut o, rec.first);
    field(&mut o, false, "last_event_ms");
    int(&mut o, rec.last);
    o.push_str("},\"handover\":");
    match s.arrived {
        None => o.push_str("null"),
        Some(arrived) => {
            let (hand, _) = duration(Some(arrived), s.handover_at);
            let (clear, _) = duration(Some(arrived), s.clear_at);
            let hsite = site.clone().unwrap_or_else(|| UNKNOWN.to_owned());
            let hsite = if hsite.is_empty() { UNKNOWN.to_owned() } else { hsite };
            field(&mut o, true, "trust");
            json_str(&mut o, &rec.trust, false);
            field(&mut o, false, "incident_id");
            json_str(&mut o, &s.incident_id, false);
            field(&mut o, false, "version");
            int(&mut o, version);
            field(&mut o, false, "site");
            json_str(&mut o, &hsite, false);
            field(&mut o, false, "arrived_at_ms");
            int(&mut o, arrived);
            field(&mut o, false, "handover_at_ms");
            opt_int(&mut o, s.handover_at);
            field(&mut o, false, "clear_at_ms");
            opt_int(&mut o, s.clear_at);
            field(&mut o, false, "handover_duration_ms");
            opt_int(&mut o, hand);
            field(&mut o, false, "clear_duration_ms");
            opt_int(&mut o, clear);
            field(&mut o, false, "lost_ms");
            int(&mut o, hand.map_or(0, |d| (d - HANDOVER_STANDARD_MS).max(0)));
            field(&mut o, false, "disposition");
            enum_or_null(&mut o, disp, &DISPOSITIONS);
            field(&mut o, false, "category");
            enum_or_null(&mut o, s.category, &CATEGORIES);
            period_fields(&mut o, p);
            geo_fields(&mut o, geo);
            o.push('}');
        }
    }
    o.push('}');
    o
}

/// streams.fact_codec.encode_call(call_fact(s, geo)).
fn call_fact_json(rec: &Record, c: &Call, geo: &[String; 7], p: &Periods) -> String {
    let mut o = String::with_capacity(600);
    o.push_str("{\"f\":1,\"kind\":\"call_111\",\"call\":");
    field(&mut o, true, "trust");
    json_str(&mut o, &rec.trust, false);
    field(&mut o, false, "call_id");
    json_str(&mut o, &c.call_id, false);
    field(&mut o, false, "version");
    int(&mut o, rec.version());
    field(&mut o, false, "call_time_ms");
    int(&mut o, rec.first);
    period_fields(&mut o, p);
    field(&mut o, false, "disposition_ambulance");
    opt_bool(&mut o, c.disposition_ambulance);
    field(&mut o, false, "linked_incident_id");
    opt_str(&mut o, &c.linked, false);
    geo_fields(&mut o, geo);
    o.push_str("}}");
    o
}

// ----------------------------------------------------------------------------------- the batch
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Pending,
    /// Decoded here or provided by Python.
    Event,
    /// Python rejected it (it keeps the Rejection).
    Rejected,
}

/// What happened to one message, in message order: a dead letter (code, the wanted key for
/// wrong_key) or nothing.
enum Dead {
    Python(usize),
    WrongKey(usize, String),
    LateAfterExpiry(usize),
}

/// The native half of streams.pipeline.BatchStep: settings and the period cache outlive batches.
#[pyclass(module = "amb_native")]
pub struct WorkerCore {
    fingerprint: Vec<u8>,
    known_trusts: Vec<String>,
    horizon_ms: i64,
    stale_ms: i64,
    day_periods: PyObject,
    periods: HashMap<i64, [i64; 4]>,
}

#[pymethods]
impl WorkerCore {
    #[new]
    fn new(fingerprint: Vec<u8>, known_trusts: Vec<String>, horizon_ms: i64, stale_ms: i64, day_periods: PyObject)
           -> Self {
        WorkerCore { fingerprint, known_trusts, horizon_ms, stale_ms, day_periods, periods: HashMap::new() }
    }

    /// Decode what this side can; returns (batch, indices of messages Python must decode).
    #[allow(clippy::too_many_arguments)]
    fn decode(&self, values: &Bound<'_, PyList>, keys: &Bound<'_, PyList>, topics: Vec<usize>, partitions: Vec<i64>,
              topic_trusts: Vec<Option<String>>, now_ms: i64) -> PyResult<(Batch, Vec<usize>)> {
        let n = values.len();
        if keys.len() != n || topics.len() != n || partitions.len() != n {
            return Err(PyValueError::new_err("values, keys, topics and partitions differ in length"));
        }
        let mut slots = Vec::with_capacity(n);
        let mut need = Vec::new();
        let mut msg_keys = Vec::with_capacity(n);
        let bound: Vec<Bound<'_, PyAny>> = values.iter().collect();
        let raw: Vec<Option<&[u8]>> =
            bound.iter().map(|v| v.downcast::<PyBytes>().ok().map(|b| b.as_bytes())).collect();
        for k in keys.iter() {
            msg_keys.push(k.downcast::<PyBytes>().ok().map(|b| b.as_bytes().to_vec()));
        }
        let (fingerprint, known) = (&self.fingerprint, &self.known_trusts);
        // the bytes are immutable and held by `values`: decode them while other threads run
        let events: Vec<Option<Ev>> = values.py().allow_threads(|| {
            raw.iter().enumerate().map(|(i, b)| {
                let b = (*b)?;
                if b.len() > 10 && b[0] == 0xC3 && b[1] == 0x01 && b[2..10] == fingerprint[..] {
                    decode_body(&b[10..]).filter(|e| {
                        let trust = topic_trusts.get(topics[i]).and_then(|t| t.as_deref());
                        surely_valid(e, now_ms, trust, known)
                    })
                } else {
                    None
                }
            }).collect()
        });
        for (i, ev) in events.iter().enumerate() {
            if ev.is_some() {
                slots.push(Slot::Event);
            } else {
                slots.push(Slot::Pending);
                need.push(i);
            }
        }
        let batch = Batch {
            events, slots, keys: msg_keys, topics, partitions, now_ms, state_keys: Vec::new(), key_of_msg: Vec::new(),
            records: Vec::new(), touched: Vec::new(), touched_msg: Vec::new(), dead: Vec::new(),
            marks: HashMap::new(), event_counts: HashMap::new(), duplicates: HashMap::new(), new_states: 0,
            max_event_time: 0, todo: Vec::new(), folded: false,
        };
        Ok((batch, need))
    }
}

fn unknown_geo(status: &str) -> [String; 7] {
    [UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, status].map(|s| s.to_owned())
}

impl WorkerCore {
    fn periods_of(&mut self, py: Python<'_>, ms: i64) -> PyResult<Periods> {
        let hour = ms - ms.rem_euclid(HOUR_MS);
        let day = match self.periods.get(&hour) {
            Some(d) => *d,
            None => {
                let (a, b, c, d): (i64, i64, i64, i64) = self.day_periods.call1(py, (hour,))?.extract(py)?;
                self.periods.insert(hour, [a, b, c, d]);
                [a, b, c, d]
            }
        };
        Ok(Periods { hour, day: day[0], week: day[1], month: day[2], fy: day[3] })
    }
}

#[pyclass(module = "amb_native")]
pub struct Batch {
    events: Vec<Option<Ev>>,
    slots: Vec<Slot>,
    keys: Vec<Option<Vec<u8>>>,
    topics: Vec<usize>,
    partitions: Vec<i64>,
    now_ms: i64,
    /// Distinct table keys in first-read order, with (topic, partition) of that message.
    state_keys: Vec<(Vec<u8>, usize, i64)>,
    key_of_msg: Vec<Option<usize>>,
    records: Vec<Option<Record>>,
    touched: Vec<usize>,
    /// Per state key: the last message that touched it (usize::MAX: none).
    touched_msg: Vec<usize>,
    dead: Vec<Dead>,
    marks: HashMap<(usize, i64), i64>,
    /// Per trust: events by Avro event-type index.
    event_counts: HashMap<String, [i64; 7]>,
    duplicates: HashMap<String, i64>,
    new_states: i64,
    max_event_time: i64,
    todo: Vec<usize>,
    folded: bool,
}

fn getattr_opt<'py, T: FromPyObject<'py>>(o: &Bound<'py, PyAny>, name: &str) -> PyResult<Option<T>> {
    let v = o.getattr(name)?;
    if v.is_none() {
        Ok(None)
    } else {
        v.extract().map(Some)
    }
}

fn enum_index(o: &Bound<'_, PyAny>, name: &str, names: &[&str]) -> PyResult<u8> {
    let v: Option<String> = getattr_opt(o, name)?;
    match v {
        None => Ok(0),
        Some(s) => names
            .iter()
            .position(|n| *n == s)
            .filter(|&i| i > 0)
            .map(|i| i as u8)
            .ok_or_else(|| PyValueError::new_err(format!("{name} {s:?} is not a known value"))),
    }
}

#[pymethods]
impl Batch {
    /// A message Python decoded into a valid domain.events.Event.
    fn provide(&mut self, i: usize, event: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.slots.get(i) != Some(&Slot::Pending) {
            return Err(PyValueError::new_err(format!("message {i} is not waiting for Python")));
        }
        let loc = event.getattr("location")?;
        let location = if loc.is_none() {
            None
        } else {
            Some(Loc {
                postcode: getattr_opt(&loc, "postcode")?,
                lat: getattr_opt(&loc, "lat")?,
                lon: getattr_opt(&loc, "lon")?,
                easting: getattr_opt(&loc, "easting")?,
                northing: getattr_opt(&loc, "northing")?,
            })
        };
        let et = enum_index(event, "event_type", &EVENT_TYPES)?;
        self.events[i] = Some(Ev {
            event_id: event.getattr("event_id")?.extract()?,
            et,
            trust: event.getattr("trust")?.extract()?,
            incident_id: event.getattr("incident_id")?.extract()?,
            event_time: event.getattr("event_time")?.extract()?,
            produced_time: getattr_opt(event, "produced_time")?,
            clock_start: getattr_opt(event, "clock_start")?,
            category: enum_index(event, "category", &CATEGORIES)?,
            source: enum_index(event, "source", &SOURCES)?,
            location,
            disposition: enum_index(event, "disposition", &DISPOSITIONS)?,
            destination_site: getattr_opt(event, "destination_site")?,
            site: getattr_opt(event, "site")?,
            arrived: getattr_opt(event, "arrived_at_hospital")?,
            handover_at: getattr_opt(event, "handover_at")?,
            clear_at: getattr_opt(event, "clear_at")?,
            call_id: getattr_opt(event, "call_id")?,
            disposition_ambulance: getattr_opt(event, "disposition_ambulance")?,
            linked: getattr_opt(event, "linked_incident_id")?,
        });
        self.slots[i] = Slot::Event;
        Ok(())
    }

    /// A message Python rejected (it keeps the Rejection; the dead letter stays in message order).
    fn reject(&mut self, i: usize) -> PyResult<()> {
        if self.slots.get(i) != Some(&Slot::Pending) {
            return Err(PyValueError::new_err(format!("message {i} is not waiting for Python")));
        }
        self.slots[i] = Slot::Rejected;
        Ok(())
    }

    /// The table keys to read (``trust:kind:id``), each with (topic, partition) of the message
    /// that reads it first: wrong-key messages are dead letters and read nothing.
    fn state_keys<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        if self.slots.contains(&Slot::Pending) {
            return Err(PyValueError::new_err("some messages still wait for Python"));
        }
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        self.key_of_msg = vec![None; self.events.len()];
        for (i, ev) in self.events.iter().enumerate() {
            let Some(e) = ev else { continue };
            if self.slots[i] != Slot::Event {
                continue;
            }
            let want = format!("{}:{}", e.trust, e.incident_id);
            if self.keys[i].as_deref() != Some(want.as_bytes()) {
                continue;
            }
            let kind = if e.et == ET_CALL_111 { "call_111" } else { "incident" };
            let k = format!("{}:{}:{}", e.trust, kind, e.incident_id).into_bytes();
            let next = index.len();
            let at = *index.entry(k.clone()).or_insert_with(|| {
                self.state_keys.push((k, self.topics[i], self.partitions[i]));
                next
            });
            self.key_of_msg[i] = Some(at);
        }
        let out = PyList::empty(py);
        for (k, t, p) in &self.state_keys {
            out.append((PyBytes::new(py, k), *t, *p))?;
        }
        Ok(out)
    }

    /// Fold every event into its state. ``rows``: the stored value (format 2) or None per state
    /// key; ``watermarks``: {(topic, partition): event-time watermark} for the batch's partitions.
    /// Returns (the locations to attribute as columns: postcodes, then lat, lon, easting, northing as
    /// float64 bytes (NaN = absent) and period times as int64 bytes; the batch's new watermark per
    /// (topic, partition)).
    fn fold<'py>(&mut self, py: Python<'py>, horizon_ms: i64, rows: &Bound<'py, PyList>,
                 watermarks: HashMap<(usize, i64), i64>) -> PyResult<Bound<'py, PyTuple>> {
        if rows.len() != self.state_keys.len() {
            return Err(PyValueError::new_err("one row (or None) per state key"));
        }
        let bound: Vec<Bound<'py, PyAny>> = rows.iter().collect();
        let mut raw: Vec<Option<&[u8]>> = Vec::with_capacity(bound.len());
        for r in &bound {
            raw.push(if r.is_none() { None } else { Some(r.downcast::<PyBytes>()?.as_bytes()) });
        }
        let cols = py.allow_threads(|| self.fold_rows(&raw, horizon_ms, &watermarks)).map_err(PyValueError::new_err)?;
        let (postcodes, lat, lon, east, north, times) = cols;
        self.folded = true;
        let marks = PyDict::new(py);
        for (tp, wm) in &self.marks {
            marks.set_item(*tp, *wm)?;
        }
        let f64s = |v: &[f64]| PyBytes::new(py, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        let todo = PyTuple::new(py, [
            PyList::new(py, &postcodes)?.into_any(), f64s(&lat).into_any(), f64s(&lon).into_any(),
            f64s(&east).into_any(), f64s(&north).into_any(),
            PyBytes::new(py, &times.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).into_any(),
        ])?;
        PyTuple::new(py, [todo.into_any(), marks.into_any()])
    }

    /// Geography in (``places``: one 7-tuple per location ``fold`` listed) -> rows, facts, live
    /// fields and counts; see streams/native.py for the shapes.
    fn emit<'py>(&mut self, py: Python<'py>, mut core: PyRefMut<'py, WorkerCore>, places: &Bound<'py, PyList>)
                 -> PyResult<Bound<'py, PyTuple>> {
        let batch = self;
        if !batch.folded {
            return Err(PyValueError::new_err("emit before fold"));
        }
        if places.len() != batch.todo.len() {
            return Err(PyValueError::new_err(format!(
                "{} places for {} locations", places.len(), batch.todo.len())));
        }
        for (j, &ri) in batch.todo.iter().enumerate() {
            let g: Vec<String> = places.get_item(j)?.extract()?;
            let g: [String; 7] = g.try_into().map_err(|_| PyValueError::new_err("a place is 7 codes"))?;
            batch.records[ri].as_mut().expect("todo is of held records").geo = Some(g);
        }
        // periods need Python's zone rules for hours not seen yet: look them up first, then build
        // every row and fact without the GIL
        let mut periods: HashMap<i64, Periods> = HashMap::new();
        for &ri in &batch.touched {
            let t = batch.records[ri].as_ref().expect("touched records are held").period_time();
            let p = core.periods_of(py, t)?;
            periods.entry(p.hour).or_insert(p);
        }
        let (horizon, stale) = (core.horizon_ms, core.stale_ms);
        let outs = py.allow_threads(|| batch.emit_rows(&periods, horizon, stale));
        let rows = PyList::empty(py);
        let facts = PyList::empty(py);
        let live = PyList::empty(py);
        for o in &outs {
            let (ti, part) = (batch.topics[o.msg], batch.partitions[o.msg]);
            if let Some(l) = &o.live {
                let rec = batch.records[o.ri].as_ref().expect("touched records are held");
                live.append((o.ri, rec.trust.as_str(), l.period, l.clocked, l.disposition, l.site.as_deref(),
                             l.arrived, l.handover, l.icb.as_str(), ti, part))?;
            }
            rows.append((o.ri, PyBytes::new(py, &o.row), o.expires, ti, part))?;
            facts.append((PyBytes::new(py, o.fact_key.as_bytes()), PyBytes::new(py, o.value.as_bytes()), o.kind,
                          o.version, ti, part))?;
        }
        let dead = PyList::empty(py);
        for d in &batch.dead {
            match d {
                Dead::Python(i) => dead.append((*i, py.None(), py.None()))?,
                Dead::WrongKey(i, want) => dead.append((*i, "wrong_key", want.as_str()))?,
                Dead::LateAfterExpiry(i) => dead.append((*i, "late_after_expiry", py.None()))?,
            }
        }
        let counts = PyDict::new(py);
        for (trust, by_type) in &batch.event_counts {
            for (et, n) in by_type.iter().enumerate() {
                if *n > 0 {
                    counts.set_item((EVENT_TYPES[et], trust.as_str()), *n)?;
                }
            }
        }
        let dups = PyDict::new(py);
        for (trust, n) in &batch.duplicates {
            dups.set_item(trust.as_str(), *n)?;
        }
        PyTuple::new(py, [
            rows.into_any(), facts.into_any(), live.into_any(), dead.into_any(), counts.into_any(), dups.into_any(),
            batch.new_states.into_pyobject(py)?.into_any(), batch.max_event_time.into_pyobject(py)?.into_any(),
        ])
    }
}

type TodoColumns = (Vec<Option<String>>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<i64>);

impl Batch {
    /// The fold itself, on Rust data only (run without the GIL).
    fn fold_rows(&mut self, raw: &[Option<&[u8]>], horizon_ms: i64, watermarks: &HashMap<(usize, i64), i64>)
                 -> Result<TodoColumns, String> {
        self.records = Vec::with_capacity(raw.len());
        for r in raw {
            self.records.push(match r {
                None => None,
                Some(b) => Some(decode_row(b)?),
            });
        }
        let horizon = horizon_ms;
        self.touched_msg = vec![usize::MAX; self.records.len()];
        for i in 0..self.events.len() {
            match self.slots[i] {
                Slot::Rejected => {
                    self.dead.push(Dead::Python(i));
                    continue;
                }
                Slot::Pending => unreachable!(),
                Slot::Event => {}
            }
            let e = self.events[i].as_ref().expect("an event slot holds an event");
            let Some(ri) = self.key_of_msg[i] else {
                self.dead.push(Dead::WrongKey(i, format!("{}:{}", e.trust, e.incident_id)));
                continue;
            };
            let tp = (self.topics[i], self.partitions[i]);
            let wm = *self.marks.entry(tp).or_insert_with(|| watermarks.get(&tp).copied().unwrap_or(0));
            let t = e.event_time;
            if self.records[ri].is_none() {
                if wm != 0 && t + horizon <= wm {
                    self.dead.push(Dead::LateAfterExpiry(i));
                    continue;
                }
                self.records[ri] = Some(Record::new(&e.trust, e.et == ET_CALL_111, &e.incident_id, self.partitions[i]));
                self.new_states += 1;
            }
            let rec = self.records[ri].as_mut().expect("just made");
            let changed = rec.update(e);
            if t > wm {
                self.marks.insert(tp, t);
            }
            if t > self.max_event_time {
                self.max_event_time = t;
            }
            match self.event_counts.get_mut(e.trust.as_str()) {
                Some(c) => c[e.et as usize] += 1,
                None => {
                    let mut c = [0i64; 7];
                    c[e.et as usize] = 1;
                    self.event_counts.insert(e.trust.clone(), c);
                }
            }
            if !changed {
                match self.duplicates.get_mut(e.trust.as_str()) {
                    Some(n) => *n += 1,
                    None => {
                        self.duplicates.insert(e.trust.clone(), 1);
                    }
                }
            }
            if self.touched_msg[ri] == usize::MAX {
                self.touched.push(ri);
            }
            self.touched_msg[ri] = i;
        }
        // BatchStep._attribute: place what is new, remember what it was placed for
        let (mut postcodes, mut lat, mut lon, mut east, mut north, mut times) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &ri in &self.touched {
            let rec = self.records[ri].as_mut().expect("touched records are held");
            let want = (loc_key(&rec.location), rec.period_time());
            if rec.geo.is_some() && rec.geo_for.as_ref() == Some(&want) {
                continue;
            }
            rec.geo_for = Some(want);
            match &rec.location {
                Some(l) if !l.empty() => {
                    postcodes.push(l.postcode.clone());
                    lat.push(l.lat.unwrap_or(f64::NAN));
                    lon.push(l.lon.unwrap_or(f64::NAN));
                    east.push(l.easting.unwrap_or(f64::NAN));
                    north.push(l.northing.unwrap_or(f64::NAN));
                    times.push(rec.period_time());
                    self.todo.push(ri);
                }
                _ => rec.geo = Some(unknown_geo(GEO_NO_LOCATION)),
            }
        }
        let _ = self.now_ms;
        Ok((postcodes, lat, lon, east, north, times))
    }
}

struct LiveOut {
    period: i64,
    clocked: bool,
    disposition: Option<&'static str>,
    site: Option<String>,
    arrived: Option<i64>,
    handover: Option<i64>,
    icb: String,
}

struct EmitOut {
    ri: usize,
    msg: usize,
    row: Vec<u8>,
    expires: i64,
    fact_key: String,
    value: String,
    kind: u8,
    version: i64,
    live: Option<LiveOut>,
}

impl Batch {
    /// BatchStep._emit on Rust data only (run without the GIL): per touched state, its row, its
    /// fact and, for an incident, what the live view keeps.
    fn emit_rows(&self, periods: &HashMap<i64, Periods>, horizon_ms: i64, stale_ms: i64) -> Vec<EmitOut> {
        let mut out = Vec::with_capacity(self.touched.len());
        for &ri in &self.touched {
            let msg = self.touched_msg[ri];
            let rec = self.records[ri].as_ref().expect("touched records are held");
            let no_geo;
            let geo = match &rec.geo {
                Some(g) => g,
                None => {
                    no_geo = unknown_geo(GEO_NO_LOCATION);
                    &no_geo
                }
            };
            let t = rec.period_time();
            let p = &periods[&(t - t.rem_euclid(HOUR_MS))];
            let expires = rec.last + if rec.complete() { horizon_ms } else { stale_ms };
            let (value, kind, ident, live) = match &rec.kind {
                Kind::Incident(s) => {
                    let site = match &s.site {
                        Some(v) if !v.is_empty() => Some(v.clone()),
                        _ => s.destination_site.clone(),
                    };
                    let live = LiveOut {
                        period: t, clocked: s.clock_start.is_some(),
                        disposition: if s.disposition == 0 { None } else { Some(DISPOSITIONS[s.disposition as usize]) },
                        site, arrived: s.arrived, handover: s.handover_at, icb: geo[4].clone(),
                    };
                    (incident_fact_json(rec, s, geo, p), 0u8, s.incident_id.as_str(), Some(live))
                }
                Kind::Call(c) => (call_fact_json(rec, c, geo, p), 1u8, c.call_id.as_str(), None),
            };
            out.push(EmitOut {
                ri, msg, row: encode_row(rec, expires), expires, fact_key: format!("{}:{}", rec.trust, ident), value,
                kind, version: rec.version(), live,
            });
        }
        out
    }
}
