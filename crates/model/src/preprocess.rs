//! Images into model inputs, as the PyTorch Re-ID pipelines do it: decode, convert to RGB,
//! `Resize((H, W), BICUBIC)` on the PIL image, `ToTensor()`, `Normalize(mean, std)`.

use crate::error::{Error, Result};
use crate::resample::resize_rgb8_pil;
use std::path::{Path, PathBuf};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// What a model takes: the input size and the normalisation (recorded in its `config.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputSpec {
    pub height: usize,
    pub width: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

pub fn is_image_file(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).map(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e))).unwrap_or(false)
}

/// An 8-bit RGB image, row-major `[h, w, 3]`.
#[derive(Clone, Debug)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Largest image side amg decodes, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 16384;
/// Most memory the decoder may allocate for one image.
pub const MAX_IMAGE_BYTES: u64 = 512 << 20;

/// Decodes a JPEG/PNG file to RGB (alpha dropped and grey replicated, as PIL's `convert("RGB")`).
pub fn load_rgb(path: &Path) -> Result<Rgb8> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    check_jpeg_complete(&bytes).map_err(|why| Error::file(path, format!("damaged JPEG: {why}")))?;
    check_png_complete(&bytes).map_err(|why| Error::file(path, format!("damaged PNG: {why}")))?;
    // The header's claimed size is checked before the decoder allocates: a few hundred bytes of
    // PNG can claim gigapixels. Re-ID crops are far below these limits.
    let mut reader = image::ImageReader::new(std::io::Cursor::new(&bytes)).with_guessed_format().map_err(|e| Error::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| Error::file(path, format!("cannot decode image: {e}")))?;
    let rgb = img.to_rgb8();
    Ok(Rgb8 { width: rgb.width() as usize, height: rgb.height() as usize, data: rgb.into_raw() })
}

/// A JPEG's decoder fills whatever is missing with grey and reports nothing, so a truncated or
/// cut-off file would silently become a feature. This walks the file's marker structure (segment
/// lengths, then the entropy-coded data of each scan up to the next marker) and requires the
/// end-of-image marker; bytes after it are allowed, as cameras often append some. Not a JPEG
/// (no start-of-image marker): nothing to check here.
pub fn check_jpeg_complete(b: &[u8]) -> std::result::Result<(), String> {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Ok(());
    }
    let truncated = |at: usize| Err(format!("the file ends at byte {} before its end-of-image marker (truncated?)", at.min(b.len())));
    let mut i = 2;
    loop {
        match b.get(i) {
            None => return truncated(i),
            Some(0xFF) => {}
            Some(&x) => return Err(format!("byte {i}: expected a marker (0xFF), found 0x{x:02X}")),
        }
        while b.get(i) == Some(&0xFF) {
            i += 1; // fill bytes
        }
        let Some(&marker) = b.get(i) else { return truncated(i) };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD7 => continue, // markers without a segment
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (b.get(i), b.get(i + 1)) else { return truncated(i) };
        let len = usize::from(hi) << 8 | usize::from(lo);
        if len < 2 {
            return Err(format!("byte {i}: segment length {len} (at least 2)"));
        }
        i += len;
        if i > b.len() {
            return truncated(b.len());
        }
        if marker == 0xDA {
            // Entropy-coded data: runs until a marker other than a stuffed 0xFF00 or a restart.
            loop {
                match (b.get(i), b.get(i + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => i += 2,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => i += 1,
                    (None, _) => return truncated(i),
                }
            }
        }
    }
}

/// The PNG decoder accepts a file that stops after its image data; a complete PNG ends with an
/// IEND chunk. This walks the chunks by their lengths and requires a whole IEND. Not a PNG: nothing
/// to check here.
pub fn check_png_complete(b: &[u8]) -> std::result::Result<(), String> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    if !b.starts_with(&SIGNATURE) {
        return Ok(());
    }
    let mut i = SIGNATURE.len();
    loop {
        let Some(head) = b.get(i..i + 8) else {
            return Err(format!("the file ends at byte {} before its IEND chunk (truncated?)", b.len()));
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        // length, type, data, CRC
        let end = i.checked_add(12).and_then(|v| v.checked_add(len)).filter(|&e| e <= b.len());
        let Some(end) = end else {
            return Err(format!("chunk `{}` at byte {i} runs past the end of the file (truncated?)", String::from_utf8_lossy(&head[4..8])));
        };
        if &head[4..8] == b"IEND" {
            return Ok(());
        }
        i = end;
    }
}

