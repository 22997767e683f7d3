//! The `MEMTRACE_*` environment variables, read once at start-up into a plain struct.
//!
//! Parsing is safe code over byte strings so it can be unit-tested; `init.rs` passes in what
//! `getenv` returned.

/// Default cap on native frames per stack (`MEMTRACE_MAX_FRAMES`).
pub const DEFAULT_MAX_FRAMES: usize = 128;

/// The tracer's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where the trace goes, with `%p` already expanded.
    pub output: String,
    /// The output pattern before expansion (children of `fork` expand it again).
    pub output_pattern: Option<String>,
    /// No start-up line on stderr.
    pub quiet: bool,
    /// At most this many native frames per stack.
    pub max_frames: usize,
    /// The program's name (argv[0]), for default file names.
    pub program: String,
    /// `MEMTRACE_SAMPLE_BYTES`: record allocations by a Poisson process with this mean interval in
    /// bytes (FORMAT.md §2); `None`: record every allocation.
    pub sample_bytes: Option<u64>,
}

/// Expands `%p` to `pid` and `%%` to `%`.
pub fn expand_pattern(pattern: &str, pid: u32) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('p') => out.push_str(&pid.to_string()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The default output name: `memtrace.<program>.<pid>.bin` in the current directory.
pub fn default_output(program: &str, pid: u32) -> String {
    let base = program.rsplit('/').next().unwrap_or(program);
    let base: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let base = if base.is_empty() {
        "program".into()
    } else {
        base
    };
    format!("memtrace.{base}.{pid}.bin")
}

/// The output path of a child created by `fork`: the pattern expanded again when it has `%p`, the
/// default name with the child's pid when no `MEMTRACE_OUTPUT` was given, else the parent's file
/// name with `.<child pid>` added.
pub fn child_output(config: &Config, parent_output: &str, pid: u32) -> String {
    match &config.output_pattern {
        Some(p) if p.contains("%p") => expand_pattern(p, pid),
        Some(_) => format!("{parent_output}.{pid}"),
        None => default_output(&config.program, pid),
    }
}

impl Config {
    /// Builds the settings from the variables' values (`None` when unset).
    pub fn from_env(
        output: Option<&str>,
        quiet: Option<&str>,
        max_frames: Option<&str>,
        sample_bytes: Option<&str>,
        program: &str,
        pid: u32,
    ) -> Config {
        let output_pattern = output.filter(|s| !s.is_empty()).map(str::to_owned);
        let output = match &output_pattern {
            Some(p) => expand_pattern(p, pid),
            None => default_output(program, pid),
        };
        let quiet = quiet.is_some_and(|q| !q.is_empty() && q != "0");
        let max_frames = max_frames
            .and_then(|m| m.trim().parse::<usize>().ok())
            .filter(|&m| m > 0)
            .map_or(DEFAULT_MAX_FRAMES, |m| {
                m.min(memtrace_format::record::MAX_FRAMES)
            });
        let sample_bytes = sample_bytes
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&n| n > 1);
        Config {
            output,
            output_pattern,
            quiet,
            max_frames,
            program: program.to_owned(),
            sample_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_pattern_expands() {
        assert_eq!(expand_pattern("t.%p.bin", 42), "t.42.bin");
        assert_eq!(expand_pattern("100%%-%p%", 7), "100%-7%");
        assert_eq!(expand_pattern("%x", 7), "%x");
    }

    #[test]
    fn defaults() {
        let c = Config::from_env(None, None, None, None, "/usr/bin/python3.11", 9);
        assert_eq!(c.output, "memtrace.python3.11.9.bin");
        assert_eq!(
            child_output(&c, &c.output, 10),
            "memtrace.python3.11.10.bin"
        );
        assert!(!c.quiet);
        assert_eq!(c.max_frames, DEFAULT_MAX_FRAMES);
        assert_eq!(c.sample_bytes, None);
    }

    #[test]
    fn settings_are_read() {
        let c = Config::from_env(
            Some("/tmp/x-%p"),
            Some("1"),
            Some("5000"),
            Some("65536"),
            "p",
            3,
        );
        assert_eq!(c.sample_bytes, Some(65536));
        assert_eq!(c.output, "/tmp/x-3");
        assert!(c.quiet);
        assert_eq!(c.max_frames, memtrace_format::record::MAX_FRAMES);
        assert_eq!(child_output(&c, &c.output, 4), "/tmp/x-4");
        let c = Config::from_env(Some("t.bin"), Some("0"), Some("junk"), Some("x"), "p", 3);
        assert_eq!(c.sample_bytes, None);
        assert!(!c.quiet);
        assert_eq!(c.max_frames, DEFAULT_MAX_FRAMES);
        assert_eq!(child_output(&c, &c.output, 4), "t.bin.4");
    }
}
