//! Harvester and KubeVirt played on the lab, which has neither: what Longhorn or CDI and
//! virt-controller would do with the objects vm-import creates. Each `VirtualMachineImage` URL is
//! fetched as Longhorn's backing-image manager does (status 200, `Content-Length` honoured, SHA-512
//! over the whole file as served, compared with `spec.checksum`): a match gets the image the
//! `Imported` condition, a mismatch `Imported=False` with `ImportFailed`, as Harvester shows a
//! failed download. Each KubeVirt `VirtualMachine` is marked ready. Shared by the controller's
//! end-to-end tests and the demo.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use controller::kinds::{image_resource, virtual_machine_resource};
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
};
use serde_json::json;
use sha2::Digest;

/// What the stand-in says of an image whose download does not match its `spec.checksum`.
pub(crate) const CHECKSUM_MISMATCH: &str = "checksum mismatch";

/// What was fetched for one `VirtualMachineImage`.
#[derive(Clone, Debug)]
pub(crate) struct Fetched {
    pub(crate) url: String,
    pub(crate) display_name: String,
    /// SHA-512 of the body (the file as served), lowercase hex: what `spec.checksum` must say.
    pub(crate) sha512: String,
    /// SHA-512 of the disk the body holds, decoded by `qemu-img` when it is qcow2.
    pub(crate) content_sha512: String,
    /// `qcow2` or `raw`, by the body's first bytes (QEMU's `format=` for a boot from the URL).
    pub(crate) format: &'static str,
    pub(crate) size: u64,
}

/// Runs on a blocking thread for each image once it was fetched and before it is marked `Imported`,
/// while the controller still serves it (it deletes the files once the VM runs): e.g. a boot test.
pub(crate) type BeforeImported = Arc<dyn Fn(&Fetched) -> Result<(), String> + Send + Sync>;

#[derive(Clone, Default)]
pub(crate) struct Options {
    /// Also read the first image with `qemu-img convert` straight from its URL, as CDI's importer
    /// does, into this directory (the copy is deleted once hashed); its content must match.
    pub(crate) qemu_img_first_into: Option<PathBuf>,
    pub(crate) before_imported: Option<BeforeImported>,
}

