//! Reading and writing `NumPy` `.npy` files holding little-endian floats.
//!
//! The reader accepts format versions 1.0, 2.0 and 3.0 with dtype `'<f2'`,
//! `'<f4'` or `'<f8'` in C (row-major) order and converts every value to
//! `f32`. The header dict is parsed by a small tokenizer for the Python
//! literal subset numpy writes; it is never evaluated or substring-searched.
//! Hostile input gives a typed [`NpyError`] naming the problem: sizes are
//! checked against the input *before* anything proportional to the declared
//! shape is allocated.
//!
//! The encoder, [`encode_npy_f32`], produces the bytes of a `'<f4'` file,
//! identical to what `numpy.save` (numpy 2.x) writes for the same C-contiguous
//! `float32` array. Writing them to disk is the caller's business (the `na`
//! tool publishes all its outputs together through `na_model::output`).
//!
//! # Format
//!
//! ```text
//! \x93NUMPY  major minor  header_len (u16 LE for 1.0, u32 LE for 2.0/3.0)
//! {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }<spaces>\n
//! data: product(shape) little-endian items, row-major
//! ```

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The six bytes every `.npy` file starts with.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Largest header accepted by the reader, in bytes (1 MiB).
///
/// numpy itself refuses headers above 10 000 bytes unless told otherwise; the
/// largest legitimate header (64 dimensions) is well under 2 KiB.
pub const MAX_HEADER_LEN: usize = 1 << 20;

/// Default cap on the number of elements accepted by [`read_npy`] (2^31).
pub const DEFAULT_MAX_ELEMENTS: usize = 1 << 31;

/// numpy aligns the end of the header (and so the start of the data) to this.
const ARRAY_ALIGN: usize = 64;

/// numpy reserves room for the growth axis to reach this many digits.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// Deepest nesting of brackets accepted inside a header value.
const MAX_NESTING: usize = 32;

/// Longest piece of input text quoted verbatim in an error message.
const MAX_QUOTED_CHARS: usize = 64;

/// Element type stored in an .npy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDtype {
    /// IEEE 754 binary16, descr `'<f2'`.
    F16,
    /// IEEE 754 binary32, descr `'<f4'`.
    F32,
    /// IEEE 754 binary64, descr `'<f8'`.
    F64,
}

impl NpyDtype {
    /// The numpy type descriptor string, e.g. `"<f4"`.
    #[must_use]
    pub fn descr(self) -> &'static str {
        match self {
            Self::F16 => "<f2",
            Self::F32 => "<f4",
            Self::F64 => "<f8",
        }
    }

    /// Size of one element in bytes (2, 4 or 8).
    #[must_use]
    pub fn item_size(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    /// The dtype for a supported descriptor, `None` for anything else.
    fn from_descr(descr: &str) -> Option<Self> {
        match descr {
            "<f2" => Some(Self::F16),
            "<f4" => Some(Self::F32),
            "<f8" => Some(Self::F64),
            _ => None,
        }
    }
}

impl fmt::Display for NpyDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.descr())
    }
}

/// A decoded array: shape and values converted to f32 (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Dimensions, outermost first; empty for a 0-d (scalar) array.
    pub shape: Vec<usize>,
    /// The element type the file stored (values are converted to `f32`).
    pub dtype: NpyDtype,
    /// `product(shape)` values in row-major (C) order.
    pub data: Vec<f32>,
}

impl NpyArray {
    /// Number of elements (the product of `shape`; 1 for a 0-d array).
    #[must_use]
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the array holds no elements (some dimension is 0).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The file operation that failed, for [`NpyError::Io`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoOp {
    /// Opening a file for reading.
    Open,
    /// Reading from a file.
    Read,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Open => "open",
            Self::Read => "read",
        })
    }
}

