//! CPython's own regression tests under the preload (issue 5's acceptance line):
//! `python3.11 -m test` with test_json, test_thread, test_gc, test_weakref, test_ctypes, test_mmap,
//! test_dict, test_list, test_queue and test_functools passes traced exactly as it does untraced,
//! test case by test case, and every trace the run leaves is read by `memtrace-analyze summary`.
//!
//! The interpreter's traces (regrtest's, its `-j2` workers', the interpreters the tests start)
//! must read without a warning, end with an end record and replay consistently (no unmatched free
//! or realloc, no missed free). The other programs that test_ctypes starts (gcc, collect2, as, ld,
//! objdump) only have to be readable by the analyzer, and a warning on them is printed as a NOTE
//! (once in about ten runs a gcc trace lacked its end record; ld.bfd's traces used to free two
//! blocks they never saw allocated, the error string of the preload's own failed `dlsym`, fixed
//! since): they are not what this file is about.
//!
//! Debian's `/usr/bin/python3.11` is required (its `test` package comes from
//! `libpython3.11-testsuite`, which `.ci/run` installs); pyenv's 3.11.7 is checked too when it is
//! installed, and skipped with a note on stderr otherwise. `PYTHONMALLOC` is left unset (the
//! preload chooses); Debian's interpreter also runs a second traced pass with
//! `PYTHONMALLOC=malloc`.
//!
//! Time on 2 cores: each pass takes about 14 s untraced and 28 s traced with `-j2`, plus a few
//! seconds for the analysis of its ~70 traces. The tests here take one lock, so that the two
//! interpreters' suites never share the machine with each other (the CPython suite has
//! timing-sensitive cases).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use memtrace_tests::{Output, Program, Summary, run_plain, run_traced};

/// The modules of the acceptance line, in the order regrtest runs them.
const MODULES: [&str; 10] = [
    "test_json",
    "test_thread",
    "test_gc",
    "test_weakref",
    "test_ctypes",
    "test_mmap",
    "test_dict",
    "test_list",
    "test_queue",
    "test_functools",
];

/// Debian's interpreter: never skipped.
const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

/// pyenv's 3.11.7, under `$HOME`.
const PYENV_PYTHON: &str = ".pyenv/versions/3.11.7/bin/python3.11";

/// Test cases that pass, at least, in these ten modules (about 1,290 pass and 90 skip on Debian's
/// 3.11.2 and on 3.11.7): a run that lost most of its tests cannot pass for a clean one.
const MIN_PASSED_CASES: usize = 1_000;

/// Allocation calls of all the interpreter's traces of one run, at least (about 18 million with
/// `PYTHONMALLOC=malloc`, which the preload sets for Python processes when it is unset).
const MIN_ALLOC_CALLS: u64 = 1_000_000;

/// Allocation calls of each regrtest worker's trace, at least (each runs one module: 170,000 to 9
/// million measured; an interpreter that only starts and exits makes about 22,000).
const MIN_WORKER_ALLOC_CALLS: u64 = 50_000;

/// One suite at a time: two of them at once would run four interpreters on two cores.
static SUITE: Mutex<()> = Mutex::new(());

/// How one test case ended, from regrtest's JUnit XML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Passed,
    Skipped,
    Failure,
    Error,
}

/// `python -m test -j2 --junit-xml <junit> <MODULES>`.
fn regrtest(python: &Path, junit: &Path) -> Program {
    Program::new(python)
        .args([OsStr::new("-m"), "test".as_ref(), "-j2".as_ref()])
        .args([OsStr::new("--junit-xml"), junit.as_os_str()])
        .args(MODULES)
}

