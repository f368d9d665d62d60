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
