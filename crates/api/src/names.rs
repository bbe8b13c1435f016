//! The strings other components look for: the import finalizer, the labels and annotations on the
//! objects an import creates, and the keys read from each source's Secret. Changing any of these
//! breaks compatibility with upstream-created objects, Harvester's UI or its webhooks.

/// Finalizer on every `VirtualMachineImport` (wrangler's name for upstream's OnRemove handler), so
/// objects created by the Go controller can be deleted by ours and vice versa.
pub const IMPORT_FINALIZER: &str = "wrangler.cattle.io/virtualmachine-import-controller";

/// Label on created `VirtualMachineImage`s and `VirtualMachine`s, value [`LABEL_TRUE`]. Hides the
/// images from Harvester's image list; marks a VM as created by an import.
pub const LABEL_IMPORTED: &str = "migration.harvesterhci.io/imported";
/// The value of [`LABEL_IMPORTED`].
pub const LABEL_TRUE: &str = "true";
/// Label on a `VirtualMachineImage` carrying its display name (hashed if not a valid label value);
/// the key used to find an already-created image again.
pub const LABEL_IMAGE_DISPLAY_NAME: &str = "harvesterhci.io/imageDisplayName";
/// Label on the VM template (pod), value = the VM name; Harvester's UI and webhooks rely on it.
pub const LABEL_VM_NAME: &str = "harvesterhci.io/vmName";
/// Annotation on a `VirtualMachineImage`: the StorageClass its volumes use (only when the import sets one).
pub const ANNOTATION_STORAGE_CLASS: &str = "harvesterhci.io/storageClassName";
/// Annotation on the PVC created for a backing-image: `<namespace>/<image name>`.
pub const ANNOTATION_IMAGE_ID: &str = "harvesterhci.io/imageId";
/// Annotation on the VM with the source's description (OpenStack only upstream).
pub const ANNOTATION_DESCRIPTION: &str = "field.cattle.io/description";

/// Secret keys read for a `VmwareSource`.
pub mod vmware {
    /// vCenter user.
    pub const USERNAME: &str = "username";
    /// vCenter password.
    pub const PASSWORD: &str = "password";
    /// Optional PEM CA bundle used to verify vCenter's certificate.
    pub const CA_CERT: &str = "caCert";
    /// Optional SHA-256 fingerprint of vCenter's own certificate, trusted instead of a CA (ours).
    pub const CERT_FINGERPRINT: &str = "certificateFingerprint";
}

/// Secret keys read for an `OpenstackSource`.
pub mod openstack {
    /// Keystone user.
    pub const USERNAME: &str = "username";
    /// Keystone password.
    pub const PASSWORD: &str = "password";
    /// Keystone project (tenant) name.
    pub const PROJECT_NAME: &str = "project_name";
    /// Keystone domain name.
    pub const DOMAIN_NAME: &str = "domain_name";
    /// Optional PEM CA bundle (note the underscore: each source spells it differently upstream).
    pub const CA_CERT: &str = "ca_cert";
    /// Optional SHA-256 fingerprint of the certificate every endpoint presents, trusted instead of
    /// a CA (ours; spelled like upstream's keys of this Secret).
    pub const CERT_FINGERPRINT: &str = "certificate_fingerprint";
}

/// Secret keys read for an `OvaSource` (the Secret itself is optional).
pub mod ova {
    /// HTTP basic-auth user (used only together with [`PASSWORD`]).
    pub const USERNAME: &str = "username";
    /// HTTP basic-auth password.
    pub const PASSWORD: &str = "password";
    /// Optional PEM CA bundle.
    pub const CA_CERT: &str = "ca.crt";
    /// Optional SHA-256 fingerprint of the server's own certificate, trusted instead of a CA (ours).
    pub const CERT_FINGERPRINT: &str = "certificateFingerprint";
}
