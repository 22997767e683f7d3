//! Symbolization against a real binary: a tiny C program built with gcc, whose return addresses
//! (found with objdump: the instruction after each `call malloc`) go into a trace's stack records.
//! DWARF gives function, file, line and inlined frames; a separate debug file is found by build-id
//! or debuglink; without DWARF the symbol table gives the function; a file with another build-id is
//! not trusted.

use crate::support::*;
use memtrace_analyzer::ExitCode;
use object::Object;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = r#"#include <stdlib.h>

__attribute__((noinline)) void *leaf(unsigned n) {
    return malloc(n);
}

static inline __attribute__((always_inline)) void *inner(unsigned n) {
    return malloc(n * 2);
}

__attribute__((noinline)) void *outer(unsigned n) {
    void *p = inner(n);
    return p;
}

int main(void) {
    free(leaf(10));
    free(outer(20));
    return 0;
}
"#;

/// Line of `return malloc(n);` in `leaf`, of the inlined `malloc(n * 2)`, and of `inner(n)` in `outer`.
const LEAF_LINE: u64 = 4;
const INNER_LINE: u64 = 8;
const OUTER_LINE: u64 = 12;

struct Program {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (gcc and binutils are needed): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles the program with `flags`.
fn compile(flags: &[&str]) -> Program {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("prog.c");
    std::fs::write(&src, SOURCE).unwrap();
    let bin = dir.path().join("prog");
    run(Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .current_dir(dir.path()));
    Program { dir, bin }
}

/// The return address of the `call malloc` inside `func`, from objdump.
fn return_address(bin: &Path, func: &str) -> u64 {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(bin)
        .output()
        .expect("objdump is needed");
    let text = String::from_utf8(out.stdout).unwrap();
    let header = format!("<{func}>:");
    let body: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.ends_with(&header))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    let call = body
        .iter()
        .position(|l| l.contains("call") && l.contains("<malloc@plt>"))
        .unwrap_or_else(|| panic!("no call to malloc in {func}:\n{text}"));
    let next = body[call + 1].trim();
    u64::from_str_radix(next.split(':').next().unwrap().trim(), 16).unwrap()
}

fn build_id(bin: &Path) -> Vec<u8> {
    let data = std::fs::read(bin).unwrap();
    let f = object::File::parse(data.as_slice()).unwrap();
    f.build_id()
        .unwrap()
        .expect("gcc writes a build-id")
        .to_vec()
}

/// `leaks --format json` on a trace where stack 1 is leaf's return address and stack 2 outer's, in a
/// module at `path` with the recorded `build_id`.
fn resolve(
    path: &Path,
    build_id: Vec<u8>,
    leaf: u64,
    outer: u64,
    extra: &[&str],
) -> (Value, String) {
    let mut b = builder();
    b.module(1, module(1, path, build_id));
    b.stack(1, 1, &[frame(1, leaf)]);
    b.stack(1, 2, &[frame(1, outer)]);
    b.malloc(1, 1, 1, 100, 0x1000);
    b.malloc(1, 2, 2, 50, 0x2000);
    end(&mut b, 1, 3);
    let f = TraceFile::new(&b.finish());
    let mut args = vec!["leaks", f.arg(), "--format", "json"];
    args.extend_from_slice(extra);
    let out = analyze(&args).assert_code(ExitCode::Success);
    let v = out.json();
    (v, out.stderr)
}

fn stack_of(v: &Value, id: u64) -> Vec<Value> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| int(e, "stack_id") == id)
        .unwrap()["stack"]
        .as_array()
        .unwrap()
        .clone()
}

#[track_caller]
fn assert_frame(f: &Value, function: &str, line: Option<u64>, inlined: bool) {
    assert_eq!(f["function"], function, "{f:#}");
    match line {
        Some(l) => {
            assert_eq!(f["line"], l, "{f:#}");
            assert!(f["file"].as_str().unwrap().ends_with("prog.c"), "{f:#}");
        }
        None => {
            assert_eq!(f["line"], Value::Null, "{f:#}");
            assert_eq!(f["file"], Value::Null, "{f:#}");
        }
    }
    assert_eq!(f["inlined"], inlined, "{f:#}");
}

