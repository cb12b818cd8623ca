//! Stop sequences over streamed text: pieces are passed on as soon as they cannot be the
//! start of a stop sequence, and the text ends before the first one that matches.

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
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|at| (from + at, s)))
            .min_by_key(|(at, s)| (*at, std::cmp::Reverse(s.len())));
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

    #[test]
    fn multibyte_text_is_never_split() {
        let (out, text, matched) = run(&["é!"], false, &["caf", "é", "é!"]);
        assert_eq!(out.concat(), "café");
        assert_eq!((text.as_str(), matched.as_deref()), ("café", Some("é!")));
    }
}
