//! The Python line decoder against the interpreters themselves: `tests/data/python_lines.json`
//! (written by `scripts/python-line-fixtures.py`) holds, for CPython 3.8 to 3.13, the line tables
//! of varied code objects and the line `PyCode_Addr2Line` gives for every instruction offset
//! (3.11 and later also compiled with `-X no_debug_ranges`).

use memtrace_analyzer::python_lines::line_of;
use serde_json::Value;

/// The fixture, parsed.
pub fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/python_lines.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Bytes of a hex string.
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_offset_of_every_version_decodes_as_the_interpreter_says() {
    let doc = fixture();
    let versions = doc["versions"].as_array().unwrap();
    let names: Vec<&str> = versions
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    for minor in ["3.8.", "3.9.", "3.10.", "3.11.", "3.12.", "3.13."] {
        assert!(
            names.iter().any(|n| n.starts_with(minor)),
            "no {minor}x in {names:?}"
        );
    }
    let (mut checked, mut no_line) = (0usize, 0usize);
    for v in versions {
        let version = format!("{} {}", v["version"].as_str().unwrap(), v["options"]);
        let kind = v["line_table_kind"].as_u64().unwrap() as u8;
        for code in v["codes"].as_array().unwrap() {
            let table = unhex(code["table"].as_str().unwrap());
            let first = code["first_line"].as_u64().unwrap() as u32;
            let len = code["code_len"].as_u64().unwrap();
            let mut next = 0;
            for run in code["lines"].as_array().unwrap() {
                let (start, end) = (run[0].as_u64().unwrap(), run[1].as_u64().unwrap());
                assert_eq!(start, next, "runs cover every offset");
                next = end;
                let want = run[2].as_u64().map(|l| l as u32);
                for offset in (start..end).step_by(2) {
                    let got = line_of(kind, &table, first, offset as u32);
                    assert_eq!(
                        got, want,
                        "{version} {} ({}) at offset {offset}",
                        code["qualname"], code["filename"]
                    );
                    checked += 1;
                    no_line += usize::from(want.is_none());
                }
            }
            assert_eq!(next, len);
        }
    }
    assert!(checked > 20_000, "{checked} offsets");
    assert!(no_line > 0, "the fixture has instructions without a line");
}
