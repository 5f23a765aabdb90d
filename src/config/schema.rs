//! The JSON Schema of the declaration, generated from the model, and validation of a parsed
//! file against it with plain-English diagnostics.

use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use schemars::generate::SchemaSettings;
use serde_json::Value;

use super::diagnostic::{Diagnostic, suggest};
use super::model::Config;
use super::source::escape_segment;
use super::units::pattern_hint;

/// The schema `nvmf-tgt schema` prints and `schema/target.schema.json` holds.
pub fn json_schema() -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<Config>().to_value();
    // TOML has no null: an optional key is simply absent, so "or null" only muddles editors'
    // completion and turns clear errors into "not valid under any of anyOf".
    strip_null(&mut schema);
    if let Value::Object(map) = &mut schema {
        map.insert(
            "$id".into(),
            "https://nvmf-tgt.dev/schema/target.schema.json".into(),
        );
    }
    schema
}

fn strip_null(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(options)) = map.get("anyOf") {
                let non_null: Vec<&Value> = options
                    .iter()
                    .filter(|o| o.get("type") != Some(&Value::String("null".into())))
                    .collect();
                if non_null.len() == 1 && options.len() == 2 {
                    let kept = non_null[0].clone();
                    map.remove("anyOf");
                    if let Value::Object(kept) = kept {
                        for (k, v) in kept {
                            map.entry(k).or_insert(v);
                        }
                    }
                }
            }
            for v in map.values_mut() {
                strip_null(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}

struct Compiled {
    schema: Value,
    validator: jsonschema::Validator,
}

fn compiled() -> Option<&'static Compiled> {
    static COMPILED: OnceLock<Option<Compiled>> = OnceLock::new();
    COMPILED
        .get_or_init(|| {
            let schema = json_schema();
            let validator = jsonschema::validator_for(&schema).ok()?;
            Some(Compiled { schema, validator })
        })
        .as_ref()
}

/// Every schema violation in `instance`, as diagnostics located by JSON pointer.
pub fn validate(instance: &Value) -> Vec<Diagnostic> {
    let Some(compiled) = compiled() else {
        return vec![Diagnostic::error(
            "",
            "internal error: the built-in schema does not compile",
        )];
    };
    let mut out = Vec::new();
    for error in compiled.validator.iter_errors(instance) {
        let pointer = error.instance_path().as_str().to_string();
        let node = schema_at(&compiled.schema, &pointer);
        let value = error.instance();
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let known = known_keys(&compiled.schema, node);
                for key in unexpected {
                    let mut d = Diagnostic::error(
                        format!("{pointer}/{}", escape_segment(key)),
                        format!("unknown key `{key}`{}", place(&pointer)),
                    )
                    .at_key();
                    if let Some(help) = suggest(key, known.iter().map(String::as_str)) {
                        d = d.with_help(help);
                    } else if !known.is_empty() {
                        d = d.with_help(format!("known keys here: {}", known.join(", ")));
                    }
                    out.push(d);
                }
            }
            ValidationErrorKind::Required { property } => {
                let key = property.as_str().unwrap_or("?");
                out.push(Diagnostic::error(
                    pointer.clone(),
                    format!("missing required key `{key}`{}", place(&pointer)),
                ));
            }
            ValidationErrorKind::Type { .. } => {
                let expected = node
                    .and_then(|n| resolve(&compiled.schema, n).get("type"))
                    .map_or_else(|| "another type".to_string(), describe_types);
                out.push(Diagnostic::error(
                    pointer.clone(),
                    format!(
                        "`{}` must be {expected}, not {}",
                        last_key(&pointer),
                        toml_type(value)
                    ),
                ));
            }
            ValidationErrorKind::Enum { options } => {
                let options: Vec<String> = options
                    .as_array()
                    .map(|o| o.iter().map(|v| v.to_string().replace('"', "")).collect())
                    .unwrap_or_default();
                let shown = value.to_string();
                let mut d = Diagnostic::error(
                    pointer.clone(),
                    format!(
                        "`{}` cannot be {shown}: it must be one of {}",
                        last_key(&pointer),
                        options.join(", ")
                    ),
                );
                if let Some(help) = value
                    .as_str()
                    .and_then(|s| suggest(s, options.iter().map(String::as_str)))
                {
                    d = d.with_help(help);
                }
                out.push(d);
            }
            ValidationErrorKind::Minimum { limit } => out.push(Diagnostic::error(
                pointer.clone(),
                format!(
                    "`{}` = {value} is below the minimum of {limit}",
                    last_key(&pointer)
                ),
            )),
            ValidationErrorKind::Maximum { limit } => out.push(Diagnostic::error(
                pointer.clone(),
                format!(
                    "`{}` = {value} is above the maximum of {limit}",
                    last_key(&pointer)
                ),
            )),
            ValidationErrorKind::Pattern { pattern } => {
                let hint = pattern_hint(pattern).unwrap_or("in the expected form");
                out.push(Diagnostic::error(
                    pointer.clone(),
                    format!("`{}` = {value} is not {hint}", last_key(&pointer)),
                ));
            }
            _ => out.push(Diagnostic::error(pointer.clone(), error.to_string())),
        }
    }
    out
}

