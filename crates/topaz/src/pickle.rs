//! A restricted pickle virtual machine: it interprets the opcodes that `torch.save` emits for a state_dict (and,
//! as inert records, for a whole pickled `nn.Module`) and refuses everything else.
//!
//! Nothing is ever executed. A `GLOBAL` is looked up in a fixed allowlist and becomes a marker value; `REDUCE`
//! and `NEWOBJ` on a marker build plain data (an ordered dict, a tensor reference, a set, or a record naming a
//! module class with its attribute dictionary). Any other global (`os system`, `builtins eval`, …) is refused at
//! the `GLOBAL` opcode itself, before anything could use it; any opcode outside the table below is refused with
//! its name and byte offset.

use std::cell::RefCell;
use std::rc::Rc;

use crate::error::PickleError;

/// Element types of PyTorch storages (`torch.FloatStorage` …), with their size in bytes.
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
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// PyTorch's name of the storage class.
    pub fn storage_name(self) -> &'static str {
        match self {
            DType::F64 => "DoubleStorage",
            DType::F32 => "FloatStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }

    fn from_storage_name(name: &str) -> Option<DType> {
        [
            DType::F64,
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::I64,
            DType::I32,
            DType::I16,
            DType::I8,
            DType::U8,
            DType::Bool,
        ]
        .into_iter()
        .find(|d| d.storage_name() == name)
    }
}

/// The globals a pickle may name. Everything else is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`: called with `()` it builds an empty ordered dict.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`: a Parameter is its tensor.
    RebuildParameter,
    /// `builtins.set` (`__builtin__.set` in protocol 2): called with `(list,)` it builds a set.
    Set,
    /// `torch.FloatStorage` and friends: only meaningful inside a persistent id.
    StorageType(DType),
    /// A module class (`torch.nn.modules.*`, `topaz.*`): recorded by name, never imported or called.
    ModuleClass(String),
}

/// Decides which `GLOBAL module name` pairs are accepted.
fn resolve_global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("builtins" | "__builtin__", "set") => Some(Global::Set),
        ("torch", storage) => DType::from_storage_name(storage).map(Global::StorageType),
        _ => {
            // Module classes are data here: their attribute dictionaries hold the parameters. Only the two
            // namespaces a Topaz model is built from, and only names that look like classes.
            let module_ok = module.starts_with("torch.nn.modules.")
                || module == "topaz"
                || module.starts_with("topaz.");
            let name_ok = name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (module_ok && name_ok).then(|| Global::ModuleClass(format!("{module}.{name}")))
        }
    }
}

/// A reference to (a view of) a storage, as `persistent_load` would return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// Key of the root storage (its data block in the file).
    pub key: String,
    pub dtype: DType,
    /// Elements in the root storage, as declared in the persistent id.
    pub root_numel: u64,
    /// For a legacy storage view: element offset into the root and length of the view.
    pub view: Option<(u64, u64)>,
}

/// A tensor as `_rebuild_tensor_v2` describes it; its data is resolved later from the storages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: StorageRef,
    /// Element offset into the storage (view).
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// An inert record of a pickled object of a module class: its class name and the state given to `BUILD`.
#[derive(Debug)]
pub struct Object {
    pub class: String,
    pub state: Value,
}

/// The values the machine can hold. Containers are shared (`Rc<RefCell>`) because the memo refers to the same
/// object as the stack, exactly as in Python.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Rc<str>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    /// A dict or an OrderedDict: insertion order kept, keys unique.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Set(Rc<RefCell<Vec<Value>>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    Object(Rc<RefCell<Object>>),
}

impl Value {
    /// The string, if this value is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Object(_) => "module object",
        }
    }

    /// Equality for dict keys and set members (strings and ints are all that occur).
    fn key_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::None, Value::None) => true,
            _ => false,
        }
    }
}

