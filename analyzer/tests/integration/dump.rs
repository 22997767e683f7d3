//! `dump` prints the header, the threads and one stable line per record in merged time order.

use crate::support::*;
use memtrace_analyzer::ExitCode;
use memtrace_format::{AllocKind, ModuleInfo, Record, Segment};

#[test]
fn dump_lines_are_exact() {
    let mut b = builder();
    b.module(
        1,
        ModuleInfo {
            id: 1,
            path: "/usr/bin/example".into(),
            bias: 0x5555_0000,
            segments: vec![Segment {
                vaddr: 0x1000,
                memsz: 0x2000,
                flags: 5,
            }],
            build_id: vec![0xab, 0xcd],
        },
    );
    b.stack(1, 1, &[frame(1, 0x1234), frame(0, 0x7fff_0000)]);
    b.push(
        1,
        &Record::ThreadName {
            name: "main".into(),
        },
    );
    alloc(&mut b, 1, 5, AllocKind::Calloc, 1, 100, 0x5000);
    realloc(&mut b, 2, 7, 1, 200, 0x5000, 0x6000);
    b.free(1, 9, 0x6000);
    b.push(
        2,
        &Record::Mark {
            time: 10,
            label: "snap \"1\"".into(),
        },
    );
    b.push(1, &Record::ModuleUnload { time: 11, id: 1 });
    end(&mut b, 1, 12);
    let f = TraceFile::new(&b.finish());
    let out = analyze(&["dump", f.arg()]).assert_code(ExitCode::Success);
    let expected = r#"header version=3 pid=1 ppid=0 executable="/test" cmdline=["/test"] start_unix_ns=0 parent_trace=none tool_version="test"
thread index=1 tid=1001
thread index=2 tid=1002
module thread=1 id=1 path="/usr/bin/example" bias=0x55550000 build_id=abcd segments=[0x1000+0x2000:r-x]
stack thread=1 id=1 frames=[1:0x1234 0:0x7fff0000]
thread_name thread=1 name="main"
alloc t=5 thread=1 kind=calloc stack=1 size=100 addr=0x5000
realloc t=7 thread=2 stack=1 size=200 old=0x5000 new=0x6000
free t=9 thread=1 addr=0x6000
mark t=10 thread=2 label="snap \"1\""
module_unload t=11 thread=1 id=1
end t=12 thread=1
"#;
    assert_eq!(out.stdout, expected);
    assert_eq!(out.stderr, "");
}
