//! Values that are written as text in the declaration: sizes, core masks and namespace
//! identifiers. Each keeps the text it came from (so diagnostics and `schema` show what the
//! user wrote) and parses without panicking.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern a size string must match; the schema carries it so editors flag bad sizes.
pub const SIZE_PATTERN: &str = r"^\s*[0-9]+\s*([kKmMgGtT]([iI]?[bB])?|[bB])?\s*$";
/// A CPU list ("0-1,4") or a hex mask ("0x3").
pub const CORE_MASK_PATTERN: &str =
    r"^\s*(0[xX][0-9a-fA-F]+|[0-9]+(-[0-9]+)?(\s*,\s*[0-9]+(-[0-9]+)?)*)\s*$";
pub const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
pub const NGUID_PATTERN: &str =
    "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12})$";
pub const EUI64_PATTERN: &str = "^([0-9a-fA-F]{16}|[0-9a-fA-F]{2}([-:][0-9a-fA-F]{2}){7})$";

/// What a pattern means, in words, for diagnostics.
pub fn pattern_hint(pattern: &str) -> Option<&'static str> {
    Some(match pattern {
        SIZE_PATTERN => "a size: a number of bytes or a number with a unit (KiB, MiB, GiB, TiB)",
        CORE_MASK_PATTERN => "a hex mask such as \"0x3\" or a CPU list such as \"0-1,4\"",
        UUID_PATTERN => "a UUID such as \"6a1c3c5e-0f1e-4d6a-9c1b-2f7d3a9e0001\"",
        NGUID_PATTERN => "an NGUID: 32 hex digits, optionally in UUID form",
        EUI64_PATTERN => "an EUI-64: 16 hex digits, optionally in pairs joined by '-' or ':'",
        _ => return None,
    })
}

/// A byte count written as `4096`, `"4k"`, `"512MiB"` or `"1GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Size(pub u64);

impl Size {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// "1GiB", "512MiB", "4k", "4096".
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a size"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        _ => return Err(format!("{text:?} has an unknown unit")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (unit, name) in UNITS {
            if self.0 >= unit && self.0 % unit == 0 {
                return write!(f, "{}{name}", self.0 / unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Self(n)),
            Raw::Text(t) => parse_size(&t).map(Self).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Bytes, as an integer or a string with a unit: \"4096\", \"4k\", \"512MiB\", \"1GiB\".",
            "type": ["integer", "string"],
            "minimum": 0,
            "pattern": SIZE_PATTERN,
        })
    }
}

/// CPUs for reactors. Keeps the text; `cores` is empty when it does not parse (the semantic
/// rules report that with its location).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreMask {
    text: String,
    cores: Result<Vec<usize>, String>,
}

/// The highest CPU number a mask may name; beyond any machine this target will meet.
pub const MAX_CPU: usize = 1023;

impl CoreMask {
    pub fn new(text: &str) -> Self {
        Self {
            text: text.to_string(),
            cores: parse_core_mask(text),
        }
    }

    /// The CPUs, sorted, or the reason the text does not name any.
    pub fn cores(&self) -> Result<&[usize], &str> {
        self.cores.as_deref().map_err(String::as_str)
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

impl Default for CoreMask {
    fn default() -> Self {
        Self::new("0x1")
    }
}

fn parse_core_mask(text: &str) -> Result<Vec<usize>, String> {
    let text = text.trim();
    let mut cores = Vec::new();
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{text:?} is not a hex mask"));
        }
        // Bit i of the mask is CPU i; read nibbles from the right.
        for (nibble_index, digit) in hex.bytes().rev().enumerate() {
            let nibble = char::from(digit).to_digit(16).unwrap_or(0);
            for bit in 0..4 {
                if nibble & (1 << bit) != 0 {
                    let cpu = nibble_index * 4 + bit;
                    if cpu > MAX_CPU {
                        return Err(format!("CPU {cpu} is beyond the limit of {MAX_CPU}"));
                    }
                    cores.push(cpu);
                }
            }
        }
    } else {
        for part in text.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let parse = |s: &str| -> Result<usize, String> {
                let n: usize = s
                    .trim()
                    .parse()
                    .map_err(|_| format!("{:?} is not a CPU number", s.trim()))?;
                if n > MAX_CPU {
                    return Err(format!("CPU {n} is beyond the limit of {MAX_CPU}"));
                }
                Ok(n)
            };
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b {
                return Err(format!("CPU range {:?} runs backwards", part.trim()));
            }
            cores.extend(a..=b);
        }
    }
    cores.sort_unstable();
    cores.dedup();
    if cores.is_empty() {
        return Err("the mask selects no CPU".into());
    }
    Ok(cores)
}