/// Inserts or replaces `key` in an ordered dict, as Python's `d[key] = value` does.
fn dict_set(dict: &mut Vec<(Value, Value)>, key: Value, value: Value) -> Result<(), String> {
    if !matches!(
        key,
        Value::Str(_) | Value::Int(_) | Value::Bool(_) | Value::None
    ) {
        return Err(format!("dict key of type {} is not supported", key.kind()));
    }
    match dict.iter_mut().find(|(k, _)| k.key_eq(&key)) {
        Some(slot) => slot.1 = value,
        None => dict.push((key, value)),
    }
    Ok(())
}

/// The persistent ids `torch.save` writes; resolved by the container format (legacy or zip).
pub trait PersistentLoad {
    fn load(&mut self, pid: &Value) -> Result<Value, String>;
}

/// Limits that keep a hostile file from exhausting memory.
const MAX_MEMO: usize = 1 << 22;
const MAX_STACK: usize = 1 << 22;
const MAX_STRING: usize = 1 << 28;

/// Opcode names for error messages (the full pickle table, so an unsupported one is named, not just numbered).
fn opcode_name(op: u8) -> &'static str {
    match op {
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
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        _ => "unknown opcode",
    }
}

/// Reads one pickle from `data` starting at `*pos` (advanced past its STOP) and returns the value it builds.
pub fn unpickle(
    data: &[u8],
    pos: &mut usize,
    persistent: &mut dyn PersistentLoad,
) -> Result<Value, PickleError> {
    let mut vm = Machine {
        data,
        pos: *pos,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Vec::new(),
    };
    let value = vm.run(persistent)?;
    *pos = vm.pos;
    Ok(value)
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    memo: Vec<Option<Value>>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PickleError::Truncated {
                offset: start as u64,
            })?;
        self.pos = end;
        Ok(&self.data[start..end])
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn utf8(&mut self, n: usize, offset: usize) -> Result<Value, PickleError> {
        if n > MAX_STRING {
            return Err(PickleError::Malformed {
                offset: offset as u64,
                what: format!("string of {n} bytes is too long"),
            });
        }
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| PickleError::Malformed {
            offset: offset as u64,
            what: "string is not valid UTF-8".into(),
        })?;
        Ok(Value::Str(Rc::from(s)))
    }

    /// Reads a newline-terminated ASCII line (for GLOBAL).
    fn line(&mut self) -> Result<String, PickleError> {
        let start = self.pos;
        let rest = &self.data[start..];
        let n = rest
            .iter()
            .take(1024)
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated {
                offset: start as u64,
            })?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| PickleError::Malformed {
                offset: start as u64,
                what: "GLOBAL name is not valid UTF-8".into(),
            })?
            .to_string();
        self.pos = start + n + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value, offset: usize) -> Result<(), PickleError> {
        if self.stack.len() >= MAX_STACK {
            return Err(PickleError::Malformed {
                offset: offset as u64,
                what: "stack too deep".into(),
            });
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self, op: u8, offset: usize) -> Result<Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(PickleError::StackUnderflow {
                opcode: opcode_name(op),
                offset: offset as u64,
            });
        }
        Ok(self.stack.pop().expect("length checked above"))
    }

    fn top(&mut self, op: u8, offset: usize) -> Result<&Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(PickleError::StackUnderflow {
                opcode: opcode_name(op),
                offset: offset as u64,
            });
        }
        Ok(self.stack.last().expect("length checked above"))
    }

    /// Pops everything above the last MARK, and the mark.
    fn pop_mark(&mut self, op: u8, offset: usize) -> Result<Vec<Value>, PickleError> {
        let mark = self.marks.pop().ok_or(PickleError::StackUnderflow {
            opcode: opcode_name(op),
            offset: offset as u64,
        })?;
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, index: usize, offset: usize) -> Result<(), PickleError> {
        if index >= MAX_MEMO {
            return Err(PickleError::Malformed {
                offset: offset as u64,
                what: format!("memo index {index} too large"),
            });
        }
        let v = self.top(b'q', offset)?.clone();
        if self.memo.len() <= index {
            self.memo.resize(index + 1, None);
        }
        self.memo[index] = Some(v);
        Ok(())
    }

    fn memo_get(&mut self, index: usize, offset: usize) -> Result<(), PickleError> {
        let v = self
            .memo
            .get(index)
            .and_then(|v| v.clone())
            .ok_or(PickleError::MemoMissing {
                index: index as u64,
                offset: offset as u64,
            })?;
        self.push(v, offset)
    }

    fn run(&mut self, persistent: &mut dyn PersistentLoad) -> Result<Value, PickleError> {
        loop {
            let offset = self.pos;
            let op = self.u8()?;
            let malformed = |what: String| PickleError::Malformed {
                offset: offset as u64,
                what,
            };
            match op {
                0x80 => {
                    // PROTO: versions 2 to 5 share every opcode we accept.
                    let v = self.u8()?;
                    if !(2..=5).contains(&v) {
                        return Err(malformed(format!(
                            "pickle protocol {v} is not supported (expected 2 to 5)"
                        )));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.u64()?;
                }
                b'.' => {
                    let v = self.pop(op, offset)?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return Err(malformed("values left on the stack at STOP".into()));
                    }
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = resolve_global(&module, &name).ok_or(PickleError::ForbiddenGlobal {
                        module,
                        name,
                        offset: offset as u64,
                    })?;
                    self.push(Value::Global(g), offset)?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop(op, offset)?;
                    let module = self.pop(op, offset)?;
                    let (Some(module), Some(name)) = (module.as_str(), name.as_str()) else {
                        return Err(malformed("STACK_GLOBAL needs two strings".into()));
                    };
                    let g = resolve_global(module, name).ok_or_else(|| {
                        PickleError::ForbiddenGlobal {
                            module: module.to_string(),
                            name: name.to_string(),
                            offset: offset as u64,
                        }
                    })?;
                    self.push(Value::Global(g), offset)?;
                }
                b'q' => {
                    let i = self.u8()? as usize;
                    self.memo_put(i, offset)?;
                }
                b'r' => {
                    let i = self.u32()? as usize;
                    self.memo_put(i, offset)?;
                }
                0x94 => {
                    let i = self.memo.len();
                    self.memo_put(i, offset)?;
                }
                b'h' => {
                    let i = self.u8()? as usize;
                    self.memo_get(i, offset)?;
                }
                b'j' => {
                    let i = self.u32()? as usize;
                    self.memo_get(i, offset)?;
                }
                b')' => self.push(Value::Tuple(Rc::new(Vec::new())), offset)?,
                b't' => {
                    let items = self.pop_mark(op, offset)?;
                    self.push(Value::Tuple(Rc::new(items)), offset)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(op, offset)?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Rc::new(items)), offset)?;
                }
                b'}' => self.push(Value::Dict(Rc::new(RefCell::new(Vec::new()))), offset)?,
                b']' => self.push(Value::List(Rc::new(RefCell::new(Vec::new()))), offset)?,
                0x8f => self.push(Value::Set(Rc::new(RefCell::new(Vec::new()))), offset)?,
                b's' => {
                    let value = self.pop(op, offset)?;
                    let key = self.pop(op, offset)?;
                    let Value::Dict(d) = self.top(op, offset)? else {
                        return Err(malformed("SETITEM on a value that is not a dict".into()));
                    };
                    dict_set(&mut d.borrow_mut(), key, value).map_err(malformed)?;
                }
                b'u' => {
                    let items = self.pop_mark(op, offset)?;
                    if items.len() % 2 != 0 {
                        return Err(malformed("SETITEMS with an odd number of items".into()));
                    }
                    let Value::Dict(d) = self.top(op, offset)? else {
                        return Err(malformed("SETITEMS on a value that is not a dict".into()));
                    };
                    let mut d = d.borrow_mut();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        dict_set(&mut d, k, v).map_err(malformed)?;
                    }
                }
                b'a' => {
                    let v = self.pop(op, offset)?;
                    let Value::List(l) = self.top(op, offset)? else {
                        return Err(malformed("APPEND on a value that is not a list".into()));
                    };
                    l.borrow_mut().push(v);
                }
                b'e' => {
                    let items = self.pop_mark(op, offset)?;
                    let Value::List(l) = self.top(op, offset)? else {
                        return Err(malformed("APPENDS on a value that is not a list".into()));
                    };
                    l.borrow_mut().extend(items);
                }
                0x90 => {
                    let items = self.pop_mark(op, offset)?;
                    let Value::Set(s) = self.top(op, offset)? else {
                        return Err(malformed("ADDITEMS on a value that is not a set".into()));
                    };
                    s.borrow_mut().extend(items);
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i128), offset)?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i128), offset)?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i128), offset)?;
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = self.u8()? as usize;
                    if n > 16 {
                        return Err(malformed(format!("integer of {n} bytes is too large")));
                    }
                    let b = self.take(n)?;
                    let mut buf = [0u8; 16];
                    buf[..n].copy_from_slice(b);
                    if n > 0 && b[n - 1] & 0x80 != 0 {
                        buf[n..].fill(0xff);
                    }
                    self.push(Value::Int(i128::from_le_bytes(buf)), offset)?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)), offset)?;
                }
                b'N' => self.push(Value::None, offset)?,
                0x88 => self.push(Value::Bool(true), offset)?,
                0x89 => self.push(Value::Bool(false), offset)?,
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n, offset)?;
                    self.push(v, offset)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n, offset)?;
                    self.push(v, offset)?;
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).unwrap_or(usize::MAX);
                    let v = self.utf8(n, offset)?;
                    self.push(v, offset)?;
                }
                b'Q' => {
                    let pid = self.pop(op, offset)?;
                    let v = persistent.load(&pid).map_err(malformed)?;
                    self.push(v, offset)?;
                }
                b'R' => {
                    let args = self.pop(op, offset)?;
                    let callable = self.pop(op, offset)?;
                    let v = reduce(callable, args).map_err(malformed)?;
                    self.push(v, offset)?;
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args) for a module class becomes an empty record.
                    let args = self.pop(op, offset)?;
                    let cls = self.pop(op, offset)?;
                    let v = match (&cls, &args) {
                        (Value::Global(Global::ModuleClass(class)), Value::Tuple(a))
                            if a.is_empty() =>
                        {
                            Value::Object(Rc::new(RefCell::new(Object {
                                class: class.clone(),
                                state: Value::None,
                            })))
                        }
                        _ => {
                            return Err(malformed(format!(
                                "NEWOBJ of a {} is not supported",
                                cls.kind()
                            )))
                        }
                    };
                    self.push(v, offset)?;
                }
                b'b' => {
                    let state = self.pop(op, offset)?;
                    match self.top(op, offset)? {
                        Value::Object(o) => {
                            let mut o = o.borrow_mut();
                            if !matches!(o.state, Value::None) {
                                return Err(malformed(format!("BUILD twice on a {}", o.class)));
                            }
                            o.state = state;
                        }
                        // `state_dict()` carries `_metadata` (per-module version numbers) as an attribute of the
                        // OrderedDict; it does not change the tensors, so it is read and dropped.
                        Value::Dict(_) if matches!(state, Value::Dict(_)) => {}
                        other => {
                            return Err(malformed(format!(
                                "BUILD on a {} is not supported",
                                other.kind()
                            )))
                        }
                    }
                }
                _ => {
                    return Err(PickleError::UnsupportedOpcode {
                        opcode: op,
                        name: opcode_name(op),
                        offset: offset as u64,
                    });
                }
            }
        }
    }
}

