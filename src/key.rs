//! `SetKey`: which VecodexSet a piece of work is about (`namespace/name`). The queue, the
//! shard gate, the host index and the workers pass it around; it is parsed once, and its
//! namespace and name are read from it, never split out of a string again.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// `namespace/name` of a VecodexSet. Cheap to clone; ordered and hashed as its text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetKey {
    text: Arc<str>,
    /// Where the `/` between namespace and name is.
    slash: usize,
}

impl SetKey {
    pub fn new(namespace: &str, name: &str) -> SetKey {
        SetKey {
            text: format!("{namespace}/{name}").into(),
            slash: namespace.len(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.text[..self.slash]
    }

    pub fn name(&self) -> &str {
        &self.text[self.slash + 1..]
    }

    /// `namespace/name`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A text that is not `namespace/name` (both non-empty, one `/`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a namespace/name key")]
pub struct BadKey(pub String);

impl FromStr for SetKey {
    type Err = BadKey;

    fn from_str(s: &str) -> Result<SetKey, BadKey> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(SetKey::new(ns, name))
            }
            _ => Err(BadKey(s.to_owned())),
        }
    }
}

impl fmt::Display for SetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl PartialEq<str> for SetKey {
    fn eq(&self, other: &str) -> bool {
        &*self.text == other
    }
}

impl PartialEq<&str> for SetKey {
    fn eq(&self, other: &&str) -> bool {
        &*self.text == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_parsed_once_into_its_parts() {
        let key: SetKey = "tenant-7/search".parse().unwrap();
        assert_eq!((key.namespace(), key.name()), ("tenant-7", "search"));
        assert_eq!(key.to_string(), "tenant-7/search");
        assert_eq!(key, SetKey::new("tenant-7", "search"));
        assert_eq!(key, "tenant-7/search");
        for bad in ["", "ns", "/name", "ns/", "a/b/c"] {
            assert_eq!(
                bad.parse::<SetKey>(),
                Err(BadKey(bad.to_owned())),
                "{bad:?}"
            );
        }
    }
}
