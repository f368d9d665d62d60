//! Reads PyTorch `.pth` checkpoints (the zip container of `torch.save`) without executing pickled
//! code. The pickle program is interpreted by a small stack machine that knows how to rebuild
//! exactly what a state dict needs — tensors, parameters, dicts, lists, numbers, strings, NumPy
//! scalars and arrays. Any other global is never called: it becomes an `Opaque` value, and using
//! such a value where data is needed is an error naming it.
//!
//! The file is untrusted, so the reader is bounded by construction:
//! - every length read from the file is checked against the bytes that remain before it is used;
//! - values are reference-counted, so DUP and memo GET copy nothing, and dropping a value nested a
//!   million lists deep is iterative (no recursion the file controls, anywhere);
//! - every step that builds new data from old (a tensor view, a NumPy array, `_codecs.encode`, a
//!   call's description) is charged to a budget proportional to the pickle's size, so memory stays
//!   within a fixed multiple of the file and time within a fixed multiple of its length;
//! - tensor views are checked against their storage (offset, strides, element count) with checked
//!   arithmetic before anything is allocated, and a storage entry's claimed size is capped by the
//!   archive's real size.

use super::pickle_op as op;
use crate::error::{Error, Result};
use crate::tensor::{DType, RawTensor};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Most dimensions a tensor or array may have (PyTorch allows 64; weights have at most 4).
pub const MAX_DIMS: usize = 64;
/// Bytes of values the unpickler may build per byte of pickle, on top of [`BUDGET_BASE`]. Every
/// value is charged (its stack slot, a container's allocation and items, memo entries, string and
/// byte contents, tensor views, conversions), so memory stays within about twice this budget
/// (vectors grow by doubling). Real state-dict pickles use 17–20 bytes per byte (measured on the
/// test fixtures), and they are small next to the tensor storages beside them.
const BUDGET_PER_BYTE: usize = 48;
const BUDGET_BASE: usize = 16 << 20;
/// What one value costs: its slot in the stack, a list or the memo.
const VALUE: usize = std::mem::size_of::<Value>();
/// What a new container or string costs beyond its items (the reference-counted allocation).
const CONTAINER: usize = 64;
/// Bytes the tensors of a state dict may occupy, per byte of the archive (views of one storage
/// may overlap, as tied weights do; more than this is a file built to exhaust memory).
const VIEW_AMPLIFICATION: u64 = 4;

#[derive(Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    List(Rc<RefCell<Vec<Value>>>),
    Tuple(Rc<Vec<Value>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Rc<str>),
    /// A tensor storage named by its key in the archive's `data/` folder.
    Storage {
        key: Rc<str>,
        dtype: DType,
    },
    Tensor(Rc<TensorRef>),
    NumpyDtype(Rc<str>),
    /// A NumPy array, decoded.
    Array(Rc<RawTensor>),
    /// An object amg does not rebuild (a class instance, a function result); the string says what.
    Opaque(Rc<str>),
}

impl std::fmt::Debug for Value {
    /// Shallow (containers show their length): a derived, recursive `Debug` could be driven as deep
    /// as the file likes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Drop for Value {
    /// Unnests uniquely owned containers iteratively: the default drop of a list nested a million
    /// deep recurses a million times and overflows the stack.
    fn drop(&mut self) {
        let mut work = Vec::new();
        take_children(self, &mut work);
        while let Some(mut v) = work.pop() {
            take_children(&mut v, &mut work);
            // `v` drops here with no children left, so its own `drop` does not recurse further.
        }
    }
}

/// Moves the children of `v` into `work` when `v` is the last owner of its container.
fn take_children(v: &mut Value, work: &mut Vec<Value>) {
    match v {
        Value::List(rc) => {
            if let Some(cell) = Rc::get_mut(rc) {
                work.append(cell.get_mut());
            }
        }
        Value::Tuple(rc) => {
            if let Some(items) = Rc::get_mut(rc) {
                work.append(items);
            }
        }
        Value::Dict(rc) => {
            if let Some(cell) = Rc::get_mut(rc) {
                for (k, v) in cell.get_mut().drain(..) {
                    work.push(k);
                    work.push(v);
                }
            }
        }
        _ => {}
    }
}

#[derive(Debug)]
pub struct TensorRef {
    pub key: Rc<str>,
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
    fn str(s: &str) -> Value {
        Value::Str(Rc::from(s))
    }
    fn opaque(s: &str) -> Value {
        Value::Opaque(Rc::from(s))
    }

    /// A short description, for error messages.
    pub fn describe(&self) -> String {
        let cut = |s: &str| if s.chars().count() > 80 { format!("{}…", s.chars().take(80).collect::<String>()) } else { s.to_string() };
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) => format!("str {:?}", cut(s)),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::List(l) => format!("list of {}", l.borrow().len()),
            Value::Tuple(t) => format!("tuple of {}", t.len()),
            Value::Dict(d) => format!("dict of {}", d.borrow().len()),
            Value::Global(g) => format!("global {}", cut(g)),
            Value::Storage { .. } => "storage".into(),
            Value::Tensor(t) => format!("tensor {:?} {}", t.shape, t.dtype.name()),
            Value::NumpyDtype(d) => format!("numpy dtype {}", cut(d)),
            Value::Array(a) => format!("numpy array {:?} {}", a.shape, a.dtype.name()),
            Value::Opaque(s) => format!("object `{}`", cut(s)),
        }
    }

    /// Looks a string key up in a dict value. As in Python, when the pickle sets a key twice the
    /// last setting wins.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d.borrow().iter().rev().find(|(k, _)| matches!(k, Value::Str(s) if &**s == key)).map(|(_, v)| v.clone()),
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
                    Some(v) if v.len() == 1 => v.first().copied(),
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
    memo: HashMap<u32, Value>,
    /// Bytes of new values the program may still build (see the module comment).
    budget: usize,
    mutables: Mutables,
}

