//! Support for memtrace's end-to-end tests: finds (or builds) `libmemtrace.so` and
//! `memtrace-analyze`, compiles the fixture programs in `tests/fixtures/`, runs them with and without
//! the preload, and reads the analyzer's JSON reports.
//!
//! This crate makes no claim about memtrace's behaviour beyond "this step worked"; the claims live
//! in `e2e/`. Fixture allocations are found by the function that made them (the innermost frame)
//! and the source line marked `/* SITE:<name> */`, never by position in a report, so that whatever
//! libc, the loader or an interpreter allocates on its own does not matter.
//!
//! - [`artifacts`]: `MEMTRACE_PRELOAD` / `MEMTRACE_ANALYZE`, else one `cargo build --release` per
//!   test process.
//! - [`fixture`]: one compiled fixture per name per test process, kept under the target directory so
//!   that a failing run can be repeated by hand.
//! - [`Program`], [`run_plain`], [`run_traced`]: child processes with a clean environment and a
//!   timeout (a deadlock in the preload fails the test instead of hanging it).
//! - [`analyze`], [`Traced::report`], [`entries`], [`assert_site`]: the JSON contract, parsed strictly.
//! - [`heaptrack_counts`]: the same program under heaptrack, when it is installed.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Environment variables the children never inherit from whoever runs the tests: a developer's own
/// `LD_PRELOAD` or `MEMTRACE_*` settings must not change what the tests see.
const SCRUBBED_ENV: &[&str] = &[
    "LD_PRELOAD",
    "MEMTRACE_OUTPUT",
    "MEMTRACE_QUIET",
    "MEMTRACE_MAX_FRAMES",
    "MEMTRACE_SNAPSHOT_SIGNAL",
    "PYTHONMALLOC",
    "MALLOC_CHECK_",
    "MALLOC_PERTURB_",
    "GLIBC_TUNABLES",
];

/// How long any child may run before the test calls it hung (`MEMTRACE_TEST_TIMEOUT`, in seconds).
/// Generous, for loaded 2-core machines: no child here takes more than a few seconds.
fn child_timeout() -> Duration {
    let secs = std::env::var("MEMTRACE_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    Duration::from_secs(secs)
}

/// The workspace root (the directory holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `tests/fixtures/`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The two programs under test.
#[derive(Debug)]
pub struct Artifacts {
    /// `libmemtrace.so`.
    pub preload: PathBuf,
    /// `memtrace-analyze`.
    pub analyze: PathBuf,
}

/// The preload and the analyzer: `MEMTRACE_PRELOAD` and `MEMTRACE_ANALYZE` when set, otherwise built
/// once per test process with `cargo build --release` (a no-op when they are up to date).
///
/// The tests use the release build on purpose: it is what users run, and the preload's debug build
/// is too slow for the CPython tests.
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Result<Artifacts, String>> = OnceLock::new();
    match ARTIFACTS.get_or_init(find_or_build_artifacts) {
        Ok(artifacts) => artifacts,
        // Every test that needs the artifacts fails with the same message; the build runs once.
        Err(message) => panic!("{message}"),
    }
}

fn find_or_build_artifacts() -> Result<Artifacts, String> {
    let preload = std::env::var_os("MEMTRACE_PRELOAD").map(PathBuf::from);
    let analyze = std::env::var_os("MEMTRACE_ANALYZE").map(PathBuf::from);
    let (preload, analyze) = match (preload, analyze) {
        (Some(preload), Some(analyze)) => (preload, analyze),
        (preload, analyze) => {
            let built = cargo_build_release()?;
            (
                preload.unwrap_or(built.preload),
                analyze.unwrap_or(built.analyze),
            )
        }
    };
    for (path, var) in [
        (&preload, "MEMTRACE_PRELOAD"),
        (&analyze, "MEMTRACE_ANALYZE"),
    ] {
        if !path.is_file() {
            return Err(format!(
                "{} does not exist (set {var}, or run `cargo build --release` in {})",
                path.display(),
                workspace_root().display()
            ));
        }
    }
    // LD_PRELOAD needs an absolute path once the child changes directory.
    let absolute = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    Ok(Artifacts {
        preload: absolute(preload),
        analyze: absolute(analyze),
    })
}

