//! The text rules of the redactor (`Beamlens.Redactor`): secrets and personal
//! data found by their shape in free text (logs, exception messages, Lua
//! output, SQL) and replaced by markers.
//!
//! Every rule is a `regex` crate expression: finite automata, so each rule
//! costs time linear in the text whatever the text is (the PCRE rules this
//! replaces backtracked: 20 KB of `"a-"` after "password" took over 10 s).
//! Where a rule needs more than a regex can say (a Luhn checksum, a Basic
//! credential that decodes to `user:password`, a node name that looks like an
//! e-mail address), the regex finds the candidates and plain code decides.
//! Text is handled as bytes: it need not be UTF-8, and every match starts and
//! ends at an ASCII character, so valid UTF-8 stays valid.

use std::borrow::Cow;

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

/// What a masked secret becomes.
pub const MASK: &str = "[REDACTED]";

/// Key words whose values are secret, by default. A key ending in one of
/// these (in any letter case, with `_`, `-` or nothing between its parts,
/// optionally plural) marks a secret: `password`, `DB_PassWord`, `apiKey`,
/// `x-api-key`, `sessionId`, `client_secrets`.
pub const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "account_key",
    "shared_access_key",
    "client_secret",
    "session_id",
    "cookie",
    "credential",
    "credentials",
    "signature",
    "secret_key_base",
    "userinfo",
    "authorization",
    "auth",
];