/// Every list and dict the program built. Only they can change after they are made, so only they
/// can close a reference cycle (a list appended to itself through the memo), which reference
/// counting alone would leak; emptying them all when the tree goes frees every cycle.
#[derive(Default)]
struct Mutables(Vec<Value>);

impl Drop for Mutables {
    fn drop(&mut self) {
        for v in &self.0 {
            // Each container's items are taken out before they drop, so no borrow is held while
            // they do; containers among them are still owned here, so nothing recurses deeply.
            match v {
                Value::List(l) => drop(std::mem::take(&mut *l.borrow_mut())),
                Value::Dict(d) => drop(std::mem::take(&mut *d.borrow_mut())),
                _ => {}
            }
        }
    }
}

type Step<T> = std::result::Result<T, String>;

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        let budget = data.len().saturating_mul(BUDGET_PER_BYTE).saturating_add(BUDGET_BASE);
        Machine { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), budget, mutables: Mutables::default() }
    }
    /// Keeps a new list or dict in `mutables` (its slot is charged with the container).
    fn register(&mut self, v: Value) -> Value {
        self.mutables.0.push(v.clone());
        v
    }
    fn err(&self, msg: impl std::fmt::Display) -> String {
        format!("pickle byte {}: {msg}", self.pos)
    }
    /// Accounts for `n` bytes of newly built values.
    fn charge(&mut self, n: usize) -> Step<()> {
        self.budget = self.budget.checked_sub(n).ok_or_else(|| {
            self.err(format!("the pickle builds more data than a {}-byte program can describe; refusing a file built to exhaust memory", self.data.len()))
        })?;
        Ok(())
    }
    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let data = self.data;
        let end =
            self.pos.checked_add(n).filter(|&e| e <= data.len()).ok_or_else(|| self.err(format!("{n} bytes announced, {} left", data.len() - self.pos)))?;
        let s = &data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Step<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Step<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Step<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// A length: a little-endian u32 or u64 that must fit in what remains of the program.
    fn len32(&mut self) -> Step<usize> {
        let n = self.u32()?;
        usize::try_from(n).map_err(|_| self.err(format!("length {n} does not fit in memory")))
    }
    fn len64(&mut self) -> Step<usize> {
        let n = u64::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| self.err(format!("length {n} does not fit in memory")))
    }
    fn line(&mut self) -> Step<&'a str> {
        let data = self.data;
        let rest = &data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.err("unterminated line"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.err("line is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }
    fn pop(&mut self) -> Step<Value> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn top(&mut self) -> Step<&mut Value> {
        let e = self.err("stack underflow");
        self.stack.last_mut().ok_or(e)
    }
    /// Pushes a value, charging its stack slot.
    fn push(&mut self, v: Value) -> Step<()> {
        self.charge(VALUE)?;
        self.stack.push(v);
        Ok(())
    }
    /// Charges a new container holding `items` values.
    fn container(&mut self, items: usize) -> Step<()> {
        self.charge(items.saturating_mul(VALUE).saturating_add(CONTAINER))
    }
    fn pop_mark(&mut self) -> Step<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| self.err("MARK missing"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK beyond stack"));
        }
        Ok(self.stack.split_off(m))
    }
    fn text(&mut self, n: usize) -> Step<Value> {
        let b = self.take(n)?;
        self.charge(n + CONTAINER)?;
        let s = std::str::from_utf8(b).map_err(|_| self.err("invalid UTF-8 string"))?;
        Ok(Value::str(s))
    }
    fn bytes(&mut self, n: usize) -> Step<Value> {
        let b = self.take(n)?;
        self.charge(n + CONTAINER)?;
        Ok(Value::Bytes(Rc::from(b)))
    }
    fn memo_get(&self, i: u32) -> Step<Value> {
        self.memo.get(&i).cloned().ok_or_else(|| self.err(format!("memo {i} missing")))
    }
    fn memo_put(&mut self, i: u32) -> Step<()> {
        self.charge(2 * VALUE)?;
        let v = self.stack.last().cloned().ok_or_else(|| self.err("stack underflow"))?;
        self.memo.insert(i, v);
        Ok(())
    }
    fn index(&self, s: &str) -> Step<u32> {
        s.trim().parse().map_err(|_| self.err(format!("bad memo index {s:?}")))
    }
    fn global(&mut self, module: &str, name: &str) -> Step<Value> {
        self.charge(module.len() + name.len() + 1)?;
        Ok(Value::Global(Rc::from(format!("{module}.{name}"))))
    }
    fn opaque(&mut self, what: String) -> Step<Value> {
        self.charge(what.len())?;
        Ok(Value::Opaque(Rc::from(what)))
    }

    /// Runs the program to its STOP. One opcode per iteration, no recursion. Returns the root
    /// and the containers that must be emptied when it is dropped.
    fn run(mut self) -> Step<(Value, Mutables)> {
        loop {
            let code = self.u8()?;
            match code {
                op::PROTO => {
                    self.u8()?; // the protocol number
                }
                op::FRAME => {
                    self.len64()?; // a hint only
                }
                op::STOP => {
                    let root = self.pop()?;
                    return Ok((root, std::mem::take(&mut self.mutables)));
                }
                op::MARK => self.marks.push(self.stack.len()),
                op::NONE
                | op::NEWTRUE
                | op::NEWFALSE
                | op::BININT
                | op::BININT1
                | op::BININT2
                | op::LONG1
                | op::INT
                | op::LONG
                | op::BINFLOAT
                | op::FLOAT
                | op::BINUNICODE
                | op::SHORT_BINUNICODE
                | op::BINUNICODE8
                | op::UNICODE
                | op::BINSTRING
                | op::BINBYTES
                | op::SHORT_BINSTRING
                | op::SHORT_BINBYTES
                | op::BINBYTES8
                | op::BYTEARRAY8 => {
                    let v = self.literal(code)?;
                    self.push(v)?
                }
                op::EMPTY_DICT
                | op::EMPTY_LIST
                | op::EMPTY_SET
                | op::EMPTY_TUPLE
                | op::LIST
                | op::FROZENSET
                | op::TUPLE
                | op::TUPLE1
                | op::TUPLE2
                | op::TUPLE3
                | op::DICT => {
                    let v = self.new_container(code)?;
                    self.push(v)?
                }
                op::APPEND | op::APPENDS | op::ADDITEMS | op::SETITEM | op::SETITEMS => self.fill_container(code)?,
                op::POP | op::POP_MARK | op::DUP | op::PUT | op::BINPUT | op::LONG_BINPUT | op::MEMOIZE | op::GET | op::BINGET | op::LONG_BINGET => {
                    self.stack_and_memo(code)?
                }
                op::GLOBAL | op::STACK_GLOBAL | op::BINPERSID | op::PERSID | op::REDUCE | op::NEWOBJ | op::NEWOBJ_EX | op::BUILD => {
                    let v = self.object(code)?;
                    self.push(v)?
                }
                other => return Err(self.unsupported(other)),
            }
        }
    }

    fn unsupported(&self, code: u8) -> String {
        self.err(format!("unsupported pickle opcode 0x{code:02x}"))
    }

    /// The value a literal opcode stands for: None, a boolean, a number, a string or bytes.
    fn literal(&mut self, code: u8) -> Step<Value> {
        Ok(match code {
            op::NONE => Value::None,
            op::NEWTRUE => Value::Bool(true),
            op::NEWFALSE => Value::Bool(false),
            op::BININT => Value::Int(i32::from_le_bytes(self.array()?).into()),
            op::BININT1 => Value::Int(self.u8()?.into()),
            op::BININT2 => Value::Int(self.u16()?.into()),
            op::LONG1 => {
                let n = usize::from(self.u8()?);
                if n > 8 {
                    return Err(self.err("integer wider than 64 bits"));
                }
                let b = self.take(n)?;
                let mut le = [0u8; 8];
                le[..n].copy_from_slice(b);
                if b.last().is_some_and(|&hi| hi & 0x80 != 0) {
                    le[n..].fill(0xff); // sign-extend
                }
                Value::Int(i64::from_le_bytes(le))
            }
            op::INT | op::LONG => {
                let s = self.line()?;
                let s = s.trim_end_matches('L');
                match s {
                    "01" => Value::Bool(true),
                    "00" => Value::Bool(false),
                    _ => Value::Int(s.parse().map_err(|_| self.err(format!("bad integer {s:?}")))?),
                }
            }
            op::BINFLOAT => Value::Float(f64::from_be_bytes(self.array()?)),
            op::FLOAT => {
                let s = self.line()?;
                Value::Float(s.trim().parse().map_err(|_| self.err(format!("bad float {s:?}")))?)
            }
            op::BINUNICODE => {
                let n = self.len32()?;
                self.text(n)?
            }
            op::SHORT_BINUNICODE => {
                let n = usize::from(self.u8()?);
                self.text(n)?
            }
            op::BINUNICODE8 => {
                let n = self.len64()?;
                self.text(n)?
            }
            op::UNICODE => {
                let s = self.line()?;
                self.charge(s.len() + CONTAINER)?;
                Value::str(s)
            }
            op::BINSTRING | op::BINBYTES => {
                let n = self.len32()?;
                self.bytes(n)?
            }
            op::SHORT_BINSTRING | op::SHORT_BINBYTES => {
                let n = usize::from(self.u8()?);
                self.bytes(n)?
            }
            op::BINBYTES8 | op::BYTEARRAY8 => {
                let n = self.len64()?;
                self.bytes(n)?
            }
            other => return Err(self.unsupported(other)),
        })
    }

    /// A new list, tuple or dict: empty, or from the items since the last mark or on the stack.
    /// Sets and frozensets are kept as lists.
    fn new_container(&mut self, code: u8) -> Step<Value> {
        Ok(match code {
            op::EMPTY_DICT => {
                self.container(0)?;
                self.register(Value::dict())
            }
            op::EMPTY_LIST | op::EMPTY_SET => {
                self.container(0)?;
                self.register(Value::list(Vec::new()))
            }
            op::EMPTY_TUPLE => {
                self.container(0)?;
                Value::Tuple(Rc::new(Vec::new()))
            }
            op::LIST | op::FROZENSET => {
                let items = self.pop_mark()?;
                self.container(items.len())?;
                self.register(Value::list(items))
            }
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.container(items.len())?;
                Value::Tuple(Rc::new(items))
            }
            op::TUPLE1 => {
                let a = self.pop()?;
                self.container(1)?;
                Value::Tuple(Rc::new(vec![a]))
            }
            op::TUPLE2 => {
                let b = self.pop()?;
                let a = self.pop()?;
                self.container(2)?;
                Value::Tuple(Rc::new(vec![a, b]))
            }
            op::TUPLE3 => {
                let c = self.pop()?;
                let b = self.pop()?;
                let a = self.pop()?;
                self.container(3)?;
                Value::Tuple(Rc::new(vec![a, b, c]))
            }
            op::DICT => {
                let items = self.pop_mark()?;
                self.container(items.len())?;
                let d = self.register(Value::dict());
                set_items(&d, items);
                d
            }
            other => return Err(self.unsupported(other)),
        })
    }

    /// Items added to the list or dict on top of the stack (to a set: kept as a list; to an
    /// opaque object: dropped).
    fn fill_container(&mut self, code: u8) -> Step<()> {
        match code {
            op::APPEND => {
                self.charge(VALUE)?;
                let v = self.pop()?;
                match self.top()? {
                    Value::List(l) => l.borrow_mut().push(v),
                    _ => return Err(self.err("APPEND to a non-list")),
                }
            }
            op::APPENDS | op::ADDITEMS => {
                let items = self.pop_mark()?;
                self.charge(items.len().saturating_mul(VALUE))?;
                match self.top()? {
                    Value::List(l) => l.borrow_mut().extend(items),
                    Value::Opaque(_) => {}
                    _ => return Err(self.err("APPENDS to a non-list")),
                }
            }
            op::SETITEM => {
                self.charge(2 * VALUE)?;
                let v = self.pop()?;
                let k = self.pop()?;
                match self.top()? {
                    Value::Dict(d) => d.borrow_mut().push((k, v)),
                    Value::Opaque(_) => {}
                    _ => return Err(self.err("SETITEM on a non-dict")),
                }
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                self.charge(items.len().saturating_mul(VALUE))?;
                match self.top()? {
                    d @ Value::Dict(_) => set_items(d, items),
                    Value::Opaque(_) => {}
                    _ => return Err(self.err("SETITEMS on a non-dict")),
                }
            }
            other => return Err(self.unsupported(other)),
        }
        Ok(())
    }

    /// The stack and the memo: pop, duplicate, put the top in the memo, push a memo entry.
    fn stack_and_memo(&mut self, code: u8) -> Step<()> {
        match code {
            op::POP => {
                self.pop()?;
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let v = self.top()?.clone();
                self.push(v)?
            }
            op::PUT => {
                let s = self.line()?;
                let i = self.index(s)?;
                self.memo_put(i)?
            }
            op::BINPUT => {
                let i = self.u8()?;
                self.memo_put(i.into())?
            }
            op::LONG_BINPUT => {
                let i = self.u32()?;
                self.memo_put(i)?
            }
            op::MEMOIZE => {
                let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo full"))?;
                self.memo_put(i)?
            }
            op::GET | op::BINGET | op::LONG_BINGET => {
                let i = match code {
                    op::GET => {
                        let s = self.line()?;
                        self.index(s)?
                    }
                    op::BINGET => self.u8()?.into(),
                    _ => self.u32()?,
                };
                let v = self.memo_get(i)?;
                self.push(v)?
            }
            other => return Err(self.unsupported(other)),
        }
        Ok(())
    }

    /// Globals, persistent ids (tensor storages) and the calls that would build objects: the
    /// values torch.save uses are rebuilt (`reduce`, `build`), anything else is kept opaque and
    /// never instantiated.
    fn object(&mut self, code: u8) -> Step<Value> {
        match code {
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(module, name)
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (&module, &name) {
                    (Value::Str(m), Value::Str(n)) => self.global(m, n),
                    _ => Err(self.err("STACK_GLOBAL needs two strings")),
                }
            }
            op::BINPERSID => {
                let pid = self.pop()?;
                self.persistent_load(&pid)
            }
            op::PERSID => Err(self.err("text persistent ids are not used by torch.save")),
            op::REDUCE => {
                let args = self.pop()?;
                let func = self.pop()?;
                self.reduce(&func, &args)
            }
            op::NEWOBJ | op::NEWOBJ_EX => {
                // NEWOBJ (cls, args), NEWOBJ_EX (cls, args, kwargs): nothing is instantiated.
                if code == op::NEWOBJ_EX {
                    self.pop()?;
                }
                self.pop()?;
                let cls = self.pop()?;
                match &cls {
                    Value::Global(g) if code == op::NEWOBJ && &**g == "collections.OrderedDict" => Ok(self.register(Value::dict())),
                    Value::Global(g) => Ok(Value::Opaque(g.clone())),
                    other => self.opaque(other.describe()),
                }
            }
            op::BUILD => {
                let state = self.pop()?;
                let obj = self.pop()?;
                self.build(obj, &state)
            }
            other => Err(self.unsupported(other)),
        }
    }

    fn persistent_load(&self, pid: &Value) -> Step<Value> {
        let t = match pid {
            Value::Tuple(t) => t,
            other => return Err(self.err(format!("persistent id is {}, expected a tuple", other.describe()))),
        };
        match (t.first(), t.get(1), t.get(2)) {
            (Some(Value::Str(kind)), Some(Value::Global(ty)), Some(Value::Str(key))) if &**kind == "storage" => {
                let dtype = storage_dtype(ty).ok_or_else(|| self.err(format!("unsupported storage type `{}`", Value::Global(ty.clone()).describe())))?;
                Ok(Value::Storage { key: key.clone(), dtype })
            }
            _ => Err(self.err("unrecognised persistent id (not a torch storage)")),
        }
    }

    /// A non-negative int, or a tuple/list of at most [`MAX_DIMS`] of them.
    fn int(&self, v: Option<&Value>, what: &str) -> Step<usize> {
        match v {
            Some(Value::Int(i)) => usize::try_from(*i).map_err(|_| self.err(format!("{what}: {i} is negative"))),
            other => Err(self.err(format!("{what}: expected a non-negative int, found {}", other.map_or("nothing".into(), Value::describe)))),
        }
    }
    fn dims(&self, v: Option<&Value>, what: &str) -> Step<Vec<usize>> {
        let items: Vec<Value> = match v {
            Some(Value::Tuple(t)) => t.iter().take(MAX_DIMS + 1).cloned().collect(),
            Some(Value::List(l)) => l.borrow().iter().take(MAX_DIMS + 1).cloned().collect(),
            other => return Err(self.err(format!("{what}: expected a tuple of ints, found {}", other.map_or("nothing".into(), Value::describe)))),
        };
        if items.len() > MAX_DIMS {
            return Err(self.err(format!("{what}: more than {MAX_DIMS} dimensions")));
        }
        items.iter().map(|i| self.int(Some(i), what)).collect()
    }

    fn reduce(&mut self, func: &Value, args: &Value) -> Step<Value> {
        let name = match func {
            Value::Global(g) => g.clone(),
            other => return self.opaque(format!("call of {}", other.describe())),
        };
        let args: &[Value] = match args {
            Value::Tuple(t) => t,
            _ => &[],
        };
        match &*name {
            "collections.OrderedDict" | "builtins.dict" => Ok(self.register(Value::dict())),
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                let (key, dtype) = match args.first() {
                    Some(Value::Storage { key, dtype }) => (key.clone(), *dtype),
                    _ => return Err(self.err("_rebuild_tensor without a storage")),
                };
                let offset = self.int(args.get(1), "tensor offset")?;
                let shape = self.dims(args.get(2), "tensor size")?;
                let stride = self.dims(args.get(3), "tensor stride")?;
                if shape.len() != stride.len() {
                    return Err(self.err("tensor size and stride differ in length"));
                }
                self.charge(64 + 16 * shape.len())?;
                Ok(Value::Tensor(Rc::new(TensorRef { key, dtype, offset, shape, stride })))
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => Ok(args.first().cloned().unwrap_or(Value::None)),
            // Protocol-2 pickles carry bytes as `_codecs.encode(str, "latin1")`: a pure conversion.
            "_codecs.encode" => match (args.first(), args.get(1)) {
                (Some(Value::Str(s)), Some(Value::Str(enc))) if &**enc == "latin1" || &**enc == "latin-1" => {
                    self.charge(s.len())?;
                    let bytes: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
                    bytes.map(|b| Value::Bytes(Rc::from(b))).ok_or_else(|| self.err("latin1 string with a character above 255"))
                }
                _ => Ok(Value::Opaque(name)),
            },
            "numpy.dtype" => match args.first() {
                Some(Value::Str(s)) => Ok(Value::NumpyDtype(s.clone())),
                _ => Ok(Value::Opaque(name)),
            },
            "numpy.core.multiarray.scalar" | "numpy._core.multiarray.scalar" => {
                let (dt, bytes) = match (args.first(), args.get(1)) {
                    (Some(Value::NumpyDtype(d)), Some(Value::Bytes(b))) => (d, b),
                    _ => return Ok(Value::Opaque(name)),
                };
                let dtype = match numpy_dtype(dt) {
                    Some(d) => d,
                    None => return self.opaque(format!("numpy scalar of dtype {}", Value::NumpyDtype(dt.clone()).describe())),
                };
                if bytes.len() != dtype.size() {
                    return Err(self.err(format!("numpy {} scalar of {} bytes", dtype.name(), bytes.len())));
                }
                let raw = RawTensor { dtype, shape: vec![], bytes: bytes.to_vec() };
                let v = if dtype.is_float() {
                    raw.to_f32().and_then(|v| v.first().copied()).map(|x| Value::Float(x.into()))
                } else if dtype == DType::Bool {
                    Some(Value::Bool(bytes.iter().any(|&b| b != 0)))
                } else {
                    raw.to_i64().and_then(|v| v.first().copied()).map(Value::Int)
                };
                v.ok_or_else(|| self.err("numpy scalar could not be decoded"))
            }
            "numpy.core.multiarray._reconstruct" | "numpy._core.multiarray._reconstruct" => Ok(Value::opaque(EMPTY_NDARRAY)),
            _ => Ok(Value::Opaque(name)),
        }
    }

    fn build(&mut self, obj: Value, state: &Value) -> Step<Value> {
        match &obj {
            Value::NumpyDtype(d) => {
                // state = (version, byteorder, ...): only little-endian or not-applicable is supported.
                if let Value::Tuple(t) = state {
                    if let Some(Value::Str(order)) = t.get(1) {
                        if &**order == ">" {
                            return self.opaque(format!("big-endian numpy dtype {}", Value::NumpyDtype(d.clone()).describe()));
                        }
                    }
                }
                Ok(obj)
            }
            Value::Opaque(s) if &**s == EMPTY_NDARRAY => {
                // state = (version, shape, dtype, is_fortran, raw bytes)
                let t = match state {
                    Value::Tuple(t) if t.len() == 5 => t,
                    _ => return Ok(Value::opaque("numpy.ndarray")),
                };
                let shape = self.dims(t.get(1), "numpy array shape")?;
                let (dtype, fortran, bytes) = match (t.get(2), t.get(3), t.get(4)) {
                    (Some(Value::NumpyDtype(d)), Some(Value::Bool(f)), Some(Value::Bytes(b))) => match numpy_dtype(d) {
                        Some(dt) => (dt, *f, b),
                        None => return self.opaque(format!("numpy.ndarray of dtype {}", Value::NumpyDtype(d.clone()).describe())),
                    },
                    (Some(Value::Opaque(what)), _, _) => return self.opaque(format!("numpy.ndarray of {what}")),
                    _ => return Ok(Value::opaque("numpy.ndarray of objects")),
                };
                if fortran && shape.len() > 1 {
                    return Ok(Value::opaque("Fortran-ordered numpy.ndarray"));
                }
                let want = shape.iter().try_fold(dtype.size(), |a, &d| a.checked_mul(d));
                if want != Some(bytes.len()) {
                    return Err(self.err(format!("numpy array of shape {shape:?} {} with {} bytes of data", dtype.name(), bytes.len())));
                }
                self.charge(bytes.len())?;
                Ok(Value::Array(Rc::new(RawTensor { dtype, shape, bytes: bytes.to_vec() })))
            }
            // A state dict's `_metadata`, a parameter's state: nothing a weight depends on.
            _ => Ok(obj),
        }
    }
}

