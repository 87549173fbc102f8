//! The server's authorised-keys file: which client keys may connect, and
//! what each may do. Sans IO apart from [`AuthorizedKeys::load`].
//!
//! One client per line, like OpenSSH's `authorized_keys`: optional
//! whitespace-separated options, then the base64 public key, then an
//! optional comment (the rest of the line). `#` starts a comment line and
//! blank lines are ignored:
//!
//! ```text
//! # a line with just a key (and a comment) is valid
//! +kjneum+6xOI/PjCUQw0g+Q4HWpPyXUL6X0kZvQRFUU= alice's laptop
//! name=boat-17 services=pop3,smtp xGoUclExgkvCQUEnRMp3SkXD7hwzO2KX0xysQUugnDA= MV Example
//! ```
//!
//! Options:
//! - `name=NAME`: what log lines (and metrics) call this client instead of
//!   the first characters of its key; letters, digits, `.`, `_`, `-`, at
//!   most [`MAX_NAME_LEN`], unique in the file.
//! - `services=A,B`: the services this client may open streams to (names
//!   from the server's `[services]`); without it, every service.
//!
//! An unknown option, a malformed value, a key or name listed twice is an
//! error naming the file and line: the whole file is refused (at start the
//! server does not start; on reload the previous set stays).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Result, anyhow};

use crate::link::keys::{decode_key, encode_key, is_example_key};

/// The longest `name=` value.
pub const MAX_NAME_LEN: usize = 64;

/// What one line of the file says about its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// `name=`: the client's name in log lines and metrics.
    pub name: Option<String>,
    /// `services=`: the services it may open; `None`: all of them.
    pub services: Option<BTreeSet<String>>,
}

impl ClientOptions {
    /// Whether this client may open a stream to `service`.
    pub fn allows(&self, service: &str) -> bool {
        self.services.as_ref().is_none_or(|s| s.contains(service))
    }
}

/// One authorised key with its options and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    pub key: [u8; 32],
    pub options: ClientOptions,
    /// Line number in the file (1-based); 0 when not from a file.
    pub line: usize,
}

/// The client public keys a server accepts, with their options.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedKeys {
    entries: HashMap<[u8; 32], AuthorizedKey>,
}

/// A problem on one line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub problem: String,
}

/// How a client is called in log lines when it has no `name=`: the first
/// characters of its base64 key.
pub fn key_prefix(key: &[u8; 32]) -> String {
    encode_key(key)[..8].to_owned()
}

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses one option token (`name=VALUE`) into `opts`.
fn parse_option(token: &str, opts: &mut ClientOptions) -> std::result::Result<(), String> {
    let Some((opt, value)) = token.split_once('=').filter(|_| looks_like_option(token)) else {
        return Err(format!(
            "`{token}` is neither a base64 32-byte key nor an option (name=..., services=...)"
        ));
    };
    match opt {
        "name" => {
            if opts.name.is_some() {
                return Err("option name= given twice".into());
            }
            if !valid_word(value) || value.len() > MAX_NAME_LEN {
                return Err(format!(
                    "name={value:?}: a name is 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-'"
                ));
            }
            opts.name = Some(value.to_owned());
        }
        "services" => {
            if opts.services.is_some() {
                return Err("option services= given twice".into());
            }
            let mut set = BTreeSet::new();
            for s in value.split(',') {
                if !valid_word(s) {
                    return Err(format!(
                        "services={value:?}: a comma-separated list of service names (no spaces, none empty)"
                    ));
                }
                set.insert(s.to_owned());
            }
            opts.services = Some(set);
        }
        _ => {
            return Err(format!("unknown option `{opt}` (known: name=, services=)"));
        }
    }
    Ok(())
}

