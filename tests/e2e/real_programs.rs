//! Real programs under the preload: sqlite3, perl, gzip, xz, git and CPython (json, threads,
//! `multiprocessing` with the fork and spawn start methods) print the same stdout and exit with
//! the same code traced as untraced, and every trace file a run leaves (the program's, its shell's,
//! its children's) analyzes without a warning.
//!
//! A program that is not installed is skipped with a note on stderr (CI installs them all: see
//! `.ci/run`); python3 is required. `fixtures/real_python.py` is the CPython workload; its
//! multiprocessing workers each allocate blocks of a size nothing else allocates, which shows
//! that every worker is traced into a file of its own and the parent's trace holds none of it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use memtrace_tests::{
    Program, Summary, Traced, analyze, fixtures_dir, run_plain, run_traced, which,
};

/// `tool` on `PATH`, or `None` after a note that the test is skipped.
fn installed(tool: &str, test: &str) -> Option<PathBuf> {
    let found = which(tool);
    if found.is_none() {
        eprintln!(
            "SKIPPED {test}: {tool} is not installed (CI installs it: see .ci/run); \
             nothing was checked"
        );
    }
    found
}

/// Every memtrace trace in `dir` (files starting with the trace magic), sorted.
fn traces_in(dir: &Path) -> Vec<PathBuf> {
    let mut traces: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            std::fs::read(p)
                .ok()
                .is_some_and(|bytes| bytes.starts_with(b"MEMTRACE"))
        })
        .collect();
    traces.sort();
    traces
}

/// `summary --format json` of `trace`, which must succeed with no warning and an end record: no
/// process here is killed, so every trace is complete.
fn clean_summary(trace: &Path, what: &str) -> Summary {
    let (summary, stderr) = memtrace_tests::summary_of(trace, what);
    let warnings = summary.0["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: summary has no warnings array:\n{:#}", summary.0));
    assert!(
        warnings.is_empty() && stderr.is_empty(),
        "{what}: {} (pid {}, {}) read with warnings: {warnings:?}\n{}",
        trace.display(),
        summary.get("pid"),
        summary.0["cmdline"],
        stderr
    );
    assert_eq!(
        summary.0["ended"].as_bool(),
        Some(true),
        "{what}: {} (pid {}, {}) has no end record",
        trace.display(),
        summary.get("pid"),
        summary.0["cmdline"]
    );
    summary
}

/// Runs `program` untraced and traced; asserts the same exit code (0) and stdout, and that every
/// trace the traced run left analyzes cleanly. Returns the traced run and its traces.
fn same_behaviour(program: &Program, what: &str) -> (Traced, Vec<PathBuf>) {
    let plain = run_plain(program);
    plain.assert_code(0, what);
    let traced = run_traced(program);
    traced
        .output
        .assert_code(0, &format!("{what} under the preload"));
    assert_eq!(
        traced.output.stdout, plain.stdout,
        "{what}: stdout changed under the preload"
    );
    let traces = traces_in(traced.dir.path());
    assert!(
        traces.contains(&traced.trace),
        "{what}: no trace at {}",
        traced.trace.display()
    );
    for trace in &traces {
        clean_summary(trace, what);
    }
    (traced, traces)
}

/// A fresh directory holding `data`: 2 MiB of text that compresses, some of it pseudo-random.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("memtrace-real")
        .tempdir()
        .expect("tempdir");
    let mut data = Vec::with_capacity(2 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut line = 0u64;
    while data.len() < 2 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        line += 1;
        data.extend_from_slice(
            format!("line {line} value {} word{}\n", x % 100_000, x % 97).as_bytes(),
        );
    }
    std::fs::write(dir.path().join("data"), data).expect("write data");
    dir
}

