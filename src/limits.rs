//! Abuse limits on sends: a per-user rate limit (across all of the user's
//! connections on this instance), prohibited words, and repeated-content spam.
//! Every structure here has bounded memory.

use crate::protocol::{self, ErrorCode, Rejection};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use unicode_normalization::UnicodeNormalization;

/// `limits.messages_per_sec` sustained, `limits.message_burst` at once, per user.
/// Keyed by a shared user id, so a check costs a hash, not an allocation.
pub struct SendLimiter {
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
    clock: DefaultClock,
}

impl SendLimiter {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one send from the user's allowance, or refuses with `rate_limited`.
    pub fn check(&self, user_id: &Arc<str>) -> Result<(), Rejection> {
        match self.limiter.check_key(user_id) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let mut rejection = Rejection::new(
                    ErrorCode::RateLimited,
                    "you are sending too fast; wait and send again",
                );
                rejection.retry_after_ms = Some((wait.as_millis() as u64).max(1));
                Err(rejection)
            }
        }
    }

    /// Forgets users whose allowance is full again, so memory follows the
    /// number of recently active users (run periodically).
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Requests per client IP (guest logins: `limits.logins_per_minute`, 0 = off).
pub struct IpLimiter {
    limiter: Option<DefaultKeyedRateLimiter<std::net::IpAddr>>,
    clock: DefaultClock,
}

impl IpLimiter {
    pub fn per_minute(n: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(n)
                .map(|n| DefaultKeyedRateLimiter::keyed(Quota::per_minute(n))),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from `ip`'s allowance, or refuses with `rate_limited`.
    pub fn check(&self, ip: std::net::IpAddr) -> Result<(), Rejection> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let mut rejection = Rejection::new(
                ErrorCode::RateLimited,
                "too many logins from this address; wait and try again",
            );
            rejection.retry_after_ms = Some((wait.as_millis() as u64).max(1));
            rejection
        })
    }

    pub fn sweep(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// `moderation.prohibited_words`: case-insensitive, whole words (an entry may
/// be a phrase). Entries and messages are compared in a folded form (see
/// [`fold_for_matching`]) so lookalike letters, invisible characters and
/// spacing don't slip a word past; the message itself is kept as sent.
pub struct Moderation {
    words: Vec<String>,
}

impl Moderation {
    pub fn new(words: &[String]) -> Self {
        Self {
            words: words
                .iter()
                .map(|w| fold_for_matching(w).trim().to_string())
                .filter(|w| !w.is_empty())
                .collect(),
        }
    }

    /// Runs per send on the room's thread: nothing at all without words, one
    /// allocation (the folded text) with them.
    pub fn check(&self, content: &str) -> Result<(), Rejection> {
        if self.words.is_empty() {
            return Ok(());
        }
        let text = fold_for_matching(content);
        if self.words.iter().any(|w| contains_word(&text, w)) {
            return Err(Rejection::new(
                ErrorCode::ProhibitedContent,
                "the message contains a prohibited word",
            ));
        }
        Ok(())
    }
}

/// The form prohibited words are matched in: NFKC (fullwidth and styled
/// letters, ligatures), default-ignorable code points dropped (soft hyphen,
/// zero-width characters, BOM, bidi controls, tags, variation selectors),
/// lookalike letters folded to Latin ([`latin_lookalike`]), case folded, and
/// every run of whitespace one space.
fn fold_for_matching(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let push = |c: char| {
        if protocol::is_default_ignorable(c) {
            return;
        }
        if c.is_whitespace() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
            return;
        }
        let c = latin_lookalike(c).unwrap_or(c);
        for lower in c.to_lowercase() {
            match lower {
                // Full case folding, which lowercasing alone misses.
                'ß' => out.push_str("ss"),
                'ς' => out.push('σ'),
                lower => out.push(latin_lookalike(lower).unwrap_or(lower)),
            }
        }
    };
    if text.is_ascii() {
        // Already NFKC, and nothing in it is ignorable or a lookalike.
        text.chars().for_each(push);
    } else {
        // Ignorables go before NFKC too, so they can't keep a letter and its
        // accent from composing.
        text.chars()
            .filter(|&c| !protocol::is_default_ignorable(c))
            .nfkc()
            .for_each(push);
    }
    out
}

