//! Fuzzing of the declaration: `check_text` on declarations drawn from a grammar of its keys
//! (random values, wrong types, duplicates, deep nesting, unicode, huge numbers) and on
//! byte-level mutations of the examples.
//!
//! Invariants: no panic (checking, rendering, JSON, `locate`); every diagnostic's span and
//! `line:col` lie inside the file; and a declaration `check` accepts serialises back to TOML
//! that `check` accepts again, with the same model and the same findings.

use std::fmt::Write as _;

use super::*;
use crate::fuzz::{self, Rng, Trace, count};

const EXAMPLES: [&str; 5] = [
    include_str!("../../examples/minimal.toml"),
    include_str!("../../examples/tcp.toml"),
    include_str!("../../examples/rdma.toml"),
    include_str!("../../examples/vfiouser.toml"),
    include_str!("../../examples/production.toml"),
];

#[test]
fn fuzz_config_declarations() {
    fuzz::run("fuzz_config_declarations", |rng, trace| {
        let text = declaration(rng);
        trace.log(|| format!("declaration ({} bytes):\n{text}", text.len()));
        let env = environment(rng);
        let check = check_one(&text, Purpose::Check, &env, trace);
        let run = check_one(&text, Purpose::Run, &env, trace);
        // run is check with machine-dependent warnings made errors: never more lenient.
        assert!(!run || check, "run accepts what check refuses");
    });
}

/// A machine with two CPUs whose backing files are missing, or all usable with some size.
fn environment(rng: &mut Rng) -> Environment {
    let mut env = Environment::fixed(vec![0, 1]);
    if rng.bool() {
        let len = *rng.pick(&[0u64, 4096, 1 << 20, 1 << 30, u64::MAX]);
        env.probe_file = Box::new(move |_, _| FileProbe::Usable {
            len,
            logical_block: None,
        });
    }
    if rng.chance(20) {
        env.group_id = Box::new(|_| Ok(Some(1000)));
    }
    env
}

/// Checks `text` and every invariant of what `check` says about it; whether it is valid.
fn check_one(text: &str, purpose: Purpose, env: &Environment, trace: &mut Trace) -> bool {
    let (config, report) = check_text("fuzz.toml", text.to_string(), purpose, env);
    let mut strict = report.clone();
    strict.make_strict();
    assert_eq!(
        strict.is_valid(),
        report.diagnostics.is_empty(),
        "--strict refuses exactly the files with findings"
    );
    let rendered = report.render();
    let json = report.to_json();
    trace.log(|| format!("report:\n{rendered}"));
    for d in &report.diagnostics {
        let _ = locate(text, &d.pointer);
        if let Some(span) = &d.span {
            assert!(
                span.start <= span.end && span.end <= text.len(),
                "span {span:?} outside a file of {} bytes: {d:?}",
                text.len()
            );
        }
    }
    let lines: Vec<&str> = text.split('\n').collect();
    for d in json["diagnostics"].as_array().into_iter().flatten() {
        let (Some(line), Some(col)) = (d["line"].as_u64(), d["column"].as_u64()) else {
            continue;
        };
        let line = usize::try_from(line).unwrap_or(usize::MAX);
        let col = usize::try_from(col).unwrap_or(usize::MAX);
        assert!(
            (1..=lines.len()).contains(&line),
            "line {line} of a file of {} lines: {d}",
            lines.len()
        );
        let width = lines[line - 1].chars().count();
        assert!(
            (1..=width + 1).contains(&col),
            "column {col} of line {line}, which is {width} characters: {d}"
        );
    }
    assert_eq!(
        config.is_some(),
        report.is_valid(),
        "a config comes back exactly when the report is valid"
    );
    let Some(config) = config else {
        let syntax = report
            .diagnostics
            .iter()
            .any(|d| d.message.starts_with("TOML syntax"));
        count(if syntax {
            "refused: TOML syntax"
        } else {
            "refused: schema or rules"
        });
        return false;
    };
    count(if report.diagnostics.is_empty() {
        "accepted without a warning"
    } else {
        "accepted with warnings"
    });
    // Accepted: it serialises back to a declaration that is accepted the same way.
    let again = match toml::to_string(&config) {
        Ok(again) => again,
        Err(err) => panic!("an accepted declaration does not serialise: {err}"),
    };
    trace.log(|| format!("serialised again:\n{again}"));
    let (config2, report2) = check_text("again.toml", again.clone(), purpose, env);
    assert!(
        report2.is_valid(),
        "the serialised declaration is refused:\n{}\n{again}",
        report2.render()
    );
    assert_eq!(
        config2.as_ref(),
        Some(&config),
        "the model changed:\n{again}"
    );
    let findings = |r: &Report| {
        let mut f: Vec<(bool, String, String)> = r
            .diagnostics
            .iter()
            .map(|d| (d.is_error(), d.message.clone(), d.pointer.clone()))
            .collect();
        f.sort();
        f
    };
    assert_eq!(
        findings(&report),
        findings(&report2),
        "the findings changed:\n{again}"
    );
    let third = config2.map(|c| toml::to_string(&c));
    assert_eq!(
        third.and_then(Result::ok).as_deref(),
        Some(again.as_str()),
        "serialising is not stable"
    );
    true
}