/// Resizes (Pillow bicubic; nothing when already the right size) and normalises into `out`
/// (`[3, H, W]`, channel-major), optionally mirrored left-right.
pub fn to_input(img: &Rgb8, spec: &InputSpec, flip: bool, out: &mut [f32]) {
    let (h, w) = (spec.height, spec.width);
    assert_eq!(out.len(), 3 * h * w);
    let resized;
    let px = if img.height == h && img.width == w {
        &img.data
    } else {
        resized = resize_rgb8_pil(&img.data, img.height, img.width, h, w);
        &resized
    };
    for c in 0..3 {
        let (mean, std) = (spec.mean[c], spec.std[c]);
        let plane = &mut out[c * h * w..(c + 1) * h * w];
        for y in 0..h {
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x };
                // ToTensor divides by 255 in float32, Normalize subtracts and divides.
                plane[y * w + x] = (px[(y * w + sx) * 3 + c] as f32 / 255.0 - mean) / std;
            }
        }
    }
}

/// Loads one image file as a model input.
pub fn load_input(path: &Path, spec: &InputSpec, flip: bool) -> Result<Vec<f32>> {
    let img = load_rgb(path)?;
    let mut out = vec![0f32; 3 * spec.height * spec.width];
    to_input(&img, spec, flip, &mut out);
    Ok(out)
}

/// Expands a list of files and directories into image files sorted by file name (then path).
/// Non-image files inside directories are skipped and counted; a named file that is not an image
/// is an error.
pub fn collect_images(inputs: &[PathBuf]) -> Result<(Vec<PathBuf>, usize)> {
    let mut files = Vec::new();
    let mut skipped = 0;
    for p in inputs {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| Error::io(p, e))?;
            for entry in rd {
                let e = entry.map_err(|e| Error::io(p, e))?;
                let path = e.path();
                if path.is_file() {
                    if is_image_file(&path) {
                        files.push(path);
                    } else {
                        skipped += 1;
                    }
                }
            }
        } else if p.is_file() {
            if !is_image_file(p) {
                return Err(Error::file(p, format!("not an image file (expected one of: {})", IMAGE_EXTENSIONS.join(", "))));
            }
            files.push(p.clone());
        } else {
            return Err(Error::file(p, "no such file or directory"));
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()).then_with(|| a.cmp(b)));
    files.dedup();
    Ok((files, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str) -> (PathBuf, Vec<u8>) {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/image_cases").join(name);
        let b = std::fs::read(&p).unwrap();
        (p, b)
    }

    /// Every file `tools/fixtures/make_image_cases.py` wrote with Pillow reads, and every strict prefix of
    /// it (a truncated download or copy) is refused — for baseline, progressive and
    /// restart-marker JPEGs and for PNG.
    #[test]
    fn complete_images_read_and_every_truncation_is_refused() {
        let dir = std::env::temp_dir().join(format!("amg-trunc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["baseline.jpg", "progressive.jpg", "restart.jpg", "trailing.jpg", "plain.png"] {
            let (path, bytes) = case(name);
            let img = load_rgb(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((img.height, img.width), (48, 24), "{name}");
            let cut = dir.join(name);
            // The trailer after the end-of-image marker may go; nothing before it may.
            let needed = if name == "trailing.jpg" { case("baseline.jpg").1.len() } else { bytes.len() };
            for n in 0..needed {
                std::fs::write(&cut, &bytes[..n]).unwrap();
                let r = load_rgb(&cut);
                assert!(r.is_err(), "{name} cut to {n} of {} bytes was read", bytes.len());
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_truncated_jpeg_error_names_the_file_and_says_truncated() {
        let (path, bytes) = case("baseline.jpg");
        let dir = std::env::temp_dir().join(format!("amg-trunc-msg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cut = dir.join("cut.jpg");
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let e = load_rgb(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.jpg") && e.contains("truncated"), "{e}");
        assert!(load_rgb(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
