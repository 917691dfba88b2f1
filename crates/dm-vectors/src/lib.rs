//! The published test vectors of the dm protocol: every byte format and derivation this
//! project defines above MLS (PROTOCOL.md), one JSON file per category in `tests/vectors/`.
//!
//! Each file is a [`VectorFile`]: a header (file format and version, the category, the
//! version of the protocol format it exercises, a description, the PROTOCOL.md section and
//! how it was generated), then `positive` cases (valid inputs with every derived output)
//! and `negative` cases (each with exactly one defect, named after it, and the error code a
//! conforming implementation rejects it with). Bytes are lower-case hex.
//!
//! The files are produced by [`generate`] (the `dm vectors generate DIR` command)
//! deterministically from fixed seeds: every key is `SHA-256("dm-vectors/v1/" || label)`,
//! Ed25519 signatures are deterministic (RFC 8032), Argon2id is deterministic. Writing
//! never replaces a file whose bytes differ unless asked to ([`write_all`] with `force`).
//! [`verify_dir`] (the `dm vectors verify [DIR]` command) checks every case with the
//! project's own code: a positive case must be reproduced exactly (every output is
//! recomputed from the inputs and every encoding decoded back), a negative case must be
//! rejected with its stated code.
//!
//! Adding a category is one generator function and one verifier function, registered as a
//! [`Category`] in [`categories()`].
#![forbid(unsafe_code)]

pub mod categories;
mod craft;
mod seed;

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use categories::categories;

/// The `format` field of every vector file.
pub const FILE_FORMAT: &str = "dm-test-vectors";
/// The `format_version` field of every vector file (the layout described here).
pub const FILE_FORMAT_VERSION: u32 = 1;
/// Default directory of the vector files, relative to the repository root.
pub const DEFAULT_DIR: &str = "tests/vectors";

/// One category of vectors: how to generate its cases and how to check one.
pub struct Category {
    /// File stem: the file is `<name>.json`.
    pub name: &'static str,
    /// What the category covers (the file's `description`).
    pub description: &'static str,
    /// Where PROTOCOL.md specifies it.
    pub spec: &'static str,
    /// Version of the protocol format the vectors exercise (for example the version byte
    /// of a device certificate).
    pub format_version: u32,
    /// Builds every case, deterministically.
    pub generate: fn() -> Result<Cases, String>,
    /// Checks one case: `Ok` if the case is valid and reproduced exactly, otherwise the
    /// rejection (the error code a negative case must produce).
    pub verify: fn(&Case<'_>) -> Result<(), Rejection>,
}

/// The cases of one category.
#[derive(Default)]
pub struct Cases {
    /// Valid inputs with their derived outputs.
    pub positive: Vec<Value>,
    /// Invalid inputs, one defect each.
    pub negative: Vec<Value>,
}

/// One case handed to a verifier.
#[derive(Clone, Copy, Debug)]
pub enum Case<'a> {
    /// A positive case: must verify.
    Positive(&'a Value),
    /// A negative case: must be rejected with its `error` code.
    Negative(&'a Value),
}

impl<'a> Case<'a> {
    /// The case's JSON object.
    pub fn value(&self) -> &'a Value {
        match self {
            Case::Positive(v) | Case::Negative(v) => v,
        }
    }
}

/// Why a case was rejected: a stable code and a human explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The error code (for example `bad_signature`), or `mismatch` when a positive case's
    /// recorded output differs from the recomputed one, or `bad_vector` when the case does
    /// not have the category's shape.
    pub code: String,
    /// What exactly was wrong.
    pub detail: String,
}

impl Rejection {
    /// A rejection with a code.
    pub fn new(code: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            detail: detail.into(),
        }
    }

    /// A recorded output differs from the recomputed one.
    pub fn mismatch(field: &str) -> Self {
        Self::new(
            "mismatch",
            format!("`{field}` differs from the recomputed value"),
        )
    }

    /// The case does not have the expected shape.
    pub fn bad_vector(detail: impl fmt::Display) -> Self {
        Self::new("bad_vector", detail.to_string())
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// The layout of a vector file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorFile {
    /// [`FILE_FORMAT`].
    pub format: String,
    /// [`FILE_FORMAT_VERSION`].
    pub format_version: u32,
    /// The category ([`Category::name`]).
    pub category: String,
    /// [`Category::format_version`].
    pub protocol_format_version: u32,
    /// [`Category::description`].
    pub description: String,
    /// [`Category::spec`].
    pub spec: String,
    /// How the file was produced.
    pub generator: String,
    /// Valid cases.
    pub positive: Vec<Value>,
    /// Invalid cases, one defect each.
    pub negative: Vec<Value>,
}