/// Builds both packages in release and takes the artifact paths from cargo's own JSON messages,
/// so that `CARGO_TARGET_DIR` and `build.target-dir` are honoured without guessing.
fn cargo_build_release() -> Result<Artifacts, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("memtrace-tests: cargo build --release -p memtrace-preload -p memtrace-analyzer");
    let output = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
            "-p",
            "memtrace-preload",
            "-p",
            "memtrace-analyzer",
        ])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo build --release -p memtrace-preload -p memtrace-analyzer` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut preload = None;
    let mut analyze = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        if let Some(exe) = message["executable"].as_str()
            && message["target"]["name"] == "memtrace-analyze"
        {
            analyze = Some(PathBuf::from(exe));
        }
        for file in message["filenames"].as_array().into_iter().flatten() {
            if let Some(file) = file.as_str()
                && file.ends_with("/libmemtrace.so")
            {
                preload = Some(PathBuf::from(file));
            }
        }
    }
    match (preload, analyze) {
        (Some(preload), Some(analyze)) => Ok(Artifacts { preload, analyze }),
        (preload, analyze) => Err(format!(
            "cargo built, but named no libmemtrace.so ({preload:?}) or memtrace-analyze ({analyze:?})"
        )),
    }
}

/// A fixture program, compiled.
#[derive(Debug)]
pub struct Fixture {
    /// The file name in `tests/fixtures/`, e.g. `alloc_kinds.c`.
    pub name: String,
    /// The source file.
    pub source: PathBuf,
    /// The executable.
    pub exe: PathBuf,
}

impl Fixture {
    /// The line of `/* SITE:<site> */` in the source (1-based). Exactly one line must carry it.
    pub fn site_line(&self, site: &str) -> u64 {
        let text = std::fs::read_to_string(&self.source)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.source.display()));
        let marker = format!("/* SITE:{site} */");
        let lines: Vec<u64> = text
            .lines()
            .enumerate()
            .filter(|(_, line)| line.contains(&marker))
            .map(|(i, _)| i as u64 + 1)
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{} must mark exactly one line with {marker}, found lines {lines:?}",
            self.name
        );
        lines[0]
    }

    /// The executable's file name, which is how the analyzer's `module` field names it.
    pub fn exe_name(&self) -> &str {
        self.exe
            .file_name()
            .and_then(OsStr::to_str)
            .expect("fixture executables have UTF-8 names")
    }

    /// A [`Program`] running this fixture with `args`.
    pub fn program(&self, args: &[&str]) -> Program {
        Program::new(&self.exe).args(args)
    }
}

/// `tests/fixtures/<name>` compiled with the standard flags (once per test process).
pub fn fixture(name: &str) -> &'static Fixture {
    fixture_with(name, &[])
}

/// `tests/fixtures/<name>` compiled with the standard flags plus `extra` (for example `-no-pie`).
///
/// Standard flags: `-g -O0 -fno-omit-frame-pointer -fasynchronous-unwind-tables -pthread`, so that
/// every fixture function keeps its own frame and its allocation calls stay on their marked lines.
/// `.c` files go to `$CC` (default `gcc`), `.cpp` files to `$CXX` (default `g++`).
pub fn fixture_with(name: &str, extra: &[&str]) -> &'static Fixture {
    static COMPILED: OnceLock<Mutex<HashMap<String, &'static Fixture>>> = OnceLock::new();
    let key = format!("{name} {}", extra.join(" "));
    let mut compiled = COMPILED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(fixture) = compiled.get(&key) {
        return fixture;
    }
    let fixture: &'static Fixture = Box::leak(Box::new(compile(name, extra)));
    compiled.insert(key, fixture);
    fixture
}

fn compile(name: &str, extra: &[&str]) -> Fixture {
    let source = fixtures_dir().join(name);
    assert!(source.is_file(), "no fixture {}", source.display());
    let (stem, compiler) = match name.rsplit_once('.') {
        Some((stem, "c")) => (stem, std::env::var("CC").unwrap_or_else(|_| "gcc".into())),
        Some((stem, "cpp")) => (stem, std::env::var("CXX").unwrap_or_else(|_| "g++".into())),
        _ => panic!("fixture {name} is neither .c nor .cpp"),
    };
    let suffix: String = extra
        .iter()
        .map(|flag| flag.trim_start_matches('-').replace(['=', '/'], "_"))
        .map(|flag| format!("-{flag}"))
        .collect();
    let dir = fixture_build_dir();
    let exe = dir.join(format!("{stem}{suffix}"));
    // Build under a unique name, then rename: two test processes may compile the same fixture.
    let partial = dir.join(format!(".{stem}{suffix}.{}", std::process::id()));
    let output = Command::new(&compiler)
        .args([
            "-g",
            "-O0",
            "-fno-omit-frame-pointer",
            "-fasynchronous-unwind-tables",
            "-pthread",
            "-Wall",
        ])
        .args(extra)
        .arg("-o")
        .arg(&partial)
        .arg(&source)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e} (install gcc and g++)"));
    assert!(
        output.status.success(),
        "{compiler} {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&partial, &exe).expect("rename the compiled fixture into place");
    Fixture {
        name: name.to_string(),
        source,
        exe,
    }
}

/// `<target>/memtrace-fixtures/`: beside the test executable's profile directory, so compiled
/// fixtures survive the run and a failure can be reproduced by hand.
fn fixture_build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/<profile>/deps/e2e-<hash>
    let dir = exe
        .ancestors()
        .nth(3)
        .map(|target| target.join("memtrace-fixtures"))
        .unwrap_or_else(|| std::env::temp_dir().join("memtrace-fixtures"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// A command to run: program, arguments, extra environment and working directory.
#[derive(Debug, Clone)]
pub struct Program {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
}

impl Program {
    /// `program` with no arguments.
    pub fn new(program: impl AsRef<OsStr>) -> Program {
        Program {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }
    }

    /// Appends arguments.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Program {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the child (after the scrubbed ones are removed).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Program {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the child in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Program {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// The program and its arguments, shell-like, for messages.
    pub fn display(&self) -> String {
        let mut s = Path::new(&self.program).display().to_string();
        for arg in &self.args {
            s.push(' ');
            s.push_str(&arg.to_string_lossy());
        }
        s
    }

    /// Starts the program with its output discarded, for tests that stop it themselves.
    pub fn spawn(&self) -> std::process::Child {
        self.command()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.display()))
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        for key in SCRUBBED_ENV {
            command.env_remove(key);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        command
    }
}

/// What a child did.
#[derive(Debug)]
pub struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output, lossily decoded.
    pub stdout: String,
    /// Its standard error, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// Panics unless the child exited with `code`, showing what it printed.
    #[track_caller]
    pub fn assert_code(&self, code: i32, what: &str) -> &Output {
        assert_eq!(
            self.status.code(),
            Some(code),
            "{what}: expected exit code {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `command` to completion with stdin closed, killing it after [`child_timeout`].
fn run_with_timeout(mut command: Command, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + child_timeout();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{what} still running after {:?}: hung (deadlock?)\n--- stderr\n{}",
                    child_timeout(),
                    stderr.join().unwrap_or_default()
                );
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        status,
        // A grandchild that keeps the pipes open would block these joins; none of ours do.
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Runs `program` without the preload.
pub fn run_plain(program: &Program) -> Output {
    run_with_timeout(program.command(), &program.display())
}

/// A run under the preload and the trace it left.
#[derive(Debug)]
pub struct Traced {
    /// Holds the trace (and any other files the run created); removed on drop.
    pub dir: TempDir,
    /// `MEMTRACE_OUTPUT`.
    pub trace: PathBuf,
    /// What the program did.
    pub output: Output,
}

impl Traced {
    /// `memtrace-analyze <report> <trace> --format json <extra...>`, which must succeed.
    pub fn report(&self, report: &str, extra: &[&str]) -> Value {
        let mut args: Vec<OsString> = vec![report.into(), self.trace.clone().into()];
        args.extend(["--format", "json"].iter().map(OsString::from));
        args.extend(extra.iter().map(OsString::from));
        analyze_json(&args)
    }

    /// `summary --format json`.
    pub fn summary(&self) -> Summary {
        Summary(self.report("summary", &[]))
    }

    /// The entries of `leaks --format json`.
    pub fn leaks(&self) -> Vec<Entry> {
        entries(&self.report("leaks", &[]))
    }

    /// The entries of `top --format json --by <by> -n 100000` (every stack).
    pub fn top(&self, by: &str) -> Vec<Entry> {
        entries(&self.report("top", &["--by", by, "-n", "100000"]))
    }
}

/// Runs `program` under the preload with `MEMTRACE_OUTPUT=<tempdir>/trace.bin` and
/// `MEMTRACE_QUIET=1`, and checks that the trace exists.
pub fn run_traced(program: &Program) -> Traced {
    let dir = tempfile::Builder::new()
        .prefix("memtrace-e2e")
        .tempdir()
        .expect("tempdir");
    let trace = dir.path().join("trace.bin");
    let program = program
        .clone()
        .env("LD_PRELOAD", &artifacts().preload)
        .env("MEMTRACE_OUTPUT", &trace)
        .env("MEMTRACE_QUIET", "1");
    let output = run_with_timeout(program.command(), &program.display());
    assert!(
        trace.is_file(),
        "{} under the preload left no trace at {} ({})\n--- stderr\n{}",
        program.display(),
        trace.display(),
        output.status,
        output.stderr
    );
    Traced { dir, trace, output }
}

/// Runs the analyzer with `args`, whatever its exit status.
pub fn analyze<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let program = Program::new(&artifacts().analyze).args(args);
    run_with_timeout(program.command(), &program.display())
}

/// Runs the analyzer with `args`; it must exit 0 and print one JSON value on stdout.
pub fn analyze_json<S: AsRef<OsStr>>(args: &[S]) -> Value {
    let what = format!(
        "memtrace-analyze {}",
        args.iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = analyze(args);
    output.assert_code(0, &what);
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}):\n{}", output.stdout))
}

/// `memtrace-analyze summary <trace> --format json`, which must exit 0 with JSON on stdout; also
/// what the analyzer said on stderr.
pub fn summary_of(trace: &Path, what: &str) -> (Summary, String) {
    let out = analyze(&[
        "summary".as_ref(),
        trace.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ]);
    out.assert_code(0, &format!("{what}: summary of {}", trace.display()));
    let summary = Summary(serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: summary of {} is not JSON ({e}):\n{}",
            trace.display(),
            out.stdout
        )
    }));
    (summary, out.stderr)
}

/// `summary --format json`, with typed access to its integer fields.
#[derive(Debug, Clone)]
pub struct Summary(pub Value);

impl Summary {
    /// The integer field `name`; panics if it is missing or not a non-negative integer.
    #[track_caller]
    pub fn get(&self, name: &str) -> u64 {
        self.0[name].as_u64().unwrap_or_else(|| {
            panic!(
                "summary field {name:?} is missing or not a non-negative integer in\n{:#}",
                self.0
            )
        })
    }
}

impl Summary {
    /// The integer field `name` if the analyzer reports it (fields beyond the contract's minimum).
    pub fn optional(&self, name: &str) -> Option<u64> {
        self.0.get(name).and_then(Value::as_u64)
    }

    /// Asserts that the replay found nothing inconsistent: no free or realloc of an unknown
    /// block and no warnings, for the fields the analyzer reports.
    #[track_caller]
    pub fn assert_consistent(&self, what: &str) {
        for field in ["unmatched_frees", "unmatched_reallocs"] {
            if let Some(n) = self.optional(field) {
                assert_eq!(n, 0, "{what}: summary {field}:\n{:#}", self.0);
            }
        }
        if let Some(warnings) = self.0.get("warnings").and_then(Value::as_array) {
            assert!(
                warnings.is_empty(),
                "{what}: the trace read with warnings: {warnings:?}"
            );
        }
    }
}

/// One frame of a stack, as the JSON contract defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Demangled function name.
    pub function: Option<String>,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u64>,
    /// The module (executable or shared library).
    pub module: Option<String>,
    /// `0x...`.
    pub address: String,
}

/// One entry of `top` or `leaks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Bytes for the chosen measure.
    pub bytes: u64,
    /// Blocks or calls for the chosen measure.
    pub count: u64,
    /// Innermost frame first.
    pub stack: Vec<Frame>,
}

