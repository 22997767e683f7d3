//! The types of a trace, one to one with FORMAT.md: file constants, the header, module records, the
//! allocation kinds, and [`Record`], the decoded form of one event record.
//!
//! Nothing here does I/O. The encoder (`encode.rs`) and the reader (`decode.rs`, `reader.rs`) share
//! these definitions so the two sides cannot drift apart.

use serde::{Deserialize, Serialize};

/// The first eight bytes of every trace file (FORMAT.md §2).
pub const FILE_MAGIC: [u8; 8] = *b"MEMTRACE";
/// The format version this crate writes (FORMAT.md §7).
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format version this crate still reads: every version from it to [`FORMAT_VERSION`].
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// Size of the file header region; the first chunk starts here (FORMAT.md §2).
pub const HEADER_SIZE: usize = 4096;
/// Chunks start and end on multiples of this (FORMAT.md §3; 4096 before version 3).
pub const GRANULE: usize = 512;
/// The four bytes that open every chunk (FORMAT.md §3).
pub const CHUNK_MAGIC: [u8; 4] = *b"MTCK";
/// The four bytes that open a free chunk: space a reader skips (FORMAT.md §3, version 3).
pub const FREE_CHUNK_MAGIC: [u8; 4] = *b"MTFR";
/// Size of a chunk header; records follow it (FORMAT.md §3).
pub const CHUNK_HEADER_SIZE: usize = 32;
/// The largest chunk a writer may claim; a reader refuses longer ones as corrupt.
pub const MAX_CHUNK_SIZE: usize = 16 << 20;
/// The deepest stack a record may hold; longer stacks are cut at the outermost end.
pub const MAX_FRAMES: usize = 1024;
/// Longest label of a mark record, in bytes.
pub const MAX_LABEL_LEN: usize = 256;
/// Longest bincode payload of a module record, in bytes.
pub const MAX_MODULE_RECORD_LEN: usize = 64 * 1024;
/// Longest bincode payload of a Python code record, in bytes.
pub const MAX_PY_CODE_RECORD_LEN: usize = 64 * 1024;
/// The module id that marks a Python frame in a stack record (FORMAT.md §4.5): no module has it.
pub const PYTHON_MODULE: u32 = u32::MAX;

/// Record tags: the first byte of every record (FORMAT.md §4). Zero is padding: the end of a chunk's data.
pub mod tag {
    /// Not a record: the rest of the chunk is unused.
    pub const PAD: u8 = 0x00;
    /// First of the allocation tags: `ALLOC + AllocKind as u8`.
    pub const ALLOC: u8 = 0x10;
    /// A `realloc` or `reallocarray` that returned memory.
    pub const REALLOC: u8 = 0x20;
    /// A `free` (or a `realloc(p, 0)` that freed `p`).
    pub const FREE: u8 = 0x30;
    /// A stack definition.
    pub const STACK: u8 = 0x40;
    /// A module (executable or shared library) mapped into the process.
    pub const MODULE: u8 = 0x41;
    /// A module unmapped by `dlclose`.
    pub const MODULE_UNLOAD: u8 = 0x42;
    /// A Python code object that Python frames refer to (version 2).
    pub const PY_CODE: u8 = 0x43;
    /// A stack definition that shares its outer frames with the chunk's previous one (version 2).
    pub const STACK_SHARED: u8 = 0x44;
    /// A named point in time, from `memtrace_snapshot`.
    pub const MARK: u8 = 0x50;
    /// The thread's OS name (`pthread_setname_np` / `prctl`) as seen by the tracer.
    pub const THREAD_NAME: u8 = 0x51;
    /// The process ended through `exit`, `_exit` or a return from `main`.
    pub const END: u8 = 0x7f;
}

/// Which function made an allocation (FORMAT.md §4.2). Stored in the low bits of the alloc tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum AllocKind {
    /// `malloc`, and C++ `new`, which calls it.
    Malloc = 0,
    /// `calloc`.
    Calloc = 1,
    /// `posix_memalign`.
    PosixMemalign = 2,
    /// `aligned_alloc`.
    AlignedAlloc = 3,
    /// `memalign`.
    Memalign = 4,
    /// `valloc`.
    Valloc = 5,
    /// `pvalloc`.
    Pvalloc = 6,
}

