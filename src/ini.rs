//! INI reader with the semantics of Python 3.11's `configparser.ConfigParser()`
//! in its default configuration, so that a stage-env.cfg that Python tooling
//! accepts means exactly the same thing here (and one it rejects is rejected).
//!
//! The defaults mirrored: delimiters `=` and `:`, full-line comments starting
//! with `#` or `;` (no inline comments), `strict=True`,
//! `empty_lines_in_values=True`, `allow_no_value=False`, default section
//! `DEFAULT`, lower-cased option names, case-sensitive section names and
//! lazy `BasicInterpolation` (`%%`, `%(name)s`).
//!
//! Known differences from Python, all deliberate or harmless:
//! - Python collects every malformed line into one `ParsingError`; we report
//!   the first one. Like Python we keep parsing after such a line, so a later
//!   duplicate section/option or missing header still wins, as it does there.
//! - The caller decodes the file. A UTF-8 byte order mark is an ordinary
//!   character, as it is for Python's `read(path, encoding="utf-8")` and the
//!   default UTF-8 locale encoding: the first line then fails to parse
//!   (usually "no section header"); the message mentions the BOM.
//! - Lower-casing uses Rust's Unicode tables, which may be a newer Unicode
//!   version than Python 3.11's (14.0); only characters added since differ.
//! - `get` on a section that does not exist returns `None` (Python raises
//!   `NoSectionError`); `keys("DEFAULT")` lists the defaults (Python's
//!   `options("DEFAULT")` raises).

use std::collections::HashMap;
use std::fmt;

/// Name of the section whose keys every other section inherits.
pub const DEFAULT_SECTION: &str = "DEFAULT";

/// Python's `MAX_INTERPOLATION_DEPTH`.
const MAX_INTERPOLATION_DEPTH: usize = 10;

/// A parse or interpolation error. `Display` prints only the message; the
/// caller adds the file name and `line`.
#[derive(Debug, Clone, PartialEq)]
pub struct IniError {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for IniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for IniError {}

/// An interpolated value, the 1-based line its key is on and the section it
/// came from (`"DEFAULT"` when inherited).
#[derive(Debug, Clone, PartialEq)]
pub struct Value<'a> {
    pub text: String,
    pub line: usize,
    pub section: &'a str,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Lower-cased option name.
    key: String,
    /// Raw (uninterpolated) value, continuation lines joined with `\n`.
    value: String,
    line: usize,
}

#[derive(Debug, Clone)]
struct Section {
    name: String,
    /// File order. Keys are unique (strict mode), and sections are small, so
    /// a linear scan is simpler than keeping an index in sync.
    entries: Vec<Entry>,
}