// ---------------------------------------------------------------------------------------
// Declarations
// ---------------------------------------------------------------------------------------

fn declaration(rng: &mut Rng) -> String {
    let mut text = match rng.below(10) {
        0..=3 => (*rng.pick(&EXAMPLES)).to_string(),
        4..=7 => {
            let plausible = rng.chance(60);
            generated(rng, plausible)
        }
        _ => generated(rng, false),
    };
    let mutations = match rng.below(10) {
        0..=3 => 0,
        4..=7 => 1 + rng.below(2),
        _ => 1 + rng.below(8),
    };
    for _ in 0..mutations {
        mutate(rng, &mut text);
    }
    if rng.chance(5) {
        text = text.replace('\n', "\r\n");
    }
    if rng.chance(2) {
        text.insert(0, '\u{FEFF}');
    }
    text
}

/// The keys of each table, and what kind of value each takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    /// A count or size in a range that makes sense for it.
    Int(u64, u64),
    Str(Strs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strs {
    Name,
    Nqn,
    CoreMask,
    Path,
    Address,
    Transport,
    SockImpl,
    Uuid,
    Nguid,
    Eui64,
}

const TARGET: &[(&str, Kind)] = &[
    ("name", Kind::Str(Strs::Name)),
    ("interrupt_mode", Kind::Bool),
    ("core_mask", Kind::Str(Strs::CoreMask)),
    ("control_socket", Kind::Str(Strs::Path)),
    ("control_socket_group", Kind::Str(Strs::Name)),
    ("busy_poll_us", Kind::Int(0, 1_000_000)),
];

const TCP: &[(&str, Kind)] = &[
    ("max_queue_depth", Kind::Int(2, 65535)),
    ("max_io_qpairs_per_ctrlr", Kind::Int(1, 65534)),
    ("in_capsule_data_size", Kind::Int(0, 131_072)),
    ("max_io_size", Kind::Int(4096, 8 << 20)),
    ("io_unit_size", Kind::Int(512, 131_072)),
    ("max_aq_depth", Kind::Int(32, 4096)),
    ("sock_impl", Kind::Str(Strs::SockImpl)),
    ("acceptor_poll_rate_us", Kind::Int(0, 1_000_000)),
    ("c2h_success", Kind::Bool),
    ("num_shared_buffers", Kind::Int(2, 65535)),
    ("buf_cache_size", Kind::Int(0, 4096)),
];

const RDMA: &[(&str, Kind)] = &[
    ("max_queue_depth", Kind::Int(2, 4096)),
    ("max_io_qpairs_per_ctrlr", Kind::Int(1, 65534)),
    ("in_capsule_data_size", Kind::Int(0, 131_072)),
    ("max_io_size", Kind::Int(4096, 8 << 20)),
    ("io_unit_size", Kind::Int(512, 131_072)),
    ("max_aq_depth", Kind::Int(32, 4096)),
    ("max_srq_depth", Kind::Int(0, 65535)),
    ("no_srq", Kind::Bool),
    ("acceptor_backlog", Kind::Int(0, 4096)),
    ("acceptor_poll_rate_us", Kind::Int(0, 1_000_000)),
];

const VFIOUSER: &[(&str, Kind)] = &[
    ("max_queue_depth", Kind::Int(2, 65535)),
    ("max_io_qpairs_per_ctrlr", Kind::Int(1, 65534)),
    ("max_io_size", Kind::Int(4096, 8 << 20)),
    ("io_unit_size", Kind::Int(512, 131_072)),
    ("max_aq_depth", Kind::Int(32, 4096)),
    ("disable_mappable_bar0", Kind::Bool),
    ("disable_adaptive_irq", Kind::Bool),
    ("disable_shadow_doorbells", Kind::Bool),
    ("acceptor_poll_rate_us", Kind::Int(0, 1_000_000)),
];

const HOST: &[(&str, Kind)] = &[
    ("name", Kind::Str(Strs::Name)),
    ("nqn", Kind::Str(Strs::Nqn)),
];

const SUBSYSTEM: &[(&str, Kind)] = &[
    ("nqn", Kind::Str(Strs::Nqn)),
    ("serial", Kind::Str(Strs::Name)),
    ("model", Kind::Str(Strs::Name)),
    ("allow_any_host", Kind::Bool),
    ("max_namespaces", Kind::Int(1, 4096)),
];

const LISTENER: &[(&str, Kind)] = &[
    ("transport", Kind::Str(Strs::Transport)),
    ("address", Kind::Str(Strs::Address)),
    ("port", Kind::Int(1, 65535)),
    ("path", Kind::Str(Strs::Path)),
];

const NAMESPACE: &[(&str, Kind)] = &[
    ("nsid", Kind::Int(1, 40)),
    ("read_only", Kind::Bool),
    ("block_size", Kind::Int(512, 4096)),
    ("uuid", Kind::Str(Strs::Uuid)),
    ("nguid", Kind::Str(Strs::Nguid)),
    ("eui64", Kind::Str(Strs::Eui64)),
];

/// A declaration from the grammar; `plausible` keeps values mostly within their limits so
/// that many are accepted.
fn generated(rng: &mut Rng, plausible: bool) -> String {
    let mut out = String::new();
    if rng.chance(30) {
        out.push_str("#:schema ../schema/target.schema.json\n# generated\n");
    }
    let wild = if plausible { 3 } else { 25 };
    if rng.chance(80) {
        table(rng, &mut out, "[target]", TARGET, wild);
    }
    let transports = [("tcp", TCP), ("rdma", RDMA), ("vfiouser", VFIOUSER)];
    for (name, keys) in transports {
        let p = if name == "tcp" { 85 } else { 15 };
        if rng.chance(p) {
            table(rng, &mut out, &format!("[transport.{name}]"), keys, wild);
        }
    }
    if rng.chance(3) {
        out.push_str("[transport.fc]\nanything = 1\n");
    }
    let hosts = rng.below(4);
    for _ in 0..hosts {
        table(rng, &mut out, "[[host]]", HOST, wild);
    }
    let subsystems = *rng.pick(&[0usize, 1, 1, 1, 2, 3, 5]);
    for s in 0..subsystems {
        let mut keys = String::new();
        // Distinct NQNs mostly, so that more declarations are valid.
        if plausible || rng.bool() {
            let _ = writeln!(keys, "nqn = \"nqn.2026-11.io.fuzz:s{s}\"");
        }
        let _ = writeln!(keys, "allow_any_host = {}", rng.chance(80));
        out.push_str("\n[[subsystem]]\n");
        out.push_str(&keys);
        body(rng, &mut out, SUBSYSTEM, wild, &["nqn", "allow_any_host"]);
        if rng.chance(20) {
            let _ = writeln!(out, "hosts = [{}]", strings(rng, Strs::Name, 3));
        }
        for _ in 0..rng.below(3) {
            out.push_str("\n[[subsystem.listener]]\n");
            let transport = *rng.pick(&["tcp", "tcp", "tcp", "rdma", "vfiouser"]);
            let _ = writeln!(out, "transport = \"{transport}\"");
            if transport == "vfiouser" {
                let _ = writeln!(out, "path = \"/tmp/fuzz-vfio-{s}-{}\"", rng.below(4));
            } else {
                let _ = writeln!(out, "address = \"{}\"", string(rng, Strs::Address));
                let _ = writeln!(out, "port = {}", 4420 + rng.below(3));
            }
            body(
                rng,
                &mut out,
                LISTENER,
                wild,
                &["transport", "address", "port", "path"],
            );
        }
        for n in 0..rng.below(4) {
            out.push_str("\n[[subsystem.namespace]]\n");
            let _ = writeln!(out, "nsid = {}", n + 1);
            let backend = rng.below(3);
            let size = size(rng, plausible);
            match backend {
                0 => {
                    let _ = writeln!(out, "ram = {{ size = {size} }}");
                }
                1 => {
                    let _ = writeln!(out, "null = {{ size = {size} }}");
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "file = {{ path = \"/var/lib/fuzz/{s}-{n}.img\", direct = {} }}",
                        rng.bool()
                    );
                }
            }
            body(rng, &mut out, NAMESPACE, wild, &["nsid"]);
        }
    }
    if rng.chance(wild) {
        nesting(rng, &mut out);
    }
    out
}

