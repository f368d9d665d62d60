//! A small pickle writer (protocol 2) for the objects `torch.load(weights_only=True)` accepts: dicts
//! and ordered dicts, lists, strings, integers, floats, booleans, and tensors whose storages are
//! separate records of the checkpoint (persistent ids, as `torch.save` writes them). Only these
//! opcodes are ever written, so the reader needs no code execution.

use crate::import::pickle_op::{
    APPENDS, BINFLOAT, BININT, BININT1, BINPERSID, BINUNICODE, EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, GLOBAL, LONG1, MARK, NEWFALSE, NEWTRUE, PROTO, REDUCE,
    SETITEMS, STOP, TUPLE,
};

/// A value to pickle.
pub enum PyValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    List(Vec<PyValue>),
    /// A plain dict, keys in the given order.
    Dict(Vec<(String, PyValue)>),
    /// A `collections.OrderedDict` (what a state dict is).
    OrderedDict(Vec<(String, PyValue)>),
    /// A contiguous tensor over storage record `storage` (its number in the checkpoint).
    Tensor {
        storage: usize,
        dtype: StorageType,
        shape: Vec<usize>,
    },
}

/// Storage classes `torch.load(weights_only=True)` allows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StorageType {
    Float,
    Bool,
}

impl StorageType {
    fn class(self) -> &'static str {
        match self {
            StorageType::Float => "FloatStorage",
            StorageType::Bool => "BoolStorage",
        }
    }
}

/// The pickle of `v`, protocol 2.
pub fn dumps(v: &PyValue) -> Vec<u8> {
    let mut out = vec![PROTO, 2];
    write(&mut out, v);
    out.push(STOP);
    out
}

fn global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(GLOBAL);
    out.extend_from_slice(module.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
}

fn int(out: &mut Vec<u8>, v: i64) {
    if (0..256).contains(&v) {
        out.extend_from_slice(&[BININT1, v as u8]);
    } else if i32::try_from(v).is_ok() {
        out.push(BININT);
        out.extend_from_slice(&(v as i32).to_le_bytes());
    } else {
        out.extend_from_slice(&[LONG1, 8]);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.push(BINUNICODE);
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn items(out: &mut Vec<u8>, items: &[(String, PyValue)]) {
    if items.is_empty() {
        return;
    }
    out.push(MARK);
    for (k, v) in items {
        string(out, k);
        write(out, v);
    }
    out.push(SETITEMS);
}

fn int_tuple(out: &mut Vec<u8>, v: &[usize]) {
    out.push(MARK);
    for &x in v {
        int(out, x as i64);
    }
    out.push(TUPLE);
}

fn write(out: &mut Vec<u8>, v: &PyValue) {
    match v {
        PyValue::Int(i) => int(out, *i),
        PyValue::Float(f) => {
            out.push(BINFLOAT);
            out.extend_from_slice(&f.to_be_bytes());
        }
        PyValue::Bool(b) => out.push(if *b { NEWTRUE } else { NEWFALSE }),
        PyValue::Str(s) => string(out, s),
        PyValue::List(l) => {
            out.push(EMPTY_LIST);
            if !l.is_empty() {
                out.push(MARK);
                for x in l {
                    write(out, x);
                }
                out.push(APPENDS);
            }
        }
        PyValue::Dict(d) => {
            out.push(EMPTY_DICT);
            items(out, d);
        }
        PyValue::OrderedDict(d) => {
            global(out, "collections", "OrderedDict");
            out.extend_from_slice(&[EMPTY_TUPLE, REDUCE]);
            items(out, d);
        }
        PyValue::Tensor { storage, dtype, shape } => {
            // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)
            global(out, "torch._utils", "_rebuild_tensor_v2");
            out.push(MARK);
            // The storage: persistent id ('storage', torch.FloatStorage, key, location, numel).
            out.push(MARK);
            string(out, "storage");
            global(out, "torch", dtype.class());
            string(out, &storage.to_string());
            string(out, "cpu");
            int(out, shape.iter().product::<usize>() as i64);
            out.push(TUPLE);
            out.push(BINPERSID);
            int(out, 0);
            int_tuple(out, shape);
            let mut stride = vec![1usize; shape.len()];
            for i in (0..shape.len().saturating_sub(1)).rev() {
                stride[i] = stride[i + 1] * shape[i + 1];
            }
            int_tuple(out, &stride);
            out.push(NEWFALSE);
            global(out, "collections", "OrderedDict");
            out.extend_from_slice(&[EMPTY_TUPLE, REDUCE]);
            out.push(TUPLE);
            out.push(REDUCE);
        }
    }
}