impl Section {
    fn find(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

/// A parsed INI file: `DEFAULT` plus the other sections in file order.
#[derive(Debug, Clone)]
pub struct Ini {
    defaults: Section,
    sections: Vec<Section>,
}

/// A section while it is being read; values are still lists of lines.
struct Building {
    name: String,
    /// (key, value lines, line number of the key)
    entries: Vec<(String, Vec<String>, usize)>,
    /// Python's `elements_added` for options: key -> line first seen. Kept
    /// separately from `entries` because an empty option name is recorded
    /// here (so a second one is a duplicate, as in Python) but never stored.
    seen: HashMap<String, usize>,
}

impl Building {
    fn new(name: &str) -> Building {
        Building {
            name: name.to_owned(),
            entries: Vec::new(),
            seen: HashMap::new(),
        }
    }

    /// Python's `_join_multiline_values`: `'\n'.join(v).rstrip()`.
    fn finish(self) -> Section {
        let entries = self
            .entries
            .into_iter()
            .map(|(key, lines, line)| Entry {
                key,
                value: lines.join("\n").trim_end_matches(py_isspace).to_owned(),
                line,
            })
            .collect();
        Section {
            name: self.name,
            entries,
        }
    }
}

/// Which section option lines currently go to (Python's `cursect`).
#[derive(Clone, Copy)]
enum Cursor {
    Default,
    Section(usize),
}

impl Ini {
    /// Parses a whole file. Mirrors `RawConfigParser._read` line by line.
    pub fn parse(text: &str) -> Result<Ini, IniError> {
        let mut defaults = Building::new(DEFAULT_SECTION);
        let mut sections: Vec<Building> = Vec::new();
        // Python's `elements_added` for sections: name -> header line.
        let mut section_lines: HashMap<String, usize> = HashMap::new();
        let mut cursor: Option<Cursor> = None;
        // Index of the option that continuation lines extend (Python's
        // `optname`, where `None` stands for every falsy value it can take).
        let mut optname: Option<usize> = None;
        let mut indent_level = 0usize;
        // Python defers malformed-line errors to the end of the file.
        let mut parse_error: Option<IniError> = None;

        for (index, line) in universal_lines(text).enumerate() {
            let lineno = index + 1;
            let value = py_strip(line);
            let is_comment = value.starts_with('#') || value.starts_with(';');
            if value.is_empty() || is_comment {
                // A blank line belongs to the value being read (trailing
                // ones are stripped at the end); a comment line is skipped
                // without ending the value.
                if !is_comment && let (Some(cur), Some(opt)) = (cursor, optname) {
                    let sect = current(&mut defaults, &mut sections, cur);
                    sect.entries[opt].1.push(String::new());
                }
                continue;
            }

            // Indentation in characters, like `NONSPACECRE.search(line)`.
            let cur_indent = line.chars().take_while(|&c| py_isspace(c)).count();
            if let (Some(cur), Some(opt)) = (cursor, optname)
                && cur_indent > indent_level
            {
                // Continuation line, even if it looks like a header or option.
                let sect = current(&mut defaults, &mut sections, cur);
                sect.entries[opt].1.push(value.to_owned());
                continue;
            }

            indent_level = cur_indent;
            if let Some(name) = match_section_header(value) {
                if name == DEFAULT_SECTION {
                    // DEFAULT may be reopened; its keys still may not repeat.
                    cursor = Some(Cursor::Default);
                } else if let Some(&first) = section_lines.get(name) {
                    return Err(IniError {
                        line: Some(lineno),
                        message: format!("duplicate section [{name}] (first at line {first})"),
                    });
                } else {
                    section_lines.insert(name.to_owned(), lineno);
                    sections.push(Building::new(name));
                    cursor = Some(Cursor::Section(sections.len() - 1));
                }
                // Sections can't start with a continuation line.
                optname = None;
            } else if let Some(cur) = cursor {
                if let Some((name, val)) = match_option(value) {
                    if name.is_empty() && parse_error.is_none() {
                        parse_error = Some(IniError {
                            line: Some(lineno),
                            message: format!("option name is empty: {}", quote(line)),
                        });
                    }
                    let key = optionxform(name);
                    let sect = current(&mut defaults, &mut sections, cur);
                    if let Some(&first) = sect.seen.get(&key) {
                        return Err(IniError {
                            line: Some(lineno),
                            message: format!(
                                "duplicate option '{key}' in section [{}] (first at line {first})",
                                sect.name
                            ),
                        });
                    }
                    sect.seen.insert(key.clone(), lineno);
                    if key.is_empty() {
                        // Python stores it under '' but its falsy optname
                        // takes no continuation lines; the file fails anyway.
                        optname = None;
                    } else {
                        sect.entries.push((key, vec![val.to_owned()], lineno));
                        optname = Some(sect.entries.len() - 1);
                    }
                } else if parse_error.is_none() {
                    // Note: `optname` is left alone, as in Python.
                    parse_error = Some(IniError {
                        line: Some(lineno),
                        message: format!(
                            "line is neither a section header, an option nor a comment: {}",
                            quote(line)
                        ),
                    });
                }
            } else {
                let bom = if line.starts_with('\u{feff}') {
                    " (the file starts with a UTF-8 byte order mark)"
                } else {
                    ""
                };
                return Err(IniError {
                    line: Some(lineno),
                    message: format!("no section header before this line: {}{bom}", quote(line)),
                });
            }
        }

        if let Some(err) = parse_error {
            return Err(err);
        }
        Ok(Ini {
            defaults: defaults.finish(),
            sections: sections.into_iter().map(Building::finish).collect(),
        })
    }

    /// Section names in file order, without `DEFAULT`.
    pub fn sections(&self) -> Vec<&str> {
        self.sections.iter().map(|s| s.name.as_str()).collect()
    }

    /// Whether a section exists; `DEFAULT` is not acknowledged, as in Python.
    pub fn has_section(&self, name: &str) -> bool {
        self.sections.iter().any(|s| s.name == name)
    }

    /// Keys written in the section itself (not inherited) with their line
    /// numbers, in file order. `"DEFAULT"` gives the default keys.
    pub fn own_keys(&self, section: &str) -> Vec<(&str, usize)> {
        match self.scope(section) {
            Some(Some(s)) => s.entries.iter().map(|e| (e.key.as_str(), e.line)).collect(),
            Some(None) => self
                .defaults
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.line))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Own keys, then inherited `DEFAULT` keys not overridden (the order of
    /// Python's `options()`). Empty for a section that does not exist.
    pub fn keys(&self, section: &str) -> Vec<&str> {
        match self.scope(section) {
            Some(Some(s)) => {
                let mut keys: Vec<&str> = s.entries.iter().map(|e| e.key.as_str()).collect();
                keys.extend(
                    self.defaults
                        .entries
                        .iter()
                        .filter(|d| s.find(&d.key).is_none())
                        .map(|d| d.key.as_str()),
                );
                keys
            }
            Some(None) => self
                .defaults
                .entries
                .iter()
                .map(|e| e.key.as_str())
                .collect(),
            None => Vec::new(),
        }
    }

    /// The interpolated value of `key` (case-insensitive) in `section`,
    /// falling back to `DEFAULT`. `None` if the section does not exist or
    /// neither has the key; `Some(Err)` if interpolation fails, with the
    /// error's line being the key's line. Only this key (and what it refers
    /// to) is interpolated, so broken values elsewhere don't matter.
    pub fn get(&self, section: &str, key: &str) -> Option<Result<Value<'_>, IniError>> {
        let own = self.scope(section)?;
        let key = optionxform(key);
        let (entry, from) = self.lookup(own, &key)?;
        let mut text = String::new();
        Some(
            match self.interpolate(own, &key, &entry.value, &mut text, 1) {
                Ok(()) => Ok(Value {
                    text,
                    line: entry.line,
                    section: from,
                }),
                Err(message) => Err(IniError {
                    line: Some(entry.line),
                    message,
                }),
            },
        )
    }

    /// The value of `key` without interpolation, same lookup as [`Ini::get`].
    pub fn get_raw(&self, section: &str, key: &str) -> Option<&str> {
        let own = self.scope(section)?;
        let (entry, _) = self.lookup(own, &optionxform(key))?;
        Some(&entry.value)
    }

    /// `None`: no such section. `Some(None)`: `DEFAULT` itself, whose lookups
    /// only see the defaults. `Some(Some(s))`: a regular section.
    fn scope(&self, section: &str) -> Option<Option<&Section>> {
        if section == DEFAULT_SECTION {
            Some(None)
        } else {
            self.sections.iter().find(|s| s.name == section).map(Some)
        }
    }

    /// Python's `ChainMap(section, defaults)`; `key` is already lower-cased.
    fn lookup<'s>(&'s self, own: Option<&'s Section>, key: &str) -> Option<(&'s Entry, &'s str)> {
        own.and_then(|s| s.find(key).map(|e| (e, s.name.as_str())))
            .or_else(|| {
                self.defaults
                    .find(key)
                    .map(|e| (e, self.defaults.name.as_str()))
            })
    }

    /// `BasicInterpolation._interpolate_some`. References are resolved in
    /// the section originally asked for (then DEFAULT) at every depth, and
    /// errors name the key originally asked for, as in Python.
    fn interpolate(
        &self,
        own: Option<&Section>,
        key: &str,
        mut rest: &str,
        out: &mut String,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_INTERPOLATION_DEPTH {
            return Err(format!(
                "interpolation of '{key}' nests deeper than {MAX_INTERPOLATION_DEPTH}"
            ));
        }
        while !rest.is_empty() {
            let Some(p) = rest.find('%') else {
                out.push_str(rest);
                return Ok(());
            };
            out.push_str(&rest[..p]);
            rest = &rest[p..];
            let after = &rest[1..];
            if after.starts_with('%') {
                out.push('%');
                rest = &rest[2..];
            } else if after.starts_with('(') {
                // `_KEYCRE` = `%\(([^)]+)\)s`: the name ends at the first ')'.
                let name_end = after
                    .find(')')
                    .filter(|&c| c >= 2 && after[c + 1..].starts_with('s'));
                let Some(c) = name_end else {
                    return Err(format!(
                        "bad interpolation in '{key}': bad variable reference {}",
                        quote(rest)
                    ));
                };
                let var = optionxform(&after[1..c]);
                rest = &after[c + 2..];
                let Some((entry, _)) = self.lookup(own, &var) else {
                    return Err(format!(
                        "interpolation of '{key}' refers to missing option '{var}'"
                    ));
                };
                if entry.value.contains('%') {
                    self.interpolate(own, key, &entry.value, out, depth + 1)?;
                } else {
                    out.push_str(&entry.value);
                }
            } else {
                return Err(format!(
                    "bad interpolation in '{key}': '%' must be followed by '%' or '(', found {}",
                    quote(rest)
                ));
            }
        }
        Ok(())
    }
}

/// Python's `RawConfigParser.BOOLEAN_STATES`, case-insensitive, no trimming.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// The section a `Cursor` designates while parsing.
fn current<'b>(
    defaults: &'b mut Building,
    sections: &'b mut [Building],
    cur: Cursor,
) -> &'b mut Building {
    match cur {
        Cursor::Default => defaults,
        Cursor::Section(i) => &mut sections[i],
    }
}

