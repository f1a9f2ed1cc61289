//! Text to search terms: lowercase, Latin diacritics folded, apostrophes dropped, split on
//! everything that is not a letter or digit.

/// The folded form of one character, pushed onto `out`.
fn fold(c: char, out: &mut String) {
    let plain = match c {
        'à'..='å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'č' => "c",
        'ď' | 'đ' => "d",
        'è'..='ë' | 'ē' | 'ė' | 'ę' | 'ě' => "e",
        'ğ' => "g",
        'ì'..='ï' | 'ī' | 'į' | 'ı' => "i",
        'ł' | 'ľ' => "l",
        'ñ' | 'ń' | 'ň' => "n",
        'ò'..='ö' | 'ø' | 'ō' | 'ő' => "o",
        'œ' => "oe",
        'ř' => "r",
        'ś' | 'š' | 'ş' => "s",
        'ß' => "ss",
        'ť' | 'ţ' => "t",
        'ù'..='ü' | 'ū' | 'ů' | 'ű' => "u",
        'ý' | 'ÿ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => {
            out.push(c);
            return;
        }
    };
    out.push_str(plain);
}

/// The terms of `text`, in order.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        // "Don't" is one word, "dont", as people type it.
        if matches!(c, '\'' | '’') {
            continue;
        }
        for lower in c.to_lowercase() {
            if lower.is_alphanumeric() {
                fold(lower, &mut current);
            } else if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Typos a query word may carry: none below 5 characters, one from 5, two from 9.
pub fn typo_budget(word: &str) -> u8 {
    match word.chars().count() {
        0..=4 => 0,
        5..=8 => 1,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_fold_case_accents_and_apostrophes() {
        assert_eq!(words("Don't Stop Me Now"), ["dont", "stop", "me", "now"]);
        assert_eq!(
            words("Sigur Rós — Ágætis byrjun"),
            ["sigur", "ros", "agaetis", "byrjun"]
        );
        assert_eq!(
            words("  AC/DC: Back-in-Black (2003 Remaster) "),
            ["ac", "dc", "back", "in", "black", "2003", "remaster"]
        );
        assert_eq!(words("Straße"), ["strasse"]);
        assert!(words(" -- ").is_empty());
    }

    #[test]
    fn typo_budget_follows_word_length() {
        let budgets: Vec<u8> = ["", "abcd", "abcde", "abcdefgh", "abcdefghi", "héllowörld"]
            .iter()
            .map(|w| typo_budget(w))
            .collect();
        assert_eq!(budgets, [0, 0, 1, 1, 2, 2]);
    }
}