/// Every test case in regrtest's JUnit XML (`<testcase name=...>`, one line of XML), by name: a
/// name may occur more than once (test_json's doctests are collected twice), hence the lists.
/// Checks the count against the `tests` attribute of `<testsuites>`.
fn junit_outcomes(path: &Path) -> BTreeMap<String, Vec<Outcome>> {
    let xml = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading regrtest's JUnit XML {}: {e}", path.display()));
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = tag[start..].find('"')?;
        Some(
            tag[start..start + len]
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        )
    };
    let declared: usize = xml
        .find("<testsuites")
        .and_then(|i| {
            let tag = &xml[i..i + xml[i..].find('>')?];
            attr(tag, "tests")?.parse().ok()
        })
        .unwrap_or_else(|| panic!("{}: no <testsuites tests=...>", path.display()));
    let mut outcomes: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    let mut cases = 0;
    let mut rest = xml.as_str();
    while let Some(i) = rest.find("<testcase ") {
        rest = &rest[i..];
        let tag_end = rest
            .find('>')
            .unwrap_or_else(|| panic!("{}: an unclosed <testcase", path.display()));
        let tag = &rest[..tag_end];
        let name = attr(tag, "name")
            .unwrap_or_else(|| panic!("{}: a <testcase> without a name: {tag}", path.display()));
        let outcome = if tag.ends_with('/') {
            Outcome::Passed
        } else {
            let body_end = rest
                .find("</testcase>")
                .unwrap_or_else(|| panic!("{}: {name} has no </testcase>", path.display()));
            let body = &rest[tag_end..body_end];
            if body.contains("<error") {
                Outcome::Error
            } else if body.contains("<failure") {
                Outcome::Failure
            } else if body.contains("<skipped") {
                Outcome::Skipped
            } else {
                Outcome::Passed
            }
        };
        outcomes.entry(name).or_default().push(outcome);
        cases += 1;
        rest = &rest[tag_end..];
    }
    for list in outcomes.values_mut() {
        list.sort();
    }
    assert_eq!(
        cases,
        declared,
        "{}: parsed {cases} <testcase> elements, <testsuites> says {declared}",
        path.display()
    );
    outcomes
}

/// How many test cases ended with `outcome`.
fn count(outcomes: &BTreeMap<String, Vec<Outcome>>, outcome: Outcome) -> usize {
    outcomes
        .values()
        .flatten()
        .filter(|&&o| o == outcome)
        .count()
}

/// The cases whose outcomes differ between the two runs, for failure messages.
fn differences(
    plain: &BTreeMap<String, Vec<Outcome>>,
    traced: &BTreeMap<String, Vec<Outcome>>,
) -> String {
    let mut names: Vec<&String> = plain.keys().chain(traced.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|name| plain.get(*name) != traced.get(*name))
        .map(|name| {
            format!(
                "  {name}: untraced {:?}, traced {:?}\n",
                plain.get(name),
                traced.get(name)
            )
        })
        .collect()
}

/// Asserts that regrtest reported every module OK: its summary line is `All 10 tests OK.` (3.11.2
/// and 3.11.7 both print it) and nothing on its output says that memtrace or the interpreter broke.
#[track_caller]
fn assert_all_ok(output: &Output, what: &str) {
    let all_ok = format!("All {} tests OK.", MODULES.len());
    let text = format!("{}\n{}", output.stdout, output.stderr);
    assert!(
        output.stdout.lines().any(|l| l.trim() == all_ok),
        "{what}: no line {all_ok:?} in regrtest's output\n--- stdout\n{}\n--- stderr\n{}",
        output.stdout,
        output.stderr
    );
    for bad in [
        "memtrace:",
        "panicked",
        "Fatal Python error",
        "Segmentation fault",
    ] {
        assert!(
            !text.contains(bad),
            "{what}: {bad:?} in the output\n--- stdout\n{}\n--- stderr\n{}",
            output.stdout,
            output.stderr
        );
    }
}

/// Every memtrace trace in `dir` (files starting with the trace magic), sorted.
fn traces_in(dir: &Path) -> Vec<PathBuf> {
    let mut traces: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            let mut magic = [0u8; 8];
            std::fs::File::open(p)
                .and_then(|mut f| f.read_exact(&mut magic))
                .is_ok()
                && &magic == b"MEMTRACE"
        })
        .collect();
    traces.sort();
    traces
}

/// `summary --format json` of one trace.
struct TraceSummary {
    path: PathBuf,
    summary: Summary,
    executable: String,
    cmdline: Vec<String>,
    /// What the analyzer said on stderr (its warnings, if any).
    analyzer_stderr: String,
}

