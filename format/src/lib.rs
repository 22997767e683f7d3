//! The memtrace trace format, shared by the preload (which writes it) and the analyzer (which reads it).
//!
//! `FORMAT.md` beside this crate is the normative specification; the types here match it one to one.
//! A trace is a file header followed by chunks, each chunk owned by one thread and holding that
//! thread's records in order; readers merge the threads by time.
//!
//! - [`varint`]: LEB128 and zigzag deltas.
//! - [`record`]: constants, [`Header`], [`ModuleInfo`], [`Record`].
//! - [`encode`]: allocation-free encoders for the preload's hot path.
//! - `builder` (feature `read`): whole traces built in memory, for tests.
//! - `decode` and `reader` (feature `read`): the chunk decoder and [`Trace`], which indexes a file and
//!   merges its threads' records in time order, tolerating truncation and corruption.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod encode;
pub mod record;
pub mod varint;

#[cfg(feature = "read")]
pub mod builder;
#[cfg(feature = "read")]
pub mod decode;
#[cfg(feature = "read")]
mod error;
#[cfg(feature = "read")]
mod reader;

pub use record::{AllocKind, Frame, Header, ModuleInfo, PyCodeInfo, PyFrame, Record, Segment};

#[cfg(feature = "read")]
pub use decode::{EventKind, HeapEvent};
#[cfg(feature = "read")]
pub use error::ReadError;
#[cfg(feature = "read")]
pub use reader::{BATCH, RecordSink, Records, ThreadInfo, ThreadRecord, Trace};