/// Everything that can go wrong reading or writing an `.npy` file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// A file operation failed; the underlying error is the `source`.
    #[error("failed to {op} '{}'", .path.display())]
    Io {
        /// What was being done.
        op: IoOp,
        /// The file involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The input does not start with the `\x93NUMPY` magic string.
    #[error("not a .npy file: expected magic \"\\x93NUMPY\", found \"{}\"", .found.escape_ascii())]
    BadMagic {
        /// The first (up to six) bytes of the input.
        found: Vec<u8>,
    },

    /// The format version is not 1.0, 2.0 or 3.0.
    #[error("unsupported .npy format version {major}.{minor} (expected 1.0, 2.0 or 3.0)")]
    UnsupportedVersion {
        /// Major version byte.
        major: u8,
        /// Minor version byte.
        minor: u8,
    },

    /// The input ends before the preamble or the declared header is complete.
    #[error(".npy header truncated: need {expected} bytes for the preamble and header, file has {actual}")]
    TruncatedHeader {
        /// Bytes needed up to the end of the header (as far as known).
        expected: u64,
        /// Bytes available.
        actual: u64,
    },

    /// The declared header length is beyond [`MAX_HEADER_LEN`].
    #[error(".npy header length {len} exceeds the limit of {max} bytes")]
    HeaderTooLarge {
        /// Header length declared in the preamble.
        len: u64,
        /// The limit.
        max: usize,
    },

    /// The header is not ASCII (versions 1.0, 2.0) or UTF-8 (version 3.0).
    #[error(".npy header is not valid {} (format version {major}.{minor}) at header byte {offset}", encoding_name(*.major))]
    HeaderEncoding {
        /// Major format version, which decides the encoding.
        major: u8,
        /// Minor format version.
        minor: u8,
        /// Offset of the first invalid byte within the header.
        offset: usize,
    },

    /// The header is not a well-formed dict literal of the expected shape.
    #[error("malformed .npy header at header byte {offset}: {reason}")]
    MalformedHeader {
        /// Offset within the header (after the preamble) where parsing failed.
        offset: usize,
        /// What was expected and what was found instead.
        reason: String,
    },

    /// A required key (`'descr'`, `'fortran_order'` or `'shape'`) is absent.
    #[error(".npy header is missing the key '{key}'")]
    MissingKey {
        /// The absent key.
        key: &'static str,
    },

    /// A key occurs twice in the header dict.
    #[error(".npy header has the key '{key}' more than once")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },

    /// The header dict has a key other than `'descr'`, `'fortran_order'`, `'shape'`.
    #[error(
        ".npy header has an unknown key '{key}' (expected 'descr', 'fortran_order' and 'shape')"
    )]
    UnknownKey {
        /// The unexpected key (shortened if very long).
        key: String,
    },

    /// The dtype is a supported float type, but big-endian.
    #[error("big-endian .npy dtype '{descr}' is not supported (expected '<f2', '<f4' or '<f8')")]
    BigEndian {
        /// The descriptor as written, e.g. `>f4`.
        descr: String,
    },

    /// Any dtype other than `'<f2'`, `'<f4'`, `'<f8'` or their big-endian forms.
    #[error("unsupported .npy dtype '{descr}' (expected '<f2', '<f4' or '<f8')")]
    UnsupportedDtype {
        /// The descriptor: the string's contents, or the source text of a
        /// structured (list/tuple) descriptor, shortened if very long.
        descr: String,
    },

    /// The array is stored in Fortran (column-major) order.
    #[error(
        ".npy array is stored in Fortran order (fortran_order: True); only C order is supported"
    )]
    FortranOrder,

    /// A shape entry is not a non-negative integer that fits in `usize`.
    #[error("invalid .npy shape dimension '{literal}' (expected a non-negative integer that fits in usize)")]
    InvalidDimension {
        /// The entry as written (shortened if very long).
        literal: String,
    },

    /// The element or byte count of the shape does not fit in `usize`.
    #[error(
        ".npy shape {} overflows the element or byte count",
        ShapeDisplay(.shape)
    )]
    ShapeOverflow {
        /// The declared shape.
        shape: Vec<usize>,
    },

    /// The shape has more elements than the caller's limit.
    #[error(
        ".npy shape {} has {count} elements, more than the limit of {max}",
        ShapeDisplay(.shape)
    )]
    TooManyElements {
        /// The declared shape.
        shape: Vec<usize>,
        /// Its element count.
        count: usize,
        /// The caller's `max_elements`.
        max: usize,
    },

    /// The data section is shorter than the header declares.
    #[error(".npy data truncated: header declares shape {} of '{dtype}' = {expected} bytes, file has {actual}", ShapeDisplay(.shape))]
    Truncated {
        /// The declared shape.
        shape: Vec<usize>,
        /// The declared dtype.
        dtype: NpyDtype,
        /// Data bytes the header declares.
        expected: u64,
        /// Data bytes present after the header.
        actual: u64,
    },

    /// The data section is longer than the header declares.
    #[error(".npy file has trailing data: header declares shape {} of '{dtype}' = {expected} bytes, file has {actual}", ShapeDisplay(.shape))]
    TrailingData {
        /// The declared shape.
        shape: Vec<usize>,
        /// The declared dtype.
        dtype: NpyDtype,
        /// Data bytes the header declares.
        expected: u64,
        /// Data bytes present after the header.
        actual: u64,
    },

    /// The data given to a writer does not have `product(shape)` elements.
    #[error(
        "cannot write .npy: shape {} needs {expected} elements, data has {actual}",
        ShapeDisplay(.shape)
    )]
    ShapeMismatch {
        /// The shape passed to the writer.
        shape: Vec<usize>,
        /// `product(shape)`.
        expected: usize,
        /// `data.len()`.
        actual: usize,
    },
}