impl TraceSummary {
    /// What is wrong with the trace as a whole: the analyzer's warnings, or no end record (no
    /// process here is killed, so every trace should be complete). `None` when it read cleanly.
    fn read_problems(&self) -> Option<String> {
        let warnings = self.summary.0["warnings"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ended = self.summary.0["ended"].as_bool() == Some(true);
        (!warnings.is_empty() || !self.analyzer_stderr.is_empty() || !ended).then(|| {
            format!(
                "  {}: ended {ended}, warnings {warnings:?}, analyzer stderr {:?}\n",
                self.describe(),
                self.analyzer_stderr.trim()
            )
        })
    }

    fn describe(&self) -> String {
        let mut cmdline = self.cmdline.join(" ");
        if cmdline.len() > 120 {
            let mut cut = 120;
            while !cmdline.is_char_boundary(cut) {
                cut -= 1;
            }
            cmdline.truncate(cut);
            cmdline.push_str("...");
        }
        format!(
            "{} (pid {}, {cmdline})",
            self.path.display(),
            self.summary.get("pid")
        )
    }

    /// The module a regrtest worker ran, from its command line: 3.11.2 ends it with
    /// `-m test.regrtest --worker-args '[{namespace}, "test_x"]'`, 3.11.7 with
    /// `-m test.libregrtest.worker '{..., "tests": ["test_x"], ...}'`.
    fn worker_module(&self) -> Option<String> {
        let json = |i: usize| -> Option<serde_json::Value> {
            serde_json::from_str(self.cmdline.get(i)?).ok()
        };
        let name = if let Some(i) = self.cmdline.iter().position(|a| a == "--worker-args") {
            json(i + 1)?.get(1)?.as_str()?.to_string()
        } else {
            let i = self
                .cmdline
                .iter()
                .position(|a| a == "test.libregrtest.worker")?;
            let tests = json(i + 1)?.get("tests")?.as_array()?.clone();
            match tests.as_slice() {
                [name] => name.as_str()?.to_string(),
                _ => return None,
            }
        };
        Some(name)
    }
}

/// Summarizes every trace, two analyzers at a time; the analyzer must succeed on each.
fn summaries(traces: &[PathBuf], what: &str) -> Vec<TraceSummary> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<TraceSummary>>> =
        Mutex::new(traces.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(trace) = traces.get(i) else { break };
                    let summary = summarize(trace, what);
                    results.lock().unwrap()[i] = Some(summary);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|s| s.expect("every trace was summarized"))
        .collect()
}

