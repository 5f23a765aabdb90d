//! The declaration: `target.toml` read, parsed with spans, validated against the JSON Schema
//! and the semantic rules, with every problem reported at once as `file:line:col`.
//!
//! `check`, `run` and (later) reload go through [`check_text`], so they accept and refuse the
//! same files.

mod diagnostic;
mod environment;
mod model;
mod nqn;
mod rules;
mod schema;
mod source;
mod units;

use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use toml::de::DeTable;

pub use diagnostic::{Diagnostic, Report, Severity, Summary};
pub use environment::{Environment, FileProbe};
pub use model::*;
pub use nqn::validate as validate_nqn;
pub use rules::Purpose;
pub use schema::json_schema;
pub use source::{MAX_FILE_BYTES, SourceError, read as read_text};
pub use units::{CoreMask, Eui64, HexId, Nguid, Size, Uuid, parse_size};

/// A declaration that passed every check, with the report (which may hold warnings).
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: Config,
    pub report: Report,
}

/// Reads and checks a file. `Err` only when the file cannot be read at all; a file that is
/// read but invalid gives a report without a config.
pub fn check_file(
    path: &Path,
    purpose: Purpose,
    env: &Environment,
) -> Result<(Option<Config>, Report), SourceError> {
    let file = path.display().to_string();
    match source::read(path) {
        Ok(text) => Ok(check_text(&file, text, purpose, env)),
        Err(SourceError::NotText(message, at, text)) => {
            let report = Report {
                file,
                text,
                diagnostics: vec![Diagnostic::error("", message).with_span(at..at)],
                summary: None,
            };
            Ok((None, report))
        }
        Err(err) => Err(err),
    }
}

/// Checks a declaration's text: parse, schema, semantic rules.
pub fn check_text(
    file: &str,
    text: String,
    purpose: Purpose,
    env: &Environment,
) -> (Option<Config>, Report) {
    let (config, diagnostics) = diagnose(&text, purpose, env);
    let summary = config.as_ref().map(summarize);
    let mut report = Report {
        file: file.to_string(),
        text,
        diagnostics,
        summary,
    };
    if !report.is_valid() {
        report.summary = None;
        return (None, report);
    }
    (config, report)
}

/// Loads a declaration to serve it: checked for `run`, any warnings left in the report.
pub fn load(path: &Path) -> Result<Checked, LoadError> {
    let env = Environment::this_machine();
    let (config, report) = check_file(path, Purpose::Run, &env)?;
    match config {
        Some(config) => Ok(Checked { config, report }),
        None => Err(LoadError::Invalid(Box::new(report))),
    }
}

/// Line and column where the value at `pointer` is written in `text`.
pub fn locate(text: &str, pointer: &str) -> Option<(usize, usize)> {
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return None;
    }
    let (_, index) = source::to_json(&root);
    let spans = index.find(pointer)?;
    let at = spans.key.as_ref().unwrap_or(&spans.value).start;
    Some(source::line_col(text, at))
}

/// Where the declaration at `path` puts the control socket, read leniently: the commands that
/// talk to a running target need it most when the file is being edited and invalid. A file
/// that is valid TOML gives `[target] control_socket` whatever else is wrong with it; one
/// that is not is searched line by line for it in its `[target]` table. The note says what
/// was done when the answer is not simply the declared socket (or the default, when none
/// is declared).
pub fn control_socket_leniently(path: &Path) -> (PathBuf, Option<String>) {
    let default = || PathBuf::from(DEFAULT_CONTROL_SOCKET);
    let text = match source::read(path) {
        Ok(text) => text,
        Err(err) => {
            return (
                default(),
                Some(format!(
                    "{err}; trying the default control socket {DEFAULT_CONTROL_SOCKET}"
                )),
            );
        }
    };
    match toml::from_str::<toml::Table>(&text) {
        Ok(table) => {
            let declared = table
                .get("target")
                .and_then(|t| t.get("control_socket"))
                .and_then(toml::Value::as_str);
            (declared.map_or_else(default, PathBuf::from), None)
        }
        Err(err) => {
            let why = err.message().trim_end().to_owned();
            match control_socket_line(&text) {
                Some((line, socket)) => (
                    PathBuf::from(socket),
                    Some(format!(
                        "{} is not valid TOML ({why}); using the control_socket of its line {line}",
                        path.display()
                    )),
                ),
                None => (
                    default(),
                    Some(format!(
                        "{} is not valid TOML ({why}) and names no control_socket; trying the default {DEFAULT_CONTROL_SOCKET}",
                        path.display()
                    )),
                ),
            }
        }
    }
}