/// The header encoding of a format version, for [`NpyError::HeaderEncoding`].
fn encoding_name(major: u8) -> &'static str {
    if major >= 3 {
        "UTF-8"
    } else {
        "ASCII"
    }
}

/// Formats a shape the way Python writes a tuple: `()`, `(5,)`, `(2, 3)`.
struct ShapeDisplay<'a>(&'a [usize]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() == 1 {
            f.write_str(",")?;
        }
        f.write_str(")")
    }
}

/// Input text for an error message: at most [`MAX_QUOTED_CHARS`] characters,
/// control characters escaped so the message stays on one line.
fn quote(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX_QUOTED_CHARS {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Preamble and header
// ---------------------------------------------------------------------------

/// The fixed-size part before the header dict.
#[derive(Clone, Copy, Debug)]
struct Preamble {
    major: u8,
    minor: u8,
    /// Magic + version + length field: 10 bytes (v1) or 12 bytes (v2, v3).
    len: usize,
    /// Header length declared by the length field.
    header_len: usize,
}

impl Preamble {
    /// Offset of the first data byte.
    fn header_end(&self) -> usize {
        // Cannot overflow: header_len <= MAX_HEADER_LEN.
        self.len + self.header_len
    }
}

/// Parses the preamble from the start of the input, which may be short.
fn parse_preamble(bytes: &[u8]) -> Result<Preamble, NpyError> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(NpyError::BadMagic {
            found: bytes[..magic_len].to_vec(),
        });
    }
    let truncated = |expected: usize| NpyError::TruncatedHeader {
        expected: expected as u64,
        actual: bytes.len() as u64,
    };
    let (major, minor) = match bytes {
        [_, _, _, _, _, _, major, minor, ..] => (*major, *minor),
        _ => return Err(truncated(10)),
    };
    let (len, header_len) = match (major, minor, bytes.get(8..).unwrap_or(&[])) {
        (1, 0, [a, b, ..]) => (10, u64::from(u16::from_le_bytes([*a, *b]))),
        (1, 0, _) => return Err(truncated(10)),
        (2 | 3, 0, [a, b, c, d, ..]) => (12, u64::from(u32::from_le_bytes([*a, *b, *c, *d]))),
        (2 | 3, 0, _) => return Err(truncated(12)),
        _ => return Err(NpyError::UnsupportedVersion { major, minor }),
    };
    let header_len = match usize::try_from(header_len) {
        Ok(n) if n <= MAX_HEADER_LEN => n,
        _ => {
            return Err(NpyError::HeaderTooLarge {
                len: header_len,
                max: MAX_HEADER_LEN,
            })
        }
    };
    Ok(Preamble {
        major,
        minor,
        len,
        header_len,
    })
}

/// What the header declares, validated: everything needed to decode the data.
#[derive(Clone, Debug)]
struct Header {
    dtype: NpyDtype,
    shape: Vec<usize>,
    /// `product(shape)`, at most the caller's `max_elements`.
    count: usize,
    /// `count * dtype.item_size()`.
    data_len: usize,
}

