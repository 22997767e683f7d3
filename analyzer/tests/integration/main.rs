//! The analyzer's integration tests, one binary (ripgrep's `tests/tests.rs` layout).

// Helpers: temp trace files, in-process runs.
mod support;

// Bad input and exit codes, in-process and through the real binary.
mod errors;
// The JSON contract of each report.
mod json;
// `dump` lines, exactly.
mod dump;
// Replay against a trivial model on random sequences.
mod model;
// Points, snapshot, diff matching and growth.
mod points;
// Exact numbers of summary, top and leaks.
mod reports;
// Estimates from sampled traces, exactly, in every report.
mod sampling;
// Module paths that name devices, FIFOs and directories.
mod hostile;
// Symbolization of a real binary built with gcc.
mod symbols;
// The Python line decoder against every CPython's own answers.
mod python_lines;
// Python frames in every report: views, grouping by Python line, kinds, version 1 unchanged.
mod python;