/// How a match is rewritten.
#[derive(Clone, Copy, Debug)]
enum Action {
    /// The whole match becomes `[REDACTED]`.
    Mask,
    /// The whole match becomes this marker.
    Marker(&'static str),
    /// The text up to the first of these bytes (and the blanks after it) is
    /// kept, the rest becomes `[REDACTED]`.
    KeepPrefix(&'static [u8]),
    /// The first word is kept, the rest becomes ` [REDACTED]`.
    KeepWord,
    /// `scheme://user:` kept, the password masked, `@` kept.
    UrlPassword,
    /// `user:` kept, the password masked, `@host` kept.
    UserPassword,
    /// `Authorization: <scheme> ` kept, the credential masked.
    Authorization,
    /// `Basic <base64>` masked when the base64 decodes to `user:password`.
    Basic,
    /// The value of a secret key, with its quotes kept.
    KeyValue,
    /// A 40-character base64 run with upper case, lower case and digits: the
    /// shape of an AWS secret access key.
    AwsSecret,
    /// An e-mail address, unless it is a node name.
    Email,
    /// A card number, if it has a network prefix and a valid Luhn checksum.
    Card,
}

struct Rule {
    regex: Regex,
    action: Action,
}

/// A compiled set of rules. Cheap to share between threads.
pub struct Redactor {
    rules: Vec<Rule>,
    /// All rules in one automaton: one pass over short text says which
    /// rules can match at all (most text has no secret).
    set: RegexSet,
}

/// Text up to this size is scanned with the rule set first.
const SET_MAX_BYTES: usize = 4_096;

/// Prefixed provider tokens: the prefix says what they are.
const TOKENS: &str = concat!(
    r"(?:",
    // Anthropic, OpenAI (and compatible) keys.
    r"\bsk-ant-[A-Za-z0-9_-]{8,}",
    r"|\bsk-[A-Za-z0-9][A-Za-z0-9_-]{19,}",
    // Stripe.
    r"|\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{10,}",
    r"|\bwhsec_[A-Za-z0-9]{20,}",
    // AWS access key ids.
    r"|\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b",
    // GitHub, GitLab.
    r"|gh[pousr]_[A-Za-z0-9]{30,}",
    r"|github_pat_[A-Za-z0-9_]{20,}",
    r"|gl(?:pat|ptt|dt|rt|soat|cbt|imt|ft|agent)-[A-Za-z0-9_-]{20,}",
    // Slack.
    r"|xox[abposre]-[A-Za-z0-9-]{10,}",
    r"|\bxapp-[A-Za-z0-9-]{10,}",
    // Google.
    r"|AIza[0-9A-Za-z_-]{35}",
    r"|\bya29\.[0-9A-Za-z_-]{20,}",
    // SendGrid, Hugging Face, npm, PyPI, Groq, Replicate, Perplexity,
    // Shopify, DigitalOcean, Square, Mailgun, Twilio.
    r"|\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}",
    r"|\bhf_[A-Za-z0-9]{30,}",
    r"|\bnpm_[A-Za-z0-9]{36}",
    r"|\bpypi-[A-Za-z0-9_-]{50,}",
    r"|\bgsk_[A-Za-z0-9]{40,}",
    r"|\br8_[A-Za-z0-9]{30,}",
    r"|\bpplx-[A-Za-z0-9]{40,}",
    r"|\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}",
    r"|\bdo[por]_v1_[a-f0-9]{64}",
    r"|\bsq0(?:atp|csp)-[0-9A-Za-z_-]{22,}",
    r"|\bkey-[0-9a-f]{32}\b",
    r"|\bSK[0-9a-fA-F]{32}\b",
    r")"
);

impl Redactor {
    /// Builds the rules. `words` are the secret key words (the defaults, and
    /// any the user added); `defaults` turns the shape rules on.
    pub fn new(words: &[String], defaults: bool) -> Result<Self, regex::Error> {
        let mut rules = Vec::new();
        let mut patterns = Vec::new();
        let mut add = |pattern: &str, action: Action| -> Result<(), regex::Error> {
            patterns.push(pattern.to_string());
            let regex = RegexBuilder::new(pattern)
                .unicode(false)
                .size_limit(32 * 1024 * 1024)
                .dfa_size_limit(16 * 1024 * 1024)
                .build()?;
            rules.push(Rule { regex, action });
            Ok(())
        };

        if defaults {
            // PEM private keys, to their end or to the end of the text.
            add(
                r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?s:.)*?(?:-----END[A-Z ]*PRIVATE KEY-----|\z)",
                Action::Marker("[REDACTED PRIVATE KEY]"),
            )?;
            // JSON Web Tokens: header and payload are base64url JSON ("eyJ").
            add(
                r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
                Action::Mask,
            )?;
            // scheme://user:password@host; the password may hold `@` or `/`
            // (unencoded): everything up to the token's last `@` goes.
            add(
                r#"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@"'<>]*:)([^\s"'<>]+)@"#,
                Action::UrlPassword,
            )?;
            // Authorization headers, whatever the scheme.
            add(
                r#"(?i)\b((?:proxy-)?authorization(?:\\?["']?\s*(?:=>|[:=])|\\?["']\s*,)\s*\\?["']?)((?:basic|bearer|digest|token|negotiate)\s+)?(\[REDACTED[^\]]{0,24}\]|[^\s"',;}\[\]\\]+)"#,
                Action::Authorization,
            )?;
            // Bearer tokens anywhere.
            add(
                r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]{8,}=*",
                Action::KeepWord,
            )?;
            // Basic credentials anywhere: base64 of "user:password".
            add(r"(?i)\b(basic)\s+([A-Za-z0-9+/]{4,}={0,2})", Action::Basic)?;
            // Cookie headers: the whole value.
            add(
                r#"(?i)\b((?:set-)?cookie\\?["']?\s*[:=]\s*)[^\r\n"\\]+"#,
                Action::KeepPrefix(b":="),
            )?;
            add(TOKENS, Action::Mask)?;
            // Cloud connection strings: `AccountKey=...;`, SAS signatures.
            add(
                r#"(?i)\b((?:AccountKey|SharedAccessKey|SharedAccessSignature|sig)=)[^;&\s"']+"#,
                Action::KeepPrefix(b"="),
            )?;
        }

        let words: Vec<&str> = words
            .iter()
            .map(String::as_str)
            .filter(|w| !w.eq_ignore_ascii_case("authorization"))
            .collect();
        if !words.is_empty() {
            add(&key_value_pattern(&words), Action::KeyValue)?;
        }

        if defaults {
            // user:password@host outside URLs (`redis: app:pw@cache:6379`).
            add(
                r#"\b([A-Za-z0-9._-]+:)([^\s"'<>\[\]:]+)@([A-Za-z0-9])"#,
                Action::UserPassword,
            )?;
            // `curl -u user:password`, `--user user:password`.
            add(
                r"((?:^|\s)(?:-u|--user|--proxy-user)(?:\s+|=)[^\s:]+:)\S+",
                Action::KeepPrefix(b":"),
            )?;
            // AWS secret access keys without their key name.
            add(r"[A-Za-z0-9/+=]{40,}", Action::AwsSecret)?;
            add(
                r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b",
                Action::Email,
            )?;
            add(r"\b(?:[0-9][ .-]?){12,18}[0-9]\b", Action::Card)?;
        }

        let set = RegexSetBuilder::new(&patterns)
            .unicode(false)
            .size_limit(64 * 1024 * 1024)
            .dfa_size_limit(16 * 1024 * 1024)
            .build()?;
        Ok(Redactor { rules, set })
    }

