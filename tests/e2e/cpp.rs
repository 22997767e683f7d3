//! `fixtures/cpp_new.cpp`: C++ `new`, `new[]` (with and without an array cookie), `delete` and
//! `std::vector` growth. These reach malloc through `operator new` in libstdc++, so the innermost
//! frame is libstdc++'s and the fixture's function is further out; the tests find each site by its
//! function anywhere in the stack, then check the frames in between.

use memtrace_tests::{Site, assert_site_through, fixture, render, run_plain, run_traced};

const FIXTURE: &str = "cpp_new.cpp";

/// Sites that call `new` directly: only libstdc++ frames lie between them and malloc.
const LEAKED: [Site<'static>; 3] = [
    Site::new("leak_new", 3 * 200, 3),
    Site::new("leak_new_array", 2 * 1000, 2),
    // 10 x 24 bytes and the 8-byte element count new[] stores for a type with a destructor.
    Site::new("leak_tracked", 10 * 24 + 8, 1),
];

#[test]
fn cpp_output_is_unchanged() {
    let fx = fixture(FIXTURE);
    let plain = run_plain(&fx.program(&[]));
    plain.assert_code(0, "cpp_new");
    let traced = run_traced(&fx.program(&[]));
    traced.output.assert_code(0, "cpp_new under the preload");
    assert_eq!(traced.output.stdout, plain.stdout);
    assert_eq!(plain.stdout, "kept 6, sum 4950\n");
}

#[test]
fn new_and_new_array_leaks_are_exact() {
    let fx = fixture(FIXTURE);
    let traced = run_traced(&fx.program(&[]));
    traced.output.assert_code(0, "cpp_new under the preload");
    let leaks = traced.leaks();
    for site in LEAKED {
        let (entry, index) = assert_site_through(&leaks, fx, "leaks", site);
        assert!(
            index > 0,
            "{}: malloc's caller is operator new",
            site.function
        );
        for frame in &entry.stack[..index] {
            assert!(
                frame
                    .module_name()
                    .is_some_and(|m| m.starts_with("libstdc++")),
                "{}: every frame inside the fixture's function should be libstdc++'s:\n{}",
                site.function,
                render([entry])
            );
        }
        assert!(
            entry
                .innermost()
                .function
                .as_deref()
                .is_some_and(|f| f.starts_with("operator new")),
            "{}: the innermost frame should be operator new (demangled, from libstdc++'s \
             symbol table):\n{}",
            site.function,
            render([entry])
        );
    }
    for freed in ["temp_new", "vector_growth"] {
        assert!(
            !leaks
                .iter()
                .any(|e| e.stack.iter().any(|f| f.is_function(freed))),
            "{freed} freed everything it allocated:\n{}",
            render(&leaks)
        );
    }
}

#[test]
fn delete_and_vector_growth_are_counted() {
    let fx = fixture(FIXTURE);
    let traced = run_traced(&fx.program(&[]));
    traced.output.assert_code(0, "cpp_new under the preload");
    let top = traced.top("count");
    assert_site_through(&top, fx, "top --by count", Site::new("temp_new", 2000, 10));
    // push_back grows the capacity 1, 2, 4, ..., 128: eight allocations of 8 to 1024 bytes. They
    // pass through std::vector's template code, compiled into the fixture itself.
    assert_site_through(
        &top,
        fx,
        "top --by count",
        Site::new("vector_growth", 2040, 8),
    );
    let temporary = traced.top("temporary");
    assert_site_through(
        &temporary,
        fx,
        "top --by temporary",
        Site::new("temp_new", 2000, 10),
    );
}
