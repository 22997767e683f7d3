//! The JSON contract: keys and types that scripts may rely on (extend, never break).

use crate::support::*;
use serde_json::Value;
use std::path::Path;

fn sample() -> memtrace_format::builder::TraceBuilder {
    let mut b = builder();
    b.module(
        1,
        module(1, Path::new("/nonexistent/libdemo.so"), vec![1, 2, 3, 4]),
    );
    b.stack(1, 1, &[frame(1, 0x1234), frame(0, 0x7fff_0000)]);
    b.malloc(1, 1, 1, 100, 0x100);
    b.malloc(1, 2, 1, 50, 0x200);
    b.free(1, 3, 0x200);
    b
}

#[track_caller]
fn assert_ints(v: &Value, keys: &[&str]) {
    for k in keys {
        assert!(v[k].is_u64(), "{k} is not an integer in {v:#}");
    }
}

#[test]
fn summary_json_has_the_contract_fields() {
    let v = json_of(sample(), &["summary"]);
    assert_ints(
        &v,
        &[
            "alloc_calls",
            "free_calls",
            "total_allocated_bytes",
            "peak_live_bytes",
            "peak_time_ns",
            "leaked_bytes",
            "leaked_count",
            "temporary_allocs",
            "duration_ns",
            "threads",
            "unmatched_frees",
            "realloc_calls",
        ],
    );
    assert!(v["calls_by_kind"].is_object());
    assert!(v["marks"].is_array());
    assert!(v["warnings"].is_array());
}

#[track_caller]
fn assert_entries(v: &Value) {
    let entries = v["entries"].as_array().expect("entries is an array");
    assert!(!entries.is_empty());
    for e in entries {
        assert_ints(e, &["bytes", "count", "stack_id"]);
        let stack = e["stack"].as_array().expect("stack is an array");
        assert_eq!(stack.len(), 2);
        for f in stack {
            for k in ["function", "file", "module"] {
                assert!(f[k].is_string() || f[k].is_null(), "{k} in {f:#}");
            }
            assert!(f["line"].is_u64() || f["line"].is_null());
            let addr = f["address"].as_str().expect("address is a string");
            assert!(addr.starts_with("0x"), "{addr}");
        }
        assert_eq!(stack[0]["module"], "/nonexistent/libdemo.so");
        assert_eq!(stack[0]["address"], "0x1234");
        assert_eq!(stack[1]["module"], Value::Null);
    }
}

#[test]
fn top_json_has_entries_with_stacks() {
    for by in ["bytes", "count", "peak", "leaked", "temporary"] {
        let v = json_of(sample(), &["top", "--by", by]);
        assert_eq!(v["measure"], by);
        assert_ints(&v, &["total_bytes", "total_count", "stacks"]);
        assert_entries(&v);
    }
    let v = json_of(sample(), &["top"]);
    assert_eq!(int(&v["entries"][0], "bytes"), 150);
    assert_eq!(int(&v["entries"][0], "count"), 2);
}

#[test]
fn leaks_json_has_entries_with_stacks() {
    let v = json_of(sample(), &["leaks"]);
    assert_ints(&v, &["leaked_bytes", "leaked_count", "stacks"]);
    assert_entries(&v);
    assert_eq!(int(&v["entries"][0], "bytes"), 100);
    assert_eq!(int(&v["entries"][0], "count"), 1);
    // The missing module is reported once, in the document too.
    let w = v["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 2, "{w:?}"); // no end record + unreadable module
}