/// A table header and some of its keys.
fn table(rng: &mut Rng, out: &mut String, header: &str, keys: &[(&str, Kind)], wild: u32) {
    out.push('\n');
    out.push_str(header);
    out.push('\n');
    body(rng, out, keys, wild, &[]);
}

/// Some keys of a table with values; `wild` percent of them get any value, a misspelt key
/// or a duplicate.
fn body(rng: &mut Rng, out: &mut String, keys: &[(&str, Kind)], wild: u32, skip: &[&str]) {
    for &(key, kind) in keys {
        if skip.contains(&key) || !rng.chance(40) {
            continue;
        }
        let value = if rng.chance(wild) {
            any_value(rng, 3)
        } else {
            plausible_value(rng, kind)
        };
        let key = if rng.chance(wild / 3) {
            misspell(rng, key)
        } else {
            key.to_string()
        };
        let _ = writeln!(out, "{key} = {value}");
        if rng.chance(wild / 5) {
            // The same key twice: a TOML error.
            let _ = writeln!(out, "{key} = {}", plausible_value(rng, kind));
        }
    }
}

fn misspell(rng: &mut Rng, key: &str) -> String {
    let mut chars: Vec<char> = key.chars().collect();
    let at = rng.below(chars.len());
    match rng.below(3) {
        0 => {
            chars.remove(at);
        }
        1 => chars.insert(at, *rng.pick(&['_', 'x', 'é'])),
        _ => {
            let next = (at + 1) % chars.len();
            chars.swap(at, next);
        }
    }
    chars.into_iter().collect()
}

