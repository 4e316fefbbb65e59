//! The restricted unpickler: the opcodes and globals a state dict uses,
//! modelled without calling anything, containers in a flat arena; then the
//! state dict's `(name, tensor)` entries picked out of the result.

use std::collections::HashMap;
use std::rc::Rc;

use super::{
    PthDType, PthError, MAX_MARK_DEPTH, MAX_MEMO, MAX_OBJECTS, MAX_STACK, MAX_VALUES,
    PICKLE_BYTES_PER_ENTRY, PICKLE_ENTRY_SLACK,
};

/// Index of an [`Object`] in the unpickler's arena.
pub(super) type ObjId = usize;

/// A pickle value. Containers live in the arena and are referred to by
/// index, so values are cheap to clone (memo) and never recursive.
#[derive(Clone, Debug)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A float's value is never needed, only its type.
    Float,
    Str(Rc<str>),
    Global(Global),
    Obj(ObjId),
}

/// The whitelisted globals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(PthDType),
}

impl Global {
    pub(super) fn resolve(module: &str, name: &str) -> Option<Self> {
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch", class) => PthDType::from_storage_class(class).map(Global::Storage),
            _ => None,
        }
    }
}

/// A container or a rebuilt torch object.
#[derive(Debug)]
pub(super) enum Object {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Box<Dict>),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// A persistent id `("storage", <class>, key, location, numel)`.
#[derive(Debug)]
pub(super) struct StorageRef {
    pub(super) key: Rc<str>,
    pub(super) dtype: PthDType,
    /// Elements, as the pickle declares (not yet checked against the file).
    pub(super) numel: i64,
}

/// The arguments of one `_rebuild_tensor_v2` call, unchecked.
#[derive(Debug)]
pub(super) struct TensorRef {
    pub(super) storage: ObjId,
    pub(super) offset: i64,
    pub(super) size: Vec<i64>,
    pub(super) stride: Vec<i64>,
}

/// A dict keeping insertion order, with Python's overwrite semantics for
/// string and integer keys.
#[derive(Debug, Default)]
pub(super) struct Dict {
    pub(super) entries: Vec<(Value, Value)>,
    pub(super) index: HashMap<KeyRepr, usize>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) enum KeyRepr {
    Str(Rc<str>),
    Int(i64),
}

impl Dict {
    pub(super) fn insert(&mut self, key: Value, value: Value) {
        let repr = match &key {
            Value::Str(s) => Some(KeyRepr::Str(s.clone())),
            Value::Int(i) => Some(KeyRepr::Int(*i)),
            Value::Bool(b) => Some(KeyRepr::Int(i64::from(*b))),
            _ => None,
        };
        match repr {
            Some(repr) => {
                if let Some(&i) = self.index.get(&repr) {
                    self.entries[i].1 = value;
                } else {
                    self.index.insert(repr, self.entries.len());
                    self.entries.push((key, value));
                }
            }
            // Other keys are rare in checkpoints and never looked up.
            None => self.entries.push((key, value)),
        }
    }

    pub(super) fn get_str(&self, key: &str) -> Option<&Value> {
        self.index
            .get(&KeyRepr::Str(Rc::from(key)))
            .map(|&i| &self.entries[i].1)
    }
}

/// The result of unpickling: the top value and the arena it refers to.
pub(super) struct Unpickled {
    pub(super) top: Value,
    pub(super) objects: Vec<Object>,
}