/// What a generated file says about how it was produced.
const GENERATOR: &str = "dm vectors generate (crates/dm-vectors); keys are \
                         SHA-256(\"dm-vectors/v1/\" || label), see each case";

/// Errors of generating, writing or reading vector files (not of checking cases).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A generator failed (a bug).
    #[error("cannot generate {category}: {detail}")]
    Generate {
        /// The category.
        category: &'static str,
        /// What failed.
        detail: String,
    },
    /// A file exists with other bytes and `force` was not given.
    #[error(
        "{} differs from the generated vectors; not overwriting it (pass --force to replace it)",
        .0.display()
    )]
    WouldOverwrite(PathBuf),
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Generates the file of one category, as the exact bytes to store.
pub fn generate(category: &Category) -> Result<Vec<u8>, Error> {
    let cases = (category.generate)().map_err(|detail| Error::Generate {
        category: category.name,
        detail,
    })?;
    let file = VectorFile {
        format: FILE_FORMAT.into(),
        format_version: FILE_FORMAT_VERSION,
        category: category.name.into(),
        protocol_format_version: category.format_version,
        description: category.description.into(),
        spec: category.spec.into(),
        generator: GENERATOR.into(),
        positive: cases.positive,
        negative: cases.negative,
    };
    let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| Error::Generate {
        category: category.name,
        detail: e.to_string(),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// What [`write_all`] did with one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The file did not exist.
    Created,
    /// The file existed with the same bytes.
    Unchanged,
    /// The file existed with other bytes and `force` was given.
    Replaced,
}

/// Generates every category into `dir`. A file whose bytes differ is replaced only with
/// `force`; without it nothing is written and [`Error::WouldOverwrite`] names the first
/// differing file.
pub fn write_all(dir: &Path, force: bool) -> Result<Vec<(PathBuf, Written)>, Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut planned = Vec::new();
    for category in categories() {
        let path = dir.join(format!("{}.json", category.name));
        let bytes = generate(category)?;
        let state = match fs::read(&path) {
            Ok(existing) if existing == bytes => Written::Unchanged,
            Ok(_) if force => Written::Replaced,
            Ok(_) => return Err(Error::WouldOverwrite(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Written::Created,
            Err(e) => return Err(io(&path)(e)),
        };
        planned.push((path, bytes, state));
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut done = Vec::new();
    for (path, bytes, state) in planned {
        if state != Written::Unchanged {
            fs::write(&path, &bytes).map_err(io(&path))?;
        }
        done.push((path, state));
    }
    Ok(done)
}

/// The outcome of one case.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// `positive` or `negative`.
    pub kind: &'static str,
    /// The case's name.
    pub name: String,
    /// `None` if the case passed, else why it failed.
    pub failure: Option<String>,
}

/// The outcome of one file.
#[derive(Clone, Debug)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// How many cases the file holds (positive + negative), counted from the raw JSON.
    pub cases_in_file: usize,
    /// One entry per case that ran.
    pub results: Vec<CaseResult>,
    /// A problem with the file as a whole (unreadable, bad header, unknown category).
    pub file_error: Option<String>,
}

impl FileReport {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.failure.is_none()).count()
    }

    /// Cases that failed, plus the cases that did not run.
    pub fn failed(&self) -> usize {
        let failed_cases = self.results.iter().filter(|r| r.failure.is_some()).count();
        let not_run = self.cases_in_file.saturating_sub(self.results.len());
        failed_cases + not_run + usize::from(self.file_error.is_some() && self.results.is_empty())
    }

    /// Whether every case of the file ran and passed.
    pub fn ok(&self) -> bool {
        self.file_error.is_none()
            && self.results.len() == self.cases_in_file
            && self.results.iter().all(|r| r.failure.is_none())
    }
}