/// `callable(*args)` for the allowlisted callables, building data only.
fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Tuple(args) = args else {
        return Err(format!(
            "REDUCE arguments must be a tuple, found a {}",
            args.kind()
        ));
    };
    let Value::Global(g) = callable else {
        return Err(format!("REDUCE on a {} is not supported", callable.kind()));
    };
    match g {
        Global::OrderedDict if args.is_empty() => {
            Ok(Value::Dict(Rc::new(RefCell::new(Vec::new()))))
        }
        Global::Set => match args.as_slice() {
            [] => Ok(Value::Set(Rc::new(RefCell::new(Vec::new())))),
            [Value::List(l)] => Ok(Value::Set(Rc::new(RefCell::new(l.borrow().clone())))),
            _ => Err("set(...) takes one list".into()),
        },
        Global::RebuildTensorV2 => rebuild_tensor(&args).map(|t| Value::Tensor(Rc::new(t))),
        Global::RebuildParameter => match args.as_slice() {
            [Value::Tensor(t), Value::Bool(_), hooks] if is_empty_dict(hooks) => {
                Ok(Value::Tensor(t.clone()))
            }
            _ => Err("_rebuild_parameter expects (tensor, requires_grad, empty hooks)".into()),
        },
        other => Err(format!("calling {other:?} is not supported")),
    }
}

