//! The one rule for writing an output file the user named: never in place.
//!
//! A [`StagedFile`] is a new file beside the target, created exclusively (so it is this run's
//! own, never something the user had) and written through the sinks, which open it without
//! following links. Only [`StagedFile::commit`] gives it the target's name, by `rename`, which
//! replaces a link at the target rather than writing through it, and which refuses to replace an
//! existing file unless asked. A staged file that is dropped uncommitted is removed, and so is
//! every uncommitted one when the process is told to stop ([`remove_all_uncommitted`], for a
//! signal handler): a failed or interrupted run leaves the user's files as they were and no
//! plausible-looking partial image behind.

use std::{
    fs,
    io::{self, ErrorKind},
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

/// Temporary files of this process not yet committed or removed.
static UNCOMMITTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Why a staged output could not be made or committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target exists and replacing it was not asked for.
    #[error("{target} exists; pass --force to replace it")]
    Exists { target: PathBuf },
    /// The target is the input itself (the same file, also through a link).
    #[error("{target} is the input file itself; refusing to overwrite it")]
    IsInput { target: PathBuf },
    /// The temporary file beside the target could not be created.
    #[error("cannot create a temporary file beside {target}")]
    Create {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Renaming the finished file into place failed.
    #[error("cannot rename the finished image into place as {target}")]
    Commit {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What may be replaced by a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Only a path where nothing exists (the default: a swapped argument order must not destroy
    /// a disk).
    Nothing,
    /// An existing file too (`--force`).
    Existing,
}

/// A file being written for `target`. See the module docs.
#[derive(Debug)]
pub struct StagedFile {
    temp: PathBuf,
    target: PathBuf,
    replace: Replace,
    committed: bool,
}

/// The identity of a file: device and inode.
fn identity(meta: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Refuses a `target` that is the file at `input` (compared by device and inode, through links).
pub fn refuse_same_file(input: &Path, target: &Path) -> Result<(), Error> {
    if let (Ok(a), Ok(b)) = (fs::metadata(input), fs::metadata(target))
        && identity(&a) == identity(&b)
    {
        return Err(Error::IsInput {
            target: target.to_owned(),
        });
    }
    Ok(())
}

impl StagedFile {
    /// Creates the temporary file `.<name>.<pid>-<n>.part` beside `target`, exclusively. Fails
    /// at once when `target` exists and `replace` does not allow replacing it.
    pub fn create(target: &Path, replace: Replace) -> Result<Self, Error> {
        if replace == Replace::Nothing && fs::symlink_metadata(target).is_ok() {
            return Err(Error::Exists {
                target: target.to_owned(),
            });
        }
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = target
            .file_name()
            .map_or_else(|| "output".into(), |n| n.to_string_lossy());
        let create_err = |source| Error::Create {
            target: target.to_owned(),
            source,
        };
        for attempt in 0u32.. {
            let temp = dir.join(format!(".{name}.{}-{attempt}.part", std::process::id()));
            // `create_new` is O_CREAT|O_EXCL, which also refuses a link at the path.
            match fs::OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(_) => {
                    UNCOMMITTED
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(temp.clone());
                    return Ok(Self {
                        temp,
                        target: target.to_owned(),
                        replace,
                        committed: false,
                    });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt < 1000 => continue,
                Err(e) => return Err(create_err(e)),
            }
        }
        Err(create_err(io::Error::from(ErrorKind::AlreadyExists)))
    }

    /// Where to write.
    pub fn temp(&self) -> &Path {
        &self.temp
    }

    /// The name the file gets on commit.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Renames the finished file to the target: atomically, replacing a link at the target
    /// rather than writing through it, and refusing an existing target unless `Replace::Existing`.
    pub fn commit(mut self) -> Result<PathBuf, Error> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        let commit_err = |source| Error::Commit {
            target: self.target.clone(),
            source,
        };
        let flags = match self.replace {
            Replace::Nothing => RenameFlags::NOREPLACE,
            Replace::Existing => RenameFlags::empty(),
        };
        match renameat_with(CWD, &self.temp, CWD, &self.target, flags) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                return Err(Error::Exists {
                    target: self.target.clone(),
                });
            }
            // A file system without RENAME_NOREPLACE: check, then rename.
            Err(rustix::io::Errno::INVAL) if self.replace == Replace::Nothing => {
                if fs::symlink_metadata(&self.target).is_ok() {
                    return Err(Error::Exists {
                        target: self.target.clone(),
                    });
                }
                fs::rename(&self.temp, &self.target).map_err(commit_err)?;
            }
            Err(errno) => return Err(commit_err(io::Error::from(errno))),
        }
        self.committed = true;
        forget(&self.temp);
        Ok(self.target.clone())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.committed {
            // Ours by construction (created exclusively); best effort.
            let _ = fs::remove_file(&self.temp);
            forget(&self.temp);
        }
    }
}

fn forget(temp: &Path) {
    UNCOMMITTED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|p| p != temp);
}

/// Removes every staged file of this process not yet committed: what a signal handler calls
/// before the process exits.
pub fn remove_all_uncommitted() {
    let paths = std::mem::take(&mut *UNCOMMITTED.lock().unwrap_or_else(PoisonError::into_inner));
    for path in paths {
        let _ = fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_existing_target_is_kept_unless_replacing_was_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.img");
        fs::write(&target, b"precious").unwrap();
        assert!(matches!(
            StagedFile::create(&target, Replace::Nothing),
            Err(Error::Exists { .. })
        ));
        let staged = StagedFile::create(&target, Replace::Existing).unwrap();
        fs::write(staged.temp(), b"new").unwrap();
        staged.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn a_target_created_meanwhile_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.img");
        let staged = StagedFile::create(&target, Replace::Nothing).unwrap();
        fs::write(&target, b"precious").unwrap();
        assert!(matches!(staged.commit(), Err(Error::Exists { .. })));
        assert_eq!(fs::read(&target).unwrap(), b"precious");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the temporary file is gone"
        );
    }

    #[test]
    fn a_link_at_the_target_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let target = dir.path().join("disk.img");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        let staged = StagedFile::create(&target, Replace::Existing).unwrap();
        fs::write(staged.temp(), b"new").unwrap();
        staged.commit().unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(!fs::symlink_metadata(&target).unwrap().file_type().is_symlink());
    }

    // `remove_all_uncommitted` is process-wide; the CLI's tests send a real SIGTERM for it.
    #[test]
    fn a_dropped_run_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dropped = StagedFile::create(&dir.path().join("a.img"), Replace::Nothing).unwrap();
        drop(dropped);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_input_itself_is_refused_also_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("a.raw");
        fs::write(&input, b"disk").unwrap();
        let link = dir.path().join("b.raw");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        assert!(matches!(
            refuse_same_file(&input, &input),
            Err(Error::IsInput { .. })
        ));
        assert!(matches!(
            refuse_same_file(&input, &link),
            Err(Error::IsInput { .. })
        ));
        assert!(refuse_same_file(&input, &dir.path().join("c.raw")).is_ok());
    }
}
