//! Why a reconcile step failed: [`ImportError`], each variant with one low-cardinality reason for
//! Events and metrics.

use crate::source::SourceError;

/// Facts gathered per decision at most this many times (each fact once; the bound only guards
/// against a state machine bug looping).
pub(super) const MAX_OBSERVATIONS: usize = 12;

/// Why an object could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// The source's description does not make a VM.
    #[error(transparent)]
    Vm(#[from] plan::BuildError),
    /// The built JSON is not the object's shape.
    #[error(transparent)]
    Shape(#[from] serde_json::Error),
}

/// Why a reconcile step failed; retried with backoff, surfaced as a Warning Event with the reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    /// An API call failed.
    #[error("{step}: {source}")]
    Kube {
        /// What we were doing.
        step: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The source could not be used.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Status changed underneath this reconcile (someone else wrote); retried at once.
    #[error("the import changed while it was being reconciled")]
    Conflict,
    /// An object could not be built from the source's description.
    #[error("{step}")]
    Build {
        /// What was being built.
        step: &'static str,
        /// Why.
        #[source]
        source: BuildError,
    },
    /// A file in the image directory could not be handled.
    #[error("{step} {path}: {source}")]
    Io {
        /// What we were doing.
        step: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state machine asked for facts forever.
    #[error("no decision after {MAX_OBSERVATIONS} observations")]
    Undecided,
}

impl ImportError {
    /// Low-cardinality reason for Events and metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "KubernetesApiError",
            Self::Source(e) => e.reason(),
            Self::Build { .. } => "BuildFailed",
            Self::Conflict => "Conflict",
            Self::Io { .. } => "ImageDirectoryError",
            Self::Undecided => "Undecided",
        }
    }

    pub(super) fn kube(step: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| match &source {
            kube::Error::Api(status) if status.code == 409 => Self::Conflict,
            _ => Self::Kube { step, source },
        }
    }
}
