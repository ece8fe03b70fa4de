//! One file from a URL into a blob: parallel range requests for large files, resumable
//! from the bytes already on disk, checked against its digest before it becomes visible.
//!
//! While downloading, the bytes live in `BLOB.verity-partial` and the ranges received in
//! `BLOB.verity-partial.json`; the blob's own name appears only after the digest matched,
//! in one rename. A killed or interrupted download leaves the partial file to resume from;
//! nothing ever reads it as a model.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sha2::Digest as _;

use crate::hub::Hub;

/// Set by Ctrl-C (see [`crate::request_stop`]): downloads save their progress and stop.
pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

/// How a downloaded file is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// SHA-256 of the content (LFS files, model files).
    Sha256(String),
    /// Git's blob id: SHA-1 of `blob SIZE\0` and the content (regular repository files).
    GitSha1(String),
}

/// A file to fetch.
pub struct Job<'a> {
    pub url: String,
    pub size: u64,
    pub dest: PathBuf,
    pub expected: Expected,
    /// For progress and errors.
    pub label: &'a str,
}

/// Files at least this big are fetched over several connections.
const PARALLEL_MIN: u64 = 16 << 20;
const MIN_CHUNK: u64 = 8 << 20;
const RETRIES: u32 = 5;

/// The partial file and its progress record.
pub fn partial_paths(dest: &Path) -> (PathBuf, PathBuf) {
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("blob");
    (
        dest.with_file_name(format!("{name}.verity-partial")),
        dest.with_file_name(format!("{name}.verity-partial.json")),
    )
}

/// Bytes of `dest` already on disk from an earlier, unfinished download.
pub fn bytes_present(dest: &Path) -> u64 {
    let (_, record) = partial_paths(dest);
    if let Some(p) = Progress::load(&record) {
        return p.done.iter().sum();
    }
    0
}

/// Which bytes of each chunk have arrived (each chunk fills from its start).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Progress {
    size: u64,
    chunk: u64,
    done: Vec<u64>,
}

impl Progress {
    fn plan(size: u64, connections: usize) -> Progress {
        let chunk = if size < PARALLEL_MIN || connections <= 1 {
            size.max(1)
        } else {
            (size.div_ceil(4 * connections as u64)).max(MIN_CHUNK)
        };
        let n = size.div_ceil(chunk).max(1) as usize;
        Progress {
            size,
            chunk,
            done: vec![0; n],
        }
    }

    fn span(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.chunk;
        (start, (start + self.chunk).min(self.size))
    }

    fn load(path: &Path) -> Option<Progress> {
        let p: Progress = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let valid = p.chunk > 0
            && p.done.len() as u64 == p.size.div_ceil(p.chunk).max(1)
            && (0..p.done.len()).all(|i| {
                let (s, e) = p.span(i);
                p.done[i] <= e - s
            });
        valid.then_some(p)
    }