/// The Latin letter a Cyrillic, Greek, Armenian or other Latin character is
/// made to pass for (checked against UTS #39 confusables.txt; small capitals
/// added, and capitals map to the lowercase of the Latin capital they copy,
/// since matching ignores case). A hand-kept table of single letters, not the full UTS #39
/// skeleton: that one also maps "m" to "rn" and "d" to "cl", so "dam" would
/// match an entry "darn". Fullwidth and mathematical letters are NFKC's job.
fn latin_lookalike(c: char) -> Option<char> {
    Some(match c {
        // Cyrillic
        'А' | 'а' => 'a',
        'В' => 'b',
        'С' | 'с' => 'c',
        'Ԁ' | 'ԁ' => 'd',
        'Е' | 'е' => 'e',
        'Н' | 'Һ' | 'һ' => 'h',
        'І' | 'і' | 'Ӏ' => 'i',
        'Ј' | 'ј' => 'j',
        'К' => 'k',
        'ӏ' => 'l',
        'М' => 'm',
        'О' | 'о' => 'o',
        'Р' | 'р' => 'p',
        'Ԛ' | 'ԛ' => 'q',
        'Ѕ' | 'ѕ' => 's',
        'Т' => 't',
        'Ѵ' | 'ѵ' => 'v',
        'Ԝ' | 'ԝ' => 'w',
        'Х' | 'х' => 'x',
        'У' | 'у' | 'Ү' | 'ү' => 'y',
        // Greek
        'Α' | 'α' => 'a',
        'Β' => 'b',
        'Ϲ' | 'ϲ' => 'c',
        'Ε' => 'e',
        'Η' => 'h',
        'Ι' | 'ι' => 'i',
        'ϳ' => 'j',
        'Κ' => 'k',
        'Μ' => 'm',
        'Ν' => 'n',
        'Ο' | 'ο' => 'o',
        'Ρ' | 'ρ' => 'p',
        'Τ' => 't',
        'υ' => 'u',
        'ν' => 'v',
        'Χ' => 'x',
        'Υ' | 'γ' => 'y',
        'Ζ' => 'z',
        // Armenian
        'հ' => 'h',
        'ո' => 'n',
        'օ' => 'o',
        'զ' => 'q',
        'ս' => 'u',
        // Latin letters that pass for others, and small capitals.
        'ɑ' => 'a',
        'ʙ' => 'b',
        'ᴄ' => 'c',
        'ᴅ' => 'd',
        'ᴇ' => 'e',
        'ɡ' | 'ɢ' => 'g',
        'ʜ' => 'h',
        'ı' | 'ɩ' | 'ɪ' => 'i',
        'ȷ' | 'ᴊ' => 'j',
        'ᴋ' => 'k',
        'ʟ' => 'l',
        'ᴍ' => 'm',
        'ɴ' => 'n',
        'ᴏ' => 'o',
        'ᴘ' => 'p',
        'ʀ' => 'r',
        'ꜱ' => 's',
        'ᴛ' => 't',
        'ᴜ' => 'u',
        'ᴠ' => 'v',
        'ᴡ' => 'w',
        'ʏ' => 'y',
        'ᴢ' => 'z',
        _ => return None,
    })
}

/// `word` occurs in `text` with no letter or digit right before or after it.
fn contains_word(text: &str, word: &str) -> bool {
    let is_word_char = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !is_word_char(before) && !is_word_char(after)
    })
}

/// Open WebSockets per client IP (`limits.connections_per_ip`).
#[derive(Default)]
pub struct ConnectionCounter {
    open: std::sync::Mutex<HashMap<std::net::IpAddr, u32>>,
}

/// One open connection; dropping it (the session ended) frees the place.
pub struct ConnectionSlot {
    counter: std::sync::Arc<ConnectionCounter>,
    ip: std::net::IpAddr,
}

