//! Differential test: every file in tests/ini_corpus/*.cfg is parsed both by
//! Python's `configparser.ConfigParser()` and by `stagesnap::ini::Ini`, and
//! the two results, rendered as the same JSON shape, must be identical.
//!
//! Requires `python3` on PATH; the test fails (rather than skipping) without
//! it, so a green run always means the comparison happened.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::assert::OutputAssertExt;
use serde_json::{Value as Json, json};
use stagesnap::ini::Ini;

/// Prints `{"python": version, "result": ...}` for the file in argv[1].
/// `result` is `{"error": class, "line": n}` if reading fails, otherwise
/// `{"sections": [...], "data": [...]}` with, for DEFAULT and every section
/// in order, the section's own keys and each key of `options()` mapped to its
/// interpolated value (or interpolation error class), raw value and origin.
const PYTHON: &str = r#"
import configparser, json, sys

def run(path):
    cp = configparser.ConfigParser()
    try:
        # Text mode with newline=None: universal newlines, like Ini::parse.
        with open(path, encoding="utf-8") as f:
            cp.read_file(f)
    except configparser.Error as e:
        line = getattr(e, "lineno", None)
        if line is None and isinstance(e, configparser.ParsingError):
            line = e.errors[0][0]
        return {"error": type(e).__name__, "line": line}
    data = []
    for s in ["DEFAULT"] + cp.sections():
        own = cp._defaults if s == "DEFAULT" else cp._sections[s]
        keys = list(cp.defaults()) if s == "DEFAULT" else cp.options(s)
        entries = []
        for k in keys:
            try:
                r = {"value": cp.get(s, k)}
            except configparser.InterpolationError as e:
                r = {"error": type(e).__name__}
            r["raw"] = cp.get(s, k, raw=True)
            r["from"] = s if k in own else "DEFAULT"
            entries.append([k, r])
        data.append({"section": s, "own": list(own), "keys": entries})
    return {"sections": cp.sections(), "data": data}

print(json.dumps({"python": sys.version.split()[0], "result": run(sys.argv[1])}))
"#;

/// Python exception class -> error kind shared with `rust_kind`.
fn python_kind(class: &str) -> &'static str {
    match class {
        "ParsingError" => "parsing",
        "MissingSectionHeaderError" => "missing section header",
        "DuplicateSectionError" => "duplicate section",
        "DuplicateOptionError" => "duplicate option",
        "InterpolationSyntaxError" => "interpolation syntax",
        "InterpolationMissingOptionError" => "interpolation missing option",
        "InterpolationDepthError" => "interpolation depth",
        other => panic!("unexpected Python exception class {other}"),
    }
}

/// `IniError` has no kind field, so classify by its message; the messages
/// are pinned by the unit tests in src/ini.rs.
fn rust_kind(message: &str) -> &'static str {
    const BY_START: [(&str, &str); 6] = [
        ("line is neither", "parsing"),
        ("option name is empty", "parsing"),
        ("no section header", "missing section header"),
        ("duplicate section", "duplicate section"),
        ("duplicate option", "duplicate option"),
        ("bad interpolation", "interpolation syntax"),
    ];
    const BY_CONTENT: [(&str, &str); 2] = [
        ("refers to missing option", "interpolation missing option"),
        ("nests deeper than", "interpolation depth"),
    ];
    BY_START
        .iter()
        .find(|(start, _)| message.starts_with(start))
        .or_else(|| BY_CONTENT.iter().find(|(part, _)| message.contains(part)))
        .map(|(_, kind)| *kind)
        .unwrap_or_else(|| panic!("unclassified error message {message:?}"))
}

/// Python's output with exception classes replaced by kinds.
fn python_result(path: &Path) -> (String, Json) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PYTHON)
        .arg(path)
        .assert()
        .append_context("python3 on", path.display().to_string())
        .success();
    let mut json: Json =
        serde_json::from_slice(&out.get_output().stdout).expect("python3 printed invalid JSON");
    let version = json["python"].as_str().expect("python version").to_owned();
    let mut result = json["result"].take();
    if let Some(class) = result.get("error").and_then(Json::as_str) {
        result["error"] = json!(python_kind(class));
    }
    // `get_mut`, not indexing: indexing an object inserts a missing key.
    for section in result
        .get_mut("data")
        .and_then(Json::as_array_mut)
        .into_iter()
        .flatten()
    {
        for entry in section["keys"].as_array_mut().expect("keys") {
            if let Some(class) = entry[1].get("error").and_then(Json::as_str) {
                entry[1]["error"] = json!(python_kind(class));
            }
        }
    }
    (version, result)
}

/// The same JSON shape from `Ini`, checking on the way what Python's output
/// cannot show (error lines of interpolation failures).
fn rust_result(path: &Path) -> Json {
    let text = fs::read_to_string(path).expect("corpus files are UTF-8");
    let ini = match Ini::parse(&text) {
        Ok(ini) => ini,
        Err(e) => return json!({"error": rust_kind(&e.message), "line": e.line}),
    };
    let mut data = Vec::new();
    for section in std::iter::once("DEFAULT").chain(ini.sections()) {
        let mut entries = Vec::new();
        for key in ini.keys(section) {
            let raw = ini
                .get_raw(section, key)
                .expect("listed key has a raw value");
            let mut r = match ini.get(section, key).expect("listed key has a value") {
                Ok(v) => {
                    let own_line = ini.own_keys(v.section).into_iter().find(|(k, _)| *k == key);
                    assert_eq!(
                        own_line.map(|(_, l)| l),
                        Some(v.line),
                        "line of {section}.{key}"
                    );
                    json!({"value": v.text, "from": v.section})
                }
                Err(e) => {
                    let own = ini.own_keys(section).into_iter().find(|(k, _)| *k == key);
                    let from = if own.is_some() { section } else { "DEFAULT" };
                    let line = own
                        .or_else(|| ini.own_keys("DEFAULT").into_iter().find(|(k, _)| *k == key));
                    assert_eq!(
                        e.line,
                        line.map(|(_, l)| l),
                        "error line of {section}.{key}"
                    );
                    json!({"error": rust_kind(&e.message), "from": from})
                }
            };
            r["raw"] = json!(raw);
            entries.push(json!([key, r]));
        }
        let own: Vec<&str> = ini.own_keys(section).into_iter().map(|(k, _)| k).collect();
        data.push(json!({"section": section, "own": own, "keys": entries}));
    }
    json!({"sections": ini.sections(), "data": data})
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ini_corpus");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "cfg"))
        .collect();
    files.sort();
    files
}

#[test]
fn ini_matches_python_configparser() {
    let files = corpus();
    assert!(files.len() >= 25, "corpus too small: {} files", files.len());
    let mut failures = Vec::new();
    let mut version = String::new();
    let (mut parsed, mut rejected) = (0, 0);
    for path in &files {
        let (v, expected) = python_result(path);
        version = v;
        let actual = rust_result(path);
        if expected.get("error").is_some() {
            rejected += 1;
        } else {
            parsed += 1;
        }
        if actual != expected {
            failures.push(format!(
                "{}:\n  python: {expected}\n  ours:   {actual}",
                path.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    // Both outcomes must be exercised, or the comparison proves little.
    assert!(
        parsed > 0 && rejected > 0,
        "parsed {parsed}, rejected {rejected}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} corpus files differ from Python {version}:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} corpus files match Python {version} ({parsed} parsed, {rejected} rejected)",
        files.len()
    );
}
