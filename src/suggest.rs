//! "Did you mean ...?": the nearest valid name to a misspelt one, for the messages about
//! unknown configuration keys, flags, environment variables and policy fields.
//!
//! Invariants:
//! 1. A suggestion is made only when it is close: an edit distance (insertions, deletions,
//!    substitutions, and swaps of two neighbours, each 1) of at most a third of the longer
//!    name, and at least 1. A name far from every valid one gets none, rather than a wild guess.
//! 2. Among equally close names the first in the list wins, so the answer does not depend on
//!    anything but the list's order.
//! 3. [`unknown`] says the same thing the same way wherever a name is refused: the name as
//!    given, the suggestion if any, and otherwise every accepted name.
//! 4. [`key_line`] finds where a TOML key is written by scanning lines (the parsed table keeps
//!    no positions); when it cannot tell, it answers line 1 rather than guess another key's.

/// The edit distance between `a` and `b` (optimal string alignment: insert, delete, substitute,
/// swap two neighbours).
pub fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Three rows of the dynamic-programming table: two back (for swaps), one back, current.
    let mut two_back: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(two_back[j - 2] + 1);
            }
        }
        two_back = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// The valid name nearest to `given`, if it is close enough (invariants 1, 2).
pub fn nearest<'a>(given: &str, valid: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let given_lower = given.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for v in valid {
        let d = distance(&given_lower, &v.to_ascii_lowercase());
        let limit = (given.chars().count().max(v.chars().count()) / 3).max(1);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, v));
        }
    }
    best.map(|(_, v)| v)
}

/// `unknown <what> `<given>`; did you mean `<nearest>`?`, or, with nothing close, the list of
/// accepted names (invariant 3). `prefix` goes before each name (`--` for flags, nothing for keys).
pub fn unknown(what: &str, given: &str, valid: &[&str], prefix: &str) -> String {
    match nearest(given, valid.iter().copied()) {
        Some(n) => format!("unknown {what} `{prefix}{given}`; did you mean `{prefix}{n}`?"),
        None => {
            let all: Vec<String> = valid.iter().map(|v| format!("`{prefix}{v}`")).collect();
            format!(
                "unknown {what} `{prefix}{given}`; expected one of {}",
                all.join(", ")
            )
        }
    }
}

/// The 1-based line of `key = ...` in `table` (`None`: the top level) of the TOML `text`; the
/// first line when it cannot be told (a key written in a form this line scan does not know).
pub fn key_line(text: &str, table: Option<&str>, key: &str) -> usize {
    let mut current: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(header) = t.strip_prefix('[') {
            let h = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .map(str::trim);
            // A header names a key of each table above it: `[orgs.x]` is key `orgs` of the top
            // level and key `x` of `orgs`.
            let h_text = h.unwrap_or_default();
            let mut ends = h_text
                .match_indices('.')
                .map(|(i, _)| i)
                .collect::<Vec<_>>();
            ends.push(h_text.len());
            let mut start = 0;
            for end in ends {
                let above = (start > 0).then(|| h_text[..start - 1].trim());
                if above == table && h_text[start..end].trim() == key {
                    return i + 1;
                }
                start = end + 1;
            }
            current = h;
            continue;
        }
        let k = t
            .split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .trim_matches('"');
        if current == table && k == key && t.contains('=') {
            return i + 1;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("tick", "tick"), 0);
        assert_eq!(distance("tikc", "tick"), 1);
        assert_eq!(distance("idle_timout", "idle_timeout"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggests_only_what_is_close() {
        let keys = ["tick", "shards", "max_sessions", "max_sessions_per_user"];
        assert_eq!(nearest("tikc", keys), Some("tick"));
        assert_eq!(
            nearest("max_sesions_per_user", keys),
            Some("max_sessions_per_user")
        );
        assert_eq!(nearest("max_sesions", keys), Some("max_sessions"));
        assert_eq!(nearest("SHARDS", keys), Some("shards"));
        assert_eq!(nearest("colour", keys), None);
        assert_eq!(nearest("x", keys), None);
    }

    #[test]
    fn key_lines() {
        let text = "a = 1\n[application]\n a = 2\n\"b\" = 3\n[orgs.x]\na=4\n";
        assert_eq!(key_line(text, None, "a"), 1);
        assert_eq!(key_line(text, Some("application"), "a"), 3);
        assert_eq!(key_line(text, Some("application"), "b"), 4);
        assert_eq!(key_line(text, Some("orgs.x"), "a"), 6);
        assert_eq!(key_line(text, Some("orgs.y"), "a"), 1);
        assert_eq!(key_line(text, None, "application"), 2);
        assert_eq!(key_line(text, Some("orgs"), "x"), 5);
    }

    #[test]
    fn messages() {
        let valid = ["source", "persistent"];
        assert_eq!(
            unknown("field", "sorce", &valid, ""),
            "unknown field `sorce`; did you mean `source`?"
        );
        assert_eq!(
            unknown("flag", "zzz", &valid, "--"),
            "unknown flag `--zzz`; expected one of `--source`, `--persistent`"
        );
    }
}
