//! Offline symbolization: turns a stack frame (module id + file address of a return address) into
//! function, file, line and inlined frames, from the module files on disk, at report time and only for
//! the frames a report prints.
//!
//! Per module, loaded once and cached: the DWARF (addr2line), from a separate debug file when one is
//! found by build-id (`<debug dir>/.build-id/xx/rest.debug`) or `.gnu_debuglink`, else from the module
//! itself; a `.gnu_debugaltlink` (dwz) supplementary file when the DWARF names one; and a symbol table
//! (`.symtab`, else `.dynsym`) as the fallback for stripped code, where a symbol is accepted only when
//! the address lies inside its size. A module file whose build-id differs from the one recorded in the
//! trace is not trusted (one warning). A missing or unreadable module is never an error: its frames
//! stay unresolved. This module must not read anything else, and never panics on a malformed file.
//!
//! A Python frame (format version 2) needs no file: it names its code record, whose qualified name,
//! file name and line table (decoded by [`crate::python_lines`]) give function, file and line.

use crate::python_lines;
use memtrace_format::{Frame, ModuleInfo, PyCodeInfo};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Reads a file that a trace names (a module, a debug file). A trace is untrusted: a corrupt one
/// may name `/dev/zero` (endless), a FIFO or a terminal (opening or reading it waits forever), so
/// only a regular file is opened, and no more than its size is read.
fn read_named_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut data = Vec::new();
    file.take(len).read_to_end(&mut data)?;
    Ok(data)
}

type Reader = gimli::EndianRcSlice<gimli::RunTimeEndian>;

/// What a frame of a stack is: a native return address, or a Python frame (FORMAT.md §4.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    /// A return address in a module (or in no known module).
    #[default]
    Native,
    /// A Python function running in the interpreter.
    Python,
}

impl FrameKind {
    /// The name used in JSON (`kind`).
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Native => "native",
            FrameKind::Python => "python",
        }
    }
}

/// One printed frame: a function (or an inlined function) at a return address, or a Python frame.
///
/// A Python frame has its code's qualified name as `function`, its file name (`co_filename`) as
/// `file`, the line of its executing instruction as `line` (its code's first line when the
/// instruction has none), no `module`, and the instruction's byte offset in its code object as both
/// `address` and `offset`. A frame naming a code the trace never defined is the function
/// `<unknown python code N>` with no file or line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedFrame {
    /// Demangled function name, if known.
    pub function: Option<String>,
    /// Source file, if known.
    pub file: Option<String>,
    /// Source line, if known.
    pub line: Option<u32>,
    /// The module's path, if the frame's module is known.
    pub module: Option<String>,
    /// The return address in the traced process (load bias + offset).
    pub address: u64,
    /// The return address as a file address of the module (for module 0: the absolute address).
    pub offset: u64,
    /// True for a function inlined into the next frame (which shares its address).
    pub inlined: bool,
    /// Native or Python.
    pub kind: FrameKind,
}

impl ResolvedFrame {
    /// Whether this is a Python frame.
    pub fn is_python(&self) -> bool {
        self.kind == FrameKind::Python
    }
}

/// How the symbolizer finds files.
#[derive(Clone, Debug)]
pub struct SymbolOptions {
    /// False: no file is read; frames carry module and address only.
    pub enabled: bool,
    /// Roots for separate debug files (`.build-id/` and debuglink lookups), in order.
    pub debug_dirs: Vec<PathBuf>,
}

impl Default for SymbolOptions {
    fn default() -> Self {
        SymbolOptions {
            enabled: true,
            debug_dirs: vec![PathBuf::from("/usr/lib/debug")],
        }
    }
}

/// A function symbol: `[start, end)` in file addresses.
struct Symbol {
    start: u64,
    end: u64,
    name: String,
}

/// What was loaded for one module.
struct ModuleSymbols {
    dwarf: Option<addr2line::Context<Reader>>,
    /// Sorted by start address.
    symbols: Vec<Symbol>,
}

