//! The server's secrets: the key ring (from a file made at start when missing, mode 0600,
//! or the environment), the secrets derived from it (API keys', endpoints'), HMAC-SHA256 and the
//! system's randomness. The API's door and the delivery worker both use it; nothing here
//! knows about either.

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

type HmacSha256 = hmac::Hmac<Sha256>;

/// Key ids in the ring: a name that can be logged.
pub const MAX_KID_BYTES: usize = 64;

/// One key of the server's ring.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    secret: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The server's keys: the first signs new tokens and API keys, all of them verify, so a
/// key is rotated by putting a new one first and keeping the old until its tokens expire.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
}

/// The ring's file when the configuration names none.
pub const KEYS_FILE_NAME: &str = "auth.keys";

impl KeyRing {
    /// Parses `kid hex` lines (or `kid:hex` entries separated by commas, for the
    /// environment); `#` starts a comment.
    pub fn parse(text: &str) -> Result<KeyRing, String> {
        let mut keys: Vec<SigningKey> = Vec::new();
        let entries = text
            .lines()
            .flat_map(|line| line.split('#').next().unwrap_or("").split(','));
        for entry in entries {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (kid, hex) = entry
                .split_once(|c: char| c == ':' || c.is_whitespace())
                .ok_or_else(|| format!("a key is `kid hex`, got {entry:?}"))?;
            let kid = kid.trim();
            let valid_kid = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
            if kid.is_empty() || kid.len() > MAX_KID_BYTES || !kid.chars().all(valid_kid) {
                return Err(format!(
                    "key id {kid:?} must be 1 to {MAX_KID_BYTES} letters, digits or -_."
                ));
            }
            let secret = crate::hex::unhex32(hex.trim())
                .ok_or_else(|| format!("key {kid}: the secret must be 64 hex digits (32 bytes)"))?;
            if keys.iter().any(|k| k.kid == kid) {
                return Err(format!("key id {kid} appears twice"));
            }
            keys.push(SigningKey {
                kid: kid.to_string(),
                secret,
            });
        }
        if keys.is_empty() {
            return Err("no keys".to_string());
        }
        Ok(KeyRing { keys })
    }

    /// The ring from `file`; if there is no such file, a new ring of one random key is
    /// written there first (mode 0600).
    pub fn load_or_create(file: &Path) -> Result<KeyRing, String> {
        match std::fs::read_to_string(file) {
            Ok(text) => KeyRing::parse(&text).map_err(|e| format!("{}: {e}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = random_bytes().map_err(|e| format!("no randomness: {e}"))?;
                let kid = format!(
                    "k{}",
                    &crate::hex::hex(&random_bytes().map_err(|e| e.to_string())?)[..8]
                );
                let text = format!(
                    "# Tally's token and API-key keys: `kid hex-secret`, the first signs. Keep secret.\n{kid} {}\n",
                    crate::hex::hex(&secret)
                );
                write_private(file, text.as_bytes()).map_err(|e| format!("{}: {e}", file.display()))?;
                KeyRing::parse(&text)
            }
            Err(e) => Err(format!("{}: {e}", file.display())),
        }
    }

    pub fn signing(&self) -> &SigningKey {
        &self.keys[0]
    }

    pub fn get(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

impl SigningKey {
    /// HMAC-SHA256 of `message` under this key.
    pub fn sign(&self, message: &[u8]) -> [u8; 32] {
        hmac(&self.secret, message)
    }

    /// Whether `tag` is this key's HMAC of `message`, compared in constant time.
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        verify_hmac(&self.secret, message, tag)
    }

    /// A secret derived from this key for one purpose (`context`) and one input.
    fn derive(&self, context: &[u8], input: &str) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.secret);
        hasher.update(context);
        hasher.update(input.as_bytes());
        hasher.finalize().to_hex().to_string()
    }
}

impl KeyRing {
    /// An API key's secret: derived from the ring key `kid` and the key id, so that the
    /// log need hold only its fingerprint. `None` if the ring no longer holds `kid`.
    pub fn api_key_secret(&self, kid: &str, key_id: &str) -> Option<String> {
        let key = self.get(kid)?;
        Some(format!("tk_{}", key.derive(b"tally api key secret v1\0", key_id)))
    }

    /// An endpoint's signing secret: derived from the ring key `kid` and the endpoint's
    /// nonce, which is all the log keeps of it. `None` if the ring no longer holds `kid`.
    pub fn endpoint_secret(&self, kid: &str, nonce: &str) -> Option<String> {
        let key = self.get(kid)?;
        Some(format!("whsec_{}", key.derive(b"tally endpoint secret v1\0", nonce)))
    }
}

/// Where the key ring lives when the configuration names no file.
pub fn default_keys_file(data_dir: &Path) -> PathBuf {
    data_dir.join(KEYS_FILE_NAME)
}

/// Writes a new file only its owner can read (mode 0600), synced; refuses to replace one.
pub fn write_private(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    out.write_all(bytes)?;
    out.sync_all()
}

/// 32 bytes from the system's randomness.
pub fn random_bytes() -> std::io::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The fingerprint of an API key's secret that the log keeps.
pub fn api_key_fingerprint(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// HMAC-SHA256.
pub fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC-SHA256 of `message` under `key`, compared in constant time.
pub fn verify_hmac(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.verify_slice(tag).is_ok()
}