/// The first `control_socket = "..."` line inside `[target]`, with its line number.
fn control_socket_line(text: &str) -> Option<(usize, String)> {
    let mut in_target = false;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            in_target = line.trim_start_matches('[').trim_end_matches(']').trim() == "target";
            continue;
        }
        if !in_target {
            continue;
        }
        let Some(value) = line
            .strip_prefix("control_socket")
            .map(str::trim_start)
            .and_then(|rest| rest.strip_prefix('='))
        else {
            continue;
        };
        let value = value.trim();
        let quote = value.chars().next().filter(|q| *q == '"' || *q == '\'')?;
        let rest = &value[1..];
        let end = rest.find(quote)?;
        return Some((number + 1, rest[..end].to_owned()));
    }
    None
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{}", .0.render().trim_end())]
    Invalid(Box<Report>),
}

fn diagnose(text: &str, purpose: Purpose, env: &Environment) -> (Option<Config>, Vec<Diagnostic>) {
    let (root, parse_errors) = DeTable::parse_recoverable(text);
    if !parse_errors.is_empty() {
        let found = parse_errors
            .iter()
            .map(|e| {
                let d = Diagnostic::error("", format!("TOML syntax: {}", e.message().trim_end()));
                match e.span() {
                    Some(span) => d.with_span(span),
                    None => d,
                }
            })
            .collect();
        return (None, found);
    }
    let (mut json, index) = source::to_json(&root);
    let schema_found = schema::validate(&json);
    if !schema_found.is_empty() {
        // Report the schema's findings and, so that one run shows every problem, apply the
        // rules to what is left once the offending keys are taken out (they take defaults).
        let mut found = schema_found;
        let pruned: Vec<String> = found.iter().map(|d| d.pointer.clone()).collect();
        if pruned.iter().all(|p| remove_pointer(&mut json, p)) {
            if let Ok(config) = serde_json::from_value::<Config>(json) {
                let rest = rules::check(&config, env, purpose);
                found.extend(rest.into_iter().filter(|d| {
                    !pruned
                        .iter()
                        .any(|p| d.pointer == *p || d.pointer.starts_with(&format!("{p}/")))
                }));
            }
        }
        found.iter_mut().for_each(|d| d.resolve(&index));
        return (None, found);
    }
    let config = match Config::deserialize(toml::de::Deserializer::from(root)) {
        Ok(config) => config,
        Err(err) => {
            // The schema accepts what the types do; what remains is values out of a type's
            // range (a size of a billion TiB) that only deserializing finds.
            let d = Diagnostic::error("", err.message().trim_end().to_string());
            let d = match err.span() {
                Some(span) => d.with_span(span),
                None => d,
            };
            return (None, vec![d]);
        }
    };
    let mut found = rules::check(&config, env, purpose);
    found.iter_mut().for_each(|d| d.resolve(&index));
    (Some(config), found)
}

/// Removes the key `pointer` names from its table; false when it names no table key (an
/// array element, or the root), so the caller knows the rest cannot be trusted.
fn remove_pointer(json: &mut serde_json::Value, pointer: &str) -> bool {
    let Some((parent, key)) = pointer.rsplit_once('/') else {
        return false;
    };
    let key = key.replace("~1", "/").replace("~0", "~");
    match json.pointer_mut(parent) {
        Some(serde_json::Value::Object(map)) => {
            map.remove(&key);
            true
        }
        // Already removed with its parent.
        None => true,
        Some(_) => false,
    }
}

fn summarize(config: &Config) -> Summary {
    Summary {
        subsystems: config.subsystem.len(),
        namespaces: config.subsystem.iter().map(|s| s.namespace.len()).sum(),
        listeners: config.subsystem.iter().map(|s| s.listener.len()).sum(),
        mode: if config.target.interrupt_mode {
            "interrupt"
        } else {
            "poll"
        },
    }
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