impl ConnectionCounter {
    /// A place for one more connection from `ip`, unless it has `cap` already
    /// (`cap` 0: no limit).
    pub fn acquire(
        counter: &std::sync::Arc<ConnectionCounter>,
        ip: std::net::IpAddr,
        cap: u32,
    ) -> Result<ConnectionSlot, Rejection> {
        let mut open = counter.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if cap > 0 && *n >= cap {
            if *n == 0 {
                open.remove(&ip);
            }
            return Err(Rejection::new(
                ErrorCode::TooManyConnections,
                format!("at most {cap} connections per address"),
            ));
        }
        *n += 1;
        Ok(ConnectionSlot {
            counter: counter.clone(),
            ip,
        })
    }

    pub fn open_from(&self, ip: std::net::IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.counter.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Most sends remembered per user in one room, whatever the rate limit allows.
const SPAM_MEMORY_CAP: usize = 4096;

/// `moderation.spam_repeats` / `spam_window_secs`, for one room: the same
/// content from one user more than `repeats` times within the window is spam.
/// Counts accepted messages, and sends on their way until they are refused.
///
/// Each user's sends in the window are remembered in order with a count per
/// content, so a check costs a hash. The memory is bounded by what the rate
/// limit lets one user send within the window (burst + rate × window, at most
/// [`SPAM_MEMORY_CAP`]): below that cap nothing is forgotten early, so
/// interleaving other messages can't hide a repeat.
pub struct SpamWindow {
    repeats: usize,
    window: Duration,
    memory: usize,
    users: crate::FastMap<String, UserSends>,
    last_sweep: Instant,
}

#[derive(Default)]
struct UserSends {
    order: VecDeque<(Instant, u64)>,
    counts: crate::FastMap<u64, usize>,
}

impl UserSends {
    fn forget_oldest(&mut self) {
        if let Some((_, print)) = self.order.pop_front() {
            self.forget(print);
        }
    }

    fn forget(&mut self, print: u64) {
        if let Some(n) = self.counts.get_mut(&print) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&print);
            }
        }
    }

    fn prune(&mut self, now: Instant, window: Duration) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= window)
        {
            self.forget_oldest();
        }
    }
}

impl SpamWindow {
    pub fn new(repeats: u32, window_secs: u64, messages_per_sec: u32, burst: u32) -> Self {
        let allowed = u64::from(burst)
            .saturating_add(u64::from(messages_per_sec).saturating_mul(window_secs))
            .saturating_add(1);
        Self {
            repeats: repeats as usize,
            window: Duration::from_secs(window_secs),
            memory: allowed.min(SPAM_MEMORY_CAP as u64) as usize,
            users: crate::FastMap::default(),
            last_sweep: Instant::now(),
        }
    }

    fn fingerprint(content: &str) -> u64 {
        let mut h = DefaultHasher::new();
        content.hash(&mut h);
        h.finish()
    }