impl<'de> Deserialize<'de> for CoreMask {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::new(&String::deserialize(d)?))
    }
}

impl Serialize for CoreMask {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl JsonSchema for CoreMask {
    fn schema_name() -> Cow<'static, str> {
        "CoreMask".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "CPUs that run reactors: a hex mask (\"0x3\") or a CPU list (\"0-1,4\").",
            "type": "string",
            "pattern": CORE_MASK_PATTERN,
        })
    }
}

/// A fixed-length identifier written in hex (UUID, NGUID, EUI-64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HexId<const N: usize>(pub [u8; N]);

pub type Uuid = HexId<16>;
pub type Nguid = HexId<16>;
pub type Eui64 = HexId<8>;

impl<const N: usize> HexId<N> {
    pub fn parse(text: &str) -> Result<Self, String> {
        let digits: Vec<u8> = text.bytes().filter(|b| !matches!(b, b'-' | b':')).collect();
        if digits.len() != N * 2 {
            return Err(format!("{text:?} does not have {} hex digits", N * 2));
        }
        let mut out = [0u8; N];
        for (i, pair) in digits.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).map_err(|_| format!("{text:?} is not hex"))?;
            out[i] = u8::from_str_radix(pair, 16).map_err(|_| format!("{text:?} is not hex"))?;
        }
        Ok(Self(out))
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }
}

impl<const N: usize> fmt::Display for HexId<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if N == 16 && matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl<'de, const N: usize> Deserialize<'de> for HexId<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl<const N: usize> Serialize for HexId<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Schema of a UUID-valued key.
pub fn uuid_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": UUID_PATTERN,
        "description": "A UUID such as \"6a1c3c5e-0f1e-4d6a-9c1b-2f7d3a9e0001\"; never all zeros."})
}

/// Schema of an NGUID-valued key.
pub fn nguid_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": NGUID_PATTERN,
        "description": "32 hex digits (dashes allowed); never all zeros."})
}

/// Schema of an EUI-64-valued key.
pub fn eui64_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": EUI64_PATTERN,
        "description": "16 hex digits, optionally in pairs joined by '-' or ':'; never all zeros."})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size(" 1 GiB "), Ok(1 << 30));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999TiB").is_err());
        assert_eq!(Size(64 << 20).to_string(), "64MiB");
        assert_eq!(Size(4097).to_string(), "4097");
    }

    #[test]
    fn core_masks() {
        assert_eq!(CoreMask::new("0x3").cores(), Ok(&[0, 1][..]));
        assert_eq!(CoreMask::new("0x10").cores(), Ok(&[4][..]));
        assert_eq!(CoreMask::new("0-1,4").cores(), Ok(&[0, 1, 4][..]));
        assert!(CoreMask::new("0x0").cores().is_err());
        assert!(CoreMask::new("3-1").cores().is_err());
        assert!(CoreMask::new("").cores().is_err());
        assert!(
            CoreMask::new(&format!("0x{}", "f".repeat(300)))
                .cores()
                .is_err()
        );
    }

    #[test]
    fn hex_ids() {
        let uuid = Uuid::parse("6a1c3c5e-0f1e-4d6a-9c1b-2f7d3a9e0001").unwrap();
        assert_eq!(uuid.to_string(), "6a1c3c5e-0f1e-4d6a-9c1b-2f7d3a9e0001");
        assert!(Eui64::parse("00:11:22:33:44:55:66:77").is_ok());
        assert!(Eui64::parse("0011").is_err());
        assert!(
            Uuid::parse("00000000-0000-0000-0000-000000000000")
                .unwrap()
                .is_zero()
        );
    }
}
