//! What identifies a file's current contents without reading it: size, mtime and inode
//! (following symlinks, so a Kubernetes Secret update, which swaps a symlink, is seen).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// None for a file that cannot be stat'ed (being replaced, or gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp(Option<(u64, i64, i64, u64)>);

impl FileStamp {
    pub fn of(path: &Path) -> FileStamp {
        FileStamp(
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_has_another_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert_eq!(FileStamp::of(&path), FileStamp(None));
        std::fs::write(&path, "one").unwrap();
        let first = FileStamp::of(&path);
        assert_eq!(FileStamp::of(&path), first);
        let staged = dir.path().join("g");
        std::fs::write(&staged, "two").unwrap();
        std::fs::rename(&staged, &path).unwrap();
        assert_ne!(FileStamp::of(&path), first);
    }
}
