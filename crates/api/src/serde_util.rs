//! Serde helpers for reading what Go wrote: a Go value field is never `null` on the wire, but the CRD
//! schema is nullable (as upstream's), so a user or another client may store `null`; we read it as the
//! zero value, which is what the Go controller does.

use serde::{Deserialize, Deserializer};

/// Reads `null` (or an absent field, with `#[serde(default)]`) as `T::default()`.
pub(crate) fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Go's `omitempty` for integers.
pub(crate) fn is_zero_i64(value: &i64) -> bool {
    *value == 0
}

/// Go's `omitempty` for `int32`.
pub(crate) fn is_zero_i32(value: &i32) -> bool {
    *value == 0
}
