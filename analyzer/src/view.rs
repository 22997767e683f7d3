//! Which frames of a resolved stack a report shows: the `--frames merged|python|native` view.
//!
//! A stack of a Python program (format version 2) holds native return addresses and Python frames,
//! the Python frames of each call of the interpreter's evaluation function just inside (before) that
//! call's native frame (FORMAT.md §4.5). The views:
//!
//! - `merged` (the default): every frame, except that in a stack with Python frames the native
//!   frames of the evaluation function (`_PyEval_EvalFrameDefault`, told by its symbolized name, so
//!   they stay with `--no-symbols`) are hidden: the Python frames stand for them;
//! - `python`: the Python frames only;
//! - `native`: the native frames only, evaluation frames included (the stack as a native profiler
//!   sees it).
//!
//! A stack with no Python frame looks the same in `merged` and `native`. This module only filters
//! frames; it resolves nothing and computes nothing.

use crate::symbols::ResolvedFrame;

/// The `--frames` view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FrameView {
    /// Python frames in place; the interpreter's evaluation frames hidden where Python frames
    /// stand for them.
    #[default]
    Merged,
    /// Python frames only.
    Python,
    /// Native frames only, evaluation frames included.
    Native,
}

impl FrameView {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FrameView::Merged => "merged",
            FrameView::Python => "python",
            FrameView::Native => "native",
        }
    }

    /// Why a stack that has frames shows none in this view.
    pub fn empty_note(self) -> &'static str {
        match self {
            FrameView::Python => "no python frames",
            FrameView::Native => "no native frames",
            FrameView::Merged => "no frames",
        }
    }
}

/// The interpreter's evaluation function, whose native frames run Python frames.
pub const EVAL_FUNCTION: &str = "_PyEval_EvalFrameDefault";

/// Whether `name` is the evaluation function, or a part of it the compiler split off
/// (`_PyEval_EvalFrameDefault.cold`).
pub fn is_eval_function(name: &str) -> bool {
    name.strip_prefix(EVAL_FUNCTION)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The frames of `frames` (a whole stack, innermost first, inlined frames expanded) that `view`
/// shows.
///
/// The inlined frames of one return address come before its own frame (the one not marked
/// inlined). In the merged view, a return address in the evaluation function loses the frames from
/// its innermost up to the evaluation function's own: what was inlined into the evaluation loop is
/// part of it; what the evaluation function was inlined into, if anything, stays.
pub fn apply(view: FrameView, frames: Vec<ResolvedFrame>) -> Vec<ResolvedFrame> {
    match view {
        FrameView::Python => frames.into_iter().filter(|f| f.is_python()).collect(),
        FrameView::Native => frames.into_iter().filter(|f| !f.is_python()).collect(),
        FrameView::Merged => {
            if !frames.iter().any(ResolvedFrame::is_python) {
                return frames;
            }
            let mut keep = vec![true; frames.len()];
            let mut start = 0;
            for (i, f) in frames.iter().enumerate() {
                if f.is_python() {
                    start = i + 1;
                    continue;
                }
                if f.function.as_deref().is_some_and(is_eval_function) {
                    keep[start..=i].iter_mut().for_each(|k| *k = false);
                    start = i + 1;
                }
                if !f.inlined {
                    start = i + 1;
                }
            }
            frames
                .into_iter()
                .zip(keep)
                .filter_map(|(f, k)| k.then_some(f))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::FrameKind;

    fn native(function: &str, inlined: bool) -> ResolvedFrame {
        ResolvedFrame {
            function: (!function.is_empty()).then(|| function.to_owned()),
            file: None,
            line: None,
            module: Some("/usr/lib/libpython3.11.so.1.0".into()),
            address: 0x1000,
            offset: 0x1000,
            inlined,
            kind: FrameKind::Native,
        }
    }

    fn python(function: &str) -> ResolvedFrame {
        ResolvedFrame {
            function: Some(function.to_owned()),
            file: Some("app.py".into()),
            line: Some(3),
            module: None,
            address: 6,
            offset: 6,
            inlined: false,
            kind: FrameKind::Python,
        }
    }

    fn names(frames: &[ResolvedFrame]) -> Vec<&str> {
        frames
            .iter()
            .map(|f| f.function.as_deref().unwrap_or("?"))
            .collect()
    }

    #[test]
    fn eval_function_names() {
        assert!(is_eval_function("_PyEval_EvalFrameDefault"));
        assert!(is_eval_function("_PyEval_EvalFrameDefault.cold"));
        assert!(!is_eval_function("_PyEval_EvalFrameDefaultX"));
        assert!(!is_eval_function("_PyEval_EvalFrame"));
    }

    #[test]
    fn views_of_a_mixed_stack() {
        let stack = vec![
            native("PyList_Append", false),
            python("inner"),
            python("outer"),
            // A call inlined into the evaluation loop, then the loop itself.
            native("_PyObject_VectorcallTstate", true),
            native(EVAL_FUNCTION, false),
            native("", false),
            python("<module>"),
            native("_PyEval_EvalFrameDefault.cold", false),
            native("main", false),
        ];
        assert_eq!(
            names(&apply(FrameView::Merged, stack.clone())),
            ["PyList_Append", "inner", "outer", "?", "<module>", "main"]
        );
        assert_eq!(
            names(&apply(FrameView::Python, stack.clone())),
            ["inner", "outer", "<module>"]
        );
        assert_eq!(
            names(&apply(FrameView::Native, stack.clone())),
            [
                "PyList_Append",
                "_PyObject_VectorcallTstate",
                EVAL_FUNCTION,
                "?",
                "_PyEval_EvalFrameDefault.cold",
                "main"
            ]
        );
        // Without Python frames the evaluation frames stay, in every view but python.
        let native_only: Vec<ResolvedFrame> =
            stack.into_iter().filter(|f| !f.is_python()).collect();
        assert_eq!(apply(FrameView::Merged, native_only.clone()), native_only);
        assert!(apply(FrameView::Python, native_only).is_empty());
    }

    #[test]
    fn what_the_eval_function_was_inlined_into_stays() {
        let stack = vec![
            python("f"),
            native("helper", true),
            native(EVAL_FUNCTION, true),
            native("caller", false),
        ];
        assert_eq!(names(&apply(FrameView::Merged, stack)), ["f", "caller"]);
    }
}