/// `summary --format json` of `trace`, which must exit 0 and print JSON with a warnings array.
fn summarize(trace: &Path, what: &str) -> TraceSummary {
    let (summary, stderr) = memtrace_tests::summary_of(trace, what);
    assert!(
        summary.0["warnings"].is_array(),
        "{what}: summary of {} has no warnings array:\n{:#}",
        trace.display(),
        summary.0
    );
    TraceSummary {
        path: trace.to_path_buf(),
        executable: summary.0["executable"].as_str().unwrap_or("").to_string(),
        cmdline: summary.0["cmdline"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default(),
        analyzer_stderr: stderr,
        summary,
    }
}

/// One traced pass of the suite, compared with the untraced one (`plain`), its traces analyzed.
fn traced_pass(
    python: &Path,
    label: &str,
    pythonmalloc: Option<&str>,
    plain: &BTreeMap<String, Vec<Outcome>>,
) {
    let what = format!(
        "{label} -m test (traced, PYTHONMALLOC {})",
        pythonmalloc.unwrap_or("unset")
    );
    let junit_dir = tempfile::Builder::new()
        .prefix("memtrace-cpython")
        .tempdir()
        .expect("tempdir");
    let junit = junit_dir.path().join("traced.xml");
    let mut program = regrtest(python, &junit);
    if let Some(value) = pythonmalloc {
        program = program.env("PYTHONMALLOC", value);
    }
    let started = Instant::now();
    let traced = run_traced(&program);
    let run_time = started.elapsed();
    traced.output.assert_code(0, &what);
    assert_all_ok(&traced.output, &what);

    // The same test cases, each with the same outcome as untraced; none failed.
    let outcomes = junit_outcomes(&junit);
    assert!(
        outcomes == *plain,
        "{what}: test cases ended differently traced and untraced:\n{}",
        differences(plain, &outcomes)
    );
    let passed = count(&outcomes, Outcome::Passed);
    assert_eq!(
        (
            count(&outcomes, Outcome::Failure),
            count(&outcomes, Outcome::Error)
        ),
        (0, 0),
        "{what}: failures and errors"
    );
    assert!(
        passed >= MIN_PASSED_CASES,
        "{what}: only {passed} test cases passed, expected at least {MIN_PASSED_CASES}"
    );

    // Every trace analyzes; the interpreter's are consistent.
    let started_analysis = Instant::now();
    let traces = traces_in(traced.dir.path());
    assert!(
        traces.contains(&traced.trace),
        "{what}: no trace at {}",
        traced.trace.display()
    );
    let summaries = summaries(&traces, &what);
    let python_exe = std::fs::canonicalize(python).unwrap_or_else(|_| python.to_path_buf());
    let is_python = |s: &TraceSummary| {
        let exe = Path::new(&s.executable);
        std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf()) == python_exe
    };
    let pythons: Vec<&TraceSummary> = summaries.iter().filter(|s| is_python(s)).collect();
    let unclean: String = pythons.iter().filter_map(|s| s.read_problems()).collect();
    assert!(
        unclean.is_empty(),
        "{what}: the interpreter's traces did not read cleanly:\n{unclean}"
    );
    // gcc, ld and the like, from ctypes.util.find_library and test_find: noted, not held to it.
    let others: String = summaries
        .iter()
        .filter(|s| !is_python(s))
        .filter_map(TraceSummary::read_problems)
        .collect();
    if !others.is_empty() {
        eprintln!("NOTE {what}: traces of other programs read with warnings:\n{others}");
    }
    let main = summaries
        .iter()
        .find(|s| s.path == traced.trace)
        .expect("the main trace was summarized");
    assert!(
        is_python(main) && main.cmdline.iter().any(|a| a == "test"),
        "{what}: the main trace is not regrtest's: {} ({})",
        main.describe(),
        main.executable
    );

    // Each module ran in a traced worker of its own, which allocated like a test suite does.
    for module in MODULES {
        // Started by regrtest itself: a worker's own fork children have its command line too.
        let workers: Vec<&&TraceSummary> = pythons
            .iter()
            .filter(|s| s.worker_module().as_deref() == Some(module))
            .filter(|s| s.summary.get("ppid") == main.summary.get("pid"))
            .collect();
        assert_eq!(
            workers.len(),
            1,
            "{what}: expected one worker trace for {module}, found {}",
            workers.len()
        );
        let calls = workers[0].summary.get("alloc_calls");
        assert!(
            calls >= MIN_WORKER_ALLOC_CALLS,
            "{what}: the worker that ran {module} made {calls} allocation calls, expected at \
             least {MIN_WORKER_ALLOC_CALLS}: {}",
            workers[0].describe()
        );
    }
    let alloc_calls: u64 = pythons.iter().map(|s| s.summary.get("alloc_calls")).sum();
    let free_calls: u64 = pythons.iter().map(|s| s.summary.get("free_calls")).sum();
    assert!(
        alloc_calls >= MIN_ALLOC_CALLS && free_calls >= MIN_ALLOC_CALLS,
        "{what}: the interpreter's {} traces hold {alloc_calls} allocation and {free_calls} free \
         calls, expected at least {MIN_ALLOC_CALLS} of each",
        pythons.len()
    );
    // A complete trace replays without a free or realloc of a block it never saw, and without an
    // allocation at an address still live (the JSON contract: 0 in a complete trace).
    let inconsistent: String = pythons
        .iter()
        .flat_map(|s| {
            ["unmatched_frees", "unmatched_reallocs", "missed_frees"]
                .into_iter()
                .filter(|field| s.summary.get(field) != 0)
                .map(|field| format!("  {field} {} in {}\n", s.summary.get(field), s.describe()))
        })
        .collect();
    assert!(
        inconsistent.is_empty(),
        "{what}: the interpreter's traces are inconsistent (a free or realloc of a block that was \
         allocated untraced, or an allocation at a live address):\n{inconsistent}"
    );
    eprintln!(
        "{what}: {passed} test cases passed, {} skipped, in {:.1} s; {} traces ({} of the \
         interpreter: {alloc_calls} allocation calls, {free_calls} frees) analyzed in {:.1} s",
        count(&outcomes, Outcome::Skipped),
        run_time.as_secs_f64(),
        traces.len(),
        pythons.len(),
        started_analysis.elapsed().as_secs_f64()
    );
}

/// The untraced run of the suite, which must pass; returns its test cases.
fn untraced_pass(python: &Path, label: &str) -> BTreeMap<String, Vec<Outcome>> {
    let what = format!("{label} -m test (untraced)");
    let junit_dir = tempfile::Builder::new()
        .prefix("memtrace-cpython")
        .tempdir()
        .expect("tempdir");
    let junit = junit_dir.path().join("plain.xml");
    let started = Instant::now();
    let plain = run_plain(&regrtest(python, &junit));
    let run_time = started.elapsed();
    plain.assert_code(0, &what);
    assert_all_ok(&plain, &what);
    let outcomes = junit_outcomes(&junit);
    eprintln!(
        "{what}: {} test cases passed, {} skipped, in {:.1} s",
        count(&outcomes, Outcome::Passed),
        count(&outcomes, Outcome::Skipped),
        run_time.as_secs_f64()
    );
    outcomes
}

