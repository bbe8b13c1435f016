//! vSphere's vim25 SOAP API: envelopes and fault parsing as pure code, an HTTP client on top.
//!
//! Documented fully once the client lands; see [`proto`] for the pure layer.

pub mod proto;