/// The stand-in, running until dropped.
pub(crate) struct StandIn {
    fetched: Arc<Mutex<BTreeMap<String, Fetched>>>,
    refused: Arc<Mutex<BTreeMap<String, String>>>,
    last_error: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    pub(crate) fn start(client: kube::Client, namespace: &str, options: Options) -> Self {
        let images = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &image_resource());
        let vms = Api::<DynamicObject>::namespaced_with(client, namespace, &virtual_machine_resource());
        let fetched = Arc::new(Mutex::new(BTreeMap::new()));
        let refused = Arc::new(Mutex::new(BTreeMap::new()));
        let last_error = Arc::new(Mutex::new(None));
        let player = Player {
            images,
            vms,
            http: reqwest::Client::new(),
            options,
            fetched: fetched.clone(),
            refused: refused.clone(),
        };
        let errors = last_error.clone();
        let task = tokio::spawn(async move {
            loop {
                // A failed round is retried: the controller may be restarting or re-serving an image.
                if let Err(e) = player.round().await {
                    *errors.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Self {
            fetched,
            refused,
            last_error,
            task,
        }
    }

    /// What was fetched for the image named `image` (its object name).
    pub(crate) fn fetched(&self, image: &str) -> Option<Fetched> {
        lock(&self.fetched).get(image).cloned()
    }

    /// Images whose download did not match their `spec.checksum`, by name, with the message.
    pub(crate) fn refused(&self) -> BTreeMap<String, String> {
        lock(&self.refused).clone()
    }

    /// The last failed round's error, for a test's timeout message.
    pub(crate) fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Player {
    images: Api<DynamicObject>,
    vms: Api<DynamicObject>,
    http: reqwest::Client,
    options: Options,
    fetched: Arc<Mutex<BTreeMap<String, Fetched>>>,
    /// Images failed for a checksum mismatch (Longhorn does not download a failed one again).
    refused: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Player {
    async fn round(&self) -> Result<(), String> {
        let images = self
            .images
            .list(&Default::default())
            .await
            .map_err(|e| format!("list images: {e}"))?;
        for image in images.items {
            let name = image.name_any();
            if lock(&self.fetched).contains_key(&name) || lock(&self.refused).contains_key(&name) {
                continue;
            }
            let Some(url) = image.data["spec"]["url"].as_str() else {
                continue;
            };
            let display_name = image.data["spec"]["displayName"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let use_qemu_img = lock(&self.fetched).is_empty();
            let fetched = self.fetch(url, display_name, &name).await?;
            if let (Some(dir), true) = (&self.options.qemu_img_first_into, use_qemu_img) {
                let content = fetch_with_qemu_img(url, dir, &name, fetched.format).await?;
                if content != fetched.content_sha512 {
                    return Err(format!(
                        "{url}: qemu-img read disk content {content}, a plain download {}",
                        fetched.content_sha512
                    ));
                }
            }
            let checksum = image.data["spec"]["checksum"].as_str().unwrap_or_default();
            if !checksum.is_empty() && checksum != fetched.sha512 {
                let message = format!(
                    "{CHECKSUM_MISMATCH}: spec.checksum {checksum}, downloaded file {}",
                    fetched.sha512
                );
                self.images
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {
                            "progress": 100,
                            "conditions": [{"type": "Imported", "status": "False", "reason": "ImportFailed",
                                             "message": message, "lastUpdateTime": "2026-11-23T00:00:00Z"}]
                        }})),
                    )
                    .await
                    .map_err(|e| format!("mark image {name} failed: {e}"))?;
                lock(&self.refused).insert(name, message);
                continue;
            }
            if let Some(hook) = &self.options.before_imported {
                let hook = hook.clone();
                let seen = fetched.clone();
                tokio::task::spawn_blocking(move || hook(&seen))
                    .await
                    .map_err(|e| format!("before-imported hook: {e}"))??;
            }
            // Harvester's image CRD has no status subresource: status is written on the object.
            self.images
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "size": fetched.size, "storageClassName": format!("longhorn-{name}"), "progress": 100,
                        "conditions": [{"type": "Imported", "status": "True",
                                         "lastUpdateTime": "2026-11-23T00:00:00Z"}]
                    }})),
                )
                .await
                .map_err(|e| format!("mark image {name} Imported: {e}"))?;
            lock(&self.fetched).insert(name, fetched);
        }
        let vms = self
            .vms
            .list(&Default::default())
            .await
            .map_err(|e| format!("list VMs: {e}"))?;
        for vm in vms.items {
            if vm.data["status"]["ready"] != json!(true) {
                self.vms
                    .patch_status(
                        &vm.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"ready": true, "printableStatus": "Running"}})),
                    )
                    .await
                    .map_err(|e| format!("mark VM {} ready: {e}", vm.name_any()))?;
            }
        }
        Ok(())
    }

    /// Downloads `url` into a scratch file as Longhorn does (hashing the bytes as they come), then
    /// reads the disk it holds.
    async fn fetch(&self, url: &str, display_name: String, name: &str) -> Result<Fetched, String> {
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("GET {url}: {}", response.status()));
        }
        let announced = response.content_length();
        let mut hasher = sha2::Sha512::new();
        let mut size = 0u64;
        let scratch = tempfile::NamedTempFile::new().map_err(|e| format!("scratch file: {e}"))?;
        let mut file = std::io::BufWriter::new(scratch.reopen().map_err(|e| format!("scratch file: {e}"))?);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url} body: {e}"))?
        {
            hasher.update(&chunk);
            std::io::Write::write_all(&mut file, &chunk).map_err(|e| format!("scratch file: {e}"))?;
            size += chunk.len() as u64;
        }
        std::io::Write::flush(&mut file).map_err(|e| format!("scratch file: {e}"))?;
        drop(file);
        if announced.is_some_and(|n| n != size) {
            return Err(format!(
                "GET {url}: {size} bytes, Content-Length said {announced:?}"
            ));
        }
        if !size.is_multiple_of(512) {
            return Err(format!(
                "GET {url} ({name}): {size} bytes, not a whole number of sectors"
            ));
        }
        let sha512 = hex::encode(hasher.finalize());
        let path = scratch.path().to_owned();
        let (format, content_sha512) = tokio::task::spawn_blocking(move || content_of(&path))
            .await
            .map_err(|e| format!("reading {url}: {e}"))??;
        drop(scratch);
        Ok(Fetched {
            url: url.to_owned(),
            display_name,
            content_sha512: if format == "raw" {
                sha512.clone()
            } else {
                content_sha512
            },
            sha512,
            format,
            size,
        })
    }
}

