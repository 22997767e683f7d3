//! Helpers for the analyzer's tests: traces built in memory and written to a temp dir, and the
//! analyzer run in-process (or as the real binary) with its output captured.

use memtrace_analyzer::ExitCode;
use memtrace_format::builder::TraceBuilder;
use memtrace_format::{AllocKind, Frame, ModuleInfo, Record};
use std::path::{Path, PathBuf};

/// A trace file in its own temp dir (removed on drop).
pub struct TraceFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TraceFile {
    /// Writes `bytes` as a trace file.
    pub fn new(bytes: &[u8]) -> TraceFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.trace");
        std::fs::write(&path, bytes).unwrap();
        TraceFile { _dir: dir, path }
    }

    /// The path as a string, for argument lists.
    pub fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// What one run printed and returned.
#[derive(Debug)]
pub struct Output {
    pub code: ExitCode,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }

    /// Asserts the exit code and returns self.
    #[track_caller]
    pub fn assert_code(self, code: ExitCode) -> Self {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `memtrace-analyze ARGS` in-process.
pub fn analyze(args: &[&str]) -> Output {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("memtrace-analyze").chain(args.iter().copied());
    let code = memtrace_analyzer::main_with(argv, &mut out, &mut err);
    Output {
        code,
        stdout: String::from_utf8(out).unwrap(),
        stderr: String::from_utf8(err).unwrap(),
    }
}

/// Runs the command on a trace built by `b` and returns the parsed JSON (exit 0 asserted).
pub fn json_of(b: TraceBuilder, args: &[&str]) -> serde_json::Value {
    let f = TraceFile::new(&b.finish());
    let mut argv = vec![args[0], f.arg()];
    argv.extend_from_slice(&args[1..]);
    argv.extend_from_slice(&["--format", "json"]);
    analyze(&argv).assert_code(ExitCode::Success).json()
}

/// A builder with the test header.
pub fn builder() -> TraceBuilder {
    TraceBuilder::new(&TraceBuilder::test_header())
}

/// Appends an allocation of `kind`.
pub fn alloc(
    b: &mut TraceBuilder,
    thread: u32,
    time: u64,
    kind: AllocKind,
    stack: u32,
    size: u64,
    addr: u64,
) {
    b.push(
        thread,
        &Record::Alloc {
            time,
            kind,
            stack,
            size,
            addr,
        },
    );
}

/// Appends a realloc.
pub fn realloc(
    b: &mut TraceBuilder,
    thread: u32,
    time: u64,
    stack: u32,
    size: u64,
    old: u64,
    new: u64,
) {
    b.push(
        thread,
        &Record::Realloc {
            time,
            stack,
            size,
            old,
            new,
        },
    );
}

/// Appends an end record.
pub fn end(b: &mut TraceBuilder, thread: u32, time: u64) {
    b.push(thread, &Record::End { time });
}

/// A module record for `path` with bias 0 and no build-id.
pub fn module(id: u32, path: &Path, build_id: Vec<u8>) -> ModuleInfo {
    ModuleInfo {
        id,
        path: path.to_str().unwrap().into(),
        bias: 0,
        segments: vec![],
        build_id,
    }
}

/// A frame.
pub fn frame(module: u32, offset: u64) -> Frame {
    Frame { module, offset }
}

/// The integer at `key` of a JSON object.
#[track_caller]
pub fn int(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key)
        .and_then(|x| x.as_u64())
        .unwrap_or_else(|| panic!("no integer {key:?} in {v:#}"))
}