impl Entry {
    /// The innermost frame.
    pub fn innermost(&self) -> &Frame {
        self.stack.first().expect("entries have at least one frame")
    }

    /// The first (innermost) frame whose module is the file `module_name` (for C++ fixtures, whose
    /// allocations pass through `operator new` in libstdc++ before reaching malloc).
    pub fn first_frame_in(&self, module_name: &str) -> Option<&Frame> {
        self.stack
            .iter()
            .find(|f| f.module_name() == Some(module_name))
    }
}

impl Frame {
    /// The file name of the module.
    pub fn module_name(&self) -> Option<&str> {
        self.module.as_deref().map(|m| {
            Path::new(m)
                .file_name()
                .and_then(OsStr::to_str)
                .unwrap_or(m)
        })
    }

    /// Whether this frame is in `function` (C, or a C++ name with its parameters).
    pub fn is_function(&self, function: &str) -> bool {
        self.function
            .as_deref()
            .is_some_and(|f| function_matches(f, function))
    }
}

/// `leak_new` matches `leak_new` and `leak_new()` / `leak_new(int)` (demangled C++).
pub fn function_matches(actual: &str, want: &str) -> bool {
    actual == want
        || actual
            .strip_prefix(want)
            .is_some_and(|r| r.starts_with('('))
}

