//! Problems found in a declaration, and how they are shown: `file:line:col: error: message`
//! with the source line and a caret under the spot, or the same as JSON for tools.

use std::fmt::Write as _;
use std::ops::Range;

use serde::Serialize;

use super::source::{SpanIndex, line_col, line_text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Which part of a `key = value` a diagnostic points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Key,
    Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// JSON pointer to the value concerned ("" for the whole file).
    pub pointer: String,
    pub anchor: Anchor,
    /// Bytes of the file, once resolved against the span index (or given by the parser).
    pub span: Option<Range<usize>>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            message: message.into(),
            pointer: pointer.into(),
            anchor: Anchor::Value,
            span: None,
            help: None,
        }
    }

    pub fn warning(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(pointer, message)
        }
    }

    /// Points at the key rather than the value (for builders that hold a `&mut`).
    pub fn key(&mut self) -> &mut Self {
        self.anchor = Anchor::Key;
        self
    }

    pub fn help(&mut self, help: impl Into<String>) -> &mut Self {
        self.help = Some(help.into());
        self
    }

    #[must_use]
    pub fn at_key(mut self) -> Self {
        self.anchor = Anchor::Key;
        self
    }

    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    #[must_use]
    pub fn with_span(mut self, span: Range<usize>) -> Self {
        self.span = Some(span);
        self
    }

    /// Fills in the span from the pointer, unless the parser already gave one.
    pub fn resolve(&mut self, index: &SpanIndex) {
        if self.span.is_some() {
            return;
        }
        if let Some(spans) = index.find(&self.pointer) {
            self.span = Some(match (self.anchor, &spans.key) {
                (Anchor::Key, Some(key)) => key.clone(),
                _ => spans.value.clone(),
            });
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// "did you mean" for a misspelt name, when one known name is close enough.
pub fn suggest<'a>(wrong: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(wrong, k), k))
        .filter(|(distance, k)| *distance <= (k.len().max(wrong.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| format!("did you mean `{k}`?"))
}

/// What a valid declaration holds, for the one-line summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub subsystems: usize,
    pub namespaces: usize,
    pub listeners: usize,
    pub mode: &'static str,
}

/// Everything `check` found in one file.
#[derive(Debug, Clone)]
pub struct Report {
    pub file: String,
    pub text: String,
    pub diagnostics: Vec<Diagnostic>,
    pub summary: Option<Summary>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }

    pub fn is_valid(&self) -> bool {
        self.errors() == 0
    }

    /// Treats warnings as errors (`check --strict`).
    pub fn make_strict(&mut self) {
        for d in &mut self.diagnostics {
            d.severity = Severity::Error;
        }
        if !self.is_valid() {
            self.summary = None;
        }
    }

    /// Diagnostics in file order, each with its excerpt, then one summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in self.sorted() {
            self.render_one(&mut out, d);
        }
        let counts = match (self.errors(), self.warnings()) {
            (0, 0) => String::new(),
            (e, w) => format!(" ({})", plural_counts(e, w)),
        };
        match (&self.summary, self.is_valid()) {
            (Some(s), true) => {
                let _ = writeln!(
                    out,
                    "{}: valid: {} subsystem{}, {} namespace{}, {} listener{}, {} mode{counts}",
                    self.file,
                    s.subsystems,
                    plural(s.subsystems),
                    s.namespaces,
                    plural(s.namespaces),
                    s.listeners,
                    plural(s.listeners),
                    s.mode
                );
            }
            _ => {
                let _ = writeln!(out, "{}: invalid{counts}", self.file);
            }
        }
        out
    }

    fn sorted(&self) -> Vec<&Diagnostic> {
        let mut sorted: Vec<&Diagnostic> = self.diagnostics.iter().collect();
        sorted.sort_by_key(|d| d.span.as_ref().map_or(0, |s| s.start));
        sorted
    }

    fn render_one(&self, out: &mut String, d: &Diagnostic) {
        let severity = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let Some(span) = &d.span else {
            let _ = writeln!(
                out,
                "{}: {severity}: {}",
                printable(&self.file),
                printable(&d.message)
            );
            if let Some(help) = &d.help {
                let _ = writeln!(out, "  = help: {help}");
            }
            return;
        };
        let (line, col) = line_col(&self.text, span.start);
        let _ = writeln!(
            out,
            "{}:{line}:{col}: {severity}: {}",
            printable(&self.file),
            printable(&d.message)
        );
        let source = line_text(&self.text, span.start);
        let gutter = line.to_string().len();
        let shown = printable(&source.chars().take(160).collect::<String>());
        let _ = writeln!(out, " {line} | {shown}");
        let end_col = if line_col(&self.text, span.end).0 == line {
            line_col(&self.text, span.end).1
        } else {
            source.chars().count() + 1
        };
        let width = end_col.saturating_sub(col).clamp(1, 160);
        let _ = writeln!(
            out,
            " {:gutter$} | {}{}",
            "",
            " ".repeat(col.saturating_sub(1).min(160)),
            "^".repeat(width)
        );
        if let Some(help) = &d.help {
            let _ = writeln!(out, " {:gutter$} = help: {help}", "");
        }
    }

    /// The same findings as JSON, for tools (JSON escapes control characters itself).
    pub fn to_json(&self) -> serde_json::Value {
        let diagnostics: Vec<serde_json::Value> = self
            .sorted()
            .into_iter()
            .map(|d| {
                let (line, column) = d.span.as_ref().map_or((None, None), |s| {
                    let (l, c) = line_col(&self.text, s.start);
                    (Some(l), Some(c))
                });
                serde_json::json!({
                    "severity": d.severity,
                    "message": d.message,
                    "file": self.file,
                    "line": line,
                    "column": column,
                    "pointer": d.pointer,
                    "help": d.help,
                })
            })
            .collect();
        serde_json::json!({
            "file": self.file,
            "valid": self.is_valid(),
            "errors": self.errors(),
            "warnings": self.warnings(),
            "diagnostics": diagnostics,
            "summary": self.summary,
        })
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn plural_counts(errors: usize, warnings: usize) -> String {
    let mut parts = Vec::new();
    if errors > 0 {
        parts.push(format!("{errors} error{}", plural(errors)));
    }
    if warnings > 0 {
        parts.push(format!("{warnings} warning{}", plural(warnings)));
    }
    parts.join(", ")
}

/// Text from a declaration (or a label a client sent) made safe for a terminal or a log:
/// control characters and bidirectional overrides, which could rewrite what an operator
/// sees, become U+FFFD, one character for one, so carets stay under their column.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
            if (c.is_control() && c != '\t') || bidi {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_only_when_close() {
        assert_eq!(
            suggest("max_queue_dept", ["max_queue_depth", "max_io_size"]),
            Some("did you mean `max_queue_depth`?".into())
        );
        assert_eq!(suggest("colour", ["max_io_size", "nsid"]), None);
    }

    #[test]
    fn control_characters_and_bidi_overrides_are_not_echoed() {
        assert_eq!(
            printable("a\u{1b}[31mb\u{202E}c\td\0"),
            "a\u{FFFD}[31mb\u{FFFD}c\td\u{FFFD}"
        );
    }

    #[test]
    fn renders_location_excerpt_and_help() {
        let text = "[target]\ncore_mask = \"0x3\"\nbogus = 1\n".to_string();
        let report = Report {
            file: "t.toml".into(),
            text,
            diagnostics: vec![
                Diagnostic::error("/target/bogus", "unknown key `bogus`")
                    .with_span(27..32)
                    .with_help("did you mean `busy_poll_us`?"),
            ],
            summary: None,
        };
        assert_eq!(
            report.render(),
            "t.toml:3:1: error: unknown key `bogus`\n 3 | bogus = 1\n   | ^^^^^\n   = help: did you mean `busy_poll_us`?\nt.toml: invalid (1 error)\n"
        );
    }
}