    /// Drops users whose sends all left the window, at most once per window.
    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.last_sweep) < self.window.max(Duration::from_secs(1)) {
            return;
        }
        self.last_sweep = now;
        let window = self.window;
        self.users.retain(|_, sends| {
            sends.prune(now, window);
            !sends.order.is_empty()
        });
    }

    /// Whether one more send of `content` by `user` would be spam, counting
    /// `pending` identical sends not yet accepted.
    pub fn is_spam(&mut self, user: &str, content: &str, pending: usize) -> bool {
        let now = Instant::now();
        self.sweep(now);
        let accepted = match self.users.get_mut(user) {
            Some(sends) => {
                sends.prune(now, self.window);
                sends
                    .counts
                    .get(&Self::fingerprint(content))
                    .copied()
                    .unwrap_or(0)
            }
            None => 0,
        };
        accepted + pending >= self.repeats
    }

    /// Records a send on its way to acceptance; returns its fingerprint for
    /// [`SpamWindow::unrecord`] if it is not accepted after all.
    pub fn record(&mut self, user: &str, content: &str) -> u64 {
        let print = Self::fingerprint(content);
        let sends = match self.users.get_mut(user) {
            Some(sends) => sends,
            None => self.users.entry(user.to_string()).or_default(),
        };
        if sends.order.len() >= self.memory {
            sends.forget_oldest();
        }
        sends.order.push_back((Instant::now(), print));
        *sends.counts.entry(print).or_default() += 1;
        print
    }

    /// A recorded send was refused: it doesn't count.
    pub fn unrecord(&mut self, user: &str, print: u64) {
        if let Some(sends) = self.users.get_mut(user) {
            if let Some(at) = sends.order.iter().rposition(|(_, p)| *p == print) {
                sends.order.remove(at);
                sends.forget(print);
            }
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.users.values().map(|u| u.order.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_words_only_case_insensitive() {
        let m = Moderation::new(&["Darn".into(), "no way".into()]);
        assert!(m.check("oh DARN!").is_err());
        assert!(m.check("darn").is_err());
        assert!(m.check("darned socks").is_ok());
        assert!(m.check("undarn").is_ok());
        assert!(m.check("no way, really").is_err());
        assert!(m.check("noway").is_ok());
        assert!(Moderation::new(&[]).check("anything").is_ok());
    }

    fn bad() -> Moderation {
        Moderation::new(&["bad".into(), "very bad".into(), "crap".into()])
    }

    #[test]
    fn homoglyphs_are_folded_to_latin() {
        let m = bad();
        for text in [
            "b\u{0430}d",                // Cyrillic а
            "B\u{0410}D",                // Cyrillic А
            "\u{0392}\u{0391}D",         // Greek Β Α
            "b\u{03B1}d",                // Greek α
            "\u{0441}r\u{0430}p!",       // Cyrillic с, а
            "\u{0299}a\u{1D05}",         // small capitals ʙ, ᴅ
            "\u{FF42}\u{0430}\u{200B}d", // fullwidth, Cyrillic and invisible at once
        ] {
            assert!(m.check(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn invisible_characters_are_dropped() {
        let m = bad();
        for text in [
            "b\u{200B}ad",
            "b\u{00AD}ad",
            "b\u{200C}a\u{200D}d",
            "\u{FEFF}bad",
            "b\u{2060}ad",
            "b\u{E0061}ad\u{E007F}",
            "ba\u{FE0F}d",
            "b\u{202E}ad",
        ] {
            assert!(m.check(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn fullwidth_styled_and_cased_forms_match() {
        let m = bad();
        for text in [
            "\u{FF42}\u{FF41}\u{FF44}",    // ｂａｄ
            "\u{FF22}\u{FF21}\u{FF24}",    // ＢＡＤ
            "\u{1D41B}\u{1D41A}\u{1D41D}", // mathematical bold
            "\u{24D1}\u{24D0}\u{24D3}",    // circled
            "BaD",
        ] {
            assert!(m.check(text).is_err(), "{text:?}");
        }
        let m = Moderation::new(&["strasse".into()]);
        assert!(m.check("die Straße").is_err(), "ß folds to ss");
        let m = Moderation::new(&["ｂａｄ".into()]);
        assert!(m.check("bad").is_err(), "entries are folded too");
    }

    #[test]
    fn whitespace_runs_match_one_space() {
        let m = Moderation::new(&["very bad".into(), "no  way".into()]);
        for text in [
            "very  bad",
            "very\tbad",
            "very\n\n bad",
            "very\u{00A0}bad",
            "very \u{200B} bad",
            "there's No  way",
            "no way",
        ] {
            assert!(m.check(text).is_err(), "{text:?}");
        }
        assert!(m.check("verybad").is_ok());
    }

    #[test]
    fn folding_keeps_whole_words() {
        let m = bad();
        for text in [
            "scrap metal",
            "s\u{0441}rap",
            "crappy",
            "badge",
            "\u{FF42}\u{FF41}\u{FF44}ge",
            "b\u{200B}adge",
            "abad",
            "very badly",
            "\u{0432}ad",
            "bed",
            "good",
        ] {
            assert!(m.check(text).is_ok(), "{text:?}");
        }
        // Punctuation is still a word boundary.
        assert!(m.check("(b\u{0430}d)").is_err());
    }

    #[test]
    fn folding_is_what_the_docs_say() {
        assert_eq!(fold_for_matching("Hello  World"), "hello world");
        assert_eq!(fold_for_matching("ｂ\u{00AD}\u{0430}Ｄ \t x"), "bad x");
        // The Cyrillic words that are not lookalikes keep their letters.
        assert_eq!(fold_for_matching("Привет"), "пpивeт");
    }

    #[test]
    fn the_rate_limiter_forgets_users_that_went_quiet() {
        // 1000/s with a burst of 2: a user's state is back to "full" after 2 ms.
        let limiter = SendLimiter::new(1000, 2);
        for i in 0..500 {
            assert!(limiter.check(&Arc::from(format!("user-{i}"))).is_ok());
        }
        assert_eq!(limiter.len(), 500);
        std::thread::sleep(std::time::Duration::from_millis(20));
        limiter.sweep();
        assert_eq!(limiter.len(), 0, "a sweep keeps only users still limited");
    }

    #[test]
    fn spam_counts_same_content_per_user_in_window() {
        let mut s = SpamWindow::new(2, 60, 5, 10);
        assert!(!s.is_spam("u", "hi", 0));
        s.record("u", "hi");
        assert!(!s.is_spam("u", "hi", 0));
        s.record("u", "hi");
        assert!(s.is_spam("u", "hi", 0));
        assert!(!s.is_spam("u", "hello", 0));
        assert!(!s.is_spam("v", "hi", 0));
        assert!(s.is_spam("v", "hi", 2), "pending sends count");
        let print = s.record("v", "yo");
        s.record("v", "yo");
        assert!(s.is_spam("v", "yo", 0));
        s.unrecord("v", print);
        assert!(!s.is_spam("v", "yo", 0), "refused sends don't count");
    }

    #[test]
    fn spam_window_expires() {
        let mut s = SpamWindow::new(1, 0, 5, 10);
        s.record("u", "hi");
        assert!(!s.is_spam("u", "hi", 0));
        assert_eq!(s.remembered(), 0, "memory is pruned");
    }

    #[test]
    fn other_messages_in_between_do_not_hide_a_repeat() {
        // 5/s with a burst of 10 over 10 s: at most 60 sends fit in the window.
        let mut s = SpamWindow::new(3, 10, 5, 10);
        for _ in 0..3 {
            s.record("u", "buy now");
            for i in 0..19 {
                assert!(!s.is_spam("u", &format!("filler {i}"), 0));
                s.record("u", &format!("filler {i}"));
            }
        }
        assert!(
            s.is_spam("u", "buy now", 0),
            "60 sends, the repeat remembered"
        );
    }

    #[test]
    fn large_repeat_counts_work_and_memory_stays_bounded() {
        let mut s = SpamWindow::new(300, 10, 1000, 1000);
        for _ in 0..300 {
            s.record("u", "same");
        }
        assert!(
            s.is_spam("u", "same", 0),
            "more than 256 repeats are counted"
        );
        let mut flood = SpamWindow::new(3, 60, 1_000_000, 1_000_000);
        for i in 0..10_000 {
            flood.record("u", &i.to_string());
        }
        assert_eq!(
            flood.remembered(),
            SPAM_MEMORY_CAP,
            "a cap, whatever the limits"
        );
    }

    #[test]
    fn connection_slots_are_counted_and_freed() {
        let counter = std::sync::Arc::new(ConnectionCounter::default());
        let ip: std::net::IpAddr = [127, 0, 0, 1].into();
        let a = ConnectionCounter::acquire(&counter, ip, 2).unwrap();
        let _b = ConnectionCounter::acquire(&counter, ip, 2).unwrap();
        let e = ConnectionCounter::acquire(&counter, ip, 2).err().unwrap();
        assert_eq!(e.code, ErrorCode::TooManyConnections);
        drop(a);
        assert_eq!(counter.open_from(ip), 1);
        assert!(
            ConnectionCounter::acquire(&counter, ip, 0).is_ok(),
            "0 = no limit"
        );
    }

    #[test]
    fn rate_limit_reports_when_to_retry() {
        let l = SendLimiter::new(1, 2);
        let (u, v): (Arc<str>, Arc<str>) = (Arc::from("u"), Arc::from("v"));
        assert!(l.check(&u).is_ok());
        assert!(l.check(&u).is_ok());
        let e = l.check(&u).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.retry_after_ms.unwrap() > 0 && e.retry_after_ms.unwrap() <= 1000);
        assert!(l.check(&v).is_ok(), "per user");
        assert_eq!(l.len(), 2);
    }
}
