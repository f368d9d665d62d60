//! Host tensors: what checkpoints and model directories hold, before they become a runnable model.

use crate::error::{Error, Result};
use crate::fsutil;
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }
}

/// A tensor exactly as a file stores it: little-endian, contiguous, row-major.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// Float32 values of the given shape, as a file stores them.
    pub fn f32(shape: Vec<usize>, data: &[f32]) -> RawTensor {
        RawTensor { dtype: DType::F32, shape, bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// As a float32 host tensor; a non-float tensor is an error naming it (`name` in `path`).
    pub fn into_host(self, path: &Path, name: &str) -> Result<HostTensor> {
        let data = self.to_f32().ok_or_else(|| Error::tensor(path, name, format!("expected a float tensor, found {}", self.dtype.name())))?;
        Ok(HostTensor { shape: self.shape, data })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the bytes hold exactly the elements the shape and type call for (the readers build
    /// only such tensors; the conversions refuse any other rather than index out of bounds).
    pub fn is_consistent(&self) -> bool {
        self.shape.iter().try_fold(self.dtype.size(), |a, &d| a.checked_mul(d)) == Some(self.bytes.len())
    }

    /// Values as f64, whatever the stored type (bool gives 0/1). Callers check `is_consistent`.
    fn values_f64(&self) -> Vec<f64> {
        let b = &self.bytes;
        let n = self.numel();
        let le2 = |i: usize| [b[2 * i], b[2 * i + 1]];
        let le4 = |i: usize| [b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]];
        let le8 = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[8 * i..8 * i + 8]);
            a
        };
        (0..n)
            .map(|i| match self.dtype {
                DType::F64 => f64::from_le_bytes(le8(i)),
                DType::F32 => f32::from_le_bytes(le4(i)) as f64,
                DType::F16 => half::f16::from_le_bytes(le2(i)).to_f64(),
                DType::BF16 => half::bf16::from_le_bytes(le2(i)).to_f64(),
                DType::I64 => i64::from_le_bytes(le8(i)) as f64,
                DType::I32 => i32::from_le_bytes(le4(i)) as f64,
                DType::I16 => i16::from_le_bytes(le2(i)) as f64,
                DType::I8 => b[i] as i8 as f64,
                DType::U8 => b[i] as f64,
                DType::Bool => (b[i] != 0) as u8 as f64,
            })
            .collect()
    }

    /// Float data as f32 (float16/bfloat16/float64 are converted). Integer tensors are refused:
    /// a weight stored as an integer means the wrong tensor was picked.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        if !self.is_consistent() {
            return None;
        }
        match self.dtype {
            DType::F32 => Some(self.bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            d if d.is_float() => Some(self.values_f64().into_iter().map(|v| v as f32).collect()),
            _ => None,
        }
    }

    /// Integer or boolean data as i64 (masks, counts).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        if self.dtype.is_float() || !self.is_consistent() {
            return None;
        }
        Some(self.values_f64().into_iter().map(|v| v as i64).collect())
    }
}

/// A float32 tensor owned by the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape {shape:?} does not match {} values", data.len());
        HostTensor { shape, data }
    }
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        HostTensor { shape, data: vec![0.0; n] }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

pub type TensorMap = BTreeMap<String, HostTensor>;

/// Weights must be finite: a NaN or infinity read from a file would silently turn every output
/// into NaN. The error names the tensor and the first bad element.
pub fn check_finite_weights(t: &HostTensor, path: &Path, name: &str) -> Result<()> {
    match t.data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::tensor(path, name, format!("element {i} is {}; weights must be finite", t.data[i]))),
        None => Ok(()),
    }
}

