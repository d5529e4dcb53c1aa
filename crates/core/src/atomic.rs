//! Atomic output files: write to a temp file beside the destination, fsync, rename.
//!
//! Until [`AtomicFile::commit`] succeeds the destination is untouched (absent, or the old file).
//! Dropping an uncommitted `AtomicFile` removes the temp file. A process killed with SIGKILL can
//! leave a `.<name>.quantkit-tmp-<pid>-*` file behind, never a partial destination; the next writer
//! of the same destination removes such leftovers of dead processes ([`remove_stale`]).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A file being written that appears at its destination only when complete.
#[derive(Debug)]
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Start writing `dest`. Its directory must exist.
    pub fn create(dest: impl AsRef<Path>) -> Result<Self> {
        let dest = dest.as_ref().to_path_buf();
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "output directory {} does not exist (writing {})",
                dir.display(),
                dest.display()
            )));
        }
        let file_name = dest
            .file_name()
            .ok_or_else(|| Error::Invalid(format!("output path {} has no file name", dest.display())))?
            .to_string_lossy()
            .into_owned();
        sweep_siblings(&dir, &file_name, &dest);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(".{file_name}.quantkit-tmp-{}-{nonce:08x}", std::process::id()));
        let file =
            OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self { dest, tmp, writer: Some(BufWriter::with_capacity(1 << 20, file)) })
    }

    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Write all of `buf`, naming the destination on failure.
    pub fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        let w = self.writer.as_mut().ok_or_else(|| Error::Invalid("write after commit".into()))?;
        w.write_all(buf).map_err(|e| Error::io(&self.dest, e))
    }

    /// Flush, fsync, and rename into place (then fsync the directory).
    pub fn commit(mut self) -> Result<()> {
        let w = self.writer.take().ok_or_else(|| Error::Invalid("double commit".into()))?;
        let file = w.into_inner().map_err(|e| Error::io(&self.dest, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        if let Some(dir) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Best effort: make the rename itself durable.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.writer.as_mut() {
            Some(w) => w.write(buf),
            None => Err(std::io::Error::other("write after commit")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_file_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("out.gguf");
        {
            let mut f = AtomicFile::create(&dest).expect("create");
            f.write_all(b"partial").expect("write");
        }
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 0, "temp file removed");
    }

    #[test]
    fn commit_replaces_old_file_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("out.bin");
        std::fs::write(&dest, b"old").expect("seed");
        let mut f = AtomicFile::create(&dest).expect("create");
        f.write_all(b"new contents").expect("write");
        assert_eq!(std::fs::read(&dest).expect("read"), b"old", "old file intact until commit");
        f.commit().expect("commit");
        assert_eq!(std::fs::read(&dest).expect("read"), b"new contents");
        assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 1);
    }

    #[test]
    fn leftovers_of_dead_writers_are_swept_and_an_old_output_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dead = u32::MAX - 7; // no such pid
        let stale = dir.path().join(format!(".out.bin.quantkit-tmp-{dead}-0000beef"));
        std::fs::write(&stale, b"half").expect("w");
        let other = dir.path().join(format!(".other.bin.quantkit-tmp-{dead}-0000beef"));
        std::fs::write(&other, b"half").expect("w");
        let mine = dir.path().join(format!(".out.bin.quantkit-tmp-{}-00000001", std::process::id()));
        std::fs::write(&mine, b"live").expect("w");
        let f = AtomicFile::create(dir.path().join("out.bin")).expect("create");
        assert!(!stale.exists(), "dead writer's temp file of the same destination removed");
        assert!(other.exists() && mine.exists(), "other destinations and live writers untouched");
        drop(f);
        // A folder replace killed between its two renames: the old folder comes back.
        let old = dir.path().join(format!(".model.quantkit-old-{dead}"));
        std::fs::create_dir(&old).expect("mkdir");
        std::fs::write(old.join("a"), b"old").expect("w");
        assert_eq!(remove_stale(dir.path()).expect("sweep"), 2);
        assert_eq!(std::fs::read(dir.path().join("model/a")).expect("restored"), b"old");
        assert!(!other.exists() && mine.exists());
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = AtomicFile::create("/nonexistent-dir-quantkit/x.gguf").expect_err("must fail");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}

/// A folder built beside its destination and renamed into place, the folder counterpart of
/// [`AtomicFile`]: until [`AtomicDir::commit`] the destination is untouched; dropping an uncommitted
/// `AtomicDir` removes the temporary folder. Committing over an existing folder moves the old one
/// aside first and removes it after the rename.
#[derive(Debug)]
pub struct AtomicDir {
    dest: PathBuf,
    tmp: PathBuf,
    done: bool,
}

