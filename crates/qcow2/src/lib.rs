//! qcow2 (QEMU copy-on-write v2/v3): a reader for input images and a streaming writer for output.
//!
//! Pure code over `Read + Seek` / `Write + Seek`; no async runtime.
