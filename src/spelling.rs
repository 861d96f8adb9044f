//! Did-you-mean suggestions for misspelled names: request fields, config keys, CLI words.
//!
//! One rule everywhere, so a typo gets the same help in a reply, a config report and the CLI:
//! the candidate with the smallest edit distance (insertions, deletions, substitutions and
//! swaps of two neighbours), if it is close enough to be a plausible typo of the word.

/// The candidate `word` was most likely meant to be, if one is close enough.
///
/// Close enough: at most one edit for words of up to four characters, two up to eight, and
/// three beyond (so `tll` finds `ttl` and `wokers` finds `workers`, but `id` does not become
/// `ttl`). Ties go to the first candidate.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let word = word.to_ascii_lowercase();
    let limit = match word.chars().count() {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        if c.eq_ignore_ascii_case(&word) {
            return Some(c);
        }
        let d = distance(&word, &c.to_ascii_lowercase());
        if d <= limit && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal string alignment distance: edits, counting a swap of two neighbours as one.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows of the table: two back (for swaps), one back, and the current one.
    let mut back2 = vec![0usize; b.len() + 1];
    let mut back1: Vec<usize> = (0..=b.len()).collect();
    let mut row = vec![0usize; b.len() + 1];
    for i in 1..=a.len() {
        row[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (back1[j] + 1).min(row[j - 1] + 1).min(back1[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(back2[j - 2] + 1);
            }
            row[j] = d;
        }
        std::mem::swap(&mut back2, &mut back1);
        std::mem::swap(&mut back1, &mut row);
    }
    back1[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_word_and_strangers_find_nothing() {
        let fields = ["key", "value", "scope", "ttl"];
        assert_eq!(did_you_mean("tll", fields), Some("ttl"));
        assert_eq!(did_you_mean("vaule", fields), Some("value"));
        assert_eq!(did_you_mean("Scope", fields), Some("scope"));
        assert_eq!(did_you_mean("expires", fields), None);
        assert_eq!(did_you_mean("id", fields), None);
        let keys = ["socket", "workers", "job_queue", "max_connections"];
        assert_eq!(did_you_mean("wokers", keys), Some("workers"));
        assert_eq!(
            did_you_mean("max_conections", keys),
            Some("max_connections")
        );
        assert_eq!(did_you_mean("sokcet", keys), Some("socket"));
        assert_eq!(did_you_mean("x", Vec::<&str>::new()), None);
    }

    #[test]
    fn distance_counts_edits_and_swaps() {
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("abc", "abc"), 0);
        assert_eq!(distance("abc", "acb"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