impl AllocKind {
    /// Every kind, in tag order.
    pub const ALL: [AllocKind; 7] = [
        AllocKind::Malloc,
        AllocKind::Calloc,
        AllocKind::PosixMemalign,
        AllocKind::AlignedAlloc,
        AllocKind::Memalign,
        AllocKind::Valloc,
        AllocKind::Pvalloc,
    ];

    /// The kind whose tag offset is `n`, if any.
    pub fn from_u8(n: u8) -> Option<AllocKind> {
        Self::ALL.get(usize::from(n)).copied()
    }

    /// The C function's name.
    pub fn name(self) -> &'static str {
        match self {
            AllocKind::Malloc => "malloc",
            AllocKind::Calloc => "calloc",
            AllocKind::PosixMemalign => "posix_memalign",
            AllocKind::AlignedAlloc => "aligned_alloc",
            AllocKind::Memalign => "memalign",
            AllocKind::Valloc => "valloc",
            AllocKind::Pvalloc => "pvalloc",
        }
    }
}

/// The file header (FORMAT.md §2), bincode-encoded after the magic, version and length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Process id of the traced process.
    pub pid: u32,
    /// Parent process id at start.
    pub ppid: u32,
    /// The executable, from `/proc/self/exe`.
    pub executable: String,
    /// The command line, possibly cut short to fit the header region.
    pub cmdline: Vec<String>,
    /// Wall-clock time at start, in nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// For a process created by `fork` from a traced parent: the parent's trace file.
    pub parent_trace: Option<String>,
    /// Version of the memtrace that wrote the file.
    pub tool_version: String,
    /// For a process created by `fork`: when the fork happened, on the parent trace's clock (a fork
    /// child's clock goes on from its parent's). Appended to the header after the first release.
    #[serde(default)]
    pub fork_time_ns: Option<u64>,
    /// Sampling (`MEMTRACE_SAMPLE_BYTES`): the mean number of allocated bytes between two recorded
    /// allocations; `None` when every allocation is recorded (FORMAT.md §2). Appended in version 2.
    #[serde(default)]
    pub sample_bytes: Option<u64>,
}

/// How many zero bytes are added to a header payload before it is decoded: a payload that ends
/// before fields appended to the header since it was written then reads them as `None` (bincode's
/// `Option` is one byte, 0 for `None`). Enough for every field appended so far.
pub const HEADER_PADDING: usize = 8;

/// One `PT_LOAD` segment of a module, in the module's own (file) addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// `p_vaddr`: the segment's start in the file's address space.
    pub vaddr: u64,
    /// `p_memsz`.
    pub memsz: u64,
    /// `p_flags` (PF_X = 1, PF_W = 2, PF_R = 4).
    pub flags: u32,
}

/// A module mapped into the traced process (FORMAT.md §4.6), bincode-encoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// Id that stack frames refer to; starts at 1, never reused within a trace.
    pub id: u32,
    /// Path as the dynamic loader reports it (the executable's is resolved through `/proc/self/exe`).
    pub path: String,
    /// Load bias: runtime address = `bias + file address`.
    pub bias: u64,
    /// The `PT_LOAD` segments.
    pub segments: Vec<Segment>,
    /// The GNU build-id note, empty when the module has none.
    pub build_id: Vec<u8>,
}

/// One frame of a stack record: a return address, as a module and an offset from its load bias; or,
/// with the module id [`PYTHON_MODULE`], a Python frame (see [`Frame::python`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    /// Module id; 0 when no known module held the address (then `offset` is the absolute address).
    pub module: u32,
    /// The address minus the module's load bias (a file address of the module).
    pub offset: u64,
}

/// A Python frame: the code object it runs and the instruction executing in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PyFrame {
    /// Id of a [`PyCodeInfo`] record.
    pub code: u32,
    /// Byte offset of the executing instruction in the code object's bytecode (`f_lasti` in bytes).
    pub instruction: u32,
}

