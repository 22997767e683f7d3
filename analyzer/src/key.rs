//! Symbolic keys: what makes a stack of one run "the same" as a stack of another run, whose
//! addresses differ (ASLR) and whose binary may have been rebuilt. Never raw addresses.
//!
//! - `--group-by stack` (the default): every frame's function and module *file name* (not its path:
//!   build directories differ), inlined frames included; a frame whose function is unknown is
//!   `?` in its module. The traced program's own executable is the module `(executable)` whatever
//!   its name, so that `app-v1` and `app-v2` compare. File and line (file name and line number) are a tie-break: see [`pair`].
//! - `--group-by function`: the function of the *key frame* ([`location`]), in its module.
//! - `--group-by line`: the key frame's source file name and line, in its module (the function and
//!   module when the line is unknown).
//!
//! The key frame is the innermost Python frame when the stack has one (as tracemalloc groups by
//! the line of the innermost Python frame); else, for `line`, the innermost frame that has a file
//! and a line; else the innermost frame. A Python frame's "module" is its file as the interpreter
//! names it (`co_filename`, whole: two packages' `__init__.py` differ), and its function is its
//! qualified name.
//!
//! Keys are built from the frames a report shows (after the `--frames` view, `view.rs`). This
//! module builds keys from resolved frames and pairs the keys of two sides; it computes no
//! statistics and reads no files.

use crate::render::basename;
use crate::symbols::ResolvedFrame;
use std::collections::BTreeMap;

/// How stacks are grouped and matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// The whole stack: each frame's function and module, file:line breaking ties.
    #[default]
    Stack,
    /// The innermost Python function, else the innermost function (with its module).
    Function,
    /// The innermost Python frame's file and line, else the innermost source line.
    Line,
}

impl GroupBy {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Stack => "stack",
            GroupBy::Function => "function",
            GroupBy::Line => "line",
        }
    }

    /// Whether entries merge the stacks of one key frame ([`location`]): `function` and `line`.
    pub fn by_location(self) -> bool {
        self != GroupBy::Stack
    }

    /// What one entry is, in text: `function`, `line`.
    pub fn noun(self) -> &'static str {
        match self {
            GroupBy::Stack => "stack",
            GroupBy::Function => "function",
            GroupBy::Line => "line",
        }
    }
}

/// The index in `frames` (a stack as shown, innermost first) of the frame that `--group-by
/// function` or `line` takes its key from, `None` for `stack` or an empty stack: the innermost
/// Python frame; else, for `line`, the innermost frame with a file and a line; else the innermost
/// frame.
pub fn location(frames: &[ResolvedFrame], by: GroupBy) -> Option<usize> {
    if frames.is_empty() {
        return None;
    }
    let python = || frames.iter().position(ResolvedFrame::is_python);
    let with_line = || {
        frames
            .iter()
            .position(|f| f.file.is_some() && f.line.is_some())
    };
    match by {
        GroupBy::Stack => None,
        GroupBy::Function => Some(python().unwrap_or(0)),
        GroupBy::Line => Some(python().or_else(with_line).unwrap_or(0)),
    }
}

/// A stack's symbolic identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// What must be equal for two stacks to match: `(function, module)` per frame (or the one
    /// frame's `(file:line, module)` with `--group-by line`).
    pub site: Vec<(String, String)>,
    /// The tie-break: `(file name, line)` per frame (`--group-by stack` only).
    pub lines: Vec<(String, u32)>,
}

const UNKNOWN: &str = "?";

/// How the traced program's executable is named in keys.
pub const EXECUTABLE: &str = "(executable)";

fn module_name(f: &ResolvedFrame, executable: &str) -> String {
    match f.module.as_deref().map(basename) {
        None => UNKNOWN.to_owned(),
        Some(m) if m == executable => EXECUTABLE.to_owned(),
        Some(m) => m.to_owned(),
    }
}

fn function_name(f: &ResolvedFrame) -> String {
    f.function.clone().unwrap_or_else(|| UNKNOWN.to_owned())
}

/// What a frame's function belongs to: its module's name, or a Python frame's file.
fn container(f: &ResolvedFrame, executable: &str) -> String {
    if f.is_python() {
        return match &f.file {
            Some(file) => format!("{file} (python)"),
            None => "(python)".to_owned(),
        };
    }
    module_name(f, executable)
}

/// The key of a stack whose frames (innermost first, inlined expanded) are `frames`, in a trace of
/// the program `executable` (its path or file name, as the trace header gives it). An empty stack
/// (none captured, or not defined in the trace) has the key `(no stack)`.
pub fn key(frames: &[ResolvedFrame], by: GroupBy, executable: &str) -> Key {
    let executable = basename(executable);
    let Some(at) = location(frames, by).or((!frames.is_empty()).then_some(0)) else {
        return note_key("(no stack)");
    };
    let first = &frames[at];
    match by {
        GroupBy::Stack => Key {
            site: frames
                .iter()
                .map(|f| (function_name(f), container(f, executable)))
                .collect(),
            lines: frames
                .iter()
                .map(|f| {
                    (
                        f.file.as_deref().map(basename).unwrap_or("").to_owned(),
                        f.line.unwrap_or(0),
                    )
                })
                .collect(),
        },
        GroupBy::Function => Key {
            site: vec![(function_name(first), container(first, executable))],
            lines: Vec::new(),
        },
        GroupBy::Line => {
            let place = match (&first.file, first.line) {
                (Some(file), Some(line)) => format!("{}:{line}", basename(file)),
                _ => function_name(first),
            };
            Key {
                site: vec![(place, container(first, executable))],
                lines: Vec::new(),
            }
        }
    }
}

