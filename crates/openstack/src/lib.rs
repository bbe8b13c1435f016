//! OpenStack for the importer: log in to Keystone, find and describe a server, stop it, and stream
//! its disks out of Glance, through the temporary Cinder and Nova objects upstream's flow needs.
//!
//! Layers:
//! - [`proto`] (always built, pure): Keystone/Nova/Cinder/Glance/Neutron request bodies and
//!   response models (serde), endpoint selection, server lookup by exact name, NIC merging, boot
//!   order, microversion choice, `OS_*`/clouds.yaml settings, [`proto::description::ServerDescription`].
//! - behind the default `client` feature: [`client::Client`] (token renewed before expiry and after
//!   a 401, reqwest + rustls/ring, [`tls`] shared with vSphere: CA bundle, system roots, pinned SHA-256 or insecure), [`inspect`] (find, describe, stop),
//!   [`export`] (per-disk temporary objects, Glance download resumed with Range and verified,
//!   cleanup in dependency order, also after a crash), [`convert`] (`export_to_dir`: RAW or qcow2
//!   images through `diskconv`).
//!
//! Typical use (what `vm-import openstack inspect|export` does):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use openstack::{Auth, Client, Config, Domain, Secret, TlsMode, convert::ImageFormat, export::{ExportOptions, Hooks}};
//!
//! let auth = Auth::Password {
//!     username: "importer".into(), user_domain: Domain::Name("Default".into()),
//!     project: "migrations".into(), project_domain: Domain::Name("Default".into()),
//!     password: Secret::new("…"),
//! };
//! let config = Config::new("https://keystone.example:5000/v3", auth)
//!     .with_region("RegionOne")
//!     .with_tls(TlsMode::CaBundle(std::fs::read("ca.pem")?));
//! let client = Client::connect(config).await?;                 // login, catalog, microversion
//! let server = client.inspect("db01").await?;                  // exact unique name, or the id
//! client.stop(&server.id, std::time::Duration::from_secs(300), std::time::Duration::from_secs(2)).await?;
//! let options = ExportOptions { name_prefix: "vm-import-db01".into(), ..ExportOptions::default() };
//! let output = (ImageFormat::Raw, None);                      // no digest: the CLI's --checksum adds one
//! let out = client.export_to_dir(&server, "out".as_ref(), output, &options, &Hooks::default()).await?;
//! # let _ = out; Ok(()) }
//! ```
//!
//! Temporary objects: every snapshot, volume and image the export creates is reported through
//! [`export::Hooks::temp_objects`] as soon as its id is known, deleted (images, volumes, snapshots,
//! in that order) when its disk is done or the export fails, and deleted by a guard when the export
//! future is dropped. A controller records them and calls [`Client::cleanup`] after a restart.
//!
//! Secrets: passwords and credential secrets are [`Secret`]s (Debug prints `***`), sent only in the
//! login body; tokens never appear in errors or logs.

pub mod proto;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod convert;
#[cfg(feature = "client")]
pub mod export;
#[cfg(feature = "client")]
pub mod inspect;
/// The TLS policy crate, re-exported because [`client::Config`] takes its [`TlsMode`].
#[cfg(feature = "client")]
pub use tls;

#[cfg(feature = "client")]
pub use client::{Client, Config};
pub use proto::{
    Secret,
    description::{Disk, DiskSource, NicInfo, ServerDescription},
    identity::{Auth, Domain, Interface},
};
#[cfg(feature = "client")]
pub use tls::TlsMode;