/// How long `qemu-img convert` gets for one of the tests' images (a few MiB over loopback).
const QEMU_IMG_FETCH_LIMIT: Duration = Duration::from_secs(30);

/// The format of a downloaded image (by its first bytes) and, for qcow2, the SHA-512 of the disk it
/// holds, read by `qemu-img` as Longhorn and CDI read it (empty for raw: the file is the disk).
pub(crate) fn content_of(path: &Path) -> Result<(&'static str, String), String> {
    let mut head = [0u8; 4];
    let read = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if read < 4 || head != *b"QFI\xfb" {
        return Ok(("raw", String::new()));
    }
    let raw = tempfile::NamedTempFile::new().map_err(|e| format!("scratch file: {e}"))?;
    let status = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
        .arg(path)
        .arg(raw.path())
        .status()
        .map_err(|e| format!("run qemu-img: {e}"))?;
    if !status.success() {
        return Err(format!("qemu-img convert {}: {status}", path.display()));
    }
    let digest = sha512_of(raw.path())?;
    Ok(("qcow2", digest))
}

/// SHA-512 of a whole file as plain bytes (what `spec.checksum` says of a served image).
pub(crate) fn sha512_of(path: &Path) -> Result<String, String> {
    let mut hasher = sha2::Sha512::new();
    std::fs::File::open(path)
        .and_then(|mut file| std::io::copy(&mut file, &mut hasher))
        .map_err(|e| format!("hash {}: {e}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Reads the disk at `url` with `qemu-img convert` straight from the URL, as CDI's importer does,
/// and returns the SHA-512 of its content.
async fn fetch_with_qemu_img(
    url: &str,
    dir: &Path,
    name: &str,
    format: &'static str,
) -> Result<String, String> {
    let (url, out) = (url.to_owned(), dir.join(format!("{name}.raw")));
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("qemu-img")
            .args(["convert", "-q", "-f", format, "-O", "raw"])
            .arg(&url)
            .arg(&out)
            .spawn()
            .map_err(|e| format!("run qemu-img: {e}"))?;
        // QEMU's curl driver can hang for good once the server has closed a connection it still
        // counts on (seen once in CI: both sockets in CLOSE-WAIT, no CPU). Longhorn would retry a
        // stuck download; so does this stand-in, on its next round, after killing the stuck one.
        let deadline = Instant::now() + QEMU_IMG_FETCH_LIMIT;
        let status = loop {
            match child.try_wait().map_err(|e| format!("wait for qemu-img: {e}"))? {
                Some(status) => break status,
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_file(&out);
                    return Err(format!(
                        "qemu-img convert {url}: not done after {QEMU_IMG_FETCH_LIMIT:?}, killed"
                    ));
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        if !status.success() {
            return Err(format!("qemu-img convert {url}: {status}"));
        }
        let hashed = sha512_of(&out);
        let removed = std::fs::remove_file(&out);
        let digest = hashed?;
        removed.map_err(|e| format!("remove {}: {e}", out.display()))?;
        Ok(digest)
    })
    .await
    .map_err(|e| format!("qemu-img fetch: {e}"))?
}
