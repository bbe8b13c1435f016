//! OVA archives and the OVF envelopes inside them: a tar walker over any `Read`, the VM description
//! (CPUs, memory, firmware, disks, NICs) and `.mf` manifest verification.
//!
//! Pure code; the archive may arrive from a file, a pipe or an HTTP body.
