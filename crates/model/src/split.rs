//! Split GGUF models, as llama.cpp's `gguf-split` and gguf-py's writer make them:
//! `PREFIX-00001-of-00003.gguf` … each a complete GGUF carrying `split.no` (0-based),
//! `split.count` and `split.tensors.count`. The first part holds the model's metadata and
//! tokenizer; the tensors are spread over all parts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use verity_formats::gguf::{Gguf, TensorInfo};
use verity_formats::{FormatError, Residency};

use crate::load::LoadErrorKind;

/// Every part of a GGUF model, in order (one for an unsplit file). Tensor names are
/// unique across parts (checked at open).
pub(crate) struct GgufParts(pub Vec<Arc<Gguf>>);

impl GgufParts {
    /// The part holding a tensor, and its entry there.
    pub fn tensor(&self, name: &str) -> Option<(&Gguf, &TensorInfo)> {
        self.0
            .iter()
            .find_map(|g| g.tensor(name).map(|t| (g.as_ref(), t)))
    }
}

/// A name of the form `PREFIX-NNNNN-of-NNNNN.gguf`: (prefix, part number from 1, count).
fn parse_name(path: &Path) -> Option<(String, usize, usize)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if prefix.is_empty() || !digits(no) || !digits(count) {
        return None;
    }
    Some((prefix.to_string(), no.parse().ok()?, count.parse().ok()?))
}

fn part_name(prefix: &str, no: usize, count: usize) -> String {
    format!("{prefix}-{no:05}-of-{count:05}.gguf")
}

