//! Go duration strings (`"30s"`, `"1m30s"`, `"500ms"`) as ORY configuration writes them.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: expected a Go duration such as \"500ms\", \"30s\" or \"1h30m\"")]
pub struct DurationError(pub String);

/// Parses a Go duration into milliseconds. Fractions (`1.5s`) are accepted; negative values and
/// units below a millisecond round towards zero.
pub fn parse_millis(text: &str) -> Result<u64, DurationError> {
    let err = || DurationError(text.to_string());
    let s = text.trim();
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(err());
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-6,
            "us" | "µs" | "μs" => 1e-3,
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(err()),
        };
        total += value * factor;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(err());
    }
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_millis("500ms"), Ok(500));
        assert_eq!(parse_millis("30s"), Ok(30_000));
        assert_eq!(parse_millis("1h30m"), Ok(5_400_000));
        assert_eq!(parse_millis("1.5s"), Ok(1_500));
        assert_eq!(parse_millis("0"), Ok(0));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "10", "s", "-1s", "1x", "1.2.3s"] {
            assert!(parse_millis(bad).is_err(), "{bad}");
        }
    }
}
