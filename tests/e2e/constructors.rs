//! A library's constructor that allocates before libmemtrace.so's own constructor has run, in a
//! program whose modules hold more unwind tables than the tracer's bootstrap arena (1 MiB): what
//! `perf`, which links glib, is. The first traced `malloc` finds out the real allocator with `dlsym`,
//! which allocates its error strings through `malloc` again; that nested call once started the
//! tracer, whose copies of the unwind tables came from the arena, and the program aborted. The block
//! the constructor allocates (and keeps) must be traced as a leak at the constructor.

use memtrace_tests::{Program, at_innermost, render, run_traced};
use std::process::Command;

/// Functions in the generated program: about 32 bytes of `.eh_frame` each, 960 KB in all.
const FUNCTIONS: usize = 30_000;

fn gcc(args: &[&str], what: &str) {
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "gcc".into()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc: {e}"));
    assert!(
        out.status.success(),
        "gcc {what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_constructor_that_allocates_first_in_a_big_program_is_traced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    std::fs::write(
        path("ctor.c"),
        "#include <stdlib.h>\nvoid *kept;\n\
         __attribute__((constructor)) static void early(void) { kept = malloc(4242); }\n",
    )
    .expect("write ctor.c");
    let mut main = String::from("#include <stdlib.h>\nextern void *kept;\n");
    for i in 0..FUNCTIONS {
        main.push_str(&format!(
            "__attribute__((noinline)) int f{i}(int x) {{ return x * {i} + 1; }}\n"
        ));
    }
    main.push_str("int main(void) { free(malloc(100)); return kept && f1(0) == 1 ? 0 : 1; }\n");
    std::fs::write(path("big.c"), main).expect("write big.c");
    gcc(
        &[
            "-g",
            "-shared",
            "-fPIC",
            "-o",
            &path("libctor.so"),
            &path("ctor.c"),
        ],
        "libctor.so",
    );
    let rpath = format!("-Wl,-rpath,{}", dir.path().display());
    gcc(
        &[
            "-O0",
            "-o",
            &path("big"),
            &path("big.c"),
            "-L",
            &path(""),
            "-lctor",
            &rpath,
        ],
        "big",
    );
    let traced = run_traced(&Program::new(path("big")));
    traced.output.assert_code(0, "big under the preload");
    let leaks = traced.leaks();
    let early = at_innermost(&leaks, "early");
    assert_eq!(
        early.iter().map(|e| (e.bytes, e.count)).collect::<Vec<_>>(),
        vec![(4242, 1)],
        "the constructor's block; leaks:\n{}",
        render(&leaks)
    );
    traced.summary().assert_consistent("big");
}