impl ModuleSymbols {
    /// The function symbol whose range holds `addr`.
    fn symbol(&self, addr: u64) -> Option<&str> {
        let i = self.symbols.partition_point(|s| s.start <= addr);
        // Symbols may nest or alias; look back a few for one whose size covers the address.
        self.symbols[..i]
            .iter()
            .rev()
            .take(8)
            .find(|s| addr < s.end)
            .map(|s| s.name.as_str())
    }
}

/// Resolves frames against the modules of one trace, caching per module and per frame.
pub struct Symbolizer<'a> {
    modules: &'a FxHashMap<u32, ModuleInfo>,
    python_codes: Option<&'a FxHashMap<u32, PyCodeInfo>>,
    options: SymbolOptions,
    loaded: FxHashMap<u32, Option<Rc<ModuleSymbols>>>,
    frames: FxHashMap<Frame, Rc<[ResolvedFrame]>>,
    warnings: Vec<String>,
}

impl<'a> Symbolizer<'a> {
    /// A symbolizer for the trace whose module records are `modules`.
    pub fn new(modules: &'a FxHashMap<u32, ModuleInfo>, options: SymbolOptions) -> Self {
        Symbolizer {
            modules,
            python_codes: None,
            options,
            loaded: FxHashMap::default(),
            frames: FxHashMap::default(),
            warnings: Vec::new(),
        }
    }

    /// The same symbolizer, naming Python frames from the trace's PyCode records `codes`.
    pub fn with_python_codes(mut self, codes: &'a FxHashMap<u32, PyCodeInfo>) -> Self {
        self.python_codes = Some(codes);
        self
    }

    /// Problems met so far (unreadable modules, build-id mismatches), each said once. Taking them
    /// clears them.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Every frame of a stack, innermost first, inlined functions expanded (innermost inline first).
    pub fn resolve_stack(&mut self, frames: &[Frame]) -> Vec<ResolvedFrame> {
        let mut out = Vec::with_capacity(frames.len());
        for f in frames {
            out.extend(self.resolve(*f).iter().cloned());
        }
        out
    }

    /// The frames (one, or more with inlining) of one return address.
    pub fn resolve(&mut self, frame: Frame) -> Rc<[ResolvedFrame]> {
        if let Some(r) = self.frames.get(&frame) {
            return r.clone();
        }
        let r: Rc<[ResolvedFrame]> = self.resolve_uncached(frame).into();
        self.frames.insert(frame, r.clone());
        r
    }

    fn resolve_uncached(&mut self, frame: Frame) -> Vec<ResolvedFrame> {
        if let Some(py) = frame.as_python() {
            let code = self.python_codes.and_then(|codes| codes.get(&py.code));
            return vec![python_frame(py.code, py.instruction, code)];
        }
        let module = if frame.module == 0 {
            None
        } else {
            self.modules.get(&frame.module)
        };
        let base = ResolvedFrame {
            function: None,
            file: None,
            line: None,
            module: module.map(|m| m.path.clone()),
            address: module.map_or(frame.offset, |m| m.bias.wrapping_add(frame.offset)),
            offset: frame.offset,
            inlined: false,
            kind: FrameKind::Native,
        };
        let Some(module) = module else {
            return vec![base];
        };
        let Some(syms) = self.module(module) else {
            return vec![base];
        };
        // A return address points after the call; the call itself is one byte earlier.
        let probe = frame.offset.wrapping_sub(1);
        let mut out = Vec::new();
        if let Some(ctx) = &syms.dwarf
            && let Ok(mut iter) = ctx.find_frames(probe).skip_all_loads()
        {
            while let Ok(Some(f)) = iter.next() {
                let function = f
                    .function
                    .as_ref()
                    .and_then(|n| n.demangle().ok())
                    .map(|n| n.into_owned());
                let (file, line) = match &f.location {
                    Some(loc) => (loc.file.map(str::to_owned), loc.line),
                    None => (None, None),
                };
                out.push(ResolvedFrame {
                    function,
                    file,
                    line,
                    inlined: true,
                    ..base.clone()
                });
            }
        }
        if let Some(last) = out.last_mut() {
            last.inlined = false;
            if last.function.is_none() {
                last.function = syms.symbol(probe).map(demangle);
            }
            // A location-only answer (line table, no function DIE) adds nothing if it is empty.
            if out.len() == 1 && out[0].function.is_none() && out[0].file.is_none() {
                out.clear();
            }
        }
        if out.is_empty() {
            out.push(ResolvedFrame {
                function: syms.symbol(probe).map(demangle),
                ..base
            });
        }
        out
    }