/// Parses the `entries` of a `top` or `leaks` report, checking every field's type against the
/// contract (a wrong type is a failure even where no test looks at the value).
pub fn entries(report: &Value) -> Vec<Entry> {
    let list = report["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("report has no \"entries\" array:\n{report:#}"));
    list.iter().map(parse_entry).collect()
}

fn parse_entry(entry: &Value) -> Entry {
    let int = |v: &Value, name: &str| {
        v[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name:?} is not a non-negative integer in\n{v:#}"))
    };
    let opt_str = |v: &Value, name: &str| match &v[name] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        _ => panic!("{name:?} is neither a string nor null in\n{v:#}"),
    };
    let stack = entry["stack"]
        .as_array()
        .unwrap_or_else(|| panic!("\"stack\" is not an array in\n{entry:#}"));
    let stack = stack
        .iter()
        .map(|frame| {
            let object = frame
                .as_object()
                .unwrap_or_else(|| panic!("a frame is not an object:\n{frame:#}"));
            for key in ["function", "file", "line", "module", "address"] {
                assert!(object.contains_key(key), "frame lacks {key:?}:\n{frame:#}");
            }
            let address = frame["address"]
                .as_str()
                .filter(|a| {
                    a.strip_prefix("0x").is_some_and(|hex| {
                        !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())
                    })
                })
                .unwrap_or_else(|| panic!("\"address\" is not a \"0x...\" string in\n{frame:#}"))
                .to_string();
            let line = match &frame["line"] {
                Value::Null => None,
                v => Some(
                    v.as_u64()
                        .unwrap_or_else(|| panic!("\"line\" is not an integer in\n{frame:#}")),
                ),
            };
            Frame {
                function: opt_str(frame, "function"),
                file: opt_str(frame, "file"),
                line,
                module: opt_str(frame, "module"),
                address,
            }
        })
        .collect::<Vec<_>>();
    assert!(
        !stack.is_empty(),
        "an entry with an empty stack:\n{entry:#}"
    );
    Entry {
        bytes: int(entry, "bytes"),
        count: int(entry, "count"),
        stack,
    }
}