impl Header {
    /// Checks that `actual` data bytes are exactly what the header declares.
    fn check_data_len(&self, actual: u64) -> Result<(), NpyError> {
        let expected = self.data_len as u64;
        match actual.cmp(&expected) {
            std::cmp::Ordering::Less => Err(NpyError::Truncated {
                shape: self.shape.clone(),
                dtype: self.dtype,
                expected,
                actual,
            }),
            std::cmp::Ordering::Greater => Err(NpyError::TrailingData {
                shape: self.shape.clone(),
                dtype: self.dtype,
                expected,
                actual,
            }),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }
}

/// Decodes and validates the header bytes (everything after the preamble).
fn parse_header(
    preamble: &Preamble,
    header: &[u8],
    max_elements: usize,
) -> Result<Header, NpyError> {
    let encoding_error = |offset| NpyError::HeaderEncoding {
        major: preamble.major,
        minor: preamble.minor,
        offset,
    };
    let text = if preamble.major >= 3 {
        std::str::from_utf8(header).map_err(|e| encoding_error(e.valid_up_to()))?
    } else if let Some(offset) = header.iter().position(|b| !b.is_ascii()) {
        return Err(encoding_error(offset));
    } else {
        std::str::from_utf8(header).map_err(|e| encoding_error(e.valid_up_to()))?
    };
    if !text.ends_with('\n') {
        return Err(NpyError::MalformedHeader {
            offset: text.len(),
            reason: "header does not end with a newline".to_owned(),
        });
    }

    let fields = HeaderParser::new(text).parse_dict()?;
    let descr = fields.descr.ok_or(NpyError::MissingKey { key: "descr" })?;
    let fortran_order = fields.fortran_order.ok_or(NpyError::MissingKey {
        key: "fortran_order",
    })?;
    let shape = fields.shape.ok_or(NpyError::MissingKey { key: "shape" })?;

    let dtype = match descr {
        Descr::Str(s) => match NpyDtype::from_descr(&s) {
            Some(dtype) => dtype,
            None if matches!(s.as_str(), ">f2" | ">f4" | ">f8") => {
                return Err(NpyError::BigEndian { descr: s })
            }
            None => return Err(NpyError::UnsupportedDtype { descr: quote(&s) }),
        },
        Descr::Structured(source) => {
            return Err(NpyError::UnsupportedDtype {
                descr: quote(source),
            })
        }
    };
    if fortran_order {
        return Err(NpyError::FortranOrder);
    }

    let count = element_count(&shape).ok_or_else(|| NpyError::ShapeOverflow {
        shape: shape.clone(),
    })?;
    if count > max_elements {
        return Err(NpyError::TooManyElements {
            shape,
            count,
            max: max_elements,
        });
    }
    let data_len = count
        .checked_mul(dtype.item_size())
        .ok_or_else(|| NpyError::ShapeOverflow {
            shape: shape.clone(),
        })?;
    Ok(Header {
        dtype,
        shape,
        count,
        data_len,
    })
}

/// `product(shape)`, or `None` on overflow. Any zero dimension gives 0, even
/// if the product of the other dimensions would overflow (as in numpy).
fn element_count(shape: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// The `'descr'` value.
#[derive(Clone, Debug)]
enum Descr<'a> {
    /// A plain string such as `'<f4'`.
    Str(String),
    /// The source text of a list/tuple/dict descriptor (structured dtype).
    Structured(&'a str),
}

/// The keys of the header dict, each present at most once.
#[derive(Default)]
struct HeaderFields<'a> {
    descr: Option<Descr<'a>>,
    fortran_order: Option<bool>,
    shape: Option<Vec<usize>>,
}

/// A token of the Python literal subset used in `.npy` headers.
#[derive(Clone, Debug, PartialEq)]
enum Tok<'a> {
    /// One of `{ } ( ) [ ] : ,`.
    Punct(char),
    /// A quoted string, escapes resolved.
    Str(String),
    /// A run of `[A-Za-z0-9_.+-]`: a number or a name such as `True`.
    Word(&'a str),
    /// End of input (trailing whitespace skipped).
    End,
}

impl fmt::Display for Tok<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Punct(c) => write!(f, "'{c}'"),
            Self::Str(s) => write!(f, "string '{}'", quote(s)),
            Self::Word(w) => write!(f, "'{}'", quote(w)),
            Self::End => f.write_str("end of header"),
        }
    }
}