const EMPTY_NDARRAY: &str = "numpy.ndarray (empty)";

/// SETITEMS: key, value pairs from a MARK (an odd one out is ignored, as it would be an error
/// in Python that nothing here depends on).
fn set_items(d: &Value, items: Vec<Value>) {
    if let Value::Dict(m) = d {
        let mut m = m.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            m.push((k, v));
        }
    }
}

/// An opened `.pth` archive: the unpickled object tree plus access to tensor storages.
pub struct PthFile {
    path: PathBuf,
    prefix: String,
    /// The archive's size on disk: no entry can hold more.
    file_len: u64,
    archive: RefCell<zip::ZipArchive<std::fs::File>>,
    /// Storages read so far (many tensors may view one storage: it is read once).
    storages: RefCell<HashMap<Rc<str>, Rc<Vec<u8>>>>,
    /// Bytes of tensors materialised so far, against [`VIEW_AMPLIFICATION`].
    materialised: RefCell<u64>,
    /// The unpickled tree. Lists and dicts cloned out of it are emptied when the `PthFile` drops.
    pub root: Value,
    _mutables: Mutables,
}

/// An archive entry that cannot be opened, said plainly (torch.save stores entries uncompressed;
/// amg reads no compressed entry, so a zip bomb has nothing to inflate).
fn entry_error(name: &str, e: impl std::fmt::Display) -> String {
    let why = e.to_string();
    if why.contains("compression method") {
        format!("{name}: the entry is compressed ({why}); torch.save writes entries uncompressed — re-save the checkpoint with torch.save")
    } else {
        format!("{name}: {why}")
    }
}