    fn save(&self, path: &Path) {
        // Best effort: a lost record only means re-downloading, never wrong bytes.
        if let Ok(json) = serde_json::to_vec(self) {
            let tmp = path.with_extension("json.tmp");
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    }
}

/// Fetch `job` into its destination. `on_bytes` is told of every byte received (for a
/// progress bar), starting with those already present.
pub fn download(
    hub: &Hub,
    job: &Job,
    connections: usize,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<(), String> {
    let (partial, record) = partial_paths(&job.dest);
    let progress = match Progress::load(&record) {
        Some(p) if p.size == job.size && partial.exists() => p,
        _ => {
            let _ = std::fs::remove_file(&partial);
            Progress::plan(job.size, connections)
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&partial)
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    reserve(&file, job.size).map_err(|e| {
        format!(
            "cannot make room for {} ({} bytes) in {}: {e}",
            job.label,
            job.size,
            partial.parent().unwrap_or(Path::new(".")).display()
        )
    })?;
    progress.save(&record);
    on_bytes(progress.done.iter().sum());

    let done: Vec<AtomicU64> = progress.done.iter().map(|&d| AtomicU64::new(d)).collect();
    let next = AtomicU64::new(0);
    let no_ranges = AtomicBool::new(false);
    let mut digester = Digester::new(&job.expected, job.size);
    let result = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections.clamp(1, done.len()))
            .map(|_| {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                    if i >= done.len() {
                        return Ok(());
                    }
                    fetch_chunk(
                        hub, job, &file, &progress, i, &done[i], &no_ranges, on_bytes,
                    )?;
                })
            })
            .collect();
        // While the workers run: hash the bytes that have arrived in order (so checking
        // costs little time after the last byte), and record progress, so a kill loses at
        // most a moment.
        let mut last_save = std::time::Instant::now();
        while !workers.iter().all(|w| w.is_finished()) {
            if !digester.advance(&file, contiguous(&progress, &done)) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if last_save.elapsed() > Duration::from_millis(250) {
                snapshot(&progress, &done).save(&record);
                last_save = std::time::Instant::now();
            }
        }
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a download thread panicked".into()))
            })
            .collect::<Result<Vec<()>, String>>()
    });
    let progress = snapshot(&progress, &done);
    progress.save(&record);
    if let Err(e) = result {
        if no_ranges.load(Ordering::SeqCst) && connections > 1 {
            // The server ignores ranges: start over on one connection.
            let _ = std::fs::remove_file(&record);
            let _ = std::fs::remove_file(&partial);
            return download(hub, job, 1, on_bytes);
        }
        return Err(e);
    }
    let checked = (|| {
        while digester.advance(&file, job.size) {}
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len != job.size || digester.pos != job.size {
            return Err(format!("size {len}, expected {}", job.size));
        }
        digester.finish()
    })();
    if let Err(e) = checked {
        drop(file);
        let _ = std::fs::remove_file(&partial);
        let _ = std::fs::remove_file(&record);
        return Err(format!(
            "{}: {e}; nothing was stored (run the command again; if it repeats, a proxy or mirror is altering the file)",
            job.label
        ));
    }
    // On disk before it has its name: a crash never leaves a named blob with lost bytes.
    file.sync_all()
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    drop(file);
    std::fs::rename(&partial, &job.dest).map_err(|e| format!("{}: {e}", job.dest.display()))?;
    let _ = std::fs::remove_file(&record);
    Ok(())
}

fn snapshot(p: &Progress, done: &[AtomicU64]) -> Progress {
    Progress {
        done: done.iter().map(|d| d.load(Ordering::SeqCst)).collect(),
        ..p.clone()
    }
}

/// Fetch what chunk `i` still lacks, retrying (from the byte it has) on a dropped connection.
#[allow(clippy::too_many_arguments)]
fn fetch_chunk(
    hub: &Hub,
    job: &Job,
    file: &File,
    plan: &Progress,
    i: usize,
    done: &AtomicU64,
    no_ranges: &AtomicBool,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<(), String> {
    let (start, end) = plan.span(i);
    let whole_file = start == 0 && end == plan.size;
    let mut failures = 0;
    loop {
        let have = done.load(Ordering::SeqCst);
        if start + have >= end {
            return Ok(());
        }
        if STOP.load(Ordering::SeqCst) {
            return Err(interrupted(job));
        }
        let from = start + have;
        let range_end = if whole_file { None } else { Some(end - 1) };
        let before = have;
        let outcome = hub.get(&job.url, from, range_end).and_then(|resp| {
            let status = resp.status().as_u16();
            match status {
                206 => {
                    let cr = resp
                        .headers()
                        .get("content-range")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if !cr.starts_with(&format!("bytes {from}-")) {
                        return Err(format!("the server sent range '{cr}' for bytes {from}-"));
                    }
                }
                200 if from == 0 && whole_file => {}
                200 => {
                    no_ranges.store(true, Ordering::SeqCst);
                    return Err("the server does not honour range requests".into());
                }
                416 => {
                    return Err(format!(
                        "the server has fewer bytes than the Hub's size ({})",
                        plan.size
                    ))
                }
                s => return Err(format!("HTTP {s} from {}", host_only(&job.url))),
            }
            copy_body(
                resp.into_body().into_reader(),
                file,
                from,
                end,
                done,
                on_bytes,
                job,
            )
        });
        match outcome {
            Ok(()) => continue,
            Err(e) if no_ranges.load(Ordering::SeqCst) || STOP.load(Ordering::SeqCst) => {
                return Err(e)
            }
            Err(e) => {
                if done.load(Ordering::SeqCst) == before {
                    failures += 1;
                } else {
                    failures = 1;
                }
                if failures > RETRIES {
                    return Err(format!(
                        "{}: {e} (gave up after {RETRIES} retries; run the command again to resume from the {} bytes received)",
                        job.label,
                        done.load(Ordering::SeqCst)
                    ));
                }
                eprintln!(
                    "verity: {}: {e}; resuming at byte {}",
                    job.label,
                    start + done.load(Ordering::SeqCst)
                );
                std::thread::sleep(Duration::from_millis(300 << failures.min(5)));
            }
        }
    }
}

fn interrupted(job: &Job) -> String {
    format!(
        "{}: interrupted; the bytes received are kept, run the same command to resume",
        job.label
    )
}

fn host_only(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

fn copy_body(
    mut body: impl Read,
    file: &File,
    mut at: u64,
    end: u64,
    done: &AtomicU64,
    on_bytes: &(dyn Fn(u64) + Sync),
    job: &Job,
) -> Result<(), String> {
    let mut buf = vec![0u8; 1 << 20];
    while at < end {
        if STOP.load(Ordering::SeqCst) {
            return Err(interrupted(job));
        }
        let want = buf.len().min((end - at) as usize);
        let n = match body.read(&mut buf[..want]) {
            Ok(0) => return Err(format!("connection closed at byte {at} of {}", job.size)),
            Ok(n) => n,
            Err(e) => return Err(format!("connection lost at byte {at}: {e}")),
        };
        write_at(file, &buf[..n], at).map_err(|e| format!("writing {}: {e}", job.label))?;
        // Count the bytes only once they are in the file: the record never claims more.
        done.fetch_add(n as u64, Ordering::SeqCst);
        on_bytes(n as u64);
        at += n as u64;
    }
    Ok(())
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, at)
}

#[cfg(not(unix))]
fn write_at(file: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
    std::os::windows::fs::FileExt::seek_write(file, buf, at).map(|_| ())
}

/// Allocate the file's blocks now, so a full disk fails here and not mid-download.
fn reserve(file: &File, size: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fallocate on a descriptor we own.
        let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
        if r == 0 {
            return Ok(());
        }
        if r != libc::EOPNOTSUPP && r != libc::EINVAL {
            return Err(std::io::Error::from_raw_os_error(r));
        }
    }
    if file.metadata()?.len() < size {
        file.set_len(size)?;
    }
    Ok(())
}