/// Checks one vector file.
pub fn verify_file(path: &Path) -> FileReport {
    let mut report = FileReport {
        path: path.to_path_buf(),
        cases_in_file: 0,
        results: Vec::new(),
        file_error: None,
    };
    let raw: Value = match fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            report.file_error = Some(format!("cannot read the file as JSON: {e}"));
            return report;
        }
    };
    // Count the cases from the raw JSON, independently of the parsing below.
    report.cases_in_file = ["positive", "negative"]
        .iter()
        .map(|k| raw.get(k).and_then(Value::as_array).map_or(0, Vec::len))
        .sum();
    let file: VectorFile = match serde_json::from_value(raw) {
        Ok(f) => f,
        Err(e) => {
            report.file_error = Some(format!("not a vector file: {e}"));
            return report;
        }
    };
    let Some(category) = categories().iter().find(|c| c.name == file.category) else {
        report.file_error = Some(format!("unknown category {:?}", file.category));
        return report;
    };
    if let Err(e) = check_header(&file, category, path) {
        report.file_error = Some(e);
        return report;
    }
    let mut names = BTreeSet::new();
    let positive = file
        .positive
        .iter()
        .map(|v| ("positive", Case::Positive(v)));
    let negative = file
        .negative
        .iter()
        .map(|v| ("negative", Case::Negative(v)));
    for (kind, case) in positive.chain(negative) {
        let name = case
            .value()
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let failure = if name.is_empty() {
            Some("the case has no name".to_owned())
        } else if !names.insert((kind, name.clone())) {
            Some("another case has the same name".to_owned())
        } else {
            check_case(category, &case).err()
        };
        report.results.push(CaseResult {
            kind,
            name,
            failure,
        });
    }
    report
}

fn check_header(file: &VectorFile, category: &Category, path: &Path) -> Result<(), String> {
    if file.format != FILE_FORMAT || file.format_version != FILE_FORMAT_VERSION {
        return Err(format!(
            "unsupported file format {:?} version {}",
            file.format, file.format_version
        ));
    }
    if file.protocol_format_version != category.format_version {
        return Err(format!(
            "the vectors are for version {} of the format, this implementation knows {}",
            file.protocol_format_version, category.format_version
        ));
    }
    if path.file_stem().and_then(|s| s.to_str()) != Some(category.name) {
        return Err(format!(
            "category {} must be in {}.json",
            category.name, category.name
        ));
    }
    if file.description.trim().is_empty() {
        return Err("the header has no description".into());
    }
    Ok(())
}

/// Runs one case through its category's verifier and compares with the expectation.
/// Returns why the case failed.
pub fn check_case(category: &Category, case: &Case<'_>) -> Result<(), String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| (category.verify)(case)))
        .map_err(|_| "the verifier panicked".to_owned())?;
    match (case, outcome) {
        (Case::Positive(_), Ok(())) => Ok(()),
        (Case::Positive(_), Err(rejection)) => Err(format!("rejected: {rejection}")),
        (Case::Negative(v), outcome) => {
            let expected = v
                .get("error")
                .and_then(Value::as_str)
                .ok_or("the negative case has no `error` code")?;
            if v.get("defect").and_then(Value::as_str).is_none() {
                return Err("the negative case has no `defect` description".into());
            }
            match outcome {
                Ok(()) => Err(format!("accepted, but must be rejected with {expected}")),
                Err(r) if r.code == expected => Ok(()),
                Err(r) => Err(format!("rejected with {r}, but the vector says {expected}")),
            }
        }
    }
}

/// The outcome of a directory.
#[derive(Clone, Debug, Default)]
pub struct DirReport {
    /// One report per file found, in name order.
    pub files: Vec<FileReport>,
    /// Categories without a file in the directory.
    pub missing: Vec<&'static str>,
}

impl DirReport {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.files.iter().map(FileReport::passed).sum()
    }

    /// Cases that failed or did not run, plus one per file-level problem and per missing
    /// category.
    pub fn failed(&self) -> usize {
        self.files.iter().map(FileReport::failed).sum::<usize>() + self.missing.len()
    }

    /// Whether every category is present and every case passed.
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && !self.files.is_empty() && self.files.iter().all(FileReport::ok)
    }
}

/// Checks every `*.json` file of `dir`, and that every category has a file.
pub fn verify_dir(dir: &Path) -> Result<DirReport, Error> {
    let entries = fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut report = DirReport::default();
    for category in categories() {
        if !paths
            .iter()
            .any(|p| p.file_stem().and_then(|s| s.to_str()) == Some(category.name))
        {
            report.missing.push(category.name);
        }
    }
    report.files = paths.iter().map(|p| verify_file(p)).collect();
    Ok(report)
}