pub fn shape_str(shape: &[usize]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

fn dtype_from_st(path: &Path, name: &str, d: StDtype) -> Result<DType> {
    Ok(match d {
        StDtype::F64 => DType::F64,
        StDtype::F32 => DType::F32,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::I64 => DType::I64,
        StDtype::I32 => DType::I32,
        StDtype::I16 => DType::I16,
        StDtype::I8 => DType::I8,
        StDtype::U8 => DType::U8,
        StDtype::BOOL => DType::Bool,
        other => return Err(Error::tensor(path, name, format!("unsupported dtype {other:?}"))),
    })
}

/// A safetensors file, memory-mapped.
pub struct SafetensorsFile {
    path: std::path::PathBuf,
    mmap: memmap2::Mmap,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY (the one `unsafe` block outside amg-kernels, hence the allow): the mapping is read-only and lives as long as `self`; a file truncated underneath
        // us is the usual mmap caveat, accepted by every safetensors reader.
        #[allow(unsafe_code)]
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        SafeTensors::deserialize(&mmap).map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
        Ok(SafetensorsFile { path: path.to_path_buf(), mmap })
    }

    fn parsed(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.mmap).expect("validated in open")
    }

    pub fn metadata(&self) -> HashMap<String, String> {
        SafeTensors::read_metadata(&self.mmap).ok().and_then(|(_, m)| m.metadata().clone()).unwrap_or_default()
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.parsed().names().into_iter().map(String::from).collect();
        v.sort();
        v
    }

    fn view_to_raw(&self, name: &str, view: TensorView<'_>) -> Result<RawTensor> {
        Ok(RawTensor { dtype: dtype_from_st(&self.path, name, view.dtype())?, shape: view.shape().to_vec(), bytes: view.data().to_vec() })
    }

    pub fn raw(&self, name: &str) -> Result<RawTensor> {
        let view = self.parsed().tensor(name).map_err(|_| Error::tensor(&self.path, name, "missing"))?;
        self.view_to_raw(name, view)
    }

    pub fn all_raw(&self) -> Result<BTreeMap<String, RawTensor>> {
        self.parsed().tensors().into_iter().map(|(name, view)| Ok((name.clone(), self.view_to_raw(&name, view)?))).collect()
    }

    /// Every tensor as float32; a non-float tensor is an error naming it.
    pub fn all_f32(&self) -> Result<TensorMap> {
        let mut out = TensorMap::new();
        for (name, view) in self.parsed().tensors() {
            let t = self.view_to_raw(&name, view)?.into_host(&self.path, &name)?;
            out.insert(name, t);
        }
        Ok(out)
    }
}

struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl safetensors::View for F32View<'_> {
    fn dtype(&self) -> StDtype {
        StDtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let mut bytes = Vec::with_capacity(self.data.len() * 4);
        for v in self.data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        std::borrow::Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// A tensor of any type as safetensors writes it.
struct RawView<'a>(&'a RawTensor);

impl safetensors::View for RawView<'_> {
    fn dtype(&self) -> StDtype {
        match self.0.dtype {
            DType::F64 => StDtype::F64,
            DType::F32 => StDtype::F32,
            DType::F16 => StDtype::F16,
            DType::BF16 => StDtype::BF16,
            DType::I64 => StDtype::I64,
            DType::I32 => StDtype::I32,
            DType::I16 => StDtype::I16,
            DType::I8 => StDtype::I8,
            DType::U8 => StDtype::U8,
            DType::Bool => StDtype::BOOL,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.0.bytes)
    }
    fn data_len(&self) -> usize {
        self.0.bytes.len()
    }
}

/// Writes tensors of any type (and string metadata) to a safetensors file, atomically.
pub fn write_raw_safetensors(path: &Path, tensors: BTreeMap<String, RawTensor>, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let views = tensors.iter().map(|(k, t)| (k.clone(), RawView(t)));
    let bytes = safetensors::serialize(views, metadata).map_err(|e| Error::file(path, format!("cannot serialise tensors: {e}")))?;
    fsutil::write_bytes_atomic(path, &bytes)
}

/// Every tensor as float32; a non-float tensor is an error naming it (`path`: the file they came
/// from).
pub fn raw_to_f32(raw: BTreeMap<String, RawTensor>, path: &Path) -> Result<TensorMap> {
    raw.into_iter().map(|(name, t)| Ok((name.clone(), t.into_host(path, &name)?))).collect()
}

/// Writes float32 tensors (and string metadata) to a safetensors file, atomically.
pub fn write_safetensors(path: &Path, tensors: &TensorMap, metadata: Option<HashMap<String, String>>) -> Result<()> {
    write_named_safetensors(path, tensors.iter().map(|(k, t)| (k.clone(), t)), metadata)
}

/// As `write_safetensors`, from (name, tensor) pairs.
pub fn write_named_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (String, &'a HostTensor)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views = tensors.into_iter().map(|(k, t)| (k, F32View { shape: &t.shape, data: &t.data }));
    let bytes = safetensors::serialize(views, metadata).map_err(|e| Error::file(path, format!("cannot serialise tensors: {e}")))?;
    fsutil::write_bytes_atomic(path, &bytes)
}