    /// Redacts `text`. `nodes` are names that look like e-mail addresses and
    /// must be kept (this node and its peers). Returns `Cow::Borrowed` when
    /// nothing was found.
    pub fn redact<'t>(&self, text: &'t [u8], nodes: &[&[u8]]) -> Cow<'t, [u8]> {
        let mut current: Cow<'t, [u8]> = Cow::Borrowed(text);
        // A rule that does not match the text cannot match after the others
        // ran: what they put in (`[REDACTED]`, `[EMAIL]`, `[CARD]`) is
        // skipped by every rule.
        let candidates = (text.len() <= SET_MAX_BYTES).then(|| self.set.matches(text));
        for (i, rule) in self.rules.iter().enumerate() {
            if candidates.as_ref().is_some_and(|set| !set.matched(i)) {
                continue;
            }
            if let Some(new) = rule.apply(&current, nodes) {
                current = Cow::Owned(new);
            }
        }
        current
    }
}

impl Rule {
    /// The text with this rule applied, or `None` when nothing changed.
    /// Only whole matches are asked of the regex: its parts are found by
    /// the rewrite, which knows their shape (capture groups would cost
    /// microseconds per match).
    fn apply(&self, text: &[u8], nodes: &[&[u8]]) -> Option<Vec<u8>> {
        let mut out: Vec<u8> = Vec::new();
        let mut last = 0;
        let mut emit = |start: usize, end: usize, new: &[u8]| {
            if last == 0 && out.is_empty() {
                out.reserve(text.len() + 64);
            }
            out.extend_from_slice(&text[last..start]);
            out.extend_from_slice(new);
            last = end;
        };
        let mut changed = false;
        for m in self.regex.find_iter(text) {
            if let Some(new) = rewrite(self.action, m.as_bytes(), nodes) {
                emit(m.start(), m.end(), &new);
                changed = true;
            }
        }
        if changed {
            out.extend_from_slice(&text[last..]);
            Some(out)
        } else {
            None
        }
    }
}

