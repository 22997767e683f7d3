//! Errors of the reader: why a file is not a trace this version can read.

use thiserror::Error;

/// Why a trace could not be opened. Problems inside an opened trace are warnings, not errors: the
/// reader keeps every complete record it can (FORMAT.md §5).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The OS error, in the message (not a `source`: error chains would print it twice).
        error: std::io::Error,
    },
    /// The file is empty.
    #[error("{path} is empty: the traced program wrote nothing (did it start?)")]
    Empty {
        /// The file.
        path: String,
    },
    /// The file does not start with the trace magic.
    #[error("{path} is not a memtrace trace (bad magic)")]
    BadMagic {
        /// The file.
        path: String,
    },
    /// The file is a trace of another format version.
    #[error(
        "{path} is a memtrace trace of format version {found}; this memtrace-analyze reads format versions {oldest} to {newest}"
    )]
    UnsupportedVersion {
        /// The file.
        path: String,
        /// Version in the file.
        found: u32,
        /// Oldest version this reader reads.
        oldest: u32,
        /// Newest version this reader reads (the one it writes).
        newest: u32,
    },
    /// The header is cut short or does not decode.
    #[error("{path} has a corrupt header: {reason}")]
    BadHeader {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
}