/// Python's `str.isspace()` (also what `\s` means in a `str` regex): Rust's
/// Unicode White_Space plus the information separators U+001C..U+001F.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` without arguments.
fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// `ConfigParser.optionxform`: `str.lower()`.
fn optionxform(s: &str) -> String {
    s.to_lowercase()
}

/// Lines as Python's text mode yields them (universal newlines: `\n`,
/// `\r\n` and a lone `\r` all end a line), without the terminator. No other
/// characters split lines (unlike `str.splitlines`).
fn universal_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let line;
        match rest.find(['\r', '\n']) {
            None => {
                line = rest;
                rest = "";
            }
            Some(i) => {
                line = &rest[..i];
                let len = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + len..];
            }
        }
        Some(line)
    })
}

/// `SECTCRE` (`\[(?P<header>.+)\]`) applied with `re.match` to a stripped
/// line: greedy, so the header runs to the last `]` and anything after it is
/// ignored. `.` matches anything here since lines contain no `\n`.
fn match_section_header(stripped: &str) -> Option<&str> {
    let inner = stripped.strip_prefix('[')?;
    let close = inner.rfind(']').filter(|&c| c >= 1)?;
    Some(&inner[..close])
}

/// `OPTCRE` applied to a stripped line: the non-greedy name ends at the
/// first `=` or `:`; the name is right-stripped and the value stripped.
fn match_option(stripped: &str) -> Option<(&str, &str)> {
    let delim = stripped.find(['=', ':'])?;
    let name = stripped[..delim].trim_end_matches(py_isspace);
    let value = py_strip(&stripped[delim + 1..]);
    Some((name, value))
}