/// Tokenizer and recursive-descent parser for the header dict.
struct HeaderParser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> HeaderParser<'a> {
    fn new(src: &'a str) -> Self {
        Self { src, pos: 0 }
    }

    fn error(offset: usize, reason: impl Into<String>) -> NpyError {
        NpyError::MalformedHeader {
            offset,
            reason: reason.into(),
        }
    }

    fn peek_char(&self) -> Option<char> {
        self.src.get(self.pos..).and_then(|s| s.chars().next())
    }

    /// The next token and its start offset.
    fn token(&mut self) -> Result<(Tok<'a>, usize), NpyError> {
        while let Some(c @ (' ' | '\t' | '\n' | '\r')) = self.peek_char() {
            self.pos += c.len_utf8();
        }
        let start = self.pos;
        let Some(c) = self.peek_char() else {
            return Ok((Tok::End, start));
        };
        match c {
            '{' | '}' | '(' | ')' | '[' | ']' | ':' | ',' => {
                self.pos += 1;
                Ok((Tok::Punct(c), start))
            }
            '\'' | '"' => self.string(c).map(|s| (Tok::Str(s), start)),
            c if is_word_char(c) => {
                let rest = self.src.get(start..).unwrap_or("");
                let len = rest.find(|c| !is_word_char(c)).unwrap_or(rest.len());
                self.pos += len;
                Ok((Tok::Word(rest.get(..len).unwrap_or("")), start))
            }
            c => Err(Self::error(
                start,
                format!("unexpected character '{}'", c.escape_default()),
            )),
        }
    }

    /// A string quoted with `quote_char`, with `pos` at the opening quote.
    fn string(&mut self, quote_char: char) -> Result<String, NpyError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek_char() else {
                return Err(Self::error(start, "unterminated string"));
            };
            self.pos += c.len_utf8();
            match c {
                c if c == quote_char => return Ok(out),
                '\\' => match self.peek_char() {
                    Some(e @ ('\\' | '\'' | '"')) => {
                        self.pos += 1;
                        out.push(e);
                    }
                    Some(e) => {
                        return Err(Self::error(
                            self.pos - 1,
                            format!("unsupported escape '\\{}' in string", e.escape_default()),
                        ))
                    }
                    None => return Err(Self::error(start, "unterminated string")),
                },
                '\n' | '\r' => return Err(Self::error(start, "unterminated string")),
                c if c.is_control() && c != '\t' => {
                    return Err(Self::error(
                        self.pos - c.len_utf8(),
                        format!("control character '{}' in string", c.escape_default()),
                    ))
                }
                c => out.push(c),
            }
        }
    }

    /// Consumes the punctuation `want` or fails naming `context`.
    fn expect(&mut self, want: char, context: &str) -> Result<(), NpyError> {
        match self.token()? {
            (Tok::Punct(c), _) if c == want => Ok(()),
            (tok, at) => Err(Self::error(
                at,
                format!("expected '{want}' {context}, found {tok}"),
            )),
        }
    }

    /// `{ 'key': value, ... }` followed only by whitespace.
    fn parse_dict(mut self) -> Result<HeaderFields<'a>, NpyError> {
        self.expect('{', "at the start of the header")?;
        let mut fields = HeaderFields::default();
        loop {
            let key = match self.token()? {
                (Tok::Punct('}'), _) => break,
                (Tok::Str(key), _) => key,
                (tok, at) => {
                    return Err(Self::error(
                        at,
                        format!("expected a quoted key or '}}', found {tok}"),
                    ))
                }
            };
            let duplicate = || NpyError::DuplicateKey { key: quote(&key) };
            match key.as_str() {
                "descr" if fields.descr.is_some() => return Err(duplicate()),
                "fortran_order" if fields.fortran_order.is_some() => return Err(duplicate()),
                "shape" if fields.shape.is_some() => return Err(duplicate()),
                "descr" | "fortran_order" | "shape" => {}
                _ => return Err(NpyError::UnknownKey { key: quote(&key) }),
            }
            self.expect(':', &format!("after the key '{key}'"))?;
            match key.as_str() {
                "descr" => fields.descr = Some(self.descr()?),
                "fortran_order" => fields.fortran_order = Some(self.boolean()?),
                _ => fields.shape = Some(self.shape()?),
            }
            match self.token()? {
                (Tok::Punct(','), _) => {}
                (Tok::Punct('}'), _) => break,
                (tok, at) => {
                    return Err(Self::error(
                        at,
                        format!("expected ',' or '}}' after the value of '{key}', found {tok}"),
                    ))
                }
            }
        }
        match self.token()? {
            (Tok::End, _) => Ok(fields),
            (tok, at) => Err(Self::error(
                at,
                format!("expected only padding after the dict, found {tok}"),
            )),
        }
    }

    /// The `'descr'` value: a string, or a structured descriptor.
    fn descr(&mut self) -> Result<Descr<'a>, NpyError> {
        match self.token()? {
            (Tok::Str(s), _) => Ok(Descr::Str(s)),
            (Tok::Punct(open @ ('[' | '(' | '{')), at) => {
                self.skip_container(open, 1)?;
                let source = self.src.get(at..self.pos).unwrap_or("");
                Ok(Descr::Structured(source))
            }
            (tok, at) => Err(Self::error(
                at,
                format!("expected a string or list for 'descr', found {tok}"),
            )),
        }
    }

    /// Skips any value (used inside structured descriptors).
    fn skip_value(&mut self, depth: usize) -> Result<(), NpyError> {
        match self.token()? {
            (Tok::Str(_) | Tok::Word(_), _) => Ok(()),
            (Tok::Punct(open @ ('[' | '(' | '{')), _) => self.skip_container(open, depth + 1),
            (tok, at) => Err(Self::error(at, format!("expected a value, found {tok}"))),
        }
    }

    /// Skips the rest of a list, tuple or dict whose `open` bracket was consumed.
    fn skip_container(&mut self, open: char, depth: usize) -> Result<(), NpyError> {
        if depth > MAX_NESTING {
            return Err(Self::error(
                self.pos,
                format!("values nested more than {MAX_NESTING} deep"),
            ));
        }
        let close = match open {
            '[' => ']',
            '(' => ')',
            _ => '}',
        };
        loop {
            // Empty container, or closing after a trailing comma.
            let save = self.pos;
            if let (Tok::Punct(c), _) = self.token()? {
                if c == close {
                    return Ok(());
                }
            }
            self.pos = save;
            self.skip_value(depth)?;
            if open == '{' {
                self.expect(':', "in a dict")?;
                self.skip_value(depth)?;
            }
            match self.token()? {
                (Tok::Punct(','), _) => {}
                (Tok::Punct(c), _) if c == close => return Ok(()),
                (tok, at) => {
                    return Err(Self::error(
                        at,
                        format!("expected ',' or '{close}', found {tok}"),
                    ))
                }
            }
        }
    }

    /// `True` or `False`.
    fn boolean(&mut self) -> Result<bool, NpyError> {
        match self.token()? {
            (Tok::Word("True"), _) => Ok(true),
            (Tok::Word("False"), _) => Ok(false),
            (tok, at) => Err(Self::error(
                at,
                format!("expected True or False for 'fortran_order', found {tok}"),
            )),
        }
    }

    /// A tuple of dimensions: `()`, `(5,)`, `(2, 3)`, `(2, 3,)`.
    fn shape(&mut self) -> Result<Vec<usize>, NpyError> {
        self.expect('(', "to open the 'shape' tuple")?;
        let mut dims = Vec::new();
        let mut after_comma = false;
        loop {
            match self.token()? {
                (Tok::Punct(')'), at) => {
                    if dims.len() == 1 && !after_comma {
                        return Err(Self::error(
                            at,
                            "a one-dimensional 'shape' must be written '(n,)'",
                        ));
                    }
                    return Ok(dims);
                }
                (Tok::Word(w), _) if dims.is_empty() || after_comma => {
                    dims.push(parse_dim(w)?);
                    after_comma = false;
                }
                (Tok::Punct(','), _) if !dims.is_empty() && !after_comma => after_comma = true,
                (tok, at) => {
                    let want = if dims.is_empty() || after_comma {
                        "a dimension or ')'"
                    } else {
                        "',' or ')'"
                    };
                    return Err(Self::error(
                        at,
                        format!("expected {want} in 'shape', found {tok}"),
                    ));
                }
            }
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-')
}

/// A decimal dimension, with an optional Python 2 long suffix (`3L`).
fn parse_dim(literal: &str) -> Result<usize, NpyError> {
    let invalid = || NpyError::InvalidDimension {
        literal: quote(literal),
    };
    let digits = literal
        .strip_suffix(['L', 'l'])
        .unwrap_or(literal)
        .as_bytes();
    if digits.is_empty() {
        return Err(invalid());
    }
    digits.iter().try_fold(0usize, |acc, &b| {
        if !b.is_ascii_digit() {
            return Err(invalid());
        }
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(usize::from(b - b'0')))
            .ok_or_else(invalid)
    })
}

