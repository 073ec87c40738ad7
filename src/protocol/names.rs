//! The validation rules of names, rooms and contents (PROTOCOL.md "Names and
//! limits"; the display-name rule is confab's, docs/protocol.md section 3).

use super::{ErrorCode, Rejection};

pub const MAX_ROOM_LEN: usize = 64;
pub const MAX_NAME_CHARS: usize = 32;
pub const MAX_REF_CHARS: usize = 64;
pub const MAX_JOIN_HISTORY: u32 = 100;

/// `^[A-Za-z0-9_.:-]{1,64}$`
pub fn is_valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

pub fn check_room(room: &str) -> Result<(), Rejection> {
    if is_valid_room(room) {
        Ok(())
    } else {
        Err(Rejection::new(
            ErrorCode::InvalidRoom,
            "room names are 1-64 characters of A-Z a-z 0-9 _ . : -",
        ))
    }
}

/// A display name: 1–32 characters after trimming, at least one of them
/// visible, and nothing invisible that could make it look empty, impersonate
/// another name or reorder the text around it (docs/protocol.md, "Names").
/// Returns the trimmed name.
pub fn check_display_name(name: &str) -> Result<String, Rejection> {
    let trimmed = name.trim();
    let chars = trimmed.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || !name_chars_ok(trimmed) {
        return Err(Rejection::new(
            ErrorCode::InvalidName,
            "names are 1-32 characters, at least one visible, without control, \
             format or invisible characters",
        ));
    }
    Ok(trimmed.to_string())
}

/// How a character of a display name is judged.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NameChar {
    /// A letter, number, punctuation, symbol or private-use character.
    Visible,
    /// A combining mark: fine, but it shows nothing by itself.
    Mark,
    /// Whitespace inside the name.
    Space,
    /// U+200D, allowed between two visible characters (emoji sequences).
    Joiner,
    /// U+FE00–U+FE0F, allowed right after a visible character (emoji style).
    Selector,
    /// Controls, format characters, default-ignorables, line separators.
    Refused,
}

fn classify_name_char(c: char) -> NameChar {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    match c {
        '\u{200D}' => return NameChar::Joiner,
        '\u{FE00}'..='\u{FE0F}' => return NameChar::Selector,
        // Line and paragraph separators break the line a name is shown on.
        '\u{2028}' | '\u{2029}' => return NameChar::Refused,
        // The Braille blank looks like a space but is not one: allowed,
        // but not as the visible part (the Hangul fillers are ignorable).
        '\u{2800}' => return NameChar::Mark,
        _ => {}
    }
    if c.is_control() || is_default_ignorable(c) {
        return NameChar::Refused;
    }
    if c.is_whitespace() {
        return NameChar::Space;
    }
    match c.general_category() {
        G::Format | G::Control | G::Surrogate => NameChar::Refused,
        G::NonspacingMark | G::SpacingMark | G::EnclosingMark => NameChar::Mark,
        // Not yet assigned: allowed, but it can't be the visible part.
        G::Unassigned => NameChar::Mark,
        _ => NameChar::Visible,
    }
}

/// The character rule of a display name: at least one visible character; no
/// control, format (bidi controls, BOM, tags, zero-width spaces…) or other
/// default-ignorable character, except a ZWJ between two visible characters
/// (a variation selector or mark may sit before it) and a variation selector right
/// after a visible character, so emoji sequences like 👩‍💻 and ❤️ stay valid.
fn name_chars_ok(name: &str) -> bool {
    let mut any_visible = false;
    let mut prev: Option<NameChar> = None;
    let mut chars = name.chars().map(classify_name_char).peekable();
    while let Some(class) = chars.next() {
        let ok = match class {
            NameChar::Visible => {
                any_visible = true;
                true
            }
            NameChar::Mark | NameChar::Space => true,
            NameChar::Selector => prev == Some(NameChar::Visible),
            // After a mark too: Indic scripts put ZWJ after a virama.
            NameChar::Joiner => {
                matches!(
                    prev,
                    Some(NameChar::Visible | NameChar::Selector | NameChar::Mark)
                ) && chars.peek() == Some(&NameChar::Visible)
            }
            NameChar::Refused => false,
        };
        if !ok {
            return false;
        }
        prev = Some(class);
    }
    any_visible
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): code
/// points that render as nothing when a font has no glyph for them — soft
/// hyphen, zero-width spaces and joiners, bidi controls, BOM, variation
/// selectors, tags, fillers. Used for names and for prohibited-word matching.
pub fn is_default_ignorable(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// The `name` parameter of a raw query string (the last one, as the other
/// parameters are read), checked as a display name. Percent-decoding is
/// strict: bytes that are not UTF-8 get `invalid_name` instead of turning
/// into U+FFFD, which would pass for a visible name nobody chose.
pub fn display_name_from_query(query: &str) -> Option<Result<String, Rejection>> {
    let raw = query
        .split('&')
        .rev()
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| form_decode(key).as_deref() == Some("name"))
        .map(|(_, value)| value)?;
    Some(match form_decode(raw) {
        Some(name) => check_display_name(&name),
        None => Err(Rejection::new(
            ErrorCode::InvalidName,
            "the name is not valid UTF-8 once percent-decoded",
        )),
    })
}