#[test]
fn sqlite3_in_memory_table() {
    let Some(sqlite3) = installed("sqlite3", "sqlite3_in_memory_table") else {
        return;
    };
    let sql = "create table t(id integer primary key, name text, v real);
        with recursive c(x) as (select 1 union all select x + 1 from c where x < 30000)
            insert into t select x, 'name-' || x, x * 0.5 from c;
        create index t_name on t(name);
        update t set v = v * 2 where id % 3 = 0;
        delete from t where id % 7 = 0;
        select count(*), sum(v), max(name), min(name) from t;
        select id, name from t where id % 5000 = 0 order by name;
        select group_concat(name, ',') from (select name from t order by v desc limit 5);";
    let program = Program::new(sqlite3).args([":memory:", sql]);
    let (traced, _) = same_behaviour(&program, "sqlite3 :memory:");
    assert!(
        traced.output.stdout.starts_with("25715|"),
        "sqlite3 counted other rows:\n{}",
        traced.output.stdout
    );
}

#[test]
fn perl_one_liner() {
    let Some(perl) = installed("perl", "perl_one_liner") else {
        return;
    };
    let script = r#"
        my %h; my @l;
        for my $i (1 .. 100000) { $h{"k$i"} = "x" x ($i % 100); push @l, [$i, $i * 2] if $i % 3; }
        my $s = 0; $s += length($h{$_}) for keys %h;
        delete $h{"k$_"} for grep { $_ % 2 } 1 .. 100000;
        my $j = join(",", map { $_->[1] } @l[0 .. 9]);
        my $t = join("", sort { $a cmp $b } map { chr(65 + $_ % 26) } 1 .. 1000);
        print "$s ", scalar(keys %h), " ", scalar(@l), " $j ", length($t), " ", substr($t, 0, 5), "\n";
    "#;
    let program = Program::new(perl).args(["-e", script]);
    let (traced, _) = same_behaviour(&program, "perl -e");
    assert_eq!(
        traced.output.stdout,
        "4950000 50000 66667 2,4,8,10,14,16,20,22,26,28 1000 AAAAA\n"
    );
}

