//! VMDK, the VMware virtual disk family: descriptor text, hosted sparse extents (header, grain
//! directory and tables) and the streamOptimized stream that vCenter's `ExportVm` serves.
//!
//! Pure code: parsers take bytes or `Read + Seek`, never open files or sockets themselves.
