//! NVMe Qualified Name syntax (NVMe Base 2.0, 4.5 "NVMe Qualified Names").

use crate::nvme::DISCOVERY_NQN;

/// Longest NQN in bytes (the field is 256 bytes; names are at most 223).
pub const MAX_NQN_LEN: usize = 223;
const UUID_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";

/// What any name used as an NQN must be: at most 223 bytes, no spaces or control
/// characters (the Connect data has room for no more, and nothing else can be typed into a
/// host's `nvme connect -n`).
pub fn validate_usable(nqn: &str) -> Result<(), String> {
    if nqn.is_empty() {
        return Err("is empty".into());
    }
    if nqn.len() > MAX_NQN_LEN {
        return Err(format!(
            "is {} bytes; an NQN is at most {MAX_NQN_LEN}",
            nqn.len()
        ));
    }
    if let Some(c) = nqn.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "contains {c:?}; an NQN has no spaces or control characters"
        ));
    }
    Ok(())
}

/// Checks an NQN's form: `nqn.yyyy-mm.reverse.domain:name` or the UUID form.
pub fn validate(nqn: &str) -> Result<(), String> {
    validate_usable(nqn)?;
    if nqn == DISCOVERY_NQN {
        return Ok(());
    }
    if let Some(uuid) = nqn.strip_prefix(UUID_PREFIX) {
        return super::units::Uuid::parse(uuid)
            .ok()
            .filter(|_| uuid.len() == 36 && uuid.matches('-').count() == 4)
            .map(|_| ())
            .ok_or_else(|| format!("must end in a UUID after {UUID_PREFIX:?}"));
    }
    let Some(rest) = nqn.strip_prefix("nqn.") else {
        return Err("must start with \"nqn.\"".into());
    };
    let date_ok = rest.len() > 8
        && rest.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && rest.as_bytes()[4] == b'-'
        && rest.as_bytes()[5..7].iter().all(u8::is_ascii_digit)
        && matches!(
            &rest[5..7],
            "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
        )
        && rest.as_bytes()[7] == b'.';
    if !date_ok {
        return Err("must continue with a date and a dot, as in \"nqn.2014-08.\"".into());
    }
    let Some((domain, name)) = rest[8..].split_once(':') else {
        return Err(
            "needs a colon after the reverse domain, as in \"nqn.2014-08.com.example:disk1\""
                .into(),
        );
    };
    for label in domain.split('.') {
        let bytes = label.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes[0].is_ascii_alphabetic()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
        if !ok {
            return Err(format!(
                "has {label:?} in its reverse domain; labels start with a letter and hold letters, digits and '-'"
            ));
        }
    }
    if name.is_empty() {
        return Err("needs a name after the colon".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for nqn in [
            "nqn.2014-08.org.nvmexpress.discovery",
            "nqn.2016-06.io.spdk:cnode1",
            "nqn.2026-11.com.example:db.volume-1",
            "nqn.2014-08.org.nvmexpress:uuid:6a1c3c5e-0f1e-4d6a-9c1b-2f7d3a9e0001",
        ] {
            assert_eq!(validate(nqn), Ok(()), "{nqn}");
        }
    }

    #[test]
    fn invalid_names() {
        for (nqn, why) in [
            ("iqn.2016-06.io.spdk:x", "must start with"),
            ("nqn.16-06.io.spdk:x", "date"),
            ("nqn.2016-13.io.spdk:x", "date"),
            ("nqn.2016-06.io.spdk", "colon"),
            ("nqn.2016-06.io.-spdk:x", "reverse domain"),
            ("nqn.2016-06.io.spdk:", "name after"),
            ("nqn.2016-06.io.spdk:a b", "no spaces"),
            ("nqn.2014-08.org.nvmexpress:uuid:1234", "UUID"),
        ] {
            let err = validate(nqn).unwrap_err();
            assert!(err.contains(why), "{nqn}: {err}");
        }
        let long = format!("nqn.2016-06.io.spdk:{}", "a".repeat(210));
        assert!(validate(&long).unwrap_err().contains("at most 223"));
    }
}
