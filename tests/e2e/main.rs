//! End-to-end tests: fixture programs from `tests/fixtures/` run under `libmemtrace.so`, their traces
//! read back through `memtrace-analyze --format json`, and the numbers compared with what each
//! fixture is known to do (its header comment lists them).
//!
//! One module per scenario. The support library (`support/lib.rs`) builds the release preload and
//! analyzer on first use, or takes `MEMTRACE_PRELOAD` / `MEMTRACE_ANALYZE`.

mod alloc_kinds;
mod allocators;
mod bad_input;
mod behaviour;
mod constructors;
mod cpp;
mod cpython_suite;
mod descriptors;
mod dlopen;
mod edge_cases;
mod exits;
mod fork;
mod heaptrack;
mod packing;
mod python;
mod python_frames;
mod real_programs;
mod recurring_stacks;
mod sampling;
mod snapshots;
mod stress;
mod threads;