/// Quotes text for an error message, escaping control characters.
fn quote(s: &str) -> String {
    format!("'{}'", s.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Ini {
        Ini::parse(text).unwrap_or_else(|e| panic!("parse failed: {e:?}"))
    }

    fn get(ini: &Ini, section: &str, key: &str) -> String {
        ini.get(section, key)
            .unwrap_or_else(|| panic!("{section}.{key} missing"))
            .unwrap_or_else(|e| panic!("{section}.{key}: {e:?}"))
            .text
    }

    fn err(text: &str) -> IniError {
        match Ini::parse(text) {
            Ok(ini) => panic!("expected an error, got {ini:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn py_isspace_matches_python() {
        // [c for c in map(chr, range(0x110000)) if c.isspace()] in Python 3.11
        let python: Vec<u32> = [
            0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000,
            0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028,
            0x2029, 0x202f, 0x205f, 0x3000,
        ]
        .to_vec();
        let ours: Vec<u32> = (0..=0x10ffffu32)
            .filter_map(char::from_u32)
            .filter(|&c| py_isspace(c))
            .map(u32::from)
            .collect();
        assert_eq!(ours, python);
    }

    #[test]
    fn delimiters_and_case() {
        let ini = parse("[Net]\nA: 1\nb = x=y:z\nC=v:w\nMy Key = spaced  \n");
        assert_eq!(ini.sections(), ["Net"]);
        assert!(ini.has_section("Net") && !ini.has_section("net"));
        assert_eq!(ini.keys("Net"), ["a", "b", "c", "my key"]);
        assert_eq!(get(&ini, "Net", "a"), "1");
        assert_eq!(get(&ini, "Net", "B"), "x=y:z");
        assert_eq!(get(&ini, "Net", "c"), "v:w");
        assert_eq!(get(&ini, "Net", "MY KEY"), "spaced");
        assert_eq!(
            ini.own_keys("Net"),
            [("a", 2), ("b", 3), ("c", 4), ("my key", 5)]
        );
    }

    #[test]
    fn inline_comment_is_value_text() {
        let ini = parse("[s]\na = 1 # not a comment ; nor this\n");
        assert_eq!(get(&ini, "s", "a"), "1 # not a comment ; nor this");
    }

    #[test]
    fn continuation_comments_and_blank_lines() {
        let text = "[s]\nk = first\n  second\n\n   # comment inside\n\tthird\n      deeper\n\n\nnext = 2\n";
        let ini = parse(text);
        assert_eq!(get(&ini, "s", "k"), "first\nsecond\n\nthird\ndeeper");
        assert_eq!(get(&ini, "s", "next"), "2");
        assert_eq!(ini.own_keys("s"), [("k", 2), ("next", 10)]);
    }

    #[test]
    fn empty_value_with_continuation_keeps_leading_newline() {
        let ini = parse("[s]\nk =\n  a\n  b\nempty=\n");
        assert_eq!(get(&ini, "s", "k"), "\na\nb");
        assert_eq!(get(&ini, "s", "empty"), "");
    }

    #[test]
    fn indented_header_and_option_lines_are_continuations() {
        let ini = parse("[s]\na = 1\n  [t]\n  b = 2\n");
        assert_eq!(ini.sections(), ["s"]);
        assert_eq!(get(&ini, "s", "a"), "1\n[t]\nb = 2");
    }

    #[test]
    fn indent_is_relative_to_the_option_line() {
        // The header is indented by 2, the option by 0, so a line indented
        // by 1 continues the option.
        let ini = parse("  [s]\na = 1\n b = 2\n");
        assert_eq!(get(&ini, "s", "a"), "1\nb = 2");
        // Right after a header nothing is a continuation.
        let ini = parse("[s]\n    a = 1\n    b = 2\n");
        assert_eq!(ini.keys("s"), ["a", "b"]);
    }

    #[test]
    fn line_endings() {
        let ini = parse("[s]\r\na = 1\r\n  more\rb = 2\r\rc = 3");
        assert_eq!(get(&ini, "s", "a"), "1\nmore");
        assert_eq!(ini.own_keys("s"), [("a", 2), ("b", 4), ("c", 6)]);
        // U+2028 and U+0085 are not line breaks in Python's text files.
        let ini = parse("[s]\na = x\u{2028}y\u{85}z\n");
        assert_eq!(get(&ini, "s", "a"), "x\u{2028}y\u{85}z");
    }

    #[test]
    fn section_headers() {
        let ini = parse("[a]b]\n[ spaced ]\n[x] trailing = stuff\n[a=b\n");
        assert_eq!(ini.sections(), ["a]b", " spaced ", "x"]);
        // "[a=b" is not a header but an option named "[a".
        assert_eq!(get(&ini, "x", "[a"), "b");
        assert_eq!(err("[]\n").line, Some(1));
        assert!(Ini::parse("[]]\n").unwrap().has_section("]"));
    }

    #[test]
    fn default_section() {
        let text =
            "[DEFAULT]\nhome = /h\nlog = %(home)s/log\n[s]\nhome = /s\n[t]\n[DEFAULT]\nextra = 1\n";
        let ini = parse(text);
        assert_eq!(ini.sections(), ["s", "t"]);
        assert!(!ini.has_section("DEFAULT"));
        assert_eq!(ini.keys("s"), ["home", "log", "extra"]);
        assert_eq!(ini.own_keys("s"), [("home", 5)]);
        assert_eq!(ini.keys("DEFAULT"), ["home", "log", "extra"]);
        // A DEFAULT value interpolates in the section it is read from.
        let v = ini.get("s", "log").unwrap().unwrap();
        assert_eq!(
            (v.text.as_str(), v.line, v.section),
            ("/s/log", 3, "DEFAULT")
        );
        assert_eq!(get(&ini, "t", "log"), "/h/log");
        assert_eq!(get(&ini, "DEFAULT", "log"), "/h/log");
        assert_eq!(ini.get("s", "home").unwrap().unwrap().section, "s");
        assert!(ini.get("s", "nope").is_none());
        assert!(ini.get("missing", "home").is_none());
        assert!(ini.keys("missing").is_empty());
        // "default" is an ordinary section.
        assert_eq!(parse("[default]\na=1\n").sections(), ["default"]);
    }

    #[test]
    fn interpolation() {
        let text =
            "[s]\nurl = https://x.y:8080/p?q=%%20\npct = 100%%\na = %(B)s!\nb = %(c)s\nc = end\n";
        let ini = parse(text);
        assert_eq!(get(&ini, "s", "url"), "https://x.y:8080/p?q=%20");
        assert_eq!(get(&ini, "s", "pct"), "100%");
        assert_eq!(get(&ini, "s", "a"), "end!");
        assert_eq!(ini.get_raw("s", "A"), Some("%(B)s!"));
    }

    #[test]
    fn interpolation_errors_are_lazy_and_carry_the_key_line() {
        let text = "[s]\nok = fine\nbad = 50%\nmissing = %(nope)s\nref = %(x)\nloop = %(loop)s\n[t]\nk = v\nbroken = %z\n";
        let ini = parse(text);
        assert_eq!(get(&ini, "s", "ok"), "fine");
        assert_eq!(get(&ini, "t", "k"), "v");
        let e = ini.get("s", "bad").unwrap().unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(
            e.message
                .starts_with("bad interpolation in 'bad': '%' must be followed by '%' or '('"),
            "{e}"
        );
        let e = ini.get("s", "missing").unwrap().unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (
                Some(4),
                "interpolation of 'missing' refers to missing option 'nope'"
            )
        );
        let e = ini.get("s", "ref").unwrap().unwrap_err();
        assert!(
            e.message
                .starts_with("bad interpolation in 'ref': bad variable reference"),
            "{e}"
        );
        let e = ini.get("s", "loop").unwrap().unwrap_err();
        assert_eq!(e.message, "interpolation of 'loop' nests deeper than 10");
    }

    #[test]
    fn interpolation_depth_limit() {
        // k0 -> k1 -> ... ; reading k0 with n references recurses n times.
        let chain = |n: usize| {
            let mut text = String::from("[s]\n");
            for i in 0..n {
                text.push_str(&format!("k{i} = %(k{})s\n", i + 1));
            }
            text.push_str(&format!("k{n} = end\n"));
            parse(&text)
        };
        // Depth 1 is k0 itself; a referenced value without '%' adds no level.
        assert_eq!(get(&chain(10), "s", "k0"), "end");
        let e = chain(11).get("s", "k0").unwrap().unwrap_err();
        assert_eq!(e.message, "interpolation of 'k0' nests deeper than 10");
    }

    #[test]
    fn interpolation_edge_syntax() {
        let ini = parse("[s]\na = %()s\nb = %(x)sy\nx = 1\nc = trailing %\nd = %(X)s\n");
        assert!(ini.get("s", "a").unwrap().is_err());
        assert_eq!(get(&ini, "s", "b"), "1y");
        assert!(ini.get("s", "c").unwrap().is_err());
        assert_eq!(get(&ini, "s", "d"), "1");
    }

    #[test]
    fn duplicates() {
        let e = err("[paths]\na=1\n[other]\n[paths]\n");
        assert_eq!(
            (e.line, e.message.as_str()),
            (Some(4), "duplicate section [paths] (first at line 1)")
        );
        let e = err("[suite_isolation]\n\nMode = a\nmode: b\n");
        assert_eq!(
            (e.line, e.message.as_str()),
            (
                Some(4),
                "duplicate option 'mode' in section [suite_isolation] (first at line 3)"
            )
        );
        // Across DEFAULT blocks the key is still a duplicate.
        let e = err("[DEFAULT]\na=1\n[DEFAULT]\nA=2\n");
        assert_eq!(e.line, Some(4));
        // Same key in different sections is fine.
        let ini = parse("[a]\nk=1\n[b]\nk=2\n");
        assert_eq!(
            (get(&ini, "a", "k"), get(&ini, "b", "k")),
            ("1".into(), "2".into())
        );
    }

    #[test]
    fn parse_errors() {
        let e = err("[s]\nxyz\n");
        assert_eq!(
            (e.line, e.message.as_str()),
            (
                Some(2),
                "line is neither a section header, an option nor a comment: 'xyz'"
            )
        );
        assert_eq!(err("[s]\n= x\n").line, Some(2));
        let e = err("\n# c\nk = v\n[s]\n");
        assert_eq!(e.line, Some(3));
        assert!(
            e.message.starts_with("no section header before this line"),
            "{e}"
        );
        let e = err("\u{feff}[s]\n");
        assert!(e.message.contains("byte order mark"), "{e}");
        // A malformed line is reported only at the end, so a later fatal
        // error wins, as in Python.
        let e = err("[s]\nbad line\n[s]\n");
        assert!(e.message.starts_with("duplicate section"), "{e}");
        // Two empty names in one section: the second is a duplicate ('').
        let e = err("[s]\n= a\n= b\n");
        assert!(e.message.starts_with("duplicate option ''"), "{e}");
        // The first malformed line is reported.
        assert_eq!(err("[s]\nfoo\nbar\n").line, Some(2));
    }

    #[test]
    fn malformed_line_does_not_end_value() {
        // Python keeps optname after a malformed line, so the indented line
        // continues `a` rather than being a duplicate of it.
        let e = err("[s]\na = 1\njunk\n  a = 2\n");
        assert!(e.message.starts_with("line is neither"), "{e}");
    }

    #[test]
    fn empty_and_comment_only_files() {
        let ini = parse("");
        assert!(ini.sections().is_empty() && ini.keys("DEFAULT").is_empty());
        assert!(parse("  \n# x\n ; y\n\n").sections().is_empty());
    }

    #[test]
    fn booleans() {
        for s in ["1", "yes", "TRUE", "On"] {
            assert_eq!(parse_bool(s), Some(true), "{s}");
        }
        for s in ["0", "No", "false", "OFF"] {
            assert_eq!(parse_bool(s), Some(false), "{s}");
        }
        for s in ["", " yes", "y", "2", "enabled"] {
            assert_eq!(parse_bool(s), None, "{s}");
        }
    }

    #[test]
    fn error_display_is_the_message() {
        let e = err("[s]\nxyz\n");
        assert_eq!(e.to_string(), e.message);
    }
}
