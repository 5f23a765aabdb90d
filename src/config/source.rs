//! The declaration's text: reading it safely, parsing it with spans, and finding where in the
//! file a value (named by its JSON pointer) was written.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};

/// Larger files are refused before parsing: a real declaration of thousands of subsystems is a
/// few megabytes.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Why a declaration could not be turned into text.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file cannot be read at all (exit status 2).
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is there but is not a plausible declaration (exit status 1).
    /// Carries the message, the byte offset of the problem and the text as far as it reads.
    #[error("{0}")]
    NotText(String, usize, String),
}

/// Reads a declaration, refusing files too large or not UTF-8.
pub fn read(path: &Path) -> Result<String, SourceError> {
    let unreadable = |source| SourceError::Unreadable {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.is_dir() {
        return Err(unreadable(std::io::Error::other("it is a directory")));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(SourceError::NotText(
            format!(
                "the file is {} bytes; a declaration may be at most {MAX_FILE_BYTES} bytes",
                meta.len()
            ),
            0,
            String::new(),
        ));
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    String::from_utf8(bytes).map_err(|err| {
        let at = err.utf8_error().valid_up_to();
        let lossy = String::from_utf8_lossy(err.as_bytes()).into_owned();
        SourceError::NotText(
            "the file is not UTF-8 text (TOML files must be UTF-8)".into(),
            at,
            lossy,
        )
    })
}

/// Where a value was written: its key (absent for array elements and the root) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spans {
    pub key: Option<Range<usize>>,
    pub value: Range<usize>,
}

/// JSON pointer (as jsonschema reports instance paths) to the spans of that value.
#[derive(Debug, Default)]
pub struct SpanIndex {
    spans: HashMap<String, Spans>,
}

impl SpanIndex {
    /// The spans of the value at `pointer`, or of its nearest ancestor that was written down
    /// (a missing key is reported at the table that lacks it).
    pub fn find(&self, pointer: &str) -> Option<&Spans> {
        let mut p = pointer;
        loop {
            if let Some(s) = self.spans.get(p) {
                return Some(s);
            }
            if p.is_empty() {
                return None;
            }
            p = p.rfind('/').map_or("", |i| &p[..i]);
        }
    }
}

/// Escapes a key as a JSON pointer segment (RFC 6901).
pub fn escape_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Converts the parsed document to JSON (what the schema validates) and records every
/// value's spans.
pub fn to_json(root: &toml::Spanned<DeTable<'_>>) -> (serde_json::Value, SpanIndex) {
    let mut index = SpanIndex::default();
    index.spans.insert(
        String::new(),
        Spans {
            key: None,
            value: root.span(),
        },
    );
    let mut pointer = String::new();
    let value = table_to_json(root.get_ref(), &mut pointer, &mut index);
    (value, index)
}

fn table_to_json(
    table: &DeTable<'_>,
    pointer: &mut String,
    index: &mut SpanIndex,
) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (key, value) in table {
        let len = pointer.len();
        pointer.push('/');
        pointer.push_str(&escape_segment(key.get_ref()));
        index.spans.insert(
            pointer.clone(),
            Spans {
                key: Some(key.span()),
                value: value.span(),
            },
        );
        map.insert(
            key.get_ref().to_string(),
            value_to_json(value.get_ref(), pointer, index),
        );
        pointer.truncate(len);
    }
    serde_json::Value::Object(map)
}

fn value_to_json(
    value: &DeValue<'_>,
    pointer: &mut String,
    index: &mut SpanIndex,
) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        DeValue::String(s) => J::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map_or_else(|_| J::String(i.as_str().to_string()), J::from),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| J::String(f.as_str().to_string()), J::Number),
        DeValue::Boolean(b) => J::Bool(*b),
        DeValue::Datetime(d) => J::String(d.to_string()),
        DeValue::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                index.spans.insert(
                    pointer.clone(),
                    Spans {
                        key: None,
                        value: item.span(),
                    },
                );
                out.push(value_to_json(item.get_ref(), pointer, index));
                pointer.truncate(len);
            }
            J::Array(out)
        }
        DeValue::Table(table) => table_to_json(table, pointer, index),
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

/// The full line that holds `offset`, without its newline.
pub fn line_text(text: &str, offset: usize) -> &str {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    text[start..end].trim_end_matches('\r')
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_follow_pointers() {
        let text = "[target]\ncore_mask = \"0x3\"\n\n[[subsystem]]\nnqn = \"a\"\n[[subsystem.namespace]]\nnsid = 7\n";
        let root = DeTable::parse(text).unwrap();
        let (json, index) = to_json(&root);
        assert_eq!(json["subsystem"][0]["namespace"][0]["nsid"], 7);
        let nsid = index.find("/subsystem/0/namespace/0/nsid").unwrap();
        assert_eq!(line_col(text, nsid.value.start), (7, 8));
        assert_eq!(line_col(text, nsid.key.clone().unwrap().start), (7, 1));
        // A missing key falls back to its table.
        let table = index.find("/subsystem/0/namespace/0/missing").unwrap();
        assert_eq!(table, index.find("/subsystem/0/namespace/0").unwrap());
        let mask = index.find("/target/core_mask").unwrap();
        assert_eq!(line_text(text, mask.value.start), "core_mask = \"0x3\"");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("é = 1\nx", 6), (1, 6));
        assert_eq!(line_col("a\nb", 2), (2, 1));
        assert_eq!(line_col("", 10), (1, 1));
    }
}