/// `key=value`, `key: value`, `"key":"value"`, `\"key\":\"value\"`,
/// `key => value`, `{"key", "value"}`, `key: [a, b]`, `key: %{...}`.
fn key_value_pattern(words: &[&str]) -> String {
    let mut words: Vec<String> = words
        .iter()
        .map(|w| w.to_ascii_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    words.sort_by_key(|w| std::cmp::Reverse(w.len()));
    words.dedup();
    let alternation = words
        .iter()
        .map(|word| {
            word.split(['_', '-'])
                .map(regex::escape)
                .collect::<Vec<_>>()
                .join("[_-]?")
        })
        .collect::<Vec<_>>()
        .join("|");
    format!(
        concat!(
            r#"(?i)\b("#,
            r#"([A-Za-z0-9_.-]*?(?:{})s?)"#,
            r#"(?:\\?["']?\s*(?:=>|[:=])|\\?["']\s*,)\s*)"#,
            r#"(\\"[^"\\]*\\"|"[^"]*"|'[^']*'|~c"[^"]*"|~c'[^']*'|\[[^\[\]]*\]|\{{[^{{}}]*\}}|%\{{[^{{}}]*\}}"#,
            r#"|[^\s"',;&}}\])\[{{%\\][^\s"',;&}}\])\\]*)"#
        ),
        alternation
    )
}

/// The replacement of a match (`None`: keep it).
fn rewrite<'m>(action: Action, whole: &'m [u8], nodes: &[&[u8]]) -> Option<Cow<'m, [u8]>> {
    let mask = MASK.as_bytes();
    let join = |parts: &[&[u8]]| Some(Cow::Owned(parts.concat()));
    match action {
        Action::Mask => Some(Cow::Borrowed(mask)),
        Action::Marker(marker) => Some(Cow::Borrowed(marker.as_bytes())),
        Action::KeepPrefix(delimiters) => {
            let end = position(whole, |c| delimiters.contains(&c)).map_or(whole.len(), |i| i + 1);
            join(&[&whole[..skip_blanks(whole, end)], mask])
        }
        Action::KeepWord => {
            let end = position(whole, |c| c.is_ascii_whitespace()).unwrap_or(whole.len());
            join(&[&whole[..end], b" ", mask])
        }
        Action::UrlPassword => {
            // scheme://user:password@
            let scheme = find(whole, b"://").map_or(0, |i| i + 3);
            let colon = scheme + position(&whole[scheme..], |c| c == b':')?;
            let password = &whole[colon + 1..whole.len() - 1];
            (password != mask).then(|| Cow::Owned([&whole[..=colon], mask, b"@"].concat()))
        }
        Action::UserPassword => {
            // user:password@h
            let colon = position(whole, |c| c == b':')?;
            let at = whole.len() - 2;
            let password = &whole[colon + 1..at];
            (password != mask).then(|| Cow::Owned([&whole[..=colon], mask, &whole[at..]].concat()))
        }
        Action::Authorization => {
            let (prefix, value) = split_key_value(whole)?;
            // The opening quote of the value stays with the prefix.
            let quote = match value {
                [b'\\', b'"' | b'\'', ..] => 2,
                [b'"' | b'\'', ..] => 1,
                _ => 0,
            };
            let (prefix, value) = whole.split_at(prefix.len() + quote);
            let mut scheme_end = 0;
            let lower = value.to_ascii_lowercase();
            for scheme in [&b"basic"[..], b"bearer", b"digest", b"token", b"negotiate"] {
                if lower.starts_with(scheme)
                    && value.get(scheme.len()).is_some_and(u8::is_ascii_whitespace)
                {
                    let end = skip_blanks(value, scheme.len());
                    if end < value.len() {
                        scheme_end = end;
                    }
                }
            }
            let credential = &value[scheme_end..];
            if credential.starts_with(b"[REDACTED") {
                None
            } else {
                join(&[prefix, &value[..scheme_end], mask])
            }
        }
        Action::Basic => {
            let end = position(whole, |c| c.is_ascii_whitespace())?;
            let encoded = &whole[skip_blanks(whole, end)..];
            decodes_to_credentials(encoded)
                .then(|| Cow::Owned([&whole[..end], b" ", mask].concat()))
        }
        Action::KeyValue => {
            let (prefix, value) = split_key_value(whole)?;
            let key_end = position(whole, |c| {
                !(c.is_ascii_alphanumeric() || b"_.-".contains(&c))
            })
            .unwrap_or(whole.len());
            key_value(prefix, &whole[..key_end], value).map(Cow::Owned)
        }
        Action::AwsSecret => {
            let has = |f: fn(&u8) -> bool| whole.iter().any(f);
            let aws = whole.len() == 40
                && has(u8::is_ascii_uppercase)
                && has(u8::is_ascii_lowercase)
                && has(u8::is_ascii_digit)
                && !whole.contains(&b'=');
            aws.then_some(Cow::Borrowed(mask))
        }
        Action::Email => (!nodes.contains(&whole)).then_some(Cow::Borrowed(b"[EMAIL]")),
        Action::Card => is_card(whole).then_some(Cow::Borrowed(b"[CARD]")),
    }
}

