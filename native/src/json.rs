//! JSON string unescaping shared by the sink's fact decoder (facts.rs) and the worker's state-row
//! reader (worker.rs): one place for escapes and surrogate pairs.

fn hex4(b: &[u8], p: &mut usize) -> Option<u32> {
    let h = b.get(*p..*p + 4)?;
    *p += 4;
    u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
}

/// The JSON string at `b[*p]` (its opening quote) unescaped onto `out`, `*p` left after its closing
/// quote. None if malformed: no opening or closing quote, a bad or short escape, a lone surrogate,
/// or, unless `raw_controls`, an unescaped control character (json.dumps never writes one).
pub fn unescape(b: &[u8], p: &mut usize, out: &mut Vec<u8>, raw_controls: bool) -> Option<()> {
    if b.get(*p) != Some(&b'"') {
        return None;
    }
    *p += 1;
    loop {
        let start = *p;
        while *p < b.len() {
            let c = b[*p];
            if c == b'"' || c == b'\\' || (c < 0x20 && !raw_controls) {
                break;
            }
            *p += 1;
        }
        out.extend_from_slice(&b[start..*p]);
        let c = *b.get(*p)?;
        if c < 0x20 {
            return None; // stopped here only when raw control characters are refused
        }
        *p += 1;
        if c == b'"' {
            return Some(());
        }
        let e = *b.get(*p)?;
        *p += 1;
        match e {
            b'"' => out.push(b'"'),
            b'\\' => out.push(b'\\'),
            b'/' => out.push(b'/'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'u' => {
                let hi = hex4(b, p)?;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if !b[*p..].starts_with(b"\\u") {
                        return None;
                    }
                    *p += 2;
                    let lo = hex4(b, p)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                let ch = char::from_u32(code)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            _ => return None,
        }
    }
}