/// `application/x-www-form-urlencoded` decoding ('+' is a space, `%XX` a
/// byte, a stray '%' stays), or `None` when the bytes are not UTF-8.
fn form_decode(s: &str) -> Option<String> {
    fn hex(b: Option<&u8>) -> Option<u8> {
        (*b? as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(high), Some(low)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                    out.push(high << 4 | low);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Message content: some non-whitespace, at most `max_chars` code points, and
/// no U+0000 (Postgres text can't hold it, and both backends must agree).
pub fn check_content(content: &str, max_chars: usize) -> Result<(), Rejection> {
    if content.contains('\0') {
        return Err(Rejection::new(
            ErrorCode::InvalidFrame,
            "\"content\" must not contain the NUL character (U+0000)",
        ));
    }
    if !content.chars().any(|c| !c.is_whitespace()) {
        return Err(Rejection::new(
            ErrorCode::EmptyMessage,
            "a message needs at least one non-whitespace character",
        ));
    }
    // Byte length bounds the code point count from above: skip counting short ones.
    if content.len() > max_chars && content.chars().count() > max_chars {
        return Err(Rejection::new(
            ErrorCode::MessageTooLong,
            format!("a message is at most {max_chars} characters"),
        ));
    }
    Ok(())
}

/// Distinct emoji one message can carry (bounds its history object).
pub const MAX_EMOJI_PER_MESSAGE: usize = 50;
/// The longest `:shortcode:` name, between the colons.
pub const MAX_SHORTCODE_CHARS: usize = 32;
/// The most bytes one grapheme cluster may take as a reaction (a family
/// emoji with skin tones is about 40; a stack of combining marks is not an emoji).
pub const MAX_EMOJI_BYTES: usize = 64;

/// A reaction: one grapheme cluster (no whitespace or control characters) or
/// a `:shortcode:` of `a-z 0-9 _ + -`.
pub fn check_emoji(emoji: &str) -> Result<(), Rejection> {
    let refuse = || {
        Err(Rejection::new(
            ErrorCode::InvalidEmoji,
            "an emoji is one grapheme cluster or a :shortcode: of at most 32 characters (a-z 0-9 _ + -)",
        ))
    };
    if let Some(name) = emoji.strip_prefix(':').and_then(|e| e.strip_suffix(':')) {
        let ok = !name.is_empty()
            && name.chars().count() <= MAX_SHORTCODE_CHARS
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_+-".contains(c));
        return if ok { Ok(()) } else { refuse() };
    }
    use unicode_segmentation::UnicodeSegmentation;
    let mut clusters = emoji.graphemes(true);
    let one = clusters.next().is_some() && clusters.next().is_none();
    let visible = emoji
        .chars()
        .next()
        .is_some_and(|c| !c.is_whitespace() && !c.is_control() && !is_default_ignorable(c));
    if one && visible && emoji.len() <= MAX_EMOJI_BYTES && !emoji.chars().any(char::is_control) {
        Ok(())
    } else {
        refuse()
    }
}

#[cfg(test)]
mod emoji_tests {
    use super::check_emoji;

    #[test]
    fn one_grapheme_or_a_shortcode() {
        for ok in [
            "👍",
            "❤️",
            "👍🏽",
            "👨‍👩‍👧‍👦",
            "🇫🇷",
            "a",
            "é",
            "e\u{301}",
            ":party_parrot:",
            ":+1:",
            ":a-b:",
        ] {
            assert!(check_emoji(ok).is_ok(), "{ok:?}");
        }
        let long = format!(":{}:", "a".repeat(33));
        for bad in [
            "",
            "👍👍",
            "ab",
            " ",
            "\u{200b}",
            "\n",
            "::",
            ":UP:",
            ":a b:",
            long.as_str(),
            ":x",
            "\u{7}",
        ] {
            assert!(check_emoji(bad).is_err(), "{bad:?}");
        }
        assert!(check_emoji(&format!(":{}:", "a".repeat(32))).is_ok());
        let zalgo = format!("a{}", "\u{301}".repeat(40));
        assert!(check_emoji(&zalgo).is_err(), "over 64 bytes");
    }
}
