//! vSphere's vim25 SOAP API: envelopes and fault parsing as pure code, an HTTP client on top.