impl AtomicDir {
    /// Start building `dest`. Its parent must exist.
    pub fn create(dest: impl AsRef<Path>) -> Result<Self> {
        let dest = dest.as_ref().to_path_buf();
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
        sweep_siblings(&parent, &name, &dest);
        let tmp = parent.join(format!(".{name}.quantkit-tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(AtomicDir { dest, tmp, done: false })
    }

    /// Where to write the folder's files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Rename the finished folder to its destination.
    pub fn commit(mut self) -> Result<()> {
        replace_path(&self.tmp, &self.dest)?;
        self.done = true;
        Ok(())
    }
}

/// Move a finished file or folder `built` (in the same file system) to `dest`, replacing what is
/// there. A file over a file is one atomic rename; when a folder is involved, the existing `dest`
/// is renamed aside (`.<name>.quantkit-old-<pid>`) first and removed after the rename, so `dest` is
/// at every moment either the old entry or the new one, never a mix.
pub fn replace_path(built: &Path, dest: &Path) -> Result<()> {
    if dest.exists() && (dest.is_dir() || built.is_dir()) {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let old = dest.with_file_name(format!(".{name}.quantkit-old-{}", std::process::id()));
        std::fs::rename(dest, &old).map_err(|e| Error::io(dest, e))?;
        std::fs::rename(built, dest).map_err(|e| Error::io(dest, e))?;
        let _ = if old.is_dir() { std::fs::remove_dir_all(&old) } else { std::fs::remove_file(&old) };
    } else {
        std::fs::rename(built, dest).map_err(|e| Error::io(dest, e))?;
    }
    Ok(())
}

/// The pid in a leftover's name (`.<name>.quantkit-tmp-<pid>[-nonce]`, `.<name>.quantkit-old-<pid>`)
/// and whether it is an `old` (moved-aside previous output) entry; `None` for other names.
fn leftover_pid(entry: &str) -> Option<(u32, bool)> {
    if !entry.starts_with('.') {
        return None;
    }
    ["quantkit-tmp-", "quantkit-old-"].iter().find_map(|m| {
        let i = entry.find(m)?;
        let digits: String = entry[i + m.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok().map(|pid| (pid, m.contains("old")))
    })
}

/// Whether process `pid` is gone (Linux `/proc`; elsewhere we cannot tell and keep the file).
fn process_is_dead(pid: u32) -> bool {
    cfg!(target_os = "linux") && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

fn remove_entry(p: &Path) -> std::io::Result<()> {
    if p.is_dir() && !p.is_symlink() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

/// Deal with one leftover `p` of a dead writer of `dest`: a moved-aside old output goes back when
/// `dest` is missing (the writer died between its two renames); anything else is removed.
fn clear_leftover(p: &Path, dest: &Path, is_old: bool) -> std::io::Result<()> {
    if is_old && !dest.exists() {
        std::fs::rename(p, dest)
    } else {
        remove_entry(p)
    }
}

/// Before writing `dest` (`name` in `dir`): remove temp files/folders that dead writers of the same
/// destination left, and if a writer died between moving the old output aside and renaming the new
/// one in (a folder replace), put the old output back. Best effort: failures are ignored, the new
/// write still proceeds.
fn sweep_siblings(dir: &Path, name: &str, dest: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let prefix = format!(".{name}.quantkit-");
    for e in rd.flatten() {
        let entry = e.file_name().to_string_lossy().into_owned();
        if !entry.starts_with(&prefix) {
            continue;
        }
        match leftover_pid(&entry) {
            Some((pid, is_old)) if process_is_dead(pid) => {
                let _ = clear_leftover(&e.path(), dest, is_old);
            }
            _ => {}
        }
    }
}

/// Remove what killed runs left under `dir` (recursively): temp files and folders of our atomic
/// writers whose process is gone, and moved-aside old outputs (restored when their destination is
/// missing). Returns how many entries were removed or restored. Linux only (elsewhere: 0).
pub fn remove_stale(dir: &Path) -> Result<usize> {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(0) };
    let mut subdirs = vec![];
    for e in rd.flatten() {
        let p = e.path();
        let entry = e.file_name().to_string_lossy().into_owned();
        match leftover_pid(&entry) {
            Some((pid, is_old)) if process_is_dead(pid) => {
                let dest_name = entry[1..entry.find(".quantkit-").unwrap_or(entry.len())].to_string();
                let dest = dir.join(dest_name);
                clear_leftover(&p, &dest, is_old).map_err(|e| Error::io(&p, e))?;
                n += 1;
            }
            _ if p.is_dir() && !p.is_symlink() => subdirs.push(p),
            _ => {}
        }
    }
    for d in subdirs {
        n += remove_stale(&d)?;
    }
    Ok(n)
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