#[test]
fn dwarf_gives_function_file_line_and_inlined_frames() {
    let p = compile(&["-g", "-O0"]);
    let (leaf, outer) = (
        return_address(&p.bin, "leaf"),
        return_address(&p.bin, "outer"),
    );
    let (v, stderr) = resolve(&p.bin, build_id(&p.bin), leaf, outer, &[]);
    assert_eq!(stderr, "");

    let s = stack_of(&v, 1);
    assert_eq!(s.len(), 1, "{s:#?}");
    assert_frame(&s[0], "leaf", Some(LEAF_LINE), false);
    // The return address itself is reported, not the address looked up.
    assert_eq!(s[0]["address"], format!("{leaf:#x}"));
    assert_eq!(s[0]["module"], p.bin.to_str().unwrap());

    let s = stack_of(&v, 2);
    assert_eq!(s.len(), 2, "{s:#?}");
    assert_frame(&s[0], "inner", Some(INNER_LINE), true);
    assert_frame(&s[1], "outer", Some(OUTER_LINE), false);
    assert_eq!(s[0]["address"], s[1]["address"]);

    // The text form.
    let mut b = builder();
    b.module(1, module(1, &p.bin, build_id(&p.bin)));
    b.stack(1, 1, &[frame(1, outer)]);
    b.malloc(1, 1, 1, 100, 0x1000);
    let f = TraceFile::new(&b.finish());
    let out = analyze(&["leaks", f.arg()]).assert_code(ExitCode::Success);
    let src = p.dir.path().join("prog.c");
    assert!(
        out.stdout.contains(&format!(
            "   inner at {}:{INNER_LINE} (prog) [inlined]\n   outer at {}:{OUTER_LINE} (prog)\n",
            src.display(),
            src.display()
        )),
        "{}",
        out.stdout
    );
}

#[test]
fn without_dwarf_the_symbol_table_names_the_function() {
    let p = compile(&["-g0", "-O0"]);
    let (leaf, outer) = (
        return_address(&p.bin, "leaf"),
        return_address(&p.bin, "outer"),
    );
    let (v, stderr) = resolve(&p.bin, build_id(&p.bin), leaf, outer, &[]);
    assert_eq!(stderr, "");
    assert_frame(&stack_of(&v, 1)[0], "leaf", None, false);
    // Inlining is invisible without DWARF.
    let s = stack_of(&v, 2);
    assert_eq!(s.len(), 1);
    assert_frame(&s[0], "outer", None, false);

    // Fully stripped: leaf is not in .dynsym, so the frame stays module + offset.
    run(Command::new("strip").arg("--strip-all").arg(&p.bin));
    let (v, _) = resolve(&p.bin, build_id(&p.bin), leaf, outer, &[]);
    let f = &stack_of(&v, 1)[0];
    assert_eq!(f["function"], Value::Null, "{f:#}");
    assert_eq!(f["offset"], format!("{leaf:#x}"));
}

#[test]
fn a_file_with_another_build_id_is_not_trusted() {
    let p = compile(&["-g", "-O0"]);
    let (leaf, outer) = (
        return_address(&p.bin, "leaf"),
        return_address(&p.bin, "outer"),
    );
    let (v, stderr) = resolve(&p.bin, vec![0xde, 0xad, 0xbe, 0xef], leaf, outer, &[]);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("build-id")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].starts_with("warning: ") && warnings[0].contains("deadbeef"));
    assert_eq!(stack_of(&v, 1)[0]["function"], Value::Null);
    assert_eq!(stack_of(&v, 2)[0]["function"], Value::Null);
}

#[test]
fn separate_debug_files_are_found_by_build_id_and_debuglink() {
    let p = compile(&["-g", "-O0"]);
    let (leaf, outer) = (
        return_address(&p.bin, "leaf"),
        return_address(&p.bin, "outer"),
    );
    let id = build_id(&p.bin);
    let debug = p.dir.path().join("prog.debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&p.bin)
        .arg(&debug));
    run(Command::new("strip").arg("--strip-all").arg(&p.bin));

    // By build-id, under --debug-dir.
    let root = p.dir.path().join("debugroot");
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let dir = root.join(".build-id").join(&hex[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&debug, dir.join(format!("{}.debug", &hex[2..]))).unwrap();
    let (v, stderr) = resolve(
        &p.bin,
        id.clone(),
        leaf,
        outer,
        &["--debug-dir", root.to_str().unwrap()],
    );
    assert_eq!(stderr, "");
    assert_frame(&stack_of(&v, 1)[0], "leaf", Some(LEAF_LINE), false);
    assert_frame(&stack_of(&v, 2)[0], "inner", Some(INNER_LINE), true);

    // By .gnu_debuglink, beside the binary (no debug dir has it).
    run(Command::new("objcopy")
        .arg("--add-gnu-debuglink=prog.debug")
        .arg(&p.bin)
        .current_dir(p.dir.path()));
    let empty = p.dir.path().join("empty");
    let (v, stderr) = resolve(
        &p.bin,
        id,
        leaf,
        outer,
        &["--debug-dir", empty.to_str().unwrap()],
    );
    assert_eq!(stderr, "");
    assert_frame(&stack_of(&v, 1)[0], "leaf", Some(LEAF_LINE), false);

    // --no-symbols reads nothing.
    let (v, _) = resolve(&p.bin, vec![], leaf, outer, &["--no-symbols"]);
    assert_eq!(stack_of(&v, 1)[0]["function"], Value::Null);
}