fn plausible_value(rng: &mut Rng, kind: Kind) -> String {
    match kind {
        Kind::Bool => rng.bool().to_string(),
        Kind::Int(lo, hi) => match rng.below(6) {
            0 => lo.to_string(),
            1 => hi.to_string(),
            2 => (hi + 1).to_string(),
            3 => lo.saturating_sub(1).to_string(),
            _ => {
                // Powers of two and their multiples are what these limits like.
                let v = rng.range(lo, hi);
                let p = 1u64 << (63 - v.max(1).leading_zeros());
                if rng.bool() { p.clamp(lo, hi) } else { v }.to_string()
            }
        },
        Kind::Str(s) => format!("\"{}\"", escape(&string(rng, s))),
    }
}

fn size(rng: &mut Rng, plausible: bool) -> String {
    if plausible && rng.chance(80) {
        let units = ["4k", "64KiB", "1MiB", "64MiB", "512MiB", "1GiB"];
        return format!("\"{}\"", rng.pick(&units));
    }
    match rng.below(8) {
        0 => rng
            .pick(&["0", "512", "4096", "1048576", "1000", "-4096"])
            .to_string(),
        1 => "99999999999999999999999".into(),
        2 => "18446744073709551615".into(),
        3 => "9223372036854775807".into(),
        4 => format!(
            "\"{}{}\"",
            rng.below(10_000),
            rng.pick(&[
                "", "k", "K", "m", "MiB", "G", "GiB", "TiB", "PiB", "b", "kb"
            ])
        ),
        5 => rng
            .pick(&[
                "\"\"",
                "\"1.5G\"",
                "\"-1k\"",
                "\" 4k\"",
                "\"4 k\"",
                "\"9999999999999TiB\"",
                "\"0x1000\"",
                "\"4k\\u0000\"",
            ])
            .to_string(),
        6 => "1.5e9".into(),
        _ => any_value(rng, 2),
    }
}

