//! `multipart/form-data` bodies (RFC 7578), as OpenAI's `POST /v1/images/edits` takes them: the
//! boundary from the `Content-Type` header, then each part's `Content-Disposition` name (and file
//! name) and its bytes. Bounded: at most [`MAX_PARTS`] parts, each part's headers at most
//! [`MAX_HEADER_BYTES`]; the body itself is already bounded by `--max-body-mb`. Every refusal names
//! the part (`image`, `mask`, …) or, before any part is known, `content-type` / `body`.

use super::error::ApiError;

/// Parts one body may have (the edits route has fewer than 20 fields).
pub const MAX_PARTS: usize = 64;
/// Bytes of one part's header block.
pub const MAX_HEADER_BYTES: usize = 8 << 10;

/// One form field: its name, the file name it was sent with (file parts), its `Content-Type` and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: &'a [u8],
}

impl Part<'_> {
    /// The part as text (a form field's value), refusals naming it.
    pub fn text(&self) -> Result<&str, ApiError> {
        std::str::from_utf8(self.data).map_err(|_| ApiError::bad(&self.name, "not valid UTF-8 text"))
    }
}

/// The `boundary` parameter of a `multipart/form-data` Content-Type.
pub fn boundary(content_type: Option<&str>) -> Result<String, ApiError> {
    const F: &str = "content-type";
    let ct = content_type.ok_or_else(|| {
        ApiError::bad(F, "missing: this endpoint takes multipart/form-data (image, mask and prompt as form fields)")
    })?;
    let mut items = ct.split(';');
    let mime = items.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(ApiError::bad(F, format!("`{}`: expected multipart/form-data", shown(mime))));
    }
    for (k, v) in items.filter_map(|p| p.split_once('=')) {
        if k.trim().eq_ignore_ascii_case("boundary") {
            let b = unquote(v.trim());
            // RFC 2046: 1 to 70 characters.
            if b.is_empty() || b.len() > 70 {
                return Err(ApiError::bad(F, format!("a boundary of {} bytes: expected 1 to 70", b.len())));
            }
            return Ok(b);
        }
    }
    Err(ApiError::bad(F, "multipart/form-data without its boundary parameter"))
}

/// The parts of `body` delimited by `boundary`, in order.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, ApiError> {
    const F: &str = "body";
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    // The first delimiter: at the start or after a preamble's CRLF.
    let mut at = if body.starts_with(delim) {
        delim.len()
    } else {
        find(body, &[b"\r\n", delim].concat(), 0)
            .map(|p| p + 2 + delim.len())
            .ok_or_else(|| ApiError::bad(F, "no multipart boundary found: expected `--BOUNDARY` then the parts"))?
    };
    let close = [b"\r\n", delim].concat();
    let mut parts = Vec::new();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding (spaces, tabs) may follow a delimiter before its CRLF.
        let pad = rest.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
        if !rest[pad..].starts_with(b"\r\n") {
            return Err(ApiError::bad(F, "a multipart boundary not followed by CRLF (or `--` at the end)"));
        }
        at += pad + 2;
        if parts.len() == MAX_PARTS {
            return Err(ApiError::bad(F, format!("more than {MAX_PARTS} parts")));
        }
        if body[at..].starts_with(b"\r\n") {
            return Err(ApiError::bad(F, format!("part {} has no headers (no Content-Disposition)", parts.len() + 1)));
        }
        let head_end = find(&body[at..], b"\r\n\r\n", 0).filter(|&e| e <= MAX_HEADER_BYTES).ok_or_else(|| {
            ApiError::bad(
                F,
                format!(
                    "part {} has no header block ending in a blank line within {MAX_HEADER_BYTES} bytes",
                    parts.len() + 1
                ),
            )
        })?;
        let (head, data_start) = (&body[at..at + head_end], at + head_end + 4);
        let end = find(body, &close, data_start).ok_or_else(|| {
            ApiError::bad(F, format!("part {} is not closed by its boundary (truncated body?)", parts.len() + 1))
        })?;
        parts.push(part(head, &body[data_start..end], parts.len() + 1)?);
        at = end + close.len();
    }
}

