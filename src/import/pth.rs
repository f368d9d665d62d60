//! Reads PyTorch `.pth` checkpoints (the zip container of `torch.save`) without executing pickled
//! code. The pickle program is interpreted by a small stack machine that knows how to rebuild
//! exactly what a state dict needs — tensors, parameters, dicts, lists, numbers, strings, NumPy
//! scalars and arrays. Any other global is never called: it becomes an `Opaque` value, and using
//! such a value where data is needed is an error naming it.

use crate::error::{Error, Result};
use crate::tensor::{DType, RawTensor};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Rc<RefCell<Vec<Value>>>),
    Tuple(Rc<Vec<Value>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(String),
    /// A tensor storage named by its key in the archive's `data/` folder.
    Storage {
        key: String,
        dtype: DType,
    },
    Tensor(Rc<TensorRef>),
    NumpyDtype(String),
    /// A NumPy array, decoded.
    Array(Rc<RawTensor>),
    /// An object amg does not rebuild (a class instance, a function result); the string says what.
    Opaque(String),
}

#[derive(Debug)]
pub struct TensorRef {
    pub key: String,
    pub dtype: DType,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl Value {
    fn list(v: Vec<Value>) -> Value {
        Value::List(Rc::new(RefCell::new(v)))
    }
    fn dict() -> Value {
        Value::Dict(Rc::new(RefCell::new(Vec::new())))
    }

    /// A short description, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) => format!("str {s:?}"),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::List(l) => format!("list of {}", l.borrow().len()),
            Value::Tuple(t) => format!("tuple of {}", t.len()),
            Value::Dict(d) => format!("dict of {}", d.borrow().len()),
            Value::Global(g) => format!("global {g}"),
            Value::Storage { .. } => "storage".into(),
            Value::Tensor(t) => format!("tensor {:?} {}", t.shape, t.dtype.name()),
            Value::NumpyDtype(d) => format!("numpy dtype {d}"),
            Value::Array(a) => format!("numpy array {:?} {}", a.shape, a.dtype.name()),
            Value::Opaque(s) => format!("object `{s}`"),
        }
    }

    /// Looks a string key up in a dict value.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d.borrow().iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    /// An integer from a Python int, a NumPy scalar, a 0-d/1-element tensor or array.
    pub fn as_int(&self, pth: &PthFile) -> Result<Option<i64>> {
        Ok(match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            Value::Tensor(_) | Value::Array(_) => {
                let raw = pth.materialise(self, "value")?;
                match raw.to_i64() {
                    Some(v) if v.len() == 1 => Some(v[0]),
                    _ => None,
                }
            }
            _ => None,
        })
    }
}

fn storage_dtype(name: &str) -> Option<DType> {
    let n = name.rsplit('.').next().unwrap_or(name);
    Some(match n {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" | "UntypedStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        _ => return None,
    })
}

fn numpy_dtype(descr: &str) -> Option<DType> {
    let t = descr.trim_start_matches(['<', '|', '=']);
    Some(match t {
        "f8" | "float64" => DType::F64,
        "f4" | "float32" => DType::F32,
        "f2" | "float16" => DType::F16,
        "i8" | "int64" => DType::I64,
        "i4" | "int32" => DType::I32,
        "i2" | "int16" => DType::I16,
        "i1" | "int8" => DType::I8,
        "u1" | "uint8" => DType::U8,
        "b1" | "bool" => DType::Bool,
        _ => return None,
    })
}