fn string(rng: &mut Rng, kind: Strs) -> String {
    match kind {
        Strs::Name => match rng.below(6) {
            0 => String::new(),
            1 => "x".repeat(rng.below(300)),
            2 => "nvmf".into(),
            3 => "é😀\u{202E}rtl\u{0007}".into(),
            _ => format!("name-{}", rng.below(5)),
        },
        Strs::Nqn => match rng.below(7) {
            0 => format!("nqn.2026-11.io.fuzz:s{}", rng.below(4)),
            1 => "nqn.2014-08.org.nvmexpress:uuid:6a1c3c5e-0f1e-4d6a-9c1b-2f7d3a9e0001".into(),
            2 => "nqn.2014-08.org.nvmexpress.discovery".into(),
            3 => format!("nqn.2026-11.io.fuzz:{}", "n".repeat(rng.below(260))),
            4 => "nqn.20x6-11.io.fuzz:bad".into(),
            5 => "not an nqn".into(),
            _ => "nqn.2026-11.io.fuzz:é😀".into(),
        },
        Strs::CoreMask => rng
            .pick(&[
                "0x1",
                "0x3",
                "0-1",
                "0-1,4",
                "1023",
                "1024",
                "0x",
                "",
                "5-2",
                "0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
                "0,0,0",
                "-1",
            ])
            .to_string(),
        Strs::Path => {
            let long = "/p".repeat(80);
            rng.pick(&[
                "/tmp/fuzz.sock",
                "",
                "relative.sock",
                "/",
                "/run/nvmf-tgt/x.sock",
                &long,
            ])
            .to_string()
        }
        Strs::Address => rng
            .pick(&[
                "127.0.0.1",
                "0.0.0.0",
                "::",
                "::1",
                "192.168.1.7",
                "256.1.1.1",
                "fe80::1%eth0",
                "localhost",
                "",
            ])
            .to_string(),
        Strs::Transport => rng
            .pick(&["tcp", "rdma", "vfiouser", "fc", "TCP", ""])
            .to_string(),
        Strs::SockImpl => rng.pick(&["posix", "uring", "epoll"]).to_string(),
        Strs::Uuid => rng
            .pick(&[
                "3d5c1f7e-9a2b-4c6d-8e0f-1a2b3c4d5e6f",
                "00000000-0000-0000-0000-000000000000",
                "3d5c1f7e9a2b4c6d8e0f1a2b3c4d5e6f",
                "zz",
                "",
            ])
            .to_string(),
        Strs::Nguid => rng
            .pick(&[
                "0123456789abcdef0123456789abcdef",
                "00000000000000000000000000000000",
                "0123",
                "g123456789abcdef0123456789abcdef",
            ])
            .to_string(),
        Strs::Eui64 => rng
            .pick(&[
                "0011223344556677",
                "0000000000000000",
                "00-11-22-33-44-55-66-77",
                "001122",
            ])
            .to_string(),
    }
}

fn strings(rng: &mut Rng, kind: Strs, max: usize) -> String {
    let n = rng.below(max + 1);
    let items: Vec<String> = (0..n)
        .map(|_| format!("\"{}\"", escape(&string(rng, kind))))
        .collect();
    items.join(", ")
}

fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Any TOML value at all, nested up to `depth`.
fn any_value(rng: &mut Rng, depth: usize) -> String {
    let scalars = [
        "true",
        "0",
        "-1",
        "1_000",
        "0x10",
        "0o17",
        "0b101",
        "+42",
        "4294967296",
        "9223372036854775807",
        "-9223372036854775808",
        "99999999999999999999",
        "1.5",
        "-0.0",
        "1e400",
        "inf",
        "nan",
        "1979-05-27T07:32:00Z",
        "07:32:00",
        "\"\"",
        "\"text\"",
        "'literal'",
        "\"\"\"multi\nline\"\"\"",
        "\"\\u00e9\\U0001F600\"",
    ];
    if depth == 0 || rng.chance(60) {
        return (*rng.pick(&scalars)).to_string();
    }
    let n = rng.below(4);
    let items: Vec<String> = (0..n).map(|_| any_value(rng, depth - 1)).collect();
    if rng.bool() {
        format!("[{}]", items.join(", "))
    } else {
        let pairs: Vec<String> = items
            .iter()
            .enumerate()
            .map(|(i, v)| format!("k{i} = {v}"))
            .collect();
        format!("{{ {} }}", pairs.join(", "))
    }
}