/// The key of a stack with no frames to show, by why: `(no stack)` (none captured, or not
/// defined in the trace), `(no python frames)`.
pub fn note_key(note: &str) -> Key {
    Key {
        site: vec![(note.to_owned(), String::new())],
        lines: Vec::new(),
    }
}

/// Pairs the keys of side A with those of side B. Every key appears in exactly one pair; a key
/// with no partner is paired with `None`.
///
/// Keys with the same `site` (same functions and modules) are candidates. Among them, keys with
/// equal lines pair first. What is left pairs in line order when both sides have as many left
/// (a rebuild that moved lines keeps the call sites of a function in the same order, and a
/// function with one call site pairs whatever its line); otherwise the rest stay unpaired,
/// because which old line became which new one cannot be told.
pub fn pair(a: &[Key], b: &[Key]) -> Vec<(Option<Key>, Option<Key>)> {
    /// Per site, the distinct keys of side A and of side B, sorted.
    type Sites<'k> = BTreeMap<&'k [(String, String)], [Vec<&'k Key>; 2]>;
    let mut sites: Sites<'_> = BTreeMap::new();
    for (side, keys) in [a, b].into_iter().enumerate() {
        for k in keys {
            sites.entry(&k.site).or_default()[side].push(k);
        }
    }
    let sites = sites.into_values().map(|[mut ka, mut kb]| {
        for ks in [&mut ka, &mut kb] {
            ks.sort();
            ks.dedup();
        }
        let own = |ks: Vec<&Key>| ks.into_iter().cloned().collect::<Vec<Key>>();
        (own(ka), own(kb))
    });
    let mut out = Vec::new();
    for (ka, kb) in sites {
        let (mut left_a, mut left_b) = (Vec::new(), Vec::new());
        for k in &ka {
            if kb.contains(k) {
                out.push((Some(k.clone()), Some(k.clone())));
            } else {
                left_a.push(k.clone());
            }
        }
        for k in kb {
            if !ka.contains(&k) {
                left_b.push(k);
            }
        }
        if left_a.len() == left_b.len() {
            out.extend(
                left_a
                    .into_iter()
                    .zip(left_b)
                    .map(|(x, y)| (Some(x), Some(y))),
            );
        } else {
            out.extend(left_a.into_iter().map(|x| (Some(x), None)));
            out.extend(left_b.into_iter().map(|y| (None, Some(y))));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::FrameKind;

    fn frame(function: Option<&str>, file: &str, line: u32, module: &str) -> ResolvedFrame {
        ResolvedFrame {
            function: function.map(str::to_owned),
            file: (!file.is_empty()).then(|| file.to_owned()),
            line: (line != 0).then_some(line),
            module: Some(module.to_owned()),
            address: 0x1234,
            offset: 0x234,
            inlined: false,
            kind: FrameKind::Native,
        }
    }

    fn py(function: &str, file: &str, line: u32) -> ResolvedFrame {
        ResolvedFrame {
            function: Some(function.to_owned()),
            file: Some(file.to_owned()),
            line: Some(line),
            module: None,
            address: 8,
            offset: 8,
            inlined: false,
            kind: FrameKind::Python,
        }
    }

    fn k(site: &[(&str, &str)], lines: &[(&str, u32)]) -> Key {
        Key {
            site: site
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            lines: lines.iter().map(|(a, b)| (a.to_string(), *b)).collect(),
        }
    }

    #[test]
    fn keys_use_module_and_file_names_not_paths_or_addresses() {
        let a = [
            frame(Some("leaf"), "/build1/src/x.c", 4, "/build1/lib/libp.so"),
            frame(None, "", 0, "/lib/libc.so.6"),
        ];
        let mut b = a.clone();
        b[0].file = Some("/build2/src/x.c".into());
        b[0].module = Some("/build2/lib/libp.so".into());
        b[0].address = 0x9999;
        b[1].offset = 0x777;
        let exe = "/usr/bin/prog";
        assert_eq!(key(&a, GroupBy::Stack, exe), key(&b, GroupBy::Stack, exe));
        assert_eq!(
            key(&a, GroupBy::Stack, exe),
            k(
                &[("leaf", "libp.so"), ("?", "libc.so.6")],
                &[("x.c", 4), ("", 0)]
            )
        );
        assert_eq!(
            key(&a, GroupBy::Function, exe),
            k(&[("leaf", "libp.so")], &[]),
            "the innermost frame only"
        );
        assert_eq!(key(&a, GroupBy::Line, exe), k(&[("x.c:4", "libp.so")], &[]));
        assert_eq!(
            key(&a[1..], GroupBy::Line, exe),
            k(&[("?", "libc.so.6")], &[])
        );
        assert_eq!(key(&[], GroupBy::Stack, exe).site[0].0, "(no stack)");
    }

    #[test]
    fn python_frames_are_the_key_frames() {
        let exe = "/usr/bin/python3";
        let stack = [
            frame(None, "", 0, "/lib/libc.so.6"),
            frame(
                Some("PyList_Append"),
                "Objects/listobject.c",
                40,
                "/lib/libpython.so",
            ),
            py("Loader.load", "/srv/app/loader.py", 12),
            py("<module>", "/srv/app/main.py", 3),
        ];
        assert_eq!(location(&stack, GroupBy::Line), Some(2));
        assert_eq!(location(&stack, GroupBy::Function), Some(2));
        assert_eq!(location(&stack, GroupBy::Stack), None);
        assert_eq!(
            key(&stack, GroupBy::Line, exe),
            k(&[("loader.py:12", "/srv/app/loader.py (python)")], &[])
        );
        assert_eq!(
            key(&stack, GroupBy::Function, exe),
            k(&[("Loader.load", "/srv/app/loader.py (python)")], &[])
        );
        let whole = key(&stack, GroupBy::Stack, exe);
        assert_eq!(
            whole.site[3],
            ("<module>".into(), "/srv/app/main.py (python)".into())
        );
        assert_eq!(whole.lines[2], ("loader.py".into(), 12));
        // Two packages' __init__.py are two places.
        let a = [py("<module>", "/x/a/__init__.py", 1)];
        let b = [py("<module>", "/x/b/__init__.py", 1)];
        assert_ne!(key(&a, GroupBy::Line, exe), key(&b, GroupBy::Line, exe));
        // Without Python frames: the innermost frame with a line, then the innermost frame.
        assert_eq!(location(&stack[..2], GroupBy::Line), Some(1));
        assert_eq!(location(&stack[..2], GroupBy::Function), Some(0));
        assert_eq!(
            key(&stack[..2], GroupBy::Line, exe),
            k(&[("listobject.c:40", "libpython.so")], &[])
        );
        assert_eq!(location(&stack[..1], GroupBy::Line), Some(0));
        assert_eq!(location(&[], GroupBy::Line), None);
        assert_eq!(key(&[], GroupBy::Line, exe), note_key("(no stack)"));
    }

    #[test]
    fn the_executable_matches_whatever_its_name() {
        let v1 = [frame(Some("leaf"), "x.c", 4, "/build/app-v1")];
        let v2 = [frame(Some("leaf"), "x.c", 4, "/build/app-v2")];
        assert_eq!(
            key(&v1, GroupBy::Stack, "./app-v1"),
            key(&v2, GroupBy::Stack, "/build/app-v2")
        );
        assert_eq!(
            key(&v1, GroupBy::Function, "app-v1").site,
            vec![("leaf".to_owned(), EXECUTABLE.to_owned())]
        );
        // A library that happens to share a name with another run's executable stays itself.
        assert_ne!(
            key(&v1, GroupBy::Stack, "app-v1"),
            key(&v1, GroupBy::Stack, "other")
        );
    }

    #[test]
    fn pairing_prefers_equal_lines_then_line_order() {
        let site = [("f", "m")];
        let (a1, a2, a3) = (
            k(&site, &[("x.c", 10)]),
            k(&site, &[("x.c", 20)]),
            k(&site, &[("x.c", 30)]),
        );
        let (b1, b2) = (k(&site, &[("x.c", 12)]), k(&site, &[("x.c", 22)]));
        // All lines moved by 2: paired in order.
        let p = pair(&[a2.clone(), a1.clone()], &[b1.clone(), b2.clone()]);
        assert_eq!(
            p,
            vec![
                (Some(a1.clone()), Some(b1.clone())),
                (Some(a2.clone()), Some(b2.clone()))
            ]
        );
        // Equal lines pair first; one site left on each side pairs whatever its line.
        let p = pair(&[a1.clone(), a2.clone()], &[a2.clone(), b1.clone()]);
        assert_eq!(
            p,
            vec![
                (Some(a2.clone()), Some(a2.clone())),
                (Some(a1.clone()), Some(b1.clone()))
            ]
        );
        // Three sites against two, none equal: nothing can be told apart.
        let p = pair(
            &[a1.clone(), a2.clone(), a3.clone()],
            &[b1.clone(), b2.clone()],
        );
        assert_eq!(p.len(), 5);
        assert!(p.iter().all(|(x, y)| x.is_none() || y.is_none()));
        // Other sites never pair.
        let other = k(&[("g", "m")], &[("x.c", 10)]);
        let p = pair(std::slice::from_ref(&a1), std::slice::from_ref(&other));
        assert_eq!(p, vec![(Some(a1), None), (None, Some(other))]);
    }
}