impl Unpickled {
    pub(super) fn type_name(&self, v: &Value) -> &'static str {
        match v {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Global(_) => "class or function",
            Value::Obj(id) => match self.objects.get(*id) {
                Some(Object::Tuple(_)) => "tuple",
                Some(Object::List(_)) => "list",
                Some(Object::Dict(_)) => "dict",
                Some(Object::Storage(_)) => "storage",
                Some(Object::Tensor(_)) => "tensor",
                None => "invalid object",
            },
        }
    }

    pub(super) fn dict(&self, v: &Value) -> Option<&Dict> {
        match v {
            Value::Obj(id) => match self.objects.get(*id) {
                Some(Object::Dict(d)) => Some(d),
                _ => None,
            },
            _ => None,
        }
    }

    pub(super) fn tensor(&self, v: &Value) -> Option<&TensorRef> {
        match v {
            Value::Obj(id) => match self.objects.get(*id) {
                Some(Object::Tensor(t)) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Pickle opcodes (names as in Python's `pickletools`).
pub(super) mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;

    /// The `pickletools` name of any opcode, for error messages.
    pub fn name(code: u8) -> &'static str {
        match code {
            b'(' => "MARK",
            b'.' => "STOP",
            b'0' => "POP",
            b'1' => "POP_MARK",
            b'2' => "DUP",
            b'F' => "FLOAT",
            b'I' => "INT",
            b'J' => "BININT",
            b'K' => "BININT1",
            b'L' => "LONG",
            b'M' => "BININT2",
            b'N' => "NONE",
            b'P' => "PERSID",
            b'Q' => "BINPERSID",
            b'R' => "REDUCE",
            b'S' => "STRING",
            b'T' => "BINSTRING",
            b'U' => "SHORT_BINSTRING",
            b'V' => "UNICODE",
            b'X' => "BINUNICODE",
            b'a' => "APPEND",
            b'b' => "BUILD",
            b'c' => "GLOBAL",
            b'd' => "DICT",
            b'}' => "EMPTY_DICT",
            b'e' => "APPENDS",
            b'g' => "GET",
            b'h' => "BINGET",
            b'i' => "INST",
            b'j' => "LONG_BINGET",
            b'l' => "LIST",
            b']' => "EMPTY_LIST",
            b'o' => "OBJ",
            b'p' => "PUT",
            b'q' => "BINPUT",
            b'r' => "LONG_BINPUT",
            b's' => "SETITEM",
            b't' => "TUPLE",
            b')' => "EMPTY_TUPLE",
            b'u' => "SETITEMS",
            b'G' => "BINFLOAT",
            0x80 => "PROTO",
            0x81 => "NEWOBJ",
            0x82 => "EXT1",
            0x83 => "EXT2",
            0x84 => "EXT4",
            0x85 => "TUPLE1",
            0x86 => "TUPLE2",
            0x87 => "TUPLE3",
            0x88 => "NEWTRUE",
            0x89 => "NEWFALSE",
            0x8a => "LONG1",
            0x8b => "LONG4",
            b'B' => "BINBYTES",
            b'C' => "SHORT_BINBYTES",
            0x8c => "SHORT_BINUNICODE",
            0x8d => "BINUNICODE8",
            0x8e => "BINBYTES8",
            0x8f => "EMPTY_SET",
            0x90 => "ADDITEMS",
            0x91 => "FROZENSET",
            0x92 => "NEWOBJ_EX",
            0x93 => "STACK_GLOBAL",
            0x94 => "MEMOIZE",
            0x95 => "FRAME",
            0x96 => "BYTEARRAY8",
            0x97 => "NEXT_BUFFER",
            0x98 => "READONLY_BUFFER",
            _ => "unknown",
        }
    }
}

pub(super) struct Unpickler<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    /// Start of the opcode being executed, for error messages.
    pub(super) op_start: usize,
    pub(super) stack: Vec<Value>,
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u32, Value>,
    pub(super) objects: Vec<Object>,
    pub(super) pushes: usize,
    /// This pickle's share of the memo and stack caps, and of the object
    /// cap (see [`PICKLE_BYTES_PER_ENTRY`]).
    pub(super) share: usize,
    pub(super) object_share: usize,
}

impl<'a> Unpickler<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Unpickler {
            share: (data.len() / PICKLE_BYTES_PER_ENTRY).saturating_add(PICKLE_ENTRY_SLACK),
            object_share: data.len().saturating_add(PICKLE_ENTRY_SLACK),
            data,
            pos: 0,
            op_start: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objects: Vec::new(),
            pushes: 0,
        }
    }

    pub(super) fn malformed(&self, reason: impl Into<String>) -> PthError {
        PthError::MalformedPickle {
            offset: self.op_start,
            reason: reason.into(),
        }
    }

    pub(super) fn limit(&self, what: &'static str, limit: usize) -> PthError {
        PthError::PickleLimit {
            what,
            limit,
            offset: self.op_start,
            pickle_bytes: self.data.len(),
        }
    }

    /// The cap on a count for this pickle: its share, at most `absolute`.
    pub(super) fn cap(&self, absolute: usize) -> usize {
        self.share.min(absolute)
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], PthError> {
        let data: &'a [u8] = self.data;
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| data.get(self.pos..end))
            .ok_or(PthError::TruncatedPickle { offset: self.pos })?;
        self.pos += n;
        Ok(bytes)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], PthError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(super) fn u8(&mut self) -> Result<u8, PthError> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u32(&mut self) -> Result<u32, PthError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A newline-terminated line (GLOBAL's arguments), without the newline.
    pub(super) fn line(&mut self) -> Result<&'a [u8], PthError> {
        let data: &'a [u8] = self.data;
        let rest = data.get(self.pos..).unwrap_or_default();
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(PthError::TruncatedPickle { offset: data.len() });
        };
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    pub(super) fn string(&mut self, len: u64) -> Result<Value, PthError> {
        let remaining = self.data.len().saturating_sub(self.pos);
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= remaining)
            .ok_or(PthError::TruncatedPickle {
                offset: self.data.len(),
            })?;
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| self.malformed("string is not UTF-8"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    pub(super) fn push(&mut self, v: Value) -> Result<(), PthError> {
        self.pushes += 1;
        if self.pushes > MAX_VALUES {
            return Err(self.limit("values", MAX_VALUES));
        }
        let cap = self.cap(MAX_STACK);
        if self.stack.len() >= cap {
            return Err(self.limit("stack values", cap));
        }
        self.stack.push(v);
        Ok(())
    }

    pub(super) fn push_object(&mut self, obj: Object) -> Result<(), PthError> {
        let cap = self.object_share.min(MAX_OBJECTS);
        if self.objects.len() >= cap {
            return Err(self.limit("objects", cap));
        }
        self.objects.push(obj);
        self.push(Value::Obj(self.objects.len() - 1))
    }

    /// How many values above the last MARK are on the stack. As in Python,
    /// a MARK starts a new stack: nothing below it can be popped or read
    /// until the MARK itself is popped.
    pub(super) fn above_mark(&self) -> usize {
        self.stack
            .len()
            .saturating_sub(self.marks.last().copied().unwrap_or(0))
    }

    pub(super) fn pop(&mut self) -> Result<Value, PthError> {
        if self.above_mark() == 0 {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    /// Pops everything above the last MARK, and the MARK.
    pub(super) fn pop_mark(&mut self) -> Result<Vec<Value>, PthError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed("no MARK to pop to"))?;
        if mark > self.stack.len() {
            return Err(self.malformed("stack underflow below MARK"));
        }
        Ok(self.stack.split_off(mark))
    }

    pub(super) fn top(&self) -> Result<&Value, PthError> {
        if self.above_mark() == 0 {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .last()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    /// The object on top of the stack, which must be a `what`.
    pub(super) fn top_object(&mut self, what: &str) -> Result<&mut Object, PthError> {
        let id = match self.top()? {
            Value::Obj(id) => *id,
            _ => return Err(self.malformed(format!("expected a {what} on the stack"))),
        };
        let offset = self.op_start;
        self.objects
            .get_mut(id)
            .ok_or_else(|| PthError::MalformedPickle {
                offset,
                reason: "dangling object".into(),
            })
    }

    pub(super) fn set_items(&mut self, items: Vec<Value>) -> Result<(), PthError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("SETITEMS with an odd number of items"));
        }
        let offset = self.op_start;
        let Object::Dict(dict) = self.top_object("dict")? else {
            return Err(PthError::MalformedPickle {
                offset,
                reason: "SETITEM on something that is not a dict".into(),
            });
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            dict.insert(k, v);
        }
        Ok(())
    }

    pub(super) fn append(&mut self, items: Vec<Value>) -> Result<(), PthError> {
        let offset = self.op_start;
        let Object::List(list) = self.top_object("list")? else {
            return Err(PthError::MalformedPickle {
                offset,
                reason: "APPEND on something that is not a list".into(),
            });
        };
        list.extend(items);
        Ok(())
    }

    pub(super) fn global(&mut self, module: &[u8], name: &[u8]) -> Result<(), PthError> {
        let (m, n) = (
            String::from_utf8_lossy(module),
            String::from_utf8_lossy(name),
        );
        match Global::resolve(&m, &n) {
            Some(g) => self.push(Value::Global(g)),
            None => Err(PthError::ForbiddenGlobal {
                module: m.into_owned(),
                name: n.into_owned(),
                offset: self.op_start,
            }),
        }
    }

    pub(super) fn memo_put(&mut self, index: u32) -> Result<(), PthError> {
        let v = self.top()?.clone();
        let cap = self.cap(MAX_MEMO);
        if !self.memo.contains_key(&index) && self.memo.len() >= cap {
            return Err(self.limit("memo entries", cap));
        }
        self.memo.insert(index, v);
        Ok(())
    }

    pub(super) fn memo_get(&mut self, index: u32) -> Result<(), PthError> {
        let v = self
            .memo
            .get(&index)
            .cloned()
            .ok_or(PthError::MemoMissing {
                index,
                offset: self.op_start,
            })?;
        self.push(v)
    }

    pub(super) fn tuple_items(&self, v: &Value) -> Option<&[Value]> {
        match v {
            Value::Obj(id) => match self.objects.get(*id) {
                Some(Object::Tuple(items)) => Some(items),
                _ => None,
            },
            _ => None,
        }
    }

    pub(super) fn int_tuple(&self, v: &Value, what: &str) -> Result<Vec<i64>, PthError> {
        let items = self
            .tuple_items(v)
            .ok_or_else(|| self.malformed(format!("tensor {what} is not a tuple")))?;
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                _ => Err(self.malformed(format!("tensor {what} holds a non-integer"))),
            })
            .collect()
    }

    /// BINPERSID: a storage reference.
    pub(super) fn persistent_load(&mut self, pid: Value) -> Result<(), PthError> {
        let bad = |u: &Self| {
            u.malformed("persistent id is not (\"storage\", class, key, location, numel)")
        };
        let items = self.tuple_items(&pid).ok_or_else(|| bad(self))?;
        let storage = match items {
            [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), Value::Str(_location), Value::Int(numel)]
                if &**tag == "storage" =>
            {
                StorageRef {
                    key: key.clone(),
                    dtype: *dtype,
                    numel: *numel,
                }
            }
            _ => return Err(bad(self)),
        };
        if storage.key.is_empty() || storage.key.contains('/') {
            return Err(self.malformed(format!("invalid storage key {:?}", storage.key)));
        }
        self.push_object(Object::Storage(storage))
    }

    /// REDUCE: calls of whitelisted globals, modelled without executing anything.
    pub(super) fn reduce(&mut self, callable: Value, args: Value) -> Result<(), PthError> {
        let Value::Global(g) = callable else {
            return Err(self.malformed("REDUCE on something that is not a whitelisted global"));
        };
        let args = self
            .tuple_items(&args)
            .ok_or_else(|| self.malformed("REDUCE arguments are not a tuple"))?;
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.malformed("OrderedDict called with arguments"));
                }
                self.push_object(Object::Dict(Box::default()))
            }
            Global::RebuildTensorV2 => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                if !(6..=7).contains(&args.len()) {
                    return Err(self.malformed(format!(
                        "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                        args.len()
                    )));
                }
                let storage = match &args[0] {
                    Value::Obj(id) if matches!(self.objects.get(*id), Some(Object::Storage(_))) => {
                        *id
                    }
                    _ => return Err(self.malformed("_rebuild_tensor_v2 without a storage")),
                };
                let Value::Int(offset) = args[1] else {
                    return Err(self.malformed("tensor storage offset is not an integer"));
                };
                let size = self.int_tuple(&args[2], "size")?;
                let stride = self.int_tuple(&args[3], "stride")?;
                if let Some(meta) = args.get(6) {
                    let empty = match meta {
                        Value::None => true,
                        Value::Obj(id) => {
                            matches!(self.objects.get(*id), Some(Object::Dict(d)) if d.entries.is_empty())
                        }
                        _ => false,
                    };
                    if !empty {
                        return Err(
                            self.malformed("tensor metadata (conj/neg bits, ...) is not supported")
                        );
                    }
                }
                self.push_object(Object::Tensor(TensorRef {
                    storage,
                    offset,
                    size,
                    stride,
                }))
            }
            Global::RebuildParameter => {
                // (data, requires_grad, backward_hooks): the parameter is its data.
                let data = match args {
                    [data @ Value::Obj(id), _, _]
                        if matches!(self.objects.get(*id), Some(Object::Tensor(_))) =>
                    {
                        data.clone()
                    }
                    _ => return Err(self.malformed("_rebuild_parameter without a tensor")),
                };
                self.push(data)
            }
            Global::Storage(dtype) => Err(self.malformed(format!(
                "the {dtype} storage class is called, not referenced"
            ))),
        }
    }

    /// BUILD: attributes set on a dict (`_metadata`) are dropped.
    pub(super) fn build(&mut self, state: Value) -> Result<(), PthError> {
        let state_ok = match &state {
            Value::None => true,
            Value::Obj(id) => matches!(self.objects.get(*id), Some(Object::Dict(_))),
            _ => false,
        };
        let target_ok = match self.top()? {
            Value::Obj(id) => matches!(self.objects.get(*id), Some(Object::Dict(_))),
            _ => false,
        };
        if state_ok && target_ok {
            Ok(())
        } else {
            Err(self.malformed("BUILD is only supported for attributes of a dict"))
        }
    }

    pub(super) fn run(mut self) -> Result<Unpickled, PthError> {
        loop {
            self.op_start = self.pos;
            let code = self.u8()?;
            match code {
                op::PROTO => {
                    let version = self.u8()?;
                    if !(2..=5).contains(&version) {
                        return Err(PthError::UnsupportedProtocol { version });
                    }
                }
                op::FRAME => {
                    // A buffering hint: the frame's opcodes follow inline.
                    self.take(8)?;
                }
                op::STOP => {
                    let top = self.pop()?;
                    return Ok(Unpickled {
                        top,
                        objects: self.objects,
                    });
                }
                op::MARK => {
                    if self.marks.len() >= MAX_MARK_DEPTH {
                        return Err(self.limit("nested MARKs", MAX_MARK_DEPTH));
                    }
                    self.marks.push(self.stack.len());
                }
                op::EMPTY_DICT => self.push_object(Object::Dict(Box::default()))?,
                op::EMPTY_LIST => self.push_object(Object::List(Vec::new()))?,
                op::EMPTY_TUPLE => self.push_object(Object::Tuple(Vec::new()))?,
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.push_object(Object::Tuple(items))?;
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(code - op::TUPLE1 + 1);
                    if self.above_mark() < n {
                        return Err(self.malformed("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_object(Object::Tuple(items))?;
                }
                op::BINUNICODE => {
                    let len = self.u32()?;
                    let s = self.string(u64::from(len))?;
                    self.push(s)?;
                }
                op::SHORT_BINUNICODE => {
                    let len = self.u8()?;
                    let s = self.string(u64::from(len))?;
                    self.push(s)?;
                }
                op::BINUNICODE8 => {
                    let len = u64::from_le_bytes(self.array()?);
                    let s = self.string(len)?;
                    self.push(s)?;
                }
                op::BINPUT => {
                    let i = self.u8()?;
                    self.memo_put(u32::from(i))?;
                }
                op::LONG_BINPUT => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                op::MEMOIZE => {
                    let i = u32::try_from(self.memo.len())
                        .map_err(|_| self.limit("memo entries", self.cap(MAX_MEMO)))?;
                    self.memo_put(i)?;
                }
                op::BINGET => {
                    let i = self.u8()?;
                    self.memo_get(u32::from(i))?;
                }
                op::LONG_BINGET => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                op::BININT => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::BININT1 => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::LONG1 => {
                    let n = usize::from(self.u8()?);
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return Err(self.malformed(format!("{n}-byte integer is too large")));
                    }
                    // Little-endian two's complement, sign-extended to 64 bits.
                    let fill = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                        0xff
                    } else {
                        0
                    };
                    let mut buf = [fill; 8];
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                op::BINFLOAT => {
                    self.take(8)?;
                    self.push(Value::Float)?;
                }
                op::NONE => self.push(Value::None)?,
                op::NEWTRUE => self.push(Value::Bool(true))?,
                op::NEWFALSE => self.push(Value::Bool(false))?,
                op::GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.malformed("STACK_GLOBAL arguments are not strings"));
                    };
                    self.global(module.as_bytes(), name.as_bytes())?;
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.reduce(callable, args)?;
                }
                op::BUILD => {
                    let state = self.pop()?;
                    self.build(state)?;
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    self.persistent_load(pid)?;
                }
                op::SETITEM => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![key, value])?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                op::APPEND => {
                    let value = self.pop()?;
                    self.append(vec![value])?;
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                _ => {
                    return Err(PthError::UnsupportedOpcode {
                        opcode: code,
                        name: op::name(code),
                        offset: self.op_start,
                    })
                }
            }
        }
    }
}

