//! JSON written the way Python's `json.dumps` writes it by default (`", "` and `": "`
//! separators, non-ASCII and DEL escaped as `\uXXXX`), so the mock worker's records are byte
//! for byte those of Codeswarm's Python mock worker.

use serde::Serialize;
use serde_json::ser::Formatter;
use std::io::{self, Write};

#[derive(Default)]
struct PyFormatter;

impl Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if (' '..='~').contains(&c) {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// `value` as Python's `json.dumps(value)` text plus `\n`.
pub fn line<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter);
    if value.serialize(&mut ser).is_err() {
        out.clear();
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_json_dumps() {
        // json.dumps({"a": [1, "é\n"], "b": {"c": None}, "d": "\u{1F600}\x7f"})
        let v = json!({"a": [1, "é\n"], "b": {"c": null}, "d": "\u{1F600}\u{7f}"});
        assert_eq!(
            String::from_utf8(line(&v)).unwrap(),
            "{\"a\": [1, \"\\u00e9\\n\"], \"b\": {\"c\": null}, \"d\": \"\\ud83d\\ude00\\u007f\"}\n"
        );
    }
}
