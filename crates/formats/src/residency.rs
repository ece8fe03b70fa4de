//! How a reader holds a file's bytes: mapped from the file, or read into memory that the
//! kernel backs with 2 MiB pages.
//!
//! Why it matters: decoding streams every weight once per token, and with 4 KiB pages
//! that is a TLB miss every 4 KiB. Under a hypervisor each miss walks two sets of page
//! tables; on the development VM a token of a 1 GB model then read its weights about 25 %
//! slower than from 2 MiB pages (`bench/RESULTS.md`, session 29). A mapped file gets
//! large pages only if the page cache happens to hold it in 2 MiB folios, which depends
//! on how the file was first read (a `read` of the whole file left it so here; files
//! that only mappings without the huge-page advice had read were on 4 KiB folios); a
//! copy in anonymous memory advised for huge
//! pages gets them whenever the kernel has transparent huge pages at all, at the cost of
//! zeroing and filling it when loading.

use std::fs::File;
use std::io::Read;

use memmap2::{Mmap, MmapMut};

/// How a reader holds a file's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Residency {
    /// Mapped from the file: opening costs nothing whatever the size, pages come in as
    /// they are read, and processes share them. For headers, hashing and inspection.
    #[default]
    Mapped,
    /// For computing on every byte over and over (inference, training): mapped and
    /// advised for huge pages; if the mapping does not then come on 2 MiB pages, read
    /// into anonymous memory advised for transparent huge pages, when the file is at
    /// least [`RESIDENT_MIN_BYTES`] and at most half the memory available. `VERITY_MMAP=1`
    /// in the environment keeps files mapped.
    Compute,
}

/// Smaller files stay mapped under [`Residency::Compute`]: their TLB reach is no
/// problem and copying them would only cost time.
pub const RESIDENT_MIN_BYTES: u64 = 32 << 20;

/// The bytes of `file`, held as `residency` asks. The file must not be empty (an empty
/// map is an error on some systems).
pub(crate) fn hold(file: &File, residency: Residency) -> std::io::Result<Mmap> {
    let len = file.metadata()?.len();
    // SAFETY: the map is read-only; a file truncated by another process while mapped is
    // outside what any mmap-based reader can defend against.
    let map = unsafe { Mmap::map(file) }?;
    // Pages the cache does not hold yet then come in as 2 MiB folios where the
    // filesystem can (a hint; refusing it changes nothing else).
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    if residency == Residency::Compute && fits_resident(len) && !mapped_huge(&map) {
        drop(map);
        return read_resident(file, len);
    }
    Ok(map)
}

/// Whether `map`, once populated, is on 2 MiB pages (seven eighths of it at least: the
/// folios near the end of a file come smaller, 34 MB of a 1.1 GB file here): the
/// page cache holds the file in 2 MiB folios (as a `read` of the whole file or an earlier
/// mapping advised for huge pages leaves it), so a copy would gain nothing and cost the
/// time to zero and fill it (0.4-3 s a GB on the development VM).
fn mapped_huge(map: &Mmap) -> bool {
    #[cfg(target_os = "linux")]
    {
        if map.advise(memmap2::Advice::PopulateRead).is_err() {
            return false;
        }
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return false;
        };
        let start = format!("{:x}-", map.as_ptr() as usize);
        let Some(at) = smaps.lines().position(|l| l.starts_with(&start)) else {
            return false;
        };
        let pmd_kb = smaps
            .lines()
            .skip(at + 1)
            // The block's fields ("Name: value"), up to the next mapping's header line.
            .take_while(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|t| t.ends_with(':'))
            })
            .find_map(|l| l.strip_prefix("FilePmdMapped:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok());
        pmd_kb.is_some_and(|kb| kb * 1024 >= map.len() / 8 * 7)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = map;
        false
    }
}

/// Whether a file of `len` bytes is to be read into memory for computing.
fn fits_resident(len: u64) -> bool {
    if !cfg!(target_os = "linux") || std::env::var_os("VERITY_MMAP").is_some_and(|v| v != "0") {
        return false;
    }
    len >= RESIDENT_MIN_BYTES && mem_available().is_some_and(|avail| len <= avail / 2)
}

/// `MemAvailable` of `/proc/meminfo` in bytes.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `len` bytes of `file` from its start, in anonymous memory advised for huge pages.
fn read_resident(file: &File, len: u64) -> std::io::Result<Mmap> {
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    let mut mem = MmapMut::map_anon(len)?;
    #[cfg(target_os = "linux")]
    let _ = mem.advise(memmap2::Advice::HugePage);
    let mut reader = file;
    // `read_exact` from the start: the handle is fresh, and a file that got shorter since
    // its length was read ends in an `UnexpectedEof` error, not in short data.
    reader.read_exact(&mut mem)?;
    mem.make_read_only()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resident_copy_holds_the_file_bytes() {
        let dir = std::env::temp_dir().join(format!("verity-residency-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        let bytes: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let held = read_resident(&File::open(&path).unwrap(), bytes.len() as u64).unwrap();
        assert_eq!(&held[..], &bytes[..]);
        // A file shorter than its length said (it shrank) is an error, not short data.
        let err = read_resident(&File::open(&path).unwrap(), bytes.len() as u64 + 1).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