/// The entries whose innermost frame is `function`.
pub fn at_innermost<'a>(entries: &'a [Entry], function: &str) -> Vec<&'a Entry> {
    entries
        .iter()
        .filter(|e| e.innermost().is_function(function))
        .collect()
}

/// The entries whose innermost frame is `function`, summed: (bytes, count).
pub fn sum_at_innermost(entries: &[Entry], function: &str) -> (u64, u64) {
    at_innermost(entries, function)
        .iter()
        .fold((0, 0), |(b, c), e| (b + e.bytes, c + e.count))
}

/// Entries as short text, for failure messages: bytes, count, and the three innermost frames.
pub fn render<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> String {
    let mut out = String::new();
    for e in entries {
        let _ = write!(out, "{:>10} B {:>6} x ", e.bytes, e.count);
        for (i, f) in e.stack.iter().take(3).enumerate() {
            if i > 0 {
                out.push_str(" <- ");
            }
            let file = f.file.as_deref().map(|p| {
                Path::new(p)
                    .file_name()
                    .and_then(OsStr::to_str)
                    .unwrap_or(p)
            });
            let _ = write!(
                out,
                "{} ({}:{}) [{}]",
                f.function.as_deref().unwrap_or("?"),
                file.unwrap_or("?"),
                f.line.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
                f.module_name().unwrap_or("?")
            );
        }
        out.push('\n');
    }
    out
}