fn is_empty_dict(v: &Value) -> bool {
    matches!(v, Value::Dict(d) if d.borrow().is_empty())
}

fn as_index(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

fn as_index_tuple(v: &Value) -> Option<Vec<u64>> {
    match v {
        Value::Tuple(t) => t.iter().map(as_index).collect(),
        _ => None,
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
fn rebuild_tensor(args: &[Value]) -> Result<TensorRef, String> {
    let usage = "_rebuild_tensor_v2 expects (storage, offset, size, stride, requires_grad, hooks)";
    if !(6..=7).contains(&args.len()) {
        return Err(format!("{usage}, found {} arguments", args.len()));
    }
    let Value::Storage(storage) = &args[0] else {
        return Err(format!("{usage}: argument 1 is a {}", args[0].kind()));
    };
    let offset = as_index(&args[1]).ok_or_else(|| format!("{usage}: bad offset"))?;
    let shape = as_index_tuple(&args[2]).ok_or_else(|| format!("{usage}: bad size"))?;
    let stride = as_index_tuple(&args[3]).ok_or_else(|| format!("{usage}: bad stride"))?;
    if shape.len() != stride.len() {
        return Err(format!(
            "tensor has {} dimensions but {} strides",
            shape.len(),
            stride.len()
        ));
    }
    if !matches!(args[4], Value::Bool(_)) {
        return Err(format!("{usage}: requires_grad is a {}", args[4].kind()));
    }
    // Backward hooks would be code; a saved tensor with any is refused.
    if !is_empty_dict(&args[5]) {
        return Err("tensor carries backward hooks, which are not supported".into());
    }
    if let Some(meta) = args.get(6) {
        if !matches!(meta, Value::None) && !is_empty_dict(meta) {
            return Err("tensor carries metadata, which is not supported".into());
        }
    }
    Ok(TensorRef {
        storage: (**storage).clone(),
        offset,
        shape,
        stride,
    })
}

/// Persistent-id interpretation shared by both container formats: `('storage', StorageType, key, location, numel
/// [, view_metadata])`, and in legacy files `('module', cls, source_file, source)` for module classes.
pub fn parse_storage_pid(pid: &Value, legacy: bool) -> Result<Value, String> {
    let Value::Tuple(t) = pid else {
        return Err(format!(
            "persistent id is a {}, expected a tuple",
            pid.kind()
        ));
    };
    match t.first().and_then(Value::as_str) {
        Some("storage") => {}
        Some("module") if legacy => {
            // The class object of a whole pickled module, with its source code: the source is ignored.
            return match t.get(1) {
                Some(v @ Value::Global(Global::ModuleClass(_))) => Ok(v.clone()),
                _ => Err("module persistent id without an allowed class".into()),
            };
        }
        other => return Err(format!("unknown persistent id type {other:?}")),
    }
    let expected = if legacy { 6 } else { 5 };
    if t.len() != expected {
        return Err(format!(
            "storage persistent id has {} fields, expected {expected}",
            t.len()
        ));
    }
    let Value::Global(Global::StorageType(dtype)) = t[1] else {
        return Err(format!("storage type is a {}", t[1].kind()));
    };
    let key = t[2]
        .as_str()
        .ok_or("storage key is not a string")?
        .to_string();
    let _location = t[3].as_str().ok_or("storage location is not a string")?;
    let root_numel = as_index(&t[4]).ok_or("storage size is not a non-negative integer")?;
    let view = match t.get(5) {
        None | Some(Value::None) => None,
        Some(Value::Tuple(v)) if v.len() == 3 => {
            let off = as_index(&v[1]).ok_or("bad storage view offset")?;
            let len = as_index(&v[2]).ok_or("bad storage view size")?;
            Some((off, len))
        }
        Some(other) => return Err(format!("storage view is a {}", other.kind())),
    };
    Ok(Value::Storage(Rc::new(StorageRef {
        key,
        dtype,
        root_numel,
        view,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoPersistent;
    impl PersistentLoad for NoPersistent {
        fn load(&mut self, _pid: &Value) -> Result<Value, String> {
            Err("no persistent ids here".into())
        }
    }

    fn run(bytes: &[u8]) -> Result<Value, PickleError> {
        let mut pos = 0;
        unpickle(bytes, &mut pos, &mut NoPersistent)
    }

    #[test]
    fn reads_torch_magic_number() {
        // `pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)`
        let bytes = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        match run(bytes).unwrap() {
            Value::Int(v) => assert_eq!(v, 0x1950a86a20f9469cfc6c),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn negative_long1() {
        // LONG1 of the two bytes 0xd4 0xfe is -300 (two's complement, little-endian).
        match run(b"\x80\x02\x8a\x02\xd4\xfe.").unwrap() {
            Value::Int(v) => assert_eq!(v, -300),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn refuses_os_system() {
        // `pickle.dumps` of a `__reduce__` returning (os.system, ("echo pwned",)).
        let bytes =
            b"\x80\x02cposix\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
        let err = run(bytes).unwrap_err();
        assert!(
            matches!(&err, PickleError::ForbiddenGlobal { module, name, offset: 2 } if module == "posix" && name == "system")
        );
        assert!(err.to_string().contains("posix.system"), "{err}");
    }

    #[test]
    fn refuses_builtins_eval_via_stack_global() {
        let bytes = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        let err = run(bytes).unwrap_err();
        assert!(
            matches!(err, PickleError::ForbiddenGlobal { ref name, .. } if name == "eval"),
            "{err}"
        );
    }

    #[test]
    fn refuses_unknown_opcode_by_name() {
        // INST ('i') instantiates a class by name.
        let err = run(b"\x80\x02(iposix\nsystem\n.").unwrap_err();
        assert!(
            matches!(
                err,
                PickleError::UnsupportedOpcode {
                    opcode: b'i',
                    name: "INST",
                    offset: 3
                }
            ),
            "{err}"
        );
        let err = run(b"\x80\x02\xff.").unwrap_err();
        assert!(
            matches!(err, PickleError::UnsupportedOpcode { opcode: 0xff, .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_truncated() {
        let err = run(b"\x80\x02X\x10\x00\x00\x00abc").unwrap_err();
        assert!(matches!(err, PickleError::Truncated { offset: 7 }), "{err}");
        let err = run(b"\x80\x02}").unwrap_err();
        assert!(matches!(err, PickleError::Truncated { offset: 3 }), "{err}");
    }

    #[test]
    fn refuses_stack_underflow_and_bad_memo() {
        assert!(matches!(
            run(b"\x80\x02s.").unwrap_err(),
            PickleError::StackUnderflow {
                opcode: "SETITEM",
                ..
            }
        ));
        assert!(matches!(
            run(b"\x80\x02h\x05.").unwrap_err(),
            PickleError::MemoMissing { index: 5, .. }
        ));
    }

    #[test]
    fn refuses_calling_a_storage_type() {
        let err = run(b"\x80\x02ctorch\nFloatStorage\n)R.").unwrap_err();
        assert!(matches!(err, PickleError::Malformed { .. }), "{err}");
    }

    #[test]
    fn builds_ordered_dict_with_metadata() {
        // OrderedDict() with items a=1, b='x' and a BUILD of {'_metadata': {}}
        let bytes = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bX\x01\x00\x00\x00xu}X\x09\x00\x00\x00_metadata}sb.";
        let Value::Dict(d) = run(bytes).unwrap() else {
            panic!()
        };
        let d = d.borrow();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].0.as_str(), Some("a"));
        assert_eq!(d[1].1.as_str(), Some("x"));
    }
}