/// `shell` run by `sh -c` in a fresh copy of [`data_dir`], untraced and traced.
fn compression_round_trip(tool: &str, shell: &str) {
    let test = format!("{tool}_round_trip");
    if installed(tool, &test).is_none() || installed("cksum", &test).is_none() {
        return;
    }
    let plain_dir = data_dir();
    let traced_dir = data_dir();
    let plain = run_plain(
        &Program::new("sh")
            .args(["-c", shell])
            .current_dir(&plain_dir),
    );
    plain.assert_code(0, shell);
    let traced = run_traced(
        &Program::new("sh")
            .args(["-c", shell])
            .current_dir(&traced_dir),
    );
    traced
        .output
        .assert_code(0, &format!("{shell} under the preload"));
    assert_eq!(
        traced.output.stdout, plain.stdout,
        "{shell}: stdout changed under the preload"
    );
    // Line 1: the round trip's checksum, which must be the original's (line 3).
    let lines: Vec<&str> = plain.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{shell} printed:\n{}", plain.stdout);
    assert_eq!(
        lines[0], lines[2],
        "{shell}: the round trip changed the data"
    );
    // sh, and each command it forked and exec'd, in files of their own.
    let traces = traces_in(traced.dir.path());
    let mut tools = BTreeSet::new();
    for trace in &traces {
        let summary = clean_summary(trace, shell);
        if let Some(exe) = summary.0["executable"].as_str() {
            tools.insert(
                Path::new(exe)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    assert!(
        tools.contains(tool) && tools.contains("cksum"),
        "{shell}: expected traces of {tool} and cksum beside sh's, found {tools:?} in {traces:?}"
    );
}

#[test]
fn gzip_round_trip() {
    compression_round_trip(
        "gzip",
        "gzip -9 -n -c data > data.gz && gzip -d -c data.gz | cksum && cksum < data.gz && cksum < data",
    );
}

#[test]
fn xz_round_trip() {
    // Two threads compressing 256 KiB blocks: xz's multithreaded encoder, deterministic output.
    compression_round_trip(
        "xz",
        "xz -6 -T2 --block-size=262144 -c data > data.xz && xz -d -c data.xz | cksum && \
         cksum < data.xz && cksum < data",
    );
}

#[test]
fn git_init_add_commit_log() {
    let Some(git) = installed("git", "git_init_add_commit_log") else {
        return;
    };
    let mut hashes = Vec::new();
    for traced in [false, true] {
        let repo = data_dir();
        std::fs::create_dir(repo.path().join("src")).unwrap();
        for i in 0..20 {
            std::fs::write(
                repo.path().join("src").join(format!("f{i}.txt")),
                format!("file {i}\n").repeat(100 * (i + 1)),
            )
            .unwrap();
        }
        let home = repo.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let git_cmd = |args: &[&str]| {
            let mut program = Program::new(&git).args(args).current_dir(repo.path());
            for (k, v) in [
                ("HOME", home.to_str().unwrap()),
                ("GIT_CONFIG_NOSYSTEM", "1"),
                ("GIT_CONFIG_GLOBAL", "/dev/null"),
                ("GIT_AUTHOR_NAME", "Memtrace Test"),
                ("GIT_AUTHOR_EMAIL", "test@example.invalid"),
                ("GIT_AUTHOR_DATE", "2020-01-02T03:04:05 +0000"),
                ("GIT_COMMITTER_NAME", "Memtrace Test"),
                ("GIT_COMMITTER_EMAIL", "test@example.invalid"),
                ("GIT_COMMITTER_DATE", "2020-01-02T03:04:05 +0000"),
                ("LC_ALL", "C"),
            ] {
                program = program.env(k, v);
            }
            program
        };
        let steps: [&[&str]; 4] = [
            &["-c", "init.defaultBranch=main", "init", "-q"],
            &["add", "."],
            &[
                "commit",
                "-q",
                "-m",
                "memtrace: a commit made under the preload",
            ],
            &["log", "--format=%H"],
        ];
        let mut outputs = Vec::new();
        for step in steps {
            let program = git_cmd(step);
            let what = format!("git {}", step.join(" "));
            let out = if traced {
                let run = run_traced(&program);
                run.output
                    .assert_code(0, &format!("{what} under the preload"));
                for trace in traces_in(run.dir.path()) {
                    clean_summary(&trace, &what);
                }
                run.output.stdout
            } else {
                let out = run_plain(&program);
                out.assert_code(0, &what);
                out.stdout
            };
            outputs.push(out);
        }
        hashes.push(outputs);
    }
    assert_eq!(
        hashes[1], hashes[0],
        "git printed other output under the preload (the last entry is the commit's hash)"
    );
    let hash = hashes[0][3].trim();
    assert!(
        hash.len() == 40 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "git log printed no commit hash: {hash:?}"
    );
}

fn python3() -> PathBuf {
    which("python3").unwrap_or_else(|| panic!("python3 is not on PATH (apt-get install python3)"))
}

fn real_python(mode: &str) -> Program {
    Program::new(python3())
        .args([
            fixtures_dir().join("real_python.py").as_os_str(),
            mode.as_ref(),
        ])
        .env("PYTHONHASHSEED", "0")
}

#[test]
fn python_json_round_trip() {
    let (traced, _) = same_behaviour(&real_python("json"), "real_python.py json");
    assert!(traced.output.stdout.starts_with("json "));
}

#[test]
fn python_threads() {
    let (traced, _) = same_behaviour(&real_python("threads"), "real_python.py threads");
    assert_eq!(traced.output.stdout.lines().count(), 8);
    assert!(
        traced
            .output
            .stdout
            .lines()
            .all(|l| l.ends_with(" 20000 490000")),
        "{}",
        traced.output.stdout
    );
}

/// `real_python.py`'s `WORKER_BLOCK`, plus the byte CPython adds to a bytearray's buffer.
const WORKER_ALLOC: &str = " size=3210988 ";
const TASKS: usize = 8;

/// Allocation records of `WORKER_ALLOC` bytes in `trace`: `alloc`, or `realloc` from NULL, which is
/// how a bytearray's buffer is made when objects come from malloc (`PYTHONMALLOC=malloc`, which the
/// preload sets).
fn worker_blocks(trace: &Path) -> usize {
    let out = analyze(&["dump".as_ref(), trace.as_os_str()]);
    out.assert_code(0, &format!("dump {}", trace.display()));
    out.stdout
        .lines()
        .filter(|l| is_new_block(l) && l.contains(WORKER_ALLOC))
        .count()
}

/// A `dump` line that records a new block: an alloc, or a realloc of nothing.
fn is_new_block(line: &str) -> bool {
    line.starts_with("alloc ") || (line.starts_with("realloc ") && line.contains(" old=0x0 "))
}

fn multiprocessing(method: &str) {
    let what = format!("real_python.py {method}");
    let (traced, traces) = same_behaviour(&real_python(method), &what);
    let workers: Vec<u32> = traced
        .output
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("worker pid "))
        .map(|pid| pid.trim().parse().expect("a worker pid"))
        .collect();
    assert!(
        !workers.is_empty() && workers.len() <= 2,
        "{what}: expected the pids of 1 or 2 workers on stderr:\n{}",
        traced.output.stderr
    );
    assert_eq!(
        worker_blocks(&traced.trace),
        0,
        "{what}: the parent's trace holds its workers' {WORKER_ALLOC} allocations"
    );
    let parent = clean_summary(&traced.trace, &what);
    let mut in_workers = 0;
    for pid in &workers {
        let trace = traced.trace.with_file_name(format!("trace.bin.{pid}"));
        assert!(
            traces.contains(&trace),
            "{what}: worker {pid} has no trace of its own at {}; traces: {traces:?}",
            trace.display()
        );
        let summary = clean_summary(&trace, &what);
        assert_eq!(summary.get("pid"), u64::from(*pid));
        assert_eq!(summary.get("ppid"), parent.get("pid"));
        assert_eq!(
            summary.0["parent_trace"].as_str(),
            traced.trace.to_str(),
            "{what}: worker {pid}'s trace does not name its parent's"
        );
        in_workers += worker_blocks(&trace);
    }
    assert_eq!(
        in_workers, TASKS,
        "{what}: each of the {TASKS} tasks allocated one block in its worker's trace"
    );
}

#[test]
fn python_multiprocessing_fork() {
    multiprocessing("fork");
}

#[test]
fn python_multiprocessing_spawn() {
    multiprocessing("spawn");
}

#[test]
fn python_os_exit_loses_nothing() {
    // os._exit skips the interpreter's finalization and atexit handlers: the bytearray it holds
    // (one byte more than asked, for the terminating NUL) must still be in the trace, which ends.
    let program = Program::new(python3()).args([
        "-c",
        "import os, sys\nkeep = bytearray(1234567)\nprint('exiting')\nsys.stdout.flush()\nos._exit(3)",
    ]);
    let plain = run_plain(&program);
    plain.assert_code(3, "python3 os._exit(3)");
    let traced = run_traced(&program);
    traced
        .output
        .assert_code(3, "python3 os._exit(3) under the preload");
    assert_eq!(traced.output.stdout, plain.stdout);
    for trace in traces_in(traced.dir.path()) {
        clean_summary(&trace, "python3 os._exit(3)");
    }
    let out = analyze(&["dump".as_ref(), traced.trace.as_os_str()]);
    out.assert_code(0, "dump");
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| is_new_block(l) && l.contains(" size=1234568 "))
            .count(),
        1,
        "the trace of os._exit lacks the bytearray"
    );
}