/// Expected numbers for one allocation site of a fixture.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    /// The fixture function that calls the allocator.
    pub function: &'a str,
    /// The marker on the allocating line: `/* SITE:<marker> */`.
    pub marker: &'a str,
    /// Expected bytes.
    pub bytes: u64,
    /// Expected count.
    pub count: u64,
}

impl<'a> Site<'a> {
    /// A site whose marker is its function's name.
    pub const fn new(function: &'a str, bytes: u64, count: u64) -> Site<'a> {
        Site {
            function,
            marker: function,
            bytes,
            count,
        }
    }
}

/// Asserts that `report` (named `what` in messages) holds exactly one entry for `site`: its
/// innermost frame is the site's function, in the fixture's executable, at the marked line of the
/// fixture's source, with exactly the expected bytes and count.
#[track_caller]
pub fn assert_site(entries: &[Entry], fixture: &Fixture, what: &str, site: Site<'_>) {
    let found = at_innermost(entries, site.function);
    assert!(
        found.len() == 1,
        "{what}: expected exactly one entry whose innermost frame is {}, found {}; entries:\n{}",
        site.function,
        found.len(),
        render(entries)
    );
    let entry = found[0];
    let frame = entry.innermost();
    let context = || format!("{what}, site {}: {}", site.function, render([entry]));
    assert_eq!(
        (entry.bytes, entry.count),
        (site.bytes, site.count),
        "(bytes, count) of {}",
        context()
    );
    assert_frame_at(frame, fixture, site.marker, &context());
}

/// Like [`assert_site`], for allocations that reach the allocator through library code (C++
/// `operator new` in libstdc++, or template code): exactly one entry has a frame in
/// `site.function`, with the expected bytes and count, and its innermost such frame is in the
/// fixture's executable at the marked line. Returns the entry and that frame's index.
#[track_caller]
pub fn assert_site_through<'e>(
    entries: &'e [Entry],
    fixture: &Fixture,
    what: &str,
    site: Site<'_>,
) -> (&'e Entry, usize) {
    let found: Vec<(&Entry, usize)> = entries
        .iter()
        .filter_map(|e| {
            e.stack
                .iter()
                .position(|f| f.is_function(site.function))
                .map(|i| (e, i))
        })
        .collect();
    assert!(
        found.len() == 1,
        "{what}: expected exactly one entry with a frame in {}, found {}; entries:\n{}",
        site.function,
        found.len(),
        render(entries)
    );
    let (entry, index) = found[0];
    let context = || format!("{what}, site {}: {}", site.function, render([entry]));
    assert_eq!(
        (entry.bytes, entry.count),
        (site.bytes, site.count),
        "(bytes, count) of {}",
        context()
    );
    assert_frame_at(&entry.stack[index], fixture, site.marker, &context());
    (entry, index)
}