    fn module(&mut self, m: &ModuleInfo) -> Option<Rc<ModuleSymbols>> {
        if let Some(s) = self.loaded.get(&m.id) {
            return s.clone();
        }
        let s = if self.options.enabled {
            self.load(m).map(Rc::new)
        } else {
            None
        };
        self.loaded.insert(m.id, s.clone());
        s
    }

    /// Loads what can be found for `m`; `None` when nothing usable is found.
    fn load(&mut self, m: &ModuleInfo) -> Option<ModuleSymbols> {
        // Pseudo-modules ([vdso], [anon]) and unnamed ones have no file.
        if m.path.is_empty() || m.path.starts_with('[') {
            return None;
        }
        let path = Path::new(&m.path);
        let main_data = match read_named_file(path) {
            Ok(d) => Some(d),
            Err(e) => {
                self.warnings.push(format!(
                    "cannot read module {}: {e}; its frames are left unresolved",
                    m.path
                ));
                None
            }
        };
        let main = main_data
            .as_deref()
            .and_then(|d| object::File::parse(d).ok());
        if main_data.is_some() && main.is_none() {
            self.warnings.push(format!(
                "module {} is not an ELF file this analyzer can read; its frames are left unresolved",
                m.path
            ));
        }
        // A rebuilt or replaced file describes other code: trust none of it.
        let main = main.filter(|f| {
            if m.build_id.is_empty() {
                return true;
            }
            let on_disk = f.build_id().ok().flatten();
            if on_disk == Some(m.build_id.as_slice()) {
                return true;
            }
            self.warnings.push(format!(
                "module {} on disk has build-id {} but the trace recorded {}: it is not the file \
                 that ran, so its symbols are not used",
                m.path,
                on_disk.map_or_else(|| "none".to_owned(), hex_bytes),
                hex_bytes(&m.build_id)
            ));
            false
        });

        // A separate debug file: by the recorded build-id, else by the module's debuglink.
        let mut debug_data = None;
        if !m.build_id.is_empty() {
            debug_data = self.by_build_id(&m.build_id);
        }
        if debug_data.is_none()
            && let Some(f) = &main
            && let Ok(Some((name, _crc))) = f.gnu_debuglink()
        {
            debug_data = self.by_debuglink(path, name, &m.build_id);
        }
        let debug = debug_data
            .as_ref()
            .and_then(|(_, d)| object::File::parse(d.as_slice()).ok());
        let debug_dir = debug_data
            .as_ref()
            .and_then(|(p, _)| p.parent().map(Path::to_path_buf));

        let mut dwarf = None;
        if let Some(f) = &debug {
            dwarf = self.load_dwarf(f, debug_dir.as_deref());
        }
        if dwarf.is_none()
            && let Some(f) = &main
        {
            dwarf = self.load_dwarf(f, path.parent());
        }
        let mut symbols = Vec::new();
        for (file, dynamic) in [(&debug, false), (&main, false), (&main, true)] {
            if let Some(f) = file {
                symbols = function_symbols(f, dynamic);
                if !symbols.is_empty() {
                    break;
                }
            }
        }
        if dwarf.is_none() && symbols.is_empty() {
            return None;
        }
        Some(ModuleSymbols { dwarf, symbols })
    }

    /// The debug file `<dir>/.build-id/xx/rest.debug` for `build_id`, in the first debug dir that has it.
    fn by_build_id(&self, build_id: &[u8]) -> Option<(PathBuf, Vec<u8>)> {
        let hex = hex_bytes(build_id);
        if hex.len() < 3 {
            return None;
        }
        self.options.debug_dirs.iter().find_map(|dir| {
            let p = dir
                .join(".build-id")
                .join(&hex[..2])
                .join(format!("{}.debug", &hex[2..]));
            read_named_file(&p).ok().map(|d| (p, d))
        })
    }

