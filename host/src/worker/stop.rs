//! Stop sequences over streamed text: pieces are passed on as soon as they cannot be the
//! start of a stop sequence, and the text ends before the first one to be complete (as a
//! check after every character would find it, however the text was cut into pieces).

/// Watches generated text for stop sequences.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    include: bool,
    text: String,
    emitted: usize,
    matched: Option<String>,
}

impl StopMatcher {
    /// A matcher for `stops`; `include` keeps the matched sequence in the text.
    pub fn new(stops: Vec<String>, include: bool) -> Self {
        Self { stops, include, ..Self::default() }
    }

    /// Takes the next piece and returns the text that is now safe to pass on. Once a stop
    /// sequence has matched, [`Self::matched`] is set and later pieces are ignored.
    pub fn push(&mut self, piece: &str) -> String {
        if self.matched.is_some() {
            return String::new();
        }
        self.text.push_str(piece);
        if self.stops.is_empty() {
            return self.emit(self.text.len());
        }
        // A match can begin at most one stop length before the new piece.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.text.len().saturating_sub(piece.len() + longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let first = first_completed(&self.text, from, &self.stops);
        if let Some((at, s)) = first {
            let end = if self.include { at + s.len() } else { at };
            self.matched = Some(s.clone());
            self.text.truncate(end.max(self.emitted));
            return self.emit(self.text.len());
        }
        // Hold back the longest tail that could still grow into a stop sequence.
        let held = (1..longest.min(self.text.len()) + 1)
            .rev()
            .filter(|n| self.text.is_char_boundary(self.text.len() - n))
            .find(|n| {
                let tail = &self.text[self.text.len() - n..];
                self.stops.iter().any(|s| s.len() > *n && s.starts_with(tail))
            })
            .unwrap_or(0);
        self.emit(self.text.len() - held)
    }

    /// Generation ended: the held-back text, which can no longer become a match.
    pub fn finish(&mut self) -> String {
        self.emit(self.text.len())
    }

    /// The stop sequence that ended the text, if one did.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// The whole text so far (up to the match).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn emit(&mut self, upto: usize) -> String {
        let upto = upto.max(self.emitted);
        let out = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        out
    }
}

/// The stop sequence that is complete first in `text[from..]` (the smallest end; the
/// longest of those ending there), as a generation that checks after every character
/// would see it: the answer does not depend on how the text was cut into pieces.
fn first_completed<'a>(
    text: &str,
    from: usize,
    stops: &'a [String],
) -> Option<(usize, &'a String)> {
    stops
        .iter()
        .filter_map(|s| text[from..].find(s.as_str()).map(|at| (from + at, s)))
        .min_by_key(|(at, s)| (at + s.len(), std::cmp::Reverse(s.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        stops: &[&str],
        include: bool,
        pieces: &[&str],
    ) -> (Vec<String>, String, Option<String>) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect(), include);
        let mut out: Vec<String> = pieces.iter().map(|p| m.push(p)).collect();
        out.push(m.finish());
        let matched = m.matched().map(str::to_string);
        (out, m.text().to_string(), matched)
    }

    #[test]
    fn a_stop_split_across_pieces_is_held_back_and_cut() {
        let (out, text, matched) = run(&["END"], false, &["abc E", "N", "D tail"]);
        assert_eq!(out, ["abc ", "", "", ""]);
        assert_eq!((text.as_str(), matched.as_deref()), ("abc ", Some("END")));
    }

    #[test]
    fn a_false_start_is_released_and_the_earliest_stop_wins() {
        let (out, text, matched) = run(&["\n\n", "xy"], false, &["a\n", "b xy\n\nc"]);
        assert_eq!(out.concat(), "a\nb ");
        assert_eq!((text.as_str(), matched.as_deref()), ("a\nb ", Some("xy")));
        let (_, text, _) = run(&["xy"], true, &["a x", "yz"]);
        assert_eq!(text, "a xy");
        let (out, text, matched) = run(&["zz"], false, &["no ", "match z"]);
        assert_eq!(
            (out.concat(), text.as_str(), matched),
            ("no match z".into(), "no match z", None)
        );
    }

    /// What the whole text comes to, checked one character at a time: cut before (or
    /// after, with `include`) the first stop to be complete.
    fn reference(text: &str, stops: &[String], include: bool) -> (String, Option<String>) {
        let mut first = None;
        for end in text.char_indices().map(|(i, c)| i + c.len_utf8()) {
            let done =
                stops.iter().filter(|s| text[..end].ends_with(s.as_str())).max_by_key(|s| s.len());
            if let Some(s) = done {
                first = Some((end - s.len(), s));
                break;
            }
        }
        match first {
            Some((at, s)) => {
                let end = if include { at + s.len() } else { at };
                (text[..end].to_string(), Some(s.clone()))
            }
            None => (text.to_string(), None),
        }
    }

    #[test]
    fn random_texts_split_anywhere_match_the_whole_text_answer() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = ['a', 'b', ' ', '\n', 'é', '日'];
        let word = |rng: &mut rand::rngs::StdRng, max: usize| -> String {
            let n = rng.random_range(0..=max);
            (0..n).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect()
        };
        for _ in 0..3000 {
            let text = word(&mut rng, 40);
            // Empty stops never reach the matcher (the API drops them).
            let n = rng.random_range(0..4);
            let stops: Vec<String> =
                (0..n).map(|_| word(&mut rng, 3)).filter(|s| !s.is_empty()).collect();
            let include = rng.random_bool(0.5);
            // Split the text at random character boundaries, as the engine's pieces are.
            let chars: Vec<char> = text.chars().collect();
            let mut pieces = Vec::new();
            let mut i = 0;
            while i < chars.len() {
                let n = rng.random_range(1..=4).min(chars.len() - i);
                pieces.push(chars[i..i + n].iter().collect::<String>());
                i += n;
            }
            let mut m = StopMatcher::new(stops.clone(), include);
            let mut out: String = pieces.iter().map(|p| m.push(p)).collect();
            out.push_str(&m.finish());
            let (want, matched) = reference(&text, &stops, include);
            assert_eq!(
                out, want,
                "text {text:?} stops {stops:?} include {include} pieces {pieces:?}"
            );
            assert_eq!(m.text(), want);
            assert_eq!(m.matched().map(str::to_string), matched, "text {text:?} stops {stops:?}");
        }
    }

    #[test]
    fn multibyte_text_is_never_split() {
        let (out, text, matched) = run(&["é!"], false, &["caf", "é", "é!"]);
        assert_eq!(out.concat(), "café");
        assert_eq!((text.as_str(), matched.as_deref()), ("café", Some("é!")));
    }
}