/// The pickle virtual machine, restricted to data.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: BTreeMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> String {
        format!("pickle byte {}: {msg}", self.pos)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.pos + n > self.data.len() {
            return Err(self.err("unexpected end of data"));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<String, String> {
        let start = self.pos;
        while self.pos < self.data.len() && self.data[self.pos] != b'\n' {
            self.pos += 1;
        }
        if self.pos >= self.data.len() {
            return Err(self.err("unterminated line"));
        }
        let s = String::from_utf8_lossy(&self.data[start..self.pos]).into_owned();
        self.pos += 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn top(&mut self) -> Result<&mut Value, String> {
        let e = self.err("stack underflow");
        self.stack.last_mut().ok_or(e)
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or_else(|| self.err("MARK missing"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK beyond stack"));
        }
        Ok(self.stack.split_off(m))
    }
    fn utf8(&self, b: &[u8]) -> Result<String, String> {
        String::from_utf8(b.to_vec()).map_err(|_| self.err("invalid UTF-8 string"))
    }
    fn memo_get(&self, i: u32) -> Result<Value, String> {
        self.memo.get(&i).cloned().ok_or_else(|| self.err(format!("memo {i} missing")))
    }
    fn memo_put(&mut self, i: u32) -> Result<(), String> {
        let v = self.stack.last().cloned().ok_or_else(|| self.err("stack underflow"))?;
        self.memo.insert(i, v);
        Ok(())
    }

    fn run(mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.stack.push(Value::Int(v))
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.stack.push(Value::Int(v))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(self.err("integer wider than 64 bits"));
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'I' | b'L' => {
                    let s = self.line()?;
                    let s = s.trim_end_matches('L');
                    let v = match s {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        _ => Value::Int(s.parse().map_err(|_| self.err(format!("bad integer {s:?}")))?),
                    };
                    self.stack.push(v)
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.stack.push(Value::Float(f64::from_be_bytes(b.try_into().unwrap())))
                }
                b'F' => {
                    let s = self.line()?;
                    self.stack.push(Value::Float(s.parse().map_err(|_| self.err(format!("bad float {s:?}")))?))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.stack.push(Value::Str(s))
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.stack.push(Value::Str(s))
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.stack.push(Value::Str(s))
                }
                b'V' => {
                    let s = self.line()?;
                    self.stack.push(Value::Str(s))
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                0x8e | 0x96 => {
                    let n = self.u64()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'}' => self.stack.push(Value::dict()),
                b']' => self.stack.push(Value::list(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::list(items))
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = Value::dict();
                    if let Value::Dict(m) = &d {
                        let mut m = m.borrow_mut();
                        for kv in items.chunks(2) {
                            if kv.len() == 2 {
                                m.push((kv[0].clone(), kv[1].clone()));
                            }
                        }
                    }
                    self.stack.push(d)
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                0x85 => {
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(Rc::new(vec![a])))
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(Rc::new(vec![a, b])))
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(Rc::new(vec![a, b, c])))
                }
                0x8f => self.stack.push(Value::list(Vec::new())), // EMPTY_SET, kept as a list
                0x90 => {
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().extend(items);
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::list(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().push(v),
                        _ => return Err(self.err("APPEND to a non-list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        Value::Opaque(_) => {}
                        _ => return Err(self.err("APPENDS to a non-list")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.borrow_mut().push((k, v)),
                        Value::Opaque(_) => {}
                        _ => return Err(self.err("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::Dict(d) => {
                            let mut d = d.borrow_mut();
                            for kv in items.chunks(2) {
                                if kv.len() == 2 {
                                    d.push((kv[0].clone(), kv[1].clone()));
                                }
                            }
                        }
                        Value::Opaque(_) => {}
                        _ => return Err(self.err("SETITEMS on a non-dict")),
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v)
                }
                b'p' => {
                    let s = self.line()?;
                    let i = s.parse().map_err(|_| self.err("bad PUT index"))?;
                    self.memo_put(i)?
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?
                }
                b'g' => {
                    let s = self.line()?;
                    let i = s.parse().map_err(|_| self.err("bad GET index"))?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v)
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.stack.push(v)
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}")))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(format!("{m}.{n}"))),
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.stack.push(v)
                }
                b'P' => return Err(self.err("text persistent ids are not used by torch.save")),
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.stack.push(v)
                }
                0x81 => {
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    let v = match cls {
                        Value::Global(g) if g == "collections.OrderedDict" => Value::dict(),
                        Value::Global(g) => Value::Opaque(g),
                        other => Value::Opaque(other.describe()),
                    };
                    self.stack.push(v)
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    let v = match cls {
                        Value::Global(g) => Value::Opaque(g),
                        other => Value::Opaque(other.describe()),
                    };
                    self.stack.push(v)
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.pop()?;
                    let v = self.build(obj, state)?;
                    self.stack.push(v)
                }
                other => return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}"))),
            }
        }
    }

    fn persistent_load(&self, pid: Value) -> Result<Value, String> {
        let t = match pid {
            Value::Tuple(t) => t,
            other => return Err(self.err(format!("persistent id is {}, expected a tuple", other.describe()))),
        };
        match (t.first(), t.get(1), t.get(2)) {
            (Some(Value::Str(kind)), Some(Value::Global(ty)), Some(Value::Str(key))) if kind == "storage" => {
                let dtype = storage_dtype(ty).ok_or_else(|| self.err(format!("unsupported storage type `{ty}`")))?;
                Ok(Value::Storage { key: key.clone(), dtype })
            }
            _ => Err(self.err("unrecognised persistent id (not a torch storage)")),
        }
    }

    fn reduce(&self, func: Value, args: Value) -> Result<Value, String> {
        let name = match &func {
            Value::Global(g) => g.clone(),
            other => return Ok(Value::Opaque(format!("call of {}", other.describe()))),
        };
        let args: Vec<Value> = match args {
            Value::Tuple(t) => t.as_ref().clone(),
            _ => Vec::new(),
        };
        let int = |v: &Value| match v {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            other => Err(self.err(format!("expected a non-negative int, found {}", other.describe()))),
        };
        let ints = |v: &Value| match v {
            Value::Tuple(t) => t.iter().map(int).collect::<Result<Vec<_>, _>>(),
            Value::List(l) => l.borrow().iter().map(int).collect::<Result<Vec<_>, _>>(),
            other => Err(self.err(format!("expected a tuple of ints, found {}", other.describe()))),
        };
        match name.as_str() {
            "collections.OrderedDict" | "builtins.dict" => Ok(Value::dict()),
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                let (key, dtype) = match args.first() {
                    Some(Value::Storage { key, dtype }) => (key.clone(), *dtype),
                    _ => return Err(self.err("_rebuild_tensor without a storage")),
                };
                let offset = int(args.get(1).unwrap_or(&Value::None))?;
                let shape = ints(args.get(2).unwrap_or(&Value::None))?;
                let stride = ints(args.get(3).unwrap_or(&Value::None))?;
                if shape.len() != stride.len() {
                    return Err(self.err("tensor size and stride differ in length"));
                }
                Ok(Value::Tensor(Rc::new(TensorRef { key, dtype, offset, shape, stride })))
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => Ok(args.into_iter().next().unwrap_or(Value::None)),
            // Protocol-2 pickles carry bytes as `_codecs.encode(str, "latin1")`: a pure conversion.
            "_codecs.encode" => match (args.first(), args.get(1)) {
                (Some(Value::Str(s)), Some(Value::Str(enc))) if enc == "latin1" || enc == "latin-1" => {
                    let bytes: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                    bytes.map(Value::Bytes).ok_or_else(|| self.err("latin1 string with a character above 255"))
                }
                _ => Ok(Value::Opaque(name)),
            },
            "numpy.dtype" => match args.first() {
                Some(Value::Str(s)) => Ok(Value::NumpyDtype(s.clone())),
                _ => Ok(Value::Opaque(name)),
            },
            "numpy.core.multiarray.scalar" | "numpy._core.multiarray.scalar" => {
                let (dt, bytes) = match (args.first(), args.get(1)) {
                    (Some(Value::NumpyDtype(d)), Some(Value::Bytes(b))) => (d.clone(), b.clone()),
                    _ => return Ok(Value::Opaque(name)),
                };
                let dtype = match numpy_dtype(&dt) {
                    Some(d) => d,
                    None => return Ok(Value::Opaque(format!("numpy scalar of dtype {dt}"))),
                };
                if bytes.len() != dtype.size() {
                    return Err(self.err("numpy scalar with the wrong byte count"));
                }
                let raw = RawTensor { dtype, shape: vec![], bytes };
                Ok(if dtype.is_float() {
                    Value::Float(raw.to_f32().unwrap()[0] as f64)
                } else if dtype == DType::Bool {
                    Value::Bool(raw.bytes[0] != 0)
                } else {
                    Value::Int(raw.to_i64().unwrap()[0])
                })
            }
            "numpy.core.multiarray._reconstruct" | "numpy._core.multiarray._reconstruct" => Ok(Value::Opaque("numpy.ndarray (empty)".into())),
            _ => Ok(Value::Opaque(name)),
        }
    }

    fn build(&self, obj: Value, state: Value) -> Result<Value, String> {
        match obj {
            Value::NumpyDtype(d) => {
                // state = (version, byteorder, ...): only little-endian or not-applicable is supported.
                if let Value::Tuple(t) = &state {
                    if let Some(Value::Str(order)) = t.get(1) {
                        if order == ">" {
                            return Ok(Value::Opaque(format!("big-endian numpy dtype {d}")));
                        }
                    }
                }
                Ok(Value::NumpyDtype(d))
            }
            Value::Opaque(ref s) if s == "numpy.ndarray (empty)" => {
                // state = (version, shape, dtype, is_fortran, raw bytes)
                let t = match &state {
                    Value::Tuple(t) if t.len() == 5 => t.clone(),
                    _ => return Ok(Value::Opaque("numpy.ndarray".into())),
                };
                let shape: Vec<usize> = match &t[1] {
                    Value::Tuple(s) => s.iter().map(|v| if let Value::Int(i) = v { *i as usize } else { 0 }).collect(),
                    _ => return Ok(Value::Opaque("numpy.ndarray".into())),
                };
                let (dtype, fortran, bytes) = match (&t[2], &t[3], &t[4]) {
                    (Value::NumpyDtype(d), Value::Bool(f), Value::Bytes(b)) => match numpy_dtype(d) {
                        Some(dt) => (dt, *f, b.clone()),
                        None => return Ok(Value::Opaque(format!("numpy.ndarray of dtype {d}"))),
                    },
                    _ => return Ok(Value::Opaque("numpy.ndarray of objects".into())),
                };
                if fortran && shape.len() > 1 {
                    return Ok(Value::Opaque("Fortran-ordered numpy.ndarray".into()));
                }
                if bytes.len() != shape.iter().product::<usize>() * dtype.size() {
                    return Err(self.err("numpy array data has the wrong size"));
                }
                Ok(Value::Array(Rc::new(RawTensor { dtype, shape, bytes })))
            }
            // A state dict's `_metadata`, a parameter's state: nothing a weight depends on.
            other => Ok(other),
        }
    }
}