/// Splits a match of a `key<separator>value` rule after its separator:
/// `key`, then `\`, a quote, blanks, one of `=>`, `:`, `=`, `,`, blanks,
/// then an optional quote (which belongs to the value for the key-value rule
/// and to the prefix for the Authorization rule; the callers know which).
fn split_key_value(whole: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut i = position(whole, |c| {
        b"\\\"':=,".contains(&c) || c.is_ascii_whitespace()
    })?;
    if whole.get(i) == Some(&b'\\') {
        i += 1;
    }
    if matches!(whole.get(i), Some(b'"' | b'\'')) {
        i += 1;
    }
    i = skip_blanks(whole, i);
    if whole[i..].starts_with(b"=>") {
        i += 2;
    } else if matches!(whole.get(i), Some(b':' | b'=' | b',')) {
        i += 1;
    }
    i = skip_blanks(whole, i);
    Some((&whole[..i], &whole[i..]))
}

fn position(text: &[u8], f: impl Fn(u8) -> bool) -> Option<usize> {
    text.iter().position(|&c| f(c))
}

fn find(text: &[u8], needle: &[u8]) -> Option<usize> {
    text.windows(needle.len()).position(|w| w == needle)
}

fn skip_blanks(text: &[u8], from: usize) -> usize {
    from + text[from..]
        .iter()
        .take_while(|c| c.is_ascii_whitespace())
        .count()
}

/// `prefix` is the key and separator, `value` what follows.
fn key_value(prefix: &[u8], key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    let keep = value.starts_with(b"[REDACTED")
        || value == b"?"
        || (value.len() > 1 && value[0] == b'$' && value[1].is_ascii_digit())
        // A count under a plural key: `input_tokens: 1200`.
        || (is_plural(key) && value.iter().all(|c| c.is_ascii_digit() || *c == b'.'));
    if keep {
        return None;
    }
    let masked: &[u8] = match value {
        [b'\\', b'"', ..] => br#"\"[REDACTED]\""#,
        [b'"', ..] => br#""[REDACTED]""#,
        [b'\'', ..] => b"'[REDACTED]'",
        _ => MASK.as_bytes(),
    };
    Some([prefix, masked].concat())
}

/// Whether a key that matched a secret word ends in an `s` the word does not
/// have (`tokens`, not `credentials` or `pass`).
fn is_plural(key: &[u8]) -> bool {
    let lower = key.to_ascii_lowercase();
    lower.ends_with(b"s") && !lower.ends_with(b"credentials") && !lower.ends_with(b"ss")
}