/// `word=...` with a lower-case word: meant as an option, not a key.
fn looks_like_option(token: &str) -> bool {
    token
        .split_once('=')
        .is_some_and(|(opt, _)| !opt.is_empty() && opt.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Parses one non-comment line: options, key, comment.
fn parse_line(line: &str) -> std::result::Result<([u8; 32], ClientOptions), String> {
    let mut opts = ClientOptions::default();
    for token in line.split_whitespace() {
        if let Some(key) = decode_key(token) {
            // The rest of the line is a comment.
            return Ok((key, opts));
        }
        if opts == ClientOptions::default() && !looks_like_option(token) {
            return Err("not a base64 32-byte key".into());
        }
        parse_option(token, &mut opts)?;
    }
    Err("options but no base64 32-byte key".into())
}

impl AuthorizedKeys {
    /// Loads an authorised-keys file; errors read `PATH:LINE: problem`.
    pub fn load(path: &Path) -> Result<AuthorizedKeys> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
        Self::parse_lines(&text)
            .map_err(|e| anyhow!("{}:{}: {}", path.display(), e.line, e.problem))
    }

    /// Parses authorised-keys text; errors read `line N: problem`.
    pub fn parse(text: &str) -> Result<AuthorizedKeys> {
        Self::parse_lines(text).map_err(|e| anyhow!("line {}: {}", e.line, e.problem))
    }

    /// The first bad line's problem, or the keys.
    pub fn parse_lines(text: &str) -> std::result::Result<AuthorizedKeys, LineError> {
        let mut entries: HashMap<[u8; 32], AuthorizedKey> = HashMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |problem: String| LineError { line: n, problem };
            let (key, options) = parse_line(line).map_err(err)?;
            if let Some(first) = entries.get(&key) {
                return Err(err(format!("key already listed on line {}", first.line)));
            }
            if let Some(name) = &options.name
                && let Some(first) = names.insert(name.clone(), n)
            {
                return Err(err(format!("name={name} already used on line {first}")));
            }
            entries.insert(
                key,
                AuthorizedKey {
                    key,
                    options,
                    line: n,
                },
            );
        }
        Ok(AuthorizedKeys { entries })
    }

    /// A `services=` naming a service the server does not have is an error
    /// (most likely a typo): `Err` names the line.
    pub fn check_services(
        &self,
        known: impl Fn(&str) -> bool,
    ) -> std::result::Result<(), LineError> {
        let mut entries: Vec<_> = self.entries.values().collect();
        entries.sort_by_key(|e| e.line);
        for e in entries {
            for s in e.options.services.iter().flatten() {
                if !known(s) {
                    return Err(LineError {
                        line: e.line,
                        problem: format!("services=: no service {s:?} in the server's [services]"),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.entries.contains_key(key)
    }

    /// The key's entry (options, line), if authorised.
    pub fn get(&self, key: &[u8; 32]) -> Option<&AuthorizedKey> {
        self.entries.get(key)
    }

    /// Adds a key without options (replacing any entry it had).
    pub fn insert(&mut self, key: [u8; 32]) {
        self.entries.insert(
            key,
            AuthorizedKey {
                key,
                options: ClientOptions::default(),
                line: 0,
            },
        );
    }

    /// How log lines and metrics call this client: its `name=`, else the
    /// first characters of its key.
    pub fn label(&self, key: &[u8; 32]) -> String {
        match self.entries.get(key).and_then(|e| e.options.name.as_ref()) {
            Some(name) => name.clone(),
            None => key_prefix(key),
        }
    }

    /// The authorised keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.entries.keys()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether a published example key is among them: anyone could log in.
    pub fn has_example_key(&self) -> bool {
        self.entries.keys().any(is_example_key)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl FromIterator<[u8; 32]> for AuthorizedKeys {
    fn from_iter<I: IntoIterator<Item = [u8; 32]>>(iter: I) -> Self {
        let mut keys = AuthorizedKeys::default();
        for k in iter {
            keys.insert(k);
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::keys::generate;

    fn k(key: &[u8; 32]) -> String {
        encode_key(key)
    }

    fn err(text: &str) -> LineError {
        AuthorizedKeys::parse_lines(text).unwrap_err()
    }

    #[test]
    fn plain_keys_comments_and_blank_lines() {
        let a = generate().public;
        let b = generate().public;
        let text = format!(
            "# clients\n\n  {}  alice's laptop\n{}\n# {}\n",
            k(&a),
            k(&b),
            k(&[7; 32])
        );
        let keys = AuthorizedKeys::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&a) && keys.contains(&b));
        assert!(!keys.contains(&[7; 32]));
        let ea = keys.get(&a).unwrap();
        assert_eq!(ea.line, 3);
        assert_eq!(ea.options, ClientOptions::default());
        assert!(ea.options.allows("anything"));
        assert_eq!(keys.label(&a), k(&a)[..8]);
    }

    #[test]
    fn options_before_the_key() {
        let a = generate().public;
        let b = generate().public;
        let text = format!(
            "name=boat-17 services=pop3,smtp {} MV Example services=web name=x\n\
             \tservices=web {}\n",
            k(&a),
            k(&b)
        );
        let keys = AuthorizedKeys::parse(&text).unwrap();
        let ea = &keys.get(&a).unwrap().options;
        assert_eq!(ea.name.as_deref(), Some("boat-17"));
        assert!(ea.allows("pop3") && ea.allows("smtp"));
        // Option-like words after the key are comment.
        assert!(!ea.allows("web"));
        assert_eq!(keys.label(&a), "boat-17");
        let eb = &keys.get(&b).unwrap().options;
        assert_eq!(eb.name, None);
        assert!(eb.allows("web") && !eb.allows("pop3"));
        assert_eq!(keys.label(&b), k(&b)[..8]);
        assert_eq!(keys.get(&b).unwrap().line, 2);
    }

    #[test]
    fn errors_name_the_line() {
        let a = k(&generate().public);
        let b = k(&generate().public);
        let cases: Vec<(String, usize, &str)> = vec![
            (
                format!("{a}\nnot-a-key here\n"),
                2,
                "not a base64 32-byte key",
            ),
            (format!("# c\n\nfoo=1 {a}\n"), 3, "unknown option `foo`"),
            (format!("nmae=x {a}\n"), 1, "unknown option `nmae`"),
            (format!("name= {a}\n"), 1, "a name is"),
            (format!("name=a/b {a}\n"), 1, "a name is"),
            (format!("name={} {a}\n", "x".repeat(65)), 1, "a name is"),
            (format!("name=a name=b {a}\n"), 1, "name= given twice"),
            (format!("services= {a}\n"), 1, "comma-separated"),
            (format!("services=pop3,,smtp {a}\n"), 1, "comma-separated"),
            (
                format!("services=pop3 services=smtp {a}\n"),
                1,
                "given twice",
            ),
            (
                "name=boat\n".to_owned(),
                1,
                "options but no base64 32-byte key",
            ),
            (format!("name=boat AAAA {a}\n"), 1, "`AAAA` is neither"),
            // A mistyped key (one character short) is not taken for an option.
            (format!("{}\n", &a[1..]), 1, "not a base64 32-byte key"),
            (format!("name=boat {}\n", &a[1..]), 1, "is neither a base64"),
            (
                format!("{a}\n{b}\n\n{a} again\n"),
                4,
                "key already listed on line 1",
            ),
            (
                format!("name=x {a}\n# c\nname=x {b}\n"),
                3,
                "name=x already used on line 1",
            ),
        ];
        for (text, line, want) in cases {
            let e = err(&text);
            assert_eq!(e.line, line, "{text:?}: {e:?}");
            assert!(e.problem.contains(want), "{text:?}: {e:?}");
            assert!(!e.problem.contains('\n'));
        }
        // A name exactly as long as allowed is fine.
        let ok = format!("name={} {a}\n", "x".repeat(MAX_NAME_LEN));
        assert!(AuthorizedKeys::parse(&ok).is_ok());
    }

    #[test]
    fn load_errors_read_path_line_problem() {
        let d = std::env::temp_dir().join(format!("straw-authorized-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("authorized");
        let a = k(&generate().public);
        std::fs::write(&p, format!("{a}\nnot-a-key here\n")).unwrap();
        let e = AuthorizedKeys::load(&p).unwrap_err().to_string();
        assert_eq!(e, format!("{}:2: not a base64 32-byte key", p.display()));
        std::fs::write(&p, format!("{a}\n\nservices=pop3 colour=red {a}\n")).unwrap();
        let e = AuthorizedKeys::load(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}:3: unknown option `colour`", p.display())),
            "{e}"
        );
        let e = AuthorizedKeys::load(&d.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing: cannot read"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn services_must_exist_on_the_server() {
        let a = k(&generate().public);
        let b = k(&generate().public);
        let keys = AuthorizedKeys::parse(&format!("{a}\nservices=pop3,smpt {b}\n")).unwrap();
        let known = |s: &str| ["pop3", "smtp"].contains(&s);
        let e = keys.check_services(known).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.problem.contains("\"smpt\""), "{e:?}");
        let keys = AuthorizedKeys::parse(&format!("{a}\nservices=pop3,smtp {b}\n")).unwrap();
        assert!(keys.check_services(known).is_ok());
    }

    #[test]
    fn from_iter_and_insert_have_no_options() {
        let a = generate().public;
        let mut keys: AuthorizedKeys = [a].into_iter().collect();
        assert!(keys.contains(&a) && keys.get(&a).unwrap().options.allows("x"));
        let b = generate().public;
        keys.insert(b);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.keys().count(), 2);
    }

    proptest::proptest! {
        /// Any text gives keys or a line error, never a panic; an error's
        /// line exists in the text.
        #[test]
        fn any_text_parses_or_names_a_line(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    "[ -~]{0,80}",
                    "(name|services|x)=[a-z0-9,./_-]{0,10}( [A-Za-z0-9+/=]{0,46}){0,3}",
                    proptest::strategy::Just(format!("name=n {} c", encode_key(&[5; 32]))),
                ],
                0..8,
            )
        ) {
            let text = lines.join("\n");
            match AuthorizedKeys::parse_lines(&text) {
                Ok(keys) => proptest::prop_assert!(keys.len() <= lines.len()),
                Err(e) => proptest::prop_assert!(e.line >= 1 && e.line <= lines.len()),
            }
        }
    }
}