/// Reads a zip entry of at most `cap` bytes (the archive's size: a claim above it is a lie).
fn read_entry(entry: &mut zip::read::ZipFile<'_, std::fs::File>, cap: u64, path: &Path, name: &str) -> Result<Vec<u8>> {
    let claimed = entry.size();
    if claimed > cap {
        return Err(Error::file(path, format!("{name}: entry claims {claimed} bytes, more than the {cap}-byte archive holds")));
    }
    let mut out = Vec::with_capacity(usize::try_from(claimed).unwrap_or(0));
    entry.take(cap.saturating_add(1)).read_to_end(&mut out).map_err(|e| Error::file(path, entry_error(name, e)))?;
    if out.len() as u64 != claimed {
        return Err(Error::file(path, format!("{name}: entry holds {} bytes, its header says {claimed}", out.len())));
    }
    Ok(out)
}

impl PthFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut archive = match zip::ZipArchive::new(file) {
            Ok(a) => a,
            Err(e) => {
                let mut head = [0u8; 2];
                let legacy = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head[0] == 0x80;
                return Err(Error::file(
                    path,
                    if legacy {
                        "legacy (pre-1.6) PyTorch serialization is not supported; re-save it with a recent torch.save".to_string()
                    } else {
                        format!("not a PyTorch checkpoint (expected the zip archive written by torch.save): {e}")
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
        let byteorder = format!("{prefix}byteorder");
        if names.contains(&byteorder) {
            let mut entry = archive.by_name(&byteorder).map_err(|e| Error::file(path, entry_error(&byteorder, e)))?;
            let bytes = read_entry(&mut entry, 64, path, &byteorder)?;
            let order = String::from_utf8_lossy(&bytes);
            if order.trim() != "little" {
                return Err(Error::file(path, format!("checkpoint byte order is `{}`; only little-endian is supported", order.trim())));
            }
        }
        let bytes = {
            let mut entry = archive.by_name(&pkl).map_err(|e| Error::file(path, entry_error(&pkl, e)))?;
            read_entry(&mut entry, file_len, path, &pkl)?
        };
        let (root, mutables) = Machine::new(&bytes).run().map_err(|e| Error::file(path, format!("{pkl}: {e}")))?;
        Ok(PthFile {
            path: path.to_path_buf(),
            prefix,
            file_len,
            archive: RefCell::new(archive),
            storages: RefCell::new(HashMap::new()),
            materialised: RefCell::new(0),
            root,
            _mutables: mutables,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn storage_bytes(&self, key: &Rc<str>) -> Result<Rc<Vec<u8>>> {
        if let Some(s) = self.storages.borrow().get(key) {
            return Ok(s.clone());
        }
        let name = format!("{}data/{key}", self.prefix);
        let mut archive = self.archive.borrow_mut();
        let mut entry = archive.by_name(&name).map_err(|e| Error::file(&self.path, entry_error(&name, e)))?;
        let bytes = Rc::new(read_entry(&mut entry, self.file_len, &self.path, &name)?);
        self.storages.borrow_mut().insert(key.clone(), bytes.clone());
        Ok(bytes)
    }

    /// Counts `bytes` more of materialised tensors against [`VIEW_AMPLIFICATION`] × the file: views
    /// of one storage (or one memoised array) repeated under many keys cannot multiply memory.
    fn account(&self, bytes: usize, name: &str) -> Result<()> {
        let mut total = self.materialised.borrow_mut();
        *total = total.saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
        if *total > VIEW_AMPLIFICATION.saturating_mul(self.file_len).saturating_add(1 << 20) {
            return Err(Error::tensor(
                &self.path,
                name,
                format!(
                    "the checkpoint's tensors would take {} bytes, more than {VIEW_AMPLIFICATION}× the {}-byte file: overlapping views built to exhaust memory",
                    *total, self.file_len
                ),
            ));
        }
        Ok(())
    }

    /// Reads a tensor value into a contiguous tensor (views with strides and offsets are resolved).
    /// The view is checked against its storage before anything is allocated.
    pub fn materialise(&self, v: &Value, name: &str) -> Result<RawTensor> {
        let t = match v {
            Value::Array(a) => {
                self.account(a.bytes.len(), name)?;
                return Ok(a.as_ref().clone());
            }
            Value::Tensor(t) => t,
            other => return Err(Error::tensor(&self.path, name, format!("expected a tensor, found {}", other.describe()))),
        };
        let bytes = self.storage_bytes(&t.key)?;
        let es = t.dtype.size();
        let bad = |msg: String| Error::tensor(&self.path, name, msg);
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad(format!("size {:?} overflows", t.shape)))?;
        let storage_elems = bytes.len() / es;
        if numel > 0 {
            // The furthest element the view touches must lie inside the storage.
            let last = t.shape.iter().zip(&t.stride).try_fold(t.offset, |a, (&d, &s)| a.checked_add((d - 1).checked_mul(s)?));
            match last {
                Some(last) if last < storage_elems => {}
                _ => {
                    return Err(bad(format!(
                        "view (offset {}, size {:?}, stride {:?}) lies outside its storage of {storage_elems} {} elements",
                        t.offset,
                        t.shape,
                        t.stride,
                        t.dtype.name()
                    )))
                }
            }
        }
        let out_len = numel.checked_mul(es).ok_or_else(|| bad(format!("size {:?} overflows", t.shape)))?;
        self.account(out_len, name)?;
        let mut out = Vec::with_capacity(out_len);
        let mut idx = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            // In range: every index is below its size, so the offset is at most `last` (checked).
            let off = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            let src = bytes.get(off * es..(off + 1) * es).ok_or_else(|| bad("data lies outside its storage".into()))?;
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

    /// The state dict: the root itself, or the dict under `state_dict` or `model`.
    pub fn state_dict(&self) -> Result<BTreeMap<String, RawTensor>> {
        let sd = self.root.get("state_dict").or_else(|| self.root.get("model")).unwrap_or_else(|| self.root.clone());
        let entries = match &sd {
            Value::Dict(d) => d.borrow().clone(),
            other => return Err(Error::file(&self.path, format!("expected a state dict, found {}", other.describe()))),
        };
        let mut out = BTreeMap::new();
        for (k, v) in &entries {
            let key = match k {
                Value::Str(s) => s.to_string(),
                other => return Err(Error::file(&self.path, format!("state dict key is {}, expected a string", other.describe()))),
            };
            match v {
                Value::Tensor(_) | Value::Array(_) => {
                    let t = self.materialise(v, &key)?;
                    out.insert(key, t); // a key set twice: the last wins, as in Python
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
        match self.root.get(key).as_ref() {
            None | Some(Value::None) => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.to_string())),
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
    let mut head = Vec::with_capacity(4);
    std::fs::File::open(path).and_then(|f| f.take(4).read_to_end(&mut head)).map_err(|e| Error::io(path, e))?;
    if head.len() < 4 {
        return Err(Error::file(path, format!("{} bytes: too short for a checkpoint", head.len())));
    }
    if head == b"PK\x03\x04" {
        let pth = PthFile::open(path)?;
        let sd = pth.state_dict()?;
        Ok((sd, Some(pth)))
    } else if head.first() == Some(&0x80) {
        Err(Error::file(path, "legacy (pre-1.6) PyTorch serialization is not supported; re-save it with a recent torch.save"))
    } else {
        let st = crate::tensor::SafetensorsFile::open(path)?;
        Ok((st.all_raw()?, None))
    }
}

#[cfg(test)]
mod tests {
    //! What the reader claims to read, on files written by torch.save (tools/fixtures/make_pth_cases.py),
    //! compared with what torch.load reads back (expected.json).
    use super::*;

    fn case(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pth_cases").join(format!("{name}.pth"))
    }

    fn expected() -> serde_json::Value {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pth_cases/expected.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    /// Reads case `name` and checks every tensor torch.load saw: dtype, shape and values.
    fn check(name: &str) -> PthFile {
        let want = &expected()[name];
        let pth = PthFile::open(&case(name)).unwrap();
        let sd = pth.state_dict().unwrap();
        let tensors = want["tensors"].as_object().unwrap();
        assert_eq!(sd.len(), tensors.len(), "{name}: tensor count");
        for (key, t) in tensors {
            let got = &sd[key];
            assert_eq!(got.dtype.name(), t["dtype"].as_str().unwrap(), "{name}/{key}: dtype");
            let shape: Vec<usize> = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            assert_eq!(got.shape, shape, "{name}/{key}: shape");
            let values: Vec<f64> = t["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let mine: Vec<f64> = match got.to_f32() {
                Some(v) => v.into_iter().map(f64::from).collect(),
                None => got.to_i64().unwrap().into_iter().map(|v| v as f64).collect(),
            };
            assert_eq!(mine, values, "{name}/{key}: values");
        }
        pth
    }

    #[test]
    fn pickle_protocols_2_4_and_5() {
        for (name, proto) in [("proto2", 2), ("proto4", 4), ("proto5", 5)] {
            assert_eq!(expected()[name]["protocol"], proto);
            check(name);
        }
    }

    #[test]
    fn strided_and_offset_views_of_one_storage() {
        // full, its transpose, a strided slice, a row (offset) and a 0-d element.
        check("views");
    }

    #[test]
    fn half_bfloat16_integer_and_bool_tensors() {
        check("dtypes");
    }

    #[test]
    fn numpy_scalars_and_arrays_including_codecs_encode() {
        // Protocol 2 pickles a NumPy scalar's bytes through `_codecs.encode(str, "latin1")`.
        let pth = check("numpy");
        assert_eq!(pth.int_list("heads").unwrap().unwrap(), vec![3, 2]);
        match pth.root.get("ratio").as_ref() {
            Some(Value::Float(f)) => assert_eq!(*f, 0.5),
            other => panic!("ratio: {other:?}"),
        }
        match pth.root.get("arr").as_ref() {
            Some(Value::Array(a)) => assert_eq!((a.shape.clone(), a.to_f32().unwrap()), (vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0])),
            other => panic!("arr: {other:?}"),
        }
        let pth = check("numpy_proto4");
        assert_eq!(
            pth.int_list("heads").unwrap().unwrap(),
            expected()["numpy_proto4"]["heads"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn big_endian_arrays_are_refused_by_name() {
        let e = PthFile::open(&case("big_endian")).unwrap().state_dict().unwrap_err().to_string();
        assert!(e.contains("tensor `w`") && e.contains("big-endian"), "{e}");
    }

    #[test]
    fn state_dicts_nested_under_state_dict_or_model() {
        check("numpy"); // under `state_dict`
        let pth = check("nested_model"); // under `model`, beside an epoch number
        assert_eq!(pth.root.get("epoch").and_then(|v| v.as_int(&pth).ok().flatten()), Some(7));
    }

    #[test]
    fn later_settings_of_a_key_win_as_in_python() {
        let d = Value::dict();
        set_items(&d, vec![Value::str("k"), Value::Int(1), Value::str("k"), Value::Int(2)]);
        assert!(matches!(d.get("k"), Some(Value::Int(2))));
    }
}