/// Whether `text` is base64 for `user:password`.
fn decodes_to_credentials(text: &[u8]) -> bool {
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut decoded = Vec::with_capacity(text.len() * 3 / 4);
    for &c in text.iter().take_while(|c| **c != b'=') {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return false,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            decoded.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    match decoded.iter().position(|c| *c == b':') {
        Some(i) => i > 0 && decoded.iter().all(|c| (0x20..0x7f).contains(c)),
        None => false,
    }
}

/// 13 to 19 digits (separators dropped), a card network's first digit and a
/// valid Luhn checksum.
pub fn is_card(text: &[u8]) -> bool {
    let mut digits = [0u8; 19];
    let mut n = 0;
    for &c in text {
        if c.is_ascii_digit() {
            if n == digits.len() {
                return false;
            }
            digits[n] = c - b'0';
            n += 1;
        }
    }
    if n < 13 || !(2..=6).contains(&digits[0]) {
        return false;
    }
    let mut sum = 0u32;
    for (i, &d) in digits[..n].iter().rev().enumerate() {
        let d = u32::from(d);
        sum += match (i % 2 == 1, d * 2) {
            (true, doubled) if doubled > 9 => doubled - 9,
            (true, doubled) => doubled,
            (false, _) => d,
        };
    }
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn redactor() -> Redactor {
        let words: Vec<String> = SECRET_WORDS.iter().map(|w| w.to_string()).collect();
        Redactor::new(&words, true).unwrap()
    }

    fn redact(text: &str) -> String {
        String::from_utf8(redactor().redact(text.as_bytes(), &[]).into_owned()).unwrap()
    }

    #[test]
    fn shapes() {
        let cases = [
            ("apiKey=abc123def", "apiKey=[REDACTED]"),
            ("sessionId: 9f8e7d6c", "sessionId: [REDACTED]"),
            ("DB_PassWord=hunter2", "DB_PassWord=[REDACTED]"),
            (r#"{\"password\":\"hunter2\"}"#, r#"{\"password\":\"[REDACTED]\"}"#),
            ("tokens: [\"a1\", \"b2\"]", "tokens: [REDACTED]"),
            ("input_tokens: 1200, output_tokens: 35", "input_tokens: 1200, output_tokens: 35"),
            ("redis app:p@ss/w0rd@cache:6379", "redis app:[REDACTED]@cache:6379"),
            ("postgres://u:p@ss/w@db/app", "postgres://u:[REDACTED]@db/app"),
            (
                "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=abc+def/ghi==;EndpointSuffix=core",
                "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=[REDACTED];EndpointSuffix=core",
            ),
            ("card 4111.1111.1111.1111 ok", "card [CARD] ok"),
            ("hdr Basic YWxhZGRpbjpvcGVuc2VzYW1l", "hdr Basic [REDACTED]"),
            ("basic authentication is disabled", "basic authentication is disabled"),
            ("key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY end", "key [REDACTED] end"),
            (
                "commit 3f786850e387550fdab836ed7e6dc881de23001b",
                "commit 3f786850e387550fdab836ed7e6dc881de23001b",
            ),
            ("curl -u admin:s3cret http://x", "curl -u admin:[REDACTED] http://x"),
            ("Authorization: Bearer [REDACTED]", "Authorization: Bearer [REDACTED]"),
            (
                r#"[{"authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}]"#,
                r#"[{"authorization", "Basic [REDACTED]"}]"#,
            ),
            (r#"{\"Authorization\":\"Bearer abc\"}"#, r#"{\"Authorization\":\"Bearer [REDACTED]\"}"#),
            ("x-api-key: abcdef123", "x-api-key: [REDACTED]"),
            ("ghp_16C7e42F292c6912E7710c838347Ae178B4a", "[REDACTED]"),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text}");
        }
    }

    #[test]
    fn idempotent() {
        for text in [
            "password=x user=bob@example.com",
            "ecto://app:pw@db/x",
            "redis app:pw@cache",
            "Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        ] {
            let once = redact(text);
            assert_eq!(redact(&once), once);
        }
    }

    #[test]
    fn nodes_are_kept() {
        let r = redactor();
        let out = r.redact(
            b"node beamlens@host.example.com up",
            &[b"beamlens@host.example.com"],
        );
        assert_eq!(&*out, b"node beamlens@host.example.com up");
    }

    #[test]
    fn hostile_text_is_linear() {
        let r = redactor();
        let unit = |n: usize| format!("password {}", "a-".repeat(n));
        // Warm up, then compare 64 KB with 512 KB: 8x the text, well under
        // 64x the time (a quadratic rule would take 64x).
        let _ = r.redact(unit(1_000).as_bytes(), &[]);
        // The fastest of three runs: a loaded machine only adds time.
        let time = |text: &str| {
            (0..3)
                .map(|_| {
                    let start = Instant::now();
                    let _ = r.redact(text.as_bytes(), &[]);
                    start.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let small = time(&unit(32_000));
        let large = time(&unit(256_000));
        assert!(large < small * 30.0 + 0.05, "{small} s vs {large} s");
    }
}