/// Every single-leaf mutation of a positive case: each byte of each hex string flipped
/// (lowest bit), each character of each other string replaced (by `x`, or `y` where it was
/// an `x` or `X`), each number incremented,
/// each boolean negated. The `name` is left alone. Used by the tests to show that no byte
/// of a positive vector goes unchecked. Strings of more than `limit` bytes or characters
/// are mutated at their first and last `limit / 4` positions and at `limit / 2` positions
/// spread evenly in between.
pub fn mutations(case: &Value, limit: usize) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    mutate_into(case, case, &mut Vec::new(), limit, &mut out);
    out
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn mutate_into(
    root: &Value,
    here: &Value,
    path: &mut Vec<Step>,
    limit: usize,
    out: &mut Vec<(String, Value)>,
) {
    match here {
        Value::Object(map) => {
            for (k, v) in map {
                if path.is_empty() && k == "name" {
                    continue;
                }
                path.push(Step::Key(k.clone()));
                mutate_into(root, v, path, limit, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Step::Index(i));
                mutate_into(root, v, path, limit, out);
                path.pop();
            }
        }
        Value::String(s) => {
            let is_hex = !s.is_empty()
                && s.len() % 2 == 0
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if is_hex {
                let bytes = hex::decode(s).unwrap_or_default();
                for i in positions(bytes.len(), limit) {
                    let mut b = bytes.clone();
                    b[i] ^= 1;
                    let label = format!("{} byte {i}", render(path));
                    out.push((label, replace(root, path, Value::String(hex::encode(b)))));
                }
            } else {
                let chars: Vec<char> = s.chars().collect();
                for i in positions(chars.len(), limit) {
                    let mut c = chars.clone();
                    // Another letter even for case-insensitive readers.
                    c[i] = if c[i].eq_ignore_ascii_case(&'x') {
                        'y'
                    } else {
                        'x'
                    };
                    let label = format!("{} char {i}", render(path));
                    let changed = Value::String(c.into_iter().collect());
                    out.push((label, replace(root, path, changed)));
                }
            }
        }
        Value::Number(n) => {
            if let Some(n) = n.as_u64() {
                let label = format!("{} + 1", render(path));
                out.push((label, replace(root, path, Value::from(n.wrapping_add(1)))));
            }
        }
        Value::Bool(b) => {
            let label = format!("{} negated", render(path));
            out.push((label, replace(root, path, Value::Bool(!b))));
        }
        Value::Null => {}
    }
}

fn positions(len: usize, limit: usize) -> Vec<usize> {
    if len <= limit {
        return (0..len).collect();
    }
    let edge = limit / 4;
    let middle = limit / 2;
    let mut out: BTreeSet<usize> = (0..edge).chain(len - edge..len).collect();
    for k in 0..middle {
        out.insert(edge + (len - 2 * edge) * k / middle);
    }
    out.into_iter().collect()
}

fn render(path: &[Step]) -> String {
    path.iter()
        .map(|s| match s {
            Step::Key(k) => k.clone(),
            Step::Index(i) => format!("[{i}]"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn replace(root: &Value, path: &[Step], new: Value) -> Value {
    let mut copy = root.clone();
    let mut slot = &mut copy;
    for step in path {
        slot = match (step, slot) {
            (Step::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(v) => v,
                None => return copy_without_change(root),
            },
            (Step::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return copy_without_change(root),
            },
            _ => return copy_without_change(root),
        };
    }
    *slot = new;
    copy
}

fn copy_without_change(root: &Value) -> Value {
    root.clone()
}

/// Reads a case into its typed form.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(case: &Case<'_>) -> Result<T, Rejection> {
    T::deserialize(case.value()).map_err(Rejection::bad_vector)
}

/// Serialises a typed case.
pub(crate) fn to_value<T: Serialize>(case: &T) -> Result<Value, String> {
    serde_json::to_value(case).map_err(|e| e.to_string())
}

/// A negative case: name, defect, expected error and the category's fields.
pub(crate) fn negative<T: Serialize>(
    name: &str,
    defect: &str,
    error: &str,
    fields: &T,
) -> Result<Value, String> {
    let mut map = Map::new();
    map.insert("name".into(), name.into());
    map.insert("defect".into(), defect.into());
    map.insert("error".into(), error.into());
    match to_value(fields)? {
        Value::Object(f) => map.extend(f),
        _ => return Err("negative fields must be an object".into()),
    }
    Ok(Value::Object(map))
}

/// Compares a recorded value with the recomputed one.
pub(crate) fn expect_eq<T: PartialEq>(
    field: &str,
    recorded: &T,
    actual: &T,
) -> Result<(), Rejection> {
    if recorded == actual {
        Ok(())
    } else {
        Err(Rejection::mismatch(field))
    }
}