/// A part from its header block and bytes.
fn part<'a>(head: &[u8], data: &'a [u8], k: usize) -> Result<Part<'a>, ApiError> {
    let head = std::str::from_utf8(head).map_err(|_| ApiError::bad("body", format!("part {k}: headers not UTF-8")))?;
    let (mut name, mut filename, mut content_type) = (None, None, None);
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let Some((key, value)) = line.split_once(':') else {
            return Err(ApiError::bad("body", format!("part {k}: header line `{}` has no `:`", shown(line))));
        };
        let key = key.trim();
        if key.eq_ignore_ascii_case("content-disposition") {
            let mut items = params(value);
            let kind = items.first().map(|(k, _)| k.as_str()).unwrap_or("");
            if !kind.eq_ignore_ascii_case("form-data") {
                return Err(ApiError::bad(
                    "body",
                    format!("part {k}: Content-Disposition `{}`: expected form-data", shown(kind)),
                ));
            }
            for (pk, pv) in items.drain(1..) {
                match pk.to_ascii_lowercase().as_str() {
                    "name" => name = pv,
                    "filename" => filename = pv,
                    _ => {}
                }
            }
        } else if key.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_string());
        }
    }
    let name = name
        .ok_or_else(|| ApiError::bad("body", format!("part {k} has no Content-Disposition: form-data; name=\"…\"")))?;
    Ok(Part { name, filename, content_type, data })
}

/// `form-data; name="a"; filename="b.png"` as (key, value) pairs, the first with no value.
fn params(v: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = v.trim();
    while !rest.is_empty() {
        let key_end = rest.find(['=', ';']).unwrap_or(rest.len());
        let key = rest[..key_end].trim().to_string();
        rest = &rest[key_end..];
        let value = if let Some(r) = rest.strip_prefix('=') {
            let r = r.trim_start();
            if let Some(q) = r.strip_prefix('"') {
                // A quoted string: `\"` and `\\` escapes.
                let mut s = String::new();
                let mut chars = q.char_indices();
                let mut end = q.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                s.push(n);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => s.push(c),
                    }
                }
                rest = &q[end.min(q.len())..];
                Some(s)
            } else {
                let e = r.find(';').unwrap_or(r.len());
                let s = r[..e].trim().to_string();
                rest = &r[e..];
                Some(s)
            }
        } else {
            None
        };
        out.push((key, value));
        rest = rest.trim_start().strip_prefix(';').unwrap_or(rest).trim_start();
    }
    out
}

fn unquote(v: &str) -> String {
    v.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(v).to_string()
}

/// At most 64 characters of client text, for messages.
fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The first `needle` in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let p = hay[i..hay.len() - needle.len() + 1].iter().position(|&c| c == first)?;
        i += p;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut b = b"preamble\r\n".to_vec();
        for (name, file, data) in parts {
            b.extend_from_slice(b"--XyZ\r\n");
            match file {
                Some(f) => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
                ),
                None => b.extend_from_slice(format!("content-disposition: form-data; name={name}\r\n\r\n").as_bytes()),
            }
            b.extend_from_slice(data);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    #[test]
    fn parts_and_refusals() {
        assert_eq!(boundary(Some("multipart/form-data; boundary=\"XyZ\"")).unwrap(), "XyZ");
        assert_eq!(boundary(Some("Multipart/Form-Data;charset=utf-8; boundary=XyZ")).unwrap(), "XyZ");
        for bad in [None, Some("application/json"), Some("multipart/form-data"), Some("multipart/form-data; boundary=")]
        {
            assert_eq!(boundary(bad).unwrap_err().field.as_deref(), Some("content-type"), "{bad:?}");
        }
        let b = body(&[("prompt", None, b"a cat\r\n--XyNot"), ("image", Some("a \\\"b\\\".png"), b"\x89PNG\r\n\0")]);
        let parts = parse(&b, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].name.as_str(), parts[0].data), ("prompt", &b"a cat\r\n--XyNot"[..]));
        assert_eq!(parts[1].filename.as_deref(), Some("a \"b\".png"));
        assert_eq!(parts[1].content_type.as_deref(), Some("image/png"));
        assert_eq!(parts[1].data, b"\x89PNG\r\n\0");
        assert!(parse(b"--XyZ--", "XyZ").unwrap().is_empty());
        for bad in [
            &b"no boundary"[..],
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunclosed",
            b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--",
            b"--XyZ\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n--XyZ--",
            b"--XyZ\r\nno colon\r\n\r\nx\r\n--XyZ--",
            b"--XyZjunk",
        ] {
            assert_eq!(
                parse(bad, "XyZ").unwrap_err().field.as_deref(),
                Some("body"),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: Vec<(&str, Option<&str>, &[u8])> = vec![("x", None, b"1"); MAX_PARTS + 1];
        assert!(parse(&body(&many), "XyZ").unwrap_err().message.contains("parts"));
    }
}