// The state dict inside the unpickled object.

/// The `(name, tensor)` entries of the state dict, in file order.
pub(super) fn select_state_dict(u: &Unpickled) -> Result<Vec<(String, &TensorRef)>, PthError> {
    let Some(top) = u.dict(&u.top) else {
        return Err(PthError::NotAStateDict {
            found: format!("a {}", u.type_name(&u.top)),
        });
    };
    let all_tensors = top.entries.iter().all(|(_, v)| u.tensor(v).is_some());
    let (dict, prefix) = if all_tensors {
        (top, "")
    } else if let Some(inner) = top.get_str("model").and_then(|v| u.dict(v)) {
        (inner, "model.")
    } else if let Some(inner) = top.get_str("state_dict").and_then(|v| u.dict(v)) {
        (inner, "state_dict.")
    } else if top.entries.iter().all(|(_, v)| u.tensor(v).is_none()) {
        return Err(PthError::NotAStateDict {
            found: "a dict without tensors and without a \"model\" or \"state_dict\" dict".into(),
        });
    } else {
        (top, "")
    };
    dict.entries
        .iter()
        .map(|(k, v)| {
            let Value::Str(name) = k else {
                return Err(PthError::NonStringKey {
                    found: u.type_name(k),
                });
            };
            match u.tensor(v) {
                Some(t) => Ok((name.to_string(), t)),
                None => Err(PthError::NotATensor {
                    key: format!("{prefix}{name}"),
                    found: u.type_name(v),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long1_is_sign_extended() {
        let mut u = Unpickler::new(&[op::LONG1, 2, 0x00, 0x80, op::LONG1, 0, op::TUPLE2, op::STOP]);
        u.op_start = 0;
        let out = u.run().unwrap();
        let Value::Obj(id) = out.top else { panic!() };
        let Object::Tuple(items) = &out.objects[id] else {
            panic!()
        };
        assert!(matches!(items[..], [Value::Int(-32768), Value::Int(0)]));
    }
}