/// Bytes from the start of the file that have all arrived.
fn contiguous(p: &Progress, done: &[AtomicU64]) -> u64 {
    let mut end = 0;
    for (i, d) in done.iter().enumerate() {
        let (s, e) = p.span(i);
        let have = d.load(Ordering::SeqCst);
        end = s + have;
        if s + have < e {
            break;
        }
    }
    end
}

/// A running SHA-256 or git blob id over a file's bytes, in order.
struct Digester {
    hasher: Hasher,
    want: String,
    pos: u64,
    buf: Vec<u8>,
}

enum Hasher {
    Sha256(sha2::Sha256),
    GitSha1(sha1::Sha1),
}

impl Digester {
    fn new(expected: &Expected, size: u64) -> Digester {
        let (hasher, want) = match expected {
            Expected::Sha256(w) => (Hasher::Sha256(sha2::Sha256::new()), w.clone()),
            Expected::GitSha1(w) => {
                use sha1::Digest as _;
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                (Hasher::GitSha1(h), w.clone())
            }
        };
        Digester {
            hasher,
            want,
            pos: 0,
            buf: vec![0; 4 << 20],
        }
    }

    /// Hash up to 4 MiB more of the bytes before `upto`; false when there was nothing to do.
    fn advance(&mut self, file: &File, upto: u64) -> bool {
        if self.pos >= upto {
            return false;
        }
        let n = ((upto - self.pos) as usize).min(self.buf.len());
        match read_at(file, &mut self.buf[..n], self.pos) {
            Ok(0) | Err(_) => return false,
            Ok(got) => {
                match &mut self.hasher {
                    Hasher::Sha256(h) => h.update(&self.buf[..got]),
                    Hasher::GitSha1(h) => sha1::Digest::update(h, &self.buf[..got]),
                }
                start_writeback(file, self.pos, got as u64);
                self.pos += got as u64;
            }
        }
        true
    }

    fn finish(self) -> Result<(), String> {
        let (got, what) = match self.hasher {
            Hasher::Sha256(h) => (crate::hex(&h.finalize()), "SHA-256"),
            Hasher::GitSha1(h) => (crate::hex(&sha1::Digest::finalize(h)), "git blob id"),
        };
        if got != self.want {
            return Err(format!(
                "the bytes received have {what} {got}, but the Hub lists {}",
                self.want
            ));
        }
        Ok(())
    }
}

/// Start writing hashed bytes to disk now, so the final sync has little left to wait for.
fn start_writeback(file: &File, at: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a hint on a descriptor we own; failure only means a slower final sync.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                at as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, at, len);
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, at)
}

#[cfg(not(unix))]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, at)
}
