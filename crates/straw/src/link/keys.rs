//! x25519 static keys for Noise, and the files that hold them.
//!
//! - `PATH`: the private key, base64 (standard alphabet) on one line, mode 0600.
//!   A file other users can read, or a published example key, is refused
//!   unless the config says `allow_insecure_keys = true`.
//!   Windows has no file modes: the file gets the ACL it inherits from its
//!   directory, which in the user's profile (`C:\Users\NAME\...`) grants only
//!   that user, SYSTEM and Administrators; keep keys there (the guide says so).
//! - `PATH.pub`: the public key, base64 on one line.
//! - authorised keys: see [`crate::authorized`] (re-exported here).
//!
//! Every error is one line naming the file (and line) and the problem.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

pub use crate::authorized::AuthorizedKeys;

/// The Noise parameters every straw key is used with.
pub(crate) const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// A static x25519 key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Keypair {
    pub private: [u8; 32],
    pub public: [u8; 32],
}

impl std::fmt::Debug for Keypair {
    // Never print the private key, not even in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &encode_key(&self.public))
            .finish_non_exhaustive()
    }
}

impl Keypair {
    /// The key pair for a private key: the public half is derived.
    pub fn from_private(private: [u8; 32]) -> Keypair {
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("snow's default resolver always has Curve25519");
        dh.set(&private);
        let mut public = [0u8; 32];
        public.copy_from_slice(dh.pubkey());
        Keypair { private, public }
    }
}

/// A fresh random key pair.
pub fn generate() -> Keypair {
    let params = NOISE_PARAMS.parse().expect("valid Noise parameters");
    let kp = snow::Builder::new(params)
        .generate_keypair()
        .expect("snow's default resolver has an RNG and Curve25519");
    let mut private = [0u8; 32];
    let mut public = [0u8; 32];
    private.copy_from_slice(&kp.private);
    public.copy_from_slice(&kp.public);
    Keypair { private, public }
}

/// Base64 (standard alphabet, padded) text of a key.
pub fn encode_key(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

/// Parses one base64 32-byte key (surrounding whitespace ignored).
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    let bytes = STANDARD.decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

/// `PATH.pub` for `PATH`.
pub fn public_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// `straw keygen PATH`: writes `PATH` (0600) and `PATH.pub`, prints the public key.
/// Refuses to overwrite either file.
pub fn keygen_cli(path: &Path) -> Result<()> {
    let pub_path = public_path(path);
    for p in [path, pub_path.as_path()] {
        if p.symlink_metadata().is_ok() {
            bail!(
                "{}: already exists; refusing to overwrite a key",
                p.display()
            );
        }
    }
    let kp = generate();
    write_new(path, &encode_key(&kp.private), 0o600)?;
    write_new(&pub_path, &encode_key(&kp.public), 0o644)?;
    println!("{}", encode_key(&kp.public));
    Ok(())
}

fn write_new(path: &Path, line: &str, mode: u32) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode; // the directory's inherited ACL applies (module comment)
    let mut f = options
        .open(path)
        .map_err(|e| anyhow!("{}: cannot create: {e}", path.display()))?;
    writeln!(f, "{line}")
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))
}

/// The single key in a key file: the first token of the first non-comment line.
fn key_file(path: &Path) -> Result<[u8; 32]> {
    let text = read_text(path)?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().next())
        .ok_or_else(|| anyhow!("{}: empty key file", path.display()))?;
    decode_key(token).ok_or_else(|| anyhow!("{}: not a base64 32-byte key", path.display()))
}

/// The public halves of the published example keys (`examples/keys/`):
/// anyone can impersonate them, so they are refused unless allowed.
const EXAMPLE_PUBLIC_KEYS: [&str; 2] = [
    "xGoUclExgkvCQUEnRMp3SkXD7hwzO2KX0xysQUugnDA=", // server.key
    "+kjneum+6xOI/PjCUQw0g+Q4HWpPyXUL6X0kZvQRFUU=", // client.key
];

/// Whether `public` belongs to one of the published example keys.
pub fn is_example_key(public: &[u8; 32]) -> bool {
    EXAMPLE_PUBLIC_KEYS
        .iter()
        .any(|k| decode_key(k).as_ref() == Some(public))
}

/// Loads a private key file and derives its public key. Refuses a file other
/// users can read and the published example keys.
pub fn load_private(path: &Path) -> Result<Keypair> {
    load_private_checked(path, false)
}

