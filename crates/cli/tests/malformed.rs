//! Malformed and hostile model files end in a one-line error naming the file and the
//! problem, a non-zero exit code, and no panic. The mutations start from the real
//! default model.

use std::path::{Path, PathBuf};
use std::process::Command;

fn verity() -> Command {
    Command::new(env!("CARGO_BIN_EXE_verity"))
}

fn default_model() -> PathBuf {
    verity_store::resolve(None).expect("default model")
}

/// Run `verity run` on a file; return (exit code, stderr).
fn run_on(path: &Path) -> (i32, String) {
    let out = verity()
        .args(["run", "--raw", "-n", "1", "-m"])
        .arg(path)
        .arg("hello")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn expect_clean_error(path: &Path, what: &str, needle: &str) {
    let (code, stderr) = run_on(path);
    assert_eq!(code, 1, "{what}: exit code {code}, stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line, got:\n{stderr}");
    let line = lines[0];
    assert!(line.starts_with("verity: error:"), "{what}: {line}");
    assert!(!line.contains("panicked"), "{what}: {line}");
    assert!(
        line.contains(&path.display().to_string()),
        "{what}: error does not name the file: {line}"
    );
    assert!(
        line.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: expected '{needle}' in: {line}"
    );
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

struct Mutant {
    dir: tempfile::TempDir,
}

impl Mutant {
    fn new() -> Self {
        Mutant {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

#[test]
fn malformed_files_give_one_line_errors() {
    let original = std::fs::read(default_model()).unwrap();
    let m = Mutant::new();

    let p = m.write("truncated-header.gguf", &original[..100_000]);
    expect_clean_error(&p, "truncated in the header", "truncated");
    let p = m.write("truncated-data.gguf", &original[..original.len() - 1000]);
    expect_clean_error(&p, "truncated in the data", "outside the file");
    let p = m.write("tiny.gguf", &original[..6]);
    expect_clean_error(&p, "six bytes", "truncated");
    let p = m.write("empty.gguf", b"");
    expect_clean_error(&p, "empty", "truncated");

    let mut bad = original.clone();
    bad[..4].copy_from_slice(b"GGML");
    let p = m.write("magic.gguf", &bad);
    expect_clean_error(&p, "wrong magic", "not a GGUF file");

    let mut bad = original.clone();
    bad[4..8].copy_from_slice(&7u32.to_le_bytes());
    let p = m.write("version.gguf", &bad);
    expect_clean_error(&p, "unknown version", "version 7");

    let mut bad = original.clone();
    bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let p = m.write("tensor-count.gguf", &bad);
    expect_clean_error(&p, "absurd tensor count", "tensor count");

    let mut bad = original.clone();
    bad[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let p = m.write("kv-count.gguf", &bad);
    expect_clean_error(&p, "absurd metadata count", "metadata count");

    // The first metadata key's length.
    let mut bad = original.clone();
    bad[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    let p = m.write("key-length.gguf", &bad);
    expect_clean_error(&p, "absurd string length", "truncated");

    // general.architecture = "llama" -> "lxama".
    let mut bad = original.clone();
    let at = find(&bad, b"general.architecture") + "general.architecture".len() + 4 + 8;
    assert_eq!(&bad[at..at + 5], b"llama");
    bad[at + 1] = b'x';
    let p = m.write("arch.gguf", &bad);
    expect_clean_error(
        &p,
        "unknown architecture",
        "unsupported architecture 'lxama'",
    );

    // Tensor info of output_norm.weight: name, n_dims u32, dims, type u32, offset u64.
    let info = find(&original, b"output_norm.weight") + "output_norm.weight".len();
    let n_dims = u32::from_le_bytes(original[info..info + 4].try_into().unwrap()) as usize;
    let type_at = info + 4 + 8 * n_dims;
    let offset_at = type_at + 4;

    let mut bad = original.clone();
    bad[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes()); // IQ2_XXS
    let p = m.write("tensor-type.gguf", &bad);
    expect_clean_error(&p, "unsupported tensor type", "IQ2_XXS");

    let mut bad = original.clone();
    bad[type_at..type_at + 4].copy_from_slice(&1000u32.to_le_bytes());
    let p = m.write("tensor-type-unknown.gguf", &bad);
    expect_clean_error(&p, "unknown tensor type", "unknown type id 1000");

    let mut bad = original.clone();
    bad[offset_at..offset_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let p = m.write("tensor-offset.gguf", &bad);
    expect_clean_error(&p, "tensor out of bounds", "outside the file");

    let mut bad = original.clone();
    bad[info + 4..info + 12].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let p = m.write("tensor-dims.gguf", &bad);
    expect_clean_error(&p, "absurd dimension", "output_norm.weight");

    let p = m.write("pytorch_model.bin", b"\x80\x02}q\x00.");
    expect_clean_error(&p, "pickle", "pickle");

    let p = m.dir.path().join("does-not-exist.gguf");
    expect_clean_error(&p, "missing file", "no model");
}

/// Hundreds of random corruptions of the header and vocabulary: never a panic, always
/// a one-line error (or, rarely, a file that still loads). One copy is patched in place
/// and restored after each try.
#[test]
fn random_header_corruption_never_panics() {
    use std::os::unix::fs::FileExt;
    let original = std::fs::read(default_model()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.gguf");
    std::fs::write(&p, &original).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut failures = 0;
    for i in 0..400 {
        // Mostly the fixed header and the first keys; sometimes anywhere in the metadata.
        let span = if i % 4 == 0 { 2_000_000 } else { 4096 };
        let patches: Vec<(u64, u8)> = (0..1 + next() % 6)
            .map(|_| (next() % span, next() as u8))
            .collect();
        for &(at, b) in &patches {
            file.write_at(&[b], at).unwrap();
        }
        let result = std::panic::catch_unwind(|| verity_model::load(&p).map(|_| ()));
        for &(at, _) in &patches {
            file.write_at(&original[at as usize..at as usize + 1], at)
                .unwrap();
        }
        match result {
            Err(_) => panic!("mutation {i} ({patches:?}) made the loader panic"),
            Ok(Err(e)) => {
                failures += 1;
                let msg = e.to_string();
                let head: String = msg.chars().take(300).collect();
                assert!(
                    !msg.contains('\n'),
                    "mutation {i} ({patches:?}): multi-line error: {head}"
                );
                assert!(
                    msg.len() < 1000,
                    "mutation {i} ({patches:?}): {}-byte error: {head}",
                    msg.len()
                );
            }
            Ok(Ok(())) => {}
        }
    }
    assert!(
        failures > 50,
        "only {failures} of 400 corruptions were detected"
    );
}
