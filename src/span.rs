//! Spans of time as people write them in flags and settings (`36h`, `7d`, `1d12h`).

use std::fmt;
use std::time::Duration;

/// A span of time with its text as written, which prune's reasons repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub duration: Duration,
    pub text: String,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A span written `30m`, `36h`, `7d`, `2w` or several of them together (`1d12h`); units s, m,
/// h, d (24 h), w (7 d). A bare number is refused: it could be meant in any unit.
pub fn parse_span(text: &str) -> std::result::Result<Span, String> {
    const HOW: &str = "use a whole number with a unit s, m, h, d or w, e.g. 36h, 7d or 1d12h";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("empty duration; {HOW}"));
    }
    let mut secs: u64 = 0;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(format!("{t:?} is not a duration; {HOW}")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{t:?} is not a duration; {HOW}"))?;
        secs = n
            .checked_mul(unit)
            .and_then(|s| secs.checked_add(s))
            .ok_or_else(|| format!("{t:?} is too long a duration"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("{t:?} has no unit; {HOW}"));
    }
    if secs == 0 {
        return Err(format!("{t:?} is zero; {HOW}"));
    }
    Ok(Span {
        duration: Duration::from_secs(secs),
        text: t.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        for (text, secs) in [
            ("30m", 1800),
            ("36h", 129_600),
            ("7d", 604_800),
            ("2w", 1_209_600),
            ("1d12h", 129_600),
            ("90s", 90),
            (" 7D ", 604_800),
        ] {
            assert_eq!(parse_span(text).unwrap().duration.as_secs(), secs, "{text}");
        }
        for bad in [
            "",
            "0d",
            "7",
            "d",
            "-1d",
            "7x",
            "1.5d",
            "99999999999999999999w",
            "7 d",
        ] {
            assert!(parse_span(bad).is_err(), "{bad}");
        }
    }
}