/// Converts exactly `header.count` items of `data` to `f32`.
fn decode(header: Header, data: &[u8]) -> NpyArray {
    let mut values = Vec::with_capacity(header.count);
    match header.dtype {
        NpyDtype::F16 => values.extend(
            data.chunks_exact(2)
                .filter_map(|c| c.try_into().ok())
                .map(|b| half::f16::from_le_bytes(b).to_f32()),
        ),
        NpyDtype::F32 => values.extend(
            data.chunks_exact(4)
                .filter_map(|c| c.try_into().ok())
                .map(f32::from_le_bytes),
        ),
        NpyDtype::F64 => values.extend(
            data.chunks_exact(8)
                .filter_map(|c| c.try_into().ok())
                .map(|b| f64::from_le_bytes(b) as f32),
        ),
    }
    NpyArray {
        shape: header.shape,
        dtype: header.dtype,
        data: values,
    }
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Parses a complete `.npy` file held in memory.
///
/// `max_elements` caps `product(shape)` (see [`DEFAULT_MAX_ELEMENTS`]). The
/// data section must be exactly as long as the header declares; the only
/// allocation proportional to the shape happens after that check.
///
/// # Errors
///
/// Any format error: bad magic or version, a truncated, oversized or
/// malformed header, an unsupported dtype or Fortran order, an invalid or
/// oversized shape, or data that is shorter or longer than declared.
pub fn parse_npy(bytes: &[u8], max_elements: usize) -> Result<NpyArray, NpyError> {
    let preamble = parse_preamble(bytes)?;
    let header_end = preamble.header_end();
    let (Some(header_bytes), Some(data)) =
        (bytes.get(preamble.len..header_end), bytes.get(header_end..))
    else {
        return Err(NpyError::TruncatedHeader {
            expected: header_end as u64,
            actual: bytes.len() as u64,
        });
    };
    let header = parse_header(&preamble, header_bytes, max_elements)?;
    header.check_data_len(data.len() as u64)?;
    Ok(decode(header, data))
}

/// Reads and parses the `.npy` file at `path`.
///
/// The preamble and header are read first; for a regular file the declared
/// data size is compared with the file's length before the data is read, so
/// a header declaring a huge shape over a tiny file fails without allocating.
/// I/O errors are [`NpyError::Io`] naming `path`; format errors are as for
/// [`parse_npy`].
///
/// # Errors
///
/// [`NpyError::Io`] if the file cannot be opened or read, otherwise as
/// [`parse_npy`].
pub fn read_npy(path: impl AsRef<Path>, max_elements: usize) -> Result<NpyArray, NpyError> {
    let path = path.as_ref();
    let io_error = |op, source| NpyError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(|e| io_error(IoOp::Open, e))?;
    let file_len = match file.metadata() {
        // Pseudo-files (e.g. under /proc) report a length of 0: stream those.
        Ok(meta) if meta.is_file() && meta.len() > 0 => Some(meta.len()),
        _ => None,
    };

    // Preamble: 10 bytes (v1) or 12 bytes (v2, v3); a short read is reported
    // by `parse_preamble`.
    let mut prefix = [0u8; 12];
    let got = read_up_to(&mut file, &mut prefix).map_err(|e| io_error(IoOp::Read, e))?;
    let prefix = prefix.get(..got).unwrap_or(&[]);
    let preamble = parse_preamble(prefix)?;
    let header_end = preamble.header_end();
    let truncated_header = |actual: u64| NpyError::TruncatedHeader {
        expected: header_end as u64,
        actual,
    };
    if let Some(len) = file_len {
        if len < header_end as u64 {
            return Err(truncated_header(len));
        }
    }

    // Header (at most MAX_HEADER_LEN bytes, so this allocation is bounded).
    let mut head = vec![0u8; header_end];
    let already = prefix.len().min(header_end);
    head[..already].copy_from_slice(&prefix[..already]);
    let got = already
        + read_up_to(&mut file, &mut head[already..]).map_err(|e| io_error(IoOp::Read, e))?;
    if got < header_end {
        return Err(truncated_header(got as u64));
    }
    let header = parse_header(&preamble, &head[preamble.len..], max_elements)?;
    // Bytes of the prefix that already belong to the data section.
    let data_prefix = prefix.get(header_end..).unwrap_or(&[]);

    if let Some(len) = file_len {
        header.check_data_len(len - header_end as u64)?;
    }

    // The data: reserve only what the file length vouched for, read at most
    // one byte more than declared, then count any excess without storing it.
    let expected = header.data_len;
    let mut data = Vec::with_capacity(if file_len.is_some() { expected } else { 0 });
    data.extend_from_slice(data_prefix);
    let want = (expected as u64)
        .saturating_add(1)
        .saturating_sub(data.len() as u64);
    (&mut file)
        .take(want)
        .read_to_end(&mut data)
        .map_err(|e| io_error(IoOp::Read, e))?;
    if data.len() > expected {
        let rest = io::copy(&mut file, &mut io::sink()).map_err(|e| io_error(IoOp::Read, e))?;
        header.check_data_len((data.len() as u64).saturating_add(rest))?;
    }
    header.check_data_len(data.len() as u64)?;
    Ok(decode(header, &data))
}

/// Reads until `buf` is full or end of file; returns the number of bytes read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Encodes a C-order `'<f4'` array as `.npy` bytes, identical to `numpy.save`.
///
/// Uses format version 1.0, or 2.0 if the header does not fit a `u16` length.
/// The header is padded with spaces (after numpy's room for the first axis to
/// grow to 21 digits) so that the data starts at a multiple of 64 bytes.
///
/// # Arguments
///
/// * `shape` — dimensions, outermost first; `&[]` for a 0-d array.
/// * `data` — `product(shape)` values in row-major order.
///
/// # Errors
///
/// [`NpyError::ShapeMismatch`] if `data.len()` is not `product(shape)`,
/// [`NpyError::ShapeOverflow`] if that product does not fit in `usize`.
pub fn encode_npy_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>, NpyError> {
    let expected = element_count(shape).ok_or_else(|| NpyError::ShapeOverflow {
        shape: shape.to_vec(),
    })?;
    if expected != data.len() {
        return Err(NpyError::ShapeMismatch {
            shape: shape.to_vec(),
            expected,
            actual: data.len(),
        });
    }

    let mut out = f32_header(shape, data.len().saturating_mul(4))?;
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// The preamble and padded header numpy writes for a C-order `'<f4'` array
/// of `shape`, with room reserved for `data_len` more bytes.
fn f32_header(shape: &[usize], data_len: usize) -> Result<Vec<u8>, NpyError> {
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        NpyDtype::F32.descr(),
        ShapeDisplay(shape)
    );
    if let Some(first) = shape.first() {
        let digits = first.to_string().len();
        dict.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(digits)));
    }
    // numpy: hlen = len(dict) + 1 ('\n'); pad = 64 - (prefix + hlen) % 64,
    // which is 64 (never 0) when already aligned.
    let hlen = dict.len() + 1;
    let padded = |prefix: usize| hlen + ARRAY_ALIGN - (prefix + hlen) % ARRAY_ALIGN;
    let mut out;
    if let Ok(len) = u16::try_from(padded(10)) {
        out = Vec::with_capacity((10 + usize::from(len)).saturating_add(data_len));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        let len = padded(12);
        let len32 = u32::try_from(len).map_err(|_| NpyError::ShapeOverflow {
            shape: shape.to_vec(),
        })?;
        out = Vec::with_capacity((12 + len).saturating_add(data_len));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&len32.to_le_bytes());
    }
    let header_start = out.len();
    out.extend_from_slice(dict.as_bytes());
    let header_end = header_start + padded(header_start);
    out.resize(header_end - 1, b' ');
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(shape, version, total header bytes, dict)` as written by
    /// `numpy.lib.format` 2.4.6 (`_write_array_header(f, d, None)`).
    #[cfg(target_pointer_width = "64")]
    fn numpy_headers() -> Vec<(Vec<usize>, u8, usize, String)> {
        let dict =
            |shape: &str| format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        let repeated = |d: &str, n: usize| format!("({})", vec![d; n].join(", "));
        vec![
            (vec![], 1, 128, dict("()")),
            (vec![0], 1, 128, dict("(0,)")),
            (vec![7], 1, 128, dict("(7,)")),
            (vec![2, 3], 1, 128, dict("(2, 3)")),
            (vec![1, 2, 3, 4], 1, 128, dict("(1, 2, 3, 4)")),
            (
                vec![10_000_000_000_000_000_000, 0],
                1,
                128,
                dict("(10000000000000000000, 0)"),
            ),
            (
                vec![usize::MAX, 0],
                1,
                128,
                dict("(18446744073709551615, 0)"),
            ),
            (vec![123_456, 0, 7], 1, 128, dict("(123456, 0, 7)")),
            (vec![3; 20], 1, 192, dict(&repeated("3", 20))),
            (vec![1; 32], 1, 192, dict(&repeated("1", 32))),
            (vec![2; 64], 1, 320, dict(&repeated("2", 64))),
            // Already aligned: numpy pads with a full 64 spaces, not 0.
            (
                vec![1, 10, 10, 10, 10, 10, 10, 10, 10, 1, 1, 1],
                1,
                192,
                dict("(1, 10, 10, 10, 10, 10, 10, 10, 10, 1, 1, 1)"),
            ),
            (vec![1; 21_817], 1, 65_536, dict(&repeated("1", 21_817))),
            (vec![1; 21_818], 2, 65_600, dict(&repeated("1", 21_818))),
        ]
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn npy_header_matches_numpy() {
        for (shape, version, total, dict) in numpy_headers() {
            let header = f32_header(&shape, 0).expect("header");
            let prefix = if version == 1 { 10 } else { 12 };
            assert_eq!(header.len(), total, "shape rank {}", shape.len());
            assert_eq!(&header[..6], MAGIC);
            assert_eq!(header[6..8], [version, 0]);
            let declared = if version == 1 {
                usize::from(u16::from_le_bytes([header[8], header[9]]))
            } else {
                u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize
            };
            assert_eq!(declared, total - prefix);
            assert_eq!(&header[prefix..prefix + dict.len()], dict.as_bytes());
            assert!(header[prefix + dict.len()..total - 1]
                .iter()
                .all(|&b| b == b' '));
            assert_eq!(header[total - 1], b'\n');
        }
    }

    #[test]
    fn npy_shape_display_is_python_tuple() {
        assert_eq!(ShapeDisplay(&[]).to_string(), "()");
        assert_eq!(ShapeDisplay(&[5]).to_string(), "(5,)");
        assert_eq!(ShapeDisplay(&[2, 3]).to_string(), "(2, 3)");
    }

    #[test]
    fn npy_parse_dim() {
        assert_eq!(parse_dim("0").ok(), Some(0));
        assert_eq!(parse_dim("42").ok(), Some(42));
        assert_eq!(parse_dim("42L").ok(), Some(42));
        assert_eq!(parse_dim(&usize::MAX.to_string()).ok(), Some(usize::MAX));
        for bad in [
            "",
            "L",
            "-1",
            "+1",
            "2.5",
            "1e3",
            "0x10",
            "1_000",
            "True",
            "99999999999999999999999",
        ] {
            assert!(
                matches!(parse_dim(bad), Err(NpyError::InvalidDimension { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn npy_element_count() {
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[2, 3, 4]), Some(24));
        assert_eq!(element_count(&[usize::MAX, usize::MAX, 0]), Some(0));
        assert_eq!(element_count(&[usize::MAX, 2]), None);
    }

    #[test]
    fn npy_quote_is_short_and_one_line() {
        assert_eq!(quote("a\nb"), "a\\nb");
        let long = "x".repeat(1000);
        assert_eq!(quote(&long).chars().count(), MAX_QUOTED_CHARS + 3);
    }
}