/// Asserts that `frame` is in the fixture's executable, in its source file, at the line marked
/// `/* SITE:<marker> */`.
#[track_caller]
pub fn assert_frame_at(frame: &Frame, fixture: &Fixture, marker: &str, context: &str) {
    assert_eq!(
        frame.module_name(),
        Some(fixture.exe_name()),
        "module of {context}"
    );
    let file = frame.file.as_deref().unwrap_or("");
    assert!(
        Path::new(file).file_name() == Path::new(&fixture.name).file_name(),
        "file of {context}: expected {}, got {:?}",
        fixture.name,
        frame.file
    );
    assert_eq!(
        frame.line,
        Some(fixture.site_line(marker)),
        "line of {context} (the line marked SITE:{marker})"
    );
}

/// Asserts that no entry's innermost frame is `function`.
#[track_caller]
pub fn assert_no_site(entries: &[Entry], what: &str, function: &str) {
    let found = at_innermost(entries, function);
    assert!(
        found.is_empty(),
        "{what}: expected no entry for {function}, found:\n{}",
        render(found)
    );
}

/// heaptrack's totals for one run.
#[derive(Debug, Clone, Copy)]
pub struct HeaptrackCounts {
    /// "calls to allocation functions".
    pub alloc_calls: u64,
    /// "temporary memory allocations".
    pub temporary: u64,
}

/// Whether `heaptrack` and `heaptrack_print` are on `PATH`. When they are not, prints why the
/// calling test skips its cross-check (CI installs heaptrack, so it runs there).
pub fn heaptrack_available(test: &str) -> bool {
    let found = ["heaptrack", "heaptrack_print"]
        .iter()
        .all(|tool| which(tool).is_some());
    if !found {
        eprintln!(
            "SKIPPED {test}: heaptrack is not installed (apt-get install heaptrack); \
             the cross-check against heaptrack did not run"
        );
    }
    found
}

/// Runs `program` under heaptrack and reads its totals from `heaptrack_print`.
pub fn heaptrack_counts(program: &Program) -> HeaptrackCounts {
    let dir = tempfile::Builder::new()
        .prefix("memtrace-heaptrack")
        .tempdir()
        .expect("tempdir");
    let base = dir.path().join("ht");
    let mut wrapped = Program::new("heaptrack")
        .args([
            OsStr::new("-o"),
            base.as_os_str(),
            program.program.as_os_str(),
        ])
        .args(&program.args);
    wrapped.env = program.env.clone();
    wrapped.cwd = program.cwd.clone();
    let run = run_plain(&wrapped);
    assert!(
        run.status.code().is_some(),
        "heaptrack {}: {}\n{}",
        program.display(),
        run.status,
        run.stderr
    );
    let data = std::fs::read_dir(dir.path())
        .expect("read heaptrack's directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("ht."))
        })
        .unwrap_or_else(|| {
            panic!(
                "heaptrack wrote no data file for {}\n--- stdout\n{}\n--- stderr\n{}",
                program.display(),
                run.stdout,
                run.stderr
            )
        });
    let print = run_plain(&Program::new("heaptrack_print").args([
        OsStr::new("--print-peaks=0"),
        OsStr::new("--print-allocators=0"),
        OsStr::new("--print-temporary=0"),
        OsStr::new("--print-leaks=0"),
        OsStr::new("-f"),
        data.as_os_str(),
    ]));
    print.assert_code(0, "heaptrack_print");
    let number_after = |label: &str| {
        print
            .stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("heaptrack_print printed no {label:?}:\n{}", print.stdout))
    };
    HeaptrackCounts {
        alloc_calls: number_after("calls to allocation functions:"),
        temporary: number_after("temporary memory allocations:"),
    }
}

/// `tool` found on `PATH`, if any.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// `None` when `|actual - heaptrack| <= tolerance * heaptrack`, else a message naming the quantity.
pub fn check_close(what: &str, actual: u64, heaptrack: u64, tolerance: f64) -> Option<String> {
    let diff = actual.abs_diff(heaptrack) as f64;
    (diff > tolerance * heaptrack as f64).then(|| {
        format!(
            "{what}: memtrace {actual}, heaptrack {heaptrack}: off by {diff} ({:.3}%), allowed {:.1}%",
            100.0 * diff / heaptrack.max(1) as f64,
            100.0 * tolerance
        )
    })
}
