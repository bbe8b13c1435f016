//! The conversion pipeline: a source of disk bytes, a decoder, and a sink (sparse raw, raw stream
//! or qcow2), with SHA-256 of the logical content and byte-level progress on the way.