    /// The file a `.gnu_debuglink` names, in GDB's places: beside the module, in its `.debug/`, and
    /// under each debug dir at the module's directory. A candidate with another build-id is skipped.
    fn by_debuglink(
        &self,
        module: &Path,
        name: &[u8],
        build_id: &[u8],
    ) -> Option<(PathBuf, Vec<u8>)> {
        let name = Path::new(std::str::from_utf8(name).ok()?);
        let dir = module.parent()?;
        let mut candidates = vec![dir.join(name), dir.join(".debug").join(name)];
        for d in &self.options.debug_dirs {
            candidates.push(d.join(dir.strip_prefix("/").unwrap_or(dir)).join(name));
        }
        candidates.into_iter().find_map(|p| {
            if p == module {
                return None;
            }
            let data = read_named_file(&p).ok()?;
            if !build_id.is_empty() {
                let f = object::File::parse(data.as_slice()).ok()?;
                if let Ok(Some(id)) = f.build_id()
                    && id != build_id
                {
                    return None;
                }
            }
            Some((p, data))
        })
    }

    /// The DWARF of `file` (with its dwz supplementary file, when it names one it can find), if it
    /// has any.
    fn load_dwarf(
        &self,
        file: &object::File<'_>,
        dir: Option<&Path>,
    ) -> Option<addr2line::Context<Reader>> {
        let has_info = file
            .section_by_name(".debug_info")
            .is_some_and(|s| s.size() > 0);
        if !has_info {
            return None;
        }
        let mut dwarf = gimli::Dwarf::load(|id| load_section(file, id)).ok()?;
        if let Ok(Some((name, sup_id))) = file.gnu_debugaltlink() {
            let sup = self.by_build_id(sup_id).or_else(|| {
                let name = Path::new(std::str::from_utf8(name).ok()?);
                let p = match dir {
                    Some(d) if name.is_relative() => d.join(name),
                    _ => name.to_path_buf(),
                };
                read_named_file(&p).ok().map(|d| (p, d))
            });
            if let Some((_, data)) = sup
                && let Ok(sup) = object::File::parse(data.as_slice())
            {
                let _ = dwarf.load_sup(|id| load_section(&sup, id));
            }
        }
        addr2line::Context::from_dwarf(dwarf).ok()
    }
}

/// The resolved form of a Python frame running `code_id` (whose record is `code`, if the trace
/// has it) at byte offset `instruction`.
fn python_frame(code_id: u32, instruction: u32, code: Option<&PyCodeInfo>) -> ResolvedFrame {
    let (function, file, line) = match code {
        Some(c) => {
            let name = if c.qualname.is_empty() {
                &c.name
            } else {
                &c.qualname
            };
            let line =
                python_lines::line_of(c.line_table_kind, &c.line_table, c.first_line, instruction);
            (
                name.clone(),
                Some(c.filename.clone()),
                Some(line.unwrap_or(c.first_line)),
            )
        }
        None => (format!("<unknown python code {code_id}>"), None, None),
    };
    ResolvedFrame {
        function: Some(function),
        file,
        line,
        module: None,
        address: u64::from(instruction),
        offset: u64::from(instruction),
        inlined: false,
        kind: FrameKind::Python,
    }
}

/// One DWARF section of `file`, decompressed, or empty when absent or unreadable.
fn load_section(
    file: &object::File<'_>,
    id: gimli::SectionId,
) -> Result<Reader, std::convert::Infallible> {
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let data: Cow<'_, [u8]> = file
        .section_by_name(id.name())
        .and_then(|s| s.uncompressed_data().ok())
        .unwrap_or(Cow::Borrowed(&[]));
    Ok(gimli::EndianRcSlice::new(Rc::from(&*data), endian))
}

/// The sized function symbols of `file`'s `.symtab` (or `.dynsym`), sorted by address.
fn function_symbols(file: &object::File<'_>, dynamic: bool) -> Vec<Symbol> {
    let iter = if dynamic {
        file.dynamic_symbols()
    } else {
        file.symbols()
    };
    let mut out: Vec<Symbol> = iter
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.size() > 0)
        .filter_map(|s| {
            let name = s.name().ok()?;
            if name.is_empty() {
                return None;
            }
            Some(Symbol {
                start: s.address(),
                end: s.address().saturating_add(s.size()),
                name: name.to_owned(),
            })
        })
        .collect();
    // By start; among aliases of one start the shortest name first (usually the public one:
    // `malloc` before `__libc_malloc`), then by name, so the choice is deterministic.
    out.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(a.name.len().cmp(&b.name.len()))
            .then(a.name.cmp(&b.name))
    });
    out
}