/// As [`load_private`]; with `allow_insecure` (config `allow_insecure_keys`)
/// a readable file or an example key is only warned about.
pub fn load_private_checked(path: &Path, allow_insecure: bool) -> Result<Keypair> {
    let kp = Keypair::from_private(key_file(path)?);
    let mut problems = Vec::new();
    #[cfg(unix)]
    if readable_by_others(path) {
        problems.push("is readable by other users (chmod 600 it)");
    }
    if is_example_key(&kp.public) {
        problems.push("is a published example key that anyone can use (straw keygen a new one)");
    }
    for problem in problems {
        if !allow_insecure {
            bail!(
                "{}: private key {problem}; refusing it (allow_insecure_keys = true overrides, for demos only)",
                path.display()
            );
        }
        tracing::warn!(
            "{}: INSECURE: private key {problem}; accepted because allow_insecure_keys = true",
            path.display()
        );
    }
    Ok(kp)
}

#[cfg(unix)]
fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode());
    mode & 0o077 != 0
}

/// Loads a public key file (`PATH.pub`).
pub fn load_public(path: &Path) -> Result<[u8; 32]> {
    key_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("straw-keys-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn generated_public_matches_derived() {
        let kp = generate();
        assert_ne!(kp.private, [0; 32]);
        assert_eq!(Keypair::from_private(kp.private), kp);
        assert_ne!(generate(), kp);
    }

    #[test]
    fn keygen_writes_loadable_files_and_refuses_overwrite() {
        let d = tmpdir("keygen");
        let path = d.join("a.key");
        keygen_cli(&path).unwrap();
        let kp = load_private(&path).unwrap();
        assert_eq!(load_public(&public_path(&path)).unwrap(), kp.public);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let before = std::fs::read(&path).unwrap();
        let err = keygen_cli(&path).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);

        // A stray .pub alone also blocks keygen, and nothing is written.
        let p2 = d.join("b.key");
        std::fs::write(public_path(&p2), "x").unwrap();
        assert!(keygen_cli(&p2).is_err());
        assert!(!p2.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_key_files_give_one_line_errors_naming_the_file() {
        let d = tmpdir("bad");
        let cases: [(&str, &str); 4] = [
            ("short", "AAAA\n"),
            ("notb64", "this is not base64!!\n"),
            ("empty", "\n# only a comment\n"),
            ("long", &format!("{}\n", STANDARD.encode([1u8; 33]))),
        ];
        for (name, text) in cases {
            let p = d.join(name);
            std::fs::write(&p, text).unwrap();
            let err = load_private(&p).unwrap_err().to_string();
            assert!(err.starts_with(&p.display().to_string()), "{err}");
            assert!(!err.contains('\n'), "{err}");
            assert!(load_public(&p).is_err());
        }
        let missing = d.join("missing");
        let err = load_public(&missing).unwrap_err().to_string();
        assert!(err.contains("missing: cannot read"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn example_keys_are_consistent() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/keys");
        let server = load_private_checked(&dir.join("server.key"), true).unwrap();
        assert_eq!(
            load_public(&dir.join("server.key.pub")).unwrap(),
            server.public
        );
        let client = load_private_checked(&dir.join("client.key"), true).unwrap();
        assert_eq!(
            load_public(&dir.join("client.key.pub")).unwrap(),
            client.public
        );
        let auth = AuthorizedKeys::load(&dir.join("authorized_clients")).unwrap();
        assert!(auth.contains(&client.public));
        assert!(!auth.contains(&server.public));
        assert!(is_example_key(&server.public) && is_example_key(&client.public));
        assert!(auth.has_example_key());
        assert!(
            ![generate().public]
                .into_iter()
                .collect::<AuthorizedKeys>()
                .has_example_key()
        );
        assert!(!is_example_key(&generate().public));
    }

    /// Writes `kp`'s private key to `path` with `mode`.
    fn write_key(path: &Path, kp: &Keypair, mode: u32) {
        std::fs::write(path, encode_key(&kp.private)).unwrap();
        #[cfg(unix)]
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        #[cfg(not(unix))]
        let _ = mode;
    }

    #[cfg(unix)]
    #[test]
    fn a_private_key_others_can_read_is_refused_unless_allowed() {
        let d = tmpdir("mode");
        let path = d.join("open.key");
        let kp = generate();
        write_key(&path, &kp, 0o644);
        let err = load_private(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&path.display().to_string())
                && err.contains("readable by other users")
                && err.contains("allow_insecure_keys"),
            "{err}"
        );
        assert_eq!(load_private_checked(&path, true).unwrap(), kp);
        write_key(&path, &kp, 0o600);
        assert_eq!(load_private(&path).unwrap(), kp);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_example_keys_are_refused_unless_allowed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/keys");
        let d = tmpdir("example");
        for who in ["server", "client"] {
            // Even a 0600 copy of a published key is refused.
            let kp = load_private_checked(&dir.join(format!("{who}.key")), true).unwrap();
            let copy = d.join(format!("{who}.key"));
            write_key(&copy, &kp, 0o600);
            let err = load_private(&copy).unwrap_err().to_string();
            assert!(err.contains("published example key"), "{err}");
            assert_eq!(load_private_checked(&copy, true).unwrap(), kp);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
