//! Where deep links point and the key that hashes link tokens: the base URL, and the link
//! key from `TALLY_LINK_KEY` or the file `link.key` in the data directory (made at start
//! when missing).

use std::path::Path;

/// The deep links' base when none is configured: `.invalid` never resolves (RFC 2606), so
/// a deployment that forgot `links.base_url` sends links that plainly do not work.
pub const DEFAULT_BASE_URL: &str = "https://links.invalid";

/// Variable that holds the link key, 64 hex characters.
pub const LINK_KEY_VARIABLE: &str = "TALLY_LINK_KEY";

/// Where deep links point and the key that hashes tokens.
#[derive(Clone)]
pub struct LinkSettings {
    pub base_url: String,
    key: [u8; 32],
}

impl std::fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSettings")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl LinkSettings {
    /// The key from `TALLY_LINK_KEY`, else from `<data_dir>/link.key` (made if missing).
    pub fn for_data_dir(data_dir: &Path, base_url: &str) -> std::io::Result<LinkSettings> {
        let key = match std::env::var(LINK_KEY_VARIABLE) {
            Ok(hex) => crate::hex::unhex32(&hex)
                .ok_or_else(|| std::io::Error::other(format!("{LINK_KEY_VARIABLE} must be 64 hex characters")))?,
            Err(_) => key_file(&data_dir.join("link.key"))?,
        };
        Ok(LinkSettings {
            base_url: base_url.trim_end_matches('/').to_string(),
            key,
        })
    }

    pub(super) fn hash(&self, token: &[u8; 32]) -> [u8; 32] {
        *blake3::keyed_hash(&self.key, token).as_bytes()
    }
}

fn key_file(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|_| std::io::Error::other(format!("{} must hold exactly 32 bytes", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = crate::secrets::random_bytes()?;
            crate::secrets::write_private(path, &key)?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}