/// Open a GGUF file and, when it is a part of a split model, every other part from the
/// same directory; any part may be given. Parts are checked against each other.
pub(crate) fn open(path: &Path, residency: Residency) -> Result<GgufParts, LoadErrorKind> {
    let opened = Arc::new(Gguf::open_with(path, residency)?);
    let named = parse_name(path);
    // The metadata decides; the name alone marks a split only when the file says nothing.
    let count = match (opened.get_u64("split.count"), &named) {
        (Some(c), _) => c as usize,
        (None, Some((_, _, n))) => *n,
        (None, None) => 1,
    };
    if count <= 1 {
        return Ok(GgufParts(vec![opened]));
    }
    let invalid = |m: String| LoadErrorKind::Invalid(m);
    let Some((prefix, opened_no, named_count)) = named else {
        return Err(invalid(format!(
            "this is one part of a model split into {count} files, but its name does not end in \
             -NNNNN-of-{count:05}.gguf, so the other parts cannot be found; keep the file names \
             the parts were published with"
        )));
    };
    if named_count != count || opened_no == 0 || opened_no > count {
        return Err(invalid(format!(
            "the file name says part {opened_no} of {named_count}, its split.count says {count} \
             parts"
        )));
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    let redownload =
        format!("download all {count} parts into one directory (e.g. with `verity pull`)");

    let paths: Vec<PathBuf> = (1..=count)
        .map(|no| dir.join(part_name(&prefix, no, count)))
        .collect();
    let missing: Vec<String> = paths
        .iter()
        .enumerate()
        .filter(|&(i, p)| i + 1 != opened_no && !p.exists())
        .map(|(_, p)| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "split model of {count} parts: {} {} missing; {redownload}",
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" }
        )));
    }

    let mut parts = Vec::with_capacity(count);
    for (i, p) in paths.iter().enumerate() {
        let file = p.file_name().unwrap_or_default().to_string_lossy();
        let g = if i + 1 == opened_no {
            opened.clone()
        } else {
            // An I/O error names its file already; parse errors do not.
            Arc::new(Gguf::open_with(p, residency).map_err(|e| match e {
                FormatError::Io { .. } => LoadErrorKind::Format(e),
                e => invalid(format!("{file}: {e}")),
            })?)
        };
        let no = g.get_u64("split.no");
        let n = g.get_u64("split.count");
        if no != Some(i as u64) || n != Some(count as u64) {
            let show = |v: Option<u64>| v.map_or("absent".to_string(), |v| v.to_string());
            return Err(invalid(format!(
                "{file} is not part {} of {count} of this split model (split.no {}, split.count \
                 {}; expected {i} and {count}); {redownload}",
                i + 1,
                show(no),
                show(n)
            )));
        }
        parts.push(g);
    }

    let mut names = HashSet::new();
    for (g, p) in parts.iter().zip(&paths) {
        for t in &g.tensors {
            if !names.insert(t.name.as_str()) {
                return Err(invalid(format!(
                    "tensor '{}' is in more than one part of the split model (again in {})",
                    verity_formats::printable(&t.name),
                    p.display()
                )));
            }
        }
    }
    if let Some(want) = parts[0].get_u64("split.tensors.count") {
        if want != names.len() as u64 {
            return Err(invalid(format!(
                "split model: the first part's split.tensors.count says {want} tensors, the \
                 {count} parts hold {}; {redownload}",
                names.len()
            )));
        }
    }
    Ok(GgufParts(parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use verity_formats::gguf::Value;
    use verity_formats::gguf_write::{GgufWriter, OutTensor};
    use verity_formats::TensorType;

    /// A directory removed on drop.
    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(test: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("verity-split-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// A GGUF with the given split keys and one-element F32 tensors.
    fn write(path: &Path, split: Option<(u16, u16, i32)>, tensors: &[&str]) {
        let mut w = GgufWriter::new();
        if let Some((no, count, total)) = split {
            w.set("split.no", Value::U16(no));
            w.set("split.count", Value::U16(count));
            w.set("split.tensors.count", Value::I32(total));
        }
        for name in tensors {
            w.add_tensor(OutTensor {
                name: name.to_string(),
                ty: TensorType::F32,
                shape: vec![1],
                data: vec![0; 4],
            });
        }
        w.write(&mut std::fs::File::create(path).unwrap()).unwrap();
    }

    fn err(path: &Path) -> String {
        match open(path, Residency::Mapped) {
            Ok(_) => panic!("{} opened", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parts_from_any_part_and_inconsistencies() {
        let d = dir("open");
        let p = |no: usize, n: usize| d.0.join(part_name("m", no, n));
        write(&p(1, 2), Some((0, 2, 3)), &["a", "b"]);
        write(&p(2, 2), Some((1, 2, 3)), &["c"]);
        for opened in [p(1, 2), p(2, 2)] {
            let parts = open(&opened, Residency::Mapped).unwrap();
            assert_eq!(parts.0.len(), 2);
            assert_eq!(parts.0[0].path(), Some(p(1, 2).as_path()));
            assert!(parts.tensor("c").is_some() && parts.tensor("d").is_none());
        }

        // split.count says 2 but the name cannot lead to the other part.
        let renamed = d.0.join("renamed.gguf");
        std::fs::copy(p(1, 2), &renamed).unwrap();
        assert!(err(&renamed).contains("does not end in -NNNNN-of-00002.gguf"));

        // A tensor in two parts; then a wrong split.tensors.count.
        write(&p(2, 2), Some((1, 2, 3)), &["b"]);
        assert!(err(&p(1, 2)).contains("tensor 'b' is in more than one part"));
        write(&p(2, 2), Some((1, 2, 3)), &["c", "d"]);
        assert!(err(&p(1, 2)).contains("split.tensors.count says 3 tensors, the 2 parts hold 4"));

        // Named as a part but without split keys; a complete file named as one of one.
        write(&p(2, 2), None, &["c"]);
        assert!(err(&p(1, 2)).contains("(split.no absent, split.count absent; expected 1 and 2)"));
        write(&p(1, 1), None, &["a"]);
        assert_eq!(open(&p(1, 1), Residency::Mapped).unwrap().0.len(), 1);
    }

    #[test]
    fn names() {
        let p = |s: &str| parse_name(Path::new(s));
        assert_eq!(
            p("/m/Qwen-7B-Q4_K_M-00002-of-00003.gguf"),
            Some(("Qwen-7B-Q4_K_M".into(), 2, 3))
        );
        assert_eq!(p("a-00001-of-00001.gguf"), Some(("a".into(), 1, 1)));
        assert_eq!(p("model.gguf"), None);
        assert_eq!(p("-00001-of-00002.gguf"), None);
        assert_eq!(p("a-0001-of-00002.gguf"), None);
        assert_eq!(p("a-00001-of-00002.bin"), None);
        assert_eq!(part_name("x", 3, 12), "x-00003-of-00012.gguf");
    }
}
