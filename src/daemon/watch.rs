//! Following the declaration file: a notify watch on its directory that queues reloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use super::reload::{Reloader, Trigger};

/// Watches the declaration's directory (editors replace files by rename, or delete and
/// recreate them) and queues a reload when an event names the file.
pub fn watch(path: &Path, reloader: &Arc<Reloader>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher as _};
    let file_name = path.file_name()?.to_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let target = Arc::downgrade(reloader);
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name() == Some(&file_name))
        {
            if let Some(reloader) = target.upgrade() {
                reloader.request(Trigger::File);
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(err) => {
            warn!(%err, "cannot watch the declaration; reload with SIGHUP or `nvmf-tgt reload`");
            return None;
        }
    };
    if let Err(err) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        warn!(%err, dir = %dir.display(), "cannot watch the declaration's directory");
        return None;
    }
    info!(dir = %dir.display(), "watching the declaration for changes");
    Some(watcher)
}
