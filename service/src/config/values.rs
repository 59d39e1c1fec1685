//! Checks of single values: a peer or endpoint URL, and a path as it will be once
//! created (to compare folder and data_dir before either exists).

use std::path::{Path, PathBuf};

/// `path` with its nearest existing ancestor made canonical (`path` itself when it
/// exists): what `canonicalize` will say once the missing part is created.
pub(super) fn canonical_or_planned(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut missing = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return missing
                .iter()
                .rev()
                .fold(real, |path, part| path.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Check that `url` is `http://host:port` or `https://host:port`.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!("{url:?} must be scheme://host:port"));
    }
    let port = authority
        .rsplit_once(':')
        .map(|(_, port)| port)
        .unwrap_or("");
    port.parse::<u16>()
        .map_err(|_| format!("{url:?} needs a port (scheme://host:port)"))?;
    tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|error| format!("{url:?}: {error}"))?;
    Ok(())
}