/// Panics, naming the package, unless `python` can import every module of the suite.
fn assert_suite_installed(python: &Path, package: &str) {
    let check = run_plain(
        &Program::new(python)
            .args([
                "-c",
                "import importlib.util, sys\n\
         missing = [m for m in sys.argv[1:] if importlib.util.find_spec('test.' + m) is None]\n\
         print(' '.join(missing))\n\
         sys.exit(1 if missing else 0)",
            ])
            .args(MODULES),
    );
    assert!(
        check.status.success(),
        "{}: CPython's test package lacks {} ({package}); stderr:\n{}",
        python.display(),
        check.stdout.trim(),
        check.stderr
    );
}

#[test]
fn debian_python3_11_regrtest() {
    let _suite = SUITE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let python = Path::new(DEBIAN_PYTHON);
    assert!(
        python.is_file(),
        "{DEBIAN_PYTHON} is not installed (apt-get install python3.11 libpython3.11-testsuite; \
         .ci/run does)"
    );
    assert_suite_installed(python, "apt-get install libpython3.11-testsuite");
    let plain = untraced_pass(python, DEBIAN_PYTHON);
    traced_pass(python, DEBIAN_PYTHON, None, &plain);
    traced_pass(python, DEBIAN_PYTHON, Some("malloc"), &plain);
}

#[test]
fn pyenv_python3_11_7_regrtest() {
    let Some(home) = std::env::var_os("HOME") else {
        eprintln!("SKIPPED pyenv_python3_11_7_regrtest: HOME is not set, so no pyenv to look in");
        return;
    };
    let python = Path::new(&home).join(PYENV_PYTHON);
    if !python.is_file() {
        eprintln!(
            "SKIPPED pyenv_python3_11_7_regrtest: {} is not installed (pyenv install 3.11.7); \
             CPython's suite ran under Debian's python3.11 only",
            python.display()
        );
        return;
    }
    let _suite = SUITE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    assert_suite_installed(&python, "pyenv's build includes it");
    let label = python.display().to_string();
    let plain = untraced_pass(&python, &label);
    traced_pass(&python, &label, None, &plain);
}

#[test]
fn junit_outcomes_reads_regrtest_xml() {
    let dir = tempfile::Builder::new()
        .prefix("memtrace-cpython")
        .tempdir()
        .expect("tempdir");
    let path = dir.path().join("junit.xml");
    std::fs::write(
        &path,
        concat!(
            r#"<testsuites tests="6" errors="1" failures="1"><testsuite tests="6">"#,
            r#"<testcase name="t.A.test_ok" status="run" result="completed" time="0.1" />"#,
            r#"<testcase name="t.A.test_skip" status="run" result="completed" time="0.0">"#,
            r#"<skipped>needs &lt;thing&gt;</skipped></testcase>"#,
            r#"<testcase name="t.A.test_fail" status="run"><failure type="AssertionError" "#,
            r#"message="1 != 2">Traceback</failure></testcase>"#,
            r#"<testcase name="t.A.test_err" status="run"><error type="OSError">x</error>"#,
            r#"</testcase>"#,
            r#"<testcase name="json" status="run" result="completed" time="0" />"#,
            r#"<testcase name="json" status="run"><skipped>again</skipped></testcase>"#,
            r#"</testsuite></testsuites>"#
        ),
    )
    .expect("write junit.xml");
    let outcomes = junit_outcomes(&path);
    let expected: BTreeMap<String, Vec<Outcome>> = [
        ("json", vec![Outcome::Passed, Outcome::Skipped]),
        ("t.A.test_err", vec![Outcome::Error]),
        ("t.A.test_fail", vec![Outcome::Failure]),
        ("t.A.test_ok", vec![Outcome::Passed]),
        ("t.A.test_skip", vec![Outcome::Skipped]),
    ]
    .into_iter()
    .map(|(name, list)| (name.to_string(), list))
    .collect();
    assert_eq!(outcomes, expected);
    assert_eq!(
        (
            count(&outcomes, Outcome::Passed),
            count(&outcomes, Outcome::Skipped)
        ),
        (2, 2)
    );
}
