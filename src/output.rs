//! What commands print. stdout carries data (a table or one JSON document); logs,
//! progress and errors go to stderr.

use std::io::Write;

use serde::Serialize;
use serde_json::{Value, json};

use crate::exit::Code;

/// Version of the `--json` documents' layout.
pub const JSON_SCHEMA: u32 = 1;

/// A command's result: its data for `--json`, its text for people, and its exit code.
#[derive(Debug)]
pub struct Report {
    pub command: &'static str,
    pub data: Value,
    pub text: String,
    pub code: Code,
    /// An exit status that is none of stagesnap's codes: `run` exits with its suite's.
    pub status: Option<u8>,
}

impl Report {
    pub fn new<T: Serialize>(command: &'static str, data: &T, text: String) -> Report {
        Report {
            command,
            data: serde_json::to_value(data).expect("report data serializes"),
            text,
            code: Code::Ok,
            status: None,
        }
    }

    pub fn with_code(mut self, code: Code) -> Report {
        self.code = code;
        self
    }

    pub fn with_status(mut self, status: u8) -> Report {
        self.status = Some(status);
        self
    }

    /// The process's exit status.
    pub fn exit_status(&self) -> u8 {
        self.status.unwrap_or(self.code.as_i32() as u8)
    }
}

/// The one line that ends every create and restore: what was done, how many files and bytes it
/// covered (None for modes that hold no data), how long it took, and what it actually wrote.
pub fn summary(what: &str, covered: Option<(u64, u64)>, seconds: f64, wrote: &str) -> String {
    let covered = covered
        .map(|(files, bytes)| format!(": {files} files, {}", crate::tree::human_bytes(bytes)))
        .unwrap_or_default();
    format!("{what}{covered} in {seconds:.2} s; {wrote}\n")
}

/// Prints the report; a closed stdout (`stagesnap list | head -1`) is not an error.
pub fn print(report: &Report, json: bool) {
    let body = if json {
        let mut doc = json!({ "schema": JSON_SCHEMA, "command": report.command, "exit_code": report.exit_status() });
        merge(&mut doc, &report.data);
        serde_json::to_string_pretty(&doc).expect("json") + "\n"
    } else {
        report.text.clone()
    };
    write_stdout(&body);
}

/// An error as one JSON document on stdout, for pipelines that parse every run.
pub fn print_error(command: &str, err: &anyhow::Error, code: Code) {
    let message = crate::exit::one_line(err);
    let doc = json!({
        "schema": JSON_SCHEMA,
        "command": command,
        "exit_code": code.as_i32(),
        "error": { "kind": code.kind(), "message": message },
    });
    write_stdout(&(serde_json::to_string_pretty(&doc).expect("json") + "\n"));
}

fn merge(doc: &mut Value, data: &Value) {
    if let (Value::Object(d), Value::Object(extra)) = (doc, data) {
        for (k, v) in extra {
            d.insert(k.clone(), v.clone());
        }
    }
}

fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    // A broken pipe means the reader is gone: nothing useful is left to say.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// A plain text table with left-aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                // Padded by hand: `format!("{:<w$}")` panics on widths past u16::MAX.
                s.push_str(cell);
                s.extend(std::iter::repeat_n(
                    ' ',
                    w.saturating_sub(cell.chars().count()) + 2,
                ));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