/// " in [transport.tcp]" or " in subsystem[0].namespace[1]" for a table's pointer.
fn place(pointer: &str) -> String {
    if pointer.is_empty() {
        return " at the top level".into();
    }
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg.replace("~1", "/").replace("~0", "~"));
        }
    }
    format!(" in {out}")
}

fn last_key(pointer: &str) -> String {
    pointer
        .rsplit('/')
        .find(|s| !s.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or("value")
        .replace("~1", "/")
        .replace("~0", "~")
}

fn toml_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

fn describe_types(types: &Value) -> String {
    let one = |t: &str| match t {
        "integer" => "an integer",
        "number" => "a number",
        "string" => "a string",
        "boolean" => "a boolean (true or false)",
        "object" => "a table",
        "array" => "an array",
        _ => "a value",
    };
    match types {
        Value::String(t) => one(t).to_string(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(one)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "a value".into(),
    }
}

/// Follows `$ref` to the definition it names.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    let mut node = node;
    for _ in 0..8 {
        let Some(reference) = node.get("$ref").and_then(Value::as_str) else {
            break;
        };
        let Some(target) = reference.strip_prefix('#').and_then(|p| root.pointer(p)) else {
            break;
        };
        node = target;
    }
    node
}

/// The schema node that describes the instance at `pointer`.
fn schema_at<'a>(root: &'a Value, pointer: &str) -> Option<&'a Value> {
    let mut node = resolve(root, root);
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        let next = node
            .get("properties")
            .and_then(|p| p.get(&seg))
            .or_else(|| node.get("items"))
            .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))?;
        node = resolve(root, next);
    }
    Some(node)
}

fn known_keys(root: &Value, node: Option<&Value>) -> Vec<String> {
    node.map(|n| resolve(root, n))
        .and_then(|n| n.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_compiles_and_has_no_null() {
        let schema = json_schema();
        assert!(jsonschema::validator_for(&schema).is_ok());
        let text = schema.to_string();
        assert!(
            !text.contains("{\"type\":\"null\"}") && !text.contains(",\"null\"]"),
            "{text}"
        );
    }

    #[test]
    fn unknown_key_gets_a_suggestion() {
        let instance = serde_json::json!({"transport": {"tcp": {"max_queue_dept": 4}}});
        let found = validate(&instance);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pointer, "/transport/tcp/max_queue_dept");
        assert_eq!(
            found[0].message,
            "unknown key `max_queue_dept` in transport.tcp"
        );
        assert_eq!(
            found[0].help.as_deref(),
            Some("did you mean `max_queue_depth`?")
        );
    }

    #[test]
    fn types_ranges_enums_and_patterns_read_plainly() {
        let instance = serde_json::json!({
            "target": {"interrupt_mode": "yes", "core_mask": "cores"},
            "subsystem": [{"nqn": "nqn.2026-01.io.x:a",
                "listener": [{"transport": "tpc", "port": 0}],
                "namespace": [{"nsid": 0, "block_size": 1024, "ram": {"size": "12XB"}}]}]
        });
        let messages: Vec<String> = validate(&instance).into_iter().map(|d| d.message).collect();
        for expected in [
            "`interrupt_mode` must be a boolean (true or false), not a string",
            "`core_mask` = \"cores\" is not a hex mask such as \"0x3\" or a CPU list such as \"0-1,4\"",
            "`transport` cannot be \"tpc\": it must be one of tcp, rdma, vfiouser, fc",
            "`port` = 0 is below the minimum of 1",
            "`nsid` = 0 is below the minimum of 1",
            "`block_size` cannot be 1024: it must be one of 512, 4096",
            "`size` = \"12XB\" is not a size: a number of bytes or a number with a unit (KiB, MiB, GiB, TiB)",
        ] {
            assert!(
                messages.iter().any(|m| m == expected),
                "missing {expected:?} in {messages:#?}"
            );
        }
    }
}
