//! The token signing secret: a file of at least 32 bytes, created 0600 with 32 random bytes
//! at first start. Every node of a cluster must hold the same file (copy it) so that a token
//! issued by one is accepted by all.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use stg_auth::token::MIN_SECRET;

use crate::PortalError;

/// Reads the secret at `path`, or creates it (and its directory) when missing. A file that
/// others may read is used but warned about.
pub fn load_or_create_key(path: &Path) -> Result<Vec<u8>, PortalError> {
    let err = |e: std::io::Error| PortalError::Key(format!("{}: {e}", path.display()));
    match std::fs::read(path) {
        Ok(bytes) => {
            if bytes.len() < MIN_SECRET {
                return Err(PortalError::Key(format!(
                    "{}: holds {} bytes, at least {MIN_SECRET} are needed (remove it to make a \
                     new one: every session ends)",
                    path.display(),
                    bytes.len()
                )));
            }
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "the portal key file is readable by others: chmod 600 it");
                }
            }
            return Ok(bytes);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| PortalError::Key(format!("no randomness for the portal key: {e}")))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Written whole under a temporary name, then linked into place: a crash never leaves a
    // short key, and of two nodes starting on a shared directory the first one wins.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "portal token key created");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path),
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_0600_then_read_back() {
        let dir = stg_testkit::temp_dir("portal-key");
        let path = dir.join("sub/portal.key");
        let k = load_or_create_key(&path).unwrap();
        assert_eq!(k.len(), 32);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_key(&path).unwrap(), k);
        // No temporary left behind.
        assert_eq!(std::fs::read_dir(dir.join("sub")).unwrap().count(), 1);
        // An operator's longer key is taken whole; a short one is refused.
        std::fs::write(&path, [7u8; 64]).unwrap();
        assert_eq!(load_or_create_key(&path).unwrap(), vec![7u8; 64]);
        std::fs::write(&path, [7u8; 16]).unwrap();
        let e = load_or_create_key(&path).unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
    }
}
