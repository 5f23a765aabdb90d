//! Identities that are bare integers and strings on the wire, as types of their own so that a
//! controller ID, a namespace ID and a qualified name cannot be passed for one another.

use std::fmt;
use std::sync::Arc;

/// A controller ID (NVMe Base 2.0, 5.3 CNTLID): unique within its subsystem. In a fabrics
/// Connect, 0xFFFF asks for a new dynamic controller and 0xFFFE for any static one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct CntlId(pub u16);

impl CntlId {
    /// Connect's "allocate a dynamic controller".
    pub const DYNAMIC: Self = Self(0xFFFF);
}

impl fmt::Display for CntlId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A namespace ID (NVMe Base 2.0, 3.2.1.2): 1 to 0xFFFFFFFE names a namespace; 0 names none
/// and 0xFFFFFFFF all of them, where a command allows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Nsid(pub u32);

impl Nsid {
    /// The broadcast value: every namespace.
    pub const ALL: Self = Self(0xFFFF_FFFF);

    /// Whether it can name one namespace.
    pub fn is_valid(self) -> bool {
        self.0 != 0 && self != Self::ALL
    }
}

impl fmt::Display for Nsid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An NVMe Qualified Name (NVMe Base 2.0, 4.5) of a subsystem or host, as the declaration or
/// a Connect gave it (the declaration's syntax is checked by `config::nqn`). Cheap to clone:
/// every controller of a subsystem holds its name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nqn(Arc<str>);

impl Nqn {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Nqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Nqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Nqn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl From<&str> for Nqn {
    fn from(text: &str) -> Self {
        Self(text.into())
    }
}

impl From<String> for Nqn {
    fn from(text: String) -> Self {
        Self(text.into())
    }
}

/// An NQN reads as the text it is wherever text is expected (lengths, prefixes, messages).
impl std::ops::Deref for Nqn {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Nqn {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Nqn {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Nqn {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Nqn {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}