/// An opened `.pth` archive: the unpickled object tree plus access to tensor storages.
pub struct PthFile {
    path: PathBuf,
    prefix: String,
    archive: RefCell<zip::ZipArchive<std::fs::File>>,
    pub root: Value,
}

impl PthFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut archive = match zip::ZipArchive::new(file) {
            Ok(a) => a,
            Err(_) => {
                let mut head = [0u8; 2];
                let legacy = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head[0] == 0x80;
                return Err(Error::file(
                    path,
                    if legacy {
                        "legacy (pre-1.6) PyTorch serialization is not supported; re-save it with a recent torch.save".to_string()
                    } else {
                        "not a PyTorch checkpoint (expected the zip archive written by torch.save)".to_string()
                    },
                ));
            }
        };
        let names: Vec<String> = archive.file_names().filter_map(|n| n.ok().map(|c| c.into_owned())).collect();
        let pkl = names
            .iter()
            .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
            .ok_or_else(|| Error::file(path, "zip archive without data.pkl: not a torch.save checkpoint"))?
            .clone();
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Some(bo) = names.iter().find(|n| **n == format!("{prefix}byteorder")) {
            let mut s = String::new();
            archive.by_name(bo).map_err(|e| Error::file(path, e.to_string()))?.read_to_string(&mut s).map_err(|e| Error::io(path, e))?;
            if s.trim() != "little" {
                return Err(Error::file(path, format!("checkpoint byte order is `{}`; only little-endian is supported", s.trim())));
            }
        }
        let mut bytes = Vec::new();
        archive.by_name(&pkl).map_err(|e| Error::file(path, format!("{pkl}: {e}")))?.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
        let machine = Machine { data: &bytes, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: BTreeMap::new() };
        let root = machine.run().map_err(|e| Error::file(path, format!("{pkl}: {e}")))?;
        Ok(PthFile { path: path.to_path_buf(), prefix, archive: RefCell::new(archive), root })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn storage_bytes(&self, key: &str) -> Result<Vec<u8>> {
        let name = format!("{}data/{key}", self.prefix);
        let mut archive = self.archive.borrow_mut();
        let mut f = archive.by_name(&name).map_err(|e| Error::file(&self.path, format!("storage {name}: {e}")))?;
        let mut out = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut out).map_err(|e| Error::io(&self.path, e))?;
        Ok(out)
    }

    /// Reads a tensor value into a contiguous tensor (views with strides and offsets are resolved).
    pub fn materialise(&self, v: &Value, name: &str) -> Result<RawTensor> {
        match v {
            Value::Array(a) => Ok(a.as_ref().clone()),
            Value::Tensor(t) => {
                let bytes = self.storage_bytes(&t.key)?;
                let es = t.dtype.size();
                let numel: usize = t.shape.iter().product();
                let mut out = Vec::with_capacity(numel * es);
                let mut idx = vec![0usize; t.shape.len()];
                for _ in 0..numel {
                    let off = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
                    let src = bytes.get(off * es..(off + 1) * es).ok_or_else(|| Error::tensor(&self.path, name, "data lies outside its storage"))?;
                    out.extend_from_slice(src);
                    for d in (0..idx.len()).rev() {
                        idx[d] += 1;
                        if idx[d] < t.shape[d] {
                            break;
                        }
                        idx[d] = 0;
                    }
                }
                Ok(RawTensor { dtype: t.dtype, shape: t.shape.clone(), bytes: out })
            }
            other => Err(Error::tensor(&self.path, name, format!("expected a tensor, found {}", other.describe()))),
        }
    }

    /// The state dict: the root itself, or the dict under `state_dict` or `model`.
    pub fn state_dict(&self) -> Result<BTreeMap<String, RawTensor>> {
        let sd = self.root.get("state_dict").or_else(|| self.root.get("model")).unwrap_or_else(|| self.root.clone());
        let entries = match &sd {
            Value::Dict(d) => d.borrow().clone(),
            other => return Err(Error::file(&self.path, format!("expected a state dict, found {}", other.describe()))),
        };
        let mut out = BTreeMap::new();
        for (k, v) in entries {
            let key = match k {
                Value::Str(s) => s,
                other => return Err(Error::file(&self.path, format!("state dict key is {}, expected a string", other.describe()))),
            };
            match &v {
                Value::Tensor(_) | Value::Array(_) => {
                    let t = self.materialise(&v, &key)?;
                    out.insert(key, t);
                }
                Value::Opaque(what) => {
                    return Err(Error::tensor(
                        &self.path,
                        &key,
                        format!("holds a pickled {what}, which amg does not unpickle (it never executes pickled code)"),
                    ))
                }
                _ => {} // non-tensor entries (e.g. an epoch number) are not weights
            }
        }
        if out.is_empty() {
            return Err(Error::file(&self.path, "no tensors found (looked at the root, `state_dict` and `model`)"));
        }
        Ok(out)
    }

    /// A string stored at the root under `key`; `Ok(None)` when absent, an error when not a string.
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.root.get(key) {
            None | Some(Value::None) => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(other) => Err(Error::file(&self.path, format!("`{key}` is {}, expected a string", other.describe()))),
        }
    }

    /// A list of integers stored at the root under `key` (as ints, NumPy scalars or 0-d tensors).
    /// `Ok(None)` when absent or None; an error when present but not readable as integers.
    pub fn int_list(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let v = match self.root.get(key) {
            None | Some(Value::None) => return Ok(None),
            Some(v) => v,
        };
        let items: Vec<Value> = match &v {
            Value::List(l) => l.borrow().clone(),
            Value::Tuple(t) => t.as_ref().clone(),
            Value::Array(a) => return Ok(a.to_i64()),
            Value::Tensor(_) => return Ok(self.materialise(&v, key)?.to_i64()),
            other => return Err(Error::file(&self.path, format!("`{key}` is {}, expected a list of integers", other.describe()))),
        };
        items
            .iter()
            .map(|it| match it {
                Value::Opaque(what) => {
                    Err(Error::file(&self.path, format!("`{key}` holds a pickled {what}, which cannot be read safely (amg never executes pickled code)")))
                }
                other => other.as_int(self)?.ok_or_else(|| Error::file(&self.path, format!("`{key}` holds {}, expected integers", other.describe()))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// Reads the tensors of a checkpoint, `.safetensors` or `.pth`/`.pt`/`.bin` (zip), by content.
pub fn read_checkpoint(path: &Path) -> Result<(BTreeMap<String, RawTensor>, Option<PthFile>)> {
    let mut head = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).map_err(|e| Error::io(path, e))?;
    if &head == b"PK\x03\x04" {
        let pth = PthFile::open(path)?;
        let sd = pth.state_dict()?;
        Ok((sd, Some(pth)))
    } else if head[0] == 0x80 {
        Err(Error::file(path, "legacy (pre-1.6) PyTorch serialization is not supported; re-save it with a recent torch.save"))
    } else {
        let st = crate::tensor::SafetensorsFile::open(path)?;
        Ok((st.all_raw()?, None))
    }
}