/// Demangles a Rust or C++ symbol name; other names are returned unchanged.
pub fn demangle(name: &str) -> String {
    addr2line::demangle_auto(Cow::Borrowed(name), None).into_owned()
}

/// Lower-case hex of `bytes`.
pub fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_rust_and_cpp_and_keeps_c() {
        assert_eq!(demangle("main"), "main");
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(demangle("_Z3fooi"), "foo(int)");
    }

    #[test]
    fn python_frames_are_named_by_their_code_records() {
        use memtrace_format::PyFrame;
        use memtrace_format::record::line_table::LOCATIONS_311;
        let modules = FxHashMap::default();
        let mut codes = FxHashMap::default();
        // 3.11 location table: [0, 2) line 40, [2, 6) line 41, [6, 8) no location.
        codes.insert(
            1,
            PyCodeInfo {
                id: 1,
                name: "load".into(),
                qualname: "Loader.load".into(),
                filename: "app/loader.py".into(),
                first_line: 40,
                line_table_kind: LOCATIONS_311,
                line_table: vec![0x80, 0x05, 0xd9, 0x01, 0x02, 0xf8],
            },
        );
        let mut s = Symbolizer::new(&modules, SymbolOptions::default()).with_python_codes(&codes);
        let py = |code, instruction| Frame::python(PyFrame { code, instruction });
        let r = s.resolve_stack(&[py(1, 4), py(1, 6), py(7, 2)]);
        let seen: Vec<_> = r
            .iter()
            .map(|f| (f.function.as_deref(), f.file.as_deref(), f.line, f.kind))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    Some("Loader.load"),
                    Some("app/loader.py"),
                    Some(41),
                    FrameKind::Python
                ),
                // No line: the code's first line.
                (
                    Some("Loader.load"),
                    Some("app/loader.py"),
                    Some(40),
                    FrameKind::Python
                ),
                (
                    Some("<unknown python code 7>"),
                    None,
                    None,
                    FrameKind::Python
                ),
            ]
        );
        assert_eq!(
            (r[0].module.as_deref(), r[0].address, r[0].offset),
            (None, 4, 4)
        );
        assert!(s.take_warnings().is_empty());
        // Without code records every Python frame is unknown, and nothing panics.
        let mut bare = Symbolizer::new(&modules, SymbolOptions::default());
        assert_eq!(
            bare.resolve(py(1, 4))[0].function.as_deref(),
            Some("<unknown python code 1>")
        );
    }

    #[test]
    fn unknown_and_missing_modules_stay_unresolved() {
        let mut modules = FxHashMap::default();
        modules.insert(
            1,
            ModuleInfo {
                id: 1,
                path: "/nonexistent/libfoo.so".into(),
                bias: 0x1000,
                segments: vec![],
                build_id: vec![],
            },
        );
        let mut s = Symbolizer::new(&modules, SymbolOptions::default());
        let r = s.resolve_stack(&[
            Frame {
                module: 1,
                offset: 0x20,
            },
            Frame {
                module: 0,
                offset: 0xdead,
            },
            Frame {
                module: 9,
                offset: 0x30,
            },
        ]);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].module.as_deref(), Some("/nonexistent/libfoo.so"));
        assert_eq!((r[0].address, r[0].offset), (0x1020, 0x20));
        assert_eq!(r[0].function, None);
        assert_eq!((r[1].module.as_deref(), r[1].address), (None, 0xdead));
        assert_eq!((r[2].module.as_deref(), r[2].address), (None, 0x30));
        let w = s.take_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("/nonexistent/libfoo.so"));
        // Said once.
        s.resolve(Frame {
            module: 1,
            offset: 0x40,
        });
        assert!(s.take_warnings().is_empty());
    }
}
