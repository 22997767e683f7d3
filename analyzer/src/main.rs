//! The `memtrace-analyze` binary: process plumbing only (buffered stdout, exit status). Everything
//! else is in the library, where tests can reach it.

use std::io::{BufWriter, Write};

fn main() -> std::process::ExitCode {
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut err = std::io::stderr().lock();
    let code = memtrace_analyzer::main_with(std::env::args_os(), &mut out, &mut err);
    // `run` flushed already; a flush failing here (a closed pipe) changes nothing.
    let _ = out.flush();
    code.into()
}