/// Deep nesting: arrays, inline tables, dotted keys and table headers.
fn nesting(rng: &mut Rng, out: &mut String) {
    let depth = *rng.pick(&[10usize, 60, 100, 200, 1000]);
    match rng.below(4) {
        0 => {
            let _ = writeln!(out, "deep = {}1{}", "[".repeat(depth), "]".repeat(depth));
        }
        1 => {
            let _ = writeln!(
                out,
                "deep = {}1{}",
                "{ a = ".repeat(depth),
                " }".repeat(depth)
            );
        }
        2 => {
            let keys = vec!["k"; depth].join(".");
            let _ = writeln!(out, "{keys} = 1");
        }
        _ => {
            let keys = vec!["t"; depth].join(".");
            let _ = writeln!(out, "[{keys}]\nx = 1");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------

/// Damages the text: lines dropped, doubled or swapped, a value replaced, junk or unicode
/// inserted, a cut, a misspelt key, a section header moved.
fn mutate(rng: &mut Rng, text: &mut String) {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let n = lines.len();
    let at = rng.below(n);
    match rng.below(10) {
        0 => {
            lines.remove(at);
        }
        1 => {
            let line = lines[at].clone();
            lines.insert(at, line);
        }
        2 => lines.swap(at, rng.below(n)),
        3 => {
            // Replace the value of a `key = value` line.
            if let Some((key, _)) = lines[at].split_once('=') {
                let value = if rng.bool() {
                    any_value(rng, 3)
                } else {
                    size(rng, false)
                };
                lines[at] = format!("{key}= {value}");
            }
        }
        4 => {
            let junk = *rng.pick(&[
                "[",
                "]",
                "[[",
                "]]",
                "=",
                "\"",
                "'",
                "{",
                "}",
                ",",
                "#",
                "\\",
                "é",
                "😀",
                "\u{0}",
                "\u{202E}",
                "\t",
                "\r",
                "[[subsystem]]",
                "[target]",
                "[[subsystem.namespace]]",
                "nsid = 1",
                "x.y = 1",
            ]);
            let line = &mut lines[at];
            let cut = floor_boundary(line, rng.below(line.len() + 1));
            line.insert_str(cut, junk);
        }
        5 => {
            let line = &mut lines[at];
            let cut = floor_boundary(line, rng.below(line.len() + 1));
            line.truncate(cut);
        }
        6 => {
            if let Some((key, value)) = lines[at].split_once(" = ") {
                let key = misspell(rng, key.trim());
                lines[at] = format!("{key} = {value}");
            }
        }
        7 => {
            let header = (*rng.pick(&[
                "[target]",
                "[transport.tcp]",
                "[[subsystem]]",
                "[[subsystem.listener]]",
                "[[subsystem.namespace]]",
                "[[host]]",
                "[subsystem]",
                "[[target]]",
            ]))
            .to_string();
            lines.insert(at, header);
        }
        8 => {
            // Cut the whole text somewhere.
            let joined = lines.join("\n");
            let cut = floor_boundary(&joined, rng.below(joined.len() + 1));
            *text = joined[..cut].to_string();
            return;
        }
        _ => {
            let number = *rng.pick(&[
                "0",
                "-1",
                "4294967295",
                "4294967296",
                "65536",
                "18446744073709551616",
                "1e3",
                "0x1p3",
            ]);
            if let Some((key, _)) = lines[at].split_once('=') {
                lines[at] = format!("{key}= {number}");
            }
        }
    }
    *text = lines.join("\n");
}

fn floor_boundary(s: &str, mut at: usize) -> usize {
    while at > 0 && !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}