impl Frame {
    /// The stack-record form of a Python frame: module [`PYTHON_MODULE`], the code id in the high
    /// 32 bits of the offset and the instruction's byte offset in the low 32 (FORMAT.md §4.5).
    pub fn python(frame: PyFrame) -> Frame {
        Frame {
            module: PYTHON_MODULE,
            offset: (u64::from(frame.code) << 32) | u64::from(frame.instruction),
        }
    }

    /// This frame as a Python frame, if it is one.
    pub fn as_python(self) -> Option<PyFrame> {
        (self.module == PYTHON_MODULE).then_some(PyFrame {
            code: (self.offset >> 32) as u32,
            instruction: self.offset as u32,
        })
    }
}

/// How a Python code object maps instruction offsets to lines: the interpreter's own table, copied
/// as is (FORMAT.md §4.11), in one of these layouts.
pub mod line_table {
    /// No table: every instruction is on the code's first line.
    pub const NONE: u8 = 0;
    /// CPython 3.8 and 3.9 `co_lnotab`: (byte offset increment, signed line increment) pairs.
    pub const LNOTAB: u8 = 1;
    /// CPython 3.10 `co_linetable`: (byte length, signed line delta; -128 = no line) pairs.
    pub const LINETABLE_310: u8 = 2;
    /// CPython 3.11+ `co_linetable`, the location table of PEP 657 (`Objects/locations.md`).
    pub const LOCATIONS_311: u8 = 3;
}

/// A Python code object (FORMAT.md §4.11), bincode-encoded: what is needed to name a Python frame
/// and, with its line table, to find the line of any instruction offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PyCodeInfo {
    /// Id that Python frames refer to; starts at 1, never reused within a trace.
    pub id: u32,
    /// `co_name`: the function's name (`<module>` for a module's top level).
    pub name: String,
    /// `co_qualname` (3.11+; equal to `name` before): `Class.method`, `outer.<locals>.inner`.
    pub qualname: String,
    /// `co_filename`, as the interpreter has it (may be relative, or `<frozen ...>`, `<string>`).
    pub filename: String,
    /// `co_firstlineno`.
    pub first_line: u32,
    /// Layout of `line_table`, one of the [`line_table`] constants.
    pub line_table_kind: u8,
    /// The interpreter's line table, byte for byte (empty when it was too long to record).
    pub line_table: Vec<u8>,
}

/// One decoded record of a thread's stream (FORMAT.md §4). Times are nanoseconds since the trace start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// An allocation returned `addr` for a request of `size` bytes.
    Alloc {
        /// Time of the call.
        time: u64,
        /// Which function.
        kind: AllocKind,
        /// Stack id (defined by a [`Record::Stack`] anywhere in the trace).
        stack: u32,
        /// Requested size in bytes (for calloc, `nmemb * size`).
        size: u64,
        /// Returned address.
        addr: u64,
    },
    /// A realloc moved or resized `old` to `new` (equal when resized in place).
    Realloc {
        /// Time of the call.
        time: u64,
        /// Stack id.
        stack: u32,
        /// Requested size.
        size: u64,
        /// The block passed in (0 for `realloc(NULL, n)`).
        old: u64,
        /// The block returned.
        new: u64,
    },
    /// `addr` was freed.
    Free {
        /// Time of the call.
        time: u64,
        /// The freed address.
        addr: u64,
    },
    /// Defines stack `id`: return addresses, innermost first.
    Stack {
        /// The id allocation records refer to.
        id: u32,
        /// Frames, innermost first.
        frames: Vec<Frame>,
    },
    /// A module was found mapped.
    Module(ModuleInfo),
    /// A Python code object that frames refer to (version 2).
    PyCode(PyCodeInfo),
    /// Module `id` was unmapped.
    ModuleUnload {
        /// Time it was noticed.
        time: u64,
        /// The module.
        id: u32,
    },
    /// A named point from `memtrace_snapshot` (or a signal).
    Mark {
        /// Time of the call.
        time: u64,
        /// The label, as given (lossily decoded as UTF-8).
        label: String,
    },
    /// The thread's name.
    ThreadName {
        /// The name (lossily decoded as UTF-8).
        name: String,
    },
    /// The process ended normally (exit, `_exit`, return from `main`).
    End {
        /// Time of the end.
        time: u64,
    },
}
