//! Numbers in words: counts with the right plural, signed differences that never read "-0.00".

/// `1 image`, `2 images`, `0 images`.
pub fn count(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else if let Some(stem) = word.strip_suffix('y').filter(|s| !s.ends_with(['a', 'e', 'o', 'u'])) {
        format!("{n} {stem}ies")
    } else {
        format!("{n} {word}s")
    }
}

/// A signed difference with `decimals` places and a unit: `+1.25 pt`, `−0.40 %`, and `±0.00 pt`
/// for a change that rounds to zero (never `-0.00`).
pub fn signed(v: f64, decimals: usize, unit: &str) -> String {
    let s = format!("{:.*}", decimals, v.abs());
    let zero = s.chars().all(|c| c == '0' || c == '.');
    let sign = if zero {
        "±"
    } else if v < 0.0 {
        "−"
    } else {
        "+"
    };
    format!("{sign}{s}{}{unit}", if unit.is_empty() || unit.starts_with('×') { "" } else { " " })
}

/// Seconds as `45 s`, `12 min 05 s`, `3 h 20 min`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_signs_read_as_words() {
        assert_eq!(count(1, "image"), "1 image");
        assert_eq!(count(3, "layer"), "3 layers");
        assert_eq!(count(2, "identity"), "2 identities");
        assert_eq!(count(0, "key"), "0 keys");
        assert_eq!(signed(-0.0001, 2, "pt"), "±0.00 pt");
        assert_eq!(signed(-1.234, 2, "pt"), "−1.23 pt");
        assert_eq!(signed(12.5, 1, "%"), "+12.5 %");
        assert_eq!(duration(59.4), "59 s");
        assert_eq!(duration(725.0), "12 min 05 s");
        assert_eq!(duration(12_000.0), "3 h 20 min");
    }
}
